"""The class-hardness simulations' data: a torchvision dataset's own splits, Gaussian classes, or the user's own
folder:, npz: or csv: source split by a seeded, stratified `test_fraction`; classes kept, merged or reordered
by `classes` or `class_map` (given by index or name), standardised with the training split's statistics."""
import difflib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from hardness.config import ConfigError
from hardness.cli import FieldError
from hardness.data import load_source
from hardness.memory import RunDescription, memory_check
from hardness.user_data import Source, SourceOptions, parse_source


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


def config_key(field: str) -> str:
    """The config key of a field a user-source error names (hardness.cli.FieldError)."""
    return {"dataset_name": "dataset.name", "dataset_label": "dataset.label"}.get(field, f"dataset.{field}")


def read_source(dataset: dict, device: torch.device, root: Path) -> Source:
    """The built-in dataset or the folder:, npz: or csv: source dataset.name names, read whole through the one
    loading path (hardness.data.load_source; a folder decoded once and cached under `root`); a user source after
    checking that its values fit in `device`'s free memory. Errors name the config's keys."""
    size = dataset["image_size"]
    options = SourceOptions(dataset["label"], dataset["channels"], tuple(size) if size else None,
                            dataset["label_column"] or "label", dataset["id_column"], dataset["skip_unreadable"])
    user = parse_source(dataset["name"]) is not None
    check = memory_check(RunDescription(network=None), device, None, dataset["name"]) if user else None
    try:
        return load_source(dataset["name"], root, options, check)
    except FieldError as error:
        raise ConfigError(config_key(error.field), error.wording(config_key)) from None


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
    if dataset["name"] == "gaussian":
        train_x, train_y, test_x, test_y = gaussian_splits(dataset)
        names, source, known = None, None, train_y
    else:
        source = read_source(dataset, device, Path(root))
        names, labels = source.class_names, torch.from_numpy(source.labels)
        known = labels if source.in_train is None else labels[torch.from_numpy(source.in_train)]
    mapping = class_mapping(dataset, known, names)
    missing = sorted(set(mapping) - set(known.unique().tolist()))
    if missing:
        raise ConfigError("dataset.class_map" if dataset["class_map"] is not None else "dataset.classes",
                          f"label(s) {missing} not in {dataset['name']}")
    if source is None:
        train_ids, test_ids = [f"train/{i}" for i in range(len(train_y))], [f"test/{i}" for i in range(len(test_y))]
    else:
        rows = (stratified_split(source.labels, list(mapping), dataset["test_fraction"], dataset["seed"], names)
                if source.in_train is None else (np.flatnonzero(source.in_train), np.flatnonzero(~source.in_train)))
        values = torch.from_numpy(source.values)
        values = values.float() / 255 if values.dtype == torch.uint8 else values.float()
        train_x, test_x = [values[r] for r in rows]
        train_y, test_y = [labels[r] for r in rows]
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
