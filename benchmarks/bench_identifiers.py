"""Speed of the Sections 4-5 engine on MNIST-sized inputs (20,000 x 784 by default).

Prints the wall time of one hard-sample identification per strategy (SimpleNN, full batch; the straggler
search stops once every class has inverted, confidence and energy then train a fresh network for all
epochs), and of training N evaluation networks at once, each on its own random 90% training mask with
the test-set metrics at the end (N = 1, 45 and 675 by default: one network, one identification's
networks and the paper's whole command). Uses real MNIST when it is under --data_root (random data
cannot show an inversion point), and reports peak memory (process RSS on the CPU, allocated on CUDA).

    python benchmarks/bench_identifiers.py [--networks 1 45 675] [--epochs 500] [--strategies ...] [--device auto]
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hardness.device import device_name, peak_memory_gib, seconds_on_device  # noqa: E402
from utils import (STRATEGIES, Stage, add_benchmark_dataset_arguments, identify_hard_samples,  # noqa: E402
                   load_benchmark_dataset, positive_int, stage_seed, train_and_evaluate)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--networks", type=positive_int, nargs="+", default=[1, 45, 675],
                        help="numbers of evaluation networks trained at once, in increasing order (default 1 45 675)")
    parser.add_argument("--epochs", type=positive_int, default=500, help="epochs of every network (default 500)")
    parser.add_argument("--strategies", nargs="*", choices=STRATEGIES, default=list(STRATEGIES),
                        help="identifications to time; none to time only the evaluation networks (default: every "
                             "strategy)")
    add_benchmark_dataset_arguments(parser)
    args = parser.parse_args()

    dataset = load_benchmark_dataset(args)
    device = dataset.data.device
    data, labels, classes = dataset.data, dataset.labels, dataset.num_classes
    print(f"device: {device_name(device)}; torch {torch.__version__}; {args.dataset_name} {args.subset_size} x 784, {args.epochs} epochs")

    print(f"{'identification':<16} {'s':>7} {'peak GiB':>9}")
    for strategy in args.strategies:
        seconds = seconds_on_device(device, lambda: identify_hard_samples(
            strategy, [stage_seed(args.seed, Stage.IDENTIFY)], data, labels, labels, classes, args.epochs, progress=False)[0])
        print(f"{strategy:<16} {seconds:>7.1f} {peak_memory_gib(device):>9.2f}", flush=True)

    masks = torch.rand(max(args.networks), len(labels), generator=torch.Generator().manual_seed(args.seed)) < 0.9
    test = torch.rand(len(labels), generator=torch.Generator().manual_seed(args.seed + 1)) < 0.1
    print(f"{'networks':>8} {'total s':>9} {'s per network':>14} {'peak GiB':>9}")
    for count in sorted(args.networks):
        seconds = seconds_on_device(device, lambda: train_and_evaluate("SimpleNN", list(range(count)), data, labels, classes,
                                                           args.epochs, masks[:count], {"test": test}, progress=False))
        print(f"{count:>8} {seconds:>9.1f} {seconds / count:>14.2f} {peak_memory_gib(device):>9.2f}", flush=True)


if __name__ == "__main__":
    main()
