"""Which hardness score finds mislabelled samples? A benchmark of every score on flipped labels.

For each dataset and noise ratio: flip int(noise_ratio * N) labels of the subset (seeded, as Sections 4-5
flip them), compute every score from `--runs` batched runs exactly as hardness_scores.py does (and save the
same .npz), and rank the scores by how well they separate flipped from clean labels: AUROC and average
precision of the score averaged over runs (and the mean and std of each run's), precision at k = the
number flipped, and the extra seconds the score costs over the plain training. Set-valued identifiers
(stragglers, cleanlab's flagged set, AUM's threshold verdict) report the precision, recall and F1 of their
set instead.

Writes <results_dir>/scores/benchmark.csv and benchmark.md (a markdown table), and draws
<figures_dir>/scores/benchmark_auroc_by_epoch (each name ends in _ResNet with --network ResNet): the AUROC of loss, confidence, EL2N and margin taken at each
trajectory epoch, against the epoch, with the mean inversion epoch dashed. With --sweep it trains nothing:
it merges the benchmark.csv of every cell of a sweep.py folder (e.g. the seeds of
configs/sweeps/mislabel_benchmark.yaml) into benchmark_sweep.csv and .md, averaged per setting and score.
"""
import argparse
import csv
import io
from pathlib import Path

import numpy as np

from utils import (UserInputError, add_scoring_arguments, benchmark_rows, canonical_dataset_name,
                   check_scoring_arguments, combine_rows, markdown_table, plot_trajectory_auroc, positive_int,
                   resolve_device, run_script, run_settings, save_figure, save_setting, score_setting,
                   scores_results_path, trajectory_auroc, unit_interval, write_atomically)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset_name", nargs="+", default=["MNIST", "FashionMNIST"],
                        help="torchvision datasets, any letter case (default MNIST FashionMNIST)")
    parser.add_argument("--subset_size", type=positive_int, default=20000,
                        help="samples kept from train+test after the seeded shuffle (default 20000)")
    parser.add_argument("--noise_ratio", type=unit_interval(False, False), nargs="+", default=[0.05, 0.1, 0.2],
                        help="shares of labels flipped, each in (0, 1), one setting each (default 0.05 0.1 0.2)")
    parser.add_argument("--sweep", type=Path, default=None,
                        help="merge the benchmark tables of every cell of this sweep.py folder (mean over the cells "
                             "of each setting and score) instead of running")
    add_scoring_arguments(parser, runs=3)
    args = parser.parse_args(argv)
    check_scoring_arguments(parser, args)
    args.dataset_name = [canonical_dataset_name(name) for name in args.dataset_name]
    return args


def csv_bytes(rows: list[dict]) -> bytes:
    """The rows as CSV, the union of their columns in first-seen order."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    text = io.StringIO()
    writer = csv.DictWriter(text, columns)
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue().encode()


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
    folder = args.results_dir / "scores"
    write_atomically(folder / "benchmark_sweep.csv", csv_bytes(combined))
    write_atomically(folder / "benchmark_sweep.md", (f"Mean over the cells of {args.sweep} ({len(tables)} tables)\n\n"
                                                     + markdown_table(combined)).encode())
    print(markdown_table(combined))
    print(f"merged {len(tables)} tables into {folder / 'benchmark_sweep.csv'} and .md")


def main(args: argparse.Namespace) -> None:
    if args.sweep is not None:
        merge_sweep(args)
        return
    device = resolve_device(args.device)
    settings = run_settings(args, device)
    rows, curves, epochs, inversion = [], {}, {}, {}
    for dataset_name in args.dataset_name:
        for noise_ratio in args.noise_ratio:
            setting = score_setting(dataset_name, args.subset_size, noise_ratio, args, device)
            save_setting(setting, scores_results_path(args.results_dir, dataset_name, args.subset_size, noise_ratio,
                                                      args.network),
                         {**settings, "dataset_name": dataset_name, "noise_ratio": noise_ratio})
            rows += benchmark_rows(setting, dataset_name, noise_ratio, args.network)
            key = f"{dataset_name}, {noise_ratio:g} noise"
            curves[key] = trajectory_auroc(setting.run.scores, setting.flipped)
            epochs[key] = np.asarray(setting.run.trajectory_epochs)
            inverted = setting.run.inversion_epochs
            inversion[key] = float(inverted[inverted >= 0].mean()) if (inverted >= 0).any() else float("nan")
            print(markdown_table([row for row in rows if row["dataset"] == dataset_name
                                  and row["noise_ratio"] == noise_ratio]))

    folder, suffix = args.results_dir / "scores", "" if args.network == "SimpleNN" else f"_{args.network}"
    write_atomically(folder / f"benchmark{suffix}.csv", csv_bytes(rows))
    table = markdown_table(rows)
    write_atomically(folder / f"benchmark{suffix}.md", (f"`{settings['command']}`\n\n" + table).encode())
    figure = save_figure(plot_trajectory_auroc(curves, epochs, inversion),
                         args.figures_dir / "scores" / f"benchmark_auroc_by_epoch{suffix}")
    for key, by_score in curves.items():
        best = {name: int(epochs[key][values.argmax()]) for name, values in by_score.items()}
        print(f"{key}: best epoch per score {best}, mean inversion epoch {inversion[key]:.0f}")
    print(f"saved {folder / f'benchmark{suffix}.csv'}, {folder / f'benchmark{suffix}.md'} and {figure[0]}")


if __name__ == "__main__":
    run_script(main, parse_args)
