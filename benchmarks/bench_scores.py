"""What every hardness score costs over plain training (MNIST 20,000 x 5 runs x 500 epochs by default).

Times --runs SimpleNNs trained at once, full batch, with no observer; then the same networks trained with
every score recorded (stragglers, VoG checkpoints, the training dynamics after every epoch, GraNd at the
score epoch, confidence and energy at the end), and prints the ratio, the breakdown per score, and peak
memory. Cleanlab's baseline (K more trainings per run) is timed on its own. Uses real MNIST under --data_root.

    python benchmarks/bench_scores.py [--subset_size 20000] [--runs 5] [--epochs 500] [--cleanlab_folds 5]
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hardness.device import device_name, peak_memory_gib, seconds_on_device  # noqa: E402
from hardness.engine import train_simple_nns  # noqa: E402
from hardness.scoring import confident_learning, score_training_run  # noqa: E402
from utils import (add_benchmark_dataset_arguments, child_seeds, flip_labels, load_benchmark_dataset,  # noqa: E402
                   non_negative_int, positive_int)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=positive_int, default=5, help="networks trained at once (default 5)")
    parser.add_argument("--epochs", type=positive_int, default=500, help="full-batch epochs (default 500)")
    parser.add_argument("--cleanlab_folds", type=non_negative_int, default=5,
                        help="folds of the cleanlab baseline, timed apart; 0 skips it (default 5)")
    parser.add_argument("--noise_ratio", type=float, default=0.1, help="share of labels flipped (default 0.1)")
    add_benchmark_dataset_arguments(parser)
    args = parser.parse_args()

    dataset = load_benchmark_dataset(args)
    device = dataset.data.device
    labels, _, _ = flip_labels(dataset.labels, args.noise_ratio, dataset.num_classes, args.seed)
    seeds = child_seeds(args.seed, args.runs)
    print(f"device: {device_name(device)}; torch {torch.__version__}; {args.dataset_name} {args.subset_size} x "
          f"{dataset.data[0].numel()}, {args.runs} runs x {args.epochs} epochs, {args.noise_ratio:g} noise")

    plain = seconds_on_device(device, lambda: train_simple_nns(seeds, dataset.data, labels, dataset.num_classes,
                                                               args.epochs, progress=False))
    print(f"{'plain training':<40} {plain:>8.1f} s   peak {peak_memory_gib(device):.2f} GiB", flush=True)
    start = time.perf_counter()
    run = score_training_run(seeds, dataset.data, labels, dataset.num_classes, args.epochs, cleanlab_folds=0,
                             progress=False)
    scored = time.perf_counter() - start
    print(f"{'training with every score':<40} {scored:>8.1f} s   peak {peak_memory_gib(device):.2f} GiB")
    for name, seconds in run.seconds.items():
        print(f"  {name:<38} {seconds:>8.1f} s")
    print(f"every score / plain training: {scored / plain:.2f}x (target at most 1.5x)", flush=True)
    if args.cleanlab_folds:
        seconds = seconds_on_device(device, lambda: confident_learning(
            seeds, dataset.data, labels, dataset.num_classes, args.epochs, args.cleanlab_folds, 0, progress=False))
        print(f"{'cleanlab baseline, ' + str(args.cleanlab_folds) + ' folds':<40} {seconds:>8.1f} s   "
              f"({seconds / plain:.2f}x the plain training)   peak {peak_memory_gib(device):.2f} GiB")


if __name__ == "__main__":
    main()
