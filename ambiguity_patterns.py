"""Patterns in ambiguity, all three steps: ambiguous samples, their clustering, and the prototypes.

    python ambiguity_patterns.py --config configs/ambiguity/mnist_7v1.yaml

The same as ambiguity_generate_embeddings.py, ambiguity_optimize_clustering.py and ambiguity_prototypes.py
one after another (see each for what it reads and writes).
"""
import argparse

import ambiguity_generate_embeddings
import ambiguity_optimize_clustering
import ambiguity_prototypes
from hardness.ambiguity import ambiguity_parser
from utils import run_script


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return ambiguity_parser(__doc__).parse_args(argv)


def main(args: argparse.Namespace) -> None:
    for step in (ambiguity_generate_embeddings, ambiguity_optimize_clustering, ambiguity_prototypes):
        step.main(args)


if __name__ == "__main__":
    run_script(main, parse_args)
