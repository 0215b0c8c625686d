"""Hard-sample identifiers (stragglers, confidence, energy), label noise, splits, metrics and batched
evaluation, against hand-computed values, torchmetrics and plain one-network loops."""
import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.functional.classification import (multiclass_accuracy, multiclass_f1_score,
                                                    multiclass_precision, multiclass_recall)

from hardness import engine, identifiers
from hardness.splits import benchmark_splits, reduction_masks, split_train_test
from hardness.engine import RadiiRecorder, network_logits, resnet_logits, train_full_batch, train_networks
from hardness.noise import confusable_classes, flip_labels
from hardness.seeds import MemorisationStage, derived_seed
from hardness.identifiers import (MAX_INVERSION_ATTEMPTS, IdentificationError, StragglerTracker, class_counts,
                                  hardness_scores, identify_hard_samples, identify_stragglers, select_hardest)
from hardness.metrics import METRICS, classification_metrics, train_and_evaluate
from neural_networks import BatchedSimpleNN, ResNet18, SimpleNN

# ----------------------------------------------------------------------------- a small problem with known hard samples

BLOB_CLASSES, BLOB_SIZE, BLOB_FLIPPED = 3, 30, 8
STRAGGLER_SEEDS = list(range(8))
STRAGGLER_EPOCHS = 150


def noisy_blobs(seed: int = 4, per_class: int = BLOB_SIZE, num_classes: int = BLOB_CLASSES,
                flipped_per_class: int = BLOB_FLIPPED, spread: float = 0.7) -> tuple[Tensor, Tensor, Tensor]:
    """Gaussian blobs in 16 dimensions, shaped as 1x4x4 images (centres ~ N(0, 4 I), noise `spread`).

    The first `flipped_per_class` samples of every class are labelled as the next class although they
    sit inside their own blob: they are the hard samples. With these settings every class of every
    network inverts within a few initialisations (found by experiment). Returns data [N, 1, 4, 4],
    the noisy labels [N] and the flipped mask [N].
    """
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, 16, generator=generator) * 2
    clean = torch.arange(num_classes).repeat_interleave(per_class)
    data = centres[clean] + spread * torch.randn(len(clean), 16, generator=generator)
    flipped = (torch.arange(len(clean)) % per_class) < flipped_per_class
    labels = torch.where(flipped, (clean + 1) % num_classes, clean)
    return data.view(len(clean), 1, 4, 4), labels, flipped


def simple_nn_for(seeds: list[int], data: Tensor, num_classes: int) -> BatchedSimpleNN:
    """The SimpleNNs train_networks builds for greyscale data (2 x 20)."""
    return BatchedSimpleNN.from_seeds(seeds, input_size=data[0].numel(), width=20, depth=2, num_classes=num_classes)


def predictions_after(initialisation: int, data: Tensor, labels: Tensor, num_classes: int, epochs: int) -> Tensor:
    """Predicted classes [N] of one SimpleNN after `epochs` full-batch SGD steps (epochs 0 .. epochs-1)."""
    model = simple_nn_for([initialisation], data, num_classes)
    train_full_batch(model, torch.optim.SGD(model.parameters(), lr=0.1), data, labels, epochs, num_classes,
                     progress=False)
    with torch.no_grad():
        return model(data)[0][0].argmax(-1)


def first_growth_at_checks(radii: np.ndarray, epochs: np.ndarray) -> np.ndarray:
    """The original's rule, written out: radii [epochs, C] after the steps of `epochs`; checks at epochs
    20, 25, 30, ...; the first check whose radius exceeds the previous check's, per class (-1 if none)."""
    found = np.full(radii.shape[1], -1)
    checks = [i for i, e in enumerate(epochs) if e >= 20 and e % 5 == 0]
    for c in range(radii.shape[1]):
        for before, after in zip(checks, checks[1:]):
            if radii[after, c] > radii[before, c]:
                found[c] = epochs[after]
                break
    return found


def reference_stragglers(seed: int, data: Tensor, labels: Tensor, num_classes: int,
                         epochs: int) -> tuple[Tensor, Tensor, Tensor, int]:
    """One network's straggler search done the slow way: radii after every epoch from 20 on (a
    RadiiRecorder), inversion epochs by the rule written out above, trying the initialisations
    derived_seed(seed, 0, attempt) in turn; then the predictions of fresh copies trained up to each
    inversion epoch (epoch e: e + 1 steps). Returns the inversion epochs [C], the 'copy' and 'last'
    stragglers [N] and the attempt."""
    for attempt in range(MAX_INVERSION_ATTEMPTS):
        initialisation = derived_seed(seed, 0, attempt)
        model = simple_nn_for([initialisation], data, num_classes)
        recorder = RadiiRecorder(1, num_classes, 20, epochs - 1, data.device)
        train_full_batch(model, torch.optim.SGD(model.parameters(), lr=0.1), data, labels, epochs, num_classes,
                         observers=[recorder], progress=False)
        inverted = torch.from_numpy(first_growth_at_checks(recorder.radii[0], recorder.epochs))
        if (inverted >= 0).all():
            break
    else:
        raise AssertionError(f"seed {seed}: the reference found no inversion for every class")
    wrong_at = {int(epoch): predictions_after(initialisation, data, labels, num_classes, int(epoch) + 1) != labels
                for epoch in inverted.unique()}
    copy = torch.zeros(len(labels), dtype=torch.bool)
    for c in range(num_classes):
        copy |= (labels == c) & wrong_at[int(inverted[c])]
    return inverted, copy, wrong_at[int(inverted.max())], attempt


@pytest.fixture(scope="module")
def blobs() -> tuple[Tensor, Tensor, Tensor]:
    return noisy_blobs()


@pytest.fixture(scope="module")
def stragglers(blobs) -> dict[str, tuple[Tensor, np.ndarray]]:
    """identify_stragglers on the blobs with both snapshots: name -> (hard [networks, N], inversion epochs)."""
    data, labels, _ = blobs
    return {snapshot: identify_stragglers(STRAGGLER_SEEDS, data, labels, BLOB_CLASSES, STRAGGLER_EPOCHS, snapshot,
                                          progress=False)
            for snapshot in ("copy", "last")}


# ----------------------------------------------------------------------------- StragglerTracker

# One run, six samples, three classes; checks at 20, 25, 30, 35 (and 40 after everything inverted).
TRACKER_LABELS = torch.tensor([0, 0, 1, 1, 2, 2])
TRACKER_RADII = {20: [0.5, 0.5, 0.5],
                 25: [0.6, 0.4, 0.4],     # class 0 grows: inverts at 25
                 30: [0.3, 0.5, 0.3],     # class 1 grows: inverts at 30
                 35: [0.9, 0.1, 0.35],    # class 2 grows: inverts at 35 (class 0 grows again: no matter)
                 40: [1.0, 1.0, 1.0]}
TRACKER_PREDICTIONS = {20: [1, 1, 0, 0, 0, 0],
                       25: [1, 0, 0, 1, 0, 1],   # wrong: 0, 2, 4, 5; class 0: sample 0 wrong, sample 1 right
                       30: [0, 1, 1, 0, 0, 2],   # wrong: 1, 3, 4; class 1: sample 2 right, sample 3 wrong
                       35: [0, 0, 1, 1, 1, 2],   # wrong: 4; class 2: sample 4 wrong, sample 5 right
                       40: [2, 2, 0, 0, 0, 0]}   # everything wrong, after every class inverted


def feed(tracker: StragglerTracker, epoch: int) -> None:
    tracker.update(epoch, torch.tensor([TRACKER_RADII[epoch]]), torch.tensor([TRACKER_PREDICTIONS[epoch]]))


def test_tracker_checks_from_epoch_20_every_5():
    tracker = StragglerTracker(1, TRACKER_LABELS, 3)
    assert [epoch for epoch in (0, 5, 15, 19, 20, 21, 24, 25, 30, 31) if tracker.is_check(epoch)] == [20, 25, 30]


def test_check_step_convention_on_a_hand_built_radius_sequence():
    """The original: checks after the steps of epochs 20, 25, 30, ... (0-based); a class inverts at the first
    check whose radius exceeds the previous check's. Radii are given for every epoch 0 .. 44; only the
    checked ones may matter."""
    radii = np.full((45, 4), 0.5)
    radii[:, 0] = np.where(np.arange(45) <= 27, 1 - 0.01 * np.arange(45), 0.73 + 0.02 * (np.arange(45) - 27))
    radii[21, 1] = 0.9                          # a spike after a step that is not checked: ignored
    radii[40:, 1] = 0.6                         # r40 = 0.6 > r35 = 0.5: inverts at 40
    radii[25:, 2] = 0.7                         # r25 = 0.7 > r20 = 0.5: the earliest inversion, epoch 25
    radii[:20, 3] = np.linspace(0.1, 2.0, 20)   # grows only before the checks start: never inverts
    tracker = StragglerTracker(1, torch.tensor([0, 1, 2, 3]), 4)
    for epoch in range(45):
        if tracker.is_check(epoch):
            tracker.update(epoch, torch.tensor(radii[epoch:epoch + 1], dtype=torch.float32), torch.zeros(1, 4).long())
    # class 0: r25 = 0.75 < r20 = 0.80; r30 = 0.79 > r25: inverts at 30 (its minimum is at 27, between checks)
    assert tracker.inverted_at.tolist() == [[30, 40, 25, -1]]


class StepCounter:
    """An observer of every epoch that records, for each, how many optimizer steps had been taken."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.steps, self.seen = 0, []
        optimizer.register_step_post_hook(lambda *_: setattr(self, "steps", self.steps + 1))

    def is_check(self, epoch: int) -> bool:
        return True

    def observe(self, state) -> None:
        self.seen.append((state.epoch, self.steps))

    def done(self) -> bool:
        return False


def test_the_engine_shows_epoch_e_after_its_step():
    """Epoch e is the (e + 1)-th step: an observer of epoch e sees the networks after e + 1 steps, for
    every e = 0 .. epochs - 1, and nothing before the first step."""
    data, labels = torch.randn(12, 1, 2, 2), torch.arange(12) % 3
    model = simple_nn_for([0], data, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    counter = StepCounter(optimizer)
    losses = train_full_batch(model, optimizer, data, labels, 7, 3, observers=[counter], progress=False)
    assert counter.seen == [(e, e + 1) for e in range(7)] and losses.shape == (1, 7)


def test_tracker_inversions_and_copy_versus_last_by_hand():
    tracker = StragglerTracker(1, TRACKER_LABELS, 3)
    feed(tracker, 20)
    assert tracker.inverted_at.tolist() == [[-1, -1, -1]]           # the first check has nothing to compare with
    feed(tracker, 25)
    assert tracker.inverted_at.tolist() == [[25, -1, -1]]
    assert tracker.hard("copy").tolist() == [[True, False, False, False, False, False]]
    assert tracker.hard("last").tolist() == [[True, False, True, False, True, True]]
    feed(tracker, 30)
    assert tracker.inverted_at.tolist() == [[25, 30, -1]] and not tracker.done()
    assert tracker.hard("copy").tolist() == [[True, False, False, True, False, False]]  # class 0 kept its verdict
    assert tracker.hard("last").tolist() == [[False, True, False, True, True, False]]
    feed(tracker, 35)
    assert tracker.inverted_at.tolist() == [[25, 30, 35]] and tracker.done()
    # copy: each class judged at its own inversion; last: everyone judged by the predictions at epoch 35
    assert tracker.hard("copy").tolist() == [[True, False, False, True, True, False]]
    assert tracker.hard("last").tolist() == [[False, False, False, False, True, False]]
    feed(tracker, 40)                                                  # later updates change nothing
    assert tracker.inverted_at.tolist() == [[25, 30, 35]]
    assert tracker.hard("copy").tolist() == [[True, False, False, True, True, False]]
    assert tracker.hard("last").tolist() == [[False, False, False, False, True, False]]


def test_tracker_runs_are_independent_and_equal_radii_are_no_inversion():
    """Run 0 inverts everything at 25, run 1 keeps its radii constant, run 2 is the hand-made run above,
    fed through its own slice as train_resnets does."""
    tracker = StragglerTracker(3, TRACKER_LABELS, 3)
    for epoch in (20, 25, 30, 35):
        radii = torch.tensor([[1.0, 1.0, 1.0] if epoch == 20 else [2.0, 2.0, 2.0], [0.7, 0.7, 0.7],
                              TRACKER_RADII[epoch]])
        predictions = torch.tensor([[1, 0, 1, 1, 2, 0] if epoch == 25 else [0] * 6, [2] * 6,  # run 0 wrong: 0, 5
                                    TRACKER_PREDICTIONS[epoch]])
        tracker.update(epoch, radii, predictions)
    assert tracker.inverted_at.tolist() == [[25, 25, 25], [-1, -1, -1], [25, 30, 35]]
    assert not tracker.done()
    for snapshot in ("copy", "last"):
        assert tracker.hard(snapshot)[0].tolist() == [True, False, False, False, False, True]
        assert not tracker.hard(snapshot)[1].any()
    assert tracker.hard("copy")[2].tolist() == [True, False, False, True, True, False]
    assert tracker.hard("last")[2].tolist() == [False, False, False, False, True, False]


class RecordingTracker(StragglerTracker):
    """A StragglerTracker that also keeps what every update was given."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[tuple[int, Tensor, Tensor]] = []

    def update(self, epoch: int, radii: Tensor, predictions: Tensor) -> None:
        self.seen.append((epoch, radii.clone(), predictions.clone()))
        super().update(epoch, radii, predictions)


@pytest.mark.parametrize("epochs, checks", [(31, [20, 25, 30]), (33, [20, 25, 30])])
def test_train_full_batch_feeds_the_tracker_at_its_checks(blobs, epochs, checks):
    """A class of one sample has radius 0 at every check, so it never inverts and training runs to the end."""
    data, labels, _ = blobs
    labels = labels.clone()
    labels[0] = 3
    seeds = [derived_seed(seed, 0, 0) for seed in range(3)]
    tracker = RecordingTracker(len(seeds), labels, 4)
    model = simple_nn_for(seeds, data, 4)
    losses = train_full_batch(model, torch.optim.SGD(model.parameters(), lr=0.1), data, labels, epochs, 4,
                              observers=[tracker], progress=False)
    assert [epoch for epoch, _, _ in tracker.seen] == checks
    assert losses.shape == (3, epochs)
    assert (tracker.inverted_at[:, 3] == -1).all()
    reference = simple_nn_for(seeds, data, 4)
    recorder = RadiiRecorder(3, 4, 20, epochs - 1, data.device)
    train_full_batch(reference, torch.optim.SGD(reference.parameters(), lr=0.1), data, labels, epochs, 4,
                     observers=[recorder], progress=False)
    for epoch, seen_radii, _ in tracker.seen:
        torch.testing.assert_close(seen_radii, torch.from_numpy(recorder.radii[:, epoch - 20]), atol=0, rtol=0)
    if epochs - 1 in checks:  # the last check sees the fully trained networks
        with torch.no_grad():
            assert torch.equal(tracker.seen[-1][2], model(data)[0].argmax(-1))


def test_train_full_batch_stops_once_every_class_inverted(blobs):
    data, labels, _ = blobs
    seeds = [derived_seed(seed, 0, 0) for seed in (0, 2)]  # both invert every class within 150 epochs
    tracker = RecordingTracker(len(seeds), labels, BLOB_CLASSES)
    model = simple_nn_for(seeds, data, BLOB_CLASSES)
    losses = train_full_batch(model, torch.optim.SGD(model.parameters(), lr=0.1), data, labels, STRAGGLER_EPOCHS,
                              BLOB_CLASSES, observers=[tracker], progress=False)
    last_inversion = int(tracker.inverted_at.max())
    assert tracker.done() and last_inversion < STRAGGLER_EPOCHS
    assert [epoch for epoch, _, _ in tracker.seen] == list(range(20, last_inversion + 1, 5))
    assert losses.shape == (2, last_inversion + 1)  # no step after the check that found the last inversion


# ----------------------------------------------------------------------------- identify_stragglers

def test_stragglers_equal_a_one_network_reference(blobs, stragglers):
    data, labels, _ = blobs
    (copy, inverted), (last, inverted_last) = stragglers["copy"], stragglers["last"]
    assert (inverted == inverted_last).all() and (inverted >= 25).all()
    attempts = []
    for run, seed in enumerate(STRAGGLER_SEEDS):
        expected_epochs, expected_copy, expected_last, attempt = reference_stragglers(seed, data, labels, BLOB_CLASSES,
                                                                                      STRAGGLER_EPOCHS)
        assert inverted[run].tolist() == expected_epochs.tolist(), f"network {run}"
        assert torch.equal(copy[run], expected_copy), f"network {run}"
        assert torch.equal(last[run], expected_last), f"network {run}"
        attempts.append(attempt)
    assert 0 in attempts and max(attempts) > 0  # both first initialisations and replacements are covered


def test_stragglers_are_the_flipped_samples(blobs, stragglers):
    _, _, flipped = blobs
    hard, _ = stragglers["copy"]
    assert hard.shape == (len(STRAGGLER_SEEDS), len(flipped)) and hard.dtype == torch.bool
    assert hard[:, flipped].float().mean() >= 0.9     # the mislabelled samples are found ...
    assert hard[:, ~flipped].float().mean() <= 0.02   # ... and the clean, well-separated ones are not


def test_copy_and_last_snapshots_differ_only_before_the_last_inversion(blobs, stragglers):
    _, labels, _ = blobs
    (copy, inverted), (last, _) = stragglers["copy"], stragglers["last"]
    differing = 0
    for run in range(len(STRAGGLER_SEEDS)):
        for c in range(BLOB_CLASSES):
            members = labels == c
            if inverted[run, c] == inverted[run].max():
                assert torch.equal(copy[run, members], last[run, members]), f"network {run}, class {c}"
            else:
                differing += int((copy[run, members] != last[run, members]).any())
    assert differing > 0


def test_a_single_check_finds_no_inversion():
    data, labels, _ = noisy_blobs()
    with pytest.raises(IdentificationError, match=r"class\(es\) 0, 1, 2 reached no inversion point within 21 epochs"):
        identify_stragglers([0, 1], data, labels, BLOB_CLASSES, 21, progress=False)


@pytest.mark.parametrize("members", [0, 1])
def test_a_class_with_fewer_than_two_samples_is_named(members):
    """A class of one sample has radius 0 at every check, so it can never invert; none at all, neither."""
    data, labels, _ = noisy_blobs()
    labels = labels.clone()
    labels[len(labels) - members:] = 3
    with pytest.raises(IdentificationError, match=r"^class\(es\) 3 have fewer than 2 samples"):
        identify_stragglers([0], data, labels, 4, STRAGGLER_EPOCHS, progress=False)


# ----------------------------------------------------------------------------- confidence and energy

def test_hardness_scores_by_hand():
    logits = torch.tensor([[[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]],
                           [[-1.0, -5.0, -2.0], [10.0, 0.0, 10.0]]])
    # logsumexp(1, 2, 3) = 3 + log(1 + e^-1 + e^-2) = 3.4076059644; logsumexp(0, 0, 0) = log 3;
    # logsumexp(-1, -5, -2) = -1 + log(1 + e^-4 + e^-1) = -0.6734373587; logsumexp(10, 0, 10) = 10 + log(2 + e^-10)
    torch.testing.assert_close(hardness_scores(logits, "confidence"), torch.tensor([[-3.0, 0.0], [1.0, -10.0]]))
    energy = torch.tensor([[-3.4076059644, -math.log(3)], [0.6734373587, -(10 + math.log(2 + math.exp(-10)))]])
    torch.testing.assert_close(hardness_scores(logits, "energy"), energy)


SELECT_LABELS = torch.tensor([0, 1, 0, 1, 0, 1])
SELECT_SCORES = torch.tensor([[0.1, 0.9, 0.5, 0.5, 0.7, 0.2],
                              [0.3, 0.3, 0.3, 0.3, 0.3, 0.3],
                              [-1.0, 5.0, 2.0, 0.0, 3.0, 4.0]])
SELECT_COUNTS = torch.tensor([[1, 2], [2, 0], [3, 1]])


def test_select_hardest_within_each_class():
    expected = [[False, True, False, True, True, False],   # class 0: 0.7 (4); class 1: 0.9 (1), 0.5 (3)
                [True, False, True, False, False, False],  # all tied: the two lowest class-0 indices
                [True, True, True, False, True, False]]    # all of class 0; class 1: 5.0 (1)
    assert select_hardest(SELECT_SCORES, SELECT_LABELS, SELECT_COUNTS, "class").tolist() == expected


def test_select_hardest_over_the_dataset():
    expected = [[False, True, True, False, True, False],   # 0.9, 0.7, then 0.5 at 2 before 0.5 at 3
                [True, True, False, False, False, False],  # all tied: the two lowest indices
                [False, True, True, False, True, True]]    # 5, 4, 3, 2
    assert select_hardest(SELECT_SCORES, SELECT_LABELS, SELECT_COUNTS, "dataset").tolist() == expected


def test_select_hardest_breaks_ties_by_index_in_long_rows():
    """Equal scores over 100 samples, where an unstable sort would shuffle them."""
    labels = torch.arange(100) % 3
    counts = torch.tensor([[5, 0, 2], [1, 1, 1]])
    by_class = select_hardest(torch.zeros(2, 100), labels, counts, "class")
    assert by_class[0].nonzero().flatten().tolist() == [0, 2, 3, 5, 6, 9, 12]  # class 0: 0, 3, ..., 12; class 2: 2, 5
    assert by_class[1].nonzero().flatten().tolist() == [0, 1, 2]
    by_dataset = select_hardest(torch.zeros(2, 100), labels, counts, "dataset")
    assert by_dataset[0].nonzero().flatten().tolist() == list(range(7))
    assert by_dataset[1].nonzero().flatten().tolist() == [0, 1, 2]


def test_class_counts_by_hand():
    masks = torch.tensor([[True, True, False, True, False, False], [False] * 6])
    assert class_counts(masks, SELECT_LABELS, 3).tolist() == [[1, 2, 0], [0, 0, 0]]


@pytest.mark.parametrize("strategy", ["confidence", "energy"])
@pytest.mark.parametrize("level, noise_ratio, extra", [("class", 0.0, 0), ("class", 0.1, 2), ("dataset", 0.05, 1),
                                                      ("dataset", 0.6, 16)])
def test_identify_hard_samples_takes_as_many_as_there_are_stragglers(blobs, strategy, level, noise_ratio, extra):
    """80 samples in 3 classes: int(noise_ratio * 80 / 3) extra per class. Class 0 is cut to 20 samples, so
    16 extra hard samples per class are more than it has: capped. The labels are left clean here, so only
    the budget's arithmetic is under test."""
    data, labels, _ = blobs
    kept = (torch.arange(len(labels)) < 20) | (torch.arange(len(labels)) >= BLOB_SIZE)
    data, labels = data[kept], labels[kept]
    seeds = STRAGGLER_SEEDS[:3]
    hard, _ = identify_hard_samples(strategy, seeds, data, labels, labels, BLOB_CLASSES, STRAGGLER_EPOCHS, level,
                                    noise_ratio, progress=False)
    stragglers, _ = identify_stragglers(seeds, data, labels, BLOB_CLASSES, STRAGGLER_EPOCHS, progress=False)
    sizes = torch.bincount(labels, minlength=BLOB_CLASSES)
    expected = torch.minimum(class_counts(stragglers, labels, BLOB_CLASSES) + extra, sizes)
    assert sizes.tolist() == [20, 30, 30] and (expected > 0).all()
    counts = class_counts(hard, labels, BLOB_CLASSES)
    if level == "class":
        assert torch.equal(counts, expected)
    else:
        assert torch.equal(counts.sum(1), expected.sum(1)) and (expected.sum(1) < len(labels)).all()
    # the chosen samples are the highest-scoring ones of networks trained afresh for the full epochs
    model = train_networks("SimpleNN", [derived_seed(seed, 1) for seed in seeds], data, labels, BLOB_CLASSES,
                           STRAGGLER_EPOCHS, progress=False)
    scores = hardness_scores(network_logits(model, data), strategy)
    groups = [labels == c for c in range(BLOB_CLASSES)] if level == "class" else [torch.ones_like(labels).bool()]
    for run in range(len(seeds)):
        for group in groups:
            chosen, rest = scores[run, group & hard[run]], scores[run, group & ~hard[run]]
            assert len(chosen) and len(rest) and chosen.min() >= rest.max()


# Noisy labels by hand: of the 90 blob samples (30 per class, samples 8-29 of each labelled as their blob),
# samples 10 and 11 (class 0) become class 1, sample 40 (class 1) becomes class 2: noisy class sizes 28,
# 31, 31. The fake straggler search marks samples 10, 11 (class 0), 40 (class 1) and 70, 71, 72 (class 2)
# whatever labels it is given.
HAND_FLIPS = {10: 1, 11: 1, 40: 2}
HAND_STRAGGLERS = [10, 11, 40, 70, 71, 72]


@pytest.mark.parametrize("strategy", identifiers.STRATEGIES)
@pytest.mark.parametrize("level", ["class", "dataset"])
def test_budgets_under_noise_by_hand(monkeypatch, blobs, strategy, level):
    """As the original: stragglers are searched on the noisy labels; confidence, energy and vog search them on
    the clean labels and add int(0.1 * 90 / 3) = 3 per class to the clean counts (2, 1, 3): budgets 5, 4, 6
    (15 in all at the dataset level), taken by noisy class from networks trained on the noisy labels."""
    data, clean, _ = blobs
    assert clean[HAND_STRAGGLERS].tolist() == [0, 0, 1, 2, 2, 2] and torch.bincount(clean).tolist() == [30, 30, 30]
    noisy = clean.clone()
    for sample, label in HAND_FLIPS.items():
        noisy[sample] = label
    searched_on, trained_on = [], []

    def fake_straggler_search(seeds, data, labels, num_classes, epochs, snapshot="copy", progress=True, class_names=None):
        searched_on.append(labels)
        hard = torch.zeros(len(seeds), len(labels), dtype=torch.bool)
        hard[:, HAND_STRAGGLERS] = True
        return hard, np.full((len(seeds), num_classes), 25)

    real_training = identifiers.train_simple_nns

    def recording_training(seeds, data, labels, *args, **kwargs):
        trained_on.append(labels)
        return real_training(seeds, data, labels, *args, **kwargs)

    monkeypatch.setattr(identifiers, "identify_stragglers", fake_straggler_search)
    monkeypatch.setattr(identifiers, "train_simple_nns", recording_training)
    hard, inversion_epochs = identify_hard_samples(strategy, [0, 1], data, clean, noisy, BLOB_CLASSES, 40, level,
                                                   noise_ratio=0.1, progress=False)
    assert (inversion_epochs == 25).all()  # the search's own
    if strategy == "stragglers":
        assert len(searched_on) == 1 and searched_on[0] is noisy and not trained_on
        assert hard[:, HAND_STRAGGLERS].all() and int(hard.sum()) == 2 * len(HAND_STRAGGLERS)
        return
    assert len(searched_on) == 1 and searched_on[0] is clean
    assert len(trained_on) == 1 and trained_on[0] is noisy
    counts = class_counts(hard, noisy, BLOB_CLASSES)
    if level == "class":
        assert counts.tolist() == [[5, 4, 6], [5, 4, 6]]
    else:
        assert counts.sum(1).tolist() == [15, 15]


def one_network_late_vog(seed: int, data: Tensor, labels: Tensor, epochs: int) -> Tensor:
    """The vog identifier's score written out for one network: train it alone, keep its state after
    round(k * epochs / 15) steps for k = 1..15, and take VoG of the last 5 from per-example gradients."""
    model = simple_nn_for([seed], data, BLOB_CLASSES)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    keep = {round(k * epochs / 15) for k in range(11, 16)}
    late = []
    for step in range(1, epochs + 1):
        loss = F.cross_entropy(model(data)[0][0], labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step in keep:
            late.append(copy.deepcopy(model.unstack(0)))
    gradients = []
    for network in late:
        per_example = []
        for i in range(len(data)):
            x = data[i:i + 1].clone().requires_grad_()
            per_example.append(torch.autograd.grad(network(x)[0][0, labels[i]], x)[0][0])
        gradients.append(torch.stack(per_example))
    gradients = torch.stack(gradients).double()                                           # [5, N, 1, 4, 4]
    return (gradients - gradients.mean(0)).square().mean(0).sqrt().flatten(1).mean(1)


@pytest.mark.parametrize("level", ["class", "dataset"])
def test_vog_identifier_equals_a_one_network_reference(blobs, level):
    """Late-stage VoG of fresh networks (the confidence networks' seeds), raw per class or normalised within
    each class over the dataset; the chosen samples are the highest-scoring ones, as many as the stragglers."""
    data, labels, _ = blobs
    seeds, epochs = STRAGGLER_SEEDS[:2], 60
    scores = identifiers.vog_hardness([derived_seed(seed, 1) for seed in seeds], data, labels, BLOB_CLASSES, epochs,
                                      level, progress=False)
    for run, seed in enumerate(seeds):
        expected = one_network_late_vog(derived_seed(seed, 1), data, labels, epochs)
        if level == "dataset":
            for c in range(BLOB_CLASSES):
                members = expected[labels == c]
                expected[labels == c] = (members - members.mean()) / members.std(correction=0)
        torch.testing.assert_close(scores[run], expected, rtol=1e-4, atol=1e-5)  # float32 training, 60 steps
    hard, _ = identify_hard_samples("vog", seeds, data, labels, labels, BLOB_CLASSES, STRAGGLER_EPOCHS, level,
                                    progress=False)
    stragglers, _ = identify_stragglers(seeds, data, labels, BLOB_CLASSES, STRAGGLER_EPOCHS, progress=False)
    counts, expected_counts = class_counts(hard, labels, BLOB_CLASSES), class_counts(stragglers, labels, BLOB_CLASSES)
    assert torch.equal(counts, expected_counts) if level == "class" else torch.equal(counts.sum(1), expected_counts.sum(1))
    scores = identifiers.vog_hardness([derived_seed(seed, 1) for seed in seeds], data, labels, BLOB_CLASSES,
                                      STRAGGLER_EPOCHS, level, progress=False)
    groups = [labels == c for c in range(BLOB_CLASSES)] if level == "class" else [torch.ones_like(labels).bool()]
    for run in range(len(seeds)):
        for group in groups:
            assert scores[run, group & hard[run]].min() >= scores[run, group & ~hard[run]].max()


def test_an_unknown_strategy_is_an_error(blobs):
    data, labels, _ = blobs
    with pytest.raises(ValueError, match="unknown strategy 'loss'"):
        identify_hard_samples("loss", [0], data, labels, labels, BLOB_CLASSES, 30, progress=False)
    with pytest.raises(ValueError, match="no score for strategy 'stragglers'"):
        hardness_scores(torch.zeros(2, 3), "stragglers")


def test_identify_hard_samples_with_stragglers_returns_them(blobs, stragglers):
    data, labels, _ = blobs
    hard, inversion_epochs = identify_hard_samples("stragglers", STRAGGLER_SEEDS[:2], data, labels, labels,
                                                   BLOB_CLASSES, STRAGGLER_EPOCHS, progress=False)
    assert torch.equal(hard, stragglers["copy"][0][:2]) and (inversion_epochs == stragglers["copy"][1][:2]).all()


# ----------------------------------------------------------------------------- label noise, splits, reductions

def test_flip_labels_changes_exactly_the_chosen_labels():
    labels = torch.arange(1000) % 10
    noisy, flipped, pairs = flip_labels(labels, 0.3, 10, seed=5)
    assert flipped.dtype == torch.bool and int(flipped.sum()) == 300 and pairs is None
    assert (noisy[flipped] != labels[flipped]).all() and torch.equal(noisy[~flipped], labels[~flipped])
    assert noisy.min() >= 0 and noisy.max() <= 9
    assert torch.equal(labels, torch.arange(1000) % 10)  # the input is left alone
    again, flipped_again, _ = flip_labels(labels, 0.3, 10, seed=5)
    assert torch.equal(noisy, again) and torch.equal(flipped, flipped_again)
    other = flip_labels(labels, 0.3, 10, seed=5, stage=MemorisationStage.HELDOUT_NOISE).flipped
    assert not torch.equal(other, flipped)


def test_flips_are_drawn_from_the_label_noise_stage_of_the_seed():
    # by hand: SeedSequence([seed, 0]) seeds a torch generator; a permutation picks int(0.2 * 50) = 10 samples, then
    # one offset in 1..C-1 each, in the order picked
    labels = torch.arange(50) % 5
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence([7, 0]).generate_state(1)[0]))
    chosen = torch.randperm(50, generator=generator)[:10]
    offsets = torch.randint(1, 5, (10,), generator=generator)
    expected = labels.clone()
    expected[chosen] = (labels[chosen] + offsets) % 5
    noisy, flipped, _ = flip_labels(labels, 0.2, 5, seed=7)
    assert noisy.tolist() == expected.tolist() and sorted(flipped.nonzero().flatten().tolist()) == sorted(chosen.tolist())


def test_pair_noise_moves_each_chosen_sample_into_its_confusable_class():
    # class means at 0, 1, 5 and 11 on a line: 0 <-> 1, 5 -> 1, 11 -> 5
    centres = torch.tensor([0.0, 1.0, 5.0, 11.0])
    labels = torch.arange(40) % 4
    data = (centres[labels] + torch.where(torch.arange(40) % 8 < 4, -0.1, 0.1)).reshape(40, 1, 1, 1)  # means exact
    noisy, flipped, pairs = flip_labels(labels, 0.5, 4, seed=3, noise_type="pairs", data=data)
    assert pairs.tolist() == [1, 0, 1, 2] and int(flipped.sum()) == 20
    expected = labels.clone()
    expected[flipped] = torch.tensor([1, 0, 1, 2])[labels[flipped]]
    assert noisy.tolist() == expected.tolist()
    uniform = flip_labels(labels, 0.5, 4, seed=3).flipped
    assert torch.equal(uniform, flipped)          # the same samples move, whatever the noise type
    with pytest.raises(ValueError, match="needs the data"):
        flip_labels(labels, 0.5, 4, seed=3, noise_type="pairs")


def test_confusable_classes_are_the_nearest_class_means():
    # class means at 0, 1, 5 and 11 on a line (two samples each, symmetric around the mean): 0 <-> 1, 5 -> 1, 11 -> 5
    centres = torch.tensor([0.0, 1.0, 5.0, 11.0])
    data = torch.stack([centres - 0.1, centres + 0.1], 1).reshape(8, 1, 1, 1)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    assert confusable_classes(data, labels, 4).tolist() == [1, 0, 1, 2]


def test_flip_labels_floors_the_count_and_zero_flips_nothing():
    labels = torch.arange(10) % 3
    assert int(flip_labels(labels, 0.25, 3, seed=0).flipped.sum()) == 2   # int(2.5) = 2
    assert int(flip_labels(labels, 0.29, 3, seed=0).flipped.sum()) == 2   # int(2.9) = 2
    noisy, flipped, _ = flip_labels(labels, 0.0, 3, seed=0)
    assert not flipped.any() and torch.equal(noisy, labels)


def test_flipped_labels_are_spread_over_the_other_classes():
    noisy, _, _ = flip_labels(torch.zeros(3000, dtype=torch.int64), 1.0, 3, seed=1)
    counts = torch.bincount(noisy, minlength=3).tolist()
    assert counts[0] == 0 and 1400 <= counts[1] <= 1600 and 1400 <= counts[2] <= 1600


@pytest.mark.parametrize("ratio, hard_train, easy_train", [(0.5, 2, 4), (0.3, 1, 2), (0.9, 4, 7)])
def test_split_takes_the_floor_of_the_ratio_of_hard_and_of_easy_samples(ratio, hard_train, easy_train):
    hard = torch.tensor([True, False] * 5 + [False] * 3)  # 5 hard, 8 easy: int(2.5), int(1.5), int(4.5); 4, 2.4, 7.2
    train = split_train_test(hard, ratio, torch.Generator().manual_seed(3))
    assert train.dtype == torch.bool and train.shape == hard.shape
    assert int((train & hard).sum()) == hard_train and int((train & ~hard).sum()) == easy_train
    assert torch.equal(train, split_train_test(hard, ratio, torch.Generator().manual_seed(3)))


@pytest.mark.parametrize("reduce_hard", [False, True])
def test_reduction_masks_keep_one_kind_and_nest_the_other(reduce_hard):
    hard = torch.arange(20) < 8
    train = (torch.arange(20) < 6) | ((torch.arange(20) >= 8) & (torch.arange(20) < 18))  # 6 hard, 10 easy
    ratios = [0.5, 0.0, 1.0, 0.25]
    masks = reduction_masks(train, hard, ratios, reduce_hard, torch.Generator().manual_seed(2))
    kept, reduced = (train & ~hard, train & hard) if reduce_hard else (train & hard, train & ~hard)
    expected = {0.0: 0, 0.25: 1, 0.5: 3, 1.0: 6} if reduce_hard else {0.0: 0, 0.25: 2, 0.5: 5, 1.0: 10}  # floors
    assert masks.shape == (4, 20)
    for row, ratio in enumerate(ratios):
        assert torch.equal(masks[row] & kept, kept)               # every training sample of the kept kind
        assert not (masks[row] & ~train).any()                     # never a test sample
        assert int((masks[row] & reduced).sum()) == expected[ratio]
    by_ratio = {ratio: masks[row] for row, ratio in enumerate(ratios)}
    for smaller, larger in [(0.0, 0.25), (0.25, 0.5), (0.5, 1.0)]:
        assert not (by_ratio[smaller] & ~by_ratio[larger]).any()
    assert torch.equal(by_ratio[1.0], train) and torch.equal(by_ratio[0.0], kept)


@pytest.mark.parametrize("nested", [False, True])
def test_benchmark_splits_fresh_per_ratio_or_nested(nested):
    """40 hard and 60 easy samples, train ratio 0.5: every row trains on 20 hard and int(r * 30) easy
    samples and tests on the other 20 hard and 30 easy ones; the original draws a fresh split per ratio."""
    hard = torch.arange(100) < 40
    ratios = [0.0, 0.5, 1.0, 0.5]
    train, test = benchmark_splits(hard, 0.5, ratios, False, nested, torch.Generator().manual_seed(0))
    assert train.shape == test.shape == (4, 100)
    assert not (train & test).any()
    assert (test & hard).sum(1).tolist() == [20] * 4 and (test & ~hard).sum(1).tolist() == [30] * 4
    assert (train & hard).sum(1).tolist() == [20] * 4 and (train & ~hard).sum(1).tolist() == [0, 15, 30, 15]
    same_split = [torch.equal(test[0], test[k]) for k in range(1, 4)]
    if nested:
        assert all(same_split) and not (train[1] & ~train[2]).any()
    else:
        assert not any(same_split)


# ----------------------------------------------------------------------------- metrics

def torchmetrics_scores(predictions: Tensor, labels: Tensor, num_classes: int) -> dict[str, float]:
    """The four metrics of one run as torchmetrics computes them."""
    return {"accuracy": multiclass_accuracy(predictions, labels, num_classes, average="micro").item(),
            "precision": multiclass_precision(predictions, labels, num_classes, average="macro").item(),
            "recall": multiclass_recall(predictions, labels, num_classes, average="macro").item(),
            "F1": multiclass_f1_score(predictions, labels, num_classes, average="macro").item()}


def test_metrics_by_hand():
    # class 0: tp 1, fp 1, fn 0 -> precision 1/2, recall 1, F1 2/3; class 1: tp 1, fp 1, fn 1 -> 1/2, 1/2, 1/2;
    # class 2 absent from labels and predictions -> left out; class 3: tp 0, fp 0, fn 1 -> 0, 0, 0
    scores = classification_metrics(torch.tensor([[0, 0, 1, 1]]), torch.tensor([0, 1, 1, 3]),
                                    torch.ones(4, dtype=torch.bool), 4)
    expected = {"accuracy": 0.5, "precision": 1 / 3, "recall": 0.5, "F1": 7 / 18}
    assert {name: value.item() for name, value in scores.items()} == pytest.approx(expected, abs=1e-6)


def test_metrics_of_several_runs_equal_torchmetrics():
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 0, 1, 2])       # class 3 never occurs as a label
    predictions = torch.tensor([[0, 1, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1],   # 2 and 3 never predicted
                                [3, 0, 0, 1, 3, 1, 2, 0, 2, 1, 1, 2],   # 3 predicted, never a label
                                [0, 2, 1, 2, 1, 0, 2, 1, 0, 1, 2, 0]])
    masks = torch.tensor([[True] * 12,
                          [True, True, False, True, True, False, True, False, True, True, False, True],
                          [False, True, True, True, False, True, True, True, False, True, True, False]])
    scores = classification_metrics(predictions, labels, masks, 4)
    for run in range(3):
        expected = torchmetrics_scores(predictions[run, masks[run]], labels[masks[run]], 4)
        for name, value in expected.items():
            assert scores[name][run].item() == pytest.approx(value, abs=1e-6), f"run {run}, {name}"
    shared = classification_metrics(predictions, labels, masks[1], 4)  # one [N] mask for every run
    for run in range(3):
        expected = torchmetrics_scores(predictions[run, masks[1]], labels[masks[1]], 4)
        assert {name: value[run].item() for name, value in shared.items()} == pytest.approx(expected, abs=1e-6)


def test_metrics_of_an_empty_mask_are_nan():
    labels = torch.tensor([0, 1, 2])
    masks = torch.tensor([[False, False, False], [True, True, True]])
    scores = classification_metrics(torch.tensor([[0, 1, 2], [0, 1, 2]]), labels, masks, 3)
    for name, value in scores.items():
        assert math.isnan(value[0].item()) and value[1].item() == 1.0, name


# ----------------------------------------------------------------------------- batched evaluation

def full_batch_steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, data: Tensor, labels: Tensor,
                     epochs: int) -> torch.nn.Module:
    """The plain recipe: one network, one step on the whole data per epoch, mean cross-entropy."""
    for _ in range(epochs):
        loss = F.cross_entropy(model(data)[0], labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


def train_one_alone(seed: int, data: Tensor, labels: Tensor, num_classes: int, epochs: int) -> SimpleNN:
    """One SimpleNN, full batch, SGD lr 0.1."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SimpleNN(input_size=data[0].numel(), width=20, depth=2, num_classes=num_classes)
    return full_batch_steps(model, torch.optim.SGD(model.parameters(), lr=0.1), data, labels, epochs)


@pytest.mark.parametrize("max_network_samples, per_network_tests", [(None, False), (1, True)])  # 1: one per batch
def test_train_and_evaluate_equals_one_network_at_a_time(monkeypatch, max_network_samples, per_network_tests):
    data, labels, _ = noisy_blobs(seed=1, per_class=20, flipped_per_class=5, spread=1.5)
    n, epochs, seeds = len(labels), 30, [11, 12, 13]
    train_masks = torch.rand(len(seeds), n, generator=torch.Generator().manual_seed(0)) < 0.6
    train_masks[:, :2] = False  # in no training set, so left out of training altogether
    test_sets = {"first half": torch.arange(n) < n // 2, "odd": torch.arange(n) % 2 == 1}
    if per_network_tests:  # each network tested on its own samples: here, those it did not train on
        test_sets = {name: test & ~train_masks for name, test in test_sets.items()}
    if max_network_samples is not None:
        monkeypatch.setattr(engine, "MAX_NETWORK_SAMPLES", max_network_samples)
    trained = []
    real_train_networks = engine.train_networks

    def keep_models(*args, **kwargs) -> BatchedSimpleNN:
        trained.append(real_train_networks(*args, **kwargs))
        return trained[-1]

    monkeypatch.setattr(engine, "train_networks", keep_models)
    results = train_and_evaluate("SimpleNN", seeds, data, labels, BLOB_CLASSES, epochs, train_masks, test_sets,
                                 progress=False)
    assert {name: sorted(scores) for name, scores in results.items()} == {name: sorted(METRICS) for name in test_sets}
    batched_runs = [(model, run) for model in trained for run in range(len(model.weights[0]))]
    assert len(trained) == (1 if max_network_samples is None else len(seeds)) and len(batched_runs) == len(seeds)
    accuracies = []
    for index, seed in enumerate(seeds):
        alone = train_one_alone(seed, data[train_masks[index]], labels[train_masks[index]], BLOB_CLASSES, epochs)
        model, run = batched_runs[index]
        for ours, theirs in zip(model.unstack(run).parameters(), alone.parameters(), strict=True):
            torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
        with torch.no_grad():
            predictions = alone(data)[0].argmax(-1)
        for name, test in test_sets.items():
            test = test if test.dim() == 1 else test[index]
            expected = torchmetrics_scores(predictions[test], labels[test], BLOB_CLASSES)
            for metric, value in expected.items():
                assert results[name][metric][index] == pytest.approx(value, abs=1e-6), f"{seed}, {name}, {metric}"
        accuracies.append(results["odd"]["accuracy"][index])
    assert 0.5 < min(accuracies) and max(accuracies) < 1.0  # it learnt something, and not everything


# ----------------------------------------------------------------------------- ResNet

def train_resnet_alone(seed: int, data: Tensor, labels: Tensor, num_classes: int, epochs: int) -> ResNet18:
    """The original's evaluation ResNet: full batch (BatchNorm over the whole training set), Adam lr 1e-3,
    weight decay 1e-2."""
    torch.manual_seed(seed)
    model = ResNet18(data.shape[1], num_classes)
    return full_batch_steps(model, torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-2), data, labels,
                            epochs)


def test_resnets_train_full_batch_as_the_original_and_predict_in_eval_mode():
    generator = torch.Generator().manual_seed(0)
    data, labels = torch.randn(10, 1, 8, 8, generator=generator), torch.arange(10) % 3
    train_masks = torch.ones(2, 10, dtype=torch.bool)
    train_masks[1, :3] = False
    models = train_networks("ResNet", [0, 1], data, labels, 3, 2, train_masks, progress=False)
    assert isinstance(models, torch.nn.ModuleList) and len(models) == 2
    logits = network_logits(models, data)
    assert logits.shape == (2, 10, 3)
    for run, model in enumerate(models):
        reference = train_resnet_alone(run, data[train_masks[run]], labels[train_masks[run]], 3, 2)
        for ours, theirs in zip(model.parameters(), reference.parameters(), strict=True):
            torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(resnet_logits(model, data, chunk=4), logits[run])  # chunks of 4, 4 and 2
        assert model.training  # left in training mode
        reference.eval()
        with torch.no_grad():
            torch.testing.assert_close(logits[run], reference(data)[0], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(logits[0], logits[1])  # different seeds, different networks


def test_full_batch_resnet_that_cannot_fit_names_batch_size(monkeypatch):
    data, labels = torch.randn(6, 1, 8, 8), torch.arange(6) % 3
    monkeypatch.setattr(engine, "free_memory_bytes", lambda device: 2**20)  # 1 MiB free
    with pytest.raises(engine.UserInputError, match=r"needs about .* GiB .* give --batch_size"):
        train_networks("ResNet", [0], data, labels, 3, 1, progress=False)
    models = train_networks("ResNet", [0], data, labels, 3, 1, batch_size=4, progress=False)  # minibatches fit
    assert network_logits(models, data).shape == (1, 6, 3)


def test_activation_bytes_per_sample_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    model = ResNet18(1, 3)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    per_sample = engine.activation_bytes_per_sample(model, torch.randn(4, 1, 8, 8))
    assert per_sample > 64 * 8 * 8 * 4  # at least the stem's output, in float32
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
