"""Section 3: the inversion point of class-manifold radii, for every class of a multiclass dataset.

Trains `--number_of_runs` SimpleNNs from different random initialisations, all at once, with
full-batch gradient descent; records the radius of every class manifold after every epoch from
`--radii_from` on; finds each run's inversion epoch per class; saves everything to
Results/Radii_over_epoch/<dataset>_all_epoch_radii.pkl and draws Figures/radii_on_<dataset>.png/.pdf.
"""
import argparse
from pathlib import Path

import numpy as np
import torch

from neural_networks import BatchedSimpleNN
from utils import (UserInputError, add_common_arguments, add_dataset_arguments, class_grid, inversion_epochs, keep_freed_memory_in_heap,
                   load_dataset, mean_inversion_epochs, positive_float, positive_int, radii_results_path,
                   resolve_device, run_script, run_settings, save_figure, save_pickle, simple_nn_size,
                   train_full_batch)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_arguments(parser)
    parser.add_argument("--number_of_runs", type=positive_int, default=100,
                        help="networks trained from different initialisations, all at once (default 100)")
    parser.add_argument("--epochs", type=positive_int, default=500,
                        help="full-batch epochs; each is one gradient step on the whole subset (default 500)")
    parser.add_argument("--lr", type=positive_float, default=0.1, help="SGD learning rate (default 0.1)")
    parser.add_argument("--depth", type=positive_int, default=None,
                        help="hidden layers of SimpleNN (default 2; 8 for 3-channel images)")
    parser.add_argument("--width", type=positive_int, default=None,
                        help="units per hidden layer (default 20; 30 for 3-channel images)")
    parser.add_argument("--latent", type=positive_int, default=1,
                        help="hidden layer (1-based) whose tanh output is the latent representation (default 1)")
    parser.add_argument("--radii_from", type=int, default=20,
                        help="radii are recorded after this epoch and every later one; inversion checks start here (default 20)")
    parser.add_argument("--check_interval", type=positive_int, default=5,
                        help="epochs between the radius checks that look for the inversion point (default 5)")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    if not 0 <= args.radii_from < args.epochs:
        parser.error(f"--radii_from must be between 0 and --epochs - 1 ({args.epochs - 1}), got {args.radii_from}")
    return args


def plot_radii(radii: np.ndarray, epochs: np.ndarray, class_names: list[str], dataset_name: str) -> list[Path]:
    """One panel per class, one line per run."""
    fig, axes = class_grid(len(class_names), xlabel="epoch", ylabel="radius")
    for c, ax in enumerate(axes):
        ax.plot(epochs, radii[:, :, c].T, linewidth=0.6, alpha=max(0.15, 1 / np.sqrt(len(radii))))
        ax.set_title(f"class {class_names[c]}", fontsize=9)
    fig.suptitle(f"Class-manifold radii on {dataset_name}, {len(radii)} runs")
    fig.tight_layout()
    return save_figure(fig, Path("Figures") / f"radii_on_{dataset_name}")


def main(args: argparse.Namespace) -> None:
    keep_freed_memory_in_heap()
    device = resolve_device(args.device)
    dataset = load_dataset(args.dataset_name, args.data_root, args.subset_size, args.seed, device)
    default_depth, default_width = simple_nn_size(channels=dataset.data.shape[1])
    args.depth, args.width = args.depth or default_depth, args.width or default_width
    if args.latent > args.depth:
        raise UserInputError(f"--latent {args.latent} is past the last hidden layer (--depth {args.depth})")

    torch.manual_seed(args.seed)
    model = BatchedSimpleNN.initialise(
        args.number_of_runs, input_size=dataset.data[0].numel(), width=args.width, depth=args.depth,
        num_classes=dataset.num_classes, latent=args.latent).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
    history = train_full_batch(model, optimizer, dataset.data, dataset.labels, args.epochs, dataset.num_classes,
                               radii_from=args.radii_from, description=f"{args.number_of_runs} runs")
    inversions = inversion_epochs(history.radii, history.radius_epochs, args.radii_from, args.check_interval)

    save_pickle({"settings": run_settings(args, device), "class_names": dataset.class_names,
                 "epochs": history.radius_epochs, "radii": history.radii, "losses": history.losses,
                 "inversion_epochs": inversions, "subset_indices": dataset.indices.numpy()},
                radii_results_path(args.dataset_name))
    figures = plot_radii(history.radii, history.radius_epochs, dataset.class_names, args.dataset_name)

    print(f"final training loss {history.losses[:, -1].mean():.4f} +- {history.losses[:, -1].std():.4f}")
    for name, inverted, mean in zip(dataset.class_names, (inversions >= 0).sum(0), mean_inversion_epochs(inversions)):
        print(f"class {name}: inverted in {inverted}/{args.number_of_runs} runs, mean inversion epoch {mean:.1f}")
    print(f"saved {radii_results_path(args.dataset_name)}, {figures[0]} and {figures[1]}")


if __name__ == "__main__":
    run_script(main, parse_args)
