"""One scored setting: the flags of a scoring run, the subset with its flipped labels scored, and the .npz
and settings JSON it is saved to (hardness_scores.py and mislabel_detection_benchmark.py share these)."""
import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from hardness.cli import UserInputError, add_common_arguments, non_negative_int, positive_int
from hardness.data import Dataset, load_dataset_from_args
from hardness.identifiers import VOG_CHECKPOINTS
from hardness.noise import NOISE_TYPES, flip_labels
from hardness.results import save_npz_with_settings, scores_name, scores_path
from hardness.scoring import RANKINGS, ScoredRun, score_training_run
from hardness.seeds import Stage, stage_seed
from hardness.user_data import parse_source


def add_scoring_arguments(parser: argparse.ArgumentParser, runs: int) -> None:
    """The flags of the scoring run that hardness_scores.py and mislabel_detection_benchmark.py share."""
    parser.add_argument("--runs", type=positive_int, default=runs,
                        help=f"independent networks (seeds); SimpleNNs are trained as one batched computation "
                             f"(default {runs})")
    parser.add_argument("--network", choices=["SimpleNN", "ResNet"], default="SimpleNN",
                        help="the network scored: SimpleNN (full batch, SGD lr 0.1, as Section 3) or the evaluation "
                             "ResNet-18 (Adam lr 1e-3, wd 1e-2, full batch unless --batch_size; no stragglers) "
                             "(default SimpleNN)")
    parser.add_argument("--batch_size", type=positive_int, default=None,
                        help="--network ResNet only: shuffled minibatches of this size instead of full batch")
    parser.add_argument("--epochs", type=positive_int, default=500,
                        help="training epochs: full-batch steps of the SimpleNN, passes of the ResNet (default 500)")
    parser.add_argument("--score_epoch", type=non_negative_int, default=20,
                        help="EL2N, GraNd and loss are taken after the step of this 0-based epoch (default 20)")
    parser.add_argument("--trajectory_every", type=positive_int, default=10,
                        help="margin, loss, largest logit and EL2N are kept after every this many epochs, for the "
                             "AUROC-against-epoch figure (default 10)")
    parser.add_argument("--cleanlab_folds", type=non_negative_int, default=5,
                        help="folds of cleanlab's out-of-sample probabilities: this many more networks per run; "
                             "0 skips the baseline (default 5)")
    parser.add_argument("--noise_type", choices=NOISE_TYPES, default="uniform",
                        help="how a flipped label is chosen: uniform (another class, drawn uniformly) or pairs (every "
                             "class into its one confusable class, the class whose mean input is nearest, as real "
                             "label noise is not uniform) (default uniform)")
    parser.add_argument("--aum_threshold_samples", action="store_true",
                        help="also AUM's own verdict: two more trainings in which N // (C + 1) samples get a fake "
                             "extra class; flag the samples whose AUM is at most the 99th percentile of theirs")
    add_common_arguments(parser)


def check_scoring_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.epochs < VOG_CHECKPOINTS:
        parser.error(f"--epochs must be at least {VOG_CHECKPOINTS}: VoG takes a checkpoint after each of "
                     f"{VOG_CHECKPOINTS} epochs, got {args.epochs}")
    if args.score_epoch >= args.epochs:
        parser.error(f"--score_epoch must be below --epochs ({args.epochs}), got {args.score_epoch}")
    if args.cleanlab_folds == 1:
        parser.error("--cleanlab_folds must be 0 (no baseline) or at least 2")
    if args.batch_size is not None and args.network != "ResNet":
        parser.error("--batch_size applies to --network ResNet only; SimpleNNs train full batch")


@dataclass
class ScoredSetting:
    """One dataset subset with flipped labels and every score of its runs."""
    dataset: Dataset
    labels: Tensor               # [N] the labels trained on, after flipping
    flipped: np.ndarray          # [N] bool
    run: ScoredRun
    pairs: Tensor | None = None  # [C] the class each class was flipped into (pair noise)


def setting_name(dataset_name: str, dataset: Dataset, subset_size: int, noise_ratio: float, network: str,
                 noise_type: str = "uniform") -> str:
    """The <name> of a scored setting (results.scores_name): its samples are --subset_size for a built-in dataset
    and the number of samples used of a user's source (a folder of 45 images is <label>_45_0, whatever
    --subset_size says)."""
    samples = subset_size if parse_source(dataset_name) is None else len(dataset.labels)
    return scores_name(dataset.name, samples, noise_ratio, network, noise_type)


def saved_setting_path(args: argparse.Namespace, label: str) -> Path:
    """For --replot: the scores file of these flags, under its name or, for a user's source, under the name older
    versions gave it (--subset_size as given); the new name when neither is there."""
    names = [scores_name(label, args.subset_size, args.noise_ratio, args.network, args.noise_type)]
    if parse_source(args.dataset_name) is not None:
        dataset = load_dataset_from_args(args, torch.device("cpu"))
        names.insert(0, setting_name(args.dataset_name, dataset, args.subset_size, args.noise_ratio, args.network,
                                     args.noise_type))
    paths = [scores_path(args.results_dir, "scores", name) for name in names]
    return next((path for path in paths if path.is_file()), paths[0])


def score_setting(dataset_name: str, subset_size: int, noise_ratio: float, args: argparse.Namespace,
                  device: torch.device) -> ScoredSetting:
    """Load the subset (load_dataset_from_args with `dataset_name` and `subset_size`), flip int(noise_ratio * N)
    labels (seeded, as Sections 4-5 do; pair noise with args.noise_type 'pairs') and score `args.runs` runs with
    the scoring flags of `args` (add_scoring_arguments)."""
    seed = args.seed
    dataset = load_dataset_from_args(argparse.Namespace(**{**vars(args), "dataset_name": dataset_name}), device,
                                     subset_size=subset_size)
    labels, flipped, pairs = flip_labels(dataset.labels, noise_ratio, dataset.num_classes, seed,
                                         getattr(args, "noise_type", "uniform"), dataset.data)
    run = score_training_run([stage_seed(seed, Stage.SCORE, i) for i in range(args.runs)], dataset.data, labels,
                             dataset.num_classes, args.epochs, args.score_epoch, args.trajectory_every,
                             args.cleanlab_folds, args.aum_threshold_samples, args.network, args.batch_size)
    return ScoredSetting(dataset, labels, flipped.cpu().numpy(), run, pairs)


def save_setting(setting: ScoredSetting, path: Path, settings: dict) -> None:
    """Every score [runs, N] (trajectories [runs, T, N]), the flipped mask, the labels, the runs' majority
    prediction, the samples' identities and where they come from to `path` (.npz); the settings, class names,
    seconds and score orientations to the .json beside it."""
    arrays = {**setting.run.scores, "flipped": setting.flipped, "labels": setting.labels.cpu().numpy(),
              "clean_labels": setting.dataset.labels.cpu().numpy(), "subset_indices": setting.dataset.indices.numpy(),
              "sample_ids": np.asarray(setting.dataset.sample_ids, dtype=str),
              "predicted_labels": setting.run.predicted_labels, "inversion_epochs": setting.run.inversion_epochs,
              "trajectory_epochs": np.asarray(setting.run.trajectory_epochs)}
    if setting.pairs is not None:
        arrays["noise_pairs"] = setting.pairs.cpu().numpy()
    save_npz_with_settings(arrays, path, {**settings, "class_names": setting.dataset.class_names,
                                          "seconds": setting.run.seconds, "notes": setting.run.notes,
                                          "rankings": {name: {"array": array, "harder_when": "high" if sign > 0 else "low"}
                                                       for name, (array, sign) in RANKINGS.items()}})


def load_setting_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays save_setting wrote."""
    if not Path(path).is_file():
        raise UserInputError(f"scores file {path} not found; make it first with hardness_scores.py")
    with np.load(path) as saved:
        return dict(saved)


def load_settings(path: Path) -> dict:
    """The settings JSON save_setting wrote beside `path`."""
    return json.loads(Path(path).with_suffix(".json").read_text())

