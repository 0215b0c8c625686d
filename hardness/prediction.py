"""Chunked prediction: a model's outputs for every sample, a chunk of samples at a time, without gradients."""
import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

PREDICTION_CHUNK = 1024     # samples per forward pass: a ResNet-18 on 32 x 32 images holds about 1 GiB at once


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """`model` in eval mode inside the block, and back in the mode it was in afterwards."""
    training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(training)


def predict(model: Callable[[Tensor], Tensor | tuple[Tensor, ...]], x: Tensor, chunk: int = PREDICTION_CHUNK,
            sample_dim: int = 0) -> Tensor | tuple[Tensor, ...]:
    """model(part) for consecutive parts of `chunk` samples of x [N, ...], without gradients, concatenated along
    `sample_dim` of the outputs (1 for stacked networks, whose outputs are [runs, n, ...]); a tuple of outputs is
    concatenated element by element. The model's train/eval mode is left as it is (see `evaluating`)."""
    with torch.no_grad():
        outputs = [model(part) for part in (x.split(chunk) if len(x) else [x])]
    if isinstance(outputs[0], tuple):
        return tuple(torch.cat(parts, sample_dim) for parts in zip(*outputs))
    return torch.cat(outputs, sample_dim)
