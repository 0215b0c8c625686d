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
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import Tensor, nn

from hardness.data import Dataset
from hardness.vog import (accuracy_kept, checkpoint_paths, checkpoint_skeleton, equal_groups, extremes_of_each_class,
                          last_checkpoint, load_checkpoints, save_checkpoints, train_checkpoints, vog_table)
from utils import (CALIBRATIONS, STAGES, RunDescription, VogStage, add_common_arguments, add_dataset_arguments,
                   checkpoint_predictions, flip_labels, input_gradients, keep_freed_memory_in_heap,
                   load_dataset_from_args, positive_int, random_split, resolve_device, run_script, run_settings,
                   save_figure, save_npz_with_settings, stage_generator, stage_seed, stage_windows, unit_interval,
                   vog_path)

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


def plot_class_extremes(model: nn.Module, checkpoints: list[dict[str, Tensor]], train: Dataset, labels: Tensor,
                        vog: np.ndarray, target: str, predicted: bool, title: str) -> plt.Figure:
    """Every class's EXTREMES lowest- and highest-VoG training samples (`vog` [n] of `train`, trained on `labels`)
    beside their mean input gradients over the stage's `checkpoints`: images, or a table's rows."""
    extremes = extremes_of_each_class(vog, labels.cpu().numpy(), train.num_classes, EXTREMES)      # [C, 20]
    places = torch.from_numpy(extremes.reshape(-1))
    rows = places.clamp_min(0).to(train.data.device)          # an empty place (-1) reads sample 0, never drawn
    gradients = input_gradients(model, checkpoints, train.data[rows], labels[rows], target, predicted)
    maps = gradients.mean(0).cpu()                            # over the stage's checkpoints: [C * 20, ...]
    if train.is_table:
        shown_ids = [train.sample_ids[i] if i >= 0 else "" for i in places.tolist()]
        return plot_extreme_rows(train.data[rows].cpu(), maps, places >= 0, extremes.shape, train.class_names,
                                 shown_ids, title)
    return plot_extremes(train.data[rows].cpu(), maps.mean(1), places >= 0, extremes.shape, train.class_names, title)


def print_claims(held_vog: np.ndarray, wrong: np.ndarray, kept: np.ndarray, flipped: np.ndarray,
                 late_train_vog: np.ndarray, vog_cal: str) -> None:
    """Whether the paper's claims hold: held-out error (`wrong` [n]) rises with VoG (`held_vog` [n]), accuracy when
    only the lowest-VoG samples are `kept`, and with flipped training labels (`flipped` [n]) the AUROC of late-stage
    VoG separating them."""
    deciles = equal_groups(held_vog, 10)
    bottom, top = 100 * wrong[deciles[0]].mean(), 100 * wrong[deciles[-1]].mean()
    print(f"held-out error in the lowest VoG decile {bottom:.2f}%, highest {top:.2f}%: the paper's claim (error "
          f"rises with VoG) {'holds' if top > bottom else 'does not hold'}")
    print("held-out accuracy keeping the lowest-VoG x%: "
          + ", ".join(f"{share}% {100 * accuracy:.2f}" for share, accuracy in zip(KEPT_SHARES, kept)))
    if flipped.any():
        auroc = roc_auc_score(flipped, late_train_vog)
        print(f"AUROC of late-stage VoG ({vog_cal}) separating the {int(flipped.sum())} flipped training "
              f"labels from the clean ones: {auroc:.3f} ({'above' if auroc > 0.6 else 'not above'} 0.6)")


def main(args: argparse.Namespace) -> None:
    paths = None if args.checkpoint_dir is None else checkpoint_paths(args.checkpoint_dir)    # before the data
    keep_freed_memory_in_heap()
    device = resolve_device(args.device)
    run = RunDescription(args.evaluation_network, batch_size=args.batch_size)
    dataset = load_dataset_from_args(args, device, run=run)   # a ResNet on a table is refused here, before any work
    train_rows, held_rows = random_split(len(dataset.labels), args.train_ratio,
                                         stage_generator(args.seed, VogStage.SPLIT))
    train, held_out = dataset.select(train_rows), dataset.select(held_rows)
    train_labels, flipped, _ = flip_labels(train.labels, args.noise_ratio, dataset.num_classes, args.seed)
    flipped = flipped.cpu().numpy()

    model = checkpoint_skeleton(args.evaluation_network, dataset.data, dataset.num_classes)
    if paths is not None:
        checkpoints, epochs = load_checkpoints(paths, model, device), []
    else:
        checkpoints, epochs = train_checkpoints(args.evaluation_network, stage_seed(args.seed, VogStage.TRAIN),
                                                train.data, train_labels, dataset.num_classes, args.epochs,
                                                args.checkpoints, args.batch_size)
    name = f"{dataset.name}_{args.subset_size}"
    if args.save_checkpoints:
        save_checkpoints(checkpoints, epochs, vog_path(args.results_dir, "checkpoints", name))
    train_vog = vog_table(model, checkpoints, train.data, train_labels, args.target, args.predicted_class)
    held_vog = vog_table(model, checkpoints, held_out.data, held_out.labels, args.target, args.predicted_class)
    train_predictions = checkpoint_predictions(model, checkpoints, train.data).cpu().numpy()     # [K, n]
    held_predictions = checkpoint_predictions(model, checkpoints, held_out.data).cpu().numpy()

    path = vog_path(args.results_dir, "scores", name)
    save_npz_with_settings({
        "stages": np.array(STAGES), "calibrations": np.array(CALIBRATIONS), "checkpoint_epochs": np.array(epochs),
        "train_indices": train.indices.numpy(), "held_out_indices": held_out.indices.numpy(),
        "train_sample_ids": np.array(train.sample_ids), "class_names": np.array(dataset.class_names),
        "held_out_sample_ids": np.array(held_out.sample_ids),
        "train_labels": train_labels.cpu().numpy(), "train_clean_labels": train.labels.cpu().numpy(),
        "train_flipped": flipped, "held_out_labels": held_out.labels.cpu().numpy(),
        "train_vog": train_vog, "held_out_vog": held_vog,
        "train_predictions": train_predictions, "held_out_predictions": held_predictions,
    }, path, run_settings(args, device))

    stage, cal = STAGES.index(args.mode), CALIBRATIONS.index(args.vog_cal)
    last = last_checkpoint(len(checkpoints), args.mode)
    wrong = held_predictions[last] != held_out.labels.cpu().numpy()     # the stage's last checkpoint's, as the original
    kept = accuracy_kept(held_vog[stage, cal], wrong, KEPT_SHARES)
    title = f"{dataset.name} {args.subset_size}, {args.evaluation_network}, {args.mode} VoG ({args.vog_cal})"
    figures = vog_path(args.figures_dir, "figures", name, args.mode, args.vog_cal)
    saved = save_figure(plot_error_by_vog(held_vog[stage, cal], wrong, title), Path(f"{figures}_error_by_vog"))
    saved += save_figure(plot_accuracy_kept(kept, title), Path(f"{figures}_accuracy_kept"))
    saved += save_figure(plot_histograms(train_vog[:, cal], held_vog[:, cal], args.vog_cal, title),
                         Path(f"{figures}_histograms"))
    stage_checkpoints = checkpoints[stage_windows(len(checkpoints))[args.mode]]
    saved += save_figure(plot_class_extremes(model, stage_checkpoints, train, train_labels, train_vog[stage, cal],
                                             args.target, args.predicted_class, title), Path(f"{figures}_extremes"))

    train_accuracy = (train_predictions[-1] == train_labels.cpu().numpy()).mean()
    held_accuracy = (held_predictions[-1] == held_out.labels.cpu().numpy()).mean()
    print(f"final checkpoint: training accuracy {100 * train_accuracy:.1f}% (on the labels trained on), "
          f"held-out accuracy {100 * held_accuracy:.1f}%")
    print(f"the figures and the claims below use the predictions of the {args.mode} stage's last checkpoint "
          f"({last + 1} of {len(checkpoints)}): held-out accuracy {100 * (1 - wrong.mean()):.1f}%")
    print_claims(held_vog[stage, cal], wrong, kept, flipped, train_vog[STAGES.index("late"), cal], args.vog_cal)
    print(f"saved {path} (+ .json) and {', '.join(str(p) for p in saved if p.suffix == '.png')} (+ .pdf)")


if __name__ == "__main__":
    run_script(main, parse_args)
