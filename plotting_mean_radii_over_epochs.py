"""Figure 2: mean and standard deviation over runs of every class's manifold radius, per epoch.

Reads the pickle written by replicate_inversion_results_on_multiple_classes.py and draws, as the paper,
one panel per class (its own y-axis, mean +- 1 std band, the class's mean inversion epoch marked) to
<figures_dir>/Figure2/mean_std_radii_on_<dataset>.png/.pdf, and all classes overlaid in one panel to
<figures_dir>/Figure2/mean_std_radii_overlay_on_<dataset>.png/.pdf.
"""
import argparse
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from utils import (add_output_arguments, add_shared_arguments, class_grid, dataset_label, load_pickle, mean_inversion_epochs,
                   inversion_path, run_script, save_figure)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shared_arguments(parser, "dataset_name", dataset_name={
        "help": "dataset whose results to plot, any letter case, or your own data's label (or its folder:/npz:/csv: "
                "source); names the default results file (default MNIST)"})
    parser.add_argument("--results_path", type=Path, default=None,
                        help="results pickle to read (default <results_dir>/Radii_over_epoch/<dataset>_all_epoch_radii.pkl)")
    add_output_arguments(parser)
    return parser.parse_args(argv)


def radius_statistics(results: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and std over runs of the radii, [epochs, classes] each, and the mean inversion epochs [classes]."""
    return results["radii"].mean(0), results["radii"].std(0), mean_inversion_epochs(results["inversion_epochs"])


def plot_per_class(results: dict, dataset_name: str, figures_dir: Path) -> list[Path]:
    """The paper's layout: one panel per class, mean radius over runs with a +-1 std band, and a dashed
    line at the class's mean inversion epoch."""
    epochs, (mean, std, inversion) = results["epochs"], radius_statistics(results)
    fig, axes = class_grid(len(results["class_names"]), xlabel="epoch", ylabel="radius")
    for c, (ax, name) in enumerate(zip(axes, results["class_names"])):
        ax.plot(epochs, mean[:, c], color="tab:blue", linewidth=1.2)
        ax.fill_between(epochs, mean[:, c] - std[:, c], mean[:, c] + std[:, c], color="tab:blue", alpha=0.3)
        title = f"class {name}"
        if np.isfinite(inversion[c]):
            ax.axvline(inversion[c], color="tab:red", linestyle="--", linewidth=1)
            title += f" (inversion {inversion[c]:.0f})"
        ax.set_title(title, fontsize=9)
    fig.suptitle(f"{dataset_name}: class-manifold radii, mean ± std over {len(results['radii'])} runs "
                 "(dashed: mean inversion epoch)")
    fig.tight_layout()
    return save_figure(fig, inversion_path(figures_dir, "mean_std_figure", dataset_name))


def plot_overlay(results: dict, dataset_name: str, figures_dir: Path) -> list[Path]:
    """All classes in one panel, each with its band and a dot at its mean inversion epoch."""
    epochs, (mean, std, inversion) = results["epochs"], radius_statistics(results)
    fig, ax = plt.subplots(figsize=(8, 5))
    colours = plt.colormaps["tab10"].colors
    for c, name in enumerate(results["class_names"]):
        colour = colours[c % len(colours)]
        ax.plot(epochs, mean[:, c], color=colour, linewidth=1.2, label=name)
        ax.fill_between(epochs, mean[:, c] - std[:, c], mean[:, c] + std[:, c], color=colour, alpha=0.2)
        if np.isfinite(inversion[c]):
            ax.plot(inversion[c], np.interp(inversion[c], epochs, mean[:, c]), "o", color=colour,
                    markeredgecolor="black", markersize=6)
    ax.set_xlabel("epoch")
    ax.set_ylabel("class-manifold radius")
    ax.set_title(f"{dataset_name}: mean ± std over {len(results['radii'])} runs (dots: mean inversion epoch)")
    ax.legend(fontsize=7, ncol=2, title="class")
    fig.tight_layout()
    return save_figure(fig, inversion_path(figures_dir, "overlay_figure", dataset_name))


def main(args: argparse.Namespace) -> None:
    dataset_name = dataset_label(args.dataset_name)
    path = args.results_path or inversion_path(args.results_dir, "radii", dataset_name)
    results = load_pickle(path, f"python replicate_inversion_results_on_multiple_classes.py --dataset_name {dataset_name}")
    figures = plot_per_class(results, dataset_name, args.figures_dir) + plot_overlay(results, dataset_name,
                                                                                      args.figures_dir)
    for name, epoch in zip(results["class_names"], mean_inversion_epochs(results["inversion_epochs"])):
        print(f"class {name}: mean inversion epoch {epoch:.1f}")
    print("saved " + ", ".join(str(figure) for figure in figures))


if __name__ == "__main__":
    run_script(main, parse_args)
