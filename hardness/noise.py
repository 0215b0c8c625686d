"""Label noise: the one function that flips labels, for every script that flips, the benchmark and the export.

The flips of a dataset subset depend only on its labels, the ratio, the noise type and the seed (through the
LABEL_NOISE stage of hardness.seeds), so every script flips the same samples for the same subset and seed.
"""
from typing import NamedTuple

import torch
from torch import Tensor

from hardness.seeds import LABEL_NOISE, stage_generator

NOISE_TYPES = ("uniform", "pairs")


class LabelFlips(NamedTuple):
    labels: Tensor              # [N] int64, the labels after flipping
    flipped: Tensor             # [N] bool, the samples whose label was changed
    pairs: Tensor | None        # [C] int64 for pair noise: the class each class's flipped samples were moved into


def flip_labels(labels: Tensor, ratio: float, num_classes: int, seed: int, noise_type: str = "uniform",
                data: Tensor | None = None, stage: int = LABEL_NOISE) -> LabelFlips:
    """Give int(ratio * N) samples, chosen uniformly without replacement, another label: drawn uniformly from the
    other classes (`uniform`), or the one confusable class of their class (`pairs`: confusable_classes of `data`).
    Drawn from `stage` of `seed`, on the CPU; the results are on labels' device and the input is left alone."""
    if noise_type not in NOISE_TYPES:
        raise ValueError(f"unknown noise type {noise_type!r}; known: {', '.join(NOISE_TYPES)}")
    if noise_type == "pairs" and data is None:
        raise ValueError("pair noise needs the data, to find each class's confusable class")
    generator = stage_generator(seed, stage)
    chosen = torch.randperm(len(labels), generator=generator)[:int(ratio * len(labels))]
    noisy = labels.cpu().clone()
    pairs = None
    if noise_type == "uniform":
        offsets = torch.randint(1, num_classes, (len(chosen),), generator=generator)
        noisy[chosen] = (noisy[chosen] + offsets) % num_classes
    else:
        pairs = confusable_classes(data, labels, num_classes)
        noisy[chosen] = pairs[noisy[chosen]]
    flipped = torch.zeros(len(labels), dtype=torch.bool)
    flipped[chosen] = True
    return LabelFlips(noisy.to(labels.device), flipped.to(labels.device), pairs)


def confusable_classes(data: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """[C] int64 on the CPU: for every class, the other class whose mean input is nearest (Euclidean) to its own,
    the class its samples are moved into by pair noise (`--noise_type pairs`)."""
    flat = data.reshape(len(data), -1).double()                                           # [N, D]
    means = torch.zeros(num_classes, flat.shape[1], dtype=torch.float64, device=data.device)
    means.index_add_(0, labels.to(data.device), flat)
    means /= torch.bincount(labels.to(data.device), minlength=num_classes).clamp(min=1)[:, None]   # [C, D]
    distances = torch.cdist(means, means).fill_diagonal_(float("inf"))                    # [C, C]
    return distances.argmin(1).cpu()
