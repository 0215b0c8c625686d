"""Nearest neighbours at full size: the near-duplicate search (exact copies by hash, then scikit-learn's
NearestNeighbors, k = 1, on the pixels in [0, 1]) and the latent outlier score (k = 10, in a 512-wide hidden layer)
on all 70,000 Fashion-MNIST images, with the seconds of each step and the process's peak memory. Neither builds an
N x N matrix: NearestNeighbors works through the distances in chunks (sklearn's working_memory, 1 GiB by default).
The hidden layer is that of the fast recipe's MLP at initialisation (the cost does not depend on the weights).

    python benchmarks/bench_nearest_neighbours.py --data_root ./data
"""
import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hardness.characterisation import latent_outlier_scores, nearest_copies  # noqa: E402
from hardness.cli import add_shared_arguments  # noqa: E402
from hardness.data import load_pixels  # noqa: E402
from neural_networks import memorisation_mlp  # noqa: E402


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20          # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shared_arguments(parser, "data_root", "dataset_name", "subset_size", data_root={"help": None},
                         dataset_name={"default": "FashionMNIST", "help": None},
                         subset_size={"type": int, "default": 70000, "help": None})
    args = parser.parse_args()
    torch.manual_seed(0)
    subset = load_pixels(args.dataset_name, args.data_root, args.subset_size, seed=0)
    pixels = (subset.images.float() / 255).flatten(1)                              # [N, 784]
    print(f"{len(pixels)} images of {args.dataset_name}, {pixels.shape[1]} pixels each; peak {peak_gib():.2f} GiB")
    start = time.perf_counter()
    partner, rms = nearest_copies(pixels.numpy())
    seconds = time.perf_counter() - start
    exact = int((rms == 0).sum())
    print(f"near duplicates (exact copies, then NearestNeighbors k=1 on pixels): {seconds:.1f} s; {exact} samples have "
          f"an exact copy, {int((rms <= 0.03).sum())} one within RMS 0.03; peak {peak_gib():.2f} GiB")
    network = memorisation_mlp((1, 28, 28), 10, 512, latent=2).eval()
    with torch.no_grad():
        latent = torch.cat([network(chunk.view(-1, 1, 28, 28))[1] for chunk in pixels.split(4096)])   # [N, 512]
    start = time.perf_counter()
    outlier = latent_outlier_scores(latent[None], k=10)
    print(f"latent outlier score (NearestNeighbors k=10, 512 dimensions): {time.perf_counter() - start:.1f} s; "
          f"median {outlier.median():.3f}; peak {peak_gib():.2f} GiB")


if __name__ == "__main__":
    main()
