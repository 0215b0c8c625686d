"""When to score a sample: the inversion point under memorisation.

Networks that memorise (minibatch SGD with momentum; an MLP of two hidden ReLU layers or a small CNN) train on
--subset_size samples of which int(--noise_ratio * N) carry a flipped label (flipped as Sections 4-5 flip
them); --runs networks train at once as one batched computation, each run in its own minibatch order. After
every epoch (one pass over the data) an observer records, on the whole training subset: every class's
radius in hidden layer --latent (hence each class's inversion point, by the paper's rule applied to epochs
and by a smoothed rule), the per-sample margin, loss, EL2N and largest logit, and each run's accuracy on
--holdout_size samples it never trains on, against their clean labels (an oracle) and their noisy labels
(what a user has).

Saves <results_dir>/memorisation/<dataset>_<model>_<subset>_<noise>.npz with a settings JSON beside it (the
summary of the setting in it) and draws <figures_dir>/memorisation/<same name> (PNG and PDF): AUROC of every
per-epoch score against the epoch, the share of flips memorised and held-out accuracy, with the inversion and
early-stopping epochs marked. --summarize reads every setting saved under <results_dir>/memorisation and writes
the table of moments and AUROC losses (summary.md there) and one figure with a panel per setting.
"""
import argparse
import json
from pathlib import Path

import numpy as np
import torch

from hardness.memorisation import (EPOCH_OFFSET, MOMENTS, SCORES, WHOLE_TRAJECTORY, EpochRecorder, analyse,
                                   mean_std, plot_settings, run_inversion_epoch, smoothed_inversions)
from hardness.minibatch import StackedNetworks, train_minibatch
from neural_networks import memorisation_cnn, memorisation_mlp
from utils import (MemorisationStage, RadiiRecorder, StragglerTracker, UserInputError, add_common_arguments,
                   add_dataset_arguments, canonical_dataset_name, flip_labels, load_dataset, memorisation_path, positive_float,
                   positive_int, resolve_device, results_folders, run_script, run_settings, save_figure,
                   save_npz_with_settings, stage_generator, stage_seed, unit_interval, write_atomically)

DEFAULT_EPOCHS = {"mlp": 100, "cnn": 100}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_arguments(parser, subset_size={"default": 10000})
    parser.add_argument("--holdout_size", type=positive_int, default=5000,
                        help="samples after the training subset in the same seeded shuffle, never trained on: the "
                             "held-out split for early stopping (default 5000)")
    parser.add_argument("--noise_ratio", type=unit_interval(True, False), default=0.2,
                        help="share of training (and held-out) labels flipped to another class, e.g. 0.1, 0.2, 0.4 "
                             "(default 0.2)")
    parser.add_argument("--model", choices=sorted(DEFAULT_EPOCHS), default="mlp",
                        help="mlp: two hidden layers of --width ReLUs; cnn: 3x3 convolutions of 16 and 32 channels, "
                             "each with 2x2 max-pooling, and a linear head (default mlp)")
    parser.add_argument("--width", type=positive_int, default=512, help="units per hidden layer of the MLP (default 512)")
    parser.add_argument("--epochs", type=positive_int, default=None,
                        help="passes over the training subset (default 100 for both models; the CNN fits half its flips only after about 70)")
    parser.add_argument("--runs", type=positive_int, default=5,
                        help="networks trained at once, each from its own initialisation and minibatch order (default 5)")
    parser.add_argument("--batch_size", type=positive_int, default=128, help="minibatch size (default 128)")
    parser.add_argument("--lr", type=positive_float, default=0.01, help="SGD learning rate (default 0.01)")
    parser.add_argument("--momentum", type=unit_interval(True, False), default=0.9, help="SGD momentum (default 0.9)")
    parser.add_argument("--latent", type=positive_int, default=1, choices=[1, 2],
                        help="hidden layer (1-based) whose output the class radii are measured on (default 1)")
    parser.add_argument("--check_start", type=positive_int, default=2,
                        help="first epoch whose radius the paper's rule checks; the first inversion it can find is "
                             "the next check (default 2)")
    parser.add_argument("--check_interval", type=positive_int, default=1,
                        help="epochs between the paper's rule's checks (default 1: every epoch)")
    parser.add_argument("--smoothing", type=positive_int, default=5,
                        help="trailing window, in epochs, of the smoothed rule's moving average (default 5)")
    parser.add_argument("--summarize", action="store_true",
                        help="train nothing: read every setting under <results_dir>/memorisation (or under every cell "
                             "of --sweep), write the table summary.md to <results_dir>/memorisation and the figure "
                             "with one panel per setting")
    parser.add_argument("--sweep", type=Path, default=None,
                        help="with --summarize: read the settings from every cell of this sweep.py folder "
                             "(e.g. Results/sweeps/memorisation) instead of --results_dir")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    args.epochs = args.epochs or DEFAULT_EPOCHS[args.model]
    if args.check_start >= args.epochs:
        parser.error(f"--check_start must be below --epochs ({args.epochs}), got {args.check_start}")
    return args


def result_path(args: argparse.Namespace, dataset_name: str) -> Path:
    """<results_dir>/memorisation/<dataset>_<model>_<subset>_<noise>[_latent<l>][_width<w>][_epochs<e>][_lr<lr>]
    [_batch<b>].npz: every setting that changes what is trained or measured and differs from its default."""
    differing = [(f"latent{args.latent}", args.latent != 1),
                 (f"width{args.width}", args.model == "mlp" and args.width != 512),
                 (f"epochs{args.epochs}", args.epochs != DEFAULT_EPOCHS[args.model]),
                 (f"lr{args.lr:g}", args.lr != 0.01), (f"batch{args.batch_size}", args.batch_size != 128)]
    suffix = "".join(f"_{name}" for name, differs in differing if differs)
    return memorisation_path(args.results_dir, "setting", f"{dataset_name}_{args.model}_{args.subset_size}_{args.noise_ratio:g}{suffix}")


def build_networks(args: argparse.Namespace, input_shape: tuple[int, ...], num_classes: int,
                   device: torch.device) -> StackedNetworks:
    """--runs networks, run r initialised from its INITIALISATION stage."""
    models = []
    for run in range(args.runs):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(stage_seed(args.seed, MemorisationStage.INITIALISATION, run))
            models.append(memorisation_mlp(input_shape, num_classes, args.width, args.latent) if args.model == "mlp"
                          else memorisation_cnn(input_shape, num_classes, args.latent))
    return StackedNetworks([model.to(device) for model in models])


def train_and_record(args: argparse.Namespace, device: torch.device) -> tuple[dict[str, np.ndarray], list[str]]:
    """Train the setting's networks and return every recorded array (and the class names)."""
    dataset = load_dataset(args.dataset_name, args.data_root, args.subset_size + args.holdout_size, args.seed, device)
    n, num_classes = args.subset_size, dataset.num_classes
    data, heldout = dataset.data[:n], dataset.data[n:]
    clean, heldout_clean = dataset.labels[:n], dataset.labels[n:]
    labels, flipped, _ = flip_labels(clean, args.noise_ratio, num_classes, args.seed)
    heldout_noisy, _, _ = flip_labels(heldout_clean, args.noise_ratio, num_classes, args.seed,
                                      stage=MemorisationStage.HELDOUT_NOISE)

    networks = build_networks(args, tuple(data.shape[1:]), num_classes, device)
    optimizer = torch.optim.SGD(networks.parameters(), lr=args.lr, momentum=args.momentum)
    shuffles = [stage_generator(args.seed, MemorisationStage.MINIBATCH_ORDER, run) for run in range(args.runs)]
    radii = RadiiRecorder(args.runs, num_classes, 0, args.epochs - 1, device)
    checks = StragglerTracker(args.runs, labels, num_classes, start=args.check_start - EPOCH_OFFSET,
                              interval=args.check_interval)
    recorder = EpochRecorder(labels, args.runs, args.epochs, heldout, heldout_clean, heldout_noisy)
    losses = train_minibatch(networks, optimizer, data, labels, num_classes, args.epochs, args.batch_size, shuffles,
                             observers=[radii, checks, recorder], description=f"{args.runs} {args.model}(s)")

    inverted_at = checks.inverted_at.cpu().numpy()
    arrays = {**recorder.arrays(), "radii": radii.radii, "train_loss": losses, "labels": labels.cpu().numpy(),
              "clean_labels": clean.cpu().numpy(), "flipped": flipped.cpu().numpy(),
              "inversion_checked": np.where(inverted_at >= 0, inverted_at + EPOCH_OFFSET, -1),
              "inversion_smoothed": smoothed_inversions(radii.radii, args.smoothing, args.check_start),
              "stragglers": checks.hard("copy").cpu().numpy(), "sample_ids": np.array(dataset.sample_ids[:n]),
              "class_names": np.array(dataset.class_names)}
    return arrays, dataset.class_names


def summary_rows(arrays: dict[str, np.ndarray], analysis: dict[str, np.ndarray]) -> dict[str, str]:
    """The table cells of one setting: moments (mean ± std over runs) and AUROC lost at each moment."""
    row = {"memorised at the end": mean_std(analysis["memorised"][:, -1], 3),
           "memorisation begins": mean_std(analysis["memorisation_onset"]),
           "inversion, paper's rule": mean_std(run_inversion_epoch(arrays["inversion_checked"])),
           "classes never inverting (paper's rule)": f"{(arrays['inversion_checked'] < 0).sum()} of "
                                                      f"{arrays['inversion_checked'].size}",
           "inversion, smoothed rule": mean_std(run_inversion_epoch(arrays["inversion_smoothed"])),
           "classes never inverting (smoothed)": f"{(arrays['inversion_smoothed'] < 0).sum()} of "
                                                 f"{arrays['inversion_smoothed'].size}",
           "early stopping, clean held-out": mean_std(analysis["early_stopping_clean"]),
           "early stopping, noisy held-out": mean_std(analysis["early_stopping_noisy"]),
           "held-out clean accuracy: peak / last": f"{analysis['heldout_clean'].max(1).mean():.3f} / "
                                                   f"{analysis['heldout_clean'][:, -1].mean():.3f}"}
    for name in SCORES:
        row[f"{name}: best epoch (AUROC)"] = (f"{mean_std(analysis[f'best_epoch_{name}'])} "
                                              f"({analysis[f'auroc_{name}'].max(1).mean():.3f})")
        row[f"{name}: AUROC lost at " + ", ".join(MOMENTS)] = " / ".join(
            f"{analysis[f'lost_{name}_{moment}'].mean():.3f}" for moment in MOMENTS)
        row[f"{name}: AUROC, each class at its own inversion"] = f"{analysis[f'auroc_{name}_class_inversion'].mean():.3f}"
    for name in WHOLE_TRAJECTORY:
        row[f"{name} up to " + ", ".join(MOMENTS)] = " / ".join(
            f"{analysis[f'auroc_{name}_{moment}'].mean():.3f}" for moment in MOMENTS)
    return row


def inversions_of(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"checked": arrays["inversion_checked"], "smoothed": arrays["inversion_smoothed"]}


def setting_title(settings: dict) -> str:
    latent = f", latent {settings['latent']}" if settings["latent"] != 1 else ""
    return (f"{settings['dataset']}, {settings['model']}, {settings['noise_ratio']:g} noise, "
            f"{settings['runs']} runs x {settings['epochs']} epochs{latent}")


def summarize(args: argparse.Namespace) -> None:
    """The table of every saved setting and one figure with a panel per setting."""
    folders = results_folders(args.results_dir, args.sweep)
    paths = sorted(path for folder in folders for path in (folder / "memorisation").glob("*.npz"))
    if not paths:
        raise UserInputError(f"no settings saved under {', '.join(str(f / 'memorisation') for f in folders)}: "
                             "run this script first")
    table, panels = {}, []
    for path in paths:
        with np.load(path) as saved:
            arrays = dict(saved)
        settings = json.loads(path.with_suffix(".json").read_text())
        analysis = analyse(arrays, inversions_of(arrays))
        table[setting_title(settings)] = summary_rows(arrays, analysis)
        panels.append((setting_title(settings), analysis))
    names = list(table)
    lines = ["| | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
    lines += [f"| {row} | " + " | ".join(table[name][row] for name in names) + " |" for row in table[names[0]]]
    summary = memorisation_path(args.results_dir, "summary")
    write_atomically(summary, ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))
    saved = save_figure(plot_settings(panels), memorisation_path(args.figures_dir, "summary_figure"))
    print(f"wrote {summary} and {saved[0]}")


def main(args: argparse.Namespace) -> None:
    if args.summarize:
        summarize(args)
        return
    device = resolve_device(args.device)
    dataset_name = canonical_dataset_name(args.dataset_name)
    arrays, class_names = train_and_record(args, device)
    analysis = analyse(arrays, inversions_of(arrays))
    settings = {**run_settings(args, device), "dataset": dataset_name, "class_names": class_names}
    row = summary_rows(arrays, analysis)
    path = result_path(args, dataset_name)
    save_npz_with_settings(arrays, path, {**settings, "summary": row})
    save_figure(plot_settings([(setting_title(settings), analysis)]), memorisation_path(args.figures_dir, "setting_figure", path.stem))
    for name, value in row.items():
        print(f"{name}: {value}")
    print(f"saved {path} and its .json; figure {memorisation_path(args.figures_dir, 'setting_figure', path.stem)}.png")


if __name__ == "__main__":
    run_script(main, parse_args)
