"""Seed stages: every random draw of an experiment comes from its `--seed` through a named stage.

A stage is one stream of random numbers under a seed: `stage_seed(seed, stage, *index)` is
`SeedSequence([seed, stage, *index])`'s first word, independent of every other (seed, stage, index). The
label flips, the splits, the initialisations and the minibatch orders of one run therefore never share a
stream, and adding a stage changes no other stage's draws.

A stage's number is part of every result drawn with it: a number is never changed or given to another draw.
Numbers need only differ among the stages drawn from one seed, so each kind of seed has its enum below; every
enum that flips labels has `NOISE = LABEL_NOISE`, so that every script that flips the labels of the same
dataset, subset and seed flips the same samples (`hardness.noise.flip_labels`).

Two draws keep the seed itself, as the originals did: the dataset subset (`hardness.data.subset_indices`,
numpy's legacy permutation seeded with `--seed`) and Section 3's initialisation (`torch.manual_seed(--seed)`).
GASTeN and its ambiguity step seed torch as the original code does (docs/gasten.md).
"""
from enum import IntEnum, unique

import numpy as np
import torch

LABEL_NOISE = 0     # the label flips, the same stage under every seed that flips labels


@unique
class Stage(IntEnum):
    """Stages of `--seed` in Sections 4-5 (verifying_importance_of_stragglers.py), the scores (hardness_scores.py,
    mislabel_detection_benchmark.py) and scripts/export_noisy_folder.py."""
    NOISE = LABEL_NOISE
    IDENTIFY = 1        # the identifier networks, one index per train ratio
    SPLIT = 2           # the train/test split and the reduction, one index per train ratio
    EVALUATE = 3        # the evaluation networks, indexed by train ratio and remaining ratio
    SCORE = 4           # the scored runs, one index per run
    INSTANCE_REFERENCE = 5  # instance-dependent noise: the reference model's initialisation and folds


@unique
class VogStage(IntEnum):
    """Stages of `--seed` in variance_of_gradients.py."""
    NOISE = LABEL_NOISE  # flips among the training rows of the split
    SPLIT = 1            # training and held-out rows
    TRAIN = 2            # the network whose checkpoints are scored


@unique
class MemorisationStage(IntEnum):
    """Stages of `--seed` in memorisation_and_inversion.py (its noise was stage 1 before December 2026:
    docs/fidelity.md)."""
    NOISE = LABEL_NOISE
    INITIALISATION = 2   # one index per run
    MINIBATCH_ORDER = 3  # one index per run
    HELDOUT_NOISE = 4    # the held-out samples' flips


@unique
class ClassHardnessStage(IntEnum):
    """Stages of `training.seed` in class_hardness_simulation.py (its data draws use `dataset.seed`)."""
    INITIALISATION = 0   # one index per run
    MINIBATCH_ORDER = 1  # one index per run


@unique
class NetworkStage(IntEnum):
    """Stages of one network's seed inside an identifier or a score (hardness.identifiers, hardness.scoring)."""
    STRAGGLER_ATTEMPT = 0  # a straggler network's initialisation, one index per attempt
    FRESH_NETWORK = 1      # the network scored by confidence, energy, VoG and the dynamics identifiers
    FOLD_ASSIGNMENT = 2    # cleanlab's folds (of the first run's seed)
    AUM_THRESHOLD = 3      # AUM's fake-class samples (of the first run's seed)
    MINIBATCH_ORDER = 4    # a fast-recipe network's minibatch order
    AUGMENTATION = 5       # the fast recipe's random shifts (of the first network's seed)


def derived_seed(*keys: int) -> int:
    """A seed fixed by `keys` (e.g. the run's seed, a stage, an index), independent of any other keys' seed."""
    return int(np.random.SeedSequence([int(key) for key in keys]).generate_state(1)[0])


def stage_seed(seed: int, stage: IntEnum, *index: int) -> int:
    """The seed of `stage` (and `index`, e.g. a run) under `seed`."""
    return derived_seed(seed, stage, *index)


def stage_generator(seed: int, stage: IntEnum, *index: int) -> torch.Generator:
    """A CPU torch generator of `stage` (and `index`) under `seed`."""
    return torch.Generator().manual_seed(stage_seed(seed, stage, *index))


def child_seeds(seed: int, count: int) -> list[int]:
    """`count` independent seeds of the members of one ensemble under `seed` (runs, fold networks, passes):
    derived_seed(seed, i) for i < count."""
    return [derived_seed(seed, i) for i in range(count)]
