"""When the fast recipe stops training: rules that use no clean labels, as pure functions of what is recorded after
every epoch (tested on hand-made trajectories), and the observer that applies one of them while training runs.

Epochs are 0-based, as the engine's observers number them. Each rule returns the first epoch at which it fires,
or None while it has not:
- `inversion`: every class of every run has inverted (hardness.identifiers.StragglerTracker, every epoch from
  epoch 1 on, so the first comparison is between two trained states);
- `loss_plateau`: the run-averaged mean loss of the given labels fell by less than `tolerance` of its value at
  the epoch before;
- `rank_stability`: the Spearman correlation of the run-averaged margins between this epoch and the one before
  reached `threshold`;
- `none`: never: training runs to the epoch cap (a fixed number of epochs).
"""
from collections.abc import Sequence

import torch
from torch import Tensor

from hardness.dynamics import margins, sample_losses
from hardness.engine import TrainingState
from hardness.identifiers import StragglerTracker

STOPPING_RULES = ("inversion", "loss_plateau", "rank_stability", "none")
LOSS_PLATEAU_TOLERANCE = 0.05
RANK_STABILITY_THRESHOLD = 0.99
INVERSION_FIRST_CHECK = 1               # 0-based: the radius after the second epoch is compared with the first's


def loss_plateau_epoch(mean_losses: Sequence[float], tolerance: float = LOSS_PLATEAU_TOLERANCE) -> int | None:
    """The first epoch e >= 1 with mean_losses[e - 1] - mean_losses[e] < tolerance * mean_losses[e - 1]."""
    for epoch in range(1, len(mean_losses)):
        if mean_losses[epoch - 1] - mean_losses[epoch] < tolerance * mean_losses[epoch - 1]:
            return epoch
    return None


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman's rank correlation of two [N] tensors (ties broken by position, which float scores rarely have)."""
    ranks = torch.stack([a, b]).argsort(1).argsort(1).double()                             # [2, N]
    centred = ranks - ranks.mean(1, keepdim=True)
    return float((centred[0] * centred[1]).sum() / centred.square().sum(1).prod().sqrt())


def rank_stability_epoch(margin_trajectory: Tensor, threshold: float = RANK_STABILITY_THRESHOLD) -> int | None:
    """The first epoch e >= 1 at which the run-averaged margins [E, N] of epochs e - 1 and e have a Spearman
    correlation of at least `threshold`."""
    for epoch in range(1, len(margin_trajectory)):
        if spearman(margin_trajectory[epoch - 1], margin_trajectory[epoch]) >= threshold:
            return epoch
    return None


class StoppingRule:
    """An observer of every epoch that is done once `rule` fires (`stopped_at`, 0-based). The inversion rule reads
    `tracker`, the observer that finds the stragglers, so that the inversion is computed once."""

    def __init__(self, rule: str, labels: Tensor, tracker: StragglerTracker) -> None:
        if rule not in STOPPING_RULES:
            raise ValueError(f"unknown stopping rule {rule!r}; known: {', '.join(STOPPING_RULES)}")
        self.rule, self.labels, self.tracker = rule, labels, tracker
        self.mean_losses: list[float] = []
        self.previous_margins: Tensor | None = None
        self.stopped_at: int | None = None

    def is_check(self, epoch: int) -> bool:
        return True

    def observe(self, state: TrainingState) -> None:
        if self.stopped_at is not None or self.rule == "none":
            return
        if self.rule == "inversion":
            fired = self.tracker.done()
        elif self.rule == "loss_plateau":
            self.mean_losses.append(float(sample_losses(state.logits, self.labels).mean()))
            fired = loss_plateau_epoch(self.mean_losses[-2:]) is not None
        else:
            mean_margins = margins(state.logits, self.labels).mean(0)                       # [N]
            fired = (self.previous_margins is not None
                     and rank_stability_epoch(torch.stack([self.previous_margins, mean_margins])) is not None)
            self.previous_margins = mean_margins
        if fired:
            self.stopped_at = state.epoch

    def done(self) -> bool:
        return self.stopped_at is not None


class UntilStopped:
    """Observers watched together, done when `rule` is: the engine stops when every observer is done, and the
    recorders of a run never are."""

    def __init__(self, rule: StoppingRule, observers: Sequence[object]) -> None:
        self.rule, self.observers = rule, list(observers)

    def is_check(self, epoch: int) -> bool:
        return True

    def observe(self, state: TrainingState) -> None:
        for observer in self.observers:
            if observer.is_check(state.epoch):
                observer.observe(state)
        self.rule.observe(state)

    def done(self) -> bool:
        return self.rule.done()


def stopping_epoch(rule: StoppingRule, epochs_trained: int) -> int:
    """The epoch scored: where the rule fired, else the last epoch trained (the cap)."""
    return rule.stopped_at if rule.stopped_at is not None else epochs_trained - 1
