"""Class-hardness simulations: how hard each class is, against how much its representation overlaps with the
others'. A YAML config names the data (a torchvision dataset, Gaussian classes, or the user's own folder:, npz:
or csv: source split by a seeded, stratified `test_fraction`), the model (MLP, CNN, ResNet-50) and the training;
independent runs train at once (MLP and CNN stacked under `torch.vmap`) and are evaluated at log-spaced
optimizer steps: loss and accuracy overall and per class on both splits, and the C x C cosine similarity of
the class means of the last hidden features (`overlap_dynamic`) beside that of the standardised inputs
(`overlap_static`).

Here: the networks, runs trained together under the minibatch engine and evaluated at given optimizer steps,
the per-class metrics and overlaps, and the results folders. The config is hardness/class_hardness_config.py,
the data hardness/class_hardness_data.py, the figures hardness/class_hardness_figures.py.
"""
import io
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

from hardness.class_hardness_data import SimulationData
from hardness.cli import UserInputError
from hardness.config import ConfigError
from hardness.minibatch import StackedNetworks, train_minibatch
from hardness.prediction import PREDICTION_CHUNK
from hardness.radii import one_hot_float
from hardness.results import save_npz_with_settings, write_atomically
from hardness.seeds import ClassHardnessStage, stage_generator, stage_seed
from neural_networks import HardnessCNN, HardnessMLP, HardnessResNet50, kaiming_initialise

PER_CLASS_KEYS = ("loss_per_class", "accuracy_per_class", "train_loss_per_class", "train_accuracy_per_class")


def evaluation_steps(total_steps: int, num_points: int) -> list[int]:
    """Step 0 and 10^linspace(0, log10(total_steps), num_points), truncated to integers, without repeats."""
    points = np.logspace(0, math.log10(total_steps), num_points) if num_points > 1 else np.array([total_steps])
    return sorted({0, *(int(math.floor(p * (1 + 1e-12))) for p in points)})


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
    """Independent networks trained together by the minibatch engine (hardness.minibatch.Networks): MLPs and
    CNNs as one stacked computation (`torch.vmap` over their stacked parameters), a ResNet alone. `forward(x)`
    gives logits [runs, n, C] and features [runs, n, F] from shared inputs [n, ...] or per-run inputs
    [runs, n, ...] (`per_run`)."""

    def __init__(self, models: Sequence[nn.Module]) -> None:
        self.runs = len(models)
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
            model = build_model(config["model"], data.train_x.shape[1:], data.num_classes)
            models.append(model.to(data.train_x.device))
    group = RunGroup(models)
    optimizer = (torch.optim.SGD if training["optimizer"] == "sgd" else torch.optim.Adam)(group.parameters(),
                                                                                          lr=training["lr"])
    shuffles = [stage_generator(training["seed"], ClassHardnessStage.MINIBATCH_ORDER, run) for run in runs]
    wanted, records = set(steps), []             # records: one dict of [runs, ...] tensors per evaluation

    def record(step: int) -> None:
        """Both splits' metrics after `step` optimizer steps, if it is one of `steps`."""
        if step in wanted:
            test = evaluate(group, data.test_x, data.test_y, data.num_classes)
            train = evaluate(group, data.train_x, data.train_y, data.num_classes)
            records.append({**test, **{f"train_{k}": v for k, v in train.items() if k != "overlap"}})

    record(0)
    train_minibatch(group, optimizer, data.train_x, data.train_y, data.num_classes, training["epochs"],
                    training["batch_size"], shuffles, progress=progress, description=f"{len(runs)} run(s)",
                    after_step=record)
    return [{key: torch.stack([r[key][i] for r in records]).cpu().numpy() for key in records[0]}
            for i in range(len(runs))]


def simulate(config: dict, data: SimulationData,
             progress: bool = True) -> tuple[list[dict[str, np.ndarray]], list[int]]:
    """Every run's metrics (docs/class_hardness.md lists the arrays) and the evaluation steps."""
    total = config["training"]["epochs"] * math.ceil(len(data.train_y) / config["training"]["batch_size"])
    evaluation = config["evaluation"]
    if evaluation["steps"] is not None:
        steps = sorted({0, *evaluation["steps"]})
        if steps[-1] > total:
            raise ConfigError("evaluation.steps", f"step {steps[-1]} is beyond the {total} optimizer steps of training")
    else:
        steps = evaluation_steps(total, evaluation["num_points"])
    every_run = range(config["runs"])
    groups = [[run] for run in every_run] if config["model"]["type"] == "resnet" else [list(every_run)]  # ResNets alone
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
