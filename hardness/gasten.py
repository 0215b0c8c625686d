"""GASTeN: a GAN whose generator is also pushed towards a classifier's decision boundary.

Binary classifiers under test see two classes of a dataset (`pos` = 1, `neg` = 0) scaled to [-1, 1].
Step 1 trains a plain DCGAN; step 2 continues from a step-1 checkpoint with the generator's loss
L_G = BCE(D(G(z)), 1) + alpha * mean |0.5 - C(G(z))|, C frozen, where the weight alpha is a number or chosen each
step by MGDA. Here: the pair's data, the classifiers under test, ACD = mean |0.5 - C(G(z))| (lower is closer
to the boundary), GAN training, its checkpoints and metrics CSVs. The names of runs, classifiers, weights and
step-2 cells are in hardness/gasten_names.py, the Frechet distances in hardness/gasten_metrics.py and the study
over seeds in hardness/gasten_seeds.py.
"""
import csv
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from hardness.cli import UserInputError
from hardness.data import load_source
from hardness.gasten_names import NO_CONFUSION, ConfusionWeight, Step2Cell, settings_json
from hardness.prediction import evaluating, predict
from hardness.results import gasten_path, write_atomically, write_csv
from neural_networks import DCGANDiscriminator, DCGANGenerator, PairClassifierCNN, PairClassifierMLP

PAIR_DATASETS = ("mnist", "fashionmnist")
CLASSIFIERS: dict[str, type[nn.Module]] = {"cnn": PairClassifierCNN, "mlp": PairClassifierMLP}
Z_DIM, TEST_NOISE_SAMPLES = 64, 2048


# ----------------------------------------------------------------------------- data

@dataclass
class PairData:
    """Two classes of a dataset in [-1, 1]: targets 1 for `pos`, 0 for `neg`; torchvision's splits."""
    train_x: Tensor     # [N, 1, 28, 28]
    train_y: Tensor     # [N] float
    test_x: Tensor
    test_y: Tensor


def dataset_splits(dataset: str, root: Path) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """All of a greyscale dataset in [-1, 1]: train images, train labels, test images, test labels."""
    if dataset.lower() not in PAIR_DATASETS:
        raise UserInputError(f"unknown dataset '{dataset}': GASTeN takes {', '.join(PAIR_DATASETS)} (any case)")
    source = load_source(dataset, Path(root))                    # the one loading path: train and test, in order
    images = torch.from_numpy(source.values).float() / 127.5 - 1          # [N, 1, 28, 28] in [-1, 1]
    labels, train = torch.from_numpy(source.labels), torch.from_numpy(source.in_train)
    return images[train], labels[train], images[~train], labels[~train]


def load_pair(dataset: str, pos: int, neg: int, root: Path, device: torch.device) -> PairData:
    """The images of classes `pos` and `neg` only, on `device`."""
    if pos == neg:
        raise UserInputError(f"--pos and --neg must differ, got {pos} twice")
    train_x, train_labels, test_x, test_labels = dataset_splits(dataset, root)
    splits = []
    for x, labels in ((train_x, train_labels), (test_x, test_labels)):
        if not ((labels == pos).any() and (labels == neg).any()):
            raise UserInputError(f"{dataset} has no class {pos if not (labels == pos).any() else neg}")
        kept = (labels == pos) | (labels == neg)
        splits += [x[kept].to(device), (labels[kept] == pos).float().to(device)]
    return PairData(*splits)


# ----------------------------------------------------------------------------- classifiers under test

def classifier_path(config: dict, results_dir: Path, name: str) -> Path:
    """A classifier's folder: `name` itself when it is a folder, else the pair's classifier of that name."""
    dataset = config["dataset"]
    path = Path(name)
    return path if path.is_dir() else gasten_path(results_dir, "classifier", name, dataset["name"], dataset["pos"],
                                                  dataset["neg"])


def train_classifier(kind: str, nf: int, epochs: int, data: PairData, seed: int, batch_size: int = 64,
                     lr: float = 1e-3, patience: int = 3, progress: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """BCE, Adam, minibatches of the training part of a seeded 5/6 : 1/6 split of the pair's training images;
    after each epoch the validation loss, stopping after `patience` epochs without improvement and keeping
    the best epoch's weights. Returns the model (eval mode) and its history and test accuracy."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(data.train_y), generator=generator).to(data.train_y.device)
    cut = len(order) * 5 // 6
    train_rows, validation_rows = order[:cut], order[cut:]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLASSIFIERS[kind](nf).to(data.train_x.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    best, best_state, waited, history = math.inf, None, 0, []
    for epoch in range(epochs):
        model.train()
        shuffled = train_rows[torch.randperm(len(train_rows), generator=generator).to(train_rows.device)]
        for batch in tqdm(shuffled.split(batch_size), desc=f"{kind}-{nf} epoch {epoch + 1}", disable=not progress,
                          leave=False):
            loss = F.binary_cross_entropy(model(data.train_x[batch]), data.train_y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            validation = float(F.binary_cross_entropy(model(data.train_x[validation_rows]),
                                                      data.train_y[validation_rows]))
        history.append(validation)
        if validation < best:
            best, best_state, waited = validation, {k: v.clone() for k, v in model.state_dict().items()}, 0
        else:
            waited += 1
            if waited >= patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    with torch.no_grad():
        accuracy = float(((model(data.test_x) > 0.5).float() == data.test_y).float().mean())
    return model, {"validation_loss": history, "best_epoch": int(np.argmin(history)) + 1, "test_accuracy": accuracy}


def save_classifier(model: nn.Module, kind: str, nf: int, folder: Path, settings: dict) -> None:
    write_atomically(folder / "classifier.pt", lambda temporary: torch.save(model.state_dict(), temporary))
    write_atomically(folder / "settings.json", settings_json({**settings, "kind": kind, "nf": nf}))


def load_classifier(folder: Path, device: torch.device) -> nn.Module:
    """A classifier saved by gasten_train_classifiers.py, frozen, in eval mode."""
    folder = Path(folder)
    if not (folder / "classifier.pt").is_file():
        raise UserInputError(f"no classifier in {folder}; make it with gasten_train_classifiers.py")
    settings = json.loads((folder / "settings.json").read_text())
    model = CLASSIFIERS[settings["kind"]](settings["nf"]).to(device)
    model.load_state_dict(torch.load(folder / "classifier.pt", map_location=device, weights_only=True))
    model.eval().requires_grad_(False)
    return model


# ----------------------------------------------------------------------------- a generator's samples and ACD

def average_confusion_distance(probabilities: Tensor) -> Tensor:
    """ACD = mean |0.5 - p| over the samples: 0 when the classifier cannot tell, 0.5 when it is sure."""
    return (0.5 - probabilities).abs().mean()


def fixed_test_noise(results_dir: Path, seed: int, device: torch.device) -> Tensor:
    """[2048, 64] standard normal noise drawn from `seed`, cached so that every run scores the same z."""
    path = gasten_path(results_dir, "test_noise", seed=seed)
    if not path.is_file():
        noise = torch.randn(TEST_NOISE_SAMPLES, Z_DIM, generator=torch.Generator().manual_seed(seed))
        write_atomically(path, lambda temporary: torch.save(noise, temporary))
    return torch.load(path, map_location=device, weights_only=True)


def generate(generator: nn.Module, noise: Tensor) -> Tensor:
    """Images of `noise` with the generator in eval mode (left in the mode it was in)."""
    with evaluating(generator):
        return predict(generator, noise)


def pareto_efficient(points: np.ndarray) -> np.ndarray:
    """[n] bool: rows of `points` [n, 2] (both lower = better) that no other row beats in one and matches or
    beats in the other."""
    points = np.asarray(points, dtype=float)
    dominated = ((points[None] <= points[:, None]).all(2) & (points[None] < points[:, None]).any(2)).any(1)
    return ~dominated


# ----------------------------------------------------------------------------- GAN training

def mgda_weight(g1: Tensor, g2: Tensor) -> float:
    """s in [0, 1] minimising |s g1 + (1 - s) g2|^2: s = (g2 - g1) . g2 / |g1 - g2|^2, clipped (0.5 if equal)."""
    difference = g1 - g2
    squared = float(difference @ difference)
    if squared == 0:
        return 0.5
    return min(1.0, max(0.0, float((g2 - g1) @ g2) / squared))


@dataclass
class GAN:
    generator: DCGANGenerator
    discriminator: DCGANDiscriminator
    generator_optimizer: torch.optim.Optimizer
    discriminator_optimizer: torch.optim.Optimizer
    loss: str               # "gan" or "wgan-gp"
    gp_lambda: float = 10.0


def make_gan(loss: str, device: torch.device, seed: int, lr: float = 2e-4, betas: tuple[float, float] = (0.5, 0.999),
             gp_lambda: float = 10.0) -> GAN:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator, discriminator = DCGANGenerator(Z_DIM).to(device), DCGANDiscriminator(loss == "wgan-gp").to(device)
    return GAN(generator, discriminator, torch.optim.Adam(generator.parameters(), lr=lr, betas=betas),
               torch.optim.Adam(discriminator.parameters(), lr=lr, betas=betas), loss, gp_lambda)


def save_gan(gan: GAN, folder: Path, settings: dict) -> None:
    """generator.pt, discriminator.pt, optimizers.pt and config.json in `folder`, each written atomically."""
    for name, state in (("generator", gan.generator.state_dict()), ("discriminator", gan.discriminator.state_dict()),
                        ("optimizers", {"generator": gan.generator_optimizer.state_dict(),
                                        "discriminator": gan.discriminator_optimizer.state_dict()})):
        write_atomically(folder / f"{name}.pt", lambda temporary, state=state: torch.save(state, temporary))
    write_atomically(folder / "config.json", settings_json(settings))


def load_gan(gan: GAN, folder: Path, optimizers: bool = True) -> GAN:
    """The checkpoint in `folder` into `gan`: G and D, and the Adam states of both unless `optimizers` is False
    (the original's step 2 starts fresh optimisers from the step-1 weights)."""
    device = next(gan.generator.parameters()).device
    gan.generator.load_state_dict(torch.load(folder / "generator.pt", map_location=device, weights_only=True))
    gan.discriminator.load_state_dict(torch.load(folder / "discriminator.pt", map_location=device, weights_only=True))
    if not optimizers:
        return gan
    states = torch.load(folder / "optimizers.pt", map_location=device, weights_only=True)
    gan.generator_optimizer.load_state_dict(states["generator"])
    gan.discriminator_optimizer.load_state_dict(states["discriminator"])
    return gan


def _discriminator_loss(gan: GAN, real: Tensor, fake: Tensor) -> Tensor:
    d = gan.discriminator
    if gan.loss == "gan":
        real_score, fake_score = d(real), d(fake)
        return F.binary_cross_entropy(real_score, torch.ones_like(real_score)) + \
            F.binary_cross_entropy(fake_score, torch.zeros_like(fake_score))
    mix = torch.rand(len(real), 1, 1, 1, device=real.device)
    interpolates = (mix * real + (1 - mix) * fake).requires_grad_()
    gradients = torch.autograd.grad(d(interpolates).sum(), interpolates, create_graph=True)[0]
    penalty = ((gradients.flatten(1).norm(dim=1) - 1) ** 2).mean()
    return d(fake).mean() - d(real).mean() + gan.gp_lambda * penalty


def generator_gan_loss(gan: GAN, fake: Tensor) -> Tensor:
    """The generator's adversarial term: BCE(D(G(z)), 1), or -mean D(G(z)) for WGAN-GP."""
    score = gan.discriminator(fake)
    return F.binary_cross_entropy(score, torch.ones_like(score)) if gan.loss == "gan" else -score.mean()


def train_epoch(gan: GAN, images: Tensor, batch_size: int, noise_rng: torch.Generator,
                classifier: nn.Module | None = None, weight: ConfusionWeight = NO_CONFUSION,
                progress: bool = True) -> dict[str, float]:
    """One epoch over shuffled batches of `images` (the last incomplete one dropped): a discriminator step on
    real images and fakes of fresh noise made without gradient, then a generator step. With a classifier,
    the generator's loss adds the confusion term mean |0.5 - C(G(z))| with `weight`. Returns the epoch's mean
    losses (and the mean MGDA s)."""
    g, device = gan.generator, images.device
    order = torch.randperm(len(images), generator=noise_rng).to(device)
    batches = [b for b in order.split(batch_size) if len(b) == batch_size]
    totals = {"discriminator_loss": torch.zeros((), device=device), "generator_loss": torch.zeros((), device=device),
              "confusion": torch.zeros((), device=device), "mgda_s": torch.zeros((), device=device)}  # no sync per step
    parameters = list(g.parameters())
    for batch in tqdm(batches, desc="GAN steps", disable=not progress, leave=False):
        real = images[batch]
        with torch.no_grad():
            fake = g(torch.randn(batch_size, Z_DIM, generator=noise_rng).to(device))
        d_loss = _discriminator_loss(gan, real, fake)
        gan.discriminator_optimizer.zero_grad(set_to_none=True)
        d_loss.backward()
        gan.discriminator_optimizer.step()

        fake = g(torch.randn(batch_size, Z_DIM, generator=noise_rng).to(device))
        gan_loss = generator_gan_loss(gan, fake)
        gan.generator_optimizer.zero_grad(set_to_none=True)
        confusion = torch.zeros((), device=device)
        if classifier is None:
            gan_loss.backward()
        else:
            confusion = average_confusion_distance(classifier(fake))
            if weight.mgda:
                g1 = torch.autograd.grad(gan_loss, parameters, retain_graph=True)
                g2 = torch.autograd.grad(confusion, parameters)
                flat1, flat2 = torch.cat([t.flatten() for t in g1]), torch.cat([t.flatten() for t in g2])
                if weight.value == "mgda:norm":
                    s = mgda_weight(flat1 / (gan_loss.detach() * flat1.norm()), flat2 / (confusion.detach() * flat2.norm()))
                else:
                    s = mgda_weight(flat1, flat2)
                for parameter, a, b in zip(parameters, g1, g2):
                    parameter.grad = s * a + (1 - s) * b
                totals["mgda_s"] += s
            else:
                (gan_loss + weight.value * confusion).backward()
        gan.generator_optimizer.step()
        totals["discriminator_loss"] += d_loss.detach()
        totals["generator_loss"] += gan_loss.detach()
        totals["confusion"] += confusion.detach()
    return {key: float(value) / max(1, len(batches)) for key, value in totals.items()}


def write_metrics_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """The rows with a `pareto` column over (fid_own_features, acd), written atomically; every column any row
    has, nan where a row lacks it (a run resumed with or without --inception_weights)."""
    flags = pareto_efficient([[row["fid_own_features"], row["acd"]] for row in rows]) if rows else []
    columns = list(dict.fromkeys(key for row in rows for key in row if key != "pareto"))
    write_csv([{**{column: row.get(column, float("nan")) for column in columns}, "pareto": bool(flag)}
               for row, flag in zip(rows, flags)], path)


def read_metrics_csv(path: Path) -> list[dict[str, Any]]:
    with open(path) as handle:
        return [{key: (value if key in ("weight", "classifier", "pareto") else float(value))
                 for key, value in row.items()} for row in csv.DictReader(handle)]


def step2_metrics(run_folder: Path) -> list[tuple[Step2Cell, Path]]:
    """Every step-2 cell of a run that has a metrics.csv, with the file's path, in folder-name order."""
    found = sorted((Path(run_folder) / "step2").glob("*/metrics.csv"))
    if not found:
        raise UserInputError(f"no step-2 cells with a metrics.csv under {run_folder}/step2")
    return [(Step2Cell.parse(path.parent.name), path) for path in found]


def epoch_folders(folder: Path) -> dict[int, Path]:
    """{epoch: folder} of the checkpoints `epoch_<e>` under `folder`, whatever the digits' padding (the
    original wrote epoch_05 and looked for epoch_5, so single-digit step-2 epochs were never found)."""
    found = {}
    for path in Path(folder).glob("epoch_*"):
        suffix = path.name.removeprefix("epoch_")
        if suffix.isdigit() and (path / "generator.pt").is_file():
            found[int(suffix)] = path
    return found


def step1_checkpoint(step1_folder: Path, epoch: int | str) -> tuple[int, Path]:
    """The step-1 epoch (a number, best = lowest FID (own features), last) and its checkpoint folder."""
    found = epoch_folders(step1_folder)
    if not found:
        raise UserInputError(f"{step1_folder} holds no step-1 checkpoints (epoch_<e>/generator.pt)")
    if epoch == "last":
        epoch = max(found)
    elif epoch == "best":
        if not (Path(step1_folder) / "metrics.csv").is_file():
            raise UserInputError(f"step-1 epoch best needs {step1_folder}/metrics.csv, which is missing")
        rows = read_metrics_csv(Path(step1_folder) / "metrics.csv")
        epoch = int(min((r for r in rows if int(r["epoch"]) in found), key=lambda r: r["fid_own_features"])["epoch"])
    if epoch not in found:
        raise UserInputError(f"no step-1 checkpoint of epoch {epoch} in {step1_folder} (found {sorted(found)})")
    return epoch, found[epoch]


def run_epochs(gan: GAN, images: Tensor, folder: Path, first_epoch: int, last_epoch: int, checkpoint_every: int,
               settings: dict, scorer: Callable[[nn.Module], dict[str, float]], rows: list[dict[str, Any]],
               noise_rng: torch.Generator, batch_size: int, classifier: nn.Module | None = None,
               weight: ConfusionWeight = NO_CONFUSION,
               log: Callable[[dict[str, Any]], None] | None = None, progress: bool = True) -> None:
    """Epochs first_epoch+1 .. last_epoch: train, score, append a metrics row, checkpoint every
    `checkpoint_every` epochs and after the last (with the noise generator's state, so a resumed run goes on
    exactly)."""
    for epoch in range(first_epoch + 1, last_epoch + 1):
        losses = train_epoch(gan, images, batch_size, noise_rng, classifier, weight, progress)
        row = {"epoch": epoch, **scorer(gan.generator), **losses}
        rows.append(row)
        if log is not None:
            log(row)
        if epoch % checkpoint_every == 0 or epoch == last_epoch:
            save_gan(gan, folder / f"epoch_{epoch:02d}", {**settings, "epoch": epoch, "rows": rows,
                                                          "noise_rng": noise_rng.get_state().tolist()})


def resume_checkpoint(gan: GAN, folder: Path, seed: int, noise_rng: torch.Generator) -> tuple[int, list[dict]] | None:
    """The last checkpoint of `folder` (run_epochs') into `gan` (G, D and both optimisers) and `noise_rng`: its
    epoch and the metrics rows so far; None when `folder` holds no checkpoint. A folder of another seed is an
    error, not resumed."""
    done = epoch_folders(folder)
    if not done:
        return None
    last = max(done)
    saved = json.loads((done[last] / "config.json").read_text())
    saved_seed = saved["config"]["training"]["seed"]
    if saved_seed != seed:
        raise UserInputError(f"{folder} holds a run of seed {saved_seed}, not {seed}: give it another "
                             f"--results_dir or name")
    load_gan(gan, done[last])
    noise_rng.set_state(torch.tensor(saved["noise_rng"], dtype=torch.uint8))
    return last, saved["rows"]
