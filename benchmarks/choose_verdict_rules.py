"""Fix the verdict rules of hardness/verdicts.py on MNIST (configs/sweeps/hardness_types_choose.yaml), before any
Fashion-MNIST or folder number is computed.

For each z-rule (out_of_distribution, ambiguous, atypical) the score is the one of highest mean AUROC over the
family's injected types on MNIST (10%, seed 0); every threshold is the loosest of a grid that flags at most
FALSE_ALARM_BUDGET of the clean MNIST cell (nothing injected) on its own, so no rule depends on how many samples are
hard. Prints the choice, each candidate's AUROC and each threshold's false alarms and recall.

    python benchmarks/choose_verdict_rules.py --sweep Results/sweeps/hardness_types_choose
"""
import argparse
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hardness.injection import FAMILIES  # noqa: E402
from hardness.scoring import RANKINGS, hardness_ranking  # noqa: E402
from hardness.verdicts import robust_z  # noqa: E402

FALSE_ALARM_BUDGET = 0.01
Z_GRID = (2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 8.0, 10.0)
AGREEMENT_GRID = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
COPY_GRID = (0.05, 0.04, 0.03, 0.02, 0.01, 0.005)
Z_RULES = {"out_of_distribution": "outlier", "ambiguous": "ambiguous", "atypical": "atypical"}


def cells(sweep: Path) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for path in sorted(sweep.glob("*/*/results/hardness_types/MNIST_*_seed0.npz")):
        with np.load(path) as saved:
            arrays = dict(saved)
        kinds = {str(kind) for kind in arrays["injected_type"]} - {""}
        out[kinds.pop() if kinds else "none"] = arrays
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep", type=Path, default=Path("Results/sweeps/hardness_types_choose"))
    args = parser.parse_args()
    by_type = cells(args.sweep)
    clean = by_type.pop("none")
    chosen: dict[str, object] = {}
    for family, prefix in Z_RULES.items():
        types = [kind for kind in by_type if FAMILIES[kind] == family]
        candidates = [name for name in RANKINGS if RANKINGS[name][0] in clean]
        auroc = {}
        for name in candidates:
            values = []
            for kind in types:
                arrays = by_type[kind]
                evaluated = arrays["evaluated"]
                truth = (arrays["injected_type"] != "")[evaluated]
                values.append(roc_auc_score(truth, hardness_ranking(arrays, name).mean(0)[evaluated]))
            auroc[name] = float(np.mean(values))
        best = max(auroc, key=auroc.get)
        print(f"{family} ({', '.join(types)}): mean AUROC " +
              ", ".join(f"{name} {value:.3f}" for name, value in sorted(auroc.items(), key=lambda item: -item[1])))
        z_clean = robust_z(hardness_ranking(clean, best).mean(0))
        for z in Z_GRID:
            alarms = float((z_clean > z).mean())
            recall = np.mean([((robust_z(hardness_ranking(by_type[k], best).mean(0)) > z)
                               & (by_type[k]["injected_type"] != ""))[by_type[k]["evaluated"]].sum()
                              / (by_type[k]["injected_type"] != "")[by_type[k]["evaluated"]].sum() for k in types])
            print(f"  {best} z > {z:g}: clean flagged {alarms:.4f}, recall of {family} {recall:.3f}")
            if alarms <= FALSE_ALARM_BUDGET and f"{prefix}_z" not in chosen:
                chosen[f"{prefix}_score"], chosen[f"{prefix}_z"] = best, z
    wrong = clean["predicted_labels"] != clean["labels"]
    for share in AGREEMENT_GRID:
        alarms = float((wrong & (clean["agreement"][0] >= share)).mean())
        print(f"mislabelled: agreement >= {share:g}: clean flagged {alarms:.4f}")
        if alarms <= FALSE_ALARM_BUDGET and "mislabel_agreement" not in chosen:
            chosen["mislabel_agreement"] = share
    for rms in COPY_GRID:
        alarms = float((clean["copy_distance"][0] <= rms)[clean["evaluated"]].mean())
        print(f"duplicate: RMS difference <= {rms:g}: clean flagged {alarms:.4f}")
        if alarms <= FALSE_ALARM_BUDGET and "copy_rms" not in chosen:
            chosen["copy_rms"] = rms
    print("chosen:", chosen)


if __name__ == "__main__":
    main()
