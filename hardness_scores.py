"""Every hardness score from the same training runs: stragglers, confidence, energy, VoG, AUM, forgetting
events, EL2N, GraNd, data maps, loss, and cleanlab's confident learning as an external baseline.

With --recipe paper (the default for the built-in datasets), `--runs` SimpleNNs (full batch, SGD lr 0.1, as Section 3) are trained at once on the subset with
int(noise_ratio * N) labels flipped (seeded, as Sections 4-5 flip them). Observers of that one run find the
stragglers at each class's inversion point, record the training dynamics after every epoch (running sums:
AUM, forgetting, data maps; EL2N, GraNd and loss after the step of --score_epoch; margin, loss, largest logit
and EL2N every --trajectory_every epochs) and keep 15 checkpoints for late-stage VoG (normalised within each
class); confidence (largest logit) and energy come from the trained networks. Cleanlab scores K-fold
out-of-sample probabilities of --cleanlab_folds more SimpleNNs per run.

Saves <results_dir>/scores/<dataset>_<subset_size>_<noise_ratio>.npz (one array per score, [runs, N]; the
trajectories [runs, T, N]; the flipped mask, the labels, the runs' majority prediction, the sample ids) with a
settings JSON beside it (the seconds each score cost, which way each is hard), and beside them the answer:
<name>_ranking.csv, every sample from most to least suspicious (sample_id, given_label, predicted_label, every
score with its rank, consensus_rank: the mean rank of AUM, data-map confidence and cleanlab), and
<name>_report.html, one self-contained page of the most suspicious samples as thumbnails (rows for tables), each
class's hardest samples by every family of scores, the data map and the per-class counts. Figures go to
<figures_dir>/scores/: the data map, the Spearman correlation matrix of all scores, and each class's share of
each score's top k. --replot draws them, the ranking and the report again from the saved file.

--recipe fast (the default when every dataset is your own: folder:PATH, npz:PATH, csv:PATH) trains --runs
minibatch MLPs (or --network CNN) at once, with random 2-pixel shifts of images of at least 16 pixels a side,
until the run-averaged margins' rank correlation between two epochs reaches 0.99 (--stopping) or for at most
--epochs (12) epochs; the trajectory scores run up to that epoch, EL2N, GraNd, loss, confidence and energy are
taken at it, VoG is not computed, and the consensus is EL2N at the stopping epoch (with cleanlab where
--cleanlab_folds runs folds). It also says why each sample is hard: the ranking gains verdict (mislabelled,
out_of_distribution, atypical, ambiguous, duplicate or ok; the rules of hardness/verdicts.py), duplicate_of and
outlier_rank, and the report a section per verdict (docs/hardness_types.md). Its
files end in _fast (docs/scores.md, "The fast recipe"). Your own data is scored with the labels as given
(--noise_ratio defaults to 0 for it; docs/your_data.md).
"""
import argparse
from pathlib import Path

import numpy as np

import torch

from hardness.data import Dataset
from hardness.ranking import Ranking, build_ranking, write_ranking
from hardness.report import render_report, write_report
from hardness.score_figures import plot_class_counts
from hardness.setting import saved_setting_path, scoring_run, setting_name
from hardness.user_data import parse_source
from hardness.verdicts import VERDICTS, assign_verdicts
from utils import (RANKINGS, UserInputError, add_dataset_arguments, add_scoring_arguments, check_scoring_arguments,
                   dataset_label, detection_scores, hardness_ranking, load_dataset_from_args, load_setting_arrays,
                   load_settings, plot_correlations, plot_data_map, plot_top_k_classes, positive_int,
                   rank_correlations, resolve_device, run_script, run_settings, save_figure, save_setting,
                   score_setting, scores_path, unit_interval)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_arguments(parser)
    parser.add_argument("--noise_ratio", type=unit_interval(True, False), default=None,
                        help="share of samples, int(ratio * N), whose label is flipped to another class, in [0, 1) "
                             "(default 0.1 for the built-in datasets, 0 for your own data: its labels as given)")
    parser.add_argument("--report_top", type=positive_int, default=60,
                        help="how many of the most suspicious samples the report shows (default 60)")
    parser.add_argument("--top_k", type=positive_int, default=None,
                        help="how many of each score's hardest samples the class-share figure counts (default: the "
                             "mean number of stragglers, the budget Figure 7 gives every strategy)")
    parser.add_argument("--replot", action="store_true",
                        help="draw the figures again from the saved .npz of these settings (dataset, subset, noise), "
                             "without training; mislabel_detection_benchmark.py saves the same files")
    add_scoring_arguments(parser, runs=5)
    args = parser.parse_args(argv)
    check_scoring_arguments(parser, args, [args.dataset_name])
    if args.noise_ratio is None:
        args.noise_ratio = 0.0 if parse_source(args.dataset_name) else 0.1
    return args


def what_ran(settings: dict, runs: int) -> str:
    """The title's account of a run from its settings: the noise injected (if any), the recipe, its networks and
    their number, and the fast recipe's stopping epoch (a settings JSON without a recipe is the paper's)."""
    recipe = settings.get("recipe") or {"recipe": "paper"}
    ratio, noise_type = settings.get("noise_ratio", 0), settings.get("noise_type", "uniform")
    noise = f"{ratio:g} {noise_type} noise injected, " if ratio else "labels as given, "
    if recipe["recipe"] == "paper":
        return noise + f"paper recipe: {runs} {settings.get('network') or 'SimpleNN'}s, {settings.get('epochs')} epochs"
    return noise + (f"fast recipe: {runs} {recipe['network']}s, stopped after epoch {recipe['stopping_epoch']} "
                    f"({recipe['stopping']})")


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


def write_answer(scores: dict[str, np.ndarray], dataset: Dataset, class_names: list[str], noise_ratio: float,
                 title: str, settings: dict, top: int, results_dir: Path, name: str) -> Ranking:
    """The ranking CSV and the report of the setting `name` (a table's rows shown as read, with their column
    names)."""
    labels, flipped = scores["labels"], scores["flipped"] if noise_ratio > 0 else None
    verdicts = (assign_verdicts(scores, labels, scores["predicted_labels"], len(class_names)) if "agreement" in scores
                else None)
    ranking = build_ranking(scores, labels, scores["predicted_labels"], class_names, scores["sample_ids"].tolist(),
                            flipped, verdicts)
    csv_path = scores_path(results_dir, "ranking", name)
    write_ranking(ranking, csv_path)
    shown = dataset.table_values if dataset.table_values is not None else dataset.data
    figures = {"data map: confidence against variability": plot_data_map(scores, scores["flipped"], title),
               "samples per class": plot_class_counts(labels, scores["predicted_labels"], ranking.order[:top],
                                                      class_names, title)}
    write_report(scores_path(results_dir, "report", name),
                 render_report(ranking, scores, shown, labels, class_names, title, settings, csv_path.name, figures, top,
                               feature_names=dataset.feature_names, verdicts=verdicts))
    if verdicts is None:
        print("note: no verdicts: the paper recipe records none of the scores they need; --recipe fast gives them")
    else:
        counts = {name: int((verdicts.verdict == name).sum()) for name in VERDICTS}
        print("verdicts: " + ", ".join(f"{name} {count}" for name, count in counts.items()))
        for note in verdicts.notes:
            print(f"note: {note}")
    return ranking


def main(args: argparse.Namespace) -> None:
    label = dataset_label(args.dataset_name, args.dataset_label)
    if args.replot:
        path = saved_setting_path(args, label)
        scores, settings = load_setting_arrays(path), load_settings(path)
        class_names, seconds, notes = settings["class_names"], settings["seconds"], settings["notes"]
        dataset = load_dataset_from_args(args, torch.device("cpu"), seed=settings["seed"], run=scoring_run(args))
        if "sample_ids" not in scores or scores["sample_ids"].tolist() != dataset.sample_ids:
            raise UserInputError(f"the samples of {args.dataset_name} are not those {path} scored (changed data, or a "
                                 "file of an older version); score them again without --replot")
    else:
        device = resolve_device(args.device)
        setting = score_setting(args.dataset_name, args.subset_size, args.noise_ratio, args, device)
        settings = run_settings(args, device)
        path = scores_path(args.results_dir, "scores", setting_name(
            args.dataset_name, setting.dataset, args.subset_size, args.noise_ratio, args.network, args.noise_type,
            args.recipe))
        save_setting(setting, path, settings)
        dataset, class_names = setting.dataset, setting.dataset.class_names
        scores = {**setting.run.scores, "flipped": setting.flipped, "labels": setting.labels.cpu().numpy(),
                  "predicted_labels": setting.run.predicted_labels,
                  "sample_ids": np.asarray(setting.dataset.sample_ids, dtype=str)}
        seconds, notes = setting.run.seconds, setting.run.notes
        settings = {**settings, "recipe": setting.run.recipe}

    title = f"{label}, {len(scores['labels'])} samples, " + what_ran(settings, scores["confidence"].shape[0])
    stem = scores_path(args.figures_dir, "figures", path.stem)
    names = draw_figures(scores, scores["labels"], class_names, title, args.top_k, stem)
    if scores["flipped"].any():
        print("AUROC, flipped against clean labels: " + ", ".join(
            f"{n} {detection_scores(hardness_ranking(scores, n), scores['flipped'])['auroc']:.3f}"
            for n in names if n != "stragglers"))
    ranking = write_answer(scores, dataset, class_names, args.noise_ratio, title, settings, args.report_top,
                           args.results_dir, path.stem)
    print("most suspicious: " + ", ".join(f"{row['sample_id']} ({row['given_label']} -> {row['predicted_label']})"
                                          for row in ranking.rows()[:5]))
    print("seconds: " + ", ".join(f"{key} {value:.1f}" for key, value in seconds.items()))
    for note in notes:
        print(f"note: {note}")
    print(("redrew from" if args.replot else "saved") + f" {path} and its .json, {path.stem}_ranking.csv and "
          f"{path.stem}_report.html; figures in {stem.parent}")


if __name__ == "__main__":
    run_script(main, parse_args)
