"""How much do the strategies agree? Overlap between the hard samples that each pair of strategies found.

Reads the hard-sample indices that verifying_importance_of_stragglers.py saved for every strategy. The
k-th identification of one strategy is paired with the k-th of another (same seed, train ratio and run,
the same --reduce_hard setting; runs whose other settings differ are not paired). Runs of one seed with and
without --reduce_hard hold the same identifications: each distinct pair is counted once. For every
ordered pair of strategies (A, B) it prints the mean and std over these pairs of the share of A's hard
samples that B also marked hard, and saves the table to <results_dir>/F1_results/<dataset>_<subset_size>_overlap.pkl.
"""
import argparse
import sys
from itertools import permutations

import numpy as np

from utils import (STRATEGIES, UserInputError, add_results_arguments, dataset_label, distinct,
                   existing_f1_results, identification_key, hard_samples_path, load_pickle, results_folders,
                   run_script, run_settings, save_pickle)

PAIRING_SETTINGS = ("seed", "runs", "train_ratios", "noise_ratio", "epochs", "snapshot")  # fix the identifications


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_results_arguments(parser)
    return parser.parse_args(argv)


def identifications(args: argparse.Namespace, dataset_name: str, strategy: str,
                    reduce_hard: bool) -> tuple[dict, list[dict], dict] | None:
    """The settings, the identifications and the subset's class names and sample ids (when the file keeps them)
    of one results file (None if missing)."""
    path = existing_f1_results(results_folders(args.results_dir, args.sweep), dataset_name, strategy, reduce_hard,
                               args.subset_size, "indices")
    if path is None:
        return None
    results = load_pickle(path, "verifying_importance_of_stragglers.py")
    return results["settings"], results["identifications"], {key: results[key] for key in ("class_names", "sample_ids")
                                                              if key in results}


def comparable(first: dict, second: dict) -> bool:
    """Whether two runs' identifications can be paired: same data, seeds, plan and networks."""
    return all(first.get(key) == second.get(key) for key in PAIRING_SETTINGS)


def overlap_share(first: np.ndarray, second: np.ndarray) -> float:
    """Share of `first`'s samples that are also in `second` (NaN if `first` is empty)."""
    return len(np.intersect1d(first, second)) / len(first) if len(first) else float("nan")


def main(args: argparse.Namespace) -> None:
    dataset_name = dataset_label(args.dataset_name)
    pairs: dict[tuple[str, str], list[tuple[dict, dict]]] = {pair: [] for pair in permutations(STRATEGIES, 2)}
    subset: dict = {}
    for reduce_hard in (False, True):
        found = {strategy: identifications(args, dataset_name, strategy, reduce_hard) for strategy in STRATEGIES}
        subset = next((read[2] for read in found.values() if read is not None and read[2]), subset)
        for first, second in pairs:
            if found[first] is None or found[second] is None:
                continue
            (first_settings, first_found, _), (second_settings, second_found, _) = found[first], found[second]
            if not comparable(first_settings, second_settings):
                print(f"left out {first} vs {second} (reduce_hard {reduce_hard}): their runs differ in "
                      f"{', '.join(k for k in PAIRING_SETTINGS if first_settings.get(k) != second_settings.get(k))}",
                      file=sys.stderr)
                continue
            pairs[(first, second)] += list(zip(first_found, second_found))
    shares = {strategies: [overlap_share(np.concatenate(a["hard_indices"]), np.concatenate(b["hard_indices"]))
                           for a, b in distinct(found_pairs, lambda pair: b"#".join(map(identification_key, pair)))]
              for strategies, found_pairs in pairs.items() if found_pairs}
    if not shares:
        raise UserInputError(f"need the hard-sample indices of at least two strategies for {dataset_name} "
                             f"with --subset_size {args.subset_size} (and the same --reduce_hard); see the missing files above")
    table = {pair: (float(np.nanmean(values)), float(np.nanstd(values)), len(values)) for pair, values in shares.items()}
    path = hard_samples_path(args.results_dir, "overlap", dataset_name, subset_size=args.subset_size)
    save_pickle({"settings": run_settings(args), "shares": shares, "table": table, **subset}, path)
    print("share of A's hard samples that B also marks hard (mean +- std over distinct paired identifications):")
    for (first, second), (mean, std, count) in table.items():
        print(f"  A = {first:<10} B = {second:<10} {100 * mean:5.1f}% +- {100 * std:4.1f}%  (n = {count} pairs)")
    print(f"saved {path}")


if __name__ == "__main__":
    run_script(main, parse_args)
