"""Speed of Variance of Gradients on MNIST-sized inputs (20,000 x 784 by default).

Trains SimpleNNs full batch (not timed) keeping 15 checkpoints evenly over --epochs, then prints the wall
time of VoG for every sample: of one network for all four stages (every checkpoint differentiated) and for
the late stage alone, and of an ensemble of --runs networks at once (late stage, as the identifier). Then
times one --strategy vog identification against one confidence identification of the same networks (both
run the same straggler search for their budget and train the same fresh networks; vog adds the checkpoints
and the gradients). Uses real MNIST when it is under --data_root; reports peak memory.

    python benchmarks/bench_vog.py [--subset_size 20000] [--epochs 500] [--runs 6] [--device auto]
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hardness.device import device_name, peak_memory_gib, seconds_on_device  # noqa: E402
from hardness.engine import train_simple_nns  # noqa: E402
from hardness.identifiers import VOG_CHECKPOINTS  # noqa: E402
from hardness.vog import STAGES, CheckpointRecorder, checkpoint_epochs, vog_scores  # noqa: E402
from utils import (Stage, add_benchmark_dataset_arguments, child_seeds, identify_hard_samples,  # noqa: E402
                   load_benchmark_dataset, positive_int, stage_seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=positive_int, default=500, help="training epochs of every network (default 500)")
    parser.add_argument("--runs", type=positive_int, default=6,
                        help="networks of the ensemble and of each identification; 6 = the benchmark's default "
                             "2 train ratios x 3 runs (default 6)")
    add_benchmark_dataset_arguments(parser)
    args = parser.parse_args()

    dataset = load_benchmark_dataset(args)
    device = dataset.data.device
    data, labels, classes = dataset.data, dataset.labels, dataset.num_classes
    print(f"device: {device_name(device)}; torch {torch.__version__}; {args.dataset_name} {args.subset_size} x "
          f"{data[0].numel()}, {VOG_CHECKPOINTS} checkpoints over {args.epochs} epochs")

    print(f"{'VoG of every sample':<40} {'s':>7} {'peak GiB':>9}")
    for runs, stages in ((1, STAGES), (1, ["late"]), (args.runs, ["late"])):
        recorder = CheckpointRecorder(checkpoint_epochs(args.epochs, VOG_CHECKPOINTS))
        model = train_simple_nns(child_seeds(args.seed, runs), data, labels, classes,
                                 args.epochs, observers=[recorder], progress=False)
        seconds = seconds_on_device(device, lambda: vog_scores(model, recorder.checkpoints, data, labels, stages))
        what = f"{runs} network(s), {'all stages' if len(stages) > 1 else 'late stage'}"
        print(f"{what:<40} {seconds:>7.2f} {peak_memory_gib(device):>9.2f}", flush=True)

    print(f"{'identification (' + str(args.runs) + ' networks)':<40} {'s':>7} {'peak GiB':>9}")
    seconds = {}
    for strategy in ("confidence", "vog"):
        seconds[strategy] = seconds_on_device(device, lambda: identify_hard_samples(
            strategy, [stage_seed(args.seed, Stage.IDENTIFY, run) for run in range(args.runs)], data, labels, labels, classes,
            args.epochs, progress=False)[0])
        print(f"{strategy:<40} {seconds[strategy]:>7.1f} {peak_memory_gib(device):>9.2f}", flush=True)
    print(f"vog / confidence: {seconds['vog'] / seconds['confidence']:.2f}x")


if __name__ == "__main__":
    main()
