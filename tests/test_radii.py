"""Class-manifold radii and mean inversion epochs against hand-computed values (the inversion rule itself is
tested with the tracker, in test_identifiers.py)."""
import math

import numpy as np
import pytest
import torch

from hardness.radii import class_radii, mean_inversion_epochs


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


def test_mean_inversion_epoch_leaves_out_runs_that_never_inverted():
    inversions = np.array([[40, -1, -1], [60, 25, -1], [50, 35, -1]])
    means = mean_inversion_epochs(inversions)
    assert means[:2].tolist() == [50.0, 30.0] and np.isnan(means[2])
