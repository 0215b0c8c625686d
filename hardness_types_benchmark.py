"""Which score finds which kind of hard sample? Injected hardness, every score, cleanlab's Datalab, one table.

One cell: the seeded subset of --dataset_name (MNIST or FashionMNIST) with int(--ratio * N) samples replaced by
one --injection type in pixel space, before the loader's standardisation (hardness/injection.py: the mislabelled
types uniform, pairs, asymmetric, adjacent, instance; near out of distribution gaussian_noise, blur, invert; far
out of distribution far_ood, the other dataset's images; atypical zoom, shift; exact_duplicate, near_duplicate;
ambiguous blend; or none, nothing injected, for the false alarms). The subset's own exact duplicates are found
first, never replaced and left out of the ground truth. The fast recipe (hardness_scores.py --recipe fast) scores it;
every score is measured against the injected samples (AUROC, AP, precision at k = the number injected), every
verdict (hardness/verdicts.py) against the injected type's family, and cleanlab's Datalab (label, outlier and
near-duplicate issues from the pinned 5-fold MLPClassifier probabilities, with the pixels and with our latent
vectors as features) is a row of the same table. Writes <results_dir>/hardness_types/<cell>.csv and the scores
as <cell>.npz with a settings JSON.

With --manifest it scores one folder:PATH as it is against the manifest scripts/export_noisy_folder.py wrote
(a `type` column per changed file), Datalab in the same run: the share of each type given each verdict and
flagged by each Datalab issue, in <folder>_manifest.csv, the scores and verdicts in <folder>_manifest.npz (.json
beside).
With --sweep it trains nothing and merges the cells of a sweep.py folder (configs/sweeps/hardness_types.yaml) into
hardness_types_sweep.csv and .md (AUROC, AP and precision at k per score and type with each score's seconds, the
verdicts' precision and recall, the verdicts recomputed under the current rules) and draws
<figures_dir>/hardness_types/auroc_by_type_<dataset>: AUROC per score per type.
"""
import argparse
import csv
import time
from pathlib import Path

import numpy as np
import torch

from hardness.data import load_pixels, standardised_dataset
from hardness.fast_recipe import FastRecipe, score_fast_run
from hardness.injection import FAMILIES, INJECTION_TYPES, check_injection
from hardness.noise_reference import reference_probabilities
from hardness.results import hardness_types_path, write_csv
from hardness.score_figures import plot_auroc_by_type
from hardness.seeds import Stage, stage_seed
from hardness.setting import ScoredSetting, load_setting_arrays, load_settings, save_setting
from hardness.types_benchmark import (CLEAN, MEASURES, datalab_rows, datalab_runs, injected_subset, manifest_rows,
                                      refresh_verdict_rows, score_rows, score_table, training_seconds_line,
                                      verdict_table)
from hardness.user_data import parse_source
from hardness.verdicts import VerdictRules, assign_verdicts
from utils import (RunDescription, UserInputError, add_common_arguments, add_shared_arguments, canonical_dataset_name,
                   combine_rows, load_dataset_from_args, positive_int, resolve_device, run_script, run_settings,
                   save_figure, unit_interval, write_atomically)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shared_arguments(parser, "dataset_name", "subset_size", dataset_name={
        "help": "MNIST or FashionMNIST, any letter case (far_ood takes the other's images); with --manifest a "
                "folder:PATH (default MNIST)"},
        subset_size={"default": 10000, "help": "samples kept from train+test after the seeded shuffle (default 10000)"})
    parser.add_argument("--injection", default="uniform",
                        help=f"the type injected: {', '.join(INJECTION_TYPES)}, or {CLEAN} (default uniform)")
    parser.add_argument("--ratio", type=unit_interval(False, False), default=0.1,
                        help="share of the samples, int(ratio * N), replaced, in (0, 1) (default 0.1)")
    parser.add_argument("--runs", type=positive_int, default=3,
                        help="networks of the fast recipe, trained as one batched computation (default 3)")
    parser.add_argument("--no_datalab", action="store_true", help="skip cleanlab's Datalab rows")
    parser.add_argument("--manifest", type=Path, default=None,
                        help="score --dataset_name folder:PATH as it is against this manifest (a CSV with sample_id "
                             "and type columns, as scripts/export_noisy_folder.py writes)")
    parser.add_argument("--sweep", type=Path, nargs="+", default=None,
                        help="merge the cells of these sweep.py folders instead of running one")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    if args.injection != CLEAN:
        try:
            check_injection(args.injection, args.ratio)
        except ValueError as error:
            parser.error(f"--injection {args.injection}: {error}")
    if args.manifest is None and args.sweep is None:
        args.dataset_name = canonical_dataset_name(args.dataset_name)
        if args.dataset_name not in ("MNIST", "FashionMNIST"):
            parser.error(f"--dataset_name must be MNIST or FashionMNIST (far_ood takes the other's images), got "
                         f"{args.dataset_name}; score your own folder with --manifest")
    elif args.manifest is not None and not parse_source(args.dataset_name):
        parser.error("--manifest scores a folder: give --dataset_name folder:PATH")
    return args


def fast_run(data: torch.Tensor, labels: torch.Tensor, num_classes: int, args: argparse.Namespace):
    seeds = [stage_seed(args.seed, Stage.SCORE, i) for i in range(args.runs)]
    return score_fast_run(FastRecipe(), seeds, data, labels, num_classes)


def run_cell(args: argparse.Namespace) -> None:
    device = resolve_device(args.device)
    subset = load_pixels(args.dataset_name, args.data_root, args.subset_size, args.seed)
    probabilities = None
    if args.injection == "instance":
        clean = standardised_dataset(subset, subset.images.float() / 255, subset.labels, torch.device("cpu"))
        probabilities = reference_probabilities(args.dataset_name, clean, args.data_root, args.results_dir, args.seed,
                                                "MLP")
    start = time.perf_counter()
    injected, evaluated = injected_subset(subset, args.injection, args.ratio, args.seed, args.data_root, probabilities)
    injection_seconds = time.perf_counter() - start
    dataset = standardised_dataset(subset, injected.images, injected.labels, device)
    run = fast_run(dataset.data, dataset.labels, dataset.num_classes, args)
    labels = dataset.labels.cpu().numpy()
    verdicts = assign_verdicts(run.scores, labels, run.predicted_labels, dataset.num_classes)
    positives = injected.injected.numpy()
    ratio = args.ratio if args.injection != CLEAN else 0.0
    rows = score_rows(run, verdicts, positives, evaluated, dataset.name, args.injection, ratio)
    if not args.no_datalab:
        rows += datalab_rows(datalab_runs(labels, dataset.data, run.latent, args.seed), positives, evaluated,
                             dataset.name, args.injection, ratio)
    name = f"{dataset.name}_{args.subset_size}_{args.injection}_{ratio:g}_seed{args.seed}"
    path = hardness_types_path(args.results_dir, "cell", name)
    csv_path, npz_path = path.with_name(f"{name}.csv"), path.with_name(f"{name}.npz")
    write_csv(rows, csv_path)
    setting = ScoredSetting(dataset, dataset.labels, positives, run)
    run.scores.update({"injected_type": np.asarray(injected.kind, dtype=str), "evaluated": evaluated,
                       "duplicate_of": injected.duplicate_of.numpy(), "verdict": verdicts.verdict})
    save_setting(setting, npz_path, {**run_settings(args, device), "injection_seconds": injection_seconds,
                                                     "verdict_rules": VerdictRules().settings()})
    for row in rows:
        if row.get("auroc") not in (None, ""):
            print(f"{row['score']:>34}: AUROC {row['auroc']:.3f}  AP {row['ap']:.3f}  P@k {row['precision_at_k']:.3f}")
        elif row.get("precision") not in (None, "") and row["score"].startswith("verdict"):
            print(f"{row['score']:>34}: precision {row['precision']:.3f}  recall {row['recall']:.3f}  "
                  f"rate {row['verdict_rate']:.3f}")
    print(f"saved {csv_path} and {npz_path}")


def read_manifest(path: Path, sample_ids: list[str]) -> list[str]:
    """[N] the type the manifest gives each sample ("" where none)."""
    if not path.is_file():
        raise UserInputError(f"--manifest {path}: no such file")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not {"sample_id", "type"} <= set(rows[0]):
        raise UserInputError(f"--manifest {path} needs sample_id and type columns")
    given = {row["sample_id"]: row["type"] for row in rows}
    kinds = [given.get(sample_id, "") for sample_id in sample_ids]
    if not any(kinds):
        raise UserInputError(f"--manifest {path} names none of the folder's samples")
    return kinds


def run_manifest(args: argparse.Namespace) -> None:
    device = resolve_device(args.device)
    start = time.perf_counter()
    dataset = load_dataset_from_args(args, device, run=RunDescription("MLP", args.runs))
    kinds = read_manifest(args.manifest, dataset.sample_ids)
    run = fast_run(dataset.data, dataset.labels, dataset.num_classes, args)
    labels = dataset.labels.cpu().numpy()
    verdicts = assign_verdicts(run.scores, labels, run.predicted_labels, dataset.num_classes)
    ours = time.perf_counter() - start
    datalab = {} if args.no_datalab else datalab_runs(labels, dataset.data, None, args.seed)
    rows = manifest_rows(np.asarray(kinds), verdicts.verdict, datalab)
    rows[-1]["our_seconds"] = ours
    path = hardness_types_path(args.results_dir, "cell", f"{dataset.name}_manifest.csv")
    write_csv(rows, path)
    run.scores.update({"injected_type": np.asarray(kinds, dtype=str), "verdict": verdicts.verdict,
                       "verdict_duplicate_of": verdicts.duplicate_of})
    save_setting(ScoredSetting(dataset, dataset.labels, np.asarray(kinds) != "", run), path.with_suffix(".npz"),
                 {**run_settings(args, device), "manifest": str(args.manifest), "our_seconds": ours,
                  "verdict_rules": VerdictRules().settings()})
    for row in rows:
        print(", ".join(f"{key} {value:.3f}" if isinstance(value, float) else f"{key} {value}"
                        for key, value in row.items()))
    print(f"saved {path} and {path.with_suffix('.npz')}")


def merge_sweep(args: argparse.Namespace) -> None:
    tables = sorted(table for sweep in args.sweep for table in sweep.glob("*/*/results/hardness_types/*.csv"))
    if not tables:
        raise UserInputError(f"no <stage>/<cell>/results/hardness_types/*.csv under {' '.join(map(str, args.sweep))}; "
                             "run the sweep first")
    rows = []
    for table in tables:
        with open(table, newline="") as handle:
            cell = [{key: value for key, value in row.items() if key != "family"} for row in csv.DictReader(handle)]
        scores = table.with_suffix(".npz")
        if scores.is_file():
            cell = refresh_verdict_rows(cell, load_setting_arrays(scores), len(load_settings(scores)["class_names"]))
        rows += cell
    combined = combine_rows(rows)
    for row in combined:
        row["family"] = FAMILIES.get(row["noise_type"], CLEAN)
    stem = hardness_types_path(args.results_dir, "cell", "hardness_types_sweep")             # no dot in the name
    write_csv(combined, stem.with_suffix(".csv"))
    text = [f"Mean over the cells of {' '.join(map(str, args.sweep))} ({len(tables)} tables)\n"]
    datasets = sorted({row["dataset"] for row in combined})
    ratios = sorted({float(row["noise_ratio"]) for row in combined} - {0.0}, reverse=True)
    for dataset in datasets:
        for ratio in ratios:
            for measure, title in MEASURES.items():
                text += [f"## {dataset}, {ratio:g} injected: {title}\n", score_table(combined, dataset, ratio, measure)]
            text += [training_seconds_line(combined, dataset, ratio),
                     f"## {dataset}, {ratio:g} injected: verdicts\n", verdict_table(combined, dataset, ratio)]
        figure = save_figure(plot_auroc_by_type(combined, dataset, max(ratios)),
                             hardness_types_path(args.figures_dir, "figure", dataset))
        print(f"figure {figure[0]}")
    write_atomically(stem.with_suffix(".md"), "\n".join(text).encode())
    print("\n".join(text))
    print(f"merged {len(tables)} tables into {stem}.csv and .md")


def main(args: argparse.Namespace) -> None:
    if args.sweep is not None:
        merge_sweep(args)
    elif args.manifest is not None:
        run_manifest(args)
    else:
        run_cell(args)


if __name__ == "__main__":
    run_script(main, parse_args)
