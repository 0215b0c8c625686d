"""Label noise: the one function that flips labels, for every script that flips, the benchmark and the export.

The flips of a dataset subset depend only on its labels, the ratio, the noise type and the seed (through the
LABEL_NOISE stage of hardness.seeds), so every script flips the same samples for the same subset and seed.
"""
from typing import NamedTuple

import torch
from torch import Tensor

from hardness.seeds import LABEL_NOISE, stage_generator

NOISE_TYPES = ("uniform", "pairs", "asymmetric", "adjacent", "instance")
MIN_CLASSES = {"uniform": 2, "pairs": 2, "asymmetric": 3, "adjacent": 2, "instance": 2}


class LabelFlips(NamedTuple):
    labels: Tensor              # [N] int64, the labels after flipping
    flipped: Tensor             # [N] bool, the samples whose label was changed
    pairs: Tensor | None        # [C] int64 for pair noise: the class each class's flipped samples were moved into


def check_noise_type(noise_type: str, num_classes: int) -> None:
    """A ValueError naming the problem unless `noise_type` is known and the data has the classes it needs."""
    if noise_type not in NOISE_TYPES:
        raise ValueError(f"unknown noise type {noise_type!r}; known: {', '.join(NOISE_TYPES)}")
    if num_classes < MIN_CLASSES[noise_type]:
        raise ValueError(f"{noise_type} noise needs at least {MIN_CLASSES[noise_type]} classes, the data has "
                         f"{num_classes}")


def flip_labels(labels: Tensor, ratio: float, num_classes: int, seed: int, noise_type: str = "uniform",
                data: Tensor | None = None, stage: int = LABEL_NOISE,
                probabilities: Tensor | None = None) -> LabelFlips:
    """Give int(ratio * N) samples another label. Which samples: drawn uniformly without replacement, except for
    `instance` noise. To what: drawn uniformly from the other classes (`uniform`); the one confusable class of
    their class (`pairs`: confusable_classes of `data`); of each class's flipped samples in draw order, the first
    m - m // 3 to its nearest class and the last m // 3 to its second nearest (`asymmetric`, the same distance;
    three classes at least); class k to k + 1 mod C (`adjacent`); or `instance_flips` of a reference model's
    `probabilities` [N, C] (`instance`). Drawn from `stage` of `seed`, on the CPU; the results are on labels'
    device and the input is left alone."""
    check_noise_type(noise_type, num_classes)
    if noise_type in ("pairs", "asymmetric") and data is None:
        raise ValueError(f"{noise_type} noise needs the data, to find each class's confusable classes")
    if noise_type == "instance" and probabilities is None:
        raise ValueError("instance noise needs a reference model's probabilities [N, C]")
    generator = stage_generator(seed, stage)
    count = int(ratio * len(labels))
    noisy, pairs = labels.cpu().clone(), None
    if noise_type == "instance":
        chosen, targets = instance_flips(probabilities.cpu(), noisy, count, generator)
        noisy[chosen] = targets
    else:
        chosen = torch.randperm(len(labels), generator=generator)[:count]
        if noise_type == "uniform":
            offsets = torch.randint(1, num_classes, (len(chosen),), generator=generator)
            noisy[chosen] = (noisy[chosen] + offsets) % num_classes
        elif noise_type == "adjacent":
            noisy[chosen] = (noisy[chosen] + 1) % num_classes
        else:
            nearest = nearest_classes(data, labels, num_classes)                              # [C, C - 1]
            if noise_type == "pairs":
                pairs = nearest[:, 0]
                noisy[chosen] = pairs[noisy[chosen]]
            else:
                noisy[chosen] = nearest[noisy[chosen], asymmetric_ranks(noisy[chosen], num_classes)]
    flipped = torch.zeros(len(labels), dtype=torch.bool)
    flipped[chosen] = True
    return LabelFlips(noisy.to(labels.device), flipped.to(labels.device), pairs)


def asymmetric_ranks(classes: Tensor, num_classes: int) -> Tensor:
    """[m] 0 (the nearest class) or 1 (the second nearest) for the flipped samples of `classes` [m], in draw order:
    of a class's m samples, the first m - m // 3 go to the nearest, the last m // 3 to the next."""
    ranks = torch.zeros(len(classes), dtype=torch.int64)
    for c in range(num_classes):
        members = (classes == c).nonzero().flatten()
        ranks[members[len(members) - len(members) // 3:]] = 1
    return ranks


def instance_flips(probabilities: Tensor, labels: Tensor, count: int,
                   generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Instance-dependent noise from a reference model's probabilities [N, C]: each sample's most likely other
    class and its probability; `count` distinct samples drawn without replacement with weights equal to that
    probability (floored at 1e-12, so that every sample can be drawn). Returns the drawn rows [count] and the
    class each is flipped to [count]."""
    others = probabilities.double().scatter(1, labels[:, None].cpu(), -1.0)                  # [N, C], own class out
    probability, target = others.max(1)                                                      # [N], [N]
    chosen = torch.multinomial(probability.clamp_min(1e-12), count, replacement=False, generator=generator)
    return chosen, target[chosen]


def nearest_classes(data: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """[C, C - 1] int64 on the CPU: for every class, the other classes from nearest to farthest by the Euclidean
    distance between the class-mean inputs (ties to the lower class)."""
    flat = data.reshape(len(data), -1).double()                                           # [N, D]
    means = torch.zeros(num_classes, flat.shape[1], dtype=torch.float64, device=data.device)
    means.index_add_(0, labels.to(data.device), flat)
    means /= torch.bincount(labels.to(data.device), minlength=num_classes).clamp(min=1)[:, None]   # [C, D]
    distances = torch.cdist(means, means).fill_diagonal_(float("inf")).cpu()              # [C, C]
    return torch.sort(distances, dim=1, stable=True).indices[:, :num_classes - 1]


def confusable_classes(data: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """[C] int64 on the CPU: for every class, the other class whose mean input is nearest (Euclidean) to its own,
    the class its samples are moved into by pair noise (`--noise_type pairs`)."""
    return nearest_classes(data, labels, num_classes)[:, 0]
