"""Patterns in ambiguity, step 2: cluster the ambiguous samples' embeddings, tuned by Optuna.

    python ambiguity_optimize_clustering.py --config configs/ambiguity/mnist_7v1.yaml

For every option of the config (umap_gmm, umap_hdbscan, tsne_..., pca_...), Optuna (seeded TPE, n_trials)
tunes the reduction and the clustering over the original's search spaces; each candidate is fitted on all
samples and scored by its silhouette in the reduced space (HDBSCAN's noise left out; over 30% noise is
rejected). Saves the best option's labels and reduced points to <results_dir>/ambiguity/<output>/clustering.npz.
"""
import argparse

from hardness.ambiguity import ambiguity_parser, load_ambiguity_config, optimize_clustering
from utils import run_script, run_settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return ambiguity_parser(__doc__, device=False).parse_args(argv)


def main(args: argparse.Namespace) -> None:
    config = load_ambiguity_config(args.config, args.overrides, args.seed)
    best = optimize_clustering(config, args.results_dir, run_settings(args))
    print("silhouette (reduced space) of each option's best candidate: "
          + ", ".join(f"{option} {score:.3f}" for option, score in best["scores"].items()))
    print(f"kept {best['option']}: {best['clusters']} clusters, {best['params']}")


if __name__ == "__main__":
    run_script(main, parse_args)
