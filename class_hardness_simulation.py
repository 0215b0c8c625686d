"""Class-hardness simulations: train on a config's classes and record, at log-spaced optimizer steps, how
hard every class is (test and training loss and accuracy per class) beside how much the classes' features
overlap (the C x C cosine similarity of their mean last-hidden features) and their inputs overlap.

    python class_hardness_simulation.py --config configs/class_hardness/gaussian_example.yaml

The YAML file's keys are the defaults (docs/class_hardness.md lists every field); --seed sets training.seed and
--set section.key=value overrides any field. dataset.name is a torchvision dataset, gaussian, or your own data
(folder:PATH, npz:PATH, csv:PATH; docs/your_data.md), split into training and test samples by a seeded,
stratified dataset.test_fraction (default 0.2). Saves <results_dir>/class_hardness/<output>/run_<i>/metrics.npz
with metrics.json (settings) and config.yaml (the resolved config) beside it, and samples.npz (the class names
and both splits' sample ids), refusing to replace an existing folder unless --overwrite, and draws the
setting's figures to <figures_dir>/class_hardness/<output>/.
"""
import argparse
from pathlib import Path

from hardness.class_hardness import save_simulation, simulate
from hardness.class_hardness_config import load_config
from hardness.class_hardness_data import load_simulation_data
from hardness.class_hardness_figures import draw_figures
from utils import (add_device_argument, add_output_arguments, add_shared_arguments, class_hardness_path, resolve_device,
                   run_script, run_settings)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True,
                        help="YAML file of the simulation (see configs/class_hardness/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config field, e.g. --set training.lr=0.01 (repeatable; values read as YAML)")
    add_shared_arguments(parser, "seed", seed={
        "default": None, "help": "training.seed: every run's initialisation and shuffling derive from it (default: "
                                 "the config's)"})
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing results folder of the same output name")
    add_shared_arguments(parser, "data_root", data_root={
        "help": "where torchvision datasets are, or are fetched to, and where image folders' decodings are cached "
                "(default ./data)"})
    add_device_argument(parser)
    add_output_arguments(parser)
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    config = load_config(args.config, args.overrides, args.seed)
    device = resolve_device(args.device)
    data = load_simulation_data(config["dataset"], args.data_root, device)
    results, steps = simulate(config, data)
    folder = class_hardness_path(args.results_dir, config["output"])
    save_simulation(results, config, run_settings(args, device), folder, args.overwrite, data.samples())
    figures = draw_figures({config["output"]: results}, class_hardness_path(args.figures_dir, config["output"]))

    final_accuracy = [r["accuracy_per_class"][-1] for r in results]
    print(f"{config['output']}: {len(results)} run(s), {data.num_classes} classes, {len(data.train_y)} training "
          f"and {len(data.test_y)} test samples, evaluated at {len(steps)} steps up to {steps[-1]}")
    print("final test accuracy per class (mean over runs): "
          + ", ".join(f"{name}: {100 * sum(a[c] for a in final_accuracy) / len(results):.1f}%"
                      for c, name in enumerate(data.class_names)))
    print(f"saved {folder}/run_*/metrics.npz, {folder}/samples.npz and {figures[0].parent}/ (PNG and PDF)")


if __name__ == "__main__":
    run_script(main, parse_args)
