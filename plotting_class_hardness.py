"""Class-hardness simulations side by side: per-class test loss and accuracy over training and the classes'
overlap matrices after the first, middle and last evaluation, one column per setting; and final feature overlap
against input overlap.

    python plotting_class_hardness.py --results Results/class_hardness/mnist_4v9 Results/class_hardness/mnist_0v1
    python plotting_class_hardness.py --results mnist_4v9 --results mnist_0v1

Each --results is a folder class_hardness_simulation.py wrote (or its output name under
<results_dir>/class_hardness/). Draws loss_and_overlap, accuracy_and_overlap and overlap_dynamic_vs_static
(PNG and PDF) to <figures_dir>/class_hardness/<name>/; the settings must share one step schedule.
"""
import argparse
from pathlib import Path

from hardness.class_hardness import load_simulation
from hardness.class_hardness_figures import draw_figures
from hardness.cli import UserInputError
from utils import add_output_arguments, class_hardness_path, run_script


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, nargs="+", action="extend", required=True,
                        help="results folders of the settings to draw, one column each (a path, or an output "
                             "name under <results_dir>/class_hardness/); repeat the flag or list several")
    parser.add_argument("--name", default=None,
                        help="subfolder of <figures_dir>/class_hardness/ for the figures (default: the settings' "
                             "names joined by _vs_)")
    add_output_arguments(parser)
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    folders = [path if path.exists() else class_hardness_path(args.results_dir, path) for path in args.results]
    repeated = sorted({folder.name for folder in folders if [f.name for f in folders].count(folder.name) > 1})
    if repeated:
        raise UserInputError(f"--results names {', '.join(repeated)} more than once; each setting is drawn once, "
                             "by its folder's name")
    settings = {folder.name: load_simulation(folder) for folder in folders}
    name = args.name or "_vs_".join(settings)
    figures = draw_figures(settings, class_hardness_path(args.figures_dir, name))
    for setting, runs in settings.items():
        final = sum(r["accuracy"][-1] for r in runs) / len(runs)
        print(f"{setting}: {len(runs)} run(s), final test accuracy {100 * final:.1f}%")
    print(f"saved {', '.join(str(f) for f in figures if f.suffix == '.png')} (+ .pdf)")


if __name__ == "__main__":
    run_script(main, parse_args)
