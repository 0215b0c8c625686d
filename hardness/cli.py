"""Command lines: typed flag parsers, the flags scripts share (declared once, in SHARED_FLAGS), devices, errors
that name a field each caller words as its flag or config key, and the one entry point that turns a user's
mistake into one line on stderr."""
import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

USER_ERROR_STATUS = 2      # the exit status of a user error, argparse's


class UserInputError(Exception):
    """An error in what the user asked for; scripts print it as one line and exit."""


class FieldError(UserInputError):
    """A user error about fields of a request (subset_size, label_column, ...), which each caller names its own way:
    `field` is the one it is about, and `wording(name)` the message with every field it mentions given as
    `name(field)`. str() words them as flags (flag_name: --label_column), as the scripts print them; a config-driven
    caller words them as its keys (dataset.label_column)."""

    def __init__(self, field: str, wording: Callable[[Callable[[str], str]], str]) -> None:
        self.field, self.wording = field, wording
        super().__init__(wording(flag_name))


def flag_name(field: str) -> str:
    """The command line's name of a field: --field."""
    return f"--{field}"


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


def positive_float(text: str) -> float:
    """argparse type: a number > 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
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


SHARED_FLAGS: dict[str, dict[str, Any]] = {      # declared once for every script (add_shared_arguments)
    "dataset_name": {"default": "MNIST",
                     "help": "torchvision dataset, any letter case: MNIST, FashionMNIST, KMNIST, ...; or your own data: "
                             "folder:PATH (class folders of images), npz:PATH (arrays x, y) or csv:PATH (a table); "
                             "see docs/your_data.md (default MNIST)"},
    "subset_size": {"type": positive_int, "default": 20000,
                    "help": "samples kept from train+test after the seeded shuffle; 70000 = all of MNIST; your own "
                            "data smaller than this is used whole (default %(default)s)"},
    "seed": {"type": non_negative_int, "default": 0,
             "help": "seed for the data shuffle and the initialisations; same seed and device, same results (default 0)"},
    "device": {"choices": ["auto", "cpu", "cuda"], "default": "auto",
               "help": "where to train: auto picks cuda when available (default auto)"},
    "data_root": {"type": Path, "default": Path("./data"),
                  "help": "folder holding torchvision's dataset layout, e.g. <root>/MNIST/raw, and the decoded image "
                          "folders' cache (default ./data)"},
    "results_dir": {"type": Path, "default": Path("Results"),
                    "help": "folder the results files are read from and written to (default Results)"},
    "figures_dir": {"type": Path, "default": Path("Figures"), "help": "folder the figures are written to (default Figures)"},
}
TORCHVISION_ROOT = {"help": "torchvision's layout (default ./data)"}   # --data_root where only built-ins are read


def add_shared_arguments(parser: argparse.ArgumentParser, *names: str, **changes: dict[str, Any]) -> None:
    """Declare the shared flags `names` (SHARED_FLAGS, without the dashes) on `parser` in that order, each with
    `changes[name]` over its declaration where a script's default, type or help differs:
    add_shared_arguments(parser, "seed", "data_root", seed={"default": None, "help": ...}, data_root=TORCHVISION_ROOT)."""
    if unknown := set(changes) - set(names):
        raise ValueError(f"changes to flags not declared: {sorted(unknown)}")
    for name in names:
        parser.add_argument(f"--{name}", **{**SHARED_FLAGS[name], **changes.get(name, {})})


def add_dataset_arguments(parser: argparse.ArgumentParser, **changes: dict[str, Any]) -> None:
    """--dataset_name, --subset_size (`changes` as add_shared_arguments) and the flags of the user's own data
    sources (docs/your_data.md)."""
    add_shared_arguments(parser, "dataset_name", "subset_size", **changes)
    parser.add_argument("--dataset_label", default=None,
                        help="your own data: the name its result files and figures carry, letters, digits and . _ + - "
                             "(default: the folder's or file's name)")
    parser.add_argument("--channels", type=int, choices=[1, 3], default=None,
                        help="folder: convert every image to greyscale (1) or RGB (3) (default: what most files are)")
    parser.add_argument("--image_size", type=positive_int, nargs=2, metavar=("H", "W"), default=None,
                        help="folder: resize every image to H x W pixels (default: the most common size)")
    parser.add_argument("--label_column", default="label",
                        help="csv: the column holding each row's class, as names or integers (default label)")
    parser.add_argument("--id_column", default=None,
                        help="csv: a column naming the rows, kept as their sample ids (default: the row numbers)")
    parser.add_argument("--skip_unreadable", action="store_true",
                        help="folder: drop images that cannot be decoded and say how many, instead of stopping")


def budget_share_or_count(text: str) -> float | int:
    """argparse type: a per-class budget, a share of each class in (0, 1) or a count of samples >= 1."""
    value = float(text)
    if 0 < value < 1:
        return value
    if value >= 1 and value.is_integer():
        return int(value)
    raise argparse.ArgumentTypeError(f"must be a share in (0, 1) or a whole count >= 1, got {text}")


def add_output_arguments(parser: argparse.ArgumentParser, **changes: dict[str, Any]) -> None:
    """--results_dir and --figures_dir, which every script takes."""
    add_shared_arguments(parser, "results_dir", "figures_dir", **changes)


def add_device_argument(parser: argparse.ArgumentParser, **changes: dict[str, Any]) -> None:
    """--device: auto, cpu or cuda."""
    add_shared_arguments(parser, "device", **changes)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every training script shares: --seed, --device, --data_root, --results_dir, --figures_dir."""
    add_shared_arguments(parser, "seed", "device", "data_root", "results_dir", "figures_dir")


def add_benchmark_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of a benchmark (benchmarks/) timed on a real dataset subset: --subset_size, --dataset_name,
    --seed, --device and --data_root."""
    add_shared_arguments(parser, "subset_size", "dataset_name", "seed", "device", "data_root",
                         subset_size={"help": "samples of the subset (default 20000)"},
                         dataset_name={"help": "dataset (default MNIST)"},
                         seed={"type": int, "help": "seed of the subset and of everything drawn after it (default 0)"},
                         data_root=TORCHVISION_ROOT)


def add_results_arguments(parser: argparse.ArgumentParser) -> None:
    """--dataset_name, --subset_size and the folders of a script that reads verifying_importance_of_stragglers.py runs."""
    add_shared_arguments(parser, "dataset_name", "subset_size", dataset_name={
        "help": "dataset whose results to read: a built-in name, or your own data's label (or its folder:/npz:/csv: "
                "source, which gives the default label) (default MNIST)"},
        subset_size={"help": "--subset_size of the runs to read; names the results files (default 20000)"})
    parser.add_argument("--sweep", type=Path, default=None,
                        help="read the runs from every cell of this sweep.py folder (e.g. Results/sweeps/figure7) "
                             "instead of --results_dir; what this script writes still goes to --results_dir")
    add_output_arguments(parser)


def run_script(main: Callable[[argparse.Namespace], None], parse_args: Callable[[], argparse.Namespace]) -> None:
    """Run a script's main on its parsed flags; a UserInputError becomes one line on stderr and exit status 2, as
    argparse's own errors do."""
    try:
        main(parse_args())
    except UserInputError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(USER_ERROR_STATUS)
