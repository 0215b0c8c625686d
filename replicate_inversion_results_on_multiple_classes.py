"""Section 3: the inversion point of class-manifold radii, for every class of a multiclass dataset.

Trains `--number_of_runs` SimpleNNs from different random initialisations, all at once, with full-batch
gradient descent (one step per epoch); records the radius of every class manifold after the step of every
epoch from `--radii_from` on (epochs numbered from 0, as the original); finds each run's inversion epoch per
class from the checks after epochs 20, 25, 30, ...; saves everything to
<results_dir>/Radii_over_epoch/<dataset>_all_epoch_radii.pkl and draws <figures_dir>/radii_on_<dataset>.png/.pdf
(<dataset>: torchvision's name, or your own data's label, see docs/your_data.md).
"""
import argparse
from pathlib import Path

import numpy as np
import torch

from neural_networks import BatchedSimpleNN
from utils import (INVERSION_START, RadiiRecorder, RunDescription, StragglerTracker, UserInputError,
                   add_common_arguments, add_dataset_arguments, class_grid, input_channels, keep_freed_memory_in_heap, load_dataset_from_args,
                   mean_inversion_epochs, positive_float, positive_int, inversion_path, resolve_device, run_script,
                   run_settings, save_figure, save_pickle, simple_nn_size, train_full_batch)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_arguments(parser)
    parser.add_argument("--number_of_runs", type=positive_int, default=100,
                        help="networks trained from different initialisations, all at once (default 100)")
    parser.add_argument("--epochs", type=positive_int, default=500,
                        help="full-batch epochs 0 .. epochs-1; each is one gradient step on the whole subset (default 500)")
    parser.add_argument("--lr", type=positive_float, default=0.1, help="SGD learning rate (default 0.1)")
    parser.add_argument("--depth", type=positive_int, default=None,
                        help="hidden layers of SimpleNN (default 2; 8 for 3-channel images)")
    parser.add_argument("--width", type=positive_int, default=None,
                        help="units per hidden layer (default 20; 30 for 3-channel images)")
    parser.add_argument("--latent", type=positive_int, default=1,
                        help="hidden layer (1-based) whose tanh output is the latent representation (default 1)")
    parser.add_argument("--radii_from", type=int, default=21,
                        help="radii are recorded after the step of this epoch (0-based) and of every later one; "
                             "the original records 21 .. 499 (default 21)")
    parser.add_argument("--check_interval", type=positive_int, default=5,
                        help=f"epochs between the radius checks that look for the inversion point, which start at "
                             f"epoch {INVERSION_START} (default 5, the original's)")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    if not 0 <= args.radii_from < args.epochs:
        parser.error(f"--radii_from must be between 0 and --epochs - 1 ({args.epochs - 1}), got {args.radii_from}")
    return args


def plot_radii(radii: np.ndarray, epochs: np.ndarray, class_names: list[str], dataset_name: str,
               figures_dir: Path) -> list[Path]:
    """One panel per class, one line per run."""
    fig, axes = class_grid(len(class_names), xlabel="epoch", ylabel="radius")
    for c, ax in enumerate(axes):
        ax.plot(epochs, radii[:, :, c].T, linewidth=0.6, alpha=max(0.15, 1 / np.sqrt(len(radii))))
        ax.set_title(f"class {class_names[c]}", fontsize=9)
    fig.suptitle(f"Class-manifold radii on {dataset_name}, {len(radii)} runs")
    fig.tight_layout()
    return save_figure(fig, inversion_path(figures_dir, "radii_figure", dataset_name))


def main(args: argparse.Namespace) -> None:
    keep_freed_memory_in_heap()
    device = resolve_device(args.device)
    dataset = load_dataset_from_args(args, device, run=RunDescription("SimpleNN", args.number_of_runs))
    default_depth, default_width = simple_nn_size(channels=input_channels(dataset.data))
    args.depth, args.width = args.depth or default_depth, args.width or default_width
    if args.latent > args.depth:
        raise UserInputError(f"--latent {args.latent} is past the last hidden layer (--depth {args.depth})")

    torch.manual_seed(args.seed)
    model = BatchedSimpleNN.initialise(
        args.number_of_runs, input_size=dataset.data[0].numel(), width=args.width, depth=args.depth,
        num_classes=dataset.num_classes, latent=args.latent).to(device)
    recorder = RadiiRecorder(args.number_of_runs, dataset.num_classes, args.radii_from, args.epochs - 1, device)
    inversions = StragglerTracker(args.number_of_runs, dataset.labels, dataset.num_classes,
                                  interval=args.check_interval)
    losses = train_full_batch(model, torch.optim.SGD(model.parameters(), lr=args.lr), dataset.data, dataset.labels,
                              args.epochs, dataset.num_classes, observers=[recorder, inversions],
                              description=f"{args.number_of_runs} runs")
    inversion_epochs = inversions.inverted_at.cpu().numpy()

    path = inversion_path(args.results_dir, "radii", dataset.name)
    save_pickle({"settings": run_settings(args, device), "class_names": dataset.class_names,
                 "epochs": recorder.epochs, "radii": recorder.radii, "losses": losses,
                 "inversion_epochs": inversion_epochs, "subset_indices": dataset.indices.numpy(),
                 "sample_ids": dataset.sample_ids}, path)
    figures = plot_radii(recorder.radii, recorder.epochs, dataset.class_names, dataset.name, args.figures_dir)

    print(f"final training loss {losses[:, -1].mean():.4f} +- {losses[:, -1].std():.4f}")
    means = mean_inversion_epochs(inversion_epochs)
    for c, name in enumerate(dataset.class_names):
        inverted = inversion_epochs[:, c][inversion_epochs[:, c] >= 0]
        spread = f"{inverted.std():.1f}" if len(inverted) else "nan"
        print(f"class {name}: inverted in {len(inverted)}/{args.number_of_runs} runs, "
              f"mean inversion epoch {means[c]:.1f} +- {spread}")
    print(f"saved {path}, {figures[0]} and {figures[1]}")


if __name__ == "__main__":
    run_script(main, parse_args)
