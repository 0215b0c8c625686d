"""GASTeN, steps 1 and 2: a DCGAN, then the same GAN pushed towards a classifier's decision boundary.

    python gasten_train.py --config configs/gasten/mnist_7v1.yaml          # step 1, then every step-2 cell

Step 1 trains a plain GAN (or WGAN-GP) for step1.epochs, checkpointing every step1.checkpoint_every epochs
and the untrained epoch 0; an interrupted run resumes from its last checkpoint (step1.run may instead name
an existing step-1 folder). Step 2, for every step-1 epoch in step2.step1_epochs (numbers, best = lowest
FID, last), classifier in step2.classifiers and weight in step2.weights (numbers, mgda, mgda:norm), starts
from that checkpoint's G and D with fresh Adam optimisers, as the original (step2.keep_optimizer_state: true
carries step 1's Adam states over), and trains step2.epochs with the confusion term; an interrupted step-2
cell resumes with its own optimiser states. After every epoch the generator is scored on a fixed test noise
(the first test_noise_samples of 2048 x 64): ACD, "FID (own features)" and the Frechet distance in the
classifier's embedding; the feature CNN of "FID (own features)" is trained on first use (it says so on
stderr) and cached. One cell at a time: --step 1, or --step 2 --step1_run DIR --step1_epoch E --classifier NAME
--weight W; --summarize RUN_DIR rebuilds a run's table and Pareto flags from its cells. --summarize_seeds
RUN_DIR ... runs gasten_summarize_seeds.py, the study over seeds.

Every seed (--seed or training.seed) has its own run folder <run>: <name> for seed 0, <name>_seed<s> for seed
s. Writes <results_dir>/gasten/<run>/step1/epoch_<ee>/{generator,discriminator,optimizers}.pt + config.json,
.../step2/<classifier>_<weight>_<step1 epoch>/epoch_<ee>/..., a metrics.csv per run and cell, the run's
metrics.csv (the last epoch of every cell, with a Pareto flag over FID and ACD), and figures under
<figures_dir>/gasten/<run>/: the samples sorted by C(G(z)) in 10 probability columns and a histogram of
C(G(z)) per cell, and FID against ACD over the cells (PNG and PDF).
"""
import argparse
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from torchmetrics.image.fid import FrechetInceptionDistance

import gasten_summarize_seeds
from hardness.config import ConfigError, Field, check_fields, read_config, schema_defaults
from hardness.gasten import (GAN, PAIR_DATASETS, TEST_NOISE_SAMPLES, PairData, classifier_path, epoch_folders,
                             fixed_test_noise, generate, load_classifier, load_gan, load_pair, make_gan,
                             pareto_efficient, read_metrics_csv, resume_checkpoint, run_epochs, save_gan,
                             step1_checkpoint, step2_metrics, write_metrics_csv)
from hardness.gasten_metrics import Embedding, Scorer, feature_cnn, frechet_metric, inception_features
from hardness.gasten_names import NO_CONFUSION, ConfusionWeight, Step2Cell, run_folder_name
from utils import (TORCHVISION_ROOT, UserInputError, add_device_argument, add_output_arguments, add_shared_arguments,
                   gasten_path, resolve_device, run_script, run_settings, save_figure)

SCHEMA = (
    Field("name", None),                                        # None: the config file's stem
    Field("dataset.name", "mnist", "choice", choices=PAIR_DATASETS),
    Field("dataset.pos", 7, "integer", 0),
    Field("dataset.neg", 1, "integer", 0),
    Field("model.loss", "gan", "choice", choices=("gan", "wgan-gp")),
    Field("model.gp_lambda", 10.0, "number", 0),
    Field("training.batch_size", 64, "integer", 1),
    Field("training.lr", 0.0002, "number", 0),
    Field("training.beta1", 0.5, "number", 0),
    Field("training.beta2", 0.999, "number", 0),
    Field("training.seed", 0, "integer", 0),
    Field("step1.epochs", 10, "integer", 1),
    Field("step1.checkpoint_every", 1, "integer", 1),
    Field("step1.run", None),                                   # a step-1 folder to start step 2 from
    Field("step2.epochs", 40, "integer", 1),
    Field("step2.checkpoint_every", 10, "integer", 1),
    Field("step2.step1_epochs", [0, 2, 5, 10]),                 # the three lists: checked in load_config
    Field("step2.weights", [0, "mgda", 5, 10, 15, 20, 25, 30]),
    Field("step2.classifiers", ["cnn-1-1.0", "cnn-2-1.0", "cnn-4-1.0"]),
    Field("step2.keep_optimizer_state", False, "bool"),
    Field("test_noise_seed", 0, "integer", 0),
    Field("test_noise_samples", TEST_NOISE_SAMPLES, "integer", 2),   # at most TEST_NOISE_SAMPLES: load_config
)
DEFAULTS = schema_defaults(SCHEMA)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="YAML file of the run (see configs/gasten/); needed unless --summarize")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config field, e.g. --set step2.epochs=5 (repeatable)")
    add_shared_arguments(parser, "seed", seed={
        "default": None, "help": "training.seed (default: the config's); every seed has its own run folder, <name> "
                                 "for seed 0, <name>_seed<s> otherwise"})
    parser.add_argument("--step", choices=["all", "1", "2"], default="all",
                        help="all: step 1 then every step-2 cell; 1: step 1 alone; 2: one step-2 cell (default all)")
    parser.add_argument("--step1_run", type=Path, default=None, help="--step 2: the step-1 folder to start from")
    parser.add_argument("--step1_epoch", type=step1_epoch_argument, default=None,
                        help="--step 2: the step-1 epoch (a number, best or last)")
    parser.add_argument("--classifier", default=None, help="--step 2: the classifier (a name of step2.classifiers)")
    parser.add_argument("--weight", type=weight_argument, default=None,
                        help="--step 2: the weight (a number >= 0, mgda or mgda:norm)")
    parser.add_argument("--summarize", type=Path, default=None, metavar="RUN_DIR",
                        help="rebuild RUN_DIR's metrics table and Pareto flags from its cells, and its figure")
    gasten_summarize_seeds.add_seed_arguments(parser, required=False)
    parser.add_argument("--tensorboard", action="store_true",
                        help="also write TensorBoard event files beside the CSV logs (needs the tensorboard package)")
    parser.add_argument("--inception_weights", type=Path, default=None, metavar="PATH",
                        help="a local file of the standard FID Inception-v3 weights (as torch-fidelity's "
                             "FeatureExtractorInceptionV3 loads them): also score the Inception FID (fid_inception)")
    add_shared_arguments(parser, "data_root", data_root=TORCHVISION_ROOT)
    add_device_argument(parser)
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    if args.summarize is not None and args.summarize_seeds is not None:
        parser.error("give --summarize RUN_DIR or --summarize_seeds RUN_DIR ..., not both")
    if args.summarize is None and args.summarize_seeds is None and args.config is None:
        parser.error("give --config (or --summarize RUN_DIR, or --summarize_seeds RUN_DIR ...)")
    cell = (args.step1_epoch, args.classifier, args.weight)
    if args.step == "2" and (args.step1_run is None or None in cell):
        parser.error("--step 2 runs one cell: give --step1_run, --step1_epoch, --classifier and --weight")
    return args


# ----------------------------------------------------------------------------- the config

def weight_argument(text: str) -> ConfusionWeight:
    """argparse type of --weight."""
    try:
        return ConfusionWeight.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def step1_epoch_argument(text: str) -> int | str:
    """argparse type of --step1_epoch: a number >= 0, best or last."""
    if text in ("best", "last"):
        return text
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"a step-1 epoch is a number >= 0, best or last, got {text!r}")
    return int(text)


def load_config(args: argparse.Namespace) -> dict:
    """The config over the defaults, with the overrides and --seed (`step1: FOLDER` means step1.run), every field
    checked (SCHEMA, then the lists), and step2.weights as ConfusionWeights."""
    config = read_config(args.config, DEFAULTS, args.overrides, shorthands={"step1": "run"})
    if args.seed is not None:
        config["training"]["seed"] = args.seed
    config["name"] = config["name"] or Path(args.config).stem
    config["dataset"]["name"] = str(config["dataset"]["name"]).lower()
    check_fields(config, SCHEMA)
    if config["test_noise_samples"] > TEST_NOISE_SAMPLES:
        raise ConfigError("test_noise_samples", f"must be at most {TEST_NOISE_SAMPLES} (the cached test noise), "
                                                f"got {config['test_noise_samples']!r}")
    for key in ("step1_epochs", "weights", "classifiers"):
        if not isinstance(config["step2"][key], list) or not config["step2"][key]:
            raise ConfigError(f"step2.{key}", f"must be a non-empty list, got {config['step2'][key]!r}")
    for epoch in config["step2"]["step1_epochs"]:
        if epoch not in ("best", "last") and not (isinstance(epoch, int) and 0 <= epoch):
            raise ConfigError("step2.step1_epochs", f"an epoch is a number, best or last, got {epoch!r}")
    try:
        config["step2"]["weights"] = [ConfusionWeight.parse(w) for w in config["step2"]["weights"]]
    except ValueError as error:
        raise ConfigError("step2.weights", str(error)) from None
    return config


def validate(config: dict, args: argparse.Namespace) -> None:
    """What a run needs beyond its config's own fields, checked before any data is loaded or any network
    trained: the classifiers, and the step-1 checkpoints each step-2 cell starts from. Each failure is a
    one-line error."""
    names = list(config["step2"]["classifiers"]) + ([args.classifier] if args.step == "2" else [])
    for name in names:
        if not (classifier_path(config, args.results_dir, name) / "classifier.pt").is_file():
            raise UserInputError(f"no classifier {name} (looked in {classifier_path(config, args.results_dir, name)});"
                                 f" make it with gasten_train_classifiers.py")
    if args.step == "2":
        step1_checkpoint(args.step1_run, args.step1_epoch)
    elif args.step == "all" and config["step1"]["run"] is not None:
        for epoch in config["step2"]["step1_epochs"]:
            step1_checkpoint(Path(config["step1"]["run"]), epoch)
    elif args.step == "all":
        step1 = config["step1"]
        saved = {0, step1["epochs"], *range(step1["checkpoint_every"], step1["epochs"] + 1, step1["checkpoint_every"])}
        for epoch in config["step2"]["step1_epochs"]:
            if isinstance(epoch, int) and epoch not in saved:
                raise ConfigError("step2.step1_epochs", f"step 1 checkpoints epochs {sorted(saved)}, not {epoch} "
                                                        f"(step1.epochs, step1.checkpoint_every)")


# ----------------------------------------------------------------------------- figures

def plot_sorted_samples(images: torch.Tensor, probabilities: torch.Tensor, title: str, per_column: int = 10) -> plt.Figure:
    """Generated images in 10 columns by C(G(z)): [0, 0.1), ..., [0.9, 1]; up to `per_column` each."""
    fig, axes = plt.subplots(per_column, 10, figsize=(8, 8.6), squeeze=False)
    for column in range(10):
        members = ((probabilities >= column / 10) & ((probabilities < (column + 1) / 10) | (column == 9))).nonzero().flatten()
        for row in range(per_column):
            ax = axes[row, column]
            ax.set_xticks([])
            ax.set_yticks([])
            if row < len(members):
                ax.imshow(images[members[row], 0].cpu(), cmap="gray", vmin=-1, vmax=1)
        axes[0, column].set_title(f"{column / 10:.1f}-{(column + 1) / 10:.1f}\n(n={len(members)})", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(wspace=0.05, hspace=0.05)
    return fig


def plot_histogram(probabilities: torch.Tensor, title: str) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.hist(probabilities.cpu().numpy(), bins=np.linspace(0, 1, 41))
    ax.set_xlabel("C(G(z))")
    ax.set_ylabel("generated samples")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_fid_against_acd(rows: list[dict[str, Any]], title: str) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    pareto = pareto_efficient([[r["fid_own_features"], r["acd"]] for r in rows])
    for row, efficient in zip(rows, pareto):
        ax.scatter(row["fid_own_features"], row["acd"], color="tab:red" if efficient else "tab:blue", s=20)
        ax.annotate(f"{row['classifier']} {row['weight']} @{int(row['step1_epoch'])}", (row["fid_own_features"], row["acd"]),
                    fontsize=6)
    ax.set_xlabel("FID (own features)")
    ax.set_ylabel("ACD = mean |0.5 - C(G(z))|")
    ax.set_title(f"{title} (red: Pareto-efficient)", fontsize=9)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- the run

@dataclass
class Run:
    """What every step of one config shares: its folders, the pair's data, the test noise, the Frechet metrics
    (their real statistics computed once), the settings every checkpoint records, and the TensorBoard writer."""
    config: dict
    results_dir: Path
    device: torch.device
    folder: Path
    figures: Path
    pair: str                               # <dataset>_<pos>v<neg>, the statistics' label
    data: PairData
    noise: torch.Tensor                     # [test_noise_samples, 64]
    statistics: Path
    own_features: FrechetInceptionDistance
    inception: FrechetInceptionDistance | None
    settings: dict
    summary_writer_class: type | None


def prepare_run(config: dict, args: argparse.Namespace, device: torch.device) -> Run:
    """The flags' own needs first (the tensorboard package, the Inception weights), then the pair's data, the
    test noise and the feature CNN of "FID (own features)" (trained here on first use, which it says)."""
    summary_writer_class = None
    if args.tensorboard:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:
            raise UserInputError("--tensorboard needs the tensorboard package: pip install tensorboard") from error
        summary_writer_class = SummaryWriter
    inception = inception_features(args.inception_weights, device) if args.inception_weights else None
    dataset = config["dataset"]
    pair = f"{dataset['name']}_{dataset['pos']}v{dataset['neg']}"
    folder_name = run_folder_name(config["name"], config["training"]["seed"])
    folder = gasten_path(args.results_dir, "run", folder_name)
    data = load_pair(dataset["name"], dataset["pos"], dataset["neg"], args.data_root, device)
    noise = fixed_test_noise(args.results_dir, config["test_noise_seed"], device)[:config["test_noise_samples"]]
    statistics = gasten_path(args.results_dir, "statistics")
    own_features = frechet_metric(feature_cnn(dataset["name"], args.data_root, args.results_dir, device),
                                  data.train_x, statistics, f"{pair}_own_features")
    inception = None if inception is None else frechet_metric(inception, data.train_x, statistics, f"{pair}_inception")
    return Run(config=config, results_dir=args.results_dir, device=device, folder=folder,
               figures=gasten_path(args.figures_dir, "run_figures", folder_name), pair=pair, data=data, noise=noise,
               statistics=statistics, own_features=own_features, inception=inception,
               settings={**run_settings(args, device), "config": config, "run_folder": str(folder)},
               summary_writer_class=summary_writer_class)


def make_scorer(run: Run, classifier_name: str) -> Scorer:
    classifier = load_classifier(classifier_path(run.config, run.results_dir, classifier_name), run.device)
    embedding = Embedding(classifier, classifier.output.in_features)
    label = f"{run.pair}_{Path(classifier_name).name}"
    return Scorer(run.noise, classifier, run.own_features,
                  frechet_metric(embedding, run.data.train_x, run.statistics, label), run.inception)


def new_gan(run: Run) -> GAN:
    training = run.config["training"]
    return make_gan(run.config["model"]["loss"], run.device, training["seed"], training["lr"],
                    (training["beta1"], training["beta2"]), run.config["model"]["gp_lambda"])


def train(run: Run, folder: Path, epochs: int, checkpoint_every: int, scorer: Scorer, start: Path | None,
          classifier: str | None = None, weight: ConfusionWeight = NO_CONFUSION,
          keep_optimizer_state: bool = False) -> None:
    """Train into `folder` up to `epochs`, resuming from its last checkpoint (optimisers included), else
    from `start`'s weights with fresh optimisers (its optimiser states too with `keep_optimizer_state`),
    or from an untrained GAN, saved as epoch 0; the metrics rows to folder/metrics.csv, then its figures."""
    gan, rows, first = new_gan(run), [], 0
    seed = run.config["training"]["seed"]
    noise_rng = torch.Generator().manual_seed(seed)
    resumed = resume_checkpoint(gan, folder, seed, noise_rng)
    if resumed is not None:
        first, rows = resumed
        print(f"resuming {folder} after epoch {first}")
    elif start is not None:
        load_gan(gan, start, optimizers=keep_optimizer_state)
    else:
        rows = [{"epoch": 0, **scorer(gan.generator), "discriminator_loss": float("nan"),
                 "generator_loss": float("nan"), "confusion": float("nan"), "mgda_s": float("nan")}]
        save_gan(gan, folder / "epoch_00", {**run.settings, "epoch": 0, "rows": rows,
                                            "noise_rng": noise_rng.get_state().tolist()})
    writer = run.summary_writer_class(log_dir=str(folder / "tensorboard")) if run.summary_writer_class else None

    def log(row: dict[str, Any]) -> None:
        write_metrics_csv(rows, folder / "metrics.csv")
        if writer is not None:
            for key, value in row.items():
                if key != "epoch":
                    writer.add_scalar(key, value, row["epoch"])
        inception = f", FID (Inception) {row['fid_inception']:.2f}" if "fid_inception" in row else ""
        print(f"  {folder.relative_to(run.folder)} epoch {row['epoch']}: ACD {row['acd']:.4f}, "
              f"FID (own features) {row['fid_own_features']:.2f}, FID (classifier) {row['fid_classifier']:.3f}"
              f"{inception}")

    classifier_model = scorer.classifier if classifier is not None else None
    run_epochs(gan, run.data.train_x, folder, first, epochs, checkpoint_every,
               {**run.settings, "classifier": classifier, "weight": weight}, scorer, rows, noise_rng,
               run.config["training"]["batch_size"], classifier_model, weight, log)
    write_metrics_csv(rows, folder / "metrics.csv")
    if writer is not None:
        writer.close()
    draw_cell(run, gan, scorer, folder)


def draw_cell(run: Run, gan: GAN, scorer: Scorer, folder: Path) -> None:
    images = generate(gan.generator, run.noise)
    with torch.no_grad():
        probabilities = scorer.classifier(images)
    name = folder.relative_to(run.folder).as_posix().replace("/", "_")
    title = f"{run.config['name']}: {folder.relative_to(run.folder)}"
    save_figure(plot_sorted_samples(images, probabilities, title), run.figures / f"{name}_samples")
    save_figure(plot_histogram(probabilities, title), run.figures / f"{name}_histogram")


def step1(run: Run) -> Path:
    """The step-1 folder: trained (or resumed) here, or the one step1.run names."""
    section = run.config["step1"]
    if section["run"] is not None:
        folder = Path(section["run"])
        if not epoch_folders(folder):
            raise UserInputError(f"step1.run {folder} holds no epoch_<e>/generator.pt checkpoints")
        return folder
    folder = run.folder / "step1"
    print(f"step 1: {section['epochs']} epochs into {folder}")
    scorer = make_scorer(run, run.config["step2"]["classifiers"][0])
    train(run, folder, section["epochs"], section["checkpoint_every"], scorer, start=None)
    return folder


def step2_cell(run: Run, step1_folder: Path, step1_epoch: int | str, classifier: str, weight: ConfusionWeight) -> None:
    """One step-2 cell from the step-1 checkpoint of `step1_epoch` (a number, best or last)."""
    epoch, start = step1_checkpoint(step1_folder, step1_epoch)
    folder = run.folder / "step2" / Step2Cell(Path(classifier).name, weight, epoch).folder_name()
    section = run.config["step2"]
    print(f"step 2: {folder.name}, {section['epochs']} epochs")
    train(run, folder, section["epochs"], section["checkpoint_every"], make_scorer(run, classifier), start,
          classifier, weight, section["keep_optimizer_state"])


def summarize(run_folder: Path, figures_dir: Path) -> list[dict[str, Any]]:
    """The last epoch of every step-2 cell under `run_folder`, with Pareto flags, to run_folder/metrics.csv."""
    rows = [{"classifier": cell.classifier, "weight": cell.weight, "step1_epoch": cell.step1_epoch,
             **read_metrics_csv(path)[-1]} for cell, path in step2_metrics(run_folder)]
    for row in rows:
        row.pop("pareto", None)
    write_metrics_csv(rows, Path(run_folder) / "metrics.csv")
    save_figure(plot_fid_against_acd(rows, Path(run_folder).name),
                gasten_path(figures_dir, "run_figures", Path(run_folder).name) / "fid_against_acd")
    return rows


def main(args: argparse.Namespace) -> None:
    if args.summarize_seeds is not None:
        gasten_summarize_seeds.main(args)
        return
    if args.summarize is not None:
        rows = summarize(args.summarize, args.figures_dir)
        print(f"{len(rows)} cells summarised into {args.summarize / 'metrics.csv'}")
        return
    config = load_config(args)
    device = resolve_device(args.device)
    validate(config, args)                      # before any data is read or network trained
    run = prepare_run(config, args, device)
    if args.step == "2":                        # one cell, e.g. of a sweep
        step2_cell(run, args.step1_run, args.step1_epoch, args.classifier, args.weight)
        return
    step1_folder = step1(run)
    if args.step == "1":
        return
    step2 = config["step2"]
    for step1_epoch, classifier, weight in itertools.product(step2["step1_epochs"], step2["classifiers"],
                                                             step2["weights"]):
        step2_cell(run, step1_folder, step1_epoch, classifier, weight)
    rows = summarize(run.folder, args.figures_dir)
    print("cell                         ACD     FID (own features)  Pareto")
    for row, flag in zip(rows, pareto_efficient([[r["fid_own_features"], r["acd"]] for r in rows])):
        print(f"  {row['classifier']:<10} {str(row['weight']):<8} @{row['step1_epoch']:<4} {row['acd']:.4f}  "
              f"{row['fid_own_features']:10.2f}  {'yes' if flag else ''}")


if __name__ == "__main__":
    run_script(main, parse_args)
