"""Figure 8 (right): which classes does a SimpleNN get wrong, and are they the classes with many hard samples?

Trains --runs SimpleNNs at once (full batch, SGD lr 0.1) on the first 6/7 of the shuffled subset and
tests each class's accuracy on the held-out 1/7 (or, with --overfit, on the training samples themselves).
Draws 1 - accuracy per class, mean +- std over the networks, to
<figures_dir>/Figure8/class_level_error_<dataset>_<subset_size>[_overfit].png/.pdf, saves the per-class
accuracies to <results_dir>/Class_level_accuracies/, and prints the Pearson correlation between the per-class
error and the per-class hard-sample counts of hard_sample_distribution_over_classes.py, when those exist.
"""
import argparse
import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import Tensor

from utils import (RunDescription, UserInputError, add_common_arguments, add_dataset_arguments, child_seeds,
                   confusion_matrices, hard_samples_path, keep_freed_memory_in_heap, load_dataset_from_args,
                   load_pickle, positive_int, resolve_device, run_script, run_settings, save_figure, save_pickle,
                   train_and_predict)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_arguments(parser, subset_size={"default": 70000})
    parser.add_argument("--overfit", action="store_true",
                        help="train on the whole subset and test on it, instead of holding out 1/7 for testing")
    parser.add_argument("--runs", type=positive_int, default=100, help="networks trained at once (default 100)")
    parser.add_argument("--epochs", type=positive_int, default=500, help="full-batch epochs (default 500)")
    parser.add_argument("--hard_counts", type=Path, default=None,
                        help="per-class hard-sample counts to correlate with the error (default "
                             "<results_dir>/Hard_sample_distribution/<dataset>_stragglers_20000_class_counts.pkl)")
    add_common_arguments(parser)
    return parser.parse_args(argv)


def train_and_test_rows(size: int, overfit: bool) -> tuple[Tensor, Tensor]:
    """Training mask [size] and test rows of the shuffled subset: the first 6/7 (rounded) and the rest,
    or with `overfit` every sample for both."""
    train_size = size if overfit else int(math.floor(6 / 7 * size + 0.5))
    if train_size == size and not overfit:
        raise UserInputError(f"--subset_size {size} leaves no samples for testing; give at least 4")
    return torch.arange(size) < train_size, torch.arange(0 if overfit else train_size, size)


def main(args: argparse.Namespace) -> None:
    keep_freed_memory_in_heap()
    device = resolve_device(args.device)
    dataset = load_dataset_from_args(args, device, run=RunDescription("SimpleNN", args.runs))
    train_mask, test_rows = train_and_test_rows(len(dataset.labels), args.overfit)
    train_masks, test_rows = train_mask.to(device).expand(args.runs, -1), test_rows.to(device)

    predictions = train_and_predict("SimpleNN", child_seeds(args.seed, args.runs),
                                    dataset.data, dataset.labels, dataset.num_classes, args.epochs, train_masks,
                                    test_rows)
    confusion = confusion_matrices(predictions, dataset.labels[test_rows], torch.ones_like(test_rows, dtype=torch.bool),
                                   dataset.num_classes)
    accuracy = (confusion.diagonal(dim1=1, dim2=2) / confusion.sum(2)).cpu().numpy()  # [runs, classes]
    error_mean, error_std = (1 - accuracy).mean(0), (1 - accuracy).std(0)

    counts_path = args.hard_counts or hard_samples_path(args.results_dir, "class_counts", dataset.name, "stragglers",
                                                        subset_size=20000)
    correlation = None
    if Path(counts_path).is_file():
        hard_counts = load_pickle(counts_path, "hard_sample_distribution_over_classes.py")["mean"]
        correlation = float(np.corrcoef(hard_counts, error_mean)[0, 1])

    tested_on = "training samples" if args.overfit else "held-out 1/7"
    save_pickle({"settings": run_settings(args, device), "class_names": dataset.class_names,
                 "per_class_accuracy": accuracy, "hard_counts_path": str(counts_path), "pearson": correlation,
                 "sample_ids": dataset.sample_ids, "test_sample_ids": [dataset.sample_ids[i] for i in test_rows.tolist()]},
                hard_samples_path(args.results_dir, "class_accuracies", dataset.name, subset_size=args.subset_size,
                                  overfit=args.overfit))
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(range(dataset.num_classes), error_mean, yerr=error_std, capsize=4, color="tab:blue", alpha=0.8)
    ax.set_xticks(range(dataset.num_classes), dataset.class_names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("1 - accuracy")
    ax.set_title(f"{dataset.name}: per-class error on the {tested_on}, mean ± std over {args.runs} SimpleNNs")
    fig.tight_layout()
    figures = save_figure(fig, hard_samples_path(args.figures_dir, "class_error_figure", dataset.name,
                                                subset_size=args.subset_size, overfit=args.overfit))

    print(f"per-class error on the {tested_on} ({len(test_rows)} samples), mean +- std over {args.runs} networks:")
    for name, m, s in zip(dataset.class_names, error_mean, error_std):
        print(f"  {name}: {m:.4f} +- {s:.4f}")
    if correlation is None:
        print(f"no hard-sample counts at {counts_path}: run hard_sample_distribution_over_classes.py for the correlation")
    else:
        print(f"Pearson correlation between per-class hard-sample counts ({counts_path}) and error: {correlation:.3f}")
    print(f"saved {figures[0]} and {figures[1]}")


if __name__ == "__main__":
    run_script(main, parse_args)
