"""Class-hardness simulations: how hard each class is, against how much its representation overlaps with the
others'. A YAML config names the data (a torchvision dataset, Gaussian classes, or the user's own folder:, npz:
or csv: source split by a seeded, stratified `test_fraction`), the model (MLP, CNN, ResNet-50) and the training;
independent runs train at once (MLP and CNN stacked under `torch.vmap`) and are evaluated at log-spaced
optimizer steps: loss and accuracy overall and per class on both splits, and the C x C cosine similarity of
the class means of the last hidden features (`overlap_dynamic`) beside that of the standardised inputs
(`overlap_static`).
"""
import csv
import difflib
import io
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
import yaml
from matplotlib.lines import Line2D
from torch import Tensor, nn
from tqdm import tqdm

from hardness.cli import UserInputError
from hardness.config import ConfigError, check_choice, check_number, read_config
from hardness.data import as_nchw_uint8, canonical_dataset_name, torchvision_splits
from hardness.device import free_memory_bytes
from hardness.prediction import PREDICTION_CHUNK
from hardness.seeds import ClassHardnessStage, stage_generator, stage_seed
from hardness.minibatch import StackedNetworks, epoch_orders
from hardness.radii import one_hot_float
from hardness.results import save_figure, save_npz_with_settings, write_atomically
from hardness.user_data import (LABEL_PATTERN, SOURCES, UserData, default_label, load_csv, load_folder, load_npz,
                                parse_source)
from neural_networks import ACTIVATIONS, HardnessCNN, HardnessMLP, HardnessResNet50, kaiming_initialise

DATASETS = {"mnist", "fashionmnist", "kmnist", "cifar10", "cifar100", "gaussian"}
GAUSSIAN_FIELDS = ("channels", "height", "width", "num_classes", "train_samples_per_class", "test_samples_per_class",
                   "std", "mean", "seed", "separation", "means")
DEFAULTS: dict[str, Any] = {
    "dataset": {"name": None, "classes": None, "class_map": None, "shift": 0.0,
                "test_fraction": None, "label": None, "label_column": None, "id_column": None, "image_size": None,
                "skip_unreadable": False,
                "channels": None, "height": 8, "width": 8, "num_classes": 3, "train_samples_per_class": 20,
                "test_samples_per_class": 10, "std": 1.0, "mean": 0.0, "seed": 0, "separation": 0.0, "means": None},
    "model": {"type": "mlp", "depth": 1, "width": 32, "activation": "relu", "pooling": None, "cifar_stem": True,
              "init": "kaiming_normal"},
    "training": {"epochs": 1, "batch_size": 10, "lr": 0.01, "optimizer": "sgd", "seed": 0},
    "runs": 1,
    "evaluation": {"steps": None, "num_points": 5},
    "output": None,
}
# the original's layout: the Gaussian fields nested under dataset.gaussian; its earlier name of cifar_stem
ALIASES = {**{f"dataset.gaussian.{field}": f"dataset.{field}" for field in GAUSSIAN_FIELDS},
           "model.small_input": "model.cifar_stem"}
# the fields of the user's own data, and the sources they apply to (channels also applies to gaussian)
USER_FIELDS = {"test_fraction": SOURCES, "label": SOURCES, "label_column": ("csv",), "id_column": ("csv",),
               "image_size": ("folder",), "skip_unreadable": ("folder",)}
DEFAULT_TEST_FRACTION = 0.2
PER_CLASS_KEYS = ("loss_per_class", "accuracy_per_class", "train_loss_per_class", "train_accuracy_per_class")


def validate(config: dict) -> dict:
    """The config with every field checked (a ConfigError names the first bad one), a built-in dataset's name
    lowered and the defaults of the user-data fields filled in."""
    dataset = config["dataset"]
    choices = f"{', '.join(sorted(DATASETS))} (any case), or your own data as folder:PATH, npz:PATH or csv:PATH"
    if dataset["name"] is None:
        raise ConfigError("dataset.name", f"missing: name the data, one of {choices}")
    if not isinstance(dataset["name"], str):
        raise ConfigError("dataset.name", f"must be one of {choices}, got {dataset['name']!r}")
    source = user_source(dataset["name"])
    if source is None:
        if dataset["name"].lower() not in DATASETS:
            raise ConfigError("dataset.name", f"must be one of {choices}, got {dataset['name']!r}")
        dataset["name"] = dataset["name"].lower()
    validate_user_fields(config, source)
    if dataset["classes"] is not None and dataset["class_map"] is not None:
        raise ConfigError("dataset.classes", "give classes or class_map, not both")
    if dataset["classes"] is not None:
        if not isinstance(dataset["classes"], list) or not dataset["classes"] or \
                not all(is_label(c) for c in dataset["classes"]) or \
                len(set(dataset["classes"])) != len(dataset["classes"]):
            raise ConfigError("dataset.classes", "must be a list of distinct class indices or names, got "
                                                 f"{dataset['classes']!r}")
    if dataset["class_map"] is not None:
        mapping = dataset["class_map"]
        if not isinstance(mapping, dict) or not mapping or not all(
                is_label(k) and is_label(v) and not isinstance(v, str) for k, v in mapping.items()):
            raise ConfigError("dataset.class_map", f"must map original classes (indices or names) to new labels, "
                                                   f"got {mapping!r}")
        if set(mapping.values()) != set(range(len(set(mapping.values())))):
            raise ConfigError("dataset.class_map", f"new labels must be 0..C-1, got {sorted(set(mapping.values()))}")
    check_number(config, "dataset.shift")
    if dataset["name"] == "gaussian" and dataset["channels"] is None:
        dataset["channels"] = 1
    for field in ("channels", "height", "width", "num_classes", "train_samples_per_class", "test_samples_per_class"):
        if dataset[field] is not None:
            check_number(config, f"dataset.{field}", 1, integer=True)
    check_number(config, "dataset.std", 0, strict=True)
    check_number(config, "dataset.mean")
    check_number(config, "dataset.seed", 0, integer=True)
    check_number(config, "dataset.separation", 0)
    if dataset["means"] is not None:
        size = dataset["channels"] * dataset["height"] * dataset["width"]
        means = dataset["means"]
        if not isinstance(means, list) or len(means) != dataset["num_classes"] or not all(
                isinstance(m, (int, float)) or (isinstance(m, list) and len(m) == size) for m in means):
            raise ConfigError("dataset.means", f"must be one entry per class ({dataset['num_classes']}), each a number "
                                               f"or a list of {size} numbers")
    if dataset["name"] == "gaussian" and dataset["means"] is None and dataset["separation"] > 0 and \
            dataset["channels"] * dataset["height"] * dataset["width"] < dataset["num_classes"]:
        raise ConfigError("dataset.separation", "needs at least as many input elements as classes")
    check_choice(config, "model.type", ["mlp", "cnn", "resnet"])
    check_number(config, "model.depth", 0, integer=True)
    check_number(config, "model.width", 1, integer=True)
    check_choice(config, "model.activation", list(ACTIVATIONS))
    model = config["model"]
    if model["pooling"] is None:
        model["pooling"] = "avg" if model["type"] == "resnet" else "max"
    if model["type"] == "resnet" and model["pooling"] == "none":
        raise ConfigError("model.pooling", "none does not work for resnet: its head and the overlap feature take the "
                                           "2048 channels of one global pool; give avg or max")
    check_choice(config, "model.pooling", ["max", "avg"])
    check_choice(config, "model.init", ["kaiming_normal", "kaiming_uniform"])
    if not isinstance(model["cifar_stem"], bool):
        raise ConfigError("model.cifar_stem", f"must be true or false (small_input is its other name), "
                                              f"got {model['cifar_stem']!r}")
    for field in ("epochs", "batch_size"):
        check_number(config, f"training.{field}", 1, integer=True)
    check_number(config, "training.lr", 0, strict=True)
    check_choice(config, "training.optimizer", ["sgd", "adam"])
    check_number(config, "training.seed", 0, integer=True)
    check_number(config, "runs", 1, integer=True)
    steps = config["evaluation"]["steps"]
    if steps is not None and (not isinstance(steps, list) or not steps or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in steps)):
        raise ConfigError("evaluation.steps", f"must be a list of optimizer steps (integers >= 0), got {steps!r}")
    check_number(config, "evaluation.num_points", 1, integer=True)
    output = config["output"]
    if output is not None and (not isinstance(output, str) or not output or "/" in output or output.startswith(".")):
        raise ConfigError("output", f"must be a folder name, got {output!r}")
    return config


def user_source(name: str) -> tuple[str, Path] | None:
    """('folder' | 'npz' | 'csv', path) of a user source named in dataset.name, or None for the other names."""
    kind, _, path = name.partition(":")
    if kind in SOURCES and not path:
        raise ConfigError("dataset.name", f"{name!r} names no path; give {kind}:PATH")
    return parse_source(name)


def validate_user_fields(config: dict, source: tuple[str, Path] | None) -> None:
    """Check the fields of the user's own data (USER_FIELDS, and channels for a folder), each given only for the
    sources it applies to, and fill in their defaults: test_fraction 0.2, the label from the file's or folder's
    name, label_column 'label'."""
    dataset = config["dataset"]
    kind = source[0] if source is not None else None
    for field, kinds in USER_FIELDS.items():
        if dataset[field] not in (None, False) and kind not in kinds:
            raise ConfigError(f"dataset.{field}", f"applies to {' and '.join(f'{k}:' for k in kinds)} sources only, "
                                                  f"not to {dataset['name']}")
    if kind in ("npz", "csv") and dataset["channels"] is not None:
        raise ConfigError("dataset.channels", f"applies to folder: sources and gaussian only; {kind}: data keep "
                                              "their own shape")
    if source is None:
        return
    path = source[1]
    if not (path.is_dir() if kind == "folder" else path.is_file()):
        raise ConfigError("dataset.name", f"{dataset['name']}: no such {'folder' if kind == 'folder' else 'file'}")
    if dataset["test_fraction"] is None:
        dataset["test_fraction"] = DEFAULT_TEST_FRACTION
    check_number(config, "dataset.test_fraction", 0, strict=True)
    if dataset["test_fraction"] >= 1:
        raise ConfigError("dataset.test_fraction", f"must be below 1 (some of each class trains), "
                                                   f"got {dataset['test_fraction']!r}")
    label = dataset["label"]
    if label is None:
        dataset["label"] = default_label(kind, path)
    elif not isinstance(label, str) or not LABEL_PATTERN.fullmatch(label) or label.startswith("."):
        raise ConfigError("dataset.label", f"must be letters, digits and . _ + -, not starting with a dot (it names "
                                           f"the decoded folder's cache), got {label!r}")
    if dataset["channels"] not in (None, 1, 3):
        raise ConfigError("dataset.channels", f"a folder's images are converted to 1 (greyscale) or 3 (RGB) "
                                              f"channels, got {dataset['channels']!r}")
    size = dataset["image_size"]
    if size is not None and (not isinstance(size, list) or len(size) != 2 or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in size)):
        raise ConfigError("dataset.image_size", f"must be [height, width] in pixels, got {size!r}")
    if not isinstance(dataset["skip_unreadable"], bool):
        raise ConfigError("dataset.skip_unreadable", f"must be true or false, got {dataset['skip_unreadable']!r}")
    for field in ("label_column", "id_column"):
        if dataset[field] is not None and (not isinstance(dataset[field], str) or not dataset[field]):
            raise ConfigError(f"dataset.{field}", f"must be a column name, got {dataset[field]!r}")
    if kind == "csv" and dataset["label_column"] is None:
        dataset["label_column"] = "label"
    if kind == "csv":
        check_columns(dataset, path)


def check_columns(dataset: dict, path: Path) -> None:
    """dataset.label_column and dataset.id_column are columns of the csv's header row; a file that cannot be read
    is left to the loader, whose error names it."""
    try:
        with open(path, newline="") as handle:
            header = [name.strip() for name in next(csv.reader(handle), [])]
    except (OSError, UnicodeDecodeError, csv.Error):
        return
    for field in ("label_column", "id_column"):
        if dataset[field] is not None and dataset[field] not in header:
            raise ConfigError(f"dataset.{field}", f"{dataset['name']} has no column {dataset[field]!r}; its columns "
                                                  f"are {', '.join(header)}")


def is_label(value: Any) -> bool:
    """A class given as an index (an integer, not a boolean) or a name."""
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def load_config(path: Path, overrides: Sequence[str] = (), seed: int | None = None) -> dict:
    """The config at `path` over the defaults, with `section.key=value` overrides (values read as YAML) and
    `seed` as training.seed; `output` defaults to the file's name. The Gaussian fields may be nested under
    dataset.gaussian (the original's layout) and model.small_input names model.cifar_stem (ALIASES)."""
    config = read_config(path, DEFAULTS, overrides, aliases=ALIASES)
    if seed is not None:
        config["training"]["seed"] = seed
    if config["output"] is None:
        config["output"] = Path(path).stem
    return validate(config)


def evaluation_steps(total_steps: int, num_points: int) -> list[int]:
    """Step 0 and 10^linspace(0, log10(total_steps), num_points), truncated to integers, without repeats."""
    points = np.logspace(0, math.log10(total_steps), num_points) if num_points > 1 else np.array([total_steps])
    return sorted({0, *(int(math.floor(p * (1 + 1e-12))) for p in points)})


# ----------------------------------------------------------------------------- data

@dataclass
class SimulationData:
    """Both splits, standardised with the training split's per-channel (images) or per-column (tables)
    statistics, on one device, with the names of the classes (after class_map) and every sample's identity."""
    train_x: Tensor       # [N, C, H, W] or [N, D]
    train_y: Tensor       # [N]
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    class_names: list[str]
    train_ids: list[str]  # [N] "train/<i>" (position in the dataset's training split), or the user source's ids
    test_ids: list[str]

    def samples(self) -> dict[str, np.ndarray]:
        """The arrays of samples.npz: class_names [C], train_sample_ids [N], test_sample_ids [M], and the
        samples' (new) labels train_labels [N], test_labels [M]."""
        return {"class_names": np.array(self.class_names), "train_sample_ids": np.array(self.train_ids),
                "test_sample_ids": np.array(self.test_ids), "train_labels": self.train_y.cpu().numpy(),
                "test_labels": self.test_y.cpu().numpy()}


def gaussian_splits(dataset: dict) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gaussian classes: every sample is `mean` + its class's mean + `std` * N(0, I), drawn from `seed`.
    Class means: explicit `means`, or (s / sqrt(2)) * q_c for orthonormal q_c, so every pair is s apart."""
    generator = torch.Generator().manual_seed(dataset["seed"])
    shape = (dataset["channels"], dataset["height"], dataset["width"])
    size, classes = math.prod(shape), dataset["num_classes"]
    if dataset["means"] is not None:
        class_means = torch.stack([torch.full((size,), float(m)) if isinstance(m, (int, float))
                                   else torch.tensor(m, dtype=torch.float32) for m in dataset["means"]])
    else:
        directions, _ = torch.linalg.qr(torch.randn(size, classes, generator=generator, dtype=torch.float64))
        class_means = (dataset["separation"] / math.sqrt(2) * directions.T).float()          # [classes, size]
    splits = []
    for per_class in (dataset["train_samples_per_class"], dataset["test_samples_per_class"]):
        labels = torch.arange(classes).repeat_interleave(per_class)
        noise = torch.randn(len(labels), size, generator=generator)
        splits += [(dataset["mean"] + class_means[labels] + dataset["std"] * noise).view(len(labels), *shape), labels]
    return tuple(splits)


def class_index(label: int | str, field: str, dataset_name: str, names: Sequence[str] | None) -> int:
    """The index of a class given by index or by name, one of `names` (torchvision's `classes` of the
    dataset; None for Gaussian classes, which have no names)."""
    if not isinstance(label, str):
        return label
    if names is None:
        raise ConfigError(field, f"{dataset_name} classes have no names; give indices, got {label!r}")
    if label in names:
        return list(names).index(label)
    close = difflib.get_close_matches(label, names, n=3)
    hint = f"did you mean {', '.join(map(repr, close))}? " if close else ""
    shown = ", ".join(map(repr, names[:6])) + (f", ... ({len(names)} in all)" if len(names) > 6 else "")
    raise ConfigError(field, f"no class named {label!r} in {dataset_name}; {hint}its names are {shown}, "
                             f"or give indices 0-{len(names) - 1}")


def class_mapping(dataset: dict, labels: Tensor, names: Sequence[str] | None = None) -> dict[int, int]:
    """{original label: new label}: `class_map`, or `classes` in order, or every label as it is; classes
    given by name are looked up in `names` (see class_index)."""
    field = "dataset.class_map" if dataset["class_map"] is not None else "dataset.classes"
    if dataset["class_map"] is not None:
        given = list(dataset["class_map"].items())
    elif dataset["classes"] is not None:
        given = [(c, i) for i, c in enumerate(dataset["classes"])]
    else:
        return {c: c for c in range(int(labels.max()) + 1)}
    mapping, given_as = {}, {}
    for label, new in given:
        index = class_index(label, field, dataset["name"], names)
        if index in mapping:
            raise ConfigError(field, f"class {index} is given twice: as {given_as[index]!r} and as {label!r}")
        mapping[index], given_as[index] = new, label
    return mapping


def read_user_source(dataset: dict, device: torch.device, root: Path) -> UserData:
    """The folder:, npz: or csv: source dataset.name names, read whole (a folder decoded once and cached under
    `root`), after checking that its float32 values fit in `device`'s free memory."""
    kind, path = parse_source(dataset["name"])

    def check_memory(samples: int, sample_shape: tuple[int, ...]) -> None:
        needed = samples * math.prod(sample_shape) * 4 * (3 if device.type == "cpu" else 1)   # + raw + a copy
        free = free_memory_bytes(device)
        if needed > free:
            raise ConfigError("dataset.name", f"{samples} samples of {dataset['name']} shaped {list(sample_shape)} "
                                              f"need about {needed / 2**30:.1f} GiB, more than the "
                                              f"{free / 2**30:.1f} GiB free on {device}; give a smaller source")

    if kind == "folder":
        size = dataset["image_size"]
        return load_folder(path, root, dataset["label"], dataset["channels"], tuple(size) if size else None,
                           dataset["skip_unreadable"], check_memory)
    if kind == "npz":
        return load_npz(path, check_memory)
    return load_csv(path, dataset["label_column"], dataset["id_column"], check_memory)


def stratified_split(labels: np.ndarray, classes: Sequence[int], fraction: float, seed: int,
                     names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Training and test rows (each in increasing order) of the samples of `classes`: of a class of n samples,
    ceil(fraction * n) (fraction * n rounded to 9 decimals first, so 0.1 * 30 is 3) go to the test split, drawn
    without replacement from numpy's default_rng(seed), one class after another in increasing class order; the
    rest train. A class left with no training sample is a ConfigError."""
    generator = np.random.default_rng(seed)
    train, test = [], []
    for c in sorted(classes):
        members = np.flatnonzero(labels == c)
        held = math.ceil(round(fraction * len(members), 9))
        if held >= len(members):
            raise ConfigError("dataset.test_fraction", f"class {names[c]!r} has {len(members)} sample(s), and "
                                                       f"{fraction} of them rounded up leaves none to train on")
        drawn = generator.permutation(members)
        test.append(drawn[:held])
        train.append(drawn[held:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def merged_class_names(mapping: dict[int, int], names: Sequence[str] | None) -> list[str]:
    """The name of every new label: its original class's name (its index for Gaussian classes), or the names of
    the classes class_map merges into it joined by '+', in increasing original order."""
    merged: dict[int, list[str]] = {}
    for original, new in sorted(mapping.items()):
        merged.setdefault(new, []).append(str(original) if names is None else str(names[original]))
    return ["+".join(merged[new]) for new in range(len(merged))]


def load_simulation_data(dataset: dict, root: Path, device: torch.device) -> SimulationData:
    """Filter and relabel the classes, standardise per channel (per column for a table) with the filtered training
    split's mean and std (population), apply that to both splits, then add `shift`. A user source is split by
    stratified_split with dataset.test_fraction and dataset.seed first."""
    names, source = None, None
    if dataset["name"] == "gaussian":
        train_x, train_y, test_x, test_y = gaussian_splits(dataset)
    elif parse_source(dataset["name"]) is not None:
        source = read_user_source(dataset, device, Path(root))
        names, train_y = source.class_names, torch.from_numpy(source.labels)
    else:
        splits = torchvision_splits(canonical_dataset_name(dataset["name"]), Path(root))
        names = splits[0].classes
        (train_x, test_x), (train_y, test_y) = (
            [as_nchw_uint8(split.data).float() / 255 for split in splits],
            [torch.as_tensor(split.targets, dtype=torch.int64) for split in splits])
    mapping = class_mapping(dataset, train_y, names)
    missing = sorted(set(mapping) - set(train_y.unique().tolist()))
    if missing:
        raise ConfigError("dataset.class_map" if dataset["class_map"] is not None else "dataset.classes",
                          f"label(s) {missing} not in {dataset['name']}")
    if source is None:
        train_ids, test_ids = [f"train/{i}" for i in range(len(train_y))], [f"test/{i}" for i in range(len(test_y))]
    else:
        rows = stratified_split(source.labels, list(mapping), dataset["test_fraction"], dataset["seed"], names)
        values = torch.from_numpy(source.values)
        values = values.float() / 255 if values.dtype == torch.uint8 else values.float()
        train_x, test_x = [values[r] for r in rows]
        train_y, test_y = [torch.from_numpy(source.labels[r]) for r in rows]
        train_ids, test_ids = [[source.sample_ids[i] for i in r.tolist()] for r in rows]
    lookup = torch.full((int(max(train_y.max(), test_y.max(), max(mapping))) + 1,), -1)
    lookup[list(mapping)] = torch.tensor(list(mapping.values()))
    kept = []
    for x, y, ids in ((train_x, train_y, train_ids), (test_x, test_y, test_ids)):
        new = lookup[y]
        kept += [x[new >= 0], new[new >= 0], [ids[i] for i in torch.nonzero(new >= 0).flatten().tolist()]]
    train_x, train_y, train_ids, test_x, test_y, test_ids = kept
    dims = (0, *range(2, train_x.dim()))                  # per channel of [N, C, H, W], per column of [N, D]
    mean = train_x.mean(dim=dims, keepdim=True)
    std = train_x.std(dim=dims, correction=0, keepdim=True)
    std = torch.where(std > 0, std, 1)
    train_x, test_x = [(x - mean) / std + dataset["shift"] for x in (train_x, test_x)]
    return SimulationData(train_x.to(device), train_y.to(device), test_x.to(device), test_y.to(device),
                          len(set(mapping.values())), merged_class_names(mapping, names), train_ids, test_ids)


# ----------------------------------------------------------------------------- models and batched training

def build_model(model: dict, input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """The config's network, with Kaiming weights and zero biases; only the MLP takes a table ([D] inputs)."""
    if len(input_shape) == 1 and model["type"] != "mlp":
        raise ConfigError("model.type", f"{model['type']} needs images, and the data are a table of {input_shape[0]} "
                                        "features; give mlp")
    if model["type"] == "mlp":
        network = HardnessMLP(input_shape, model["depth"], model["width"], num_classes, model["activation"])
    elif model["type"] == "cnn":
        if min(input_shape[1:]) // 2 ** model["depth"] < 1:
            raise ConfigError("model.depth", f"{model['depth']} poolings leave no pixels of a "
                                             f"{input_shape[1]}x{input_shape[2]} input")
        network = HardnessCNN(input_shape, model["depth"], model["width"], num_classes, model["activation"],
                              model["pooling"])
    else:
        network = HardnessResNet50(input_shape[0], num_classes, model["cifar_stem"], model["activation"],
                                   model["pooling"])
    return kaiming_initialise(network, model["init"])


class RunGroup:
    """Independent networks trained together: MLPs and CNNs as one stacked computation (`torch.vmap` over
    their stacked parameters), a ResNet alone. `forward(x)` gives logits [runs, n, C] and features
    [runs, n, F] from shared inputs [n, ...] or per-run inputs [runs, n, ...] (`per_run`)."""

    def __init__(self, models: Sequence[nn.Module]) -> None:
        self.stacked = not any(isinstance(m, HardnessResNet50) for m in models)
        if self.stacked:
            self.networks = StackedNetworks(models)
        else:
            if len(models) != 1:
                raise ValueError("a ResNet trains alone")
            self.model = models[0]

    def parameters(self) -> list[Tensor]:
        return self.networks.parameters() if self.stacked else list(self.model.parameters())

    def train(self, mode: bool) -> None:
        if not self.stacked:
            self.model.train(mode)

    def forward(self, x: Tensor, per_run: bool = False) -> tuple[Tensor, Tensor]:
        if not self.stacked:
            logits, features = self.model(x[0] if per_run else x)
            return logits[None], features[None]
        return self.networks.forward(x, per_run)


def cosine_matrix(means: Tensor) -> Tensor:
    """[..., C, C] cosine similarity of class means [..., C, D]; NaN where a mean is all zero."""
    norms = means.norm(dim=-1)
    cosine = (means @ means.transpose(-1, -2)) / (norms[..., :, None] * norms[..., None, :])
    return cosine.clamp(-1, 1)   # NaN stays NaN


def evaluate(group: RunGroup, x: Tensor, y: Tensor, num_classes: int) -> dict[str, Tensor]:
    """Loss and accuracy of every run, overall [runs] and per class [runs, C], and the cosine of the class
    means of its features [runs, C, C], in eval mode, chunk by chunk."""
    group.train(False)
    losses, correct, feature_sums = 0, 0, 0
    with torch.no_grad():
        for xs, ys in zip(x.split(PREDICTION_CHUNK), y.split(PREDICTION_CHUNK)):
            logits, features = group.forward(xs)                                          # [runs, n, C], [runs, n, F]
            one_hot = one_hot_float(ys, num_classes, torch.float64)                       # [n, C]
            loss = F.cross_entropy(logits.transpose(1, 2), ys.expand(len(logits), -1), reduction="none")  # [runs, n]
            losses = losses + loss.double() @ one_hot                                     # [runs, C]
            correct = correct + (logits.argmax(-1) == ys).double() @ one_hot
            feature_sums = feature_sums + one_hot.T @ features.double()                   # [runs, C, F]
    group.train(True)
    counts = one_hot_float(y, num_classes, torch.float64).sum(0)                          # [C]
    return {"loss": losses.sum(1) / len(y), "accuracy": correct.sum(1) / len(y),
            "loss_per_class": losses / counts, "accuracy_per_class": correct / counts,
            "overlap": cosine_matrix(feature_sums / counts[:, None])}


def static_overlap(data: SimulationData) -> Tensor:
    """[C, C] cosine of the class means of the standardised training inputs."""
    one_hot = one_hot_float(data.train_y, data.num_classes, torch.float64)
    means = (one_hot.T @ data.train_x.flatten(1).double()) / one_hot.sum(0)[:, None]
    return cosine_matrix(means)


def train_group(config: dict, data: SimulationData, runs: Sequence[int], steps: Sequence[int],
                progress: bool = True) -> list[dict[str, np.ndarray]]:
    """Train the config's network for each run index in `runs` at once, evaluating both splits after each
    of `steps` optimizer steps (0 = untrained); the metrics of every run, arrays over the steps."""
    training = config["training"]
    models = []
    for run in runs:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(stage_seed(training["seed"], ClassHardnessStage.INITIALISATION, run))
            models.append(build_model(config["model"], data.train_x.shape[1:], data.num_classes).to(data.train_x.device))
    group = RunGroup(models)
    optimizer = (torch.optim.SGD if training["optimizer"] == "sgd" else torch.optim.Adam)(group.parameters(),
                                                                                          lr=training["lr"])
    shuffles = [stage_generator(training["seed"], ClassHardnessStage.MINIBATCH_ORDER, run) for run in runs]
    records: list[dict[str, Tensor]] = []

    def record() -> None:
        test = evaluate(group, data.test_x, data.test_y, data.num_classes)
        train = evaluate(group, data.train_x, data.train_y, data.num_classes)
        records.append({**{k: v for k, v in test.items()}, **{f"train_{k}": v for k, v in train.items()
                                                               if k != "overlap"}})

    wanted, step, n = set(steps), 0, len(data.train_y)
    if 0 in wanted:
        record()
    batches_per_epoch = math.ceil(n / training["batch_size"])
    bar = tqdm(total=training["epochs"] * batches_per_epoch, desc=f"{len(runs)} run(s)", disable=not progress,
               leave=False)
    for _ in range(training["epochs"]):
        order = epoch_orders(shuffles, n, data.train_y.device)                                          # [runs, n]
        for batch in order.split(training["batch_size"], dim=1):                                   # [runs, b]
            logits, _ = group.forward(data.train_x[batch], per_run=True)                           # [runs, b, C]
            loss = F.cross_entropy(logits.transpose(1, 2), data.train_y[batch], reduction="none").mean(1).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            bar.update()
            if step in wanted:
                record()
    bar.close()
    return [{key: torch.stack([r[key][i] for r in records]).cpu().numpy() for key in records[0]}
            for i in range(len(runs))]


def simulate(config: dict, data: SimulationData, progress: bool = True) -> tuple[list[dict[str, np.ndarray]], list[int]]:
    """Every run's metrics (see the README for the arrays) and the evaluation steps."""
    total = config["training"]["epochs"] * math.ceil(len(data.train_y) / config["training"]["batch_size"])
    evaluation = config["evaluation"]
    if evaluation["steps"] is not None:
        steps = sorted({0, *evaluation["steps"]})
        if steps[-1] > total:
            raise ConfigError("evaluation.steps", f"step {steps[-1]} is beyond the {total} optimizer steps of training")
    else:
        steps = evaluation_steps(total, evaluation["num_points"])
    groups = [[run] for run in range(config["runs"])] if config["model"]["type"] == "resnet" else [list(range(config["runs"]))]
    static = static_overlap(data).float().cpu().numpy()
    results = []
    for runs in groups:
        for metrics in train_group(config, data, runs, steps, progress):
            results.append(package(metrics, steps, static))
    nan_runs = [i for i, r in enumerate(results) if np.isnan(r["overlap_dynamic"]).any()]
    if nan_runs or np.isnan(static).any():
        print(f"warning: a class's mean feature is all zero in run(s) {nan_runs or 'none'}"
              f"{' and in the inputs' if np.isnan(static).any() else ''}; its overlaps are NaN", file=sys.stderr)
    return results, steps


def package(metrics: dict[str, np.ndarray], steps: Sequence[int], static: np.ndarray) -> dict[str, np.ndarray]:
    """One run's metrics.npz arrays, with the documented names and dtypes."""
    arrays = {"steps": np.asarray(steps, dtype=np.int64)}
    for key in ("loss", "accuracy", "train_loss", "train_accuracy"):
        arrays[key] = metrics[key].astype(np.float64)
    for key in PER_CLASS_KEYS:
        arrays[key] = metrics[key].astype(np.float32)
    arrays["overlap_dynamic"] = metrics["overlap"].astype(np.float32)
    arrays["overlap_static"] = static.astype(np.float32)
    return arrays


# ----------------------------------------------------------------------------- results

def save_simulation(results: Sequence[dict[str, np.ndarray]], config: dict, settings: dict, folder: Path,
                    overwrite: bool, samples: dict[str, np.ndarray]) -> None:
    """run_<i>/metrics.npz with metrics.json (settings) and config.yaml (the resolved config) beside it, for
    every run, and samples.npz (SimulationData.samples: the class names and both splits' sample ids). The folder
    is written whole beside its place and then renamed into it, so a reader never sees half of it; an existing
    one is refused unless `overwrite`."""
    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise UserInputError(f"{folder} exists; give --overwrite to replace it, or another output name "
                             "(--set output=NAME)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    try:
        config_text = yaml.safe_dump(config, sort_keys=False)
        packed = io.BytesIO()
        np.savez_compressed(packed, **samples)
        write_atomically(staging / "samples.npz", packed.getvalue())
        for i, arrays in enumerate(results):
            run_folder = staging / f"run_{i}"
            save_npz_with_settings(arrays, run_folder / "metrics.npz", {**settings, "config": config, "run": i})
            write_atomically(run_folder / "config.yaml", config_text.encode())
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def load_simulation(folder: Path) -> list[dict[str, np.ndarray]]:
    """The metrics of every run_<i> under `folder`, in run order."""
    paths = sorted(Path(folder).glob("run_*/metrics.npz"), key=lambda p: int(p.parent.name.split("_")[1]))
    if not paths:
        raise UserInputError(f"no run_*/metrics.npz under {folder}; make it with class_hardness_simulation.py")
    return [dict(np.load(path)) for path in paths]


# ----------------------------------------------------------------------------- figures

def _mean_and_error(values: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Mean over runs (axis 0) and the standard error (std with ddof 1 / sqrt(runs)); no error for one run."""
    if len(values) == 1:
        return values[0], None
    return np.nanmean(values, 0), np.nanstd(values, 0, ddof=1) / math.sqrt(len(values))


def _band(ax: plt.Axes, x: np.ndarray, values: np.ndarray, colour: Any) -> None:
    mean, error = _mean_and_error(values)
    ax.plot(x, mean, color=colour)
    if error is not None:
        ax.fill_between(x, mean - error, mean + error, color=colour, alpha=0.2)


def class_colours(num_classes: int) -> list:
    """One colour per class: tab10 up to 10 classes, tab20 up to 20, a viridis ramp beyond."""
    if num_classes <= 20:
        palette = plt.get_cmap("tab10" if num_classes <= 10 else "tab20")
        return [palette(c) for c in range(num_classes)]
    return [plt.get_cmap("viridis")(v) for v in np.linspace(0, 1, num_classes)]


def snapshot_indices(num_steps: int) -> list[int]:
    """The evaluations whose overlap matrices are drawn: the first, the middle one and the last."""
    return sorted({0, (num_steps - 1) // 2, num_steps - 1})


def plot_dynamics(settings: dict[str, list[dict[str, np.ndarray]]], metric: str) -> plt.Figure:
    """One column per setting. Top: per-class test `metric` against step + 1 (log axis), mean +- standard
    error over runs, one colour per class, y shared across settings, one class legend (a colour bar beyond 20
    classes). Below: the C x C dynamic overlap (mean over runs; diagonal blank) after the first, middle and last
    evaluation, on one colour scale for the figure (viridis from the lowest overlap, rounded down to 0.1, to 1;
    red-blue from -1 to 1 when an overlap is negative), values written in when C <= 4."""
    num_classes = max(runs[0][f"{metric}_per_class"].shape[1] for runs in settings.values())
    colours = class_colours(num_classes)
    snapshots = snapshot_indices(len(next(iter(settings.values()))[0]["steps"]))
    columns = len(snapshots)
    fig = plt.figure(figsize=(max(4.4 * len(settings), 5.5) + 1.2, 6.6), layout="constrained")
    grid = fig.add_gridspec(2, columns * len(settings), height_ratios=[1.5, 1])
    curves: list[plt.Axes] = []
    heat_maps: list[plt.Axes] = []
    for column, (name, runs) in enumerate(settings.items()):
        ax = fig.add_subplot(grid[0, column * columns:(column + 1) * columns], sharey=curves[0] if curves else None)
        curves.append(ax)
        x = runs[0]["steps"] + 1
        per_class = np.stack([r[f"{metric}_per_class"] for r in runs])                    # [runs, T, C]
        for c in range(per_class.shape[2]):
            _band(ax, x, per_class[:, :, c], colours[c])
        ax.set_xscale("log")
        ax.set_xlabel("optimizer step + 1")
        ax.set_title(f"{name} ({len(runs)} run{'s' if len(runs) > 1 else ''})")
        if column:
            ax.tick_params(labelleft=False)
        for k, t in enumerate(snapshots):
            heat_maps.append(fig.add_subplot(grid[1, column * columns + k]))
            heat_maps[-1].set_title(f"step {runs[0]['steps'][t]}", fontsize=9)
    matrices = [np.stack([r["overlap_dynamic"][t] for r in runs]) for runs in settings.values() for t in snapshots]
    lowest = min(np.nanmin(np.where(np.eye(m.shape[-1], dtype=bool), np.nan, m)) for m in matrices)
    scale = ("viridis", math.floor(10 * lowest) / 10) if lowest >= 0 else ("RdBu_r", -1)
    for ax, overlaps in zip(heat_maps, matrices):
        image = _overlap_heat_map(ax, overlaps, *scale)
    curves[0].set_ylabel(f"test {metric} per class")
    heat_maps[0].set_ylabel("class")
    if num_classes <= 20:
        curves[-1].legend([Line2D([], [], color=colour) for colour in colours],
                          [f"class {c}" for c in range(num_classes)], loc="upper left", bbox_to_anchor=(1.02, 1),
                          fontsize=8, ncols=1 if num_classes <= 10 else 2)
    else:
        bar = fig.colorbar(plt.cm.ScalarMappable(plt.Normalize(0, num_classes - 1), plt.get_cmap("viridis")),
                           ax=curves, pad=0.01)
        bar.set_label("class")
    bar = fig.colorbar(image, ax=heat_maps, location="bottom", shrink=0.5, aspect=40, pad=0.02)
    bar.set_label("overlap (cosine of class-mean features), mean over runs", fontsize=8)
    return fig


def _overlap_heat_map(ax: plt.Axes, overlaps: np.ndarray, palette: str, low: float) -> Any:
    """Draw the mean over runs of overlap matrices [runs, C, C] with a blank diagonal, coloured from `low` to 1;
    the image."""
    num_classes = overlaps.shape[-1]
    mean, error = _mean_and_error(overlaps)                                                # [C, C]
    mean = np.where(np.eye(num_classes, dtype=bool), np.nan, mean)
    image = ax.imshow(mean, cmap=plt.get_cmap(palette).with_extremes(bad="white"), vmin=low, vmax=1)
    ticks = np.arange(0, num_classes, max(1, num_classes // 10))
    ax.set_xticks(ticks, ticks, fontsize=7)
    ax.set_yticks(ticks, ticks, fontsize=7)
    if num_classes <= 4:
        for i, j in zip(*np.nonzero(~np.eye(num_classes, dtype=bool))):
            text = f"{mean[i, j]:.2f}" + (f"\n±{error[i, j]:.2f}" if error is not None else "")
            shade = (mean[i, j] - low) / (1 - low)
            dark = shade < 0.6 if palette == "viridis" else abs(shade - 0.5) > 0.3
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if dark else "black")
    return image


def plot_dynamic_vs_static(settings: dict[str, list[dict[str, np.ndarray]]]) -> plt.Figure:
    """Final dynamic overlap against static overlap, every run and class pair, one colour per setting; the
    diagonal marks equal overlaps."""
    fig, ax = plt.subplots(figsize=(5, 4.5))
    for name, runs in settings.items():
        pairs = np.triu_indices(runs[0]["overlap_static"].shape[0], 1)
        static = np.concatenate([r["overlap_static"][pairs] for r in runs])
        final = np.concatenate([r["overlap_dynamic"][-1][pairs] for r in runs])
        ax.scatter(static, final, s=14, alpha=0.7, label=name)
    low, high = min(ax.get_xlim()[0], ax.get_ylim()[0]), max(ax.get_xlim()[1], ax.get_ylim()[1])
    ax.plot([low, high], [low, high], color="0.6", linestyle="--", linewidth=1, label="equal overlap")
    ax.set_xlabel("static overlap (inputs)")
    ax.set_ylabel("final dynamic overlap (features)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def draw_figures(settings: dict[str, list[dict[str, np.ndarray]]], folder: Path) -> list[Path]:
    """loss_and_overlap, accuracy_and_overlap and overlap_dynamic_vs_static under `folder` (PNG and PDF).
    Settings must share one evaluation schedule."""
    schedules = {name: tuple(runs[0]["steps"]) for name, runs in settings.items()}
    if len(set(schedules.values())) > 1:
        raise UserInputError("the settings were evaluated at different steps ("
                             + "; ".join(f"{name}: {len(s)} steps up to {s[-1]}" for name, s in schedules.items())
                             + "); plot together only settings with the same step schedule")
    saved = []
    for metric in ("loss", "accuracy"):
        saved += save_figure(plot_dynamics(settings, metric), folder / f"{metric}_and_overlap")
    saved += save_figure(plot_dynamic_vs_static(settings), folder / "overlap_dynamic_vs_static")
    return saved
