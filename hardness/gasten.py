"""GASTeN: a GAN whose generator is also pushed towards a classifier's decision boundary.

Binary classifiers under test see two classes of a dataset (`pos` = 1, `neg` = 0) scaled to [-1, 1].
Step 1 trains a plain DCGAN; step 2 continues from a step-1 checkpoint with the generator's loss
L_G = BCE(D(G(z)), 1) + alpha * mean |0.5 - C(G(z))|, C frozen, where alpha is a number or chosen each step
by MGDA. After every epoch the generator is scored on a fixed test noise: ACD = mean |0.5 - C(G(z))| (lower
is closer to the boundary), "FID (own features)" (a small CNN trained here on the dataset's ten classes,
never comparable with Inception-based FIDs), the Frechet distance in the classifier's own embedding and,
given a local file of the standard FID Inception-v3's weights, the Inception FID, all against the pair's
training images. Over seeds: the ambiguous count of a generator's samples, the collapse rule and the study's
table of mean and std over the seeds of each cell.
"""
import csv
import hashlib
import importlib.util
import json
import math
import pickle
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance, NoTrainInceptionV3
from tqdm import tqdm

from hardness.cli import UserInputError
from hardness.data import as_nchw_uint8, canonical_dataset_name, torchvision_splits
from hardness.prediction import PREDICTION_CHUNK, evaluating, predict
from hardness.results import gasten_path, write_atomically, write_csv
from neural_networks import (DCGANDiscriminator, DCGANGenerator, FeatureCNN, PairClassifierCNN,
                             PairClassifierMLP)

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
    train, test = torchvision_splits(canonical_dataset_name(dataset), Path(root))
    return (as_nchw_uint8(train.data).float() / 127.5 - 1, torch.as_tensor(train.targets),
            as_nchw_uint8(test.data).float() / 127.5 - 1, torch.as_tensor(test.targets))


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

def run_folder_name(name: str, seed: int) -> str:
    """A GASTeN run's folder under <results_dir>/gasten/ (and <figures_dir>/gasten/): the config's name for
    seed 0, as before seeds had folders of their own, and <name>_seed<seed> for every other seed."""
    return name if seed == 0 else f"{name}_seed{seed}"


def classifier_name(kind: str, nf: int, epochs: int, seed: int) -> str:
    return f"{kind}-{nf}-{epochs}.{seed}"


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
    write_atomically(folder / "settings.json", (json.dumps({**settings, "kind": kind, "nf": nf}, indent=2,
                                                           default=str) + "\n").encode())


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


# ----------------------------------------------------------------------------- scores of a generator

def average_confusion_distance(probabilities: Tensor) -> Tensor:
    """ACD = mean |0.5 - p| over the samples: 0 when the classifier cannot tell, 0.5 when it is sure."""
    return (0.5 - probabilities).abs().mean()


class Embedding(nn.Module):
    """A model's `embed` as a feature extractor for torchmetrics' Frechet distance."""

    def __init__(self, model: nn.Module, num_features: int) -> None:
        super().__init__()
        self.model, self.num_features = model, num_features

    def forward(self, x: Tensor) -> Tensor:
        return self.model.embed(x)


def statistics_key(extractor: nn.Module, real_images: Tensor) -> str:
    """16 hex digits of a SHA-256 over everything the real images' statistics depend on: the extractor's class
    and weights, and the real images themselves (so the data folder, the dataset and the pair)."""
    digest = hashlib.sha256(type(extractor).__name__.encode())
    for name, tensor in [*extractor.state_dict().items(), ("real_images", real_images)]:
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def frechet_metric(extractor: nn.Module, real_images: Tensor, cache_dir: Path | None = None,
                   label: str = "real") -> FrechetInceptionDistance:
    """torchmetrics' Frechet distance in `extractor`'s features, with the statistics of `real_images`
    computed once (and kept in cache_dir/<label>_<statistics_key>.pt when `cache_dir` is given); `reset()`
    keeps them and drops the generated ones."""
    extractor = extractor.eval().requires_grad_(False)
    cache = None if cache_dir is None else Path(cache_dir) / f"{label}_{statistics_key(extractor, real_images)}.pt"
    metric = FrechetInceptionDistance(feature=extractor, reset_real_features=False, normalize=False)
    metric = metric.to(real_images.device)
    states = ("real_features_sum", "real_features_cov_sum", "real_features_num_samples")
    if cache is not None and cache.is_file():
        saved = torch.load(cache, map_location=real_images.device, weights_only=True)
        for name in states:
            setattr(metric, name, saved[name])
        return metric
    with torch.no_grad():
        for chunk in real_images.split(PREDICTION_CHUNK):
            metric.update(chunk, real=True)
    if cache is not None:
        write_atomically(cache, lambda temporary: torch.save({name: getattr(metric, name) for name in states},
                                                             temporary))
    return metric


def frechet_distance(metric: FrechetInceptionDistance, images: Tensor) -> float:
    """The distance between `images` and the metric's real images (needs more images than features)."""
    metric.reset()
    with torch.no_grad():
        for chunk in images.split(PREDICTION_CHUNK):
            metric.update(chunk, real=False)
    return float(metric.compute())


class InceptionFeatures(nn.Module):
    """The 2048 pool features of the standard FID Inception-v3 (torchmetrics' NoTrainInceptionV3 over
    torch-fidelity's network, weights from a local file) of [N, 1, H, W] images in [-1, 1], fed to it as
    3-channel uint8 images as FID expects (it resizes them to 299 x 299 itself)."""
    num_features = 2048

    def __init__(self, weights: Path) -> None:
        super().__init__()
        self.inception = NoTrainInceptionV3(name="inception-v3-compat", features_list=[str(self.num_features)],
                                            feature_extractor_weights_path=str(weights))

    def forward(self, x: Tensor) -> Tensor:
        pixels = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1)  # [N, 3, H, W]
        return self.inception(pixels)                                                           # [N, 2048]


def inception_features(weights: Path, device: torch.device) -> InceptionFeatures:
    """InceptionFeatures of the weights file, or a one-line error when the file or torch-fidelity is missing or
    the file does not hold the FID Inception network's weights."""
    weights = Path(weights)
    if not weights.is_file():
        raise UserInputError(f"--inception_weights {weights}: no such file")
    if importlib.util.find_spec("torch_fidelity") is None:      # torchmetrics' Inception is torch-fidelity's network
        raise UserInputError("--inception_weights needs torch-fidelity: pip install torch-fidelity")
    try:
        return InceptionFeatures(weights).to(device)
    except (RuntimeError, EOFError, KeyError, ValueError, pickle.UnpicklingError) as error:  # torch.load, load_state_dict
        reason = str(error).partition("\n")[0]
        raise UserInputError(f"--inception_weights {weights} does not hold the weights of the FID Inception "
                             f"network (torch-fidelity's FeatureExtractorInceptionV3): {type(error).__name__}: "
                             f"{reason}") from error


def feature_cnn(dataset: str, root: Path, results_dir: Path, device: torch.device, progress: bool = True) -> FeatureCNN:
    """The extractor of "FID (own features)": FeatureCNN trained on all ten classes of the dataset (2 epochs,
    Adam lr 1e-3, batch 128, seed 0), cached under <results_dir>/gasten/feature_cnn_<dataset>.pt."""
    path = gasten_path(results_dir, "feature_cnn", dataset=dataset)
    model = FeatureCNN().to(device)
    if path.is_file():
        model.load_state_dict(torch.load(path, map_location=device, weights_only=True))
        return model.eval()
    train_x, train_y, _, _ = dataset_splits(dataset, root)
    train_x, train_y = train_x.to(device), train_y.to(device)
    generator = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = FeatureCNN().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(2):
        order = torch.randperm(len(train_y), generator=generator).to(device)
        for batch in tqdm(order.split(128), desc=f"feature CNN epoch {epoch + 1}", disable=not progress, leave=False):
            loss = F.cross_entropy(model.classify(train_x[batch]), train_y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    write_atomically(path, lambda temporary: torch.save(model.state_dict(), temporary))
    return model.eval()


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
    write_atomically(folder / "config.json", (json.dumps(settings, indent=2, default=str) + "\n").encode())


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


def _generator_gan_loss(gan: GAN, fake: Tensor) -> Tensor:
    score = gan.discriminator(fake)
    return F.binary_cross_entropy(score, torch.ones_like(score)) if gan.loss == "gan" else -score.mean()


def train_epoch(gan: GAN, images: Tensor, batch_size: int, noise_rng: torch.Generator,
                classifier: nn.Module | None = None, weight: float | str = 0.0,
                progress: bool = True) -> dict[str, float]:
    """One epoch over shuffled batches of `images` (the last incomplete one dropped): a discriminator step on
    real images and fakes of fresh noise made without gradient, then a generator step. With a classifier,
    the generator's loss adds the confusion term mean |0.5 - C(G(z))| with `weight` (a number, 'mgda' or
    'mgda:norm'). Returns the epoch's mean losses (and the mean MGDA s)."""
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
        gan_loss = _generator_gan_loss(gan, fake)
        gan.generator_optimizer.zero_grad(set_to_none=True)
        confusion = torch.zeros((), device=device)
        if classifier is None:
            gan_loss.backward()
        else:
            confusion = average_confusion_distance(classifier(fake))
            if isinstance(weight, str):
                g1 = torch.autograd.grad(gan_loss, parameters, retain_graph=True)
                g2 = torch.autograd.grad(confusion, parameters)
                flat1, flat2 = torch.cat([t.flatten() for t in g1]), torch.cat([t.flatten() for t in g2])
                if weight == "mgda:norm":
                    s = mgda_weight(flat1 / (gan_loss.detach() * flat1.norm()), flat2 / (confusion.detach() * flat2.norm()))
                else:
                    s = mgda_weight(flat1, flat2)
                for parameter, a, b in zip(parameters, g1, g2):
                    parameter.grad = s * a + (1 - s) * b
                totals["mgda_s"] += s
            else:
                (gan_loss + weight * confusion).backward()
        gan.generator_optimizer.step()
        totals["discriminator_loss"] += d_loss.detach()
        totals["generator_loss"] += gan_loss.detach()
        totals["confusion"] += confusion.detach()
    return {key: float(value) / max(1, len(batches)) for key, value in totals.items()}


@dataclass
class Scorer:
    """Scores a generator on the fixed test noise: ACD under the classifier, FID (own features), the Frechet
    distance in the classifier's embedding and, given the Inception metric, the Inception FID."""
    noise: Tensor
    classifier: nn.Module
    own_features: FrechetInceptionDistance
    classifier_features: FrechetInceptionDistance
    inception: FrechetInceptionDistance | None = None

    def __call__(self, generator: nn.Module) -> dict[str, float]:
        images = generate(generator, self.noise)
        probabilities = predict(self.classifier, images)
        scores = {"acd": float(average_confusion_distance(probabilities)),
                  "fid_own_features": frechet_distance(self.own_features, images),
                  "fid_classifier": frechet_distance(self.classifier_features, images)}
        if self.inception is not None:
            scores["fid_inception"] = frechet_distance(self.inception, images)
        return scores


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
               settings: dict, scorer: Scorer, rows: list[dict[str, Any]], noise_rng: torch.Generator,
               batch_size: int, classifier: nn.Module | None = None, weight: float | str = 0.0,
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


# ----------------------------------------------------------------------------- over seeds

AMBIGUOUS_SAMPLES, AMBIGUOUS_NOISE_SEED, AMBIGUOUS_HALF_WIDTH = 15000, 0, 0.1   # C in [0.4, 0.6], as the ambiguity
COLLAPSE_DISCRIMINATOR_LOSS, COLLAPSE_FID = 0.1, 100.0                          # analysis keeps samples


def in_ambiguous_band(probabilities: Tensor) -> Tensor:
    """[N] bool: C within 0.1 of 0.5, i.e. in [0.4, 0.6], the band the ambiguity analysis keeps."""
    return (probabilities - 0.5).abs() <= AMBIGUOUS_HALF_WIDTH


def ambiguous_count(generator: nn.Module, classifier: nn.Module, n_samples: int,
                    seed: int = AMBIGUOUS_NOISE_SEED) -> int:
    """How many of `n_samples` images of seeded noise (drawn as the ambiguity analysis draws its samples) the
    classifier puts in [0.4, 0.6]."""
    device = next(generator.parameters()).device
    noise = torch.randn(n_samples, Z_DIM, generator=torch.Generator().manual_seed(seed)).to(device)  # [n, 64]
    images = generate(generator, noise)                                                            # [n, 1, 28, 28]
    probabilities = predict(classifier, images)                                                    # [n]
    return int(in_ambiguous_band(probabilities).sum())


def collapsed(discriminator_loss: float, fid_own_features: float) -> bool:
    """The collapse rule of the study over seeds, fixed before it ran: the discriminator's mean loss in the last
    step-2 epoch below 0.1 (it tells real from fake almost perfectly: BCE(real) + BCE(fake) < 0.1 needs
    D(real) and 1 - D(fake) above about 0.95 on average) and FID (own features) above 100 (about three times the
    worst FID of the healthy one-seed runs, 31.6, and far below the collapsed one's 512)."""
    return discriminator_loss < COLLAPSE_DISCRIMINATOR_LOSS and fid_own_features > COLLAPSE_FID


STEP_TERMS = ("adversarial", "confusion", "adversarial_gradient_norm", "confusion_gradient_norm", "gradient_cosine",
              "discriminator_real", "discriminator_fake", "positive_share")


def generator_step_terms(gan: GAN, classifier: nn.Module, noise: Tensor, real: Tensor,
                         batch_size: int) -> dict[str, float]:
    """What a step-2 generator step sees, in batches of `batch_size` of `noise` [n, 64] and `real` [n, 1, 28, 28]
    with G and D in training mode as train_epoch has them (an incomplete last batch left out, as there), averaged
    over the batches: the adversarial term BCE(D(G(z)), 1) (-mean D(G(z)) for WGAN-GP), the confusion term
    mean |0.5 - C(G(z))|, the norms of their gradients in G's parameters and the cosine between the two gradients
    (the weight multiplies the confusion gradient), the mean D(x) of real images and D(G(z)), and the share of
    G(z) that C calls positive."""
    parameters = list(gan.generator.parameters())
    gan.generator.train()
    gan.discriminator.train()
    sums = dict.fromkeys(STEP_TERMS, 0.0)
    batches = [(z, x) for z, x in zip(noise.split(batch_size), real.split(batch_size)) if len(z) == batch_size]
    if not batches:
        raise UserInputError(f"{len(noise)} samples make no full batch of {batch_size}")
    for z, x in batches:
        fake = gan.generator(z)                                                    # [b, 1, 28, 28]
        adversarial = _generator_gan_loss(gan, fake)
        probabilities = classifier(fake)                                          # [b]
        confusion = average_confusion_distance(probabilities)
        adversarial_gradient = torch.cat([g.flatten() for g in torch.autograd.grad(adversarial, parameters,
                                                                                     retain_graph=True)])
        confusion_gradient = torch.cat([g.flatten() for g in torch.autograd.grad(confusion, parameters)])
        with torch.no_grad():
            terms = {"adversarial": adversarial, "confusion": confusion,
                     "adversarial_gradient_norm": adversarial_gradient.norm(),
                     "confusion_gradient_norm": confusion_gradient.norm(),
                     "gradient_cosine": F.cosine_similarity(adversarial_gradient, confusion_gradient, dim=0),
                     "discriminator_real": gan.discriminator(x).mean(),
                     "discriminator_fake": gan.discriminator(fake).mean(),
                     "positive_share": (probabilities > 0.5).float().mean()}
        for key, value in terms.items():
            sums[key] += float(value.detach())
    return {key: value / len(batches) for key, value in sums.items()}


def classifier_on_real(classifier: nn.Module, images: Tensor, targets: Tensor) -> dict[str, float]:
    """A classifier's accuracy, ACD and share of images with C in [0.4, 0.6] on real `images` with 0/1 `targets`."""
    probabilities = predict(classifier, images)                                                     # [n]
    return {"accuracy": float(((probabilities > 0.5).float() == targets).float().mean()),
            "acd": float(average_confusion_distance(probabilities)),
            "in_band_share": float(in_ambiguous_band(probabilities).float().mean())}


def run_seed(run_folder: Path) -> tuple[str, int]:
    """The config name and GAN seed of a run folder, run_folder_name reversed: <name>_seed<s> is seed s, any
    other name seed 0."""
    match = re.fullmatch(r"(.+)_seed(\d+)", Path(run_folder).name)
    return (match[1], int(match[2])) if match else (Path(run_folder).name, 0)


def shared_config_name(run_folders: Sequence[Path]) -> str:
    """The config name of run folders of one config, one per GAN seed (<name>, <name>_seed<s>)."""
    names = {run_seed(folder)[0] for folder in run_folders}
    if len(names) != 1:
        raise UserInputError(f"give the run folders of one config (<name>, <name>_seed<s>), got the names "
                             f"{sorted(names)}")
    return names.pop()


def classifier_nf(name: str) -> int:
    """The filters of a classifier named <kind>-<nf>-<epochs>.<seed> (classifier_name)."""
    parts = name.split("-")
    if len(parts) != 3 or not parts[1].isdigit():
        raise UserInputError(f"classifier {name!r} is not named <kind>-<nf>-<epochs>.<seed>")
    return int(parts[1])


def mean_and_std(values: Sequence[float]) -> tuple[float, float]:
    """The mean and the sample standard deviation (n - 1; nan for one value) of `values`."""
    values = np.asarray(values, dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else float("nan")


SEED_COLUMNS = ("fid_own_features", "ambiguous", "real_in_band", "discriminator_loss")


def over_seeds(cells: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The study's table from one dict per run and step-2 cell (classifier, weight, step1_epoch, seed, `acd`:
    ACD after each step-2 epoch, and SEED_COLUMNS): per (classifier, weight, step-1 epoch), a row per seed
    (statistic `seed`), then the mean and the std over the seeds (`mean`, `std`) of acd_epoch_<e> and
    SEED_COLUMNS; `collapsed` is 0 or 1 in a seed's row, the number of collapsed seeds in the mean's row."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for cell in cells:
        order = math.inf if cell["weight"] in ("mgda", "mgda:norm") else float(cell["weight"])   # numbers, then MGDA
        groups.setdefault((classifier_nf(cell["classifier"]), cell["classifier"], order, cell["weight"],
                           cell["step1_epoch"]), []).append(cell)
    table = []
    for (nf, classifier, _, weight, step1_epoch), members in sorted(groups.items(), key=lambda item: item[0]):
        members = sorted(members, key=lambda cell: cell["seed"])
        seeds = [cell["seed"] for cell in members]
        if len(set(seeds)) != len(seeds):
            raise UserInputError(f"{classifier} weight {weight}: seed {max(seeds, key=seeds.count)} is given twice")
        epochs = {len(cell["acd"]) for cell in members}
        if len(epochs) != 1:
            raise UserInputError(f"{classifier} weight {weight}: the seeds' step-2 cells ran different numbers of "
                                 f"epochs ({sorted(epochs)}); finish them first")
        key = {"nf": nf, "classifier": classifier, "weight": weight, "step1_epoch": step1_epoch}
        rows = []
        for cell in members:
            rows.append({**key, "statistic": "seed", "seed": cell["seed"],
                         **{f"acd_epoch_{e + 1}": value for e, value in enumerate(cell["acd"])},
                         **{column: cell[column] for column in SEED_COLUMNS},
                         "collapsed": int(collapsed(cell["discriminator_loss"], cell["fid_own_features"]))})
        columns = [column for column in rows[0] if column.startswith("acd_epoch_")] + list(SEED_COLUMNS)
        summary = {column: mean_and_std([row[column] for row in rows]) for column in columns}
        table += rows
        table.append({**key, "statistic": "mean", "seed": float("nan"),
                      **{column: value[0] for column, value in summary.items()},
                      "collapsed": sum(row["collapsed"] for row in rows)})
        table.append({**key, "statistic": "std", "seed": float("nan"),
                      **{column: value[1] for column, value in summary.items()}, "collapsed": float("nan")})
    return table
