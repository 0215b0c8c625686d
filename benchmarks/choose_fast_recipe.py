"""How the fast recipe's defaults were chosen: candidates trained once per setting, judged on MNIST and digits only.

For every setting (dataset, noise type, seed) and every candidate network (MLP, MLP with random shifts, CNN),
--runs networks train for --cap epochs with no stopping rule while observers record every epoch's margin, loss and
EL2N of every sample and each class's inversion point. Every choice is then evaluated from those records, without
training again: each stopping rule and threshold (the epoch at which it would have fired), each consensus (a rank
aggregate of AUM and data-map confidence up to that epoch, and loss or EL2N at it), against the flipped labels.
Prints the mean AUROC, AP and precision at k of every (network, rule, consensus) over the settings, its worst
setting against the best candidate there, its mean stopping epoch and seconds, and writes every row to
<results_dir>/fast_recipe_choices/<dataset>.csv.

    python benchmarks/choose_fast_recipe.py --dataset_name npz:data/examples/digits.npz --subset_size 1797
    python benchmarks/choose_fast_recipe.py --dataset_name MNIST --cap 15 --other_seeds 1
"""
import argparse
import csv
import io
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hardness_scores  # noqa: E402
from hardness.cli import add_shared_arguments  # noqa: E402
from hardness.dynamics import DynamicsRecorder  # noqa: E402
from hardness.fast_recipe import FastRecipe, train_fast  # noqa: E402
from hardness.identifiers import StragglerTracker  # noqa: E402
from hardness.mislabel import detection_scores  # noqa: E402
from hardness.ranking import rank_aggregate  # noqa: E402
from hardness.results import write_atomically  # noqa: E402
from hardness.seeds import Stage, stage_seed  # noqa: E402
from hardness.setting import noisy_subset  # noqa: E402
from hardness.stopping import INVERSION_FIRST_CHECK, loss_plateau_epoch, rank_stability_epoch  # noqa: E402

CANDIDATES = {"MLP": ("MLP", "off"), "MLP+shifts": ("MLP", "on"), "CNN": ("CNN", "off")}
RULES = {**{f"loss_plateau {t:g}": ("loss_plateau", t) for t in (0.02, 0.05, 0.1, 0.2)},
         **{f"rank_stability {t:g}": ("rank_stability", t) for t in (0.95, 0.98, 0.99)},
         "inversion": ("inversion", None), **{f"epoch {e}": ("fixed", e) for e in (3, 5, 8, 12)}}
CONSENSUS = {"aum+data_map+loss": ("aum", "data_map", "loss"), "aum+data_map": ("aum", "data_map"),
             "aum+data_map+el2n": ("aum", "data_map", "el2n"), "aum": ("aum",), "loss": ("loss",), "el2n": ("el2n",)}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shared_arguments(parser, "dataset_name", dataset_name={"nargs": "+", "default": ["MNIST"],
                                                               "help": "datasets (default MNIST)"})
    parser.add_argument("--noise_type", nargs="+", default=["uniform", "pairs", "asymmetric", "instance"],
                        help="noise types, each a setting (default uniform pairs asymmetric instance)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES),
                        help="networks tried (default all)")
    parser.add_argument("--other_seeds", type=int, default=3,
                        help="the first this many seeds train the candidates other than the plain MLP (default 3)")
    parser.add_argument("--noise_ratio", type=float, default=0.1, help="share flipped (default 0.1)")
    add_shared_arguments(parser, "subset_size", subset_size={"type": int, "default": 10000,
                                                             "help": "samples (default 10000)"})
    parser.add_argument("--runs", type=int, default=3, help="networks per candidate (default 3)")
    parser.add_argument("--cap", type=int, default=20, help="epochs recorded (default 20)")
    add_shared_arguments(parser, "results_dir", results_dir={"help": "where the rows go"})
    return parser.parse_args()


def rule_epoch(rule: str, parameter: float | None, mean_losses: list[float], mean_margins: torch.Tensor,
               inverted_at: torch.Tensor) -> int:
    """The 0-based epoch scored under a rule (the last recorded where it never fires)."""
    last = len(mean_losses) - 1
    if rule == "fixed":
        return min(int(parameter) - 1, last)
    if rule == "loss_plateau":
        fired = loss_plateau_epoch(mean_losses, parameter)
    elif rule == "rank_stability":
        fired = rank_stability_epoch(mean_margins, parameter)
    else:
        fired = int(inverted_at.max()) if (inverted_at >= 0).all() else None
    return last if fired is None else fired


def evaluate(records: dict[str, np.ndarray], flipped: np.ndarray, epoch: int) -> dict[str, dict[str, float]]:
    """Every consensus's detection scores at `epoch` (0-based) from the recorded trajectories [runs, E, N]."""
    margin, loss, error = records["margin"], records["loss"], records["el2n"]
    scores = {"aum": margin[:, :epoch + 1].mean(1), "data_map_confidence": np.exp(-loss[:, :epoch + 1]).mean(1),
              "loss": loss[:, epoch], "el2n": error[:, epoch]}
    return {name: detection_scores(rank_aggregate(scores, members), flipped) for name, members in CONSENSUS.items()}


def one_setting(dataset_name: str, noise_type: str, seed: int, options: argparse.Namespace) -> list[dict]:
    args = hardness_scores.parse_args(["--dataset_name", dataset_name, "--subset_size", str(options.subset_size),
                                       "--noise_ratio", str(options.noise_ratio), "--noise_type", noise_type,
                                       "--seed", str(seed), "--recipe", "fast", "--device", "cpu",
                                       "--results_dir", str(options.results_dir)])
    dataset, labels, flipped, _ = noisy_subset(dataset_name, options.subset_size, options.noise_ratio, args,
                                               torch.device("cpu"))
    flipped, rows = flipped.numpy(), []
    seeds = [stage_seed(seed, Stage.SCORE, i) for i in range(options.runs)]
    for candidate in options.candidates:
        network, augment = CANDIDATES[candidate]
        if (network == "CNN" and dataset.is_table) or (candidate != "MLP" and options.seeds.index(seed) >= options.other_seeds):
            continue
        tracker = StragglerTracker(options.runs, labels, dataset.num_classes, start=INVERSION_FIRST_CHECK, interval=1)
        dynamics = DynamicsRecorder(dataset.data, labels, dataset.num_classes, options.runs, range(options.cap), None,
                                    range(options.cap), grand=False)
        start = time.perf_counter()
        train_fast(FastRecipe(network=network, augment=augment), seeds, dataset.data, labels, dataset.num_classes,
                   options.cap, [tracker, dynamics], progress=False)
        epoch_seconds = (time.perf_counter() - start) / options.cap
        recorded = dynamics.scores()
        records = {name: recorded[f"{name}_trajectory"].double().numpy() for name in ("margin", "loss", "el2n")}
        mean_losses = records["loss"].mean((0, 2)).tolist()
        mean_margins = torch.from_numpy(records["margin"].mean(0))
        evaluations = [evaluate(records, flipped, e) for e in range(options.cap)]
        best = {name: max(at[name]["auroc"] for at in evaluations) for name in CONSENSUS}
        for rule_name, (rule, parameter) in RULES.items():
            epoch = rule_epoch(rule, parameter, mean_losses, mean_margins, tracker.inverted_at)
            for consensus, result in evaluations[epoch].items():
                rows.append({"dataset": dataset.name, "noise_type": noise_type, "seed": seed, "candidate": candidate,
                             "rule": rule_name, "consensus": consensus, "stop_epoch": epoch + 1,
                             "seconds": epoch_seconds * (epoch + 1), "best_epoch_auroc": best[consensus],
                             **{key: result[key] for key in ("auroc", "ap", "precision_at_k")}})
        print(f"{dataset.name} {noise_type} seed {seed} {candidate}: {epoch_seconds:.2f} s per epoch", flush=True)
    return rows


def summary(rows: list[dict]) -> str:
    """Per (candidate, rule, consensus): mean AUROC / AP / P@k over the settings, the worst AUROC gap to the best
    candidate of the same setting, mean stop epoch and seconds."""
    settings = {(r["dataset"], r["noise_type"], r["seed"]) for r in rows}
    best = {s: max(r["auroc"] for r in rows if (r["dataset"], r["noise_type"], r["seed"]) == s) for s in settings}
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["candidate"], row["rule"], row["consensus"]), []).append(row)
    lines = ["| candidate | rule | consensus | settings | AUROC | AP | P@k | worst gap to best | stop epoch | seconds |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    ranked = sorted(groups.items(), key=lambda item: -np.mean([r["auroc"] for r in item[1]]))
    for (candidate, rule, consensus), members in ranked:
        gap = max(best[(r["dataset"], r["noise_type"], r["seed"])] - r["auroc"] for r in members)
        lines.append(f"| {candidate} | {rule} | {consensus} | {len(members)} | "
                     + " | ".join(f"{np.mean([r[k] for r in members]):.4f}" for k in ("auroc", "ap", "precision_at_k"))
                     + f" | {gap:.4f} | {np.mean([r['stop_epoch'] for r in members]):.1f} | "
                     f"{np.mean([r['seconds'] for r in members]):.1f} |")
    return "\n".join(lines)


def main() -> None:
    options = parse_args()
    for dataset_name in options.dataset_name:
        rows = [row for noise_type in options.noise_type for seed in options.seeds
                for row in one_setting(dataset_name, noise_type, seed, options)]
        text = io.StringIO()
        writer = csv.DictWriter(text, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        path = options.results_dir / "fast_recipe_choices" / f"{rows[0]['dataset']}.csv"
        write_atomically(path, text.getvalue().encode())
        print(f"{rows[0]['dataset']}: {len(rows)} rows in {path}")
        print(summary(rows))


if __name__ == "__main__":
    main()
