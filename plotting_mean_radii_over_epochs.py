"""Figure 2: mean and standard deviation over runs of every class's manifold radius, per epoch.

Reads the pickle written by replicate_inversion_results_on_multiple_classes.py and draws
Figures/Figure2/mean_std_radii_on_<dataset>.png/.pdf, marking each class's mean inversion epoch.
"""
import argparse
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from utils import load_pickle, mean_inversion_epochs, radii_results_path, run_script, save_figure


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset_name", default="MNIST",
                        help="dataset whose results to plot; names the default results file (default MNIST)")
    parser.add_argument("--results_path", type=Path, default=None,
                        help="results pickle to read (default Results/Radii_over_epoch/<dataset>_all_epoch_radii.pkl)")
    return parser.parse_args(argv)


def plot_mean_radii(results: dict, dataset_name: str) -> list[Path]:
    """One line per class (mean over runs) with a +-1 std band and a dot at the mean inversion epoch."""
    epochs, radii = results["epochs"], results["radii"]
    mean, std = radii.mean(0), radii.std(0)
    inversion = mean_inversion_epochs(results["inversion_epochs"])
    fig, ax = plt.subplots(figsize=(8, 5))
    colours = plt.colormaps["tab10"](np.linspace(0, 1, 10))
    for c, name in enumerate(results["class_names"]):
        colour = colours[c % 10]
        ax.plot(epochs, mean[:, c], color=colour, linewidth=1.2, label=name)
        ax.fill_between(epochs, mean[:, c] - std[:, c], mean[:, c] + std[:, c], color=colour, alpha=0.2)
        if np.isfinite(inversion[c]):
            ax.plot(inversion[c], np.interp(inversion[c], epochs, mean[:, c]), "o", color=colour,
                    markeredgecolor="black", markersize=6)
    ax.set_xlabel("epoch")
    ax.set_ylabel("class-manifold radius")
    ax.set_title(f"{dataset_name}: mean ± std over {len(radii)} runs (dots: mean inversion epoch)")
    ax.legend(fontsize=7, ncol=2, title="class")
    fig.tight_layout()
    return save_figure(fig, Path("Figures/Figure2") / f"mean_std_radii_on_{dataset_name}")


def main(args: argparse.Namespace) -> None:
    path = args.results_path or radii_results_path(args.dataset_name)
    results = load_pickle(path, f"python replicate_inversion_results_on_multiple_classes.py --dataset_name {args.dataset_name}")
    figures = plot_mean_radii(results, args.dataset_name)
    for name, epoch in zip(results["class_names"], mean_inversion_epochs(results["inversion_epochs"])):
        print(f"class {name}: mean inversion epoch {epoch:.1f}")
    print(f"saved {figures[0]} and {figures[1]}")


if __name__ == "__main__":
    run_script(main, parse_args)
