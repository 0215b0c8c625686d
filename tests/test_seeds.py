"""Seed stages: one definition, numbers that never move, streams that match numpy's SeedSequence by hand."""
import re
from pathlib import Path

import numpy as np
import torch

from hardness.seeds import (LABEL_NOISE, ClassHardnessStage, MemorisationStage, NetworkStage, Stage, VogStage,
                            child_seeds, stage_generator, stage_seed)

ROOT = Path(__file__).resolve().parents[1]


def test_stage_numbers_are_the_ones_every_saved_result_was_drawn_with():
    # a renumbering would silently change every result of these scripts for the same --seed
    assert {s.name: int(s) for s in Stage} == {"NOISE": 0, "IDENTIFY": 1, "SPLIT": 2, "EVALUATE": 3, "SCORE": 4,
                                                  "INSTANCE_REFERENCE": 5}
    assert {s.name: int(s) for s in VogStage} == {"NOISE": 0, "SPLIT": 1, "TRAIN": 2}
    assert {s.name: int(s) for s in MemorisationStage} == {"NOISE": 0, "INITIALISATION": 2, "MINIBATCH_ORDER": 3,
                                                            "HELDOUT_NOISE": 4}
    assert {s.name: int(s) for s in ClassHardnessStage} == {"INITIALISATION": 0, "MINIBATCH_ORDER": 1}
    assert {s.name: int(s) for s in NetworkStage} == {"STRAGGLER_ATTEMPT": 0, "FRESH_NETWORK": 1,
                                                       "FOLD_ASSIGNMENT": 2, "AUM_THRESHOLD": 3,
                                                       "MINIBATCH_ORDER": 4, "AUGMENTATION": 5}
    assert Stage.NOISE == VogStage.NOISE == MemorisationStage.NOISE == LABEL_NOISE == 0


def test_stage_seed_is_the_first_word_of_numpys_seed_sequence():
    by_hand = int(np.random.SeedSequence([42, 3, 1, 2]).generate_state(1)[0])
    assert stage_seed(42, Stage.EVALUATE, 1, 2) == by_hand
    assert torch.equal(torch.randperm(20, generator=stage_generator(42, Stage.EVALUATE, 1, 2)),
                       torch.randperm(20, generator=torch.Generator().manual_seed(by_hand)))
    assert child_seeds(7, 3) == [int(np.random.SeedSequence([7, i]).generate_state(1)[0]) for i in range(3)]
    assert len({stage_seed(0, stage) for stage in Stage}) == len(Stage)


def test_no_module_draws_a_stage_seed_of_its_own():
    # every derived seed goes through hardness/seeds.py's helpers with a named stage, never a bare number
    offenders = []
    sources = [*ROOT.glob("*.py"), *ROOT.glob("hardness/**/*.py"), *ROOT.glob("scripts/*.py"),
               *ROOT.glob("benchmarks/*.py")]
    assert len(sources) > 40
    for path in sources:
        if path.name == "seeds.py":
            continue
        text = path.read_text()
        if "derived_seed(" in text or re.search(r"stage_(seed|generator)\([^,()]+, \d", text):
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []
