"""The class-hardness simulations' config: its fields declared once (SCHEMA: path, default, kind, range), the
file read over their defaults with `--set` overrides and the original's other names (ALIASES), and the checks
that the schema cannot express (the dataset's name and classes, Gaussian means, pooling, the user's own data's
fields), each error naming its field."""
import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hardness.config import ConfigError, Field, check_fields, read_config, schema_defaults
from hardness.user_data import LABEL_PATTERN, SOURCES, default_label, parse_source
from neural_networks import ACTIVATIONS

DATASETS = {"mnist", "fashionmnist", "kmnist", "cifar10", "cifar100", "gaussian"}
GAUSSIAN_FIELDS = ("channels", "height", "width", "num_classes", "train_samples_per_class", "test_samples_per_class",
                   "std", "mean", "seed", "separation", "means")
SCHEMA = (
    Field("dataset.name", None),                      # required: a built-in dataset, gaussian or a user source
    Field("dataset.classes", None),
    Field("dataset.class_map", None),
    Field("dataset.shift", 0.0, "number"),
    # the user's own data (USER_FIELDS)
    Field("dataset.test_fraction", None, "number", low=0, strict=True, optional=True),   # below 1; 0.2 if not given
    Field("dataset.label", None),
    Field("dataset.label_column", None),
    Field("dataset.id_column", None),
    Field("dataset.image_size", None),
    Field("dataset.skip_unreadable", False, "bool"),
    # Gaussian classes (channels also for a folder)
    Field("dataset.channels", None, "integer", low=1, optional=True),                   # 1 for gaussian if not given
    Field("dataset.height", 8, "integer", low=1),
    Field("dataset.width", 8, "integer", low=1),
    Field("dataset.num_classes", 3, "integer", low=1),
    Field("dataset.train_samples_per_class", 20, "integer", low=1),
    Field("dataset.test_samples_per_class", 10, "integer", low=1),
    Field("dataset.std", 1.0, "number", low=0, strict=True),
    Field("dataset.mean", 0.0, "number"),
    Field("dataset.seed", 0, "integer", low=0),
    Field("dataset.separation", 0.0, "number", low=0),
    Field("dataset.means", None),
    Field("model.type", "mlp", "choice", choices=("mlp", "cnn", "resnet")),
    Field("model.depth", 1, "integer", low=0),
    Field("model.width", 32, "integer", low=1),
    Field("model.activation", "relu", "choice", choices=tuple(ACTIVATIONS)),
    Field("model.pooling", None, "choice", choices=("max", "avg")),   # avg for resnet, max otherwise if not given
    Field("model.cifar_stem", True),                                  # true or false; small_input is its other name
    Field("model.init", "kaiming_normal", "choice", choices=("kaiming_normal", "kaiming_uniform")),
    Field("training.epochs", 1, "integer", low=1),
    Field("training.batch_size", 10, "integer", low=1),
    Field("training.lr", 0.01, "number", low=0, strict=True),
    Field("training.optimizer", "sgd", "choice", choices=("sgd", "adam")),
    Field("training.seed", 0, "integer", low=0),
    Field("runs", 1, "integer", low=1),
    Field("evaluation.steps", None),                                  # a list of optimizer steps
    Field("evaluation.num_points", 5, "integer", low=1),
    Field("output", None),                                            # a folder name; the config file's if not given
)
# the original's layout: the Gaussian fields nested under dataset.gaussian; its earlier name of cifar_stem
ALIASES = {**{f"dataset.gaussian.{field}": f"dataset.{field}" for field in GAUSSIAN_FIELDS},
           "model.small_input": "model.cifar_stem"}
# the fields of the user's own data, and the sources they apply to (channels also applies to gaussian)
USER_FIELDS = {"test_fraction": SOURCES, "label": SOURCES, "label_column": ("csv",), "id_column": ("csv",),
               "image_size": ("folder",), "skip_unreadable": ("folder",)}
DEFAULT_TEST_FRACTION = 0.2


def validate(config: dict) -> dict:
    """The config with every field checked (a ConfigError names the first bad one), a built-in dataset's name
    lowered and the defaults that depend on other fields filled in (channels, pooling, the user-data fields)."""
    dataset, model = config["dataset"], config["model"]
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
    if dataset["name"] == "gaussian" and dataset["channels"] is None:
        dataset["channels"] = 1
    if model["pooling"] is None:
        model["pooling"] = "avg" if model["type"] == "resnet" else "max"
    if model["type"] == "resnet" and model["pooling"] == "none":
        raise ConfigError("model.pooling", "none does not work for resnet: its head and the overlap feature take the "
                                           "2048 channels of one global pool; give avg or max")
    check_fields(config, SCHEMA)
    validate_user_fields(config, source)
    validate_classes(dataset)
    if dataset["name"] == "gaussian" and dataset["means"] is not None:
        size = dataset["channels"] * dataset["height"] * dataset["width"]
        means = dataset["means"]
        if not isinstance(means, list) or len(means) != dataset["num_classes"] or not all(
                isinstance(m, (int, float)) or (isinstance(m, list) and len(m) == size) for m in means):
            raise ConfigError("dataset.means", f"must be one entry per class ({dataset['num_classes']}), each a number "
                                               f"or a list of {size} numbers")
    if dataset["name"] == "gaussian" and dataset["means"] is None and dataset["separation"] > 0 and \
            dataset["channels"] * dataset["height"] * dataset["width"] < dataset["num_classes"]:
        raise ConfigError("dataset.separation", "needs at least as many input elements as classes")
    if not isinstance(model["cifar_stem"], bool):
        raise ConfigError("model.cifar_stem", f"must be true or false (small_input is its other name), "
                                              f"got {model['cifar_stem']!r}")
    steps = config["evaluation"]["steps"]
    if steps is not None and (not isinstance(steps, list) or not steps or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in steps)):
        raise ConfigError("evaluation.steps", f"must be a list of optimizer steps (integers >= 0), got {steps!r}")
    output = config["output"]
    if output is not None and (not isinstance(output, str) or not output or "/" in output or output.startswith(".")):
        raise ConfigError("output", f"must be a folder name, got {output!r}")
    return config


def validate_classes(dataset: dict) -> None:
    """dataset.classes is a list of distinct classes, or dataset.class_map maps classes to the labels 0..C-1; not
    both. A class is an index or a name (names are looked up when the data are loaded)."""
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
    config = read_config(path, schema_defaults(SCHEMA), overrides, aliases=ALIASES)
    if seed is not None:
        config["training"]["seed"] = seed
    if config["output"] is None:
        config["output"] = Path(path).stem
    return validate(config)
