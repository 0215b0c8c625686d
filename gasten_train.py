"""GASTeN, steps 1 and 2: a DCGAN, then the same GAN pushed towards a classifier's decision boundary.

    python gasten_train.py --config configs/gasten/mnist_7v1.yaml          # step 1, then every step-2 cell

Step 1 trains a plain GAN (or WGAN-GP) for step1.epochs, checkpointing every step1.checkpoint_every epochs
and the untrained epoch 0; an interrupted run resumes from its last checkpoint (step1.run may instead name
an existing step-1 folder). Step 2, for every step-1 epoch in step2.step1_epochs (numbers, best = lowest
FID, last), classifier in step2.classifiers and weight in step2.weights (numbers, mgda, mgda:norm), starts
from that checkpoint's G and D with fresh Adam optimisers, as the original (step2.keep_optimizer_state: true
carries step 1's Adam states over), and trains step2.epochs with the confusion term; an interrupted step-2
cell resumes with its own optimiser states. After every epoch the generator is scored on a fixed test noise
(the first test_noise_samples of 2048 x 64): ACD, "FID (own features)" and the Frechet distance in the classifier's embedding. One cell at a
time: --step 1, or --step 2 --step1_run DIR --step1_epoch E --classifier NAME --weight W; --summarize RUN_DIR
rebuilds a run's table and Pareto flags from its cells.

    python gasten_train.py --summarize_seeds Results/gasten/mnist_7v1_seeds Results/gasten/mnist_7v1_seeds_seed1 ...

--summarize_seeds RUN_DIR ... builds the study over seeds from the run folders of one config (one per GAN seed):
per classifier and weight, each seed and the mean and std over the seeds of the ACD after every step-2 epoch,
the last epoch's FID (own features) and discriminator loss (from the cells' metrics.csv), the ambiguous count
of --ambiguous_samples samples (C in [0.4, 0.6], counted from the cell's last checkpoint and kept in the cell's
ambiguity.json) and the classifier's real test images in that band, and the collapse verdict
(hardness.gasten.collapsed); to <results_dir>/gasten/<name>_over_seeds/over_seeds.{csv,md} and the figure
<figures_dir>/gasten/<name>_over_seeds/over_seeds.{png,pdf}.

Every seed (--seed or training.seed) has its own run folder <run>: <name> for seed 0, <name>_seed<s> for seed
s. Writes <results_dir>/gasten/<run>/step1/epoch_<ee>/{generator,discriminator,optimizers}.pt + config.json,
.../step2/<classifier>_<weight>_<step1 epoch>/epoch_<ee>/..., a metrics.csv per run and cell, the run's
metrics.csv (the last epoch of every cell, with a Pareto flag over FID and ACD), and figures under
<figures_dir>/gasten/<run>/: the samples sorted by C(G(z)) in 10 probability columns and a histogram of
C(G(z)) per cell, and FID against ACD over the cells (PNG and PDF).
"""
import argparse
import json
import math
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch

from hardness.config import ConfigError, check_choice, check_number, read_config
from hardness.gasten import (AMBIGUOUS_HALF_WIDTH, AMBIGUOUS_NOISE_SEED, AMBIGUOUS_SAMPLES, COLLAPSE_DISCRIMINATOR_LOSS,
                             COLLAPSE_FID, GAN, TEST_NOISE_SAMPLES, Embedding, PairData, Scorer, ambiguous_count,
                             classifier_path, epoch_folders, feature_cnn, fixed_test_noise, frechet_metric, generate,
                             in_ambiguous_band, inception_features, load_classifier, load_gan, load_pair, make_gan,
                             over_seeds, pareto_efficient, read_metrics_csv, run_epochs, run_folder_name, run_seed,
                             save_gan, shared_config_name, step1_checkpoint, write_metrics_csv)
from hardness.results import write_csv
from hardness.prediction import predict
from utils import (UserInputError, add_device_argument, add_output_arguments, gasten_path, non_negative_int,
                   positive_int, resolve_device, run_script, run_settings, save_figure, write_atomically)

DEFAULTS: dict[str, Any] = {
    "name": None,
    "dataset": {"name": "mnist", "pos": 7, "neg": 1},
    "model": {"loss": "gan", "gp_lambda": 10.0},
    "training": {"batch_size": 64, "lr": 0.0002, "beta1": 0.5, "beta2": 0.999, "seed": 0},
    "step1": {"epochs": 10, "checkpoint_every": 1, "run": None},
    "step2": {"epochs": 40, "checkpoint_every": 10, "step1_epochs": [0, 2, 5, 10],
              "weights": [0, "mgda", 5, 10, 15, 20, 25, 30], "classifiers": ["cnn-1-1.0", "cnn-2-1.0", "cnn-4-1.0"],
              "keep_optimizer_state": False},
    "test_noise_seed": 0,
    "test_noise_samples": TEST_NOISE_SAMPLES,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="YAML file of the run (see configs/gasten/); needed unless --summarize")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config field, e.g. --set step2.epochs=5 (repeatable)")
    parser.add_argument("--seed", type=non_negative_int, default=None, help="training.seed (default: the config's); every seed has its own run folder, "
                             "<name> for seed 0, <name>_seed<s> otherwise")
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
    parser.add_argument("--summarize_seeds", type=Path, nargs="+", default=None, metavar="RUN_DIR",
                        help="the study over seeds from the run folders of one config, one per GAN seed (<name>, "
                             "<name>_seed<s>): the table (CSV and markdown) and its figure")
    parser.add_argument("--ambiguous_samples", type=positive_int, default=AMBIGUOUS_SAMPLES,
                        help=f"--summarize_seeds: samples of each cell's last generator whose C in [0.4, 0.6] are "
                             f"counted (default {AMBIGUOUS_SAMPLES})")
    parser.add_argument("--tensorboard", action="store_true",
                        help="also write TensorBoard event files beside the CSV logs (needs the tensorboard package)")
    parser.add_argument("--inception_weights", type=Path, default=None, metavar="PATH",
                        help="a local file of the standard FID Inception-v3 weights (as torch-fidelity's "
                             "FeatureExtractorInceptionV3 loads them): also score the Inception FID (fid_inception)")
    parser.add_argument("--data_root", type=Path, default=Path("./data"), help="torchvision's layout (default ./data)")
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

def parse_weight(weight: Any) -> float | str:
    """A weight of the confusion term: a number >= 0, mgda or mgda:norm; a ValueError says what is wrong."""
    if weight in ("mgda", "mgda:norm"):
        return weight
    try:
        value = float(weight)
    except (TypeError, ValueError):
        raise ValueError(f"a weight is a number, mgda or mgda:norm, got {weight!r}") from None
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"a weight must be a finite number >= 0, got {weight!r}")
    return value


def weight_argument(text: str) -> float | str:
    """argparse type of --weight."""
    try:
        return parse_weight(text)
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
    """The config over the defaults, with the overrides and --seed; `step1: FOLDER` means step1.run."""
    config = read_config(args.config, DEFAULTS, args.overrides, shorthands={"step1": "run"})
    if args.seed is not None:
        config["training"]["seed"] = args.seed
    config["name"] = config["name"] or Path(args.config).stem
    config["dataset"]["name"] = str(config["dataset"]["name"]).lower()
    check_choice(config, "dataset.name", ["mnist", "fashionmnist"])
    for field in ("dataset.pos", "dataset.neg", "training.seed", "test_noise_seed"):
        check_number(config, field, 0, integer=True)
    check_number(config, "test_noise_samples", 2, integer=True)
    if config["test_noise_samples"] > TEST_NOISE_SAMPLES:
        raise ConfigError("test_noise_samples", f"must be at most {TEST_NOISE_SAMPLES} (the cached test noise), "
                                                f"got {config['test_noise_samples']!r}")
    check_choice(config, "model.loss", ["gan", "wgan-gp"])
    check_number(config, "model.gp_lambda", 0)
    for field in ("training.batch_size", "step1.epochs", "step1.checkpoint_every", "step2.epochs",
                  "step2.checkpoint_every"):
        check_number(config, field, 1, integer=True)
    for field in ("training.lr", "training.beta1", "training.beta2"):
        check_number(config, field, 0)
    if not isinstance(config["step2"]["keep_optimizer_state"], bool):
        raise ConfigError("step2.keep_optimizer_state", f"must be true or false, got "
                                                        f"{config['step2']['keep_optimizer_state']!r}")
    for key in ("step1_epochs", "weights", "classifiers"):
        if not isinstance(config["step2"][key], list) or not config["step2"][key]:
            raise ConfigError(f"step2.{key}", f"must be a non-empty list, got {config['step2'][key]!r}")
    for epoch in config["step2"]["step1_epochs"]:
        if epoch not in ("best", "last") and not (isinstance(epoch, int) and 0 <= epoch):
            raise ConfigError("step2.step1_epochs", f"an epoch is a number, best or last, got {epoch!r}")
    try:
        config["step2"]["weights"] = [parse_weight(w) for w in config["step2"]["weights"]]
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

class Run:
    """What every step of one config shares: data, the test noise, the feature extractors, the log."""

    def __init__(self, config: dict, args: argparse.Namespace, device: torch.device) -> None:
        """Checks the config and flags (validate) and loads the Inception weights before it loads the data and
        prepares the extractors."""
        validate(config, args)
        self.config, self.args, self.device = config, args, device
        self.summary_writer_class = None
        if args.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as error:
                raise UserInputError("--tensorboard needs the tensorboard package: pip install tensorboard") from error
            self.summary_writer_class = SummaryWriter
        inception = inception_features(args.inception_weights, device) if args.inception_weights else None
        dataset = config["dataset"]
        self.pair = f"{dataset['name']}_{dataset['pos']}v{dataset['neg']}"
        folder_name = run_folder_name(config["name"], config["training"]["seed"])
        self.folder = gasten_path(args.results_dir, "run", folder_name)
        self.figures = gasten_path(args.figures_dir, "run_figures", folder_name)
        self.data = load_pair(dataset["name"], dataset["pos"], dataset["neg"], args.data_root, device)
        self.noise = fixed_test_noise(args.results_dir, config["test_noise_seed"], device)[:config["test_noise_samples"]]
        self.stats = gasten_path(args.results_dir, "statistics")
        self.own_features = frechet_metric(feature_cnn(dataset["name"], args.data_root, args.results_dir, device),
                                           self.data.train_x, self.stats, f"{self.pair}_own_features")
        self.inception = None if inception is None else frechet_metric(inception, self.data.train_x, self.stats,
                                                                        f"{self.pair}_inception")
        self.settings = {**run_settings(args, device), "config": config, "run_folder": str(self.folder)}

    def scorer(self, classifier_name: str) -> Scorer:
        classifier = load_classifier(classifier_path(self.config, self.args.results_dir, classifier_name), self.device)
        embedding = Embedding(classifier, classifier.output.in_features)
        return Scorer(self.noise, classifier, self.own_features,
                      frechet_metric(embedding, self.data.train_x, self.stats, f"{self.pair}_{Path(classifier_name).name}"),
                      self.inception)

    def new_gan(self) -> GAN:
        training = self.config["training"]
        return make_gan(self.config["model"]["loss"], self.device, training["seed"], training["lr"],
                        (training["beta1"], training["beta2"]), self.config["model"]["gp_lambda"])

    def train(self, folder: Path, epochs: int, checkpoint_every: int, scorer: Scorer, start: Path | None,
              classifier: str | None = None, weight: float | str = 0.0,
              keep_optimizer_state: bool = False) -> list[dict[str, Any]]:
        """Train into `folder` up to `epochs`, resuming from its last checkpoint (optimisers included), else
        from `start`'s weights with fresh optimisers (its optimiser states too with `keep_optimizer_state`),
        or from an untrained GAN, saved as epoch 0; the metrics rows, also written to folder/metrics.csv."""
        gan, rows = self.new_gan(), []
        seed = self.config["training"]["seed"]
        noise_rng = torch.Generator().manual_seed(seed)
        done = epoch_folders(folder)
        if done:
            last = max(done)
            saved = json.loads((done[last] / "config.json").read_text())
            saved_seed = saved["config"]["training"]["seed"]
            if saved_seed != seed:
                raise UserInputError(f"{folder} holds a run of seed {saved_seed}, not {seed}: give it another "
                                     f"--results_dir or name")
            load_gan(gan, done[last])
            rows, first = saved["rows"], last
            noise_rng.set_state(torch.tensor(saved["noise_rng"], dtype=torch.uint8))
            print(f"resuming {folder} after epoch {last}")
        else:
            first = 0
            if start is not None:
                load_gan(gan, start, optimizers=keep_optimizer_state)
            else:
                rows = [{"epoch": 0, **scorer(gan.generator), "discriminator_loss": float("nan"),
                         "generator_loss": float("nan"), "confusion": float("nan"), "mgda_s": float("nan")}]
                save_gan(gan, folder / "epoch_00", {**self.settings, "epoch": 0, "rows": rows,
                                                    "noise_rng": noise_rng.get_state().tolist()})
        writer = self.summary_writer_class(log_dir=str(folder / "tensorboard")) if self.summary_writer_class else None

        def log(row: dict[str, Any]) -> None:
            write_metrics_csv(rows, folder / "metrics.csv")
            if writer is not None:
                for key, value in row.items():
                    if key != "epoch":
                        writer.add_scalar(key, value, row["epoch"])
            inception = f", FID (Inception) {row['fid_inception']:.2f}" if "fid_inception" in row else ""
            print(f"  {folder.relative_to(self.folder)} epoch {row['epoch']}: ACD {row['acd']:.4f}, "
                  f"FID (own features) {row['fid_own_features']:.2f}, FID (classifier) {row['fid_classifier']:.3f}"
                  f"{inception}")

        classifier_model = scorer.classifier if classifier is not None else None
        run_epochs(gan, self.data.train_x, folder, first, epochs, checkpoint_every,
                   {**self.settings, "classifier": classifier, "weight": weight}, scorer, rows, noise_rng,
                   self.config["training"]["batch_size"], classifier_model, weight, log)
        write_metrics_csv(rows, folder / "metrics.csv")
        if writer is not None:
            writer.close()
        self.draw_cell(gan, scorer, folder)
        return rows

    def draw_cell(self, gan: GAN, scorer: Scorer, folder: Path) -> None:
        images = generate(gan.generator, self.noise)
        with torch.no_grad():
            probabilities = scorer.classifier(images)
        name = folder.relative_to(self.folder).as_posix().replace("/", "_")
        title = f"{self.config['name']}: {folder.relative_to(self.folder)}"
        save_figure(plot_sorted_samples(images, probabilities, title), self.figures / f"{name}_samples")
        save_figure(plot_histogram(probabilities, title), self.figures / f"{name}_histogram")

    def step1(self) -> Path:
        """The step-1 folder: trained (or resumed) here, or the one step1.run names."""
        step1 = self.config["step1"]
        if step1["run"] is not None:
            folder = Path(step1["run"])
            if not epoch_folders(folder):
                raise UserInputError(f"step1.run {folder} holds no epoch_<e>/generator.pt checkpoints")
            return folder
        folder = self.folder / "step1"
        print(f"step 1: {step1['epochs']} epochs into {folder}")
        self.train(folder, step1["epochs"], step1["checkpoint_every"], self.scorer(self.config["step2"]["classifiers"][0]),
                   start=None)
        return folder

    def step2_cell(self, step1_folder: Path, step1_epoch: int | str, classifier: str, weight: float | str) -> dict:
        epoch, start = step1_checkpoint(step1_folder, step1_epoch)
        weight_name = weight if isinstance(weight, str) else f"{weight:g}"
        folder = self.folder / "step2" / f"{Path(classifier).name}_{weight_name}_{epoch}"
        step2 = self.config["step2"]
        print(f"step 2: {folder.name}, {step2['epochs']} epochs")
        rows = self.train(folder, step2["epochs"], step2["checkpoint_every"], self.scorer(classifier), start,
                          classifier, weight, step2["keep_optimizer_state"])
        return {"classifier": Path(classifier).name, "weight": weight_name, "step1_epoch": epoch, **rows[-1]}


def summarize(run_folder: Path, figures_dir: Path) -> list[dict[str, Any]]:
    """The last epoch of every step-2 cell under `run_folder`, with Pareto flags, to run_folder/metrics.csv."""
    rows = []
    for cell in sorted((Path(run_folder) / "step2").glob("*/metrics.csv")):
        classifier, weight, step1_epoch = cell.parent.name.rsplit("_", 2)
        rows.append({"classifier": classifier, "weight": weight, "step1_epoch": int(step1_epoch),
                     **read_metrics_csv(cell)[-1]})
    if not rows:
        raise UserInputError(f"no step-2 cells with a metrics.csv under {run_folder}/step2")
    for row in rows:
        row.pop("pareto", None)
    write_metrics_csv(rows, Path(run_folder) / "metrics.csv")
    save_figure(plot_fid_against_acd(rows, Path(run_folder).name),
                gasten_path(figures_dir, "run_figures", Path(run_folder).name) / "fid_against_acd")
    return rows


# ----------------------------------------------------------------------------- the study over seeds

def cell_ambiguity(cell: Path, epoch: int, n_samples: int, data_root: Path, device: torch.device,
                   pairs: dict[tuple, PairData]) -> dict[str, Any]:
    """A step-2 cell's ambiguous count of `n_samples` samples of its generator at `epoch` and its classifier's
    real test images in the same band: read from cell/ambiguity.json when it holds that epoch and sample
    count, else counted from the checkpoint and written there. `pairs` keeps the loaded test images."""
    path = cell / "ambiguity.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        if (saved["epoch"], saved["samples"], saved["noise_seed"]) == (epoch, n_samples, AMBIGUOUS_NOISE_SEED):
            return saved
    checkpoint = epoch_folders(cell).get(epoch)
    if checkpoint is None:
        raise UserInputError(f"{cell} has no checkpoint of its last epoch {epoch} (epoch_<e>/generator.pt) to count "
                             f"its ambiguous samples from")
    settings = json.loads((checkpoint / "config.json").read_text())
    config = settings["config"]
    classifier = load_classifier(classifier_path(config, cell.parents[3], settings["classifier"]), device)
    gan = load_gan(make_gan(config["model"]["loss"], device, 0), checkpoint, optimizers=False)
    dataset = config["dataset"]
    key = (dataset["name"], dataset["pos"], dataset["neg"])
    if key not in pairs:
        pairs[key] = load_pair(*key, data_root, device)
    real = predict(classifier, pairs[key].test_x)                                                  # [test]
    counted = {"epoch": epoch, "samples": n_samples, "noise_seed": AMBIGUOUS_NOISE_SEED,
               "band": [0.5 - AMBIGUOUS_HALF_WIDTH, 0.5 + AMBIGUOUS_HALF_WIDTH],
               "ambiguous": ambiguous_count(gan.generator, classifier, n_samples),
               "real_in_band": int(in_ambiguous_band(real).sum()), "real_test_images": len(real)}
    write_atomically(path, (json.dumps(counted, indent=2) + "\n").encode())
    return counted


def seed_cells(run_folders: list[Path], n_samples: int, data_root: Path, device: torch.device) -> tuple[str, list[dict]]:
    """The config name shared by the run folders, and one dict per run and step-2 cell for over_seeds."""
    name = shared_config_name(run_folders)
    cells, pairs = [], {}
    for folder in run_folders:
        found = sorted((Path(folder) / "step2").glob("*/metrics.csv"))
        if not found:
            raise UserInputError(f"no step-2 cells with a metrics.csv under {folder}/step2")
        for path in found:
            classifier, weight, step1_epoch = path.parent.name.rsplit("_", 2)
            rows = sorted(read_metrics_csv(path), key=lambda row: row["epoch"])
            if [int(row["epoch"]) for row in rows] != list(range(1, len(rows) + 1)):
                raise UserInputError(f"{path} does not hold step-2 epochs 1 to {len(rows)}")
            ambiguity = cell_ambiguity(path.parent, len(rows), n_samples, data_root, device, pairs)
            cells.append({"classifier": classifier, "weight": weight, "step1_epoch": int(step1_epoch),
                          "seed": run_seed(folder)[1], "acd": [row["acd"] for row in rows],
                          "fid_own_features": rows[-1]["fid_own_features"],
                          "discriminator_loss": rows[-1]["discriminator_loss"], "ambiguous": ambiguity["ambiguous"],
                          "real_in_band": ambiguity["real_in_band"]})
    return name, cells


def _number(value: float, digits: int) -> str:
    return f"{value:,.{digits}f}"


def seeds_markdown(table: list[dict[str, Any]], n_samples: int) -> str:
    """Three markdown tables: mean ± std over seeds per classifier and weight, each seed, collapses per nf."""
    epochs = [column for column in table[0] if column.startswith("acd_epoch_")]
    digits = {**{column: 3 for column in epochs}, "fid_own_features": 1, "ambiguous": 1, "real_in_band": 1,
              "discriminator_loss": 4}
    heads = [f"ACD after epoch {column.removeprefix('acd_epoch_')}" for column in epochs] + [
        "FID (own features)", f"ambiguous of {n_samples:,}", "real test images in [0.4, 0.6]",
        "discriminator loss"]
    key = ("nf", "weight", "step-1 epoch")
    means = [row for row in table if row["statistic"] == "mean"]
    stds = [row for row in table if row["statistic"] == "std"]
    lines = ["| " + " | ".join([*key, "seeds", *heads, "collapsed"]) + " |", "|" + " --- |" * (len(key) + len(heads) + 2)]
    for mean, std in zip(means, stds):
        seeds = sum(1 for row in table if row["statistic"] == "seed" and row["classifier"] == mean["classifier"]
                    and row["weight"] == mean["weight"] and row["step1_epoch"] == mean["step1_epoch"])
        cells = [_number(mean[c], digits[c]) + ("" if math.isnan(std[c]) else f" ± {_number(std[c], digits[c])}")
                 for c in digits]
        lines.append(f"| {mean['nf']} | {mean['weight']} | {mean['step1_epoch']} | {seeds} | " + " | ".join(cells) +
                     f" | {mean['collapsed']} of {seeds} |")
    lines += ["", "| " + " | ".join([*key, "seed", *heads, "collapsed"]) + " |",
              "|" + " --- |" * (len(key) + len(heads) + 2)]
    for row in (row for row in table if row["statistic"] == "seed"):
        cells = [_number(row[c], 0 if c in ("ambiguous", "real_in_band") else digits[c]) for c in digits]
        lines.append(f"| {row['nf']} | {row['weight']} | {row['step1_epoch']} | {row['seed']} | " + " | ".join(cells) +
                     f" | {'yes' if row['collapsed'] else 'no'} |")
    lines += ["", f"Collapsed: discriminator loss in the last epoch below {COLLAPSE_DISCRIMINATOR_LOSS:g} and FID (own "
                  f"features) above {COLLAPSE_FID:g}.", "", "| nf | runs | collapsed |", "| --- | ---: | ---: |"]
    for nf in sorted({row["nf"] for row in means}):
        runs = [row for row in table if row["statistic"] == "seed" and row["nf"] == nf]
        lines.append(f"| {nf} | {len(runs)} | {sum(row['collapsed'] for row in runs)} |")
    return "\n".join(lines) + "\n"


def plot_over_seeds(table: list[dict[str, Any]], title: str) -> plt.Figure:
    """A panel per nf: ACD after every step-2 epoch per weight, the mean over seeds with a band of ± one std and
    each seed thin; and FID (own features) against the last ACD of every seed's cell, collapsed ones crossed."""
    seeds = [row for row in table if row["statistic"] == "seed"]
    nfs = sorted({row["nf"] for row in seeds})
    weights = list(dict.fromkeys(row["weight"] for row in seeds))
    epochs = [column for column in table[0] if column.startswith("acd_epoch_")]
    x = np.arange(1, len(epochs) + 1)
    fig, axes = plt.subplots(1, len(nfs) + 1, figsize=(3.6 * (len(nfs) + 1), 3.4), squeeze=False)
    colours = {weight: f"C{i}" for i, weight in enumerate(weights)}
    for ax, nf in zip(axes[0], nfs):
        for row in (r for r in table if r["nf"] == nf and r["statistic"] == "mean"):
            std = next(r for r in table if r["statistic"] == "std" and r["classifier"] == row["classifier"]
                       and r["weight"] == row["weight"] and r["step1_epoch"] == row["step1_epoch"])
            mean, spread = np.array([row[c] for c in epochs]), np.nan_to_num([std[c] for c in epochs])
            colour = colours[row["weight"]]
            ax.plot(x, mean, color=colour, marker="o", ms=3, label=f"weight {row['weight']}")
            ax.fill_between(x, mean - spread, mean + spread, color=colour, alpha=0.2)
            for seed in (r for r in seeds if r["classifier"] == row["classifier"] and r["weight"] == row["weight"]
                         and r["step1_epoch"] == row["step1_epoch"]):
                ax.plot(x, [seed[c] for c in epochs], color=colour, lw=0.6, alpha=0.6)
        ax.set_title(f"nf {nf}", fontsize=9)
        ax.set_xlabel("step-2 epoch")
        ax.set_xticks(x)
        ax.set_ylim(0, 0.5)
    axes[0, 0].set_ylabel("ACD (band: ± one std over seeds)")
    axes[0, 0].legend(fontsize=7)
    ax, markers = axes[0, -1], "os^Dv<>"
    nf_colours = {nf: f"C{len(weights) + i}" for i, nf in enumerate(nfs)}      # not the weights' colours
    for row in seeds:
        ax.scatter(row["fid_own_features"], row[epochs[-1]], color=nf_colours[row["nf"]],
                   marker=markers[weights.index(row["weight"]) % len(markers)], s=22)
        if row["collapsed"]:
            ax.scatter(row["fid_own_features"], row[epochs[-1]], color="black", marker="x", s=50)
    handles = [plt.Line2D([], [], color=nf_colours[nf], marker="o", ls="", label=f"nf {nf}") for nf in nfs] + \
              [plt.Line2D([], [], color="grey", marker=markers[i % len(markers)], ls="", label=f"weight {weight}")
               for i, weight in enumerate(weights)] + \
              [plt.Line2D([], [], color="black", marker="x", ls="", label="collapsed")]
    ax.legend(handles=handles, fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("FID (own features)")
    ax.set_ylabel(f"ACD after epoch {len(epochs)}")
    ax.set_title("every seed's cells", fontsize=9)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def summarize_seeds(run_folders: list[Path], results_dir: Path, figures_dir: Path, n_samples: int, data_root: Path,
                    device: torch.device) -> Path:
    """The study over seeds from the run folders: its table to CSV and markdown, and its figure; returns the
    markdown's path."""
    name, cells = seed_cells(run_folders, n_samples, data_root, device)
    table = over_seeds(cells)
    output = gasten_path(results_dir, "over_seeds", name)
    write_csv(table, output / "over_seeds.csv", missing=float("nan"))
    write_atomically(output / "over_seeds.md", seeds_markdown(table, n_samples).encode())
    save_figure(plot_over_seeds(table, f"{name}: {len(run_folders)} seeds"),
                gasten_path(figures_dir, "over_seeds_figure", name))
    return output / "over_seeds.md"


def main(args: argparse.Namespace) -> None:
    if args.summarize_seeds is not None:
        markdown = summarize_seeds(args.summarize_seeds, args.results_dir, args.figures_dir, args.ambiguous_samples,
                                   args.data_root, resolve_device(args.device))
        print(markdown.read_text() + f"written to {markdown} and {markdown.with_suffix('.csv')}")
        return
    if args.summarize is not None:
        rows = summarize(args.summarize, args.figures_dir)
        print(f"{len(rows)} cells summarised into {args.summarize / 'metrics.csv'}")
        return
    config = load_config(args)
    device = resolve_device(args.device)
    run = Run(config, args, device)
    if args.step == "2":
        run.step2_cell(args.step1_run, args.step1_epoch, args.classifier, args.weight)
        return
    step1_folder = run.step1()
    if args.step == "1":
        return
    step2 = config["step2"]
    for step1_epoch in step2["step1_epochs"]:
        for classifier in step2["classifiers"]:
            for weight in step2["weights"]:
                run.step2_cell(step1_folder, step1_epoch, classifier, weight)
    rows = summarize(run.folder, args.figures_dir)
    print("cell                         ACD     FID (own features)  Pareto")
    for row, flag in zip(rows, pareto_efficient([[r["fid_own_features"], r["acd"]] for r in rows])):
        print(f"  {row['classifier']:<10} {row['weight']:<8} @{row['step1_epoch']:<4} {row['acd']:.4f}  "
              f"{row['fid_own_features']:10.2f}  {'yes' if flag else ''}")


if __name__ == "__main__":
    run_script(main, parse_args)
