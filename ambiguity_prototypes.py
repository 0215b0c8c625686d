"""Patterns in ambiguity, step 3: one prototype per cluster, the clustering's scores, and the figures.

    python ambiguity_prototypes.py --config configs/ambiguity/mnist_7v1.yaml

Prototypes are the clusters' medoids in the classifier's embedding space (prototype_space: reduced, as the
original, uses the reduced space). Prints the silhouette (reduced and embedding spaces), Calinski-Harabasz,
Davies-Bouldin, noise share, cluster sizes and the prototypes' mean pairwise cosine similarity; draws to
<figures_dir>/ambiguity/<output>/ each cluster's images, the prototypes with saliency and GradientSHAP maps
(baseline: a black image), a 2-D map (UMAP of the pair's test embeddings), and 5 random real test images
with C in [0.4, 0.6] as a baseline.
"""
import argparse

from hardness.ambiguity import ambiguity_parser, load_ambiguity_config, prototypes
from utils import resolve_device, run_script, run_settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return ambiguity_parser(__doc__).parse_args(argv)


def main(args: argparse.Namespace) -> None:
    config = load_ambiguity_config(args.config, args.overrides, args.seed)
    device = resolve_device(args.device)
    report = prototypes(config, args.results_dir, args.figures_dir, device, run_settings(args, device))
    for key, value in report.items():
        print(f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}")


if __name__ == "__main__":
    run_script(main, parse_args)
