"""Result files: where each one lives, atomic pickles, the settings stored with them, and figures."""
import argparse
import io
import json
import math
import os
import pickle
import platform
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
import torchvision
from PIL import Image

from hardness.cli import UserInputError

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

_UMASK = os.umask(0o022)
os.umask(_UMASK)


# ----------------------------------------------------------------------------- where results live

def radii_results_path(results_dir: Path, dataset_name: str) -> Path:
    """replicate_inversion_results_on_multiple_classes.py: a dataset's radius curves."""
    return Path(results_dir) / "Radii_over_epoch" / f"{dataset_name}_all_epoch_radii.pkl"


def f1_results_path(results_dir: Path, dataset_name: str, strategy: str, reduce_hard: bool, subset_size: int,
                    kind: str, snapshot: str = "copy") -> Path:
    """verifying_importance_of_stragglers.py: its `metrics` or hard-sample `indices`. Runs with the original
    code's snapshot bug (--snapshot last) get a suffix so that they never replace the correct ones."""
    suffix = "" if snapshot == "copy" else f"_snapshot_{snapshot}"
    return Path(results_dir) / "F1_results" / f"{dataset_name}_{strategy}_{reduce_hard}_{subset_size}_{kind}{suffix}.pkl"


def overlap_results_path(results_dir: Path, dataset_name: str, subset_size: int) -> Path:
    """compute_overlap.py: the overlap table of the strategies' hard sets."""
    return Path(results_dir) / "F1_results" / f"{dataset_name}_{subset_size}_overlap.pkl"


def class_counts_path(results_dir: Path, dataset_name: str, strategy: str, subset_size: int) -> Path:
    """hard_sample_distribution_over_classes.py: the per-class hard-sample counts."""
    return Path(results_dir) / "Hard_sample_distribution" / f"{dataset_name}_{strategy}_{subset_size}_class_counts.pkl"


def scores_results_path(results_dir: Path, dataset_name: str, subset_size: int, noise_ratio: float,
                        network: str = "SimpleNN") -> Path:
    """hardness_scores.py and mislabel_detection_benchmark.py: every score of one setting (.npz, .json beside);
    scores of ResNets end in _ResNet."""
    suffix = "" if network == "SimpleNN" else f"_{network}"
    return Path(results_dir) / "scores" / f"{dataset_name}_{subset_size}_{noise_ratio:g}{suffix}.npz"


def class_accuracies_path(results_dir: Path, dataset_name: str, subset_size: int, overfit: bool) -> Path:
    """class_level_accuracies.py: per-class accuracies of every network."""
    suffix = "_overfit" if overfit else ""
    return Path(results_dir) / "Class_level_accuracies" / f"{dataset_name}_{subset_size}{suffix}.pkl"


def results_folders(results_dir: Path, sweep: Path | None = None) -> list[Path]:
    """Where results are read from: `results_dir`, or every cell's results folder of a sweep.py folder
    (<sweep>/<stage>/<cell>/results)."""
    if sweep is None:
        return [Path(results_dir)]
    folders = sorted(Path(sweep).glob("*/*/results"))
    if not folders:
        raise UserInputError(f"{sweep} holds no sweep cells (<stage>/<cell>/results/); give a folder that sweep.py "
                             "made, e.g. Results/sweeps/figure7")
    return folders


def existing_f1_results(folders: Sequence[Path], dataset_name: str, strategy: str, reduce_hard: bool,
                        subset_size: int, kind: str) -> Path | None:
    """The path of a verifying_importance_of_stragglers.py result in the first of `folders` that holds it (a note
    on stderr if several do); else None, and a note on stderr naming the file and the command that makes it."""
    paths = [path for folder in folders
             if (path := f1_results_path(folder, dataset_name, strategy, reduce_hard, subset_size, kind)).is_file()]
    if len(paths) > 1:
        print(f"{len(paths)} folders hold {paths[0].name}; reading {paths[0]}", file=sys.stderr)
    if paths:
        return paths[0]
    path = f1_results_path(folders[0], dataset_name, strategy, reduce_hard, subset_size, kind)
    print(f"missing {path}: make it with python verifying_importance_of_stragglers.py --dataset_name {dataset_name} "
          f"--strategy {strategy} --subset_size {subset_size}" + (" --reduce_hard" if reduce_hard else ""),
          file=sys.stderr)
    return None


def distinct(items: Iterable[Any], key: Callable[[Any], bytes]) -> list[Any]:
    """`items` without those whose key repeats an earlier one's, in order.

    The runs of one seed with and without --reduce_hard hold the same identifications; pooling both
    files would count each of them twice.
    """
    seen, kept = set(), []
    for item in items:
        if key(item) not in seen:
            seen.add(key(item))
            kept.append(item)
    return kept


def identification_key(identification: dict) -> bytes:
    """What makes an identification the same as another: its train ratio, run and hard samples per class."""
    parts = [repr((identification["train_ratio"], identification["run"])).encode()]
    parts += [np.asarray(indices, dtype=np.int64).tobytes() + b"|" for indices in identification["hard_indices"]]
    return b"".join(parts)


# ----------------------------------------------------------------------------- writing and reading

def run_settings(args: argparse.Namespace, device: torch.device | None = None) -> dict[str, Any]:
    """The settings that produced a result: every flag, the device (if any), the command and the versions."""
    settings = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    if device is not None:
        settings["device"] = str(device)
    settings.update(command=" ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                    versions={"python": platform.python_version(), "torch": torch.__version__,
                              "torchvision": torchvision.__version__, "numpy": np.__version__})
    return settings


def write_atomically(path: Path, payload: bytes | Callable[[Path], None]) -> None:
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
    write_atomically(path, pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def save_npz_with_settings(arrays: dict[str, np.ndarray], path: Path, settings: dict[str, Any]) -> None:
    """`arrays` to `path` (.npz) and `settings` to the .json beside it, each written atomically."""
    packed = io.BytesIO()
    np.savez(packed, **arrays)
    write_atomically(path, packed.getvalue())
    write_atomically(Path(path).with_suffix(".json"), (json.dumps(settings, indent=2, default=str) + "\n").encode())


def load_pickle(path: Path, made_by: str) -> Any:
    """Load a results pickle, or a clear error naming the file and the script that makes it."""
    if not Path(path).is_file():
        raise UserInputError(f"results file {path} not found; make it first with: {made_by}")
    with open(path, "rb") as handle:
        return pickle.load(handle)


# ----------------------------------------------------------------------------- figures

def _write_png(fig: plt.Figure, path: Path) -> None:
    """PNG with a 256-colour palette: the same picture at about a third of the bytes."""
    rendered = io.BytesIO()
    fig.savefig(rendered, format="png", dpi=100, bbox_inches="tight")
    Image.open(rendered).convert("RGB").quantize(colors=256).save(path, format="PNG", optimize=True)


def save_figure(fig: plt.Figure, path_without_suffix: Path) -> list[Path]:
    """Save `fig` as a compact PNG and a PDF (each atomically) and close it; returns the two paths."""
    png, pdf = Path(f"{path_without_suffix}.png"), Path(f"{path_without_suffix}.pdf")
    write_atomically(png, lambda temporary: _write_png(fig, temporary))
    write_atomically(pdf, lambda temporary: fig.savefig(temporary, format="pdf", bbox_inches="tight"))
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

