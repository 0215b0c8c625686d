"""Figure 7: the hard-sample strategies compared, for every metric.

Reads <results_dir>/F1_results/<dataset>_<strategy>_<reduce_hard>_<subset_size>_metrics.pkl for every
strategy and draws, per metric, the mean over networks on the hard test set (solid) and on the easy
test set (dotted) against the remaining ratio, with +-1 std bands, one colour per strategy and one
panel per train ratio: <figures_dir>/Figure7/a_easy_accuracy ... d_easy_F1 from the runs that reduce easy
samples, e_hard_accuracy ... h_hard_F1 from the runs that reduce hard ones (--reduce_hard).
"""
import argparse

import matplotlib.pyplot as plt
import numpy as np

from utils import (STRATEGIES, UserInputError, add_results_arguments, dataset_label, existing_f1_results,
                   hard_samples_path, load_pickle, results_folders, run_script, save_figure)

PANELS = {False: [("a", "accuracy"), ("b", "recall"), ("c", "precision"), ("d", "F1")],
          True: [("e", "accuracy"), ("f", "recall"), ("g", "precision"), ("h", "F1")]}
COLOURS = dict(zip(STRATEGIES, plt.colormaps["tab10"].colors))  # one per strategy, however many there are


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_results_arguments(parser)
    return parser.parse_args(argv)


def load_metrics(args: argparse.Namespace, dataset_name: str, reduce_hard: bool) -> dict[str, dict]:
    """strategy -> metrics for the strategies whose pickle exists; names each missing file on stderr."""
    found = {}
    for strategy in STRATEGIES:
        path = existing_f1_results(results_folders(args.results_dir, args.sweep), dataset_name, strategy, reduce_hard,
                                   args.subset_size, "metrics")
        if path is not None:
            found[strategy] = load_pickle(path, "verifying_importance_of_stragglers.py")["metrics"]
    return found


def plot_metric(by_strategy: dict[str, dict], metric: str, reduced: str, title: str) -> plt.Figure:
    """One panel per train ratio; per strategy, hard (solid) and easy (dotted) test-set lines with std bands."""
    train_ratios = sorted(set.intersection(*(set(metrics) for metrics in by_strategy.values())), reverse=True)
    fig, axes = plt.subplots(1, len(train_ratios), figsize=(5 * len(train_ratios), 4), sharey=True, squeeze=False)
    for ax, train_ratio in zip(axes[0], train_ratios):
        for strategy, metrics in by_strategy.items():
            for test_set, style in (("hard", "-"), ("easy", ":")):
                by_remaining = metrics[train_ratio][test_set]
                remaining = sorted(by_remaining)
                values = [np.asarray(by_remaining[r][metric], dtype=float) for r in remaining]
                mean, std = np.array([np.nanmean(v) for v in values]), np.array([np.nanstd(v) for v in values])
                ax.plot(remaining, mean, style, color=COLOURS[strategy], marker="o", markersize=3,
                        label=f"{strategy}, {test_set} test samples")
                ax.fill_between(remaining, mean - std, mean + std, color=COLOURS[strategy], alpha=0.15)
        ax.set_title(f"train ratio {train_ratio}")
        ax.set_xlabel(f"share of training {reduced} samples kept")
    axes[0, 0].set_ylabel(metric)
    if len(by_strategy) <= 4:
        axes[0, 0].legend(fontsize=7)
    else:                                   # too many lines to share a panel with the legend
        fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def main(args: argparse.Namespace) -> None:
    dataset_name = dataset_label(args.dataset_name)
    saved = []
    for reduce_hard, panels in PANELS.items():
        by_strategy = load_metrics(args, dataset_name, reduce_hard)
        if not by_strategy:
            continue
        reduced = "hard" if reduce_hard else "easy"
        for letter, metric in panels:
            title = f"{dataset_name}: {metric} when reducing {reduced} training samples"
            fig = plot_metric(by_strategy, metric, reduced, title)
            saved += save_figure(fig, hard_samples_path(args.figures_dir, "figure7", panel=f"{letter}_{reduced}_{metric}"))
    if not saved:
        raise UserInputError(f"no results for {dataset_name} with --subset_size {args.subset_size} in "
                             f"{args.results_dir}/F1_results/; run verifying_importance_of_stragglers.py first")
    print("saved " + ", ".join(str(path) for path in saved if path.suffix == ".png") + " (and PDFs)")


if __name__ == "__main__":
    run_script(main, parse_args)
