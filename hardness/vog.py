"""Variance of Gradients (Agarwal & Hooker, "Estimating Example Difficulty using Variance of Gradients").

An example's VoG is how much its input gradient changes over training: for K checkpoints t = 1..K,
S_t is the gradient, with respect to the input, of checkpoint t's output for the example's class (the
pre-softmax logit, or the softmax probability); then

    VoG(x) = mean over pixels i of sqrt((1/K) * sum_t (S_t,i - mean_t S_t,i)^2),

the population standard deviation over checkpoints of each pixel, averaged over pixels. Image gradients
are averaged over their colour channels first. High VoG = hard example.

Checkpoints are the model's state after chosen training steps (`CheckpointRecorder`, an observer of the
training engine; epoch e is the (e+1)-th step, as there); the untrained model is not one. The checkpoints
of a run are split into stages in training order (`stage_windows`), each stage's VoG from its own.
Gradients are taken in eval mode for a chunk of examples per backward pass, and for every network of a
batched ensemble (`BatchedSimpleNN`) at once, each on its own copy of the inputs.

variance_of_gradients.py's mechanics live here too: one network's checkpoints trained, saved and read from files,
every stage's and calibration's VoG of a set of samples, and what the figures measure of them.
"""
import copy
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from hardness.cli import FieldError
from hardness.engine import TrainingState, input_channels, simple_nn_size, train_networks
from hardness.prediction import PREDICTION_CHUNK, evaluating, predict
from hardness.results import write_atomically
from neural_networks import BatchedSimpleNN, ResNet18, SimpleNN

TARGETS = ("logit", "probability")
CALIBRATIONS = ("raw", "normalize", "abs_normalize")
STAGES = ("early", "middle", "late", "complete")


# ----------------------------------------------------------------------------- checkpoints

def checkpoint_epochs(epochs: int, count: int) -> list[int]:
    """The 0-based epochs after which `count` checkpoints are kept evenly over `epochs` epochs of training:
    after round(k * epochs / count) steps for k = 1..count (halves round up), i.e. epoch that minus one."""
    if not 1 <= count <= epochs:
        raise ValueError(f"need between 1 and {epochs} checkpoints (one per epoch at most), got {count}")
    return [(2 * k * epochs + count) // (2 * count) - 1 for k in range(1, count + 1)]


class CheckpointRecorder:
    """Keeps a deep copy of the trained model's state dict (parameters and buffers) after each of the chosen
    0-based epochs, in memory; `checkpoints[j]` is the state after the step of `epochs[j]`. Never stops
    training."""

    def __init__(self, epochs: Iterable[int]) -> None:
        self.wanted = set(epochs)
        self.epochs: list[int] = []
        self.checkpoints: list[dict[str, Tensor]] = []

    def is_check(self, epoch: int) -> bool:
        return epoch in self.wanted

    def observe(self, state: TrainingState) -> None:
        self.epochs.append(state.epoch)
        self.checkpoints.append(copy.deepcopy(state.model.state_dict()))

    def done(self) -> bool:
        return False


def checkpoint_skeleton(network: str, data: Tensor, num_classes: int) -> nn.Module:
    """An untrained `network` (SimpleNN or ResNet) for `data` ([N, C, H, W] images, or [N, D] features for a
    SimpleNN) on its device: the model a run's checkpoints are loaded into."""
    if network == "ResNet":
        return ResNet18(data.shape[1], num_classes).to(data.device)
    depth, width = simple_nn_size(input_channels(data))
    return SimpleNN(data[0].numel(), width, depth, num_classes).to(data.device)


def train_checkpoints(network: str, seed: int, data: Tensor, labels: Tensor, num_classes: int, epochs: int,
                      count: int, batch_size: int | None = None) -> tuple[list[dict[str, Tensor]], list[int]]:
    """Train one `network` (engine.train_networks) on (data, labels) for `epochs`, keeping `count` state dicts
    evenly over training (checkpoint_epochs), each loadable into checkpoint_skeleton; and the epochs they were
    kept after."""
    recorder = CheckpointRecorder(checkpoint_epochs(epochs, count))
    train_networks(network, [seed], data, labels, num_classes, epochs, batch_size=batch_size, observers=[recorder],
                   description="training")
    states = recorder.checkpoints
    if network == "SimpleNN":  # the engine's batched model of one run, as a SimpleNN
        states = [BatchedSimpleNN.run_state_dict(state, 0) for state in states]
    return states, recorder.epochs


def natural_key(path: Path) -> list:
    """Sort key that puts checkpoint_2 before checkpoint_10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def checkpoint_paths(folder: Path) -> list[Path]:
    """The *.pt files in `folder`, in file-name order; a FieldError (checkpoint_dir) unless there are at least 3."""
    if not folder.is_dir():
        problem = "is not a folder" if folder.exists() else "does not exist"
        raise FieldError("checkpoint_dir", lambda field: f"{field('checkpoint_dir')} {folder} {problem}")
    paths = sorted(folder.glob("*.pt"), key=natural_key)
    if len(paths) < 3:
        raise FieldError("checkpoint_dir", lambda field: f"{field('checkpoint_dir')} {folder} holds {len(paths)} *.pt "
                                                         "checkpoint(s); VoG's stages need at least 3")
    return paths


def load_checkpoints(paths: list[Path], skeleton: nn.Module, device: torch.device) -> list[dict[str, Tensor]]:
    """The state dicts at `paths`, in order, checked against the network they are for (a FieldError naming
    evaluation_network otherwise)."""
    states = []
    for path in paths:
        state = torch.load(path, map_location=device, weights_only=True)
        try:
            skeleton.load_state_dict(state)
        except (RuntimeError, TypeError) as error:
            reason = str(error).splitlines()[0]
            raise FieldError("evaluation_network", lambda field: f"{path} is not a state dict of this "
                                                                 f"{field('evaluation_network')}: {reason}") from error
        states.append(state)
    return states


def save_checkpoints(states: list[dict[str, Tensor]], epochs: list[int], folder: Path) -> None:
    """Each state as <folder>/checkpoint_<k>_epoch_<epoch>.pt, readable by checkpoint_paths and load_checkpoints;
    without `epochs` (checkpoints read from files) numbered 0 to K - 1."""
    digits = len(str(len(states)))
    for k, (state, epoch) in enumerate(zip(states, epochs or range(len(states))), start=1):
        write_atomically(folder / f"checkpoint_{k:0{digits}d}_epoch_{epoch}.pt",
                         lambda temporary, state=state: torch.save(state, temporary))


# ----------------------------------------------------------------------------- input gradients

def _logits(output: Tensor | tuple[Tensor, ...]) -> Tensor:
    """A model's logits: the first of `(logits, latent)`."""
    return output[0] if isinstance(output, tuple) else output


def _chunk_gradients(model: nn.Module, state: dict[str, Tensor], x: Tensor, labels: Tensor, target: str,
                     predicted: bool) -> Tensor:
    """Input gradients of one checkpoint for the examples `x` [n, ...]: [n, ...] for one network, [runs, n, ...]
    for a BatchedSimpleNN (each run differentiated on its own copy of the inputs). `labels` [n] or [runs, n]."""
    if isinstance(model, BatchedSimpleNN):
        runs = state["weights.0"].shape[0]
        x = x.detach().expand(runs, *x.shape).clone().requires_grad_()                      # [runs, n, ...]
        logits = functional_call(model, state, (x,), {"per_run": True})[0]                  # [runs, n, C]
    else:
        x = x.detach().requires_grad_()
        logits = _logits(functional_call(model, state, (x,)))                               # [n, C] or [1, n, C]
    outputs = logits if target == "logit" else logits.softmax(-1)
    classes = logits.argmax(-1) if predicted else labels.expand(logits.shape[:-1])
    selected = outputs.gather(-1, classes[..., None])
    gradients = torch.autograd.grad(selected.sum(), x)[0]
    return gradients.detach()


def _check_target(target: str) -> None:
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")


def input_gradients(model: nn.Module, checkpoints: Sequence[dict[str, Tensor]], data: Tensor, labels: Tensor,
                    target: str = "logit", predicted: bool = False, chunk: int = 1024) -> Tensor:
    """[K, N, *data.shape[1:]] (or [K, runs, N, ...] for a BatchedSimpleNN): for each checkpoint (a state dict
    of `model`) and example, the gradient with respect to the example of the checkpoint's output for its class.

    The output is the logit (`target="logit"`) or the softmax probability (`"probability"`) of the class
    `labels` [N] (or [runs, N]) gives, or with `predicted` of the class the checkpoint itself predicts for the
    example. `model(x)` returns logits [N, C] (alone or first of a tuple; toy models may add a leading run
    dimension of one, kept in the result). The model runs in eval mode, so each output depends on its own
    example only and the gradient of the outputs' sum gives every example's gradient in one backward pass
    per chunk of `chunk` examples. The model's parameters and training mode are left as they were.
    """
    _check_target(target)
    training = model.training
    model.eval()
    try:
        return torch.stack([
            torch.cat([_chunk_gradients(model, state, x, labels[..., start:start + chunk], target, predicted)
                       for start, x in zip(range(0, len(data), chunk), data.split(chunk))], dim=-data.ndim)
            for state in checkpoints])
    finally:
        model.train(training)


def vog_scores(model: nn.Module, checkpoints: Sequence[dict[str, Tensor]], data: Tensor, labels: Tensor,
               stages: Sequence[str] = STAGES, target: str = "logit", predicted: bool = False,
               chunk: int = 2048) -> dict[str, Tensor]:
    """Raw VoG of every example in each of `stages`: stage -> [N] float64 ([runs, N] for a BatchedSimpleNN).

    The same gradients as `input_gradients`, but chunk by chunk of examples, so the [K, N, ...] stack is never
    held whole; only the checkpoints the stages use are differentiated. `chunk` bounds the examples (times
    runs) per backward pass.
    """
    _check_target(target)
    windows = stage_windows(len(checkpoints))
    if unknown := set(stages) - set(windows):
        raise ValueError(f"unknown stage(s) {sorted(unknown)}; known: {STAGES}")
    used = sorted({k for stage in stages for k in range(len(checkpoints))[windows[stage]]})
    position = {k: i for i, k in enumerate(used)}
    runs = checkpoints[0]["weights.0"].shape[0] if isinstance(model, BatchedSimpleNN) else 1
    per_chunk = max(1, chunk // runs)
    training = model.training
    model.eval()
    parts: dict[str, list[Tensor]] = {stage: [] for stage in stages}
    try:
        for start, x in zip(range(0, len(data), per_chunk), data.split(per_chunk)):
            gradients = torch.stack([_chunk_gradients(model, checkpoints[k], x, labels[..., start:start + per_chunk],
                                                      target, predicted) for k in used])  # [K', (runs,) n, ...]
            leading = gradients.shape[1:gradients.ndim - data.ndim + 1]                        # (runs,) n
            flat = gradients.flatten(1, len(leading))                                       # [K', runs * n, ...]
            for stage in stages:
                window = [position[k] for k in range(len(checkpoints))[windows[stage]]]
                parts[stage].append(vog_from_gradients(flat[window]).view(leading))
    finally:
        model.train(training)
    return {stage: torch.cat(values, dim=-1) for stage, values in parts.items()}


def checkpoint_predictions(model: nn.Module, checkpoints: Sequence[dict[str, Tensor]], data: Tensor,
                           chunk: int = PREDICTION_CHUNK) -> Tensor:
    """[K, N] (or [K, runs, N]) the class each checkpoint predicts for each example, in eval mode."""
    with evaluating(model):
        return torch.stack([predict(lambda x: _logits(functional_call(model, state, (x,))).argmax(-1), data, chunk,
                                    sample_dim=-1) for state in checkpoints])


# ----------------------------------------------------------------------------- the score

def vog_from_gradients(gradients: Tensor, centre: Tensor | None = None) -> Tensor:
    """[N] float64 VoG of stacked input gradients: [K, N, D] (vector inputs), [K, N, H, W] (images already
    averaged over channels) or [K, N, C, H, W] (averaged over C here).

    Per pixel, the population standard deviation over the K checkpoints, then the mean over pixels.
    `centre` [N, ...] replaces the mean over checkpoints that deviations are taken from; it exists only to
    reproduce the original toy code's bug (`variance_of_gradients_toy.py --legacy_bugs`).
    """
    if gradients.ndim not in (3, 4, 5):
        raise ValueError(f"gradients must be [K, N, D], [K, N, H, W] or [K, N, C, H, W], "
                         f"got {tuple(gradients.shape)}")
    gradients = gradients.double()
    if gradients.ndim == 5:
        gradients = gradients.mean(2)                                                      # [K, N, H, W]
    centre = gradients.mean(0) if centre is None else centre.double()
    deviation = (gradients - centre).square().mean(0).sqrt()                              # [N, ...]
    return deviation.flatten(1).mean(1)


def stage_windows(checkpoints: int) -> dict[str, slice]:
    """The checkpoints of each stage, in training order: early = the first K // 3, middle = the next K // 3,
    late = the rest, complete = all K. Needs K >= 3."""
    if checkpoints < 3:
        raise ValueError(f"early, middle and late stages need at least 3 checkpoints, got {checkpoints}")
    third = checkpoints // 3
    return {"early": slice(0, third), "middle": slice(third, 2 * third), "late": slice(2 * third, checkpoints),
            "complete": slice(0, checkpoints)}


def calibrate(vog: Tensor, labels: Tensor, mode: str) -> Tensor:
    """VoG [..., N] (each row on its own) as is (`raw`), standardised within each class (`normalize`: minus the class mean, divided by
    the class's population std; 0 in a class whose std is 0) or the absolute value of that (`abs_normalize`).
    Classes are the examples `labels` [N] gives the same value."""
    if mode not in CALIBRATIONS:
        raise ValueError(f"mode must be one of {CALIBRATIONS}, got {mode!r}")
    if mode == "raw":
        return vog
    calibrated = torch.zeros_like(vog)
    for c in labels.unique():
        members = labels == c
        values = vog[..., members]                                                         # [..., n_c]
        spread = values.std(-1, correction=0, keepdim=True)
        standardised = (values - values.mean(-1, keepdim=True)) / spread.where(spread > 0, 1)
        calibrated[..., members] = standardised.where(spread > 0, 0)
    return calibrated.abs() if mode == "abs_normalize" else calibrated


# ----------------------------------------------------------------------------- every stage, and what it says

def vog_table(model: nn.Module, checkpoints: Sequence[dict[str, Tensor]], data: Tensor, labels: Tensor,
              target: str = "logit", predicted: bool = False) -> np.ndarray:
    """[stages, calibrations, N] VoG of the examples `data` with classes `labels` in every stage (STAGES) and
    calibration (CALIBRATIONS), calibrated within these examples."""
    raw = vog_scores(model, checkpoints, data, labels, STAGES, target, predicted)
    return np.stack([np.stack([calibrate(raw[stage], labels, cal).cpu().numpy() for cal in CALIBRATIONS])
                     for stage in STAGES])


def last_checkpoint(checkpoints: int, stage: str) -> int:
    """The position of `stage`'s last checkpoint among `checkpoints` (stage_windows)."""
    return range(checkpoints)[stage_windows(checkpoints)[stage]][-1]


def equal_groups(values: np.ndarray, groups: int) -> list[np.ndarray]:
    """The positions of `values`, ascending, cut into `groups` groups of (almost) equal size."""
    return np.array_split(np.argsort(values, kind="stable"), groups)


def accuracy_kept(vog: np.ndarray, wrong: np.ndarray, shares: Sequence[int]) -> np.ndarray:
    """[len(shares)] the accuracy on the lowest-VoG ceil(x% of n) examples, for each share x (percent), of the
    examples' VoG [n] and errors [n]."""
    order = np.argsort(vog, kind="stable")
    return np.array([1 - wrong[order[:-(-share * len(vog) // 100)]].mean() for share in shares])


def extremes_of_each_class(vog: np.ndarray, labels: np.ndarray, num_classes: int, count: int) -> np.ndarray:
    """[C, 2 * count] positions of every class's `count` lowest-VoG examples (ascending), then its highest; a class
    with fewer than 2 * count examples shows half of them on each side, -1 filling the empty places."""
    chosen = np.full((num_classes, 2 * count), -1)
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        order = members[np.argsort(vog[members], kind="stable")]
        shown = min(count, len(order) // 2)
        chosen[c, :shown] = order[:shown]
        chosen[c, 2 * count - shown:] = order[len(order) - shown:]
    return chosen
