"""Sections 4-5: do hard samples matter for generalisation? (straggler_ratio_vs_generalisation)

For every train ratio, `--runs` times: find the hard samples of the subset afresh with `--strategy`;
split hard and easy samples separately into train and test by the train ratio; for every remaining
ratio keep that share of the training easy samples (of the hard ones with --reduce_hard) and train
`--runs` evaluation networks on what is left; score each on the full, hard and easy test sets
(accuracy, macro precision, recall and F1). All evaluation networks of one identification are
trained at once. Saves Results/F1_results/<dataset>_<strategy>_<reduce_hard>_<subset_size>_metrics.pkl
and ..._indices.pkl (with a _snapshot_last suffix under --snapshot last), and draws accuracy against
remaining ratio to Figures/straggler_ratio_vs_generalisation/.
"""
import argparse
from itertools import product
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from tqdm import tqdm

from utils import (METRICS, STRATEGIES, add_common_arguments, add_dataset_arguments, class_counts, derived_seed,
                   f1_results_path, flip_labels, identify_hard_samples, keep_freed_memory_in_heap, load_dataset,
                   positive_int, reduction_masks, resolve_device, rounded_count, run_script, run_settings, save_figure,
                   save_pickle, split_train_test, train_and_evaluate, unit_interval)

NOISE, IDENTIFY, SPLIT, EVALUATE = range(4)  # stages of the experiment, each with its own seeds
TEST_SETS = ("full", "hard", "easy")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_arguments(parser)
    parser.add_argument("--strategy", choices=STRATEGIES, default="stragglers",
                        help="how hard samples are found: misclassified at their class's inversion point "
                             "(stragglers), lowest largest logit (confidence) or highest energy (default stragglers)")
    parser.add_argument("--runs", type=positive_int, default=3,
                        help="identifications per train ratio, and evaluation networks per remaining ratio (default 3)")
    parser.add_argument("--train_ratios", type=unit_interval(False, False), nargs="+", default=[0.9, 0.5],
                        help="shares of the hard and of the easy samples used for training, in (0, 1) (default 0.9 0.5)")
    parser.add_argument("--remaining_train_ratios", type=unit_interval(True, True), nargs="+",
                        default=[0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.5, 0.75, 1.0],
                        help="shares of the training easy samples (hard with --reduce_hard) kept, in [0, 1] "
                             "(default 0.0 0.05 0.1 0.15 0.2 0.25 0.5 0.75 1.0)")
    parser.add_argument("--reduce_hard", action="store_true",
                        help="reduce the hard training samples instead of the easy ones")
    parser.add_argument("--level", choices=["class", "dataset"], default="dataset",
                        help="confidence and energy: pick the hardest samples within each class, or over the whole "
                             "dataset (default dataset); stragglers are always found per class")
    parser.add_argument("--noise_ratio", type=unit_interval(True, False), default=0.0,
                        help="share of samples whose label is flipped to another class before anything else, "
                             "in [0, 1) (default 0.0)")
    parser.add_argument("--evaluation_network", choices=["SimpleNN", "ResNet"], default="SimpleNN",
                        help="network used to find the hard samples and to evaluate: SimpleNN (full-batch SGD, "
                             "lr 0.1, all at once) or ResNet (ResNet-18, Adam lr 1e-3, wd 1e-2, minibatches "
                             "of 128, one at a time) (default SimpleNN)")
    parser.add_argument("--epochs", type=positive_int, default=500,
                        help="training epochs of every network; the straggler search stops earlier once every "
                             "class has inverted (default 500)")
    parser.add_argument("--snapshot", choices=["copy", "last"], default="copy",
                        help="stragglers of class c are judged by a copy of the network at c's inversion point "
                             "(copy), or, as the original code did by mistake, all classes by the network at the "
                             "last inversion (last) (default copy)")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    for flag in ("train_ratios", "remaining_train_ratios"):
        values = getattr(args, flag)
        if len(set(values)) != len(values):
            parser.error(f"--{flag} lists a ratio twice: {' '.join(map(str, values))}")
    if args.epochs <= 20:
        parser.error(f"--epochs must be over 20: inversion points are looked for from epoch 20 on, got {args.epochs}")
    return args


def plot_accuracies(metrics: dict, args: argparse.Namespace) -> list[Path]:
    """Accuracy against remaining ratio on the full, hard and easy test sets, one line per train ratio."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 4), sharey=True)
    reduced = "hard" if args.reduce_hard else "easy"
    for ax, test_set in zip(axes, TEST_SETS):
        for train_ratio, by_set in metrics.items():
            values = [np.asarray(by_set[test_set][r]["accuracy"]) for r in args.remaining_train_ratios]
            ax.errorbar(args.remaining_train_ratios, [np.nanmean(v) for v in values], [np.nanstd(v) for v in values],
                        marker="o", markersize=3, capsize=3, label=f"train ratio {train_ratio}")
        ax.set_title(f"{test_set} test set")
        ax.set_xlabel(f"share of training {reduced} samples kept")
    axes[0].set_ylabel("accuracy")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{args.dataset_name}, {args.strategy}, {args.runs} x {args.runs} networks per point")
    fig.tight_layout()
    name = f1_results_path(args.dataset_name, args.strategy, args.reduce_hard, args.subset_size, "accuracy",
                           args.snapshot).stem
    return save_figure(fig, Path("Figures/straggler_ratio_vs_generalisation") / name)


def main(args: argparse.Namespace) -> None:
    keep_freed_memory_in_heap()
    device = resolve_device(args.device)
    dataset = load_dataset(args.dataset_name, args.data_root, args.subset_size, args.seed, device)
    num_classes, data = dataset.num_classes, dataset.data
    labels, flipped = flip_labels(dataset.labels, args.noise_ratio, num_classes,
                                  torch.Generator().manual_seed(derived_seed(args.seed, NOISE)))

    plan = list(product(args.train_ratios, range(args.runs)))  # one identification each, all found at once
    hard = identify_hard_samples(
        args.strategy, args.evaluation_network, [derived_seed(args.seed, IDENTIFY, i) for i in range(len(plan))],
        data, labels, num_classes, args.epochs, args.level,
        extra_per_class=rounded_count(args.noise_ratio / num_classes, len(labels)), snapshot=args.snapshot)
    hard_counts = class_counts(hard, labels, num_classes).cpu().numpy()
    caught = hard[:, flipped].float().mean(1).tolist() if len(flipped) else [None] * len(plan)

    metrics = {ratio: {test_set: {remaining: {metric: [] for metric in METRICS}
                                  for remaining in args.remaining_train_ratios} for test_set in TEST_SETS}
               for ratio in args.train_ratios}
    identifications = []
    for i, (train_ratio, run) in enumerate(tqdm(plan, desc="identifications evaluated")):
        split = torch.Generator().manual_seed(derived_seed(args.seed, SPLIT, i))
        train = split_train_test(hard[i], train_ratio, split)
        masks = reduction_masks(train, hard[i], args.remaining_train_ratios, args.reduce_hard, split)
        test, hard_i = ~train, hard[i].cpu()
        seeds = [derived_seed(args.seed, EVALUATE, i, j) for j in range(len(masks) * args.runs)]
        scores = train_and_evaluate(args.evaluation_network, seeds, data, labels, num_classes, args.epochs,
                                    masks.repeat_interleave(args.runs, 0),
                                    {"full": test, "hard": test & hard_i, "easy": test & ~hard_i})
        for test_set, metric in product(TEST_SETS, METRICS):
            for k, remaining in enumerate(args.remaining_train_ratios):
                metrics[train_ratio][test_set][remaining][metric] += scores[test_set][metric][k * args.runs:(k + 1) * args.runs]
        hard_positions = hard_i & (labels.cpu()[None] == torch.arange(num_classes)[:, None])
        identifications.append({
            "train_ratio": train_ratio, "run": run,
            "hard_indices": [dataset.indices[row].numpy() for row in hard_positions],
            "training_samples": masks.sum(1).tolist(), "caught_flipped_share": caught[i]})

    settings = run_settings(args, device)
    metrics_path = f1_results_path(args.dataset_name, args.strategy, args.reduce_hard, args.subset_size, "metrics",
                                  args.snapshot)
    indices_path = f1_results_path(args.dataset_name, args.strategy, args.reduce_hard, args.subset_size, "indices",
                                  args.snapshot)
    save_pickle({"settings": settings, "metrics": metrics}, metrics_path)
    save_pickle({"settings": settings, "class_names": dataset.class_names, "subset_indices": dataset.indices.numpy(),
                 "subset_labels": labels.cpu().numpy(), "flipped_indices": dataset.indices[flipped.cpu()].numpy(),
                 "identifications": identifications},
                indices_path)
    figures = plot_accuracies(metrics, args)

    print(f"hard samples per class (mean over {len(plan)} identifications): "
          + ", ".join(f"{name} {count:.1f}" for name, count in zip(dataset.class_names, hard_counts.mean(0))))
    if len(flipped):
        print(f"flipped labels caught as hard: {100 * np.mean(caught):.1f}% +- {100 * np.std(caught):.1f}% "
              f"of {len(flipped)}")
    print("mean accuracy on the test sets (full / hard / easy):")
    for train_ratio, remaining in product(args.train_ratios, args.remaining_train_ratios):
        by_set = metrics[train_ratio]
        print(f"  train ratio {train_ratio}, remaining {remaining}: "
              + " / ".join(f"{np.nanmean(by_set[s][remaining]['accuracy']):.4f}" for s in TEST_SETS))
    print(f"saved {metrics_path}, {indices_path}, {figures[0]} and {figures[1]}")


if __name__ == "__main__":
    run_script(main, parse_args)
