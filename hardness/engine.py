"""The training engine: many SimpleNNs trained full batch as one computation, with observers that watch
the networks after chosen epochs (record radii, find inversion points, ...); ResNet-18 evaluation networks;
predictions of what was trained.

Epochs are numbered from 0 as in the original code: epoch e is the (e+1)-th optimizer step, and an
observer that checks epoch e sees the networks right after that step.
"""
import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from hardness.cli import UserInputError
from hardness.device import free_memory_bytes
from hardness.prediction import PREDICTION_CHUNK, evaluating, predict
from hardness.radii import class_radii
from neural_networks import BatchedSimpleNN, ResNet18

SIMPLE_NN_LR = 0.1                            # full-batch SGD
RESNET_LR, RESNET_WEIGHT_DECAY = 1e-3, 1e-2
MAX_NETWORK_SAMPLES = 4_000_000               # SimpleNNs x samples trained at once (about 7 GiB on a CPU)


# ----------------------------------------------------------------------------- observers

@dataclass
class TrainingState:
    """The networks right after the step of `epoch`, as one forward pass on the whole data saw them (a
    ResNet trained on minibatches has no such pass: its states carry the model only, logits and latent None)."""
    epoch: int
    model: nn.Module            # the networks themselves, for observers that keep checkpoints
    logits: Tensor | None       # [runs, N, C]
    latent: Tensor | None       # [runs, N, D]
    labels: Tensor              # [N]
    num_classes: int

    @functools.cached_property
    def radii(self) -> Tensor:
        """[runs, C] class-manifold radii, computed once however many observers ask."""
        return class_radii(self.latent, self.labels, self.num_classes)

    @functools.cached_property
    def predictions(self) -> Tensor:
        """[runs, N] predicted classes."""
        return self.logits.argmax(-1)


class Observer(Protocol):
    """Watches training: `observe` is called after the epochs for which `is_check` is true; training stops
    early once every observer is `done`."""

    def is_check(self, epoch: int) -> bool: ...

    def observe(self, state: TrainingState) -> None: ...

    def done(self) -> bool: ...


class RadiiRecorder:
    """Records the class radii of every run after each epoch from `first_epoch` to `last_epoch`."""

    def __init__(self, runs: int, num_classes: int, first_epoch: int, last_epoch: int, device: torch.device) -> None:
        self.first_epoch = first_epoch
        self.recorded = 0
        # filled in place: no allocation outlives its epoch, so the CPU heap does not fragment
        self.values = torch.zeros(runs, max(0, last_epoch - first_epoch + 1), num_classes, device=device)

    def is_check(self, epoch: int) -> bool:
        return self.first_epoch <= epoch < self.first_epoch + self.values.shape[1]

    def observe(self, state: TrainingState) -> None:
        self.values[:, state.epoch - self.first_epoch] = state.radii
        self.recorded = state.epoch - self.first_epoch + 1

    def done(self) -> bool:
        return False

    @property
    def radii(self) -> np.ndarray:
        """[runs, epochs recorded, C] on the CPU."""
        return self.values[:, :self.recorded].cpu().numpy()

    @property
    def epochs(self) -> np.ndarray:
        """The epochs after which the radii were recorded."""
        return np.arange(self.first_epoch, self.first_epoch + self.recorded)


# ----------------------------------------------------------------------------- full-batch SimpleNNs

def per_run_cross_entropy(logits: Tensor, labels: Tensor, sample_weights: Tensor | None = None) -> Tensor:
    """Cross-entropy of each run: logits [runs, N, C], labels [N] -> [runs].

    The mean over all samples, or with `sample_weights` [runs, N] the weighted sum (rows of a training
    mask divided by its size give each run the mean over its own training samples).
    """
    losses = F.cross_entropy(logits.transpose(1, 2), labels.expand(logits.shape[0], -1), reduction="none")
    return losses.mean(1) if sample_weights is None else (losses * sample_weights).sum(1)


def train_full_batch(model: nn.Module, optimizer: torch.optim.Optimizer, data: Tensor, labels: Tensor,
                     epochs: int, num_classes: int, sample_weights: Tensor | None = None,
                     observers: Sequence[Observer] = (), progress: bool = True,
                     description: str = "training") -> np.ndarray:
    """Full-batch training of a batched model (`model(x) -> (logits [runs,N,C], latent [runs,N,D])`).

    Each epoch is one optimizer step on the whole data (weighted per run by `sample_weights`). The
    forward pass of each step shows the networks as the previous step left them, so observers get it
    for free; only a check after the last step needs a pass of its own. Training stops once every
    observer is done. Returns the training loss of every run at every epoch trained, [runs, epochs].
    """
    losses = None
    trained = 0
    for step in tqdm(range(epochs + 1), desc=description, disable=not progress, leave=False):  # steps taken
        watching = [observer for observer in observers if step > 0 and observer.is_check(step - 1)]
        if step == epochs and not watching:
            break
        with torch.set_grad_enabled(step < epochs):
            logits, latent = model(data)
        if losses is None:  # filled in place, like the observers' records
            losses = torch.zeros(logits.shape[0], epochs, device=data.device)
        if watching:
            state = TrainingState(step - 1, model, logits.detach(), latent.detach(), labels, num_classes)
            for observer in watching:
                observer.observe(state)
            if all(observer.done() for observer in observers):
                break
        if step == epochs:
            break
        loss = per_run_cross_entropy(logits, labels, sample_weights)
        losses[:, step] = loss.detach()
        trained += 1
        optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()
        optimizer.step()
    return losses[:, :trained].cpu().numpy()


def simple_nn_size(channels: int) -> tuple[int, int]:
    """SimpleNN's (depth, width): 2 x 20 for greyscale images (and tables), 8 x 30 for 3-channel ones."""
    return (8, 30) if channels == 3 else (2, 20)


def input_channels(data: Tensor) -> int:
    """Channels of [N, C, H, W] images; 1 for [N, D] features (a table is sized as a greyscale image)."""
    return data.shape[1] if data.dim() == 4 else 1


def train_simple_nns(seeds: Sequence[int], data: Tensor, labels: Tensor, num_classes: int, epochs: int,
                     train_masks: Tensor | None = None, observers: Sequence[Observer] = (), progress: bool = True,
                     description: str = "training") -> BatchedSimpleNN:
    """One SimpleNN per seed, all at once, full batch, SGD lr 0.1, each on its row of `train_masks`
    [networks, N] (all samples if None)."""
    depth, width = simple_nn_size(input_channels(data))
    model = BatchedSimpleNN.from_seeds(seeds, input_size=data[0].numel(), width=width, depth=depth,
                                       num_classes=num_classes).to(data.device)
    weights = None if train_masks is None else train_masks / train_masks.sum(1, keepdim=True).clamp_min(1)
    train_full_batch(model, torch.optim.SGD(model.parameters(), lr=SIMPLE_NN_LR), data, labels, epochs, num_classes,
                     sample_weights=weights, observers=observers, progress=progress, description=description)
    return model


# ----------------------------------------------------------------------------- ResNet-18 evaluation networks

def activation_bytes_per_sample(model: nn.Module, data: Tensor) -> int:
    """Bytes autograd keeps per training sample for a backward pass through `model` (measured on 2 and
    4 samples, so the weights it also keeps cancel out)."""
    def saved_bytes(batch: int) -> int:
        total = 0

        def count(tensor: Tensor) -> Tensor:
            nonlocal total
            total += tensor.numel() * tensor.element_size()
            return tensor
        with torch.autograd.graph.saved_tensors_hooks(count, lambda tensor: tensor):
            model(data[:batch])
        return total
    running_statistics = {name: buffer.clone() for name, buffer in model.named_buffers()}
    per_sample = (saved_bytes(4) - saved_bytes(2)) // 2
    for name, buffer in model.named_buffers():  # the measuring passes leave BatchNorm as they found it
        buffer.copy_(running_statistics[name])
    return per_sample


def _resnet_step_batches(rows: Tensor, batch_size: int | None, shuffle: torch.Generator) -> list[Tensor]:
    """The sample rows of each optimizer step of one epoch: all of them at once, or shuffled minibatches."""
    if batch_size is None:
        return [rows]
    return list(rows[torch.randperm(len(rows), generator=shuffle)].split(batch_size))


def train_resnets(seeds: Sequence[int], data: Tensor, labels: Tensor, num_classes: int, epochs: int,
                  train_masks: Tensor | None = None, batch_size: int | None = None,
                  observers: Sequence[Observer] = (), progress: bool = True,
                  description: str = "ResNets") -> nn.ModuleList:
    """One ResNet-18 per seed, trained one after another with Adam (lr 1e-3, weight decay 1e-2) on its
    training samples: full batch by default, as the original (BatchNorm statistics over the whole training
    set), or shuffled minibatches of `batch_size`. Full batch that cannot fit the device is a UserInputError.
    `observers` see each network in turn after the epochs they check (the model only: logits and latent None)."""
    if data.dim() != 4:
        raise UserInputError(f"a ResNet needs images [N, C, H, W], got samples shaped {list(data.shape[1:])} (a "
                             "table); use the SimpleNN")
    models = nn.ModuleList()
    bar = tqdm(total=len(seeds) * epochs, desc=description, unit="epoch", disable=not progress, leave=False)
    for run, seed in enumerate(seeds):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = ResNet18(data.shape[1], num_classes).to(data.device)
        rows = torch.arange(len(data)) if train_masks is None else train_masks[run].cpu().nonzero().flatten()
        if batch_size is None:
            needed, free = activation_bytes_per_sample(model, data) * len(rows), free_memory_bytes(data.device)
            if needed > free:
                raise UserInputError(
                    f"full-batch ResNet training on {len(rows)} samples needs about {needed / 2**30:.0f} GiB for "
                    f"activations, more than the {free / 2**30:.0f} GiB free on "
                    f"{data.device}; give --batch_size (e.g. 128) to train on minibatches")
        optimizer = torch.optim.Adam(model.parameters(), lr=RESNET_LR, weight_decay=RESNET_WEIGHT_DECAY)
        shuffle = torch.Generator().manual_seed(seed)
        try:
            for epoch in range(epochs):
                for batch in _resnet_step_batches(rows, batch_size, shuffle):
                    batch = batch.to(data.device)
                    loss = F.cross_entropy(model(data[batch])[0], labels[batch])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                for observer in observers:
                    if observer.is_check(epoch):
                        observer.observe(TrainingState(epoch, model, None, None, labels, num_classes))
                bar.update()
        except torch.OutOfMemoryError as error:
            raise UserInputError(f"ResNet training ran out of memory on {data.device}; give a smaller "
                                 "--batch_size" + ("" if batch_size else " (e.g. 128)")) from error
        models.append(model)
    bar.close()
    return models


def resnet_logits(model: ResNet18, data: Tensor, chunk: int = PREDICTION_CHUNK) -> Tensor:
    """A ResNet's logits [N, C] in eval mode, `chunk` samples at a time; the model is left in its mode."""
    with evaluating(model):
        return predict(lambda part: model(part)[0], data, chunk)


class WholeDataObservers:
    """Shows `observers` of a ResNet trained on minibatches what a full-batch step shows for free: after each
    checked epoch, the logits [1, N, C] of the whole `data` in eval mode, with the model in eval mode while they
    observe (so per-sample gradients are per sample). `seconds` adds up the time of those passes."""

    def __init__(self, observers: Sequence[Observer], data: Tensor) -> None:
        self.observers, self.data, self.seconds = list(observers), data, 0.0

    def is_check(self, epoch: int) -> bool:
        return any(observer.is_check(epoch) for observer in self.observers)

    def observe(self, state: TrainingState) -> None:
        start = time.perf_counter()
        logits = resnet_logits(state.model, self.data)[None]                                 # [1, N, C]
        if self.data.device.type == "cuda":
            torch.cuda.synchronize(self.data.device)
        self.seconds += time.perf_counter() - start
        seen = TrainingState(state.epoch, state.model, logits, None, state.labels, state.num_classes)
        state.model.eval()
        try:
            for observer in self.observers:
                if observer.is_check(state.epoch):
                    observer.observe(seen)
        finally:
            state.model.train()

    def done(self) -> bool:
        return all(observer.done() for observer in self.observers)


# ----------------------------------------------------------------------------- training and predicting

def train_networks(network: str, seeds: Sequence[int], data: Tensor, labels: Tensor, num_classes: int,
                   epochs: int, train_masks: Tensor | None = None, batch_size: int | None = None,
                   observers: Sequence[Observer] = (), progress: bool = True,
                   description: str = "training") -> nn.Module:
    """One 'SimpleNN' (all at once, full batch) or 'ResNet' (one by one) per seed, each on its training mask,
    watched by `observers`."""
    if network == "ResNet":
        return train_resnets(seeds, data, labels, num_classes, epochs, train_masks, batch_size, observers, progress,
                             description)
    return train_simple_nns(seeds, data, labels, num_classes, epochs, train_masks, observers, progress, description)


def network_logits(model: nn.Module, data: Tensor) -> Tensor:
    """Logits [networks, N, classes] of what train_networks returned."""
    if isinstance(model, BatchedSimpleNN):
        with torch.no_grad():
            return model(data)[0]
    return torch.stack([resnet_logits(resnet, data) for resnet in model])


def train_and_predict(network: str, seeds: Sequence[int], data: Tensor, labels: Tensor, num_classes: int,
                      epochs: int, train_masks: Tensor, predict_rows: Tensor, batch_size: int | None = None,
                      progress: bool = True) -> Tensor:
    """Train one network per seed on its row of `train_masks` [networks, N]; predicted classes of the
    samples at `predict_rows`, [networks, len(predict_rows)].

    Networks see only the samples in some training mask; SimpleNNs are trained as many at once as
    MAX_NETWORK_SAMPLES allows.
    """
    train_masks = train_masks.to(labels.device)
    rows = train_masks.any(0).nonzero().flatten()
    per_batch = len(seeds) if network == "ResNet" else max(1, MAX_NETWORK_SAMPLES // max(1, len(rows)))
    predictions = []
    for start in range(0, len(seeds), per_batch):
        batch = slice(start, start + per_batch)
        model = train_networks(network, seeds[batch], data[rows], labels[rows], num_classes, epochs,
                               train_masks[batch][:, rows], batch_size, progress=progress,
                               description=f"training {len(seeds[batch])} network(s)")
        predictions.append(network_logits(model, data[predict_rows]).argmax(-1))
    return torch.cat(predictions)
