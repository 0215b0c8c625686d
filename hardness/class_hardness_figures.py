"""Figures of the class-hardness simulations: per-class test loss or accuracy against the optimizer step with the
classes' overlap matrices after the first, middle and last evaluation, one column per setting; and the final
feature overlap against the input overlap."""
import math
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D

from hardness.cli import UserInputError
from hardness.results import save_figure


def _mean_and_error(values: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Mean over runs (axis 0) and the standard error (std with ddof 1 / sqrt(runs)); no error for one run."""
    if len(values) == 1:
        return values[0], None
    return np.nanmean(values, 0), np.nanstd(values, 0, ddof=1) / math.sqrt(len(values))


def _band(ax: plt.Axes, x: np.ndarray, values: np.ndarray, colour: Any) -> None:
    mean, error = _mean_and_error(values)
    ax.plot(x, mean, color=colour)
    if error is not None:
        ax.fill_between(x, mean - error, mean + error, color=colour, alpha=0.2)


def class_colours(num_classes: int) -> list:
    """One colour per class: tab10 up to 10 classes, tab20 up to 20, a viridis ramp beyond."""
    if num_classes <= 20:
        palette = plt.get_cmap("tab10" if num_classes <= 10 else "tab20")
        return [palette(c) for c in range(num_classes)]
    return [plt.get_cmap("viridis")(v) for v in np.linspace(0, 1, num_classes)]


def snapshot_indices(num_steps: int) -> list[int]:
    """The evaluations whose overlap matrices are drawn: the first, the middle one and the last."""
    return sorted({0, (num_steps - 1) // 2, num_steps - 1})


def plot_dynamics(settings: dict[str, list[dict[str, np.ndarray]]], metric: str) -> plt.Figure:
    """One column per setting. Top: per-class test `metric` against step + 1 (log axis), mean +- standard
    error over runs, one colour per class, y shared across settings, one class legend (a colour bar beyond 20
    classes). Below: the C x C dynamic overlap (mean over runs; diagonal blank) after the first, middle and last
    evaluation, on one colour scale for the figure (viridis from the lowest overlap, rounded down to 0.1, to 1;
    red-blue from -1 to 1 when an overlap is negative), values written in when C <= 4."""
    num_classes = max(runs[0][f"{metric}_per_class"].shape[1] for runs in settings.values())
    colours = class_colours(num_classes)
    snapshots = snapshot_indices(len(next(iter(settings.values()))[0]["steps"]))
    columns = len(snapshots)
    fig = plt.figure(figsize=(max(4.4 * len(settings), 5.5) + 1.2, 6.6), layout="constrained")
    grid = fig.add_gridspec(2, columns * len(settings), height_ratios=[1.5, 1])
    curves: list[plt.Axes] = []
    heat_maps: list[plt.Axes] = []
    for column, (name, runs) in enumerate(settings.items()):
        ax = fig.add_subplot(grid[0, column * columns:(column + 1) * columns], sharey=curves[0] if curves else None)
        curves.append(ax)
        x = runs[0]["steps"] + 1
        per_class = np.stack([r[f"{metric}_per_class"] for r in runs])                    # [runs, T, C]
        for c in range(per_class.shape[2]):
            _band(ax, x, per_class[:, :, c], colours[c])
        ax.set_xscale("log")
        ax.set_xlabel("optimizer step + 1")
        ax.set_title(f"{name} ({len(runs)} run{'s' if len(runs) > 1 else ''})")
        if column:
            ax.tick_params(labelleft=False)
        for k, t in enumerate(snapshots):
            heat_maps.append(fig.add_subplot(grid[1, column * columns + k]))
            heat_maps[-1].set_title(f"step {runs[0]['steps'][t]}", fontsize=9)
    matrices = [np.stack([r["overlap_dynamic"][t] for r in runs]) for runs in settings.values() for t in snapshots]
    lowest = min(np.nanmin(np.where(np.eye(m.shape[-1], dtype=bool), np.nan, m)) for m in matrices)
    scale = ("viridis", math.floor(10 * lowest) / 10) if lowest >= 0 else ("RdBu_r", -1)
    for ax, overlaps in zip(heat_maps, matrices):
        image = _overlap_heat_map(ax, overlaps, *scale)
    curves[0].set_ylabel(f"test {metric} per class")
    heat_maps[0].set_ylabel("class")
    if num_classes <= 20:
        curves[-1].legend([Line2D([], [], color=colour) for colour in colours],
                          [f"class {c}" for c in range(num_classes)], loc="upper left", bbox_to_anchor=(1.02, 1),
                          fontsize=8, ncols=1 if num_classes <= 10 else 2)
    else:
        bar = fig.colorbar(plt.cm.ScalarMappable(plt.Normalize(0, num_classes - 1), plt.get_cmap("viridis")),
                           ax=curves, pad=0.01)
        bar.set_label("class")
    bar = fig.colorbar(image, ax=heat_maps, location="bottom", shrink=0.5, aspect=40, pad=0.02)
    bar.set_label("overlap (cosine of class-mean features), mean over runs", fontsize=8)
    return fig


def _overlap_heat_map(ax: plt.Axes, overlaps: np.ndarray, palette: str, low: float) -> Any:
    """Draw the mean over runs of overlap matrices [runs, C, C] with a blank diagonal, coloured from `low` to 1;
    the image."""
    num_classes = overlaps.shape[-1]
    mean, error = _mean_and_error(overlaps)                                                # [C, C]
    mean = np.where(np.eye(num_classes, dtype=bool), np.nan, mean)
    image = ax.imshow(mean, cmap=plt.get_cmap(palette).with_extremes(bad="white"), vmin=low, vmax=1)
    ticks = np.arange(0, num_classes, max(1, num_classes // 10))
    ax.set_xticks(ticks, ticks, fontsize=7)
    ax.set_yticks(ticks, ticks, fontsize=7)
    if num_classes <= 4:
        for i, j in zip(*np.nonzero(~np.eye(num_classes, dtype=bool))):
            text = f"{mean[i, j]:.2f}" + (f"\n±{error[i, j]:.2f}" if error is not None else "")
            shade = (mean[i, j] - low) / (1 - low)
            dark = shade < 0.6 if palette == "viridis" else abs(shade - 0.5) > 0.3
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if dark else "black")
    return image


def plot_dynamic_vs_static(settings: dict[str, list[dict[str, np.ndarray]]]) -> plt.Figure:
    """Final dynamic overlap against static overlap, every run and class pair, one colour per setting; the
    diagonal marks equal overlaps."""
    fig, ax = plt.subplots(figsize=(5, 4.5))
    for name, runs in settings.items():
        pairs = np.triu_indices(runs[0]["overlap_static"].shape[0], 1)
        static = np.concatenate([r["overlap_static"][pairs] for r in runs])
        final = np.concatenate([r["overlap_dynamic"][-1][pairs] for r in runs])
        ax.scatter(static, final, s=14, alpha=0.7, label=name)
    low, high = min(ax.get_xlim()[0], ax.get_ylim()[0]), max(ax.get_xlim()[1], ax.get_ylim()[1])
    ax.plot([low, high], [low, high], color="0.6", linestyle="--", linewidth=1, label="equal overlap")
    ax.set_xlabel("static overlap (inputs)")
    ax.set_ylabel("final dynamic overlap (features)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def draw_figures(settings: dict[str, list[dict[str, np.ndarray]]], folder: Path) -> list[Path]:
    """loss_and_overlap, accuracy_and_overlap and overlap_dynamic_vs_static under `folder` (PNG and PDF).
    Settings must share one evaluation schedule."""
    schedules = {name: tuple(runs[0]["steps"]) for name, runs in settings.items()}
    if len(set(schedules.values())) > 1:
        raise UserInputError("the settings were evaluated at different steps ("
                             + "; ".join(f"{name}: {len(s)} steps up to {s[-1]}" for name, s in schedules.items())
                             + "); plot together only settings with the same step schedule")
    saved = []
    for metric in ("loss", "accuracy"):
        saved += save_figure(plot_dynamics(settings, metric), folder / f"{metric}_and_overlap")
    saved += save_figure(plot_dynamic_vs_static(settings), folder / "overlap_dynamic_vs_static")
    return saved
