"""Independent networks trained at once on minibatches, each run in its own order: the runs' parameters are
stacked and called under `torch.vmap` (one computation), the data stays one tensor on the device, batches
are index slices (no DataLoader). Observers of the engine (`hardness.engine.Observer`) watch every run after
each epoch, on one forward pass over the whole data."""
import copy
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state
from tqdm import tqdm

from hardness.engine import Observer, TrainingState
from hardness.prediction import predict



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

    def forward(self, x: Tensor, per_run: bool = False) -> tuple[Tensor, Tensor]:
        call = lambda params, buffers, inputs: functional_call(self.base, (params, buffers), (inputs,))  # noqa: E731
        return torch.vmap(call, in_dims=(0, 0, 0 if per_run else None))(self.params, self.buffers, x)

    def whole_data(self, data: Tensor) -> tuple[Tensor, Tensor]:
        """logits [runs, N, C] and latent [runs, N, D] of every sample, without gradients, chunk by chunk."""
        return predict(self.forward, data, sample_dim=1)


def epoch_orders(shuffles: Sequence[torch.Generator], size: int, device: torch.device) -> Tensor:
    """[runs, size]: one epoch's sample order for every run, each drawn from its own generator."""
    return torch.stack([torch.randperm(size, generator=g) for g in shuffles]).to(device)


def train_minibatch(networks: StackedNetworks, optimizer: torch.optim.Optimizer, data: Tensor, labels: Tensor,
                    num_classes: int, epochs: int, batch_size: int, shuffles: Sequence[torch.Generator],
                    observers: Sequence[Observer] = (), progress: bool = True,
                    description: str = "training") -> np.ndarray:
    """Train every run for `epochs` passes over (data [N, ...], labels [N]) in minibatches of `batch_size`, run r
    in the order drawn from shuffles[r]; each run's loss is the mean over its own batch. After epoch e (0-based)
    the observers that check e see the networks on the whole data. Returns the mean training loss of every run
    in every epoch [runs, epochs]."""
    losses = torch.zeros(networks.runs, epochs, device=data.device)
    steps = -(-len(labels) // batch_size)
    for epoch in tqdm(range(epochs), desc=description, disable=not progress, leave=False):
        for batch in epoch_orders(shuffles, len(labels), data.device).split(batch_size, dim=1):   # [runs, b]
            logits, _ = networks.forward(data[batch], per_run=True)                             # [runs, b, C]
            loss = F.cross_entropy(logits.transpose(1, 2), labels[batch], reduction="none").mean(1)  # [runs]
            optimizer.zero_grad(set_to_none=True)
            loss.sum().backward()
            optimizer.step()
            losses[:, epoch] += loss.detach() / steps
        watching = [observer for observer in observers if observer.is_check(epoch)]
        if watching:
            logits, latent = networks.whole_data(data)
            state = TrainingState(epoch, networks, logits, latent, labels, num_classes)
            for observer in watching:
                observer.observe(state)
    return losses.cpu().numpy()
