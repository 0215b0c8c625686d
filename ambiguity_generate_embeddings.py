"""Patterns in ambiguity, step 1: sample a GASTeN generator, keep what its classifier cannot tell apart.

    python ambiguity_generate_embeddings.py --config configs/ambiguity/mnist_7v1.yaml

Loads the step-2 generator of the config's GASTeN run, classifier, weight, step-1 and step-2 epochs;
samples n_samples images from seeded noise and keeps those with C(G(z)) in [0.5 - acd, 0.5 + acd]. Saves
their images, probabilities and classifier embeddings (and the pair's test embeddings) to
<results_dir>/ambiguity/<output>/embeddings.npz with its settings JSON, and prints how many were kept and the
Frechet distances (own features) of all samples and of the kept ones.
"""
import argparse

from hardness.ambiguity import ambiguity_parser, generate_embeddings, load_ambiguity_config
from utils import resolve_device, run_script, run_settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return ambiguity_parser(__doc__).parse_args(argv)


def main(args: argparse.Namespace) -> None:
    config = load_ambiguity_config(args.config, args.overrides, args.seed)
    device = resolve_device(args.device)
    found = generate_embeddings(config, args.results_dir, args.data_root, device, run_settings(args, device))
    print(f"{found['ambiguous']} of {config['n_samples']} generated samples have C in [{0.5 - config['acd']:.2f}, "
          f"{0.5 + config['acd']:.2f}] ({found['real_ambiguous']} of the pair's real test images do); FID (own "
          f"features): all samples {found['fid_all']:.2f}, ambiguous ones {found['fid_ambiguous']:.2f}")


if __name__ == "__main__":
    run_script(main, parse_args)
