"""Hard-sample identifiers: stragglers (misclassified at their class's inversion point), the scores of a
fully trained network (confidence, energy), its Variance of Gradients over training (vog) and its training
dynamics (aum, forgetting, el2n, grand, data_map), with budgets set by the stragglers."""
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from hardness.cli import UserInputError
from hardness.dynamics import RANKINGS, DynamicsRecorder
from hardness.engine import TrainingState, network_logits, train_simple_nns
from hardness.seeds import NetworkStage, stage_seed
from hardness.radii import one_hot_float
from hardness.vog import CheckpointRecorder, calibrate, checkpoint_epochs, vog_scores

INVERSION_START, INVERSION_INTERVAL = 20, 5   # radius checks after the steps of epochs 20, 25, 30, ... (0-based)
MAX_INVERSION_ATTEMPTS = 5                    # initialisations tried before a straggler search gives up

# Scores of a trained network's logits [..., N, C] -> [..., N], higher = harder.
SCORERS: dict[str, Callable[[Tensor], Tensor]] = {
    "confidence": lambda logits: -logits.amax(-1),               # the largest raw logit (not a probability), low = hard
    "energy": lambda logits: -torch.logsumexp(logits, -1),       # -T logsumexp(logits / T), T = 1, high = hard
}
VOG_CHECKPOINTS, VOG_STAGE = 15, "late"      # the vog identifier: checkpoints kept, and the stage scored
DYNAMICS_STRATEGIES = ("aum", "forgetting", "el2n", "grand", "data_map")
DYNAMICS_SCORE_EPOCH = 20                     # EL2N and GraNd are taken after the step of this epoch
STRATEGIES = ("stragglers", *SCORERS, "vog", *DYNAMICS_STRATEGIES)


class IdentificationError(UserInputError):
    """A straggler search found no inversion point for some class: the straggler set is absent. `classes` names
    the classes that never inverted."""

    def __init__(self, message: str, classes: Sequence[str]) -> None:
        super().__init__(message)
        self.classes = list(classes)


class StragglerTracker:
    """Finds every class's inversion point during training, and what the network misclassifies right then.

    An observer of the training engine. Radii are checked after the steps of epochs start, start +
    interval, ... (0-based, as the original: 20, 25, 30, ...). The first check at which class c's radius
    is larger than at the previous check is c's inversion point (earliest: epoch 25, compared with 20);
    the class-c samples misclassified at that moment are c's stragglers. That is exactly what a copy of
    the network taken at that moment would say, so the tracker keeps the verdicts instead of the copies.
    `hard("last")` reproduces the original code, which kept a reference to the live network: every class
    is judged by the network at the run's last inversion.
    """

    def __init__(self, runs: int, labels: Tensor, num_classes: int,
                 start: int = INVERSION_START, interval: int = INVERSION_INTERVAL) -> None:
        self.labels, self.start, self.interval = labels, start, interval
        self.previous = torch.full((runs, num_classes), torch.nan, device=labels.device)  # NaN never compares larger
        self.inverted_at = torch.full((runs, num_classes), -1, dtype=torch.int64, device=labels.device)
        self.wrong_at_own_inversion = torch.zeros(runs, len(labels), dtype=torch.bool, device=labels.device)
        self.wrong_at_last_inversion = torch.zeros_like(self.wrong_at_own_inversion)

    def is_check(self, epoch: int) -> bool:
        return epoch >= self.start and (epoch - self.start) % self.interval == 0

    def observe(self, state: TrainingState) -> None:
        self.update(state.epoch, state.radii, state.predictions)

    def update(self, epoch: int, radii: Tensor, predictions: Tensor) -> None:
        """radii [runs, C] and predictions [runs, N] of the networks after `epoch`; no device sync."""
        newly = (radii > self.previous) & (self.inverted_at < 0)
        wrong = predictions != self.labels
        self.inverted_at = torch.where(newly, epoch, self.inverted_at)
        self.wrong_at_own_inversion = torch.where(newly[:, self.labels], wrong, self.wrong_at_own_inversion)
        self.wrong_at_last_inversion = torch.where(newly.any(1, keepdim=True), wrong, self.wrong_at_last_inversion)
        self.previous = radii

    def done(self) -> bool:
        """Whether every class of every run has inverted (one device sync)."""
        return bool((self.inverted_at >= 0).all())

    def hard(self, snapshot: str = "copy") -> Tensor:
        """[runs, N] stragglers: by each class's own snapshot ('copy') or the run's last one ('last')."""
        return self.wrong_at_own_inversion if snapshot == "copy" else self.wrong_at_last_inversion


def identify_stragglers(seeds: Sequence[int], data: Tensor, labels: Tensor, num_classes: int, epochs: int,
                        snapshot: str = "copy", progress: bool = True,
                        class_names: Sequence[str] | None = None) -> tuple[Tensor, np.ndarray]:
    """Stragglers found by one SimpleNN per seed, all trained at once: hard [networks, N] bool and the
    inversion epochs [networks, C].

    A network in which some class does not invert within `epochs` is replaced by a fresh initialisation,
    up to MAX_INVERSION_ATTEMPTS times; then an IdentificationError names the classes that never inverted
    (by `class_names`, else by index): the straggler set is absent.
    """
    names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
    sizes = torch.bincount(labels, minlength=num_classes).cpu()
    if (sizes < 2).any():  # the radius of a single sample is always 0: it can never grow
        tiny = [names[c] for c in (sizes < 2).nonzero().flatten().tolist()]
        raise IdentificationError(f"class(es) {', '.join(tiny)} have fewer than 2 samples in the subset, so no "
                                  "inversion point; give a larger --subset_size", tiny)
    hard = torch.zeros(len(seeds), len(labels), dtype=torch.bool, device=labels.device)
    inverted_at = np.full((len(seeds), num_classes), -1)
    pending = list(range(len(seeds)))
    for attempt in range(MAX_INVERSION_ATTEMPTS):
        tracker = StragglerTracker(len(pending), labels, num_classes)
        train_simple_nns([stage_seed(seeds[i], NetworkStage.STRAGGLER_ATTEMPT, attempt) for i in pending], data, labels, num_classes, epochs,
                         observers=[tracker], progress=progress,
                         description=f"stragglers: {len(pending)} network(s), attempt {attempt + 1}")
        epochs_found = tracker.inverted_at.cpu().numpy()
        done = (epochs_found >= 0).all(1)
        for j in np.flatnonzero(done):
            hard[pending[j]] = tracker.hard(snapshot)[j]
            inverted_at[pending[j]] = epochs_found[j]
        pending = [i for i, finished in zip(pending, done) if not finished]
        if not pending:
            return hard, inverted_at
    never = [names[c] for c in np.flatnonzero((epochs_found < 0).any(0))]
    raise IdentificationError(f"no straggler set: class(es) {', '.join(never)} reached no inversion point within "
                              f"{epochs} epochs in {MAX_INVERSION_ATTEMPTS} initialisations; give more --epochs", never)


def hardness_scores(logits: Tensor, strategy: str) -> Tensor:
    """[..., N] scores of `strategy` (a key of SCORERS), higher = harder."""
    if strategy not in SCORERS:
        raise ValueError(f"no score for strategy '{strategy}'; known: {', '.join(SCORERS)}")
    return SCORERS[strategy](logits)


def select_hardest(scores: Tensor, labels: Tensor, counts: Tensor, level: str) -> Tensor:
    """Mark the hardest samples of every run: [runs, N] scores (higher = harder), counts [runs, C].

    level 'class': the counts[r, c] highest-scoring samples of class c; level 'dataset': the
    counts[r].sum() highest-scoring samples of the whole dataset. Ties go to the lower index.
    """
    runs, n = scores.shape
    order = scores.argsort(dim=1, descending=True, stable=True)
    if level == "dataset":
        rank_sorted = torch.arange(n, device=scores.device).expand(runs, -1)
        hard_sorted = rank_sorted < counts.sum(1, keepdim=True)
    else:
        sorted_labels = labels[order]
        rank_sorted = F.one_hot(sorted_labels, counts.shape[1]).cumsum(1).gather(2, sorted_labels[..., None])[..., 0] - 1
        hard_sorted = rank_sorted < counts.gather(1, sorted_labels)
    return torch.zeros_like(hard_sorted).scatter_(1, order, hard_sorted)


def class_counts(masks: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """How many samples of each class every row of `masks` [runs, N] marks: [runs, C] int64."""
    return (masks.float() @ one_hot_float(labels, num_classes)).round().long()


def noise_share_per_class(noise_ratio: float, size: int, num_classes: int) -> int:
    """The extra hard samples per class that label noise adds to a budget: int(noise_ratio * N / C)."""
    return int(noise_ratio * size / num_classes)


def vog_hardness(seeds: Sequence[int], data: Tensor, labels: Tensor, num_classes: int, epochs: int, level: str,
                 progress: bool = True) -> Tensor:
    """[networks, N] late-stage VoG of one fresh SimpleNN per seed trained on `labels` (all at once), from
    VOG_CHECKPOINTS checkpoints kept evenly over training, of the logit of the label trained on; raw for
    level 'class', normalised within each class for level 'dataset' (raw VoG favours classes whose
    gradients are large)."""
    recorder = CheckpointRecorder(checkpoint_epochs(epochs, VOG_CHECKPOINTS))
    model = train_simple_nns(seeds, data, labels, num_classes, epochs, observers=[recorder], progress=progress,
                             description=f"vog: {len(seeds)} network(s)")
    vog = vog_scores(model, recorder.checkpoints, data, labels, stages=[VOG_STAGE])[VOG_STAGE]  # [networks, N]
    return vog if level == "class" else calibrate(vog, labels, "normalize")


def dynamics_hardness(strategy: str, seeds: Sequence[int], data: Tensor, labels: Tensor, num_classes: int,
                      epochs: int, progress: bool = True) -> Tensor:
    """[networks, N] hardness by a training-dynamics `strategy` (a key of DYNAMICS_STRATEGIES, oriented so that
    higher is harder) of one fresh SimpleNN per seed trained on `labels`, recorded after every epoch."""
    recorder = DynamicsRecorder(data, labels, num_classes, len(seeds), range(epochs), DYNAMICS_SCORE_EPOCH,
                                grand=strategy == "grand")
    train_simple_nns(seeds, data, labels, num_classes, epochs, observers=[recorder], progress=progress,
                     description=f"{strategy}: {len(seeds)} network(s)")
    array, sign = RANKINGS[strategy]
    return sign * recorder.scores()[array].float()


def budget_counts(budget: float | int, sizes: Tensor) -> Tensor:
    """Hard samples per class [C] of a fixed --budget: int(share * size) of each class for a share in (0, 1),
    else that count (at most the class's size)."""
    counts = (budget * sizes.double()).floor().long() if isinstance(budget, float) else torch.full_like(sizes, budget)
    return torch.minimum(counts, sizes)


def identify_hard_samples(strategy: str, seeds: Sequence[int], data: Tensor, clean_labels: Tensor,
                          noisy_labels: Tensor, num_classes: int, epochs: int, level: str = "dataset",
                          noise_ratio: float = 0.0, snapshot: str = "copy", progress: bool = True,
                          budget: float | int | None = None,
                          class_names: Sequence[str] | None = None) -> tuple[Tensor, np.ndarray]:
    """Hard samples [networks, N] bool found by `strategy`, one identification per seed, all at once, and
    the inversion epochs [networks, C] of the straggler search behind them.

    As the original: 'stragglers' are found on the noisy labels. A scored strategy first finds the
    stragglers on the CLEAN labels to set its budget, per class their count plus int(noise_ratio * N / C)
    (capped at the class's size); then fresh SimpleNNs are trained on the noisy labels for all `epochs` and
    the budget's highest-scoring samples are hard: per noisy class, or at `level` 'dataset' the budget's
    total over the whole dataset. Every scored strategy scores the same fresh networks (same seeds).
    With `budget` (--budget: a share of each class or a count per class) the scored strategies take that
    budget instead and search no stragglers (inversion epochs all -1). Without it, a class that never
    inverts leaves the straggler set absent: a UserInputError names the classes and --budget.
    """
    if strategy == "stragglers":
        return identify_stragglers(seeds, data, noisy_labels, num_classes, epochs, snapshot, progress,
                                   class_names=class_names)
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy '{strategy}'; known: {', '.join(STRATEGIES)}")
    sizes = torch.bincount(noisy_labels, minlength=num_classes)
    if budget is None:
        try:
            stragglers, inversion_epochs = identify_stragglers(seeds, data, clean_labels, num_classes, epochs,
                                                               snapshot, progress, class_names=class_names)
        except IdentificationError as error:
            raise UserInputError(f"{strategy} takes its budget from the stragglers, and there is no straggler set: "
                                 f"class(es) {', '.join(error.classes)} never reached an inversion point; give "
                                 "--budget (a share of each class, e.g. 0.1, or a count per class)") from error
        extra = noise_share_per_class(noise_ratio, len(clean_labels), num_classes)
        budgets = torch.minimum(class_counts(stragglers, clean_labels, num_classes) + extra, sizes)
    else:
        inversion_epochs = np.full((len(seeds), num_classes), -1)
        budgets = budget_counts(budget, sizes).expand(len(seeds), -1)
    fresh_seeds = [stage_seed(seed, NetworkStage.FRESH_NETWORK) for seed in seeds]
    if strategy == "vog":
        scores = vog_hardness(fresh_seeds, data, noisy_labels, num_classes, epochs, level, progress)
    elif strategy in DYNAMICS_STRATEGIES:
        scores = dynamics_hardness(strategy, fresh_seeds, data, noisy_labels, num_classes, epochs, progress)
    else:
        model = train_simple_nns(fresh_seeds, data, noisy_labels, num_classes, epochs, progress=progress,
                                 description=f"{strategy}: {len(seeds)} network(s)")
        scores = hardness_scores(network_logits(model, data), strategy)
    hard = select_hardest(scores, noisy_labels, budgets, level)
    return hard, inversion_epochs
