"""Training-dynamics hardness scores: area under the margin (AUM), forgetting events, EL2N, GraNd, data maps
(confidence, variability, correctness) and the per-sample loss.

Each score is a plain function of recorded arrays, so it scores anyone's training: logits [..., N, C] of
one moment, or trajectories [E, ..., N, C] / [E, ..., N] over E recorded epochs, and labels [N] (int64, the
labels trained on). `DynamicsRecorder` is the same scores as an observer of the training engine: it keeps
running sums instead of trajectories, so recording every epoch of 5 x 20,000 samples holds a few [runs, N]
arrays, plus the per-epoch values at the `trajectory_epochs` only.

Which way is hard: `RANKINGS[strategy]` = (array, sign) ranks samples hardest first by sign * array; of the
data-map coordinates, low confidence, high variability and low correctness are hard.
"""
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from hardness.device import seconds_on_device
from hardness.engine import TrainingState
from hardness.minibatch import StackedNetworks
from neural_networks import BatchedSimpleNN, MemorisationNet

RANKINGS = {"aum": ("aum", -1), "forgetting": ("forgetting", 1), "el2n": ("el2n", 1), "grand": ("grand", 1),
            "data_map": ("data_map_confidence", -1), "loss": ("loss", 1)}
EASY, AMBIGUOUS, HARD_TO_LEARN = 0, 1, 2     # data-map regions
GRADIENT_CHUNK_FLOATS = 2 ** 26             # per-sample gradient floats held at once by GraNd (256 MiB)
MLP_GRADIENT_CHUNK = 2048                   # samples at a time for the MLP's layer-wise GraNd


# ----------------------------------------------------------------------------- validation

def check_logits(logits: Tensor, labels: Tensor, name: str = "logits") -> None:
    """A clear ValueError unless logits is a floating tensor [..., N, C] and labels int64 [N] in [0, C)."""
    if not isinstance(logits, Tensor) or not logits.is_floating_point() or logits.dim() < 2:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"{name} must be a floating-point tensor [..., N, C], got {shape}")
    check_labels(labels, logits.shape[-2], logits.shape[-1])


def check_labels(labels: Tensor, size: int, num_classes: int | None = None) -> None:
    """A clear ValueError unless labels is an int64 tensor [size] (with values in [0, num_classes))."""
    if not isinstance(labels, Tensor) or labels.dtype != torch.int64 or labels.shape != (size,):
        got = f"{labels.dtype} {tuple(labels.shape)}" if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"labels must be an int64 tensor [N] with N = {size}, got {got}")
    if num_classes is not None and size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got {int(labels.min())}..{int(labels.max())}")


def check_trajectory(values: Tensor, name: str, dtype: torch.dtype | None = None, per_class: bool = False) -> None:
    """A clear ValueError unless values is a tensor [E, ..., N] (or [E, ..., N, C] when per_class) with E >= 1
    recorded epochs, of `dtype` (a floating-point dtype when dtype is None)."""
    layout = "[epochs, ..., N, C]" if per_class else "[epochs, ..., N]"
    min_dims = 3 if per_class else 2
    if not isinstance(values, Tensor) or values.dim() < min_dims or values.shape[0] < 1:
        shape = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
        raise ValueError(f"{name} must be a tensor {layout} with an epoch axis first and at least one epoch, "
                         f"got {shape}")
    if dtype is None and not values.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor {layout}, got {values.dtype}")
    if dtype is not None and values.dtype != dtype:
        raise ValueError(f"{name} must have dtype {dtype}, got {values.dtype}")


# ----------------------------------------------------------------------------- scores of one moment

def _assigned(values: Tensor, labels: Tensor) -> Tensor:
    """values [..., N, C] at each sample's label -> [..., N]."""
    return values.gather(-1, labels.expand(values.shape[:-1])[..., None])[..., 0]


def margins(logits: Tensor, labels: Tensor) -> Tensor:
    """[..., N] logit of the assigned label minus the largest other logit."""
    check_logits(logits, labels)
    index = labels.expand(logits.shape[:-1])[..., None]
    others = logits.scatter(-1, index, float("-inf")).amax(-1)
    return _assigned(logits, labels) - others


def sample_losses(logits: Tensor, labels: Tensor) -> Tensor:
    """[..., N] cross-entropy of each sample."""
    check_logits(logits, labels)
    return -_assigned(logits.log_softmax(-1), labels)


def assigned_probabilities(logits: Tensor, labels: Tensor) -> Tensor:
    """[..., N] softmax probability of each sample's label."""
    check_logits(logits, labels)
    return _assigned(logits.softmax(-1), labels)


def el2n(logits: Tensor, labels: Tensor) -> Tensor:
    """[..., N] error L2 norm: || softmax(logits) - one_hot(label) ||_2."""
    check_logits(logits, labels)
    return (logits.softmax(-1) - F.one_hot(labels, logits.shape[-1]).to(logits.dtype)).norm(dim=-1)


def correct_predictions(logits: Tensor, labels: Tensor) -> Tensor:
    """[..., N] bool: the label's logit is larger than every other (a positive margin)."""
    return margins(logits, labels) > 0


# ----------------------------------------------------------------------------- scores of a trajectory

def area_under_margin(logit_trajectory: Tensor, labels: Tensor) -> Tensor:
    """AUM [..., N]: the mean over the recorded epochs of the margin; logits [E, ..., N, C]. Low = suspicious."""
    check_trajectory(logit_trajectory, "logit_trajectory", per_class=True)
    return margins(logit_trajectory, labels).mean(0)


def forgetting_events(correct_trajectory: Tensor) -> Tensor:
    """[..., N] float: correct-to-incorrect transitions between consecutive recorded epochs, from a bool
    trajectory [E, ..., N]; a sample never correct gets E, more than any sample that was learned can have."""
    check_trajectory(correct_trajectory, "correct_trajectory", torch.bool)
    forgotten = (correct_trajectory[:-1] & ~correct_trajectory[1:]).sum(0).float()
    return torch.where(correct_trajectory.any(0), forgotten, float(correct_trajectory.shape[0]))


def data_map(probability_trajectory: Tensor, correct_trajectory: Tensor) -> dict[str, Tensor]:
    """Data-map coordinates [..., N] from the assigned label's probability [E, ..., N] and correctness
    [E, ..., N] bool: confidence (mean probability), variability (its population std) and correctness
    (share of epochs correct)."""
    check_trajectory(probability_trajectory, "probability_trajectory")
    check_trajectory(correct_trajectory, "correct_trajectory", torch.bool)
    if probability_trajectory.shape != correct_trajectory.shape:
        raise ValueError(f"probability and correct trajectories differ in shape: {tuple(probability_trajectory.shape)} "
                         f"and {tuple(correct_trajectory.shape)}")
    return {"data_map_confidence": probability_trajectory.mean(0),
            "data_map_variability": probability_trajectory.std(0, correction=0),
            "data_map_correctness": correct_trajectory.float().mean(0)}


def data_map_regions(confidence: Tensor, variability: Tensor) -> Tensor:
    """[..., N] int8 regions of each row: the N // 3 most variable samples are AMBIGUOUS; of the rest, the
    N // 3 least confident are HARD_TO_LEARN and the others EASY. Ties go to the lower index."""
    if confidence.shape != variability.shape or confidence.dim() < 1:
        raise ValueError(f"confidence and variability must be tensors of one shape [..., N], got "
                         f"{tuple(confidence.shape)} and {tuple(variability.shape)}")
    third = confidence.shape[-1] // 3
    ranks = variability.argsort(dim=-1, descending=True, stable=True).argsort(dim=-1, stable=True)
    ambiguous = ranks < third
    rest_confidence = confidence.masked_fill(ambiguous, float("inf"))   # ambiguous samples sort last
    hard = rest_confidence.argsort(dim=-1, stable=True).argsort(dim=-1, stable=True) < third
    regions = torch.full(confidence.shape, EASY, dtype=torch.int8, device=confidence.device)
    return regions.masked_fill(hard, HARD_TO_LEARN).masked_fill(ambiguous, AMBIGUOUS)


# ----------------------------------------------------------------------------- GraNd

def per_sample_gradient_norms(model: nn.Module, data: Tensor, labels: Tensor, chunk_size: int | None = None) -> Tensor:
    """GraNd: the L2 norm of each sample's cross-entropy gradient with respect to all parameters, with
    torch.func (vmap of grad), a chunk of samples at a time. [runs, N] for a BatchedSimpleNN or StackedNetworks
    (every run at once), [N] for any other module whose forward returns logits (or (logits, ...)); take it in
    eval mode. An MLP (mlp_layers) takes the exact layer-wise form instead, without per-sample gradients."""
    check_labels(labels, len(data))
    stacked = isinstance(model, (BatchedSimpleNN, StackedNetworks))
    if stacked:
        template = model.unstack(0) if isinstance(model, BatchedSimpleNN) else model.template
        params = {name: p.detach() for name, p in model.stacked_parameters().items()}
    else:
        template, params = model, {name: p.detach()[None] for name, p in model.named_parameters()}
    runs = next(iter(params.values())).shape[0]
    per_network = sum(p[0].numel() for p in params.values())
    layers = mlp_layers(template)
    if layers is not None:
        norms = torch.cat([mlp_gradient_norms(params, layers, x, y) for x, y in
                           zip(data.split(MLP_GRADIENT_CHUNK), labels.split(MLP_GRADIENT_CHUNK))], 1)
        return norms if stacked else norms[0]

    def sample_loss(network_params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        output = functional_call(template, network_params, (x[None],))
        logits = output[0] if isinstance(output, tuple) else output
        return F.cross_entropy(logits.reshape(1, -1), y[None])

    per_sample = vmap(vmap(grad(sample_loss), in_dims=(None, 0, 0)), in_dims=(0, None, None))
    chunk_size = chunk_size or max(1, GRADIENT_CHUNK_FLOATS // (runs * per_network))
    norms = []
    for x, y in zip(data.split(chunk_size), labels.split(chunk_size)):
        gradients = per_sample(params, x, y)                                          # name -> [runs, n, ...]
        norms.append(sum(g.flatten(2).square().sum(-1) for g in gradients.values()).sqrt())  # [runs, n]
    norms = torch.cat(norms, 1)
    return norms if stacked else norms[0]


def mlp_layers(template: nn.Module) -> list[tuple[str, nn.Module]] | None:
    """The leaf modules of an MLP in the order they run (Flatten, Linear and ReLU only, ending in a Linear: a
    MemorisationNet of such blocks, or an nn.Sequential of them), else None."""
    if not isinstance(template, (MemorisationNet, nn.Sequential)):
        return None
    leaves = [(name, module) for name, module in template.named_modules() if not list(module.children())]
    if not leaves or not all(isinstance(m, (nn.Flatten, nn.Linear, nn.ReLU)) for _, m in leaves) \
            or not isinstance(leaves[-1][1], nn.Linear):
        return None
    return leaves


def mlp_gradient_norms(params: dict[str, Tensor], layers: list[tuple[str, nn.Module]], x: Tensor,
                       labels: Tensor) -> Tensor:
    """[runs, n] GraNd of stacked MLPs, exactly: a linear layer's per-sample weight gradient is the outer product
    of the gradient at its output (delta [n, out]) and its input (a [n, in]), so its squared norm is
    |delta|^2 |a|^2, plus |delta|^2 for the bias. One forward and one backward pass for all samples and runs."""
    activation = x.flatten(1)[None]                                                         # [1, n, D]
    inputs, outputs = [], []
    with torch.enable_grad():
        for name, module in layers:
            if isinstance(module, nn.Linear):
                weight, bias = params[f"{name}.weight"], params.get(f"{name}.bias")      # [R, out, in], [R, out]
                inputs.append(activation)
                activation = torch.einsum("rni,roi->rno", activation.expand(len(weight), -1, -1), weight)
                if bias is not None:
                    activation = activation + bias[:, None]
                if not outputs:
                    activation.requires_grad_()
                outputs.append(activation)                                                  # [R, n, out]
            elif isinstance(module, nn.ReLU):
                activation = activation.relu()
        runs = activation.shape[0]
        loss = F.cross_entropy(activation.flatten(0, 1), labels.repeat(runs), reduction="sum")
        deltas = torch.autograd.grad(loss, outputs)
    inputs = [layer_input.detach() for layer_input in inputs]
    squared = torch.zeros(runs, len(labels), device=x.device)
    for (name, _), layer_input, delta in zip([layer for layer in layers if isinstance(layer[1], nn.Linear)], inputs,
                                             deltas):
        has_bias = f"{name}.bias" in params
        squared += delta.square().sum(-1) * (layer_input.square().sum(-1) + has_bias)
    return squared.sqrt()


# ----------------------------------------------------------------------------- the observer

class DynamicsRecorder:
    """Every training-dynamics score of a batched training run, recorded after each epoch in `epochs`
    (all epochs by default) with running sums: AUM, forgetting events, data maps; EL2N, loss and GraNd at
    `score_epoch` (none where it is None: the fast recipe takes them at its stopping epoch); margin, loss,
    largest logit and EL2N at each of `trajectory_epochs` ([runs, T, N]). Labels are those trained on. Never
    stops training; `scores()` gives the arrays."""

    def __init__(self, data: Tensor, labels: Tensor, num_classes: int, runs: int, epochs: Sequence[int],
                 score_epoch: int | None, trajectory_epochs: Sequence[int] = (), grand: bool = True) -> None:
        check_labels(labels, len(data), num_classes)
        if score_epoch is not None and score_epoch not in set(epochs):
            raise ValueError(f"the score epoch {score_epoch} is not among the recorded epochs")
        self.data, self.labels, self.score_epoch, self.grand = data, labels, score_epoch, grand
        self.label_mask = F.one_hot(labels, num_classes).bool()                    # [N, C]
        self.epochs = set(epochs)
        self.trajectory_epochs = list(trajectory_epochs)
        device, shape = labels.device, (runs, len(labels))
        self.recorded = 0
        self.margin_sum = torch.zeros(shape, dtype=torch.float64, device=device)
        self.probability_sum = torch.zeros(shape, dtype=torch.float64, device=device)
        self.probability_square_sum = torch.zeros(shape, dtype=torch.float64, device=device)
        self.correct_count = torch.zeros(shape, device=device)
        self.forgotten = torch.zeros(shape, device=device)
        self.previous_correct = torch.zeros(shape, dtype=torch.bool, device=device)
        self.ever_correct = torch.zeros(shape, dtype=torch.bool, device=device)
        self.at_score_epoch: dict[str, Tensor] = {}
        self.grand_seconds = 0.0
        self.trajectories = {name: torch.zeros(runs, len(self.trajectory_epochs), len(labels), device=device)
                             for name in ("margin", "loss", "confidence", "el2n")}

    def is_check(self, epoch: int) -> bool:
        return epoch in self.epochs

    def done(self) -> bool:
        return False

    def observe(self, state: TrainingState) -> None:
        logits = state.logits.float()                                               # [runs, N, C]
        log_normaliser = logits.logsumexp(-1)                                      # [runs, N]; no full softmax
        assigned = _assigned(logits, self.labels)
        margin = assigned - logits.masked_fill(self.label_mask, float("-inf")).amax(-1)
        probability = (assigned - log_normaliser).exp()
        correct = margin > 0
        self.margin_sum += margin
        self.probability_sum += probability
        self.probability_square_sum += probability.double().square()
        self.correct_count += correct
        if self.recorded:
            self.forgotten += self.previous_correct & ~correct
        self.previous_correct, self.ever_correct = correct, self.ever_correct | correct
        self.recorded += 1
        is_score_epoch, in_trajectory = state.epoch == self.score_epoch, state.epoch in self.trajectory_epochs
        if is_score_epoch or in_trajectory:
            loss = log_normaliser - assigned
            error = ((logits - log_normaliser[..., None]).exp() - self.label_mask.float()).norm(dim=-1)
        if is_score_epoch:
            self.at_score_epoch = {"el2n": error, "loss": loss}
            if self.grand:
                def grand() -> None:                       # [runs, N]; a plain module gives [N]
                    norms = per_sample_gradient_norms(state.model, self.data, self.labels)
                    self.at_score_epoch["grand"] = norms.reshape(-1, len(self.labels))
                self.grand_seconds = seconds_on_device(self.data.device, grand)
        if in_trajectory:
            t = self.trajectory_epochs.index(state.epoch)
            for name, values in (("margin", margin), ("loss", loss), ("confidence", logits.amax(-1)), ("el2n", error)):
                self.trajectories[name][:, t] = values

    def scores(self) -> dict[str, Tensor]:
        """name -> [runs, N] float32 (data_map_region int8), and <name>_trajectory -> [runs, T, N]."""
        if not self.recorded or (self.score_epoch is not None and not self.at_score_epoch):
            raise RuntimeError(f"training stopped before the score epoch {self.score_epoch}")
        count = self.recorded
        confidence = self.probability_sum / count
        variability = (self.probability_square_sum / count - confidence.square()).clamp_min(0).sqrt()
        scores = {"aum": (self.margin_sum / count).float(),
                  "forgetting": torch.where(self.ever_correct, self.forgotten, float(count)),
                  "data_map_confidence": confidence.float(), "data_map_variability": variability.float(),
                  "data_map_correctness": self.correct_count / count, **self.at_score_epoch}
        scores["data_map_region"] = data_map_regions(scores["data_map_confidence"], scores["data_map_variability"])
        scores.update({f"{name}_trajectory": values for name, values in self.trajectories.items()})
        return scores
