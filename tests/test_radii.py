"""Class-manifold radii and inversion points against hand-computed values."""
import math

import numpy as np
import pytest
import torch

from utils import class_radii, inversion_epochs, mean_inversion_epochs


def test_radius_by_hand():
    latent = torch.tensor([[2.0, 0.0], [0.0, 3.0],              # class 0: units (1,0), (0,1)
                           [1.0, 1.0], [2.0, 2.0], [5.0, 5.0],  # class 1: one direction
                           [1.0, 0.0], [-4.0, 0.0]])            # class 2: opposite directions
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    # class 0: centre (0.5, 0.5); each unit is sqrt(0.5) from it -> radius sqrt(0.5)
    # class 1: all units equal their centre -> radius 0; class 2: centre 0, units at distance 1 -> 1
    radii = class_radii(latent, labels, 3)
    assert radii.tolist() == pytest.approx([math.sqrt(0.5), 0.0, 1.0], abs=1e-6)


def test_radii_of_many_runs_at_once_and_empty_class():
    latent = torch.randn(4, 50, 6)
    labels = torch.randint(0, 3, (50,))
    batched = class_radii(latent, labels, 4)
    assert batched.shape == (4, 4) and torch.isnan(batched[:, 3]).all()
    for run in range(4):
        units = latent[run] / latent[run].norm(dim=1, keepdim=True)
        for c in range(3):
            members = units[labels == c]
            expected = (members - members.mean(0)).pow(2).sum(1).mean().sqrt()
            assert batched[run, c].item() == pytest.approx(expected.item(), abs=1e-5)


def test_inversion_is_the_first_check_where_the_radius_grows():
    epochs = np.arange(20, 61)
    radii = np.empty((len(epochs), 3))
    radii[:, 0] = np.where(epochs < 37, 1 - 0.01 * epochs, 0.63 + 0.01 * (epochs - 37))  # lowest at 37
    radii[:, 1] = 1 / epochs                                                             # never grows
    radii[:, 2] = 1 - 0.001 * epochs + 0.5 * (epochs == 22)                              # spike between checks
    # checks at 20, 25, 30, 35, 40, ...: class 0 first grows at 40 (r40 = 0.66 > r35 = 0.65)
    assert inversion_epochs(radii, epochs, start=20, interval=5).tolist() == [40, -1, -1]
    # every epoch checked: class 0 grows at 38, the spike at 22 is caught
    assert inversion_epochs(radii, epochs, start=20, interval=1).tolist() == [38, -1, 22]
    # checks at 30, 40, 50: r40 = 0.66 < r30 = 0.70, r50 = 0.76 > r40
    assert inversion_epochs(radii, epochs, start=30, interval=10).tolist() == [50, -1, -1]


def test_inversion_over_runs_and_too_short_a_curve():
    epochs = np.arange(20, 31)
    runs = np.stack([np.linspace(1, 0, 11), np.r_[np.linspace(1, 0.5, 6), np.linspace(0.6, 1, 5)]])[:, :, None]
    assert inversion_epochs(runs, epochs).tolist() == [[-1], [30]]
    assert inversion_epochs(runs[:, :3], epochs[:3]).tolist() == [[-1], [-1]]


def test_mean_inversion_epoch_leaves_out_runs_that_never_inverted():
    inversions = np.array([[40, -1, -1], [60, 25, -1], [50, 35, -1]])
    means = mean_inversion_epochs(inversions)
    assert means[:2].tolist() == [50.0, 30.0] and np.isnan(means[2])
