"""Result files: where each one lives, atomic pickles, the settings stored with them, and figures."""
import argparse
import csv
import io
import json
import math
import os
import pickle
import platform
import shlex
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
# One function per system names every file its scripts write: results under --results_dir, figures under
# --figures_dir (a stem: save_figure adds .png and .pdf). The docs of each system show the same names.

def _path(root: Path, templates: dict[str, str], kind: str, fields: dict[str, Any]) -> Path:
    if kind not in templates:
        raise ValueError(f"unknown kind of path {kind!r}; known: {', '.join(templates)}")
    return Path(root) / templates[kind].format(**fields)


INVERSION_PATHS = {"radii": "Radii_over_epoch/{dataset}_all_epoch_radii.pkl",     # results
                   "radii_figure": "radii_on_{dataset}",                           # figures
                   "mean_std_figure": "Figure2/mean_std_radii_on_{dataset}",
                   "overlay_figure": "Figure2/mean_std_radii_overlay_on_{dataset}"}


def inversion_path(root: Path, kind: str, dataset: str) -> Path:
    """Section 3 (replicate_inversion_results_on_multiple_classes.py, plotting_mean_radii_over_epochs.py)."""
    return _path(root, INVERSION_PATHS, kind, {"dataset": dataset})


HARD_SAMPLES_PATHS = {
    "metrics": "F1_results/{dataset}_{strategy}_{reduce_hard}_{subset_size}_metrics{snapshot}.pkl",     # results
    "indices": "F1_results/{dataset}_{strategy}_{reduce_hard}_{subset_size}_indices{snapshot}.pkl",
    "overlap": "F1_results/{dataset}_{subset_size}_overlap.pkl",
    "class_counts": "Hard_sample_distribution/{dataset}_{strategy}_{subset_size}_class_counts.pkl",
    "class_accuracies": "Class_level_accuracies/{dataset}_{subset_size}{overfit}.pkl",
    "generalisation_figure": "straggler_ratio_vs_generalisation/"                                       # figures
                             "{dataset}_{strategy}_{reduce_hard}_{subset_size}_accuracy{snapshot}",
    "figure7": "Figure7/{panel}",
    "distribution_figure": "Figure8/hard_sample_distribution_{dataset}_{strategy}",
    "class_error_figure": "Figure8/class_level_error_{dataset}_{subset_size}{overfit}"}


def hard_samples_path(root: Path, kind: str, dataset: str = "", strategy: str = "", reduce_hard: bool = False,
                      subset_size: int = 0, snapshot: str = "copy", overfit: bool = False, panel: str = "") -> Path:
    """Sections 4-5 and Figures 7-8 (verifying_importance_of_stragglers.py and the scripts that read its
    pickles). Runs with the original code's snapshot bug (--snapshot last) get a suffix so that they never replace
    the correct ones; class accuracies of --overfit runs end in _overfit."""
    return _path(root, HARD_SAMPLES_PATHS, kind, {
        "dataset": dataset, "strategy": strategy, "reduce_hard": reduce_hard, "subset_size": subset_size,
        "snapshot": "" if snapshot == "copy" else f"_snapshot_{snapshot}", "overfit": "_overfit" if overfit else "",
        "panel": panel})


VOG_PATHS = {"toy": "VoG/{name}.npz", "scores": "VoG/{name}_vog.npz", "checkpoints": "VoG/checkpoints/{name}",
             "decision_boundary_figure": "VoG/{name}_decision_boundary",
             "vog_by_distance_figure": "VoG/{name}_vog_by_distance", "figures": "VoG/{name}_{mode}_{vog_cal}"}


def vog_path(root: Path, kind: str, name: str, mode: str = "", vog_cal: str = "") -> Path:
    """Variance of Gradients: the toy run `name` (variance_of_gradients_toy.py's run_name), or the scores,
    checkpoints and figure stem of <dataset or label>_<subset_size> (variance_of_gradients.py)."""
    return _path(root, VOG_PATHS, kind, {"name": name, "mode": mode, "vog_cal": vog_cal})


def class_hardness_path(root: Path, name: str) -> Path:
    """Class-hardness simulations: the results folder of a config's `output` (run_<i>/metrics.npz, samples.npz,
    ...) under --results_dir, or its figures folder under --figures_dir."""
    return Path(root) / "class_hardness" / name


GASTEN_PATHS = {"classifier": "gasten/classifiers/{dataset}_{pos}v{neg}/{name}",                 # results
                "feature_cnn": "gasten/feature_cnn_{dataset}.pt", "test_noise": "gasten/test_noise_{seed}.pt",
                "statistics": "gasten/stats", "run": "gasten/{name}", "over_seeds": "gasten/{name}_over_seeds",
                "ambiguity": "ambiguity/{name}",
                "classifiers_figure": "gasten/classifiers_{dataset}_{pos}v{neg}",                  # figures
                "run_figures": "gasten/{name}", "over_seeds_figure": "gasten/{name}_over_seeds/over_seeds",
                "diagnostics_figure": "gasten/{name}_over_seeds/step2_diagnostics",
                "ambiguity_figures": "ambiguity/{name}"}


def gasten_path(root: Path, kind: str, name: str = "", dataset: str = "", pos: int = 0, neg: int = 0,
                seed: int = 0) -> Path:
    """GASTeN and its ambiguity step: a classifier's folder (<type>-<nf>-<epochs>.<seed>), the feature CNN, the
    fixed test noise, the cached real-image statistics, a run folder (<name>_seed<s>), the over-seeds summary of a
    config `name`, an ambiguity `output`, and their figures; dataset names in lower case."""
    return _path(root, GASTEN_PATHS, kind, {"name": name, "dataset": dataset.lower(), "pos": pos, "neg": neg,
                                            "seed": seed})


SCORES_PATHS = {"scores": "scores/{name}.npz", "ranking": "scores/{name}_ranking.csv",                  # results
                "report": "scores/{name}_report.html", "benchmark": "scores/benchmark{suffix}",
                "instance_reference": "scores/instance_reference/{name}.npz",
                "figures": "scores/{name}", "benchmark_figure": "scores/benchmark_auroc_by_epoch{suffix}",
                "benchmark_seconds_figure": "scores/benchmark_auroc_against_seconds{suffix}"}  # figures
DEFAULT_NETWORKS = {"paper": "SimpleNN", "fast": "MLP"}


def scores_name(dataset: str, samples: int, noise_ratio: float, network: str = "SimpleNN",
                noise_type: str = "uniform", recipe: str = "paper") -> str:
    """The <name> of a scored setting: <dataset>_<samples>_<noise_ratio>[_<network>][_<noise type>][_fast], where
    <samples> is --subset_size for a built-in dataset and the number of samples scored for a user's source, the
    network is named where it is not the recipe's default (SimpleNN; the fast recipe's MLP), the noise type where
    it is not uniform (pairs, asymmetric, adjacent, instance, moved), and the fast recipe by `_fast`."""
    return (f"{dataset}_{samples}_{noise_ratio:g}" + ("" if network == DEFAULT_NETWORKS[recipe] else f"_{network}")
            + ("" if noise_type == "uniform" else f"_{noise_type}") + ("" if recipe == "paper" else f"_{recipe}"))


def scores_path(root: Path, kind: str, name: str = "", suffix: str = "") -> Path:
    """hardness_scores.py and mislabel_detection_benchmark.py: a setting's scores (.npz, .json beside), ranking,
    report and figure stem by its scores_name; the benchmark's tables (add .csv or .md) and figure, whose `suffix`
    is _ResNet, _pairs, _moved or _sweep as the run."""
    return _path(root, SCORES_PATHS, kind, {"name": name, "suffix": suffix})


HARDNESS_TYPES_PATHS = {"cell": "hardness_types/{name}",                       # results: add .csv, .npz
                        "figure": "hardness_types/auroc_by_type_{name}"}       # figures


def hardness_types_path(root: Path, kind: str, name: str = "") -> Path:
    """hardness_types_benchmark.py: a cell's rows (.csv) and scores (.npz, .json beside), the merged sweep
    (hardness_types_sweep.csv, .md) and the AUROC-by-type figure of a dataset, without their suffixes."""
    return _path(root, HARDNESS_TYPES_PATHS, kind, {"name": name})


MEMORISATION_PATHS = {"setting": "memorisation/{name}.npz", "summary": "memorisation/summary.md",     # results
                      "setting_figure": "memorisation/{name}",                                        # figures
                      "summary_figure": "memorisation/memorisation_and_inversion"}


def memorisation_path(root: Path, kind: str, name: str = "") -> Path:
    """memorisation_and_inversion.py: a setting's arrays (.json beside) and figure by the setting's name, the
    summary table and its figure."""
    return _path(root, MEMORISATION_PATHS, kind, {"name": name})


def sweep_path(root: Path, grid: str) -> Path:
    """sweep.py: a grid's folder (manifest.json, <stage>/<cell>/)."""
    return Path(root) / "sweeps" / grid


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
             if (path := hard_samples_path(folder, kind, dataset_name, strategy, reduce_hard, subset_size)).is_file()]
    if len(paths) > 1:
        print(f"{len(paths)} folders hold {paths[0].name}; reading {paths[0]}", file=sys.stderr)
    if paths:
        return paths[0]
    path = hard_samples_path(folders[0], kind, dataset_name, strategy, reduce_hard, subset_size)
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
    settings.update(command=shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
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


def csv_bytes(rows: Sequence[dict[str, Any]], missing: Any = "") -> bytes:
    """The rows as CSV (the csv module, `\\n` line endings): the union of their columns in first-seen order,
    `missing` where a row lacks one."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    text = io.StringIO()
    writer = csv.DictWriter(text, columns, restval=missing, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue().encode()


def write_csv(rows: Sequence[dict[str, Any]], path: Path, missing: Any = "") -> None:
    """The rows as a CSV file at `path` (csv_bytes), written atomically."""
    write_atomically(path, csv_bytes(rows, missing))


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

