"""Variance of Gradients (VoG) on the VoG paper's toy problem: are the points near the boundary the hard ones?

The original's data: scikit-learn's make_blobs (500 points in the plane, 3 centres, std 2, random_state
212); blob 0 is class 0, blobs 1 and 2 are class 1; the first 450 points train, the last 50 test. A
2 -> 10 -> 2 network (linear; tanh between the layers with --tanh) is trained full batch (SGD, cross-entropy,
lr 1e-3, 15 steps) with a checkpoint after every step. Every point of --split gets the VoG of the input
gradients of the softmax probability of its class over the checkpoints of --mode (early = steps 1-5,
middle = 6-10, late = 11-15, complete = all; thirds of --steps in general), calibrated by --vog_cal, and
is compared with its distance to the trained network's decision boundary (Spearman correlation; the
paper's claim: the closer to the boundary, the higher the VoG, so the correlation is negative).

Every output is named after its run, toy_<split>_<mode>_<vog_cal>_<init>_seed<seed>, followed by _tanh,
_lr<lr> and _steps<steps> where those differ from the defaults, and _legacy_bugs: saves
<results_dir>/VoG/<name>.npz (vog, distance, labels, points, accuracies) with the settings in a .json
beside it, and draws <figures_dir>/VoG/<name>_decision_boundary and <figures_dir>/VoG/<name>_vog_by_distance
(PNG and PDF).

The scatter draws each point's VoG against its distance to the trained network's own boundary (the
original: to the line 0.2471 x1 + x2 - 0.0124 = 0 it hard-codes).

--legacy_bugs reproduces the original code's two bugs, for figure parity (with --init original, --mode
early --vog_cal normalize, the VoG of both splits equals the original script's own outputs to 1e-6):
1. its input gradients were never zeroed, so the gradient recorded at checkpoint t was the sum of the
   gradients of checkpoints 1..t; on the training split, whose inputs required gradients from the first
   checkpoint on, each later training step's backward pass added the input gradient of the mean loss as
   well (steps 2..t; the first step's never);
2. each stage's deviations were taken from the sum of all K checkpoints' gradients divided by the
   stage's length (the sum of 15 divided by 5) instead of from the stage's own mean.
"""
import argparse
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from scipy.stats import spearmanr
from sklearn.datasets import make_blobs
from torch import Tensor
from torch.func import functional_call

from neural_networks import VoGToyNet
from utils import (CALIBRATIONS, STAGES, CheckpointRecorder, UserInputError, add_device_argument,
                   add_output_arguments, add_shared_arguments, calibrate, input_gradients, positive_float, positive_int,
                   resolve_device, run_script, run_settings, save_figure, save_npz_with_settings, stage_windows,
                   train_full_batch, vog_from_gradients, vog_path)

SAMPLES, TRAIN, NUM_CLASSES = 500, 450, 2
LR, STEPS = 1e-3, 15      # the original's training
BOUNDARY_GRID = 1201      # points per axis of the grid that finds a tanh network's boundary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", choices=["train", "test"], default="test",
                        help="points whose VoG is computed: the 450 training or the 50 test points (default test; the "
                             "original: train)")
    parser.add_argument("--mode", choices=STAGES, default="early",
                        help="checkpoints the VoG is computed from: the first, second or last third of the "
                             "steps, or all of them (default early)")
    parser.add_argument("--vog_cal", choices=CALIBRATIONS, default="normalize",
                        help="raw VoG, or standardised within each class (normalize), or the absolute value of "
                             "that (abs_normalize) (default normalize)")
    parser.add_argument("--init", choices=["original", "normal"], default="original",
                        help="weights N(0, 1), biases 0: original draws each layer's weights after re-seeding "
                             "with 0, as the original code; normal draws them all from --seed (default original)")
    add_shared_arguments(parser, "seed", seed={
        "help": "seed of the weights with --init normal; the data are always the original's (default 0)"})
    parser.add_argument("--lr", type=positive_float, default=LR, help=f"SGD learning rate (default {LR:g})")
    parser.add_argument("--steps", type=positive_int, default=STEPS,
                        help=f"full-batch training steps, with a checkpoint after each; at least 3 (default {STEPS})")
    parser.add_argument("--tanh", action="store_true", help="put a tanh between the two layers")
    parser.add_argument("--legacy_bugs", action="store_true",
                        help="reproduce the original code's two VoG bugs (accumulated gradients, stages "
                             "centred on the sum of all checkpoints over the stage's length)")
    add_device_argument(parser)
    add_output_arguments(parser)
    return parser.parse_args(argv)


def run_name(args: argparse.Namespace) -> str:
    """The name of a run's outputs: every flag that changes what it computes."""
    name = f"toy_{args.split}_{args.mode}_{args.vog_cal}_{args.init}_seed{args.seed}"
    name += "_tanh" if args.tanh else ""
    name += f"_lr{args.lr:g}" if args.lr != LR else ""
    name += f"_steps{args.steps}" if args.steps != STEPS else ""
    return name + ("_legacy_bugs" if args.legacy_bugs else "")


def toy_data() -> tuple[Tensor, Tensor]:
    """The original's points [500, 2] and classes [500]: blob 0 is class 0, blobs 1 and 2 are class 1."""
    points, blobs = make_blobs(n_samples=SAMPLES, n_features=2, cluster_std=2, shuffle=True, random_state=212)
    return torch.tensor(points, dtype=torch.float32), torch.tensor(blobs != 0, dtype=torch.int64)


class TrainingInputGradients:
    """Engine observer for the original's first bug on the training split: `data` requires gradients, so
    every training step's backward pass adds the loss's input gradient to `data.grad`; keeps that running
    sum after every step. The original made its training points require gradients only after the first
    step, so the sum starts with the second step: the first step's gradient is dropped (the sum after
    step 1 is 0)."""

    def __init__(self, data: Tensor) -> None:
        self.data = data
        self.sums: list[Tensor] = []

    def is_check(self, epoch: int) -> bool:
        return True

    def observe(self, state: object) -> None:
        if not self.sums:
            self.data.grad.zero_()
        self.sums.append(self.data.grad.clone())                                          # [n, 2]

    def done(self) -> bool:
        return False


def boundary_distance(model: VoGToyNet, points: Tensor) -> Tensor:
    """[N] float64 distance of each point to where the model's two logits are equal.

    Linear model: the boundary is the line w.x + b = 0 of the difference of the logits' affine maps, and
    the distance is |w.x + b| / |w|. With tanh: the closest of the points where the logit difference
    changes sign along the edges of a fine grid (linearly interpolated) over the points' box, padded by
    half its size on every side.
    """
    points = points.double()
    with torch.no_grad():
        if not model.tanh:
            weight = model.output.weight.double() @ model.hidden.weight.double()                     # [2, 2]
            bias = model.output.weight.double() @ model.hidden.bias.double() + model.output.bias.double()
            w, b = weight[1] - weight[0], bias[1] - bias[0]
            return (points @ w + b).abs() / w.norm()
        low, high = points.min(0).values, points.max(0).values
        low, high = low - (high - low) / 2, high + (high - low) / 2
        xs, ys = (torch.linspace(low[axis], high[axis], BOUNDARY_GRID, dtype=torch.float64, device=points.device)
                  for axis in (0, 1))
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1)                         # [Y, X, 2]
        state = {key: value.double() for key, value in model.state_dict().items()}
        logits = functional_call(model, state, (grid.reshape(-1, 2),))[0][0].reshape(*grid.shape[:2], 2)
        difference = logits[..., 1] - logits[..., 0]                                         # [Y, X]
        crossings = []
        for a, b, start, end in [(difference[:, :-1], difference[:, 1:], grid[:, :-1], grid[:, 1:]),
                                 (difference[:-1], difference[1:], grid[:-1], grid[1:])]:
            changes = (a * b <= 0) & (a != b)
            share = (a / (a - b))[changes][:, None]
            crossings.append(start[changes] + share * (end[changes] - start[changes]))
        crossings = torch.cat(crossings)                                                     # [M, 2]
        if len(crossings) == 0:
            raise UserInputError("the trained network's decision boundary does not cross the grid around the points")
        return torch.cdist(points, crossings).min(1).values


def experiment(args: argparse.Namespace, device: torch.device) -> tuple[VoGToyNet, dict[str, np.ndarray | float]]:
    """Train the toy network and score --split; returns the trained network and the VoG, distance to the
    boundary, classes and points of --split, both accuracies and the VoG's Spearman correlation with the
    distance."""
    try:
        window = stage_windows(args.steps)[args.mode]
    except ValueError as error:
        raise UserInputError(f"--steps {args.steps}: {error}") from error
    points, labels = (tensor.to(device) for tensor in toy_data())
    train_points, train_labels = points[:TRAIN], labels[:TRAIN]
    rows = slice(0, TRAIN) if args.split == "train" else slice(TRAIN, SAMPLES)

    model = VoGToyNet(args.tanh, seed=None if args.init == "original" else args.seed).to(device)
    recorder = CheckpointRecorder(range(args.steps))
    leak = None
    if args.legacy_bugs and args.split == "train":
        train_points = train_points.clone().requires_grad_()
        leak = TrainingInputGradients(train_points)
    train_full_batch(model, torch.optim.SGD(model.parameters(), lr=args.lr), train_points, train_labels,
                     args.steps, NUM_CLASSES, observers=[recorder] + ([leak] if leak else []), progress=False)

    gradients = input_gradients(model, recorder.checkpoints, points[rows], labels[rows],
                                target="probability")                                       # [K, n, 2]
    centre = None
    if args.legacy_bugs:
        gradients = gradients.cumsum(0)
        if leak is not None:
            gradients = gradients + torch.stack(leak.sums)
        centre = gradients.sum(0) / len(range(args.steps)[window])
    vog = calibrate(vog_from_gradients(gradients[window], centre), labels[rows], args.vog_cal).cpu().numpy()
    distance = boundary_distance(model, points[rows]).cpu().numpy()
    with torch.no_grad():
        correct = (model(points)[0][0].argmax(1) == labels).double()
    return model, {"vog": vog, "distance": distance, "labels": labels[rows].cpu().numpy(),
                   "points": points[rows].cpu().numpy(), "train_accuracy": correct[:TRAIN].mean().item(),
                   "test_accuracy": correct[TRAIN:].mean().item(), "spearman": spearmanr(vog, distance).statistic}


def plot_decision_boundary(model: VoGToyNet, points: Tensor, labels: Tensor, path: Path) -> list[Path]:
    """The predicted class on a fine grid as filled contours, with the training and test points."""
    points, labels = points.cpu().numpy(), labels.cpu().numpy()
    (x_low, y_low), (x_high, y_high) = points.min(0) - 2, points.max(0) + 2
    xs, ys = np.meshgrid(np.linspace(x_low, x_high, 400), np.linspace(y_low, y_high, 400))
    grid = torch.tensor(np.stack([xs, ys], -1).reshape(-1, 2), dtype=torch.float32, device=model.hidden.weight.device)
    with torch.no_grad():
        predicted = model(grid)[0][0].argmax(1).reshape(xs.shape).cpu().numpy()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.contourf(xs, ys, predicted, levels=[-0.5, 0.5, 1.5], colors=["tab:blue", "tab:orange"], alpha=0.25)
    for rows, marker, name in [(slice(0, TRAIN), "o", "train"), (slice(TRAIN, SAMPLES), "^", "test")]:
        for c, colour in enumerate(["tab:blue", "tab:orange"]):
            chosen = points[rows][labels[rows] == c]
            ax.scatter(chosen[:, 0], chosen[:, 1], s=12 if name == "train" else 30, marker=marker, color=colour,
                       edgecolors="black" if name == "test" else "none", linewidths=0.5, label=f"{name}, class {c}")
    ax.set(xlabel="$x_1$", ylabel="$x_2$", title="Toy data and the trained network's decision regions")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_vog_against_distance(results: dict[str, np.ndarray | float], args: argparse.Namespace,
                              path: Path) -> list[Path]:
    """VoG of every point of the split against its distance to the decision boundary, coloured by class."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for c, colour in enumerate(["tab:blue", "tab:orange"]):
        chosen = results["labels"] == c
        ax.scatter(results["distance"][chosen], results["vog"][chosen], s=16, color=colour, label=f"class {c}")
    ax.set(xlabel="distance to the decision boundary", ylabel=f"VoG ({args.vog_cal})",
           title=f"{args.split} split, {args.mode} checkpoints: Spearman {results['spearman']:.2f}"
                 + (" (legacy bugs)" if args.legacy_bugs else ""))
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def main(args: argparse.Namespace) -> None:
    device = resolve_device(args.device)
    model, results = experiment(args, device)
    name = run_name(args)
    path = vog_path(args.results_dir, "toy", name)
    save_npz_with_settings(results, path, run_settings(args, device))

    points, labels = toy_data()
    figures = plot_decision_boundary(model, points, labels, vog_path(args.figures_dir, "decision_boundary_figure", name))
    figures += plot_vog_against_distance(results, args,
                                         vog_path(args.figures_dir, "vog_by_distance_figure", name))
    print(f"train accuracy {results['train_accuracy']:.1%}, test accuracy {results['test_accuracy']:.1%}")
    print(f"Spearman correlation of VoG with the distance to the decision boundary ({args.split} split, "
          f"{args.mode} checkpoints, {args.vog_cal}): {results['spearman']:.3f}")
    print(f"saved {path} and its settings, and {', '.join(str(figure) for figure in figures[::2])} (.png and .pdf)")


if __name__ == "__main__":
    run_script(main, parse_args)
