"""Hard-sample identifiers (stragglers, confidence, energy), label noise, splits, metrics and batched
evaluation, against hand-computed values, torchmetrics and plain one-network loops."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.functional.classification import (multiclass_accuracy, multiclass_f1_score,
                                                    multiclass_precision, multiclass_recall)

import utils
from neural_networks import BatchedSimpleNN, ResNet18, SimpleNN
from utils import (IdentificationError, StragglerTracker, class_counts, class_radii, classification_metrics,
                   derived_seed, flip_labels, hardness_scores, identify_hard_samples, identify_stragglers,
                   inversion_epochs, network_logits, reduction_masks, resnet_outputs, select_hardest,
                   split_train_test, train_and_evaluate, train_full_batch, train_networks)

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
    """Predicted classes [N] of one SimpleNN after `epochs` full-batch SGD steps."""
    model = simple_nn_for([initialisation], data, num_classes)
    train_full_batch(model, torch.optim.SGD(model.parameters(), lr=0.1), data, labels, epochs, num_classes,
                     progress=False)
    with torch.no_grad():
        return model(data)[0][0].argmax(-1)


def reference_stragglers(seed: int, data: Tensor, labels: Tensor, num_classes: int,
                         epochs: int) -> tuple[Tensor, Tensor, Tensor, int]:
    """One network's straggler search done the slow way: radii after every epoch from 20 on
    (train_full_batch(radii_from=20)), inversion epochs by `inversion_epochs`, trying the initialisations
    derived_seed(seed, 0, attempt) in turn; then the predictions of fresh copies trained up to each
    inversion epoch. Returns the inversion epochs [C], the 'copy' and 'last' stragglers [N] and the attempt."""
    for attempt in range(utils.MAX_INVERSION_ATTEMPTS):
        initialisation = derived_seed(seed, 0, attempt)
        model = simple_nn_for([initialisation], data, num_classes)
        history = train_full_batch(model, torch.optim.SGD(model.parameters(), lr=0.1), data, labels, epochs,
                                   num_classes, radii_from=20, progress=False)
        inverted = torch.from_numpy(inversion_epochs(history.radii, history.radius_epochs)[0])
        if (inverted >= 0).all():
            break
    else:
        raise AssertionError(f"seed {seed}: the reference found no inversion for every class")
    wrong_at = {int(epoch): predictions_after(initialisation, data, labels, num_classes, int(epoch)) != labels
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
    return {snapshot: identify_stragglers("SimpleNN", STRAGGLER_SEEDS, data, labels, BLOB_CLASSES,
                                          STRAGGLER_EPOCHS, snapshot, progress=False)
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


def feed(tracker: StragglerTracker, epoch: int, runs: slice = slice(None)) -> None:
    tracker.update(epoch, torch.tensor([TRACKER_RADII[epoch]]), torch.tensor([TRACKER_PREDICTIONS[epoch]]), runs)


def test_tracker_checks_from_epoch_20_every_5():
    tracker = StragglerTracker(1, TRACKER_LABELS, 3)
    assert [epoch for epoch in (0, 5, 15, 19, 20, 21, 24, 25, 30, 31) if tracker.is_check(epoch)] == [20, 25, 30]


def test_tracker_inversions_and_copy_versus_last_by_hand():
    tracker = StragglerTracker(1, TRACKER_LABELS, 3)
    feed(tracker, 20)
    assert tracker.inverted_at.tolist() == [[-1, -1, -1]]           # the first check has nothing to compare with
    feed(tracker, 25)
    assert tracker.inverted_at.tolist() == [[25, -1, -1]]
    assert tracker.hard("copy").tolist() == [[True, False, False, False, False, False]]
    assert tracker.hard("last").tolist() == [[True, False, True, False, True, True]]
    feed(tracker, 30)
    assert tracker.inverted_at.tolist() == [[25, 30, -1]] and not tracker.all_inverted()
    assert tracker.hard("copy").tolist() == [[True, False, False, True, False, False]]  # class 0 kept its verdict
    assert tracker.hard("last").tolist() == [[False, True, False, True, True, False]]
    feed(tracker, 35)
    assert tracker.inverted_at.tolist() == [[25, 30, 35]] and tracker.all_inverted()
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
        radii = torch.tensor([[1.0, 1.0, 1.0] if epoch == 20 else [2.0, 2.0, 2.0], [0.7, 0.7, 0.7]])
        predictions = torch.tensor([[1, 0, 1, 1, 2, 0] if epoch == 25 else [0] * 6, [2] * 6])  # run 0 wrong: 0, 5
        tracker.update(epoch, radii, predictions, slice(0, 2))
        feed(tracker, epoch, slice(2, 3))
    assert tracker.inverted_at.tolist() == [[25, 25, 25], [-1, -1, -1], [25, 30, 35]]
    assert tracker.all_inverted(slice(0, 1)) and tracker.all_inverted(slice(2, 3))
    assert not tracker.all_inverted(slice(1, 2)) and not tracker.all_inverted()
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

    def update(self, epoch: int, radii: Tensor, predictions: Tensor, runs: slice = slice(None)) -> None:
        self.seen.append((epoch, radii.clone(), predictions.clone()))
        super().update(epoch, radii, predictions, runs)


@pytest.mark.parametrize("epochs, checks", [(30, [20, 25, 30]), (32, [20, 25, 30])])
def test_train_full_batch_feeds_the_tracker_at_its_checks(blobs, epochs, checks):
    """A class of one sample has radius 0 at every check, so it never inverts and training runs to the end."""
    data, labels, _ = blobs
    labels = labels.clone()
    labels[0] = 3
    seeds = [derived_seed(seed, 0, 0) for seed in range(3)]
    tracker = RecordingTracker(len(seeds), labels, 4)
    model = simple_nn_for(seeds, data, 4)
    history = train_full_batch(model, torch.optim.SGD(model.parameters(), lr=0.1), data, labels, epochs, 4,
                               tracker=tracker, progress=False)
    assert [epoch for epoch, _, _ in tracker.seen] == checks
    assert history.losses.shape == (3, epochs)
    assert (tracker.inverted_at[:, 3] == -1).all()
    reference = simple_nn_for(seeds, data, 4)
    radii = train_full_batch(reference, torch.optim.SGD(reference.parameters(), lr=0.1), data, labels, epochs, 4,
                             radii_from=20, progress=False).radii
    for epoch, seen_radii, _ in tracker.seen:
        torch.testing.assert_close(seen_radii, torch.from_numpy(radii[:, epoch - 20]), atol=0, rtol=0)
    if epochs in checks:  # the last check sees the fully trained networks
        with torch.no_grad():
            assert torch.equal(tracker.seen[-1][2], model(data)[0].argmax(-1))


def test_train_full_batch_stops_once_every_class_inverted(blobs):
    data, labels, _ = blobs
    seeds = [derived_seed(seed, 0, 0) for seed in (0, 2)]  # both invert every class within 150 epochs
    tracker = RecordingTracker(len(seeds), labels, BLOB_CLASSES)
    model = simple_nn_for(seeds, data, BLOB_CLASSES)
    history = train_full_batch(model, torch.optim.SGD(model.parameters(), lr=0.1), data, labels, STRAGGLER_EPOCHS,
                               BLOB_CLASSES, tracker=tracker, progress=False)
    last_inversion = int(tracker.inverted_at.max())
    assert tracker.all_inverted() and last_inversion < STRAGGLER_EPOCHS
    assert [epoch for epoch, _, _ in tracker.seen] == list(range(20, last_inversion + 1, 5))
    assert history.losses.shape == (2, last_inversion)  # no step after the check that found the last inversion


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
        identify_stragglers("SimpleNN", [0, 1], data, labels, BLOB_CLASSES, 21, progress=False)


@pytest.mark.parametrize("members", [0, 1])
def test_a_class_with_fewer_than_two_samples_is_named(members):
    """A class of one sample has radius 0 at every check, so it can never invert; none at all, neither."""
    data, labels, _ = noisy_blobs()
    labels = labels.clone()
    labels[len(labels) - members:] = 3
    with pytest.raises(IdentificationError, match=r"^class\(es\) 3 have fewer than 2 samples"):
        identify_stragglers("SimpleNN", [0], data, labels, 4, STRAGGLER_EPOCHS, progress=False)


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
@pytest.mark.parametrize("level, extra", [("class", 0), ("class", 2), ("dataset", 1), ("dataset", 15)])
def test_identify_hard_samples_takes_as_many_as_there_are_stragglers(blobs, strategy, level, extra):
    """Class 0 is cut to 20 samples, so 15 extra hard samples per class are more than it has: capped."""
    data, labels, _ = blobs
    kept = (torch.arange(len(labels)) < 20) | (torch.arange(len(labels)) >= BLOB_SIZE)
    data, labels = data[kept], labels[kept]
    seeds = STRAGGLER_SEEDS[:3]
    hard = identify_hard_samples(strategy, "SimpleNN", seeds, data, labels, BLOB_CLASSES, STRAGGLER_EPOCHS, level,
                                 extra_per_class=extra, progress=False)
    stragglers, _ = identify_stragglers("SimpleNN", seeds, data, labels, BLOB_CLASSES, STRAGGLER_EPOCHS,
                                        progress=False)
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


def test_identify_hard_samples_with_stragglers_returns_them(blobs, stragglers):
    data, labels, _ = blobs
    hard = identify_hard_samples("stragglers", "SimpleNN", STRAGGLER_SEEDS[:2], data, labels, BLOB_CLASSES,
                                 STRAGGLER_EPOCHS, progress=False)
    assert torch.equal(hard, stragglers["copy"][0][:2])


# ----------------------------------------------------------------------------- label noise, splits, reductions

def test_flip_labels_changes_exactly_the_chosen_labels():
    labels = torch.arange(1000) % 10
    noisy, flipped = flip_labels(labels, 0.3, 10, torch.Generator().manual_seed(5))
    assert len(flipped) == 300 and len(flipped.unique()) == 300
    changed = torch.zeros(1000, dtype=torch.bool)
    changed[flipped] = True
    assert (noisy[changed] != labels[changed]).all() and torch.equal(noisy[~changed], labels[~changed])
    assert noisy.min() >= 0 and noisy.max() <= 9
    assert torch.equal(labels, torch.arange(1000) % 10)  # the input is left alone
    again, flipped_again = flip_labels(labels, 0.3, 10, torch.Generator().manual_seed(5))
    assert torch.equal(noisy, again) and torch.equal(flipped, flipped_again)


def test_flip_labels_rounds_halves_up_and_zero_flips_nothing():
    labels = torch.arange(10) % 3
    assert len(flip_labels(labels, 0.25, 3, torch.Generator().manual_seed(0))[1]) == 3  # 2.5 -> 3
    noisy, flipped = flip_labels(labels, 0.0, 3, torch.Generator().manual_seed(0))
    assert len(flipped) == 0 and torch.equal(noisy, labels)


def test_flipped_labels_are_spread_over_the_other_classes():
    noisy, _ = flip_labels(torch.zeros(3000, dtype=torch.int64), 1.0, 3, torch.Generator().manual_seed(1))
    counts = torch.bincount(noisy, minlength=3).tolist()
    assert counts[0] == 0 and 1400 <= counts[1] <= 1600 and 1400 <= counts[2] <= 1600


@pytest.mark.parametrize("ratio, hard_train, easy_train", [(0.5, 3, 4), (0.3, 2, 2), (0.9, 5, 7)])
def test_split_takes_the_ratio_of_hard_and_of_easy_samples(ratio, hard_train, easy_train):
    hard = torch.tensor([True, False] * 5 + [False] * 3)  # 5 hard, 8 easy
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
    expected = {0.0: 0, 0.25: 2, 0.5: 3, 1.0: 6} if reduce_hard else {0.0: 0, 0.25: 3, 0.5: 5, 1.0: 10}
    assert masks.shape == (4, 20)
    for row, ratio in enumerate(ratios):
        assert torch.equal(masks[row] & kept, kept)               # every training sample of the kept kind
        assert not (masks[row] & ~train).any()                     # never a test sample
        assert int((masks[row] & reduced).sum()) == expected[ratio]
    by_ratio = {ratio: masks[row] for row, ratio in enumerate(ratios)}
    for smaller, larger in [(0.0, 0.25), (0.25, 0.5), (0.5, 1.0)]:
        assert not (by_ratio[smaller] & ~by_ratio[larger]).any()
    assert torch.equal(by_ratio[1.0], train) and torch.equal(by_ratio[0.0], kept)


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

def train_one_alone(seed: int, data: Tensor, labels: Tensor, num_classes: int, epochs: int) -> SimpleNN:
    """The plain recipe: one SimpleNN, full batch, SGD lr 0.1, mean cross-entropy."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SimpleNN(input_size=data[0].numel(), width=20, depth=2, num_classes=num_classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(epochs):
        loss = F.cross_entropy(model(data)[0], labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


@pytest.mark.parametrize("max_network_samples", [None, 1])  # 1: one network per batch
def test_train_and_evaluate_equals_one_network_at_a_time(monkeypatch, max_network_samples):
    data, labels, _ = noisy_blobs(seed=1, per_class=20, flipped_per_class=5, spread=1.5)
    n, epochs, seeds = len(labels), 30, [11, 12, 13]
    train_masks = torch.rand(len(seeds), n, generator=torch.Generator().manual_seed(0)) < 0.6
    train_masks[:, :2] = False  # in no training set, so left out of training altogether
    test_sets = {"first half": torch.arange(n) < n // 2, "odd": torch.arange(n) % 2 == 1}
    if max_network_samples is not None:
        monkeypatch.setattr(utils, "MAX_NETWORK_SAMPLES", max_network_samples)
    trained = []
    real_train_networks = utils.train_networks

    def keep_models(*args, **kwargs) -> BatchedSimpleNN:
        trained.append(real_train_networks(*args, **kwargs))
        return trained[-1]

    monkeypatch.setattr(utils, "train_networks", keep_models)
    results = train_and_evaluate("SimpleNN", seeds, data, labels, BLOB_CLASSES, epochs, train_masks, test_sets,
                                 progress=False)
    assert {name: sorted(scores) for name, scores in results.items()} == {
        name: sorted(utils.METRICS) for name in test_sets}
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
            expected = torchmetrics_scores(predictions[test], labels[test], BLOB_CLASSES)
            for metric, value in expected.items():
                assert results[name][metric][index] == pytest.approx(value, abs=1e-6), f"{seed}, {name}, {metric}"
        accuracies.append(results["odd"]["accuracy"][index])
    assert 0.5 < min(accuracies) and max(accuracies) < 1.0  # it learnt something, and not everything


# ----------------------------------------------------------------------------- ResNet

def test_resnets_logits_and_stem_radii(monkeypatch):
    monkeypatch.setattr(utils, "RESNET_EVAL_CHUNK", 4)  # 10 samples in chunks of 4, 4 and 2
    generator = torch.Generator().manual_seed(0)
    data, labels = torch.randn(10, 1, 8, 8, generator=generator), torch.arange(10) % 3
    models = train_networks("ResNet", [0, 1], data, labels, 3, 2, progress=False)
    assert isinstance(models, torch.nn.ModuleList) and len(models) == 2
    assert all(isinstance(model, ResNet18) for model in models)
    logits = network_logits(models, data)
    assert logits.shape == (2, 10, 3)
    for run, model in enumerate(models):
        chunked_logits, radii = resnet_outputs(model, data, labels, 3)
        assert model.training  # left in training mode
        model.eval()
        with torch.no_grad():
            eval_logits, latent = model(data)
        model.train()
        torch.testing.assert_close(logits[run], eval_logits, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(chunked_logits, eval_logits, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(radii, class_radii(latent, labels, 3), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(logits[0], logits[1])  # different seeds, different networks
