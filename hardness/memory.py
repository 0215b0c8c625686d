"""The memory a run needs on its device: an estimate from the size of the data it loads and a description of what
it trains (RunDescription, built by each caller), checked against the free memory before the data are read."""
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from hardness.cli import FieldError, UserInputError
from hardness.device import free_memory_bytes
from hardness.engine import simple_nn_size
from hardness.user_data import MemoryCheck

RESNET_BYTES_PER_PIXEL = 7300        # autograd's saved activations of ResNet-18 per sample and input pixel (measured
                                     # with engine.activation_bytes_per_sample: 7.2 kB from 8x8 to 64x64 inputs)
RESNET_STATE_BYTES = 16 * 11_200_000   # ResNet-18's weights, gradients and Adam's two moments, float32
SIMPLE_NN_LOGIT_ALLOWANCE = 64         # per network and sample: logits, their gradients and the observers' copies


@dataclass(frozen=True)
class RunDescription:
    """What a run trains on the samples it loads, as much as the memory estimate needs."""
    network: str | None = "SimpleNN"   # SimpleNN, ResNet, or the fast recipe's MLP or CNN; None: nothing (the data only)
    networks: int = 1                  # networks trained at once (runs, times train ratios, ...)
    batch_size: int | None = None      # a ResNet's minibatch (None: full batch); the others' does not count


def estimated_bytes(source_samples: int, sample_shape: tuple[int, ...], used: int, device: torch.device,
                    run: RunDescription) -> int:
    """Memory that loading `used` of `source_samples` samples of `sample_shape` and training `run` on them needs on
    `device`: an estimate (the float32 data, on the CPU also the raw source and the float64 standardisation;
    a SimpleNN's activations and first layer per network, or a ResNet-18's state and activations per sample)."""
    values = math.prod(sample_shape)
    needed = used * values * 4
    if device.type == "cpu":
        needed += source_samples * values + used * values * 8
    if run.network is None:
        return needed
    if run.network == "ResNet":
        pixels = math.prod(sample_shape[1:])
        return needed + RESNET_STATE_BYTES + RESNET_BYTES_PER_PIXEL * pixels * (run.batch_size or used)
    if run.network in ("MLP", "CNN"):          # the fast recipe: whole-data logits and latent, 512-wide weights
        latent = 16 * math.prod(sample_shape[1:]) // 4 if run.network == "CNN" else 512
        return needed + run.networks * used * (latent + SIMPLE_NN_LOGIT_ALLOWANCE) * 4 + run.networks * values * 512 * 12
    depth, width = simple_nn_size(sample_shape[0] if len(sample_shape) == 3 else 1)
    return (needed + run.networks * used * (3 * depth * width + SIMPLE_NN_LOGIT_ALLOWANCE) * 4
            + run.networks * values * width * 12)


def memory_check(run: RunDescription, device: torch.device, samples: int | None, name: str) -> MemoryCheck:
    """check(samples in the source, shape of one sample) for a run that takes `samples` of the source `name` (None:
    all of it): a FieldError naming subset_size (and batch_size for ResNets; dataset_name when it takes the whole
    source) when the estimate is more than the free memory, and a UserInputError for a ResNet on a table."""

    def check(source_samples: int, sample_shape: tuple[int, ...]) -> None:
        if run.network == "ResNet" and len(sample_shape) == 1:
            raise UserInputError(f"{name} is a table of {sample_shape[0]} features, and a ResNet needs images; "
                                 "score it with the SimpleNN")
        used = source_samples if samples is None else min(samples, source_samples)
        needed = estimated_bytes(source_samples, sample_shape, used, device, run)
        free = free_memory_bytes(device)
        if needed <= free:
            return

        def wording(field: Callable[[str], str]) -> str:
            if samples is None:
                fix = "a smaller source"
            elif run.network != "ResNet":
                fix = f"a smaller {field('subset_size')}"
            else:
                fix = (f"a smaller {field('subset_size')} or " + (field("batch_size") if run.batch_size else
                                                                  f"a {field('batch_size')} (e.g. 128)"))
            return (f"{used} samples of {name} shaped {list(sample_shape)}{' and the run' if run.network else ''} need "
                    f"about {needed / 2**30:.1f} GiB, more than the {free / 2**30:.1f} GiB free on {device}; give {fix}")
        raise FieldError("dataset_name" if samples is None else "subset_size", wording)
    return check
