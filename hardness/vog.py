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
"""
import copy
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from hardness.engine import TrainingState

TARGETS = ("logit", "probability")
CALIBRATIONS = ("raw", "normalize", "abs_normalize")
STAGES = ("early", "middle", "late", "complete")


# ----------------------------------------------------------------------------- checkpoints

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


# ----------------------------------------------------------------------------- input gradients

def _logits(output: Tensor | tuple[Tensor, ...]) -> Tensor:
    """A model's logits [n, C]: the first of `(logits, latent)`, without a leading run dimension of one."""
    logits = output[0] if isinstance(output, tuple) else output
    if logits.ndim == 3:
        if logits.shape[0] != 1:
            raise ValueError(f"input gradients need a single network, got logits of {logits.shape[0]} runs")
        logits = logits[0]
    return logits


def input_gradients(model: nn.Module, checkpoints: Sequence[dict[str, Tensor]], data: Tensor, labels: Tensor,
                    target: str = "logit", predicted: bool = False, chunk: int = 1024) -> Tensor:
    """[K, N, *data.shape[1:]]: for each checkpoint (a state dict of `model`) and example, the gradient with
    respect to the example of the checkpoint's output for its class.

    The output is the logit (`target="logit"`) or the softmax probability (`"probability"`) of the class
    `labels` [N] gives, or with `predicted` of the class the checkpoint itself predicts for the example.
    `model(x)` returns logits [n, C] (alone or first of a tuple; a leading run dimension of one is dropped).
    The model runs in eval mode, so each output depends on its own example only and the gradient of the
    outputs' sum gives every example's gradient in one backward pass per chunk of `chunk` examples. The
    model's parameters and training mode are left as they were.
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    training = model.training
    model.eval()
    gradients = torch.empty(len(checkpoints), *data.shape, dtype=data.dtype, device=data.device)
    try:
        for k, state in enumerate(checkpoints):
            for start in range(0, len(data), chunk):
                x = data[start:start + chunk].detach().requires_grad_()
                logits = _logits(functional_call(model, state, (x,)))                    # [n, C]
                outputs = logits if target == "logit" else logits.softmax(1)
                classes = logits.argmax(1) if predicted else labels[start:start + chunk]
                selected = outputs.gather(1, classes[:, None])                            # [n, 1]
                gradients[k, start:start + chunk] = torch.autograd.grad(selected.sum(), x)[0]
    finally:
        model.train(training)
    return gradients


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
    """VoG [N] as is (`raw`), standardised within each class (`normalize`: minus the class mean, divided by
    the class's population std; 0 in a class whose std is 0) or the absolute value of that (`abs_normalize`).
    Classes are the examples `labels` [N] gives the same value."""
    if mode not in CALIBRATIONS:
        raise ValueError(f"mode must be one of {CALIBRATIONS}, got {mode!r}")
    if mode == "raw":
        return vog
    calibrated = torch.zeros_like(vog)
    for c in labels.unique():
        members = labels == c
        values = vog[members]
        spread = values.std(correction=0)
        if spread > 0:
            calibrated[members] = (values - values.mean()) / spread
    return calibrated.abs() if mode == "abs_normalize" else calibrated
