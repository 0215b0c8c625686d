"""Figure 8 (left): how the hard samples of one strategy are spread over the classes.

Reads the hard-sample indices that verifying_importance_of_stragglers.py saved for --strategy (the runs
that reduce easy samples and those that reduce hard ones, whichever exist). Runs of the same seed hold the
same identifications, so each distinct identification is counted once. Counts the hard samples of every
class in every identification, prints their mean and std per class, draws them as a bar chart to
<figures_dir>/Figure8/hard_sample_distribution_<dataset>_<strategy>.png/.pdf and saves the counts to
<results_dir>/Hard_sample_distribution/<dataset>_<strategy>_<subset_size>_class_counts.pkl.
"""
import argparse
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from utils import (STRATEGIES, UserInputError, add_results_arguments, dataset_label, hard_samples_path,
                   distinct, existing_f1_results, identification_key, load_pickle, results_folders, run_script,
                   run_settings, save_figure, save_pickle)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_results_arguments(parser)
    parser.add_argument("--strategy", choices=STRATEGIES, default="stragglers",
                        help="strategy whose hard samples to count (default stragglers)")
    return parser.parse_args(argv)


def distinct_identifications(args: argparse.Namespace,
                             dataset_name: str) -> tuple[list[dict], list[str], list[str] | None, list[Path]]:
    """The distinct identifications in every indices file of the strategy that exists, its class names, the
    subset's sample ids (None in files written before they were kept) and the files read."""
    identifications, class_names, sample_ids, read = [], [], None, []
    for reduce_hard in (False, True):
        path = existing_f1_results(results_folders(args.results_dir, args.sweep), dataset_name, args.strategy,
                                   reduce_hard, args.subset_size, "indices")
        if path is None:
            continue
        results = load_pickle(path, "verifying_importance_of_stragglers.py")
        class_names, sample_ids = results["class_names"], results.get("sample_ids", sample_ids)
        identifications += results["identifications"]
        read.append(path)
    if not read:
        raise UserInputError(f"no hard-sample indices for {dataset_name}, {args.strategy}, --subset_size "
                             f"{args.subset_size}: neither file above exists")
    return distinct(identifications, identification_key), class_names, sample_ids, read


def main(args: argparse.Namespace) -> None:
    dataset_name = dataset_label(args.dataset_name)
    identifications, class_names, sample_ids, read = distinct_identifications(args, dataset_name)
    counts = np.array([[len(indices) for indices in found["hard_indices"]] for found in identifications])
    mean, std = counts.mean(0), counts.std(0)
    path = hard_samples_path(args.results_dir, "class_counts", dataset_name, args.strategy, subset_size=args.subset_size)
    save_pickle({"settings": run_settings(args), "read": [str(file) for file in read], "class_names": class_names,
                 "sample_ids": sample_ids, "counts": counts, "mean": mean, "std": std}, path)

    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(range(len(class_names)), mean, yerr=std, capsize=4, color="tab:red", alpha=0.8)
    ax.set_xticks(range(len(class_names)), class_names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("hard samples")
    ax.set_title(f"{dataset_name}, {args.strategy}: hard samples per class, mean ± std over "
                 f"{len(counts)} identifications")
    fig.tight_layout()
    figures = save_figure(fig, hard_samples_path(args.figures_dir, "distribution_figure", dataset_name, args.strategy))

    print(f"hard samples per class over {len(counts)} distinct identifications (n = {len(counts)}; "
          f"read {', '.join(map(str, read))}):")
    for name, m, s in zip(class_names, mean, std):
        print(f"  {name}: {m:.1f} +- {s:.1f}")
    print(f"saved {path}, {figures[0]} and {figures[1]}")


if __name__ == "__main__":
    run_script(main, parse_args)
