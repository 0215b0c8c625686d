"""Variance of Gradients (VoG) from checkpoints on any dataset: is high VoG where the network errs?

The subset (--subset_size samples, as Sections 3-5) is split, seeded, into a training part (--train_ratio)
and a held-out part. A network is trained on the training part (SimpleNN: full-batch SGD lr 0.1; ResNet:
the evaluation ResNet-18 of Sections 4-5) for --epochs, keeping --checkpoints checkpoints evenly over
training (after round(k * epochs / K) steps); or the checkpoints are read from --checkpoint_dir. Every
sample gets the VoG of every stage (early, middle, late, complete) and calibration: the training samples
with the label trained on (flipped for --noise_ratio of them), the held-out ones with their true label.

Saves <results_dir>/VoG/<dataset>_<subset_size>_vog.npz with its settings in a .json beside it (the
README documents the arrays). --mode and --vog_cal choose what the figures draw, under <figures_dir>/VoG/
as <dataset>_<subset_size>_<mode>_<vog_cal>_<figure> (PNG and PDF): error_by_vog (held-out error per VoG
decile, and the original's two bins below and above the median), accuracy_kept (held-out accuracy when
only the lowest-VoG x% are kept), both with the predictions of the stage's last checkpoint (as the
original; the final one for late and complete), extremes (the 10 lowest- and 10 highest-VoG training
images of every class, each with its mean input-gradient map over the stage's checkpoints) and histograms
(every stage); for a table (csv:, or an npz of [N, D] features) extremes shows the rows themselves, their
standardised values and mean input gradients as heat maps labelled by sample id, instead of images.
Any --dataset_name of docs/your_data.md: the saved arrays also carry the class names and the sample ids of
both parts; result and figure names carry the dataset's label.
Prints whether the paper's claims hold: top-decile error above bottom-decile error, and with --noise_ratio
the AUROC with which late-stage VoG separates the flipped training labels from the clean ones.
"""
import argparse
import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import Tensor, nn

from neural_networks import BatchedSimpleNN, ResNet18, SimpleNN
from utils import (CALIBRATIONS, STAGES, CheckpointRecorder, UserInputError, VogStage, add_common_arguments,
                   add_dataset_arguments, calibrate, checkpoint_epochs, checkpoint_predictions,
                   flip_labels, input_channels, input_gradients, keep_freed_memory_in_heap, load_dataset_from_args,
                   positive_int, resolve_device, run_script, run_settings, save_figure, save_npz_with_settings,
                   simple_nn_size, stage_generator, stage_seed, stage_windows, train_networks, unit_interval,
                   vog_path, vog_scores, write_atomically)

EXTREMES = 10                      # lowest- and highest-VoG images shown per class
KEPT_SHARES = np.arange(10, 101, 10)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_arguments(parser)
    parser.add_argument("--evaluation_network", choices=["SimpleNN", "ResNet"], default="SimpleNN",
                        help="network trained on the training part: SimpleNN (full-batch SGD, lr 0.1) or ResNet "
                             "(ResNet-18, Adam lr 1e-3, wd 1e-2, full batch unless --batch_size) (default SimpleNN)")
    parser.add_argument("--train_ratio", type=unit_interval(False, False), default=0.8,
                        help="share of the subset trained on, in (0, 1); the rest is held out (default 0.8)")
    parser.add_argument("--epochs", type=positive_int, default=500, help="training epochs (default 500)")
    parser.add_argument("--checkpoints", type=positive_int, default=15,
                        help="checkpoints kept evenly over training, at least 3 (default 15)")
    parser.add_argument("--checkpoint_dir", type=Path, default=None,
                        help="read the checkpoints (state dicts of --evaluation_network, *.pt, in training order "
                             "by file name) from this folder instead of training (default: train)")
    parser.add_argument("--save_checkpoints", action="store_true",
                        help="also write the checkpoints to <results_dir>/VoG/checkpoints/<dataset>_<subset_size>/, "
                             "readable with --checkpoint_dir (default: kept in memory only)")
    parser.add_argument("--mode", choices=STAGES, default="late",
                        help="stage the figures draw: the first, second or last third of the checkpoints, or all "
                             "(default late); every stage is saved")
    parser.add_argument("--vog_cal", choices=CALIBRATIONS, default="normalize",
                        help="calibration the figures draw: raw VoG, standardised within each class (normalize) "
                             "or its absolute value (abs_normalize) (default normalize); all are saved")
    parser.add_argument("--target", choices=["logit", "probability"], default="logit",
                        help="output differentiated: the pre-softmax logit or the softmax probability of the "
                             "sample's class (default logit)")
    parser.add_argument("--predicted_class", action="store_true",
                        help="differentiate the output of the class each checkpoint predicts instead of the label")
    parser.add_argument("--noise_ratio", type=unit_interval(True, False), default=0.0,
                        help="share of the training part, int(ratio * n), whose label is flipped to another class "
                             "before training, in [0, 1) (default 0.0)")
    parser.add_argument("--batch_size", type=positive_int, default=None,
                        help="--evaluation_network ResNet only: shuffled minibatches of this size instead of full "
                             "batch (default: full batch)")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    if args.checkpoint_dir is None and not 3 <= args.checkpoints <= args.epochs:
        parser.error(f"--checkpoints must be between 3 (one per stage) and --epochs {args.epochs}, got {args.checkpoints}")
    if args.batch_size is not None and args.evaluation_network != "ResNet":
        parser.error("--batch_size applies to --evaluation_network ResNet only; SimpleNNs train full batch")
    return args


# ----------------------------------------------------------------------------- checkpoints

def network_for(args: argparse.Namespace, data: Tensor, num_classes: int) -> nn.Module:
    """An untrained --evaluation_network for `data` ([N, C, H, W] images, or [N, D] features for a SimpleNN): the
    skeleton the checkpoints are loaded into."""
    if args.evaluation_network == "ResNet":
        return ResNet18(data.shape[1], num_classes).to(data.device)
    depth, width = simple_nn_size(input_channels(data))
    return SimpleNN(data[0].numel(), width, depth, num_classes).to(data.device)


def trained_checkpoints(args: argparse.Namespace, data: Tensor, labels: Tensor,
                        num_classes: int) -> tuple[list[dict[str, Tensor]], list[int]]:
    """Train the network on (data, labels), keeping --checkpoints state dicts evenly over --epochs, and
    the epochs they were kept after."""
    recorder = CheckpointRecorder(checkpoint_epochs(args.epochs, args.checkpoints))
    train_networks(args.evaluation_network, [stage_seed(args.seed, VogStage.TRAIN)], data, labels, num_classes, args.epochs,
                   batch_size=args.batch_size, observers=[recorder], description="training")
    states = recorder.checkpoints
    if args.evaluation_network == "SimpleNN":  # the engine's batched model of one run, as a SimpleNN
        states = [BatchedSimpleNN.run_state_dict(state, 0) for state in states]
    return states, recorder.epochs


def natural_key(path: Path) -> list:
    """Sort key that puts checkpoint_2 before checkpoint_10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def checkpoint_paths(folder: Path) -> list[Path]:
    """The *.pt files in `folder`, in file-name order; a user error unless there are at least 3."""
    if not folder.is_dir():
        raise UserInputError(f"--checkpoint_dir {folder} {'is not a folder' if folder.exists() else 'does not exist'}")
    paths = sorted(folder.glob("*.pt"), key=natural_key)
    if len(paths) < 3:
        raise UserInputError(f"--checkpoint_dir {folder} holds {len(paths)} *.pt checkpoint(s); VoG's stages need "
                             "at least 3")
    return paths


def load_checkpoints(paths: list[Path], skeleton: nn.Module, device: torch.device) -> list[dict[str, Tensor]]:
    """The state dicts at `paths`, in order, checked against the network they are for."""
    states = []
    for path in paths:
        state = torch.load(path, map_location=device, weights_only=True)
        try:
            skeleton.load_state_dict(state)
        except (RuntimeError, TypeError) as error:
            raise UserInputError(f"{path} is not a state dict of this --evaluation_network: "
                                 f"{str(error).splitlines()[0]}") from error
        states.append(state)
    return states


def save_checkpoints(states: list[dict[str, Tensor]], epochs: list[int], folder: Path) -> None:
    digits = len(str(len(states)))
    for k, (state, epoch) in enumerate(zip(states, epochs), start=1):
        write_atomically(folder / f"checkpoint_{k:0{digits}d}_epoch_{epoch}.pt",
                         lambda temporary, state=state: torch.save(state, temporary))


# ----------------------------------------------------------------------------- VoG of every part

def all_vog(model: nn.Module, checkpoints: list[dict[str, Tensor]], data: Tensor, labels: Tensor,
            args: argparse.Namespace) -> np.ndarray:
    """[stages, calibrations, n] VoG of the samples `data` with classes `labels` (calibrated within the part)."""
    raw = vog_scores(model, checkpoints, data, labels, STAGES, args.target, args.predicted_class)
    return np.stack([np.stack([calibrate(raw[stage], labels, cal).cpu().numpy() for cal in CALIBRATIONS])
                     for stage in STAGES])


def equal_groups(values: np.ndarray, groups: int) -> list[np.ndarray]:
    """The positions of `values`, ascending, cut into `groups` groups of (almost) equal size."""
    return np.array_split(np.argsort(values, kind="stable"), groups)


# ----------------------------------------------------------------------------- figures

def plot_error_by_vog(vog: np.ndarray, wrong: np.ndarray, title: str) -> plt.Figure:
    """Held-out error per VoG decile, and below/above the median (strictly, as the original plotted; the
    original also left out the lowest- and the highest-VoG sample, kept here)."""
    fig, (deciles, halves) = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [3, 1]})
    errors = [100 * wrong[group].mean() for group in equal_groups(vog, 10)]
    deciles.bar(np.arange(1, 11), errors, color="tab:blue")
    deciles.set_xticks(np.arange(1, 11))
    deciles.set_xlabel("VoG decile (1 = lowest)")
    deciles.set_ylabel("held-out error (%)")
    median = np.median(vog)
    halves.bar(["below median", "above median"],
               [100 * wrong[vog < median].mean(), 100 * wrong[vog > median].mean()], color=["tab:green", "tab:red"])
    halves.set_ylabel("held-out error (%)")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_accuracy_kept(accuracies: np.ndarray, title: str) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(5, 3.8))
    ax.plot(KEPT_SHARES, 100 * accuracies, marker="o")
    ax.set_xlabel("held-out samples kept, lowest VoG first (%)")
    ax.set_ylabel("accuracy on the kept samples (%)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_extremes(images: Tensor, maps: Tensor, shown: Tensor, grid: tuple[int, int], class_names: list[str],
                  title: str) -> plt.Figure:
    """images [C * 2 * EXTREMES, ...] (per class the lowest VoG, then the highest), their gradient maps
    [C * 2 * EXTREMES, H, W], and which places hold a sample (`shown`); grid = (C, 2 * EXTREMES)."""
    classes, places = grid
    fig, axes = plt.subplots(classes, 2 * places, figsize=(0.5 * 2 * places, 0.55 * classes + 0.6), squeeze=False)
    for i in np.flatnonzero(shown.numpy()):
        c, j = divmod(int(i), places)
        image = images[i]
        image = image[0] if image.shape[0] == 1 else ((image - image.min()) / (image.max() - image.min() + 1e-12)
                                                      ).permute(1, 2, 0)
        axes[c, 2 * j].imshow(image, cmap="gray")
        limit = float(maps[i].abs().max()) or 1.0
        axes[c, 2 * j + 1].imshow(maps[i], cmap="RdBu_r", vmin=-limit, vmax=limit)
    for c in range(classes):
        axes[c, 0].set_ylabel(class_names[c], rotation=0, ha="right", va="center", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[:, places]:                  # the first column of the highest-VoG half
        ax.spines["left"].set(color="tab:red", linewidth=2)
    fig.suptitle(f"{title}\nleft half: {EXTREMES} lowest VoG, right half (red edge): {EXTREMES} highest "
                 "(each image, then its mean input gradient)", fontsize=9)
    fig.subplots_adjust(wspace=0.05, hspace=0.05)
    return fig


def plot_extreme_rows(rows: Tensor, maps: Tensor, shown: Tensor, grid: tuple[int, int], class_names: list[str],
                      sample_ids: list[str], title: str) -> plt.Figure:
    """A table's extremes: rows [C * 2 * EXTREMES, D] (per class the lowest VoG, then the highest) with their
    gradient maps [C * 2 * EXTREMES, D] and sample ids; `shown` marks the places that hold a sample;
    grid = (C, 2 * EXTREMES). Per class four heat maps, one line per sample labelled by its id: the lowest-VoG
    rows' standardised values and their mean input gradients (each line scaled to its own largest gradient),
    then the same for the highest-VoG rows."""
    classes, places = grid
    half = places // 2
    values = torch.where(shown[:, None], rows, torch.nan).view(classes, places, -1).numpy()      # [C, 20, D]
    gradients = maps / maps.abs().amax(1, keepdim=True).clamp_min(1e-12)
    gradients = torch.where(shown[:, None], gradients, torch.nan).view(classes, places, -1).numpy()
    limit = float(rows[shown].abs().max()) if shown.any() else 1.0
    ticks = range(rows.shape[1]) if rows.shape[1] <= 20 else []         # feature numbers, where they fit
    fig, axes = plt.subplots(classes, 4, figsize=(11, classes * (0.16 * half + 0.7)), squeeze=False)
    ids = np.array(sample_ids, dtype=object).reshape(classes, places)
    for c in range(classes):
        for side, part in enumerate((slice(0, half), slice(half, places))):
            for kind, (matrix, scale) in enumerate(((values, limit), (gradients, 1.0))):
                ax = axes[c, 2 * side + kind]
                ax.imshow(matrix[c, part], cmap="RdBu_r", vmin=-scale, vmax=scale, aspect="auto",
                          interpolation="nearest")
                ax.set_yticks(range(half), ids[c, part] if kind == 0 else [""] * half, fontsize=6)
                ax.set_xticks(ticks, [str(f + 1) for f in ticks], fontsize=6)
                if c == 0:
                    ax.set_title(f"{('lowest', 'highest')[side]} VoG: {('values', 'gradients')[kind]}", fontsize=8)
        axes[c, 0].set_ylabel(class_names[c], fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel(f"feature (1-{rows.shape[1]}, in the source's column order)", fontsize=7)
    fig.suptitle(f"{title}\n{EXTREMES} lowest- and {EXTREMES} highest-VoG training rows of every class (standardised "
                 "values; mean input gradients, each row scaled to its largest)", fontsize=9)
    fig.tight_layout()
    return fig


def plot_histograms(train: np.ndarray, held_out: np.ndarray, vog_cal: str, title: str) -> plt.Figure:
    """train, held_out: [stages, n] VoG under one calibration."""
    fig, axes = plt.subplots(1, len(STAGES), figsize=(3.4 * len(STAGES), 3), sharey=True)
    for ax, stage, ours, theirs in zip(axes, STAGES, train, held_out):
        bins = np.histogram_bin_edges(np.concatenate([ours, theirs]), 50)
        ax.hist(ours, bins, alpha=0.6, density=True, label="training")
        ax.hist(theirs, bins, alpha=0.6, density=True, label="held-out")
        ax.set_title(stage)
        ax.set_xlabel(f"VoG ({vog_cal})")
    axes[0].set_ylabel("density")
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def extremes_of_each_class(vog: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """[C, 2 * EXTREMES] positions of every class's lowest-VoG samples (ascending) then its highest; a class
    with fewer than 2 * EXTREMES samples shows half of them on each side, -1 filling the empty places."""
    chosen = np.full((num_classes, 2 * EXTREMES), -1)
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        order = members[np.argsort(vog[members], kind="stable")]
        shown = min(EXTREMES, len(order) // 2)
        chosen[c, :shown] = order[:shown]
        chosen[c, 2 * EXTREMES - shown:] = order[len(order) - shown:]
    return chosen


def main(args: argparse.Namespace) -> None:
    paths = None if args.checkpoint_dir is None else checkpoint_paths(args.checkpoint_dir)    # before the data
    keep_freed_memory_in_heap()
    device = resolve_device(args.device)
    dataset = load_dataset_from_args(args, device)        # a ResNet on a table is refused here, before any work
    data, labels, num_classes = dataset.data, dataset.labels, dataset.num_classes

    order = torch.randperm(len(labels), generator=stage_generator(args.seed, VogStage.SPLIT))
    train_rows, held_rows = order[:int(args.train_ratio * len(labels))], order[int(args.train_ratio * len(labels)):]
    train_data, held_data, held_labels = data[train_rows], data[held_rows], labels[held_rows]
    train_ids = [dataset.sample_ids[i] for i in train_rows.tolist()]
    train_labels, is_flipped, _ = flip_labels(labels[train_rows], args.noise_ratio, num_classes, args.seed)
    is_flipped = is_flipped.cpu()

    model = network_for(args, data, num_classes)
    if paths is not None:
        checkpoints, epochs = load_checkpoints(paths, model, device), []
    else:
        checkpoints, epochs = trained_checkpoints(args, train_data, train_labels, num_classes)
    if args.save_checkpoints:
        save_checkpoints(checkpoints, epochs or list(range(len(checkpoints))),
                         vog_path(args.results_dir, "checkpoints", f"{dataset.name}_{args.subset_size}"))
    train_vog = all_vog(model, checkpoints, train_data, train_labels, args)          # [stages, calibrations, n]
    held_vog = all_vog(model, checkpoints, held_data, held_labels, args)
    train_predictions = checkpoint_predictions(model, checkpoints, train_data).cpu().numpy()     # [K, n]
    held_predictions = checkpoint_predictions(model, checkpoints, held_data).cpu().numpy()

    name = f"{dataset.name}_{args.subset_size}"
    path = vog_path(args.results_dir, "scores", name)
    save_npz_with_settings({
        "stages": np.array(STAGES), "calibrations": np.array(CALIBRATIONS), "checkpoint_epochs": np.array(epochs),
        "train_indices": dataset.indices[train_rows].numpy(), "held_out_indices": dataset.indices[held_rows].numpy(),
        "train_sample_ids": np.array(train_ids), "class_names": np.array(dataset.class_names),
        "held_out_sample_ids": np.array([dataset.sample_ids[i] for i in held_rows.tolist()]),
        "train_labels": train_labels.cpu().numpy(), "train_clean_labels": labels[train_rows].cpu().numpy(),
        "train_flipped": is_flipped.numpy(), "held_out_labels": held_labels.cpu().numpy(),
        "train_vog": train_vog, "held_out_vog": held_vog,
        "train_predictions": train_predictions, "held_out_predictions": held_predictions,
    }, path, run_settings(args, device))

    stage, cal = STAGES.index(args.mode), CALIBRATIONS.index(args.vog_cal)
    held = held_vog[stage, cal]
    window = stage_windows(len(checkpoints))[args.mode]
    last = range(len(checkpoints))[window][-1]                                  # the stage's last checkpoint
    wrong = held_predictions[last] != held_labels.cpu().numpy()                 # its errors, as the original
    order = np.argsort(held, kind="stable")
    kept_accuracy = np.array([1 - wrong[order[:-(-share * len(held) // 100)]].mean()   # the lowest ceil(x% of n)
                              for share in KEPT_SHARES])
    title = f"{dataset.name} {args.subset_size}, {args.evaluation_network}, {args.mode} VoG ({args.vog_cal})"
    figures = vog_path(args.figures_dir, "figures", name, args.mode, args.vog_cal)
    saved = save_figure(plot_error_by_vog(held, wrong, title), Path(f"{figures}_error_by_vog"))
    saved += save_figure(plot_accuracy_kept(kept_accuracy, title), Path(f"{figures}_accuracy_kept"))
    saved += save_figure(plot_histograms(train_vog[:, cal], held_vog[:, cal], args.vog_cal, title),
                         Path(f"{figures}_histograms"))
    extremes = extremes_of_each_class(train_vog[stage, cal], train_labels.cpu().numpy(), num_classes)  # [C, 20]
    places = torch.from_numpy(extremes.reshape(-1))
    rows = places.clamp_min(0).to(device)                     # an empty place (-1) reads sample 0, never drawn
    gradients = input_gradients(model, checkpoints[window], train_data[rows], train_labels[rows], args.target,
                                args.predicted_class)
    maps = gradients.mean(0).cpu()                            # over the stage's checkpoints: [C * 20, ...]
    if dataset.is_table:
        shown_ids = [train_ids[i] if i >= 0 else "" for i in places.tolist()]
        extremes_figure = plot_extreme_rows(train_data[rows].cpu(), maps, places >= 0, extremes.shape,
                                            dataset.class_names, shown_ids, title)
    else:
        channel_means = maps.mean(1)                          # [C * 20, H, W]
        extremes_figure = plot_extremes(train_data[rows].cpu(), channel_means, places >= 0, extremes.shape,
                                        dataset.class_names, title)
    saved += save_figure(extremes_figure, Path(f"{figures}_extremes"))

    train_accuracy = (train_predictions[-1] == train_labels.cpu().numpy()).mean()
    held_accuracy = (held_predictions[-1] == held_labels.cpu().numpy()).mean()
    print(f"final checkpoint: training accuracy {100 * train_accuracy:.1f}% (on the labels trained on), "
          f"held-out accuracy {100 * held_accuracy:.1f}%")
    print(f"the figures and the claims below use the predictions of the {args.mode} stage's last checkpoint "
          f"({last + 1} of {len(checkpoints)}): held-out accuracy {100 * (1 - wrong.mean()):.1f}%")
    deciles = equal_groups(held, 10)
    bottom, top = 100 * wrong[deciles[0]].mean(), 100 * wrong[deciles[-1]].mean()
    print(f"held-out error in the lowest VoG decile {bottom:.2f}%, highest {top:.2f}%: the paper's claim (error "
          f"rises with VoG) {'holds' if top > bottom else 'does not hold'}")
    print("held-out accuracy keeping the lowest-VoG x%: "
          + ", ".join(f"{share}% {100 * accuracy:.2f}" for share, accuracy in zip(KEPT_SHARES, kept_accuracy)))
    if is_flipped.any():
        auroc = roc_auc_score(is_flipped.numpy(), train_vog[STAGES.index("late"), cal])
        print(f"AUROC of late-stage VoG ({args.vog_cal}) separating the {int(is_flipped.sum())} flipped training "
              f"labels from the clean ones: {auroc:.3f} ({'above' if auroc > 0.6 else 'not above'} 0.6)")
    print(f"saved {path} (+ .json) and {', '.join(str(p) for p in saved if p.suffix == '.png')} (+ .pdf)")


if __name__ == "__main__":
    run_script(main, parse_args)
