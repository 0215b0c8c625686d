"""Speed and memory of the Section 3 engine on MNIST-sized inputs (20,000 x 784 random data by default).

Trains 1, 10 and 100 SimpleNNs at once for 500 full-batch epochs with the observers of
replicate_inversion_results_on_multiple_classes.py (radii recorded after epochs 21 .. 499, inversion checks
after epochs 20, 25, ...), and prints seconds per run, runs per second and
peak memory (process RSS on the CPU, allocated device memory on CUDA) for each.

    python benchmarks/bench_inversion.py [--runs 1 10 100] [--epochs 500] [--samples 20000] [--device auto]
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hardness.device import device_name, peak_memory_gib, seconds_on_device  # noqa: E402
from neural_networks import BatchedSimpleNN  # noqa: E402
from utils import (RadiiRecorder, StragglerTracker, add_device_argument, keep_freed_memory_in_heap, positive_int,  # noqa: E402
                   resolve_device, train_full_batch)


def time_training(runs: int, epochs: int, data: torch.Tensor, labels: torch.Tensor) -> float:
    model = BatchedSimpleNN.initialise(runs).to(data.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    observers = [RadiiRecorder(runs, 10, 21, epochs - 1, data.device), StragglerTracker(runs, labels, 10)]
    return seconds_on_device(data.device, lambda: train_full_batch(model, optimizer, data, labels, epochs, 10,
                                                                   observers=observers, progress=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=positive_int, nargs="+", default=[1, 10, 100],
                        help="numbers of networks trained at once, timed in increasing order (default 1 10 100)")
    parser.add_argument("--epochs", type=positive_int, default=500, help="full-batch epochs (default 500)")
    parser.add_argument("--samples", type=positive_int, default=20000,
                        help="samples in the full batch; 70000 is all of MNIST (default 20000)")
    add_device_argument(parser)
    args = parser.parse_args()

    keep_freed_memory_in_heap()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    data = torch.randn(args.samples, 1, 28, 28, device=device)
    labels = torch.randint(0, 10, (args.samples,), device=device)
    print(f"device: {device_name(device)}; torch {torch.__version__}; {args.epochs} epochs on {args.samples} x 784, "
          "radii from epoch 21")
    time_training(2, 25, data, labels)  # warm-up: allocator, kernels, thread pool
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    print(f"{'runs':>5} {'total s':>9} {'s per run':>10} {'runs per s':>11} {'peak GiB':>9}")
    for runs in sorted(args.runs):
        seconds = time_training(runs, args.epochs, data, labels)
        print(f"{runs:>5} {seconds:>9.1f} {seconds / runs:>10.2f} {runs / seconds:>11.3f} "
              f"{peak_memory_gib(device):>9.2f}", flush=True)


if __name__ == "__main__":
    main()
