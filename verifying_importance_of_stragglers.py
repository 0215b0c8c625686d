"""Sections 4-5: do hard samples matter for generalisation? (straggler_ratio_vs_generalisation)

For every train ratio, `--runs` times: find the hard samples of the subset afresh with `--strategy`
(always with SimpleNNs, as the original); for every remaining ratio split hard and easy samples
separately into train and test by the train ratio (one split for all ratios with --nested_splits), keep
that share of the training easy samples (of the hard ones with --reduce_hard) and train `--runs`
evaluation networks on what is left; score each on the full, hard and easy test sets (accuracy, macro
precision, recall and F1). All evaluation SimpleNNs of one identification are trained at once. Saves
<results_dir>/F1_results/<dataset>_<strategy>_<reduce_hard>_<subset_size>_metrics.pkl and ..._indices.pkl
(with a _snapshot_last suffix under --snapshot last; <dataset> is your own data's label), and draws accuracy against remaining ratio to
<figures_dir>/straggler_ratio_vs_generalisation/.
"""
import argparse
from itertools import product
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from tqdm import tqdm

from utils import (INVERSION_INTERVAL, INVERSION_START, METRICS, STRATEGIES, RunDescription, Stage,
                   add_common_arguments, add_dataset_arguments, benchmark_splits, budget_share_or_count, class_counts,
                   flip_labels, hard_samples_path, identify_hard_samples, keep_freed_memory_in_heap,
                   load_dataset_from_args, positive_int, resolve_device, run_script, run_settings, save_figure,
                   save_pickle, stage_generator, stage_seed, train_and_evaluate, unit_interval)

TEST_SETS = ("full", "hard", "easy")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_arguments(parser)
    parser.add_argument("--strategy", choices=STRATEGIES, default="stragglers",
                        help="how hard samples are found: misclassified at their class's inversion point "
                             "(stragglers), lowest largest raw logit (confidence), highest energy, highest "
                             "late-stage Variance of Gradients over 15 checkpoints (vog), lowest area under the "
                             "margin (aum), most forgetting events (forgetting), highest EL2N or GraNd after the "
                             "step of epoch 20 (el2n, grand), or lowest data-map confidence (data_map); the "
                             "training-dynamics scores are recorded after every epoch (default stragglers)")
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
    parser.add_argument("--nested_splits", action="store_true",
                        help="split each identification into train and test once and nest the reductions inside "
                             "it (paired comparisons, less variance), instead of the original's fresh split per "
                             "remaining ratio")
    parser.add_argument("--level", choices=["class", "dataset"], default="dataset",
                        help="scored strategies (all but stragglers): pick the hardest samples within each "
                             "class, or over the whole dataset (vog then normalised within each class) (default "
                             "dataset); stragglers are always found per class")
    parser.add_argument("--budget", type=budget_share_or_count, default=None,
                        help="scored strategies (all but stragglers): hard samples per class, a share of each class in "
                             "(0, 1) or a count, instead of the stragglers' counts; needed where some class never "
                             "reaches an inversion point (default: the stragglers' counts)")
    parser.add_argument("--noise_ratio", type=unit_interval(True, False), default=0.0,
                        help="share of samples, int(ratio * N), whose label is flipped to another class; "
                             "stragglers are found on the noisy labels, the budgets of the scored strategies on "
                             "the clean ones; in [0, 1) (default 0.0)")
    parser.add_argument("--evaluation_network", choices=["SimpleNN", "ResNet"], default="SimpleNN",
                        help="network trained on the reduced training sets and scored on the test sets: SimpleNN "
                             "(full-batch SGD, lr 0.1, all at once) or ResNet (ResNet-18, Adam lr 1e-3, wd 1e-2, "
                             "full batch unless --batch_size, one at a time); hard samples are always found "
                             "with SimpleNNs (default SimpleNN)")
    parser.add_argument("--batch_size", type=positive_int, default=None,
                        help="--evaluation_network ResNet only: train on shuffled minibatches of this size instead "
                             "of the original's full batch, which needs far more memory (default: full batch)")
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
    earliest_inversion = INVERSION_START + INVERSION_INTERVAL
    if args.epochs <= earliest_inversion:
        parser.error(f"--epochs must be over {earliest_inversion}: the earliest inversion point is found after the "
                     f"step of epoch {earliest_inversion} (0-based), got {args.epochs}")
    if args.batch_size is not None and args.evaluation_network != "ResNet":
        parser.error("--batch_size applies to --evaluation_network ResNet only; SimpleNNs train full batch")
    return args


def plot_accuracies(metrics: dict, args: argparse.Namespace, dataset_name: str) -> list[Path]:
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
    fig.suptitle(f"{dataset_name}, {args.strategy}, {args.runs} x {args.runs} networks per point")
    fig.tight_layout()
    return save_figure(fig, hard_samples_path(args.figures_dir, "generalisation_figure", dataset_name, args.strategy,
                                              args.reduce_hard, args.subset_size, args.snapshot))


def main(args: argparse.Namespace) -> None:
    keep_freed_memory_in_heap()
    device = resolve_device(args.device)
    run = RunDescription(args.evaluation_network, args.runs * len(args.train_ratios), args.batch_size)
    dataset = load_dataset_from_args(args, device, run=run)
    num_classes, data, clean_labels = dataset.num_classes, dataset.data, dataset.labels
    labels, flipped, _ = flip_labels(clean_labels, args.noise_ratio, num_classes, args.seed)

    plan = list(product(args.train_ratios, range(args.runs)))  # one identification each, all found at once
    hard, inversion_epochs = identify_hard_samples(
        args.strategy, [stage_seed(args.seed, Stage.IDENTIFY, i) for i in range(len(plan))], data, clean_labels, labels,
        num_classes, args.epochs, args.level, args.noise_ratio, args.snapshot, budget=args.budget,
        class_names=dataset.class_names)
    hard_counts = class_counts(hard, labels, num_classes).cpu().numpy()
    caught = hard[:, flipped].float().mean(1).tolist() if flipped.any() else [None] * len(plan)

    metrics = {ratio: {test_set: {remaining: {metric: [] for metric in METRICS}
                                  for remaining in args.remaining_train_ratios} for test_set in TEST_SETS}
               for ratio in args.train_ratios}
    identifications = []
    for i, (train_ratio, run) in enumerate(tqdm(plan, desc="identifications evaluated")):
        hard_i = hard[i].cpu()
        train, test = benchmark_splits(hard_i, train_ratio, args.remaining_train_ratios, args.reduce_hard,
                                       args.nested_splits, stage_generator(args.seed, Stage.SPLIT, i))
        train, test = train.repeat_interleave(args.runs, 0), test.repeat_interleave(args.runs, 0)  # [networks, N]
        seeds = [stage_seed(args.seed, Stage.EVALUATE, i, j) for j in range(len(train))]
        scores = train_and_evaluate(args.evaluation_network, seeds, data, labels, num_classes, args.epochs, train,
                                    {"full": test, "hard": test & hard_i, "easy": test & ~hard_i}, args.batch_size)
        for test_set, metric in product(TEST_SETS, METRICS):
            for k, remaining in enumerate(args.remaining_train_ratios):
                metrics[train_ratio][test_set][remaining][metric] += scores[test_set][metric][k * args.runs:(k + 1) * args.runs]
        hard_positions = hard_i & (labels.cpu()[None] == torch.arange(num_classes)[:, None])
        identifications.append({
            "train_ratio": train_ratio, "run": run,
            "hard_indices": [dataset.indices[row].numpy() for row in hard_positions],
            "hard_sample_ids": [[dataset.sample_ids[i] for i in row.nonzero().flatten().tolist()]
                                for row in hard_positions],
            "training_samples": train[::args.runs].sum(1).tolist(), "caught_flipped_share": caught[i],
            "inversion_epochs": inversion_epochs[i]})

    settings = run_settings(args, device)
    paths = {kind: hard_samples_path(args.results_dir, kind, dataset.name, args.strategy, args.reduce_hard,
                                     args.subset_size, args.snapshot) for kind in ("metrics", "indices")}
    save_pickle({"settings": settings, "metrics": metrics, "class_names": dataset.class_names,
                 "sample_ids": dataset.sample_ids}, paths["metrics"])
    save_pickle({"settings": settings, "class_names": dataset.class_names, "subset_indices": dataset.indices.numpy(),
                 "sample_ids": dataset.sample_ids,
                 "subset_labels": labels.cpu().numpy(), "flipped_indices": dataset.indices[flipped.cpu()].numpy(),
                 "identifications": identifications}, paths["indices"])
    figures = plot_accuracies(metrics, args, dataset.name)

    print(f"hard samples per class (mean over {len(plan)} identifications): "
          + ", ".join(f"{name} {count:.1f}" for name, count in zip(dataset.class_names, hard_counts.mean(0))))
    if flipped.any():
        print(f"flipped labels caught as hard: {100 * np.mean(caught):.1f}% +- {100 * np.std(caught):.1f}% "
              f"of {int(flipped.sum())}")
    print("mean accuracy on the test sets (full / hard / easy):")
    for train_ratio, remaining in product(args.train_ratios, args.remaining_train_ratios):
        by_set = metrics[train_ratio]
        print(f"  train ratio {train_ratio}, remaining {remaining}: "
              + " / ".join(f"{np.nanmean(by_set[s][remaining]['accuracy']):.4f}" for s in TEST_SETS))
    print(f"saved {paths['metrics']}, {paths['indices']}, {figures[0]} and {figures[1]}")


if __name__ == "__main__":
    run_script(main, parse_args)
