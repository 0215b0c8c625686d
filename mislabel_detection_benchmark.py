"""Which hardness score finds mislabelled samples? A benchmark of every score on flipped labels.

For each dataset and noise ratio: flip int(noise_ratio * N) labels of the subset (seeded, as Sections 4-5
flip them; with --noise_type pairs every class into its confusable class), compute every score from `--runs`
batched runs exactly as hardness_scores.py does (and save the same .npz), and rank the scores by how well they
separate flipped from clean labels: AUROC and average precision of the score averaged over runs (and the mean
and std of each run's), precision at k = the number flipped, and the extra seconds the score costs over the
plain training. The consensus of hardness_scores.py's ranking (the mean rank of AUM, data-map confidence
and cleanlab) follows its members. Set-valued identifiers (stragglers, cleanlab's flagged set,
AUM's threshold verdict) report the precision, recall and F1 of their set instead. With --moved_list it scores
one folder:PATH as it is, against the list of files moved into a wrong class folder
(scripts/export_noisy_folder.py writes one).

Writes <results_dir>/scores/benchmark.csv and benchmark.md (a markdown table), and draws
<figures_dir>/scores/benchmark_auroc_by_epoch (each name ends in _ResNet with --network ResNet, then _pairs with
pair noise, _moved with --moved_list): the AUROC of loss, confidence, EL2N and margin taken at each
trajectory epoch, against the epoch, with the mean inversion epoch dashed. With --sweep it trains nothing:
it merges the benchmark.csv of every cell of a sweep.py folder (e.g. the seeds of
configs/sweeps/mislabel_benchmark.yaml) into benchmark_sweep.csv and .md, averaged per setting, recipe and score,
and draws <figures_dir>/scores/benchmark_auroc_against_seconds_sweep: each workflow's AUROC against its seconds.
"""
import argparse
import csv
from pathlib import Path, PurePosixPath

import numpy as np

import torch

from hardness.cleanlab_workflows import WORKFLOWS, run_workflow
from hardness.results import DEFAULT_NETWORKS, write_csv
from hardness.score_figures import plot_auroc_against_seconds
from hardness.setting import ScoredSetting, setting_name
from utils import (UserInputError, add_dataset_arguments, add_scoring_arguments, benchmark_rows,
                   canonical_dataset_name, check_scoring_arguments, combine_rows, detection_scores, markdown_table, plot_trajectory_auroc,
                   resolve_device, run_script, run_settings, save_figure, save_setting, score_setting,
                   scores_path, summary_table, trajectory_auroc, unit_interval, write_atomically)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_arguments(parser, dataset_name={
        "nargs": "+", "default": ["MNIST", "FashionMNIST"],
        "help": "torchvision datasets, any letter case, or your own data (folder:PATH, npz:PATH, csv:PATH; "
                "docs/your_data.md) (default MNIST FashionMNIST)"},
        subset_size={"help": "samples kept from train+test after the seeded shuffle; your own data smaller than this "
                             "is used whole (default 20000)"})
    parser.add_argument("--noise_ratio", type=unit_interval(False, False), nargs="+", default=None,
                        help="shares of labels flipped, each in (0, 1), one setting each (default 0.05 0.1 0.2; none "
                             "with --moved_list)")
    parser.add_argument("--moved_list", type=Path, default=None,
                        help="score one folder:PATH whose labels are already wrong: this file names the moved files, "
                             "one path per line relative to the folder (as scripts/export_noisy_folder.py writes "
                             "it), and nothing more is flipped")
    parser.add_argument("--sweep", type=Path, default=None,
                        help="merge the benchmark tables of every cell of this sweep.py folder (mean over the cells "
                             "of each setting and score) instead of running")
    parser.add_argument("--cleanlab_workflows", action="store_true",
                        help="also run, on the same flipped labels, the two five-line cleanlab workflows a user would "
                             "write (5-fold LogisticRegression and MLPClassifier probabilities of the pixels in [0, 1]; "
                             "hardness/cleanlab_workflows.py), each a row with its seconds")
    add_scoring_arguments(parser, runs=3)
    args = parser.parse_args(argv)
    check_scoring_arguments(parser, args, args.dataset_name)
    if args.moved_list is not None:
        if len(args.dataset_name) != 1 or not args.dataset_name[0].startswith("folder:"):
            parser.error("--moved_list scores one folder: give --dataset_name folder:PATH alone")
        if args.noise_ratio is not None:
            parser.error("--moved_list takes no --noise_ratio: the moved files are the label noise")
        if args.noise_type != "uniform":
            parser.error("--moved_list takes no --noise_type: the moved files are the label noise")
    elif args.dataset_label is not None and len(args.dataset_name) > 1:
        parser.error("--dataset_label names one dataset; give one --dataset_name with it")
    args.noise_ratio = args.noise_ratio or ([] if args.moved_list else [0.05, 0.1, 0.2])
    args.dataset_name = [canonical_dataset_name(name) for name in args.dataset_name]
    return args


def read_moved_list(path: Path, sample_ids: list[str]) -> np.ndarray:
    """[N] bool: the samples whose id (path relative to the folder, after the move) the list names: the
    `sample_id` column of a CSV with a header (scripts/export_noisy_folder.py's moved.csv), or one path per line.
    Blank lines are ignored; a list that names none of the samples is a one-line error."""
    if not path.is_file():
        raise UserInputError(f"--moved_list {path}: no such file")
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if lines and "sample_id" in next(csv.reader(lines[:1])):
        lines = [row["sample_id"] for row in csv.DictReader(lines)]
    moved = {PurePosixPath(line.strip()).as_posix() for line in lines}
    mask = np.array([sample_id in moved for sample_id in sample_ids])
    if not mask.any():
        raise UserInputError(f"--moved_list {path} names {len(moved)} file(s), none of them a sample of the folder; "
                             "it must hold paths relative to the folder, after the move, e.g. "
                             f"{sample_ids[0]!r}")
    return mask


def moved_setting(args: argparse.Namespace, device: torch.device) -> ScoredSetting:
    """The folder scored as it is, its moved files taken as the flipped labels."""
    setting = score_setting(args.dataset_name[0], args.subset_size, 0.0, args, device)
    setting.flipped = read_moved_list(args.moved_list, setting.dataset.sample_ids)
    print(f"{int(setting.flipped.sum())} of the subset's {len(setting.flipped)} samples are in {args.moved_list}")
    return setting


def workflow_rows(setting: ScoredSetting, label: str, noise_ratio: float, noise_type: str, seed: int) -> list[dict]:
    """The rows of the two pinned cleanlab workflows on the setting's flipped labels."""
    rows = []
    for name in WORKFLOWS:
        quality, seconds = run_workflow(name, setting.dataset.data, setting.labels.cpu().numpy(), seed)
        rows.append({"dataset": label, "noise_ratio": noise_ratio, "noise_type": noise_type, "network": "",
                     "recipe": "sklearn", "score": name, "extra_seconds": seconds, "training_seconds": 0.0,
                     "workflow_seconds": seconds, **detection_scores(-quality[None].astype(np.float64), setting.flipped)})
    return rows


def merge_sweep(args: argparse.Namespace) -> None:
    """One table from the benchmark.csv of every cell of a sweep folder."""
    tables = sorted(args.sweep.glob("*/*/results/scores/benchmark*.csv"))
    if not tables:
        raise UserInputError(f"no <stage>/<cell>/results/scores/benchmark.csv under {args.sweep}; run the sweep first")
    rows = []
    for table in tables:
        with open(table, newline="") as handle:
            rows += list(csv.DictReader(handle))
    combined = combine_rows(rows)
    stem = scores_path(args.results_dir, "benchmark", suffix="_sweep")
    write_csv(combined, stem.with_suffix(".csv"))
    write_atomically(stem.with_suffix(".md"), (f"Mean over the cells of {args.sweep} ({len(tables)} tables)\n\n"
                                               + markdown_table(combined)).encode())
    summary = summary_table(combined)
    write_atomically(stem.with_name(stem.name + "_summary.md"), summary.encode())
    print(markdown_table(combined))
    print(summary)
    figure = save_figure(plot_auroc_against_seconds(combined),
                         scores_path(args.figures_dir, "benchmark_seconds_figure", suffix="_sweep"))
    print(f"merged {len(tables)} tables into {stem}.csv and .md, the summary into {stem.name}_summary.md; "
          f"figure {figure[0]}")


def main(args: argparse.Namespace) -> None:
    if args.sweep is not None:
        merge_sweep(args)
        return
    device = resolve_device(args.device)
    settings = run_settings(args, device)
    rows, curves, epochs, inversion = [], {}, {}, {}
    noise_type = "moved" if args.moved_list else args.noise_type
    runs = [(name, ratio) for name in args.dataset_name for ratio in args.noise_ratio] or [(args.dataset_name[0], None)]
    for dataset_name, noise_ratio in runs:
        setting = (moved_setting(args, device) if noise_ratio is None
                   else score_setting(dataset_name, args.subset_size, noise_ratio, args, device))
        label, noise_ratio = setting.dataset.name, noise_ratio if noise_ratio is not None else float(setting.flipped.mean())
        name = setting_name(dataset_name, setting.dataset, args.subset_size, noise_ratio, args.network, noise_type,
                            args.recipe)
        save_setting(setting, scores_path(args.results_dir, "scores", name),
                     {**settings, "dataset_name": dataset_name, "noise_ratio": noise_ratio, "noise_type": noise_type})
        rows += benchmark_rows(setting, label, noise_ratio, args.network, noise_type, args.recipe)
        if args.cleanlab_workflows:
            rows += workflow_rows(setting, label, noise_ratio, noise_type, args.seed)
        key = f"{label}, {noise_ratio:g} noise"
        curves[key] = trajectory_auroc(setting.run.scores, setting.flipped)
        epochs[key] = np.asarray(setting.run.trajectory_epochs)
        inverted = setting.run.inversion_epochs
        inversion[key] = float(inverted[inverted >= 0].mean()) if (inverted >= 0).any() else float("nan")
        print(markdown_table([row for row in rows if row["dataset"] == label and row["noise_ratio"] == noise_ratio]))

    suffix = (("" if args.network == DEFAULT_NETWORKS[args.recipe] else f"_{args.network}")
              + ("" if noise_type == "uniform" else f"_{noise_type}") + ("" if args.recipe == "paper" else f"_{args.recipe}"))
    stem = scores_path(args.results_dir, "benchmark", suffix=suffix)
    write_csv(rows, stem.with_suffix(".csv"))
    table = markdown_table(rows)
    write_atomically(stem.with_suffix(".md"), (f"`{settings['command']}`\n\n" + table).encode())
    figure = save_figure(plot_trajectory_auroc(curves, epochs, inversion),
                         scores_path(args.figures_dir, "benchmark_figure", suffix=suffix))
    for key, by_score in curves.items():
        best = {name: int(epochs[key][values.argmax()]) for name, values in by_score.items()}
        print(f"{key}: best epoch per score {best}, mean inversion epoch {inversion[key]:.0f}")
    print(f"saved {stem}.csv, {stem}.md and {figure[0]}")


if __name__ == "__main__":
    run_script(main, parse_args)
