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
from hardness.fast_recipe import AUGMENT_CHOICES, FAST_NETWORKS, FastRecipe, score_fast_run
from hardness.memory import RunDescription
from hardness.noise import NOISE_TYPES, check_noise_type, flip_labels
from hardness.noise_reference import reference_probabilities
from hardness.ranking import consensus_members
from hardness.results import DEFAULT_NETWORKS, save_npz_with_settings, scores_name, scores_path
from hardness.scoring import RANKINGS, ScoredRun, score_training_run
from hardness.seeds import Stage, stage_seed
from hardness.stopping import STOPPING_RULES
from hardness.user_data import parse_source


RECIPES = ("paper", "fast")
PAPER_DEFAULTS = {"network": "SimpleNN", "epochs": 500, "score_epoch": 20, "trajectory_every": 10,
                  "cleanlab_folds": 5}
FAST_ONLY = ("stopping", "augment")
PAPER_ONLY = ("score_epoch", "trajectory_every", "aum_threshold_samples")


def add_scoring_arguments(parser: argparse.ArgumentParser, runs: int) -> None:
    """The flags of the scoring run that hardness_scores.py and mislabel_detection_benchmark.py share."""
    fast = FastRecipe()
    parser.add_argument("--recipe", choices=RECIPES, default=None,
                        help="paper: Section 3's full-batch SimpleNNs for --epochs 500, VoG and cleanlab's fold "
                             "networks (the protocol of Sections 4-5 and Figure 7); fast: minibatch networks trained at "
                             "once and scored when a stopping rule that needs no clean labels fires, about 5x faster "
                             "and more accurate on realistic label noise (docs/scores.md) (default: paper for the "
                             "built-in datasets, fast for folder:, npz: and csv: sources)")
    parser.add_argument("--runs", type=positive_int, default=runs,
                        help=f"independent networks (seeds), trained as one batched computation (default {runs})")
    parser.add_argument("--network", choices=["SimpleNN", "ResNet", *FAST_NETWORKS], default=None,
                        help="the network scored. paper: SimpleNN (full batch, SGD lr 0.1, as Section 3) or the "
                             "evaluation ResNet-18 (Adam lr 1e-3, wd 1e-2, full batch unless --batch_size; no "
                             "stragglers); fast: MLP (two hidden layers of 512) or, for images, CNN (3x3 convolutions "
                             f"of 16 and 32 channels) (default SimpleNN; fast {fast.network})")
    parser.add_argument("--batch_size", type=positive_int, default=None,
                        help="paper, --network ResNet: shuffled minibatches of this size instead of full batch; fast: "
                             f"the minibatch size (default {fast.batch_size})")
    parser.add_argument("--epochs", type=positive_int, default=None,
                        help="paper: full-batch steps of the SimpleNN, passes of the ResNet (default 500); fast: the "
                             f"cap on passes when the stopping rule never fires (default {fast.epoch_cap})")
    parser.add_argument("--score_epoch", type=non_negative_int, default=None,
                        help="paper only: EL2N, GraNd and loss are taken after the step of this 0-based epoch (default "
                             "20; the fast recipe takes them at its stopping epoch)")
    parser.add_argument("--trajectory_every", type=positive_int, default=None,
                        help="paper only: margin, loss, largest logit and EL2N are kept after every this many epochs, "
                             "for the AUROC-against-epoch figure (default 10; the fast recipe keeps every epoch)")
    parser.add_argument("--cleanlab_folds", type=non_negative_int, default=None,
                        help="folds of cleanlab's out-of-sample probabilities: this many more networks per run, of "
                             "the scored kind (fast: trained to the stopping epoch); 0 skips the baseline (default 5; "
                             f"fast {fast.cleanlab_folds})")
    parser.add_argument("--stopping", choices=STOPPING_RULES, default=None,
                        help="fast only: the rule that ends training without clean labels: inversion (every class's "
                             "manifold has inverted), loss_plateau (the mean loss fell by less than 5%% in an epoch) or "
                             "rank_stability (the margins' rank correlation with the epoch before reached 0.99) or none "
                             "(train to the --epochs cap) "
                             f"(default {fast.stopping})")
    parser.add_argument("--augment", choices=AUGMENT_CHOICES, default=None,
                        help="fast only: train on random shifts of up to 2 pixels: auto (images whose sides are at "
                             "least 16 pixels; not 8x8 digits, not tables), on (every image) or off (default auto)")
    parser.add_argument("--noise_type", choices=NOISE_TYPES, default="uniform",
                        help="how flipped labels are chosen: uniform (another class, drawn uniformly), pairs (every "
                             "class into its one confusable class, the class whose mean input is nearest), asymmetric "
                             "(two thirds to the nearest class, one third to the second nearest; 3 classes at least), "
                             "adjacent (class k to k + 1), instance (the samples a reference model finds most like "
                             "another class, to that class) (default uniform)")
    parser.add_argument("--aum_threshold_samples", action="store_true",
                        help="paper only: also AUM's own verdict: two more trainings in which N // (C + 1) samples "
                             "get a fake extra class; flag the samples whose AUM is at most the 99th percentile of theirs")
    add_common_arguments(parser)


def check_scoring_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace, dataset_names: list[str]) -> None:
    """Resolve the recipe (paper unless every dataset is a user's source) and its defaults; a parser error for a
    flag the recipe does not take."""
    if args.recipe is None:
        args.recipe = "fast" if all(parse_source(name) for name in dataset_names) else "paper"
    given = {name for name in (*FAST_ONLY, *PAPER_ONLY) if getattr(args, name) not in (None, False)}
    wrong = given & set(PAPER_ONLY if args.recipe == "fast" else FAST_ONLY)
    if wrong:
        parser.error(f"--{sorted(wrong)[0]} applies to --recipe {'paper' if args.recipe == 'fast' else 'fast'} only")
    if args.recipe == "fast":
        fast = FastRecipe()
        args.network = args.network or fast.network
        if args.network not in FAST_NETWORKS:
            parser.error(f"--recipe fast trains {' or '.join(FAST_NETWORKS)}, not --network {args.network}")
        args.epochs = args.epochs or fast.epoch_cap
        args.batch_size = args.batch_size or fast.batch_size
        args.cleanlab_folds = fast.cleanlab_folds if args.cleanlab_folds is None else args.cleanlab_folds
        args.stopping = args.stopping or fast.stopping
        args.augment = args.augment or fast.augment
    else:
        for name, value in PAPER_DEFAULTS.items():
            if getattr(args, name) is None:
                setattr(args, name, value)
        if args.network in FAST_NETWORKS:
            parser.error(f"--network {args.network} is the fast recipe's; give --recipe fast")
        if args.epochs < VOG_CHECKPOINTS:
            parser.error(f"--epochs must be at least {VOG_CHECKPOINTS}: VoG takes a checkpoint after each of "
                         f"{VOG_CHECKPOINTS} epochs, got {args.epochs}")
        if args.score_epoch >= args.epochs:
            parser.error(f"--score_epoch must be below --epochs ({args.epochs}), got {args.score_epoch}")
        if args.batch_size is not None and args.network != "ResNet":
            parser.error("--batch_size applies to --network ResNet only; SimpleNNs train full batch")
    if args.cleanlab_folds == 1:
        parser.error("--cleanlab_folds must be 0 (no baseline) or at least 2")


def scoring_run(args: argparse.Namespace) -> RunDescription:
    """What the resolved flags train, for the memory estimate: --runs networks of --network."""
    return RunDescription(args.network, args.runs, args.batch_size)


def fast_recipe(args: argparse.Namespace) -> FastRecipe:
    """The fast recipe the resolved flags describe."""
    return FastRecipe(network=args.network, epoch_cap=args.epochs, batch_size=args.batch_size, stopping=args.stopping,
                      augment=args.augment, cleanlab_folds=args.cleanlab_folds)


@dataclass
class ScoredSetting:
    """One dataset subset with flipped labels and every score of its runs."""
    dataset: Dataset
    labels: Tensor               # [N] the labels trained on, after flipping
    flipped: np.ndarray          # [N] bool
    run: ScoredRun
    pairs: Tensor | None = None  # [C] the class each class was flipped into (pair noise)


def setting_name(dataset_name: str, dataset: Dataset, subset_size: int, noise_ratio: float, network: str,
                 noise_type: str = "uniform", recipe: str = "paper") -> str:
    """The <name> of a scored setting (results.scores_name): its samples are --subset_size for a built-in dataset
    and the number of samples used of a user's source (a folder of 45 images is <label>_45_0, whatever
    --subset_size says)."""
    samples = subset_size if parse_source(dataset_name) is None else len(dataset.labels)
    return scores_name(dataset.name, samples, noise_ratio, network, noise_type, recipe)


def saved_setting_path(args: argparse.Namespace, label: str) -> Path:
    """For --replot: the scores file of these flags, under its name or, for a user's source, under the name older
    versions gave it (--subset_size as given); then the same names of the other recipe (a folder scored by the
    paper recipe before the fast one was its default); the first name when none is there."""
    other = {"paper": "fast", "fast": "paper"}[args.recipe]
    dataset = (load_dataset_from_args(args, torch.device("cpu"), run=scoring_run(args))
               if parse_source(args.dataset_name) else None)
    names = []
    for recipe, network in ((args.recipe, args.network), (other, DEFAULT_NETWORKS[other])):
        names.append(scores_name(label, args.subset_size, args.noise_ratio, network, args.noise_type, recipe))
        if dataset is not None:
            names.insert(len(names) - 1, setting_name(args.dataset_name, dataset, args.subset_size, args.noise_ratio,
                                                      network, args.noise_type, recipe))
    paths = [scores_path(args.results_dir, "scores", name) for name in names]
    return next((path for path in paths if path.is_file()), paths[0])


def noisy_subset(dataset_name: str, subset_size: int, noise_ratio: float, args: argparse.Namespace,
                 device: torch.device) -> tuple[Dataset, Tensor, Tensor, Tensor | None]:
    """The subset (load_dataset_from_args with `dataset_name` and `subset_size`) and its labels after flipping
    int(noise_ratio * N) of them (seeded, as Sections 4-5 do, of args.noise_type): (dataset, labels, flipped,
    pairs). A noise type the data cannot take is a UserInputError before any training."""
    seed, noise_type = args.seed, getattr(args, "noise_type", "uniform")
    dataset = load_dataset_from_args(argparse.Namespace(**{**vars(args), "dataset_name": dataset_name}), device,
                                     subset_size=subset_size, run=scoring_run(args))
    try:
        check_noise_type(noise_type, dataset.num_classes)
    except ValueError as error:
        raise UserInputError(f"--noise_type {noise_type}: {error}") from None
    if getattr(args, "recipe", "paper") == "fast" and args.network == "CNN" and dataset.is_table:
        raise UserInputError(f"{dataset.name} is a table; --network CNN needs images, use the MLP")
    probabilities = None
    if noise_type == "instance" and noise_ratio > 0:
        probabilities = reference_probabilities(dataset_name, dataset, args.data_root, args.results_dir, seed,
                                                args.network)
    labels, flipped, pairs = flip_labels(dataset.labels, noise_ratio, dataset.num_classes, seed, noise_type,
                                         dataset.data, probabilities=probabilities)
    return dataset, labels, flipped, pairs


def score_setting(dataset_name: str, subset_size: int, noise_ratio: float, args: argparse.Namespace,
                  device: torch.device) -> ScoredSetting:
    """The noisy subset (noisy_subset) scored by `args.runs` runs of the recipe with the scoring flags of `args`
    (add_scoring_arguments, resolved by check_scoring_arguments)."""
    dataset, labels, flipped, pairs = noisy_subset(dataset_name, subset_size, noise_ratio, args, device)
    seeds = [stage_seed(args.seed, Stage.SCORE, i) for i in range(args.runs)]
    if args.recipe == "fast":
        run = score_fast_run(fast_recipe(args), seeds, dataset.data, labels, dataset.num_classes)
    else:
        run = score_training_run(seeds, dataset.data, labels, dataset.num_classes, args.epochs, args.score_epoch,
                                 args.trajectory_every, args.cleanlab_folds, args.aum_threshold_samples, args.network,
                                 args.batch_size)
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
                                          "recipe": {**setting.run.recipe,
                                                     "consensus": consensus_members(setting.run.scores)},
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

