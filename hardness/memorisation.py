"""When to score a sample under memorisation: networks trained on minibatches until they fit flipped labels,
watched after every epoch (class radii, hence inversion points; per-sample scores; held-out accuracy), and
the moments at which a user could score (the inversion point, early stopping, epoch 20, the last epoch)
compared with each score's best epoch.

Epochs here are passes over the training data, numbered from 1: epoch e is the state after e passes (the
engine's observers number them from 0; `EPOCH_OFFSET` converts). Arrays over epochs are [..., E].
"""
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import Tensor

from hardness.dynamics import el2n, forgetting_events, margins, sample_losses
from hardness.engine import TrainingState

EPOCH_OFFSET = 1                                       # observer epoch 0 is epoch 1 here
SCORES = {"margin": -1, "loss": 1, "el2n": 1, "largest_logit": -1}        # sign that makes higher = suspicious
WHOLE_TRAJECTORY = ("aum", "forgetting", "data_map_confidence")
MEMORISATION_THRESHOLD = 0.10                         # memorisation begins when this share of the flips is fitted
MOMENTS = ("inversion", "early_stopping", "epoch_20", "last")


class EpochRecorder:
    """An observer of every epoch: margin, loss, EL2N and largest logit of every training sample [runs, E, N],
    and every run's accuracy on held-out samples against their clean and their noisy labels [runs, E]."""

    def __init__(self, labels: Tensor, runs: int, epochs: int, heldout: Tensor, heldout_clean: Tensor,
                 heldout_noisy: Tensor) -> None:
        self.labels, self.heldout = labels, heldout
        self.heldout_labels = torch.stack([heldout_clean, heldout_noisy])                    # [2, M]
        self.trajectories = {name: torch.zeros(runs, epochs, len(labels), device=labels.device) for name in SCORES}
        self.heldout_accuracy = torch.zeros(2, runs, epochs, device=labels.device)         # [clean/noisy, runs, E]

    def is_check(self, epoch: int) -> bool:
        return True

    def observe(self, state: TrainingState) -> None:
        logits, e = state.logits, state.epoch                                                # [runs, N, C]
        self.trajectories["margin"][:, e] = margins(logits, self.labels)
        self.trajectories["loss"][:, e] = sample_losses(logits, self.labels)
        self.trajectories["el2n"][:, e] = el2n(logits, self.labels)
        self.trajectories["largest_logit"][:, e] = logits.amax(-1)
        predicted = state.model.whole_data(self.heldout)[0].argmax(-1)                       # [runs, M]
        self.heldout_accuracy[:, :, e] = (predicted[None] == self.heldout_labels[:, None]).float().mean(-1)

    def done(self) -> bool:
        return False

    def arrays(self) -> dict[str, np.ndarray]:
        return {**{f"{name}_trajectory": value.cpu().numpy() for name, value in self.trajectories.items()},
                "heldout_accuracy_clean": self.heldout_accuracy[0].cpu().numpy(),
                "heldout_accuracy_noisy": self.heldout_accuracy[1].cpu().numpy()}


# ----------------------------------------------------------------------------- inversion rules on epoch curves

def smoothed_inversions(radii: np.ndarray, window: int, start: int) -> np.ndarray:
    """Inversion epoch [runs, C] (1-based) by the smoothed rule: the epoch, from `start` on, at which the radius
    averaged over the trailing `window` epochs is smallest, the moment after which the manifold never again
    gets tighter; a minimum at the last epoch means the class never inverted (-1). radii [runs, E, C]."""
    cumulative = np.concatenate([np.zeros_like(radii[:, :1]), np.cumsum(radii, axis=1)], axis=1)
    epochs = np.arange(1, radii.shape[1] + 1)
    counts = np.minimum(epochs, window)
    smoothed = (cumulative[:, epochs] - cumulative[:, epochs - counts]) / counts[None, :, None]    # [runs, E, C]
    first = start - 1
    lowest = smoothed[:, first:].argmin(axis=1) + first                                          # [runs, C]
    return np.where(lowest == radii.shape[1] - 1, -1, lowest + 1)


def run_inversion_epoch(inversions: np.ndarray) -> np.ndarray:
    """[runs]: the mean over each run's inverted classes of their inversion epochs (NaN if none inverted)."""
    inverted = inversions > 0
    with np.errstate(invalid="ignore"):
        return np.where(inverted, inversions, 0).sum(1) / inverted.sum(1)


# ----------------------------------------------------------------------------- curves and moments

def memorisation_curves(margin_trajectory: np.ndarray, flipped: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[runs, E] share of the flipped samples predicted as their flipped label, and of the clean ones as theirs
    (the given label has the largest logit: a positive margin)."""
    fitted = margin_trajectory > 0                                                           # [runs, E, N]
    return fitted[:, :, flipped].mean(-1), fitted[:, :, ~flipped].mean(-1)


def first_epoch_above(curves: np.ndarray, threshold: float) -> np.ndarray:
    """[runs]: the first epoch (1-based) at which each curve [runs, E] exceeds `threshold`; -1 if it never does."""
    above = curves > threshold
    return np.where(above.any(1), above.argmax(1) + 1, -1)


def auroc_curves(trajectory: np.ndarray, flipped: np.ndarray, sign: int) -> np.ndarray:
    """[runs, E] AUROC against the flips of each run's score at each epoch (sign * score, higher = suspicious)."""
    from sklearn.metrics import roc_auc_score
    return np.array([[roc_auc_score(flipped, sign * epoch) for epoch in run] for run in trajectory])


def scores_at_class_inversions(trajectory: np.ndarray, labels: np.ndarray, inversions: np.ndarray) -> np.ndarray:
    """[runs, N]: each sample's score at the inversion epoch of its (given) class in its run; a class that never
    inverted is scored at the last epoch. trajectory [runs, E, N], inversions [runs, C] (1-based, -1 never)."""
    last = trajectory.shape[1]
    epochs = np.where(inversions > 0, inversions, last)[:, labels]                             # [runs, N]
    return np.take_along_axis(trajectory, epochs[:, None, :] - 1, axis=1)[:, 0]


def whole_trajectory_scores(margin_trajectory: np.ndarray, loss_trajectory: np.ndarray, upto: np.ndarray
                            ) -> dict[str, np.ndarray]:
    """AUM, forgetting events and data-map confidence of every run computed over epochs 1..upto[run], [runs, N],
    each oriented so that higher = more suspicious."""
    result = {name: [] for name in WHOLE_TRAJECTORY}
    for run, end in enumerate(upto):
        margin, loss = margin_trajectory[run, :end], loss_trajectory[run, :end]                 # [e, N]
        result["aum"].append(-margin.mean(0))
        result["forgetting"].append(forgetting_events(torch.from_numpy(margin > 0)).numpy())
        result["data_map_confidence"].append(-np.exp(-loss).mean(0))
    return {name: np.stack(values) for name, values in result.items()}


def moment_epochs(inversion_epoch: np.ndarray, early_stopping: np.ndarray, epochs: int) -> dict[str, np.ndarray]:
    """[runs] epoch of each moment a user could score at: the run's mean inversion epoch (rounded; the last epoch
    where no class inverted), the early-stopping epoch, epoch 20 (or the last, if fewer) and the last epoch."""
    inversion = np.where(np.isnan(inversion_epoch), epochs, np.rint(np.nan_to_num(inversion_epoch))).astype(int)
    runs = len(early_stopping)
    return {"inversion": inversion, "early_stopping": early_stopping.astype(int),
            "epoch_20": np.full(runs, min(20, epochs)), "last": np.full(runs, epochs)}


def analyse(arrays: dict[str, np.ndarray], inversions: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every curve and moment of one setting from its recorded arrays (see `EpochRecorder.arrays`, plus
    `flipped` [N] and `labels` [N]) and its inversion epochs per rule ({rule: [runs, C]})."""
    flipped, labels, epochs = arrays["flipped"], arrays["labels"], arrays["margin_trajectory"].shape[1]
    memorised, clean_fitted = memorisation_curves(arrays["margin_trajectory"], flipped)
    result = {"memorised": memorised, "clean_fitted": clean_fitted, "heldout_clean": arrays["heldout_accuracy_clean"],
              "heldout_noisy": arrays["heldout_accuracy_noisy"],
              "memorisation_onset": first_epoch_above(memorised, MEMORISATION_THRESHOLD),
              "early_stopping_clean": arrays["heldout_accuracy_clean"].argmax(1) + 1,
              "early_stopping_noisy": arrays["heldout_accuracy_noisy"].argmax(1) + 1}
    for name, sign in SCORES.items():
        result[f"auroc_{name}"] = auroc_curves(arrays[f"{name}_trajectory"], flipped, sign)          # [runs, E]
    moments = moment_epochs(run_inversion_epoch(inversions["checked"]), result["early_stopping_clean"], epochs)
    from sklearn.metrics import roc_auc_score
    for name, sign in SCORES.items():
        curve = result[f"auroc_{name}"]
        result[f"best_epoch_{name}"] = curve.argmax(1) + 1
        for moment, at in moments.items():
            result[f"lost_{name}_{moment}"] = curve.max(1) - curve[np.arange(len(at)), at - 1]
        per_class = scores_at_class_inversions(arrays[f"{name}_trajectory"], labels, inversions["checked"])
        result[f"auroc_{name}_class_inversion"] = np.array([roc_auc_score(flipped, sign * run) for run in per_class])
    for moment, at in moments.items():
        for name, score in whole_trajectory_scores(arrays["margin_trajectory"], arrays["loss_trajectory"], at).items():
            result[f"auroc_{name}_{moment}"] = np.array([roc_auc_score(flipped, run) for run in score])
    result.update({f"moment_{moment}": at for moment, at in moments.items()})
    return result


def mean_std(values: np.ndarray, digits: int = 1) -> str:
    """'mean ± std' over runs of the finite values, or 'never' if there are none."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values) & (values >= 0)]
    return "never" if not len(values) else f"{values.mean():.{digits}f} ± {values.std():.{digits}f}"


# ----------------------------------------------------------------------------- figure

def plot_setting(ax: plt.Axes, analysis: dict[str, np.ndarray], title: str) -> plt.Axes:
    """AUROC of every per-epoch score against the epoch (run mean, band from the lowest to the highest run),
    memorisation and held-out clean accuracy on a second axis, the mean inversion epoch (with its spread over
    runs) and the early-stopping epoch marked. Returns the second axis."""
    epochs = np.arange(1, analysis["memorised"].shape[1] + 1)
    for name, colour in zip(SCORES, ("tab:blue", "tab:orange", "tab:purple", "tab:grey")):
        curve = analysis[f"auroc_{name}"]
        ax.plot(epochs, curve.mean(0), color=colour, label=f"AUROC, {name.replace('_', ' ')}")
        ax.fill_between(epochs, curve.min(0), curve.max(0), color=colour, alpha=0.2, linewidth=0)
    ax.set_xlabel("epoch (passes over the data)")
    ax.set_ylabel("AUROC against the flipped labels")
    ax.set_title(title, fontsize=9)
    second = ax.twinx()
    second.plot(epochs, analysis["memorised"].mean(0), "k--", label="flips fitted (memorised)")
    second.plot(epochs, analysis["heldout_clean"].mean(0), "k:", label="held-out accuracy, clean labels")
    second.set_ylim(0, 1)
    second.set_ylabel("share")
    inversion = analysis["moment_inversion"]
    ax.axvspan(inversion.mean() - inversion.std(), inversion.mean() + inversion.std(), color="tab:red", alpha=0.15)
    ax.axvline(inversion.mean(), color="tab:red", label="mean inversion epoch (± std)")
    ax.axvline(analysis["early_stopping_clean"].mean(), color="tab:green", label="early stopping (clean held-out)")
    return second


def plot_settings(analyses: Sequence[tuple[str, dict[str, np.ndarray]]]) -> plt.Figure:
    """One panel per setting, one legend for all of them below."""
    columns = min(2, len(analyses))
    rows = -(-len(analyses) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(6.5 * columns, 3.8 * rows + 0.8), squeeze=False)
    for ax, (title, analysis) in zip(axes.flat, analyses):
        second = plot_setting(ax, analysis, title)
    for ax in axes.flat[len(analyses):]:
        ax.set_visible(False)
    handles, labels = (sum(pair, []) for pair in zip(axes.flat[0].get_legend_handles_labels(),
                                                      second.get_legend_handles_labels()))
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.8 / (3.8 * rows + 0.8), 1, 1))
    return fig
