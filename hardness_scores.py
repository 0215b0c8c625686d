"""Every hardness score from the same training runs: stragglers, confidence, energy, VoG, AUM, forgetting
events, EL2N, GraNd, data maps, loss, and cleanlab's confident learning as an external baseline.

`--runs` SimpleNNs (full batch, SGD lr 0.1, as Section 3) are trained at once on the subset with
int(noise_ratio * N) labels flipped (seeded, as Sections 4-5 flip them). Observers of that one run find the
stragglers at each class's inversion point, record the training dynamics after every epoch (running sums:
AUM, forgetting, data maps; EL2N, GraNd and loss after the step of --score_epoch; margin, loss, largest logit
and EL2N every --trajectory_every epochs) and keep 15 checkpoints for late-stage VoG (normalised within each
class); confidence (largest logit) and energy come from the trained networks. Cleanlab scores K-fold
out-of-sample probabilities of --cleanlab_folds more SimpleNNs per run.

Saves <results_dir>/scores/<dataset>_<subset_size>_<noise_ratio>.npz (one array per score, [runs, N]; the
trajectories [runs, T, N]; the flipped mask, the labels) with a settings JSON beside it (the seconds each
score cost, which way each is hard), and draws to <figures_dir>/scores/: the data map, the Spearman
correlation matrix of all scores, and each class's share of each score's top k. --replot draws them again
from the saved file.
"""
import argparse
from pathlib import Path

import numpy as np

from utils import (RANKINGS, add_dataset_arguments, add_scoring_arguments, canonical_dataset_name,
                   check_scoring_arguments, detection_scores, hardness_ranking, load_setting_arrays, load_settings,
                   plot_correlations, plot_data_map, plot_top_k_classes, positive_int, rank_correlations,
                   resolve_device, run_script, run_settings, save_figure, save_setting, score_setting,
                   scores_results_path, unit_interval)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_arguments(parser)
    parser.add_argument("--noise_ratio", type=unit_interval(True, False), default=0.1,
                        help="share of samples, int(ratio * N), whose label is flipped to another class, in [0, 1) "
                             "(default 0.1)")
    parser.add_argument("--top_k", type=positive_int, default=None,
                        help="how many of each score's hardest samples the class-share figure counts (default: the "
                             "mean number of stragglers, the budget Figure 7 gives every strategy)")
    parser.add_argument("--replot", action="store_true",
                        help="draw the figures again from the saved .npz of these settings (dataset, subset, noise), "
                             "without training; mislabel_detection_benchmark.py saves the same files")
    add_scoring_arguments(parser, runs=5)
    args = parser.parse_args(argv)
    check_scoring_arguments(parser, args)
    return args


def draw_figures(scores: dict[str, np.ndarray], labels: np.ndarray, class_names: list[str], title: str,
                 top_k: int | None, stem: Path) -> list[str]:
    """The data map, the rank-correlation matrix and the class shares of the top k; returns the ranked names."""
    flipped = scores["flipped"]
    save_figure(plot_data_map(scores, flipped, title), stem.with_name(f"{stem.name}_data_map"))
    names = [*(["stragglers"] if "stragglers" in scores else []), *(n for n in RANKINGS if RANKINGS[n][0] in scores)]
    save_figure(plot_correlations(rank_correlations(scores, names), names, title),
                stem.with_name(f"{stem.name}_correlations"))
    budget = scores["stragglers"].sum(1).mean() if "stragglers" in scores else flipped.sum()
    top_k = top_k or max(1, round(budget))
    save_figure(plot_top_k_classes(scores, labels, class_names, top_k, title),
                stem.with_name(f"{stem.name}_top_{top_k}_classes"))
    return names


def main(args: argparse.Namespace) -> None:
    dataset_name = canonical_dataset_name(args.dataset_name)
    path = scores_results_path(args.results_dir, dataset_name, args.subset_size, args.noise_ratio, args.network)
    if args.replot:
        scores, settings = load_setting_arrays(path), load_settings(path)
        class_names, seconds, notes = settings["class_names"], settings["seconds"], settings["notes"]
    else:
        device = resolve_device(args.device)
        setting = score_setting(dataset_name, args.subset_size, args.noise_ratio, args, device)
        save_setting(setting, path, run_settings(args, device))
        scores, class_names = {**setting.run.scores, "flipped": setting.flipped}, setting.dataset.class_names
        scores["labels"], seconds, notes = setting.labels.cpu().numpy(), setting.run.seconds, setting.run.notes

    runs = scores["confidence"].shape[0]
    title = f"{dataset_name}, {args.subset_size} samples, {args.noise_ratio:g} noise, {runs} {args.network} runs"
    stem = args.figures_dir / "scores" / path.stem
    names = draw_figures(scores, scores["labels"], class_names, title, args.top_k, stem)
    if scores["flipped"].any():
        print("AUROC, flipped against clean labels: " + ", ".join(
            f"{n} {detection_scores(hardness_ranking(scores, n), scores['flipped'])['auroc']:.3f}"
            for n in names if n != "stragglers"))
    print("seconds: " + ", ".join(f"{key} {value:.1f}" for key, value in seconds.items()))
    for note in notes:
        print(f"note: {note}")
    print(("redrew from" if args.replot else "saved") + f" {path} and its .json; figures in {stem.parent}")


if __name__ == "__main__":
    run_script(main, parse_args)
