"""Fix the verdict rules of hardness/verdicts.py on MNIST (configs/sweeps/hardness_types_choose.yaml: 10%, seed 0),
before any Fashion-MNIST or folder number is computed.

Which score decides each verdict comes from the MNIST table (docs/hardness_types.md). The thresholds are set rule
by rule in the rules' order, each the loosest of its grid whose verdict, after the rules before it, goes to at most
a budget of the clean MNIST cell (nothing injected): 0.1% for duplicate, 1% for every other verdict. So no threshold
depends on how many samples are hard. Prints each step and, for the chosen rules, every MNIST cell's precision and
recall of its family's verdict.

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
STEPS = (("duplicate", "copy_rms", (0.05, 0.04, 0.03, 0.02, 0.01, 0.005), 0.0),           # loosest first
         ("out_of_distribution", "ood_entropy", (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9), 2.0),
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep", type=Path, default=Path("Results/sweeps/hardness_types_choose"))
    args = parser.parse_args()
    by_type = cells(args.sweep)
    clean = by_type.pop("none")
    rules = VerdictRules(**{field: off for _, field, _, off in STEPS})         # every rule off
    for verdict, field, grid, _ in STEPS:
        budget = BUDGET.get(verdict, DEFAULT_BUDGET)
        for value in grid:
            trial = dataclasses.replace(rules, **{field: value})
            share = float((verdicts_of(clean, trial)[clean["evaluated"]] == verdict).mean())
            print(f"{verdict}: {field} {value:g} gives {share:.4f} of clean MNIST (budget {budget:g})")
            if share <= budget:
                rules = trial
                break
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
