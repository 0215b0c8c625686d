"""Figures of the scores: the data map, the rank-correlation matrix, each class's share of each score's top k,
and the benchmark's AUROC of per-epoch scores against the epoch."""
from collections import Counter
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np

from hardness.scoring import RANKINGS, hardness_ranking


def plot_data_map(scores: dict[str, np.ndarray], flipped: np.ndarray, title: str) -> plt.Figure:
    """Confidence against variability (means over runs), coloured by correctness, flipped labels marked."""
    confidence, variability = scores["data_map_confidence"].mean(0), scores["data_map_variability"].mean(0)
    fig, ax = plt.subplots(figsize=(6, 5))
    points = ax.scatter(variability, confidence, c=scores["data_map_correctness"].mean(0), cmap="viridis", s=2,
                        vmin=0, vmax=1, rasterized=True)
    ax.scatter(variability[flipped], confidence[flipped], facecolors="none", edgecolors="red", s=8, linewidths=0.5,
               label=f"flipped label ({int(flipped.sum())})", rasterized=True)
    fig.colorbar(points, ax=ax, label="correctness (share of epochs correct)")
    ax.set_xlabel("variability (std of the label's probability over epochs)")
    ax.set_ylabel("confidence (mean probability of the label)")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title, fontsize=10)
    return fig


def plot_correlations(matrix: np.ndarray, names: Sequence[str], title: str) -> plt.Figure:
    """The Spearman correlation matrix of the scores' run-averaged hardness."""
    fig, ax = plt.subplots(figsize=(7, 6))
    image = ax.imshow(matrix, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right")
    ax.set_yticks(range(len(names)), names)
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7)
    fig.colorbar(image, ax=ax, label="Spearman correlation")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_top_k_classes(scores: dict[str, np.ndarray], labels: np.ndarray, class_names: Sequence[str], k: int,
                       title: str) -> plt.Figure:
    """Share of each class among each score's k hardest samples (run-averaged hardness), and in the data."""
    rows, names = [], []
    for name in RANKINGS:
        if RANKINGS[name][0] in scores:
            top = np.argsort(-hardness_ranking(scores, name).mean(0), kind="stable")[:k]
            rows.append(np.bincount(labels[top], minlength=len(class_names)) / k)
            names.append(name)
    rows.append(np.bincount(labels, minlength=len(class_names)) / len(labels))
    names.append("all samples")
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(names) + 1.5))
    image = ax.imshow(np.stack(rows), cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    fig.colorbar(image, ax=ax, label=f"share of the top {k}")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_trajectory_auroc(curves: dict[str, dict[str, np.ndarray]], epochs: dict[str, np.ndarray],
                          inversion: dict[str, float]) -> plt.Figure:
    """AUROC of each trajectory score against the epoch it is taken at, one panel per setting, the mean
    inversion epoch dashed."""
    fig, axes = plt.subplots(1, len(curves), figsize=(4.5 * len(curves), 3.6), sharey=True, squeeze=False)
    for ax, (setting, by_score) in zip(axes[0], curves.items()):
        for name, values in by_score.items():
            ax.plot(epochs[setting] + 1, values, label=name)
        if not np.isnan(inversion[setting]):
            ax.axvline(inversion[setting] + 1, color="black", linestyle="--", linewidth=1,
                       label=f"mean inversion point ({inversion[setting] + 1:.0f})")
        ax.set_xscale("log")
        ax.set_title(setting, fontsize=10)
        ax.set_xlabel("epochs trained (log scale)")
    axes[0, 0].set_ylabel("AUROC, flipped vs clean labels")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_class_counts(labels: np.ndarray, predicted: np.ndarray, top: np.ndarray, class_names: Sequence[str],
                      title: str) -> plt.Figure:
    """Per class: its samples by given label and by the runs' prediction, and how many of the most suspicious
    samples `top` (positions) carry its label."""
    classes = np.arange(len(class_names))
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.25 * len(class_names) + 1.8), sharey=True)
    axes[0].barh(classes - 0.2, np.bincount(labels, minlength=len(classes)), height=0.4, label="given label")
    axes[0].barh(classes + 0.2, np.bincount(predicted, minlength=len(classes)), height=0.4, label="predicted label")
    axes[0].set_xlabel("samples")
    axes[0].legend(fontsize=8)
    axes[1].barh(classes, np.bincount(labels[top], minlength=len(classes)), color="tab:red")
    axes[1].set_xlabel(f"among the {len(top)} most suspicious (given label)")
    axes[0].set_yticks(classes, class_names)
    axes[0].invert_yaxis()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


WORKFLOW_STYLES = {("fast", "consensus"): ("fast recipe", "tab:red"), ("paper", "consensus"): ("paper recipe", "tab:blue"),
                   ("sklearn", "cleanlab_mlp"): ("cleanlab + MLPClassifier", "tab:green"),
                   ("sklearn", "cleanlab_logreg"): ("cleanlab + LogisticRegression", "tab:olive")}


def plot_auroc_against_seconds(rows: Sequence[dict]) -> plt.Figure:
    """Merged benchmark rows (combine_rows) as the AUROC of each workflow (both recipes' consensus, the two cleanlab
    workflows) against its whole workflow's seconds, log scale, one panel per noise type, a marker per dataset;
    at the noise ratio most rows have (a sweep's main ratio), which the title names."""
    ratio = Counter(float(row["noise_ratio"]) for row in rows).most_common(1)[0][0]
    rows = [row for row in rows if float(row["noise_ratio"]) == ratio]
    noise_types = sorted({row["noise_type"] for row in rows})
    datasets = sorted({row["dataset"] for row in rows})
    markers = dict(zip(datasets, "osD^vP*X"))
    fig, axes = plt.subplots(1, len(noise_types), figsize=(4 * len(noise_types), 3.8), squeeze=False, sharey=True)
    for ax, noise_type in zip(axes[0], noise_types):
        for row in rows:
            style = WORKFLOW_STYLES.get((row["recipe"], row["score"]))
            if row["noise_type"] != noise_type or style is None or row.get("workflow_seconds") in (None, ""):
                continue
            ax.scatter(float(row["workflow_seconds"]), float(row["auroc"]), color=style[1],
                       marker=markers[row["dataset"]], s=30)
        ax.set_xscale("log")
        ax.set_title(f"{noise_type} noise", fontsize=10)
        ax.set_xlabel("seconds of the whole workflow")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("AUROC, flipped against clean labels")
    handles = [plt.Line2D([], [], color=color, marker="o", linestyle="", label=label)
               for label, color in WORKFLOW_STYLES.values()]
    handles += [plt.Line2D([], [], color="grey", marker=markers[d], linestyle="", label=d) for d in datasets]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle(f"{ratio:g} of the labels flipped: each workflow's AUROC against its seconds", fontsize=10)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    return fig


def plot_auroc_by_type(rows: Sequence[dict], dataset: str, ratio: float) -> plt.Figure:
    """Merged hardness-types rows as a heatmap: the AUROC of every continuous score (rows) against each injected
    type (columns, grouped by family), for one dataset at one injected share."""
    from hardness.injection import FAMILIES
    here = [row for row in rows if row["dataset"] == dataset and float(row["noise_ratio"]) == ratio
            and row.get("auroc") not in (None, "")]
    kinds = [kind for kind in FAMILIES if any(row["noise_type"] == kind for row in here)]
    scores = list(dict.fromkeys(row["score"] for row in here))
    grid = np.full((len(scores), len(kinds)), np.nan)
    for row in here:
        grid[scores.index(row["score"]), kinds.index(row["noise_type"])] = float(row["auroc"])
    fig, ax = plt.subplots(figsize=(0.6 * len(kinds) + 3.5, 0.32 * len(scores) + 1.8))
    image = ax.imshow(grid, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(kinds)), [f"{kind}\n({FAMILIES[kind].replace('_', ' ')})" for kind in kinds],
                  rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(scores)), scores, fontsize=7)
    for (i, j), value in np.ndenumerate(grid):
        if value == value:
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6)
    fig.colorbar(image, ax=ax, label="AUROC, injected against the rest")
    ax.set_title(f"{dataset}, {ratio:g} of the samples injected: which score finds which type", fontsize=9)
    fig.tight_layout()
    return fig
