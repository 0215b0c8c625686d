"""Fix the verdict rules of hardness/verdicts.py on MNIST (configs/sweeps/hardness_types_choose.yaml: 10%, seed 0),
before any Fashion-MNIST or folder number is computed.

Which score decides each verdict comes from the MNIST table (docs/hardness_types.md). The thresholds are set rule
by rule in the rules' order, each the loosest of its grid whose verdict, after the rules before it, goes to at most
a budget of the clean MNIST cell (nothing injected): 0.1% for duplicate, 1% for every other verdict. So no threshold
depends on how many samples are hard.

The out-of-distribution rule has two thresholds (second round, after the first rules, the entropy alone, missed the
folder's false-alarm target on Fashion-MNIST; still MNIST only): the entropy threshold e alone is set as above, then
every pair (e', z) of the entropy grid and the prototypicality robust-z grid is tried, and the rule is the pair
with the fewest out-of-distribution verdicts on clean MNIST among those within the budget whose recall of the
far_ood cell is at least the entropy-alone rule's minus 0.01; ties go to the higher mean recall over the four
out-of-distribution cells, then to the earlier pair in the grids' order.

Prints each step and, for the chosen rules, every MNIST cell's precision and recall of its family's verdict.

    python benchmarks/choose_verdict_rules.py --sweep Results/sweeps/hardness_types_choose
"""
import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hardness.injection import FAMILIES  # noqa: E402
from hardness.verdicts import VerdictRules, assign_verdicts  # noqa: E402

BUDGET = {"duplicate": 0.001}                     # every other verdict: DEFAULT_BUDGET
DEFAULT_BUDGET = 0.01
OOD_ENTROPY_GRID = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
OOD_PROTOTYPICALITY_Z_GRID = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0)
FAR_OOD_RECALL_GIVEN = 0.01
STEPS = (("duplicate", "copy_rms", (0.05, 0.04, 0.03, 0.02, 0.01, 0.005), 0.0),           # loosest first
         ("out_of_distribution", "ood_entropy", OOD_ENTROPY_GRID, 2.0),
         ("mislabelled", "mislabel_agreement", (0.5, 0.6, 0.7, 0.8, 0.9, 1.0), 2.0),
         ("atypical", "atypical_z", (2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 8.0, 10.0), float("inf")),
         ("ambiguous", "ambiguous_runner_up", (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45), 2.0))


def cells(sweep: Path) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for path in sorted(sweep.glob("*/*/results/hardness_types/MNIST_*_seed0.npz")):
        with np.load(path) as saved:
            arrays = dict(saved)
        kinds = {str(kind) for kind in arrays["injected_type"]} - {""}
        out[kinds.pop() if kinds else "none"] = arrays
    return out


def verdicts_of(arrays: dict[str, np.ndarray], rules: VerdictRules) -> np.ndarray:
    return assign_verdicts(arrays, arrays["labels"], arrays["predicted_labels"], 10, rules).verdict


def share_given(arrays: dict[str, np.ndarray], rules: VerdictRules, verdict: str, injected: bool | None) -> float:
    """The share of the evaluated samples (only the injected ones, only the rest, or all: None) given `verdict`."""
    keep = arrays["evaluated"].copy()
    if injected is not None:
        keep &= (arrays["injected_type"] != "") == injected
    return float((verdicts_of(arrays, rules)[keep] == verdict).mean())


def choose_ood_pair(rules: VerdictRules, clean: dict, by_type: dict) -> VerdictRules:
    """The second round's out-of-distribution rule (module docstring), from the rules with the entropy alone set."""
    family = [by_type[kind] for kind in ("gaussian_noise", "blur", "invert", "far_ood")]
    floor = share_given(by_type["far_ood"], rules, "out_of_distribution", True) - FAR_OOD_RECALL_GIVEN
    best, best_key = rules, None
    for entropy in OOD_ENTROPY_GRID:
        for z in OOD_PROTOTYPICALITY_Z_GRID:
            trial = dataclasses.replace(rules, ood_entropy=entropy, ood_prototypicality_z=z)
            alarms = share_given(clean, trial, "out_of_distribution", None)
            recall = share_given(by_type["far_ood"], trial, "out_of_distribution", True)
            pooled = float(np.mean([share_given(arrays, trial, "out_of_distribution", True) for arrays in family]))
            admissible = alarms <= DEFAULT_BUDGET and recall >= floor
            print(f"out_of_distribution: ood_entropy {entropy:g}, ood_prototypicality_z {z:g} gives {alarms:.4f} of "
                  f"clean MNIST, far_ood recall {recall:.3f} (floor {floor:.3f}), OOD family recall {pooled:.3f}"
                  f"{'' if admissible else ' (not admissible)'}")
            key = (alarms, -pooled)
            if admissible and (best_key is None or key < best_key):
                best, best_key = trial, key
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep", type=Path, default=Path("Results/sweeps/hardness_types_choose"))
    args = parser.parse_args()
    by_type = cells(args.sweep)
    clean = by_type.pop("none")
    rules = VerdictRules(**{field: off for _, field, _, off in STEPS}, ood_prototypicality_z=None)  # all off
    for verdict, field, grid, _ in STEPS:
        budget = BUDGET.get(verdict, DEFAULT_BUDGET)
        for value in grid:
            trial = dataclasses.replace(rules, **{field: value})
            share = share_given(clean, trial, verdict, None)
            print(f"{verdict}: {field} {value:g} gives {share:.4f} of clean MNIST (budget {budget:g})")
            if share <= budget:
                rules = trial
                break
        if verdict == "out_of_distribution":
            rules = choose_ood_pair(rules, clean, by_type)
    print("chosen:", rules.settings())
    for kind, arrays in by_type.items():
        family, verdict = FAMILIES[kind], verdicts_of(arrays, rules)[arrays["evaluated"]]
        truth = (arrays["injected_type"] != "")[arrays["evaluated"]]
        given = verdict == family
        print(f"{kind:>16}: {family} precision {given[truth].sum() / max(given.sum(), 1):.3f}, recall "
              f"{given[truth].mean():.3f}; any verdict among the rest {(verdict[~truth] != 'ok').mean():.3f}")
    verdict = verdicts_of(clean, rules)[clean["evaluated"]]
    print("clean MNIST: " + ", ".join(f"{name} {(verdict == name).mean():.4f}" for name in sorted(set(verdict))))


if __name__ == "__main__":
    main()
