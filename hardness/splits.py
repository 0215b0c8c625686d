"""Random splits of a dataset's samples: VoG's training and held-out parts, and the hard-sample benchmark's
train/test splits with its reduced training sets."""
from collections.abc import Sequence

import torch
from torch import Tensor


def random_split(samples: int, train_ratio: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Rows of a training part, the first int(train_ratio * samples) of a random order drawn from `generator`, and
    of the held-out rest (in that order)."""
    order = torch.randperm(samples, generator=generator)
    cut = int(train_ratio * samples)
    return order[:cut], order[cut:]


def split_train_test(hard: Tensor, train_ratio: float, generator: torch.Generator) -> Tensor:
    """Training mask [N]: int(train_ratio * n) random hard samples and as many of the easy ones; the rest is test."""
    hard = hard.cpu()
    train = torch.zeros_like(hard)
    for group in (hard, ~hard):
        members = group.nonzero().flatten()
        train[members[torch.randperm(len(members), generator=generator)[:int(train_ratio * len(members))]]] = True
    return train


def reduction_masks(train: Tensor, hard: Tensor, remaining_ratios: Sequence[float], reduce_hard: bool,
                    generator: torch.Generator) -> Tensor:
    """One training mask per remaining ratio [len(ratios), N]: every training sample of the kept kind, and
    int(ratio * n) of the n training samples of the reduced kind (easy ones, or hard with `reduce_hard`).
    The kept ones are the first of one random order, so smaller sets are inside larger ones."""
    train, hard = train.cpu(), hard.cpu()
    reduced = train & (hard if reduce_hard else ~hard)
    members = reduced.nonzero().flatten()
    members = members[torch.randperm(len(members), generator=generator)]
    masks = (train & ~reduced).repeat(len(remaining_ratios), 1)
    for row, ratio in enumerate(remaining_ratios):
        masks[row, members[:int(ratio * len(members))]] = True
    return masks


def benchmark_splits(hard: Tensor, train_ratio: float, remaining_ratios: Sequence[float], reduce_hard: bool,
                     nested: bool, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Training and test masks [len(remaining_ratios), N] of one identification.

    As the original (nested=False): for every remaining ratio a fresh split of the hard and of the easy
    samples by `train_ratio`, then that split's reduction. Nested: one split for all ratios, with the
    smaller training sets inside the larger ones (paired comparisons, less variance).
    """
    if nested:
        train = split_train_test(hard, train_ratio, generator)
        masks = reduction_masks(train, hard, remaining_ratios, reduce_hard, generator)
        return masks, (~train).expand(len(remaining_ratios), -1)
    masks, tests = [], []
    for ratio in remaining_ratios:
        train = split_train_test(hard, train_ratio, generator)
        masks.append(reduction_masks(train, hard, [ratio], reduce_hard, generator))
        tests.append(~train)
    return torch.cat(masks), torch.stack(tests)
