"""GASTeN over seeds: the study's table and figure from the run folders of one config, one per GAN seed.

    python gasten_summarize_seeds.py --summarize_seeds Results/gasten/mnist_7v1_seeds Results/gasten/mnist_7v1_seeds_seed1 ...

Per classifier and weight, each seed and the mean and std over the seeds of the ACD after every step-2 epoch,
the last epoch's FID (own features) and discriminator loss (from the cells' metrics.csv), the ambiguous count
of --ambiguous_samples samples (C in [0.4, 0.6], counted from the cell's last checkpoint and kept in the cell's
ambiguity.json) and the classifier's real test images in that band, and the collapse verdict
(hardness.gasten_seeds.collapsed); to <results_dir>/gasten/<name>_over_seeds/over_seeds.{csv,md} and the figure
<figures_dir>/gasten/<name>_over_seeds/over_seeds.{png,pdf}. `gasten_train.py --summarize_seeds RUN_DIR ...`
runs the same.
"""
import argparse
import json
import math
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch

from hardness.gasten import (PairData, classifier_path, epoch_folders, load_classifier, load_gan, load_pair,
                             make_gan, read_metrics_csv, step2_metrics)
from hardness.gasten_names import run_seed
from hardness.gasten_seeds import (AMBIGUOUS_HALF_WIDTH, AMBIGUOUS_NOISE_SEED, AMBIGUOUS_SAMPLES,
                                   COLLAPSE_DISCRIMINATOR_LOSS, COLLAPSE_FID, ambiguous_count, in_ambiguous_band,
                                   over_seeds, shared_config_name)
from hardness.prediction import predict
from hardness.results import write_csv
from utils import (TORCHVISION_ROOT, UserInputError, add_device_argument, add_output_arguments, add_shared_arguments,
                   gasten_path, positive_int, resolve_device, run_script, save_figure, write_atomically)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_seed_arguments(parser, required=True)
    add_shared_arguments(parser, "data_root", data_root=TORCHVISION_ROOT)
    add_device_argument(parser)
    add_output_arguments(parser)
    return parser.parse_args(argv)


def add_seed_arguments(parser: argparse.ArgumentParser, required: bool) -> None:
    """--summarize_seeds and --ambiguous_samples, here and in gasten_train.py."""
    parser.add_argument("--summarize_seeds", type=Path, nargs="+", required=required, default=None, metavar="RUN_DIR",
                        help="the run folders of one config, one per GAN seed (<name>, <name>_seed<s>): the study's "
                             "table (CSV and markdown) and its figure")
    parser.add_argument("--ambiguous_samples", type=positive_int, default=AMBIGUOUS_SAMPLES,
                        help=f"--summarize_seeds: samples of each cell's last generator whose C in [0.4, 0.6] are "
                             f"counted (default {AMBIGUOUS_SAMPLES})")


def cell_ambiguity(cell: Path, epoch: int, n_samples: int, data_root: Path, device: torch.device,
                   pairs: dict[tuple, PairData]) -> dict[str, Any]:
    """A step-2 cell's ambiguous count of `n_samples` samples of its generator at `epoch` and its classifier's
    real test images in the same band: read from cell/ambiguity.json when it holds that epoch and sample
    count, else counted from the checkpoint and written there. `pairs` keeps the loaded test images."""
    path = cell / "ambiguity.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        if (saved["epoch"], saved["samples"], saved["noise_seed"]) == (epoch, n_samples, AMBIGUOUS_NOISE_SEED):
            return saved
    checkpoint = epoch_folders(cell).get(epoch)
    if checkpoint is None:
        raise UserInputError(f"{cell} has no checkpoint of its last epoch {epoch} (epoch_<e>/generator.pt) to count "
                             f"its ambiguous samples from")
    settings = json.loads((checkpoint / "config.json").read_text())
    config = settings["config"]
    classifier = load_classifier(classifier_path(config, cell.parents[3], settings["classifier"]), device)
    gan = load_gan(make_gan(config["model"]["loss"], device, 0), checkpoint, optimizers=False)
    dataset = config["dataset"]
    key = (dataset["name"], dataset["pos"], dataset["neg"])
    if key not in pairs:
        pairs[key] = load_pair(*key, data_root, device)
    real = predict(classifier, pairs[key].test_x)                                                  # [test]
    counted = {"epoch": epoch, "samples": n_samples, "noise_seed": AMBIGUOUS_NOISE_SEED,
               "band": [0.5 - AMBIGUOUS_HALF_WIDTH, 0.5 + AMBIGUOUS_HALF_WIDTH],
               "ambiguous": ambiguous_count(gan.generator, classifier, n_samples),
               "real_in_band": int(in_ambiguous_band(real).sum()), "real_test_images": len(real)}
    write_atomically(path, (json.dumps(counted, indent=2) + "\n").encode())
    return counted


def seed_cells(run_folders: list[Path], n_samples: int, data_root: Path, device: torch.device) -> tuple[str, list[dict]]:
    """The config name shared by the run folders, and one dict per run and step-2 cell for over_seeds."""
    name = shared_config_name(run_folders)
    cells, pairs = [], {}
    for folder in run_folders:
        for cell, path in step2_metrics(folder):
            rows = sorted(read_metrics_csv(path), key=lambda row: row["epoch"])
            if [int(row["epoch"]) for row in rows] != list(range(1, len(rows) + 1)):
                raise UserInputError(f"{path} does not hold step-2 epochs 1 to {len(rows)}")
            ambiguity = cell_ambiguity(path.parent, len(rows), n_samples, data_root, device, pairs)
            cells.append({"classifier": cell.classifier, "weight": cell.weight, "step1_epoch": cell.step1_epoch,
                          "seed": run_seed(folder)[1], "acd": [row["acd"] for row in rows],
                          "fid_own_features": rows[-1]["fid_own_features"],
                          "discriminator_loss": rows[-1]["discriminator_loss"], "ambiguous": ambiguity["ambiguous"],
                          "real_in_band": ambiguity["real_in_band"]})
    return name, cells


def _number(value: float, digits: int) -> str:
    return f"{value:,.{digits}f}"


def seeds_markdown(table: list[dict[str, Any]], n_samples: int) -> str:
    """Three markdown tables: mean ± std over seeds per classifier and weight, each seed, collapses per nf."""
    epochs = [column for column in table[0] if column.startswith("acd_epoch_")]
    digits = {**{column: 3 for column in epochs}, "fid_own_features": 1, "ambiguous": 1, "real_in_band": 1,
              "discriminator_loss": 4}
    heads = [f"ACD after epoch {column.removeprefix('acd_epoch_')}" for column in epochs] + [
        "FID (own features)", f"ambiguous of {n_samples:,}", "real test images in [0.4, 0.6]",
        "discriminator loss"]
    key = ("nf", "weight", "step-1 epoch")
    means = [row for row in table if row["statistic"] == "mean"]
    stds = [row for row in table if row["statistic"] == "std"]
    lines = ["| " + " | ".join([*key, "seeds", *heads, "collapsed"]) + " |", "|" + " --- |" * (len(key) + len(heads) + 2)]
    for mean, std in zip(means, stds):
        seeds = sum(1 for row in table if row["statistic"] == "seed" and row["classifier"] == mean["classifier"]
                    and row["weight"] == mean["weight"] and row["step1_epoch"] == mean["step1_epoch"])
        cells = [_number(mean[c], digits[c]) + ("" if math.isnan(std[c]) else f" ± {_number(std[c], digits[c])}")
                 for c in digits]
        lines.append(f"| {mean['nf']} | {mean['weight']} | {mean['step1_epoch']} | {seeds} | " + " | ".join(cells) +
                     f" | {mean['collapsed']} of {seeds} |")
    lines += ["", "| " + " | ".join([*key, "seed", *heads, "collapsed"]) + " |",
              "|" + " --- |" * (len(key) + len(heads) + 2)]
    for row in (row for row in table if row["statistic"] == "seed"):
        cells = [_number(row[c], 0 if c in ("ambiguous", "real_in_band") else digits[c]) for c in digits]
        lines.append(f"| {row['nf']} | {row['weight']} | {row['step1_epoch']} | {row['seed']} | " + " | ".join(cells) +
                     f" | {'yes' if row['collapsed'] else 'no'} |")
    lines += ["", f"Collapsed: discriminator loss in the last epoch below {COLLAPSE_DISCRIMINATOR_LOSS:g} and FID (own "
                  f"features) above {COLLAPSE_FID:g}.", "", "| nf | runs | collapsed |", "| --- | ---: | ---: |"]
    for nf in sorted({row["nf"] for row in means}):
        runs = [row for row in table if row["statistic"] == "seed" and row["nf"] == nf]
        lines.append(f"| {nf} | {len(runs)} | {sum(row['collapsed'] for row in runs)} |")
    return "\n".join(lines) + "\n"


def plot_over_seeds(table: list[dict[str, Any]], title: str) -> plt.Figure:
    """A panel per nf: ACD after every step-2 epoch per weight, the mean over seeds with a band of ± one std and
    each seed thin; and FID (own features) against the last ACD of every seed's cell, collapsed ones crossed."""
    seeds = [row for row in table if row["statistic"] == "seed"]
    nfs = sorted({row["nf"] for row in seeds})
    weights = list(dict.fromkeys(row["weight"] for row in seeds))
    epochs = [column for column in table[0] if column.startswith("acd_epoch_")]
    x = np.arange(1, len(epochs) + 1)
    fig, axes = plt.subplots(1, len(nfs) + 1, figsize=(3.6 * (len(nfs) + 1), 3.4), squeeze=False)
    colours = {weight: f"C{i}" for i, weight in enumerate(weights)}
    for ax, nf in zip(axes[0], nfs):
        for row in (r for r in table if r["nf"] == nf and r["statistic"] == "mean"):
            std = next(r for r in table if r["statistic"] == "std" and r["classifier"] == row["classifier"]
                       and r["weight"] == row["weight"] and r["step1_epoch"] == row["step1_epoch"])
            mean, spread = np.array([row[c] for c in epochs]), np.nan_to_num([std[c] for c in epochs])
            colour = colours[row["weight"]]
            ax.plot(x, mean, color=colour, marker="o", ms=3, label=f"weight {row['weight']}")
            ax.fill_between(x, mean - spread, mean + spread, color=colour, alpha=0.2)
            for seed in (r for r in seeds if r["classifier"] == row["classifier"] and r["weight"] == row["weight"]
                         and r["step1_epoch"] == row["step1_epoch"]):
                ax.plot(x, [seed[c] for c in epochs], color=colour, lw=0.6, alpha=0.6)
        ax.set_title(f"nf {nf}", fontsize=9)
        ax.set_xlabel("step-2 epoch")
        ax.set_xticks(x)
        ax.set_ylim(0, 0.5)
    axes[0, 0].set_ylabel("ACD (band: ± one std over seeds)")
    axes[0, 0].legend(fontsize=7)
    ax, markers = axes[0, -1], "os^Dv<>"
    nf_colours = {nf: f"C{len(weights) + i}" for i, nf in enumerate(nfs)}      # not the weights' colours
    for row in seeds:
        ax.scatter(row["fid_own_features"], row[epochs[-1]], color=nf_colours[row["nf"]],
                   marker=markers[weights.index(row["weight"]) % len(markers)], s=22)
        if row["collapsed"]:
            ax.scatter(row["fid_own_features"], row[epochs[-1]], color="black", marker="x", s=50)
    handles = [plt.Line2D([], [], color=nf_colours[nf], marker="o", ls="", label=f"nf {nf}") for nf in nfs] + \
              [plt.Line2D([], [], color="grey", marker=markers[i % len(markers)], ls="", label=f"weight {weight}")
               for i, weight in enumerate(weights)] + \
              [plt.Line2D([], [], color="black", marker="x", ls="", label="collapsed")]
    ax.legend(handles=handles, fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("FID (own features)")
    ax.set_ylabel(f"ACD after epoch {len(epochs)}")
    ax.set_title("every seed's cells", fontsize=9)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def summarize_seeds(run_folders: list[Path], results_dir: Path, figures_dir: Path, n_samples: int, data_root: Path,
                    device: torch.device) -> Path:
    """The study over seeds from the run folders: its table to CSV and markdown, and its figure; returns the
    markdown's path."""
    name, cells = seed_cells(run_folders, n_samples, data_root, device)
    table = over_seeds(cells)
    output = gasten_path(results_dir, "over_seeds", name)
    write_csv(table, output / "over_seeds.csv", missing=float("nan"))
    write_atomically(output / "over_seeds.md", seeds_markdown(table, n_samples).encode())
    save_figure(plot_over_seeds(table, f"{name}: {len(run_folders)} seeds"),
                gasten_path(figures_dir, "over_seeds_figure", name))
    return output / "over_seeds.md"



def main(args: argparse.Namespace) -> None:
    markdown = summarize_seeds(args.summarize_seeds, args.results_dir, args.figures_dir, args.ambiguous_samples,
                               args.data_root, resolve_device(args.device))
    print(markdown.read_text() + f"written to {markdown} and {markdown.with_suffix('.csv')}")


if __name__ == "__main__":
    run_script(main, parse_args)
