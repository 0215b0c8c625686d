"""The noise types of the one flip function (hardness/noise.py) and the fast recipe's stopping rules
(hardness/stopping.py), against flips and epochs worked out by hand."""
import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from hardness.noise import asymmetric_ranks, flip_labels, instance_flips, nearest_classes
from hardness.stopping import StoppingRule, loss_plateau_epoch, rank_stability_epoch, spearman


def line_classes(per_class: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D samples whose class means sit at 0, 1, 3 and 10: class 0's nearest classes are 1 then 2, class 1's 0
    then 2, class 2's 1 then 0, class 3's 2 then 1."""
    labels = torch.arange(4).repeat_interleave(per_class)
    means = torch.tensor([0.0, 1.0, 3.0, 10.0])
    data = means[labels][:, None] + torch.linspace(-0.1, 0.1, per_class).repeat(4)[:, None]
    return data, labels


def test_nearest_classes_by_hand():
    data, labels = line_classes()
    assert nearest_classes(data, labels, 4)[:, :2].tolist() == [[1, 2], [0, 2], [1, 0], [2, 1]]


def test_adjacent_noise_moves_class_k_to_k_plus_one_and_flips_the_uniform_samples():
    labels = torch.arange(5).repeat(8)                                        # 40 samples, 5 classes
    noisy, flipped, _ = flip_labels(labels, 0.25, 5, seed=4, noise_type="adjacent")
    assert int(flipped.sum()) == 10
    assert noisy[flipped].tolist() == ((labels[flipped] + 1) % 5).tolist()
    assert (noisy[~flipped] == labels[~flipped]).all()
    assert (flip_labels(labels, 0.25, 5, seed=4).flipped == flipped).all()    # the same samples as uniform noise


def test_asymmetric_noise_sends_two_thirds_to_the_nearest_class_and_one_third_to_the_next():
    data, labels = line_classes(per_class=6)
    noisy, flipped, _ = flip_labels(labels, 1.0, 4, seed=0, noise_type="asymmetric", data=data)
    assert flipped.all()
    moved = {c: sorted(noisy[labels == c].tolist()) for c in range(4)}       # 6 flipped per class: 4 and 2
    assert moved == {0: [1, 1, 1, 1, 2, 2], 1: [0, 0, 0, 0, 2, 2], 2: [0, 0, 1, 1, 1, 1], 3: [1, 1, 2, 2, 2, 2]}


def test_asymmetric_ranks_split_each_class_in_draw_order():
    classes = torch.tensor([2, 0, 2, 2, 0, 2, 1])          # class 2 drawn 4 times: the last 4 // 3 = 1 goes second
    assert asymmetric_ranks(classes, 3).tolist() == [0, 0, 0, 0, 0, 1, 0]


def test_asymmetric_noise_needs_three_classes_and_the_data():
    labels = torch.tensor([0, 1] * 10)
    with pytest.raises(ValueError, match="asymmetric noise needs at least 3 classes, the data has 2"):
        flip_labels(labels, 0.2, 2, seed=0, noise_type="asymmetric", data=torch.zeros(20, 1))
    with pytest.raises(ValueError, match="needs the data"):
        flip_labels(torch.arange(3).repeat(4), 0.2, 3, seed=0, noise_type="asymmetric")
    with pytest.raises(ValueError, match="unknown noise type 'bursty'"):
        flip_labels(labels, 0.2, 2, seed=0, noise_type="bursty")


PROBABILITIES = torch.tensor([[0.7, 0.3, 0.0], [0.1, 0.8, 0.1], [0.05, 0.9, 0.05], [0.0, 0.0, 1.0]])
GIVEN = torch.tensor([0, 1, 0, 2])
# most likely other class and its probability: row 0 -> 1 (0.3), row 1 -> 0 (0.1, the first of a tie),
# row 2 -> 1 (0.9), row 3 -> 0 (0.0, floored at 1e-12)


def test_instance_flips_take_each_samples_most_likely_other_class():
    chosen, targets = instance_flips(PROBABILITIES, GIVEN, 3, torch.Generator().manual_seed(0))
    assert sorted(zip(chosen.tolist(), targets.tolist())) == [(0, 1), (1, 0), (2, 1)]   # row 3 all but never drawn


def test_instance_flips_draw_samples_in_proportion_to_that_probability():
    first = [int(instance_flips(PROBABILITIES, GIVEN, 1, torch.Generator().manual_seed(s))[0]) for s in range(3000)]
    shares = np.bincount(first, minlength=4) / len(first)
    assert shares == pytest.approx([0.3 / 1.3, 0.1 / 1.3, 0.9 / 1.3, 0.0], abs=0.03)


def test_instance_noise_through_the_flip_function():
    noisy, flipped, _ = flip_labels(GIVEN, 0.75, 3, seed=2, noise_type="instance", probabilities=PROBABILITIES)
    assert flipped.tolist() == [True, True, True, False] and noisy.tolist() == [1, 0, 1, 2]
    with pytest.raises(ValueError, match="reference model's probabilities"):
        flip_labels(GIVEN, 0.5, 3, seed=2, noise_type="instance")


def test_loss_plateau_by_hand():
    assert loss_plateau_epoch([1.0, 0.5, 0.3, 0.29, 0.28], tolerance=0.05) == 3   # 0.30 -> 0.29 falls by 3%
    assert loss_plateau_epoch([1.0, 0.5, 0.3], tolerance=0.05) is None
    assert loss_plateau_epoch([1.0, 1.2], tolerance=0.05) == 1                     # a rising loss has plateaued


def test_rank_stability_by_hand():
    margins = torch.tensor([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0], [4.0, 3.0, 1.0, 2.0]])
    # epochs 0 -> 1: rho = -1; epochs 1 -> 2: one swap of neighbours, rho = 1 - 6 * 2 / (4 * 15) = 0.8
    assert spearman(margins[1], margins[2]) == pytest.approx(0.8)
    assert rank_stability_epoch(margins, threshold=0.75) == 2
    assert rank_stability_epoch(margins, threshold=0.9) is None


def test_spearman_agrees_with_scipy():
    a, b = torch.randn(2, 500, generator=torch.Generator().manual_seed(1))
    b = a + b
    assert spearman(a, b) == pytest.approx(spearmanr(a.numpy(), b.numpy()).statistic, abs=1e-12)


class _State:
    def __init__(self, epoch: int, logits: torch.Tensor) -> None:
        self.epoch, self.logits = epoch, logits


@pytest.mark.parametrize("rule", ["loss_plateau", "rank_stability", "none"])
def test_the_observer_stops_where_the_rule_on_the_whole_trajectory_fires(rule):
    """Logits [E, runs, N, C] that sharpen and then settle: the observer stops at the epoch the function finds."""
    generator = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 3, (50,), generator=generator)
    base = torch.randn(2, 50, 3, generator=generator)
    scale = [0.2, 0.8, 1.6, 2.0, 2.1, 2.15, 2.17]
    trajectory = [base * s + torch.nn.functional.one_hot(labels, 3) * s for s in scale]
    observer = StoppingRule(rule, labels, tracker=None)
    for epoch, logits in enumerate(trajectory):
        observer.observe(_State(epoch, logits))
    from hardness.dynamics import margins, sample_losses
    expected = {"loss_plateau": loss_plateau_epoch([float(sample_losses(x, labels).mean()) for x in trajectory]),
                "rank_stability": rank_stability_epoch(torch.stack([margins(x, labels).mean(0) for x in trajectory])),
                "none": None}[rule]
    assert observer.stopped_at == expected and observer.done() == (expected is not None)
    assert rule == "none" or expected is not None
