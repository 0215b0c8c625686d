"""Candidate consensuses of the fast recipe, evaluated from the scores a benchmark sweep saved (nothing trains).

For every `_fast.npz` under <sweep>/<stage>/<cell>/results/scores/, each candidate (a set of members, each run
ranking the samples by each member and the ranks averaged, as the consensus is computed) is scored against the
cell's flipped labels; prints the mean AUROC / AP / precision at k per dataset and noise type, and per dataset.

    python benchmarks/consensus_from_sweep.py Results/sweeps/recipes_benchmark/choose_fast
"""
import argparse
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hardness.mislabel import detection_scores  # noqa: E402
from hardness.ranking import rank_aggregate  # noqa: E402

CANDIDATES = {"aum+data_map+el2n": ("aum", "data_map", "el2n"), "el2n": ("el2n",), "aum+el2n": ("aum", "el2n"),
              "loss": ("loss",), "aum": ("aum",)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", type=Path, help="a sweep stage's folder, e.g. Results/sweeps/recipes_benchmark/choose_fast")
    options = parser.parse_args()
    paths = sorted(options.stage.glob("*/results/scores/*_fast.npz"))
    if not paths:
        sys.exit(f"no <cell>/results/scores/*_fast.npz under {options.stage}")
    results: dict[tuple, list[tuple[float, float, float]]] = defaultdict(list)
    for path in paths:
        with np.load(path) as saved:
            scores = dict(saved)
        dataset = path.name.split("_")[0]
        noise = re.search(r"noise_type-([a-z]+)", str(path))
        for name, members in CANDIDATES.items():
            found = detection_scores(rank_aggregate(scores, members), scores["flipped"])
            row = (found["auroc"], found["ap"], found["precision_at_k"])
            results[(dataset, noise.group(1) if noise else "uniform", name)].append(row)
            results[(dataset, "all", name)].append(row)
    print("| dataset | noise | cells | " + " | ".join(CANDIDATES) + " |")
    print("| --- | --- | --- |" + " --- |" * len(CANDIDATES))
    for dataset, noise in sorted({key[:2] for key in results}):
        means = [np.mean(results[(dataset, noise, name)], axis=0) for name in CANDIDATES]
        print(f"| {dataset} | {noise} | {len(results[(dataset, noise, 'el2n')])} | "
              + " | ".join(f"{m[0]:.4f} / {m[1]:.3f} / {m[2]:.3f}" for m in means) + " |")


if __name__ == "__main__":
    main()
