"""Independent networks trained at once on minibatches, each run in its own order: the runs' parameters are
stacked and called under `torch.vmap` (one computation), the data stays one tensor on the device, batches
are index slices (no DataLoader). Observers of the engine (`hardness.engine.Observer`) watch every run after
each epoch, on one forward pass over the whole data; a step hook sees the runs after every optimizer step."""
import copy
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state
from tqdm import tqdm

from hardness.engine import Observer, TrainingState
from hardness.prediction import predict


class Networks(Protocol):
    """What train_minibatch trains: `runs` networks whose `forward(x, per_run=True)` maps per-run inputs
    [runs, b, ...] to logits [runs, b, C] and latent [runs, b, D]: StackedNetworks, or a single network wrapped
    alike (a ResNet of the class-hardness simulations, which trains alone)."""
    runs: int

    def forward(self, x: Tensor, per_run: bool = False) -> tuple[Tensor, Tensor]: ...


class StackedNetworks:
    """Networks of one architecture as one computation: `forward(x)` gives logits [runs, n, C] and latent
    [runs, n, D] from shared inputs [n, ...], or from per-run inputs [runs, n, ...] with `per_run`."""

    def __init__(self, models: Sequence[nn.Module]) -> None:
        params, buffers = stack_module_state(list(models))
        self.params = {name: p.detach().requires_grad_() for name, p in params.items()}
        self.buffers = buffers
        self.base = copy.deepcopy(models[0]).to("meta")
        self.runs = len(models)

    def parameters(self) -> list[Tensor]:
        return list(self.params.values())

    def stacked_parameters(self) -> dict[str, Tensor]:
        """name -> [runs, ...]: what torch.func.functional_call needs, with `template`, to run one network per slice."""
        return self.params

    @property
    def template(self) -> nn.Module:
        """The architecture without weights (on the meta device), for torch.func.functional_call."""
        return self.base

    def forward(self, x: Tensor, per_run: bool = False) -> tuple[Tensor, Tensor]:
        call = lambda params, buffers, inputs: functional_call(self.base, (params, buffers), (inputs,))  # noqa: E731
        return torch.vmap(call, in_dims=(0, 0, 0 if per_run else None))(self.params, self.buffers, x)

    def whole_data(self, data: Tensor) -> tuple[Tensor, Tensor]:
        """logits [runs, N, C] and latent [runs, N, D] of every sample, without gradients, chunk by chunk."""
        return predict(self.forward, data, sample_dim=1)


def epoch_orders(shuffles: Sequence[torch.Generator], size: int, device: torch.device) -> Tensor:
    """[runs, size]: one epoch's sample order for every run, each drawn from its own generator."""
    return torch.stack([torch.randperm(size, generator=g) for g in shuffles]).to(device)


def train_minibatch(networks: Networks, optimizer: torch.optim.Optimizer, data: Tensor, labels: Tensor,
                    num_classes: int, epochs: int, batch_size: int, shuffles: Sequence[torch.Generator],
                    observers: Sequence[Observer] = (), progress: bool = True, description: str = "training",
                    augment: Callable[[Tensor], Tensor] | None = None, train_rows: Tensor | None = None,
                    after_step: Callable[[int], None] | None = None) -> np.ndarray:
    """Train every run for up to `epochs` passes over (data [N, ...], labels [N]) in minibatches of `batch_size`,
    run r in the order drawn from shuffles[r] (over its row of `train_rows` [runs, M], the rows it trains on,
    where given); each run's loss is the mean over its own batch, of the batch as
    `augment` [runs, b, ...] -> [runs, b, ...] changes it where given. After epoch e (0-based) the observers that
    check e see the networks on the whole data (as given, never augmented); training stops after an epoch at
    which every observer is done. `after_step`, where given, is called after every optimizer step with the number
    of steps taken (1, 2, ...), for records at given steps rather than epochs. Returns the mean training loss of
    every run in every epoch trained [runs, epochs trained]."""
    losses = torch.zeros(networks.runs, epochs, device=data.device)
    rows = None if train_rows is None else train_rows.to(data.device)
    size = len(labels) if rows is None else rows.shape[1]
    steps, trained = -(-size // batch_size), 0
    for epoch in tqdm(range(epochs), desc=description, disable=not progress, leave=False):
        order = epoch_orders(shuffles, size, data.device)                                      # [runs, size]
        batches = (order if rows is None else rows.gather(1, order)).split(batch_size, dim=1)    # [runs, b] each
        for i, batch in enumerate(batches):
            inputs = data[batch] if augment is None else augment(data[batch])
            logits, _ = networks.forward(inputs, per_run=True)                                  # [runs, b, C]
            loss = F.cross_entropy(logits.transpose(1, 2), labels[batch], reduction="none").mean(1)  # [runs]
            optimizer.zero_grad(set_to_none=True)
            loss.sum().backward()
            optimizer.step()
            losses[:, epoch] += loss.detach() / steps
            if after_step is not None:
                after_step(epoch * steps + i + 1)
        trained += 1
        watching = [observer for observer in observers if observer.is_check(epoch)]
        if watching:
            logits, latent = predict(networks.forward, data, sample_dim=1)              # [runs, N, C], [runs, N, D]
            state = TrainingState(epoch, networks, logits, latent, labels, num_classes)
            for observer in watching:
                observer.observe(state)
        if observers and all(observer.done() for observer in observers):
            break
    return losses[:, :trained].cpu().numpy()
