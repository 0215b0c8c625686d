"""Speed of memorisation_and_inversion.py's epoch: --runs networks trained at once on minibatches (each run its
own order, stacked under vmap), then the whole-data pass its observers see, against the same networks trained
one after another. Random MNIST-sized data (--subset_size x 1 x 28 x 28, 10 classes); prints seconds per
epoch and the projected time of the default command (100 epochs).

    python benchmarks/bench_memorisation.py [--subset_size 10000] [--runs 5] [--epochs 2] [--device auto]
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hardness.device import device_name, seconds_on_device  # noqa: E402
from hardness.minibatch import StackedNetworks, train_minibatch  # noqa: E402
from neural_networks import memorisation_cnn, memorisation_mlp  # noqa: E402
from utils import add_device_argument, add_shared_arguments, positive_int, resolve_device  # noqa: E402

DEFAULT_EPOCHS = {"mlp": 100, "cnn": 100}


def stacked(model: str, runs: int, device: torch.device) -> StackedNetworks:
    make = (lambda: memorisation_mlp((1, 28, 28), 10)) if model == "mlp" else (lambda: memorisation_cnn((1, 28, 28), 10))
    return StackedNetworks([make().to(device) for _ in range(runs)])


def seconds_per_epoch(networks: StackedNetworks, data: torch.Tensor, labels: torch.Tensor, epochs: int,
                      device: torch.device) -> float:
    optimizer = torch.optim.SGD(networks.parameters(), lr=0.01, momentum=0.9)
    shuffles = [torch.Generator().manual_seed(run) for run in range(networks.runs)]
    train_minibatch(networks, optimizer, data, labels, 10, 1, 128, shuffles, progress=False)     # warm-up
    return seconds_on_device(device, lambda: train_minibatch(networks, optimizer, data, labels, 10, epochs, 128,
                                                             shuffles, progress=False)) / epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shared_arguments(parser, "subset_size", subset_size={"default": 10000, "help": "training samples (default 10000)"})
    parser.add_argument("--runs", type=positive_int, default=5, help="networks trained at once (default 5)")
    parser.add_argument("--epochs", type=positive_int, default=2, help="epochs timed per measurement (default 2)")
    add_device_argument(parser, device={"help": "(default auto)"})
    args = parser.parse_args()
    device = resolve_device(args.device)
    generator = torch.Generator().manual_seed(0)
    data = torch.randn(args.subset_size, 1, 28, 28, generator=generator).to(device)
    labels = torch.randint(0, 10, (args.subset_size,), generator=generator).to(device)
    print(f"device: {device_name(device)}; torch {torch.__version__}; {args.subset_size} x 784, batch 128, "
          f"{args.runs} runs; {torch.get_num_threads()} threads")
    print(f"{'model':<6} {'at once s/epoch':>16} {'one by one s/epoch':>19} {'whole-data pass s':>18} {'default command':>16}")
    for model in ("mlp", "cnn"):
        together = seconds_per_epoch(stacked(model, args.runs, device), data, labels, args.epochs, device)
        alone = args.runs * seconds_per_epoch(stacked(model, 1, device), data, labels, args.epochs, device)
        networks = stacked(model, args.runs, device)
        start = time.perf_counter()
        networks.whole_data(data)
        whole = time.perf_counter() - start
        projected = DEFAULT_EPOCHS[model] * (together + 2 * whole)       # training + the observers' passes
        print(f"{model:<6} {together:>16.2f} {alone:>19.2f} {whole:>18.2f} {projected / 60:>13.1f} min", flush=True)


if __name__ == "__main__":
    main()
