"""The whole hardness_scores.py command on a user's folder, timed stage by stage (the folder's decoded cache
warmed first, as a second run finds it): loading, training and every score, the scores file, the figures, and
the ranking CSV with the report. Prints seconds per stage and in all.

    python scripts/export_noisy_folder.py --dataset_name FashionMNIST --subset_size 10000 --noise_ratio 0.1 \
        --noise_type asymmetric
    python benchmarks/bench_hardness_scores_folder.py --folder data/exports/FashionMNIST_10000_asymmetric_0.1
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hardness_scores  # noqa: E402
from hardness.cli import add_shared_arguments  # noqa: E402
from hardness.data import load_dataset_from_args  # noqa: E402
from hardness.device import device_name  # noqa: E402
from hardness.results import run_settings, scores_path  # noqa: E402
from hardness.setting import save_setting, score_setting, scoring_run, setting_name  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, required=True, help="the image folder (class sub-folders)")
    parser.add_argument("--recipe", choices=["fast", "paper"], default="fast", help="the recipe (default fast)")
    add_shared_arguments(parser, "results_dir", results_dir={
        "default": Path("Results/bench_folder"), "help": "where the command's files go (default Results/bench_folder)"})
    options = parser.parse_args()
    args = hardness_scores.parse_args(["--dataset_name", f"folder:{options.folder}", "--recipe", options.recipe,
                                       "--results_dir", str(options.results_dir), "--figures_dir",
                                       str(options.results_dir / "figures")])
    device = torch.device("cpu")
    load_dataset_from_args(args, device, run=scoring_run(args))                # warm the decoded cache
    stages: dict[str, float] = {}
    start = time.perf_counter()
    setting = score_setting(args.dataset_name, args.subset_size, args.noise_ratio, args, device)
    scored = time.perf_counter()
    training_and_scores = scored - start
    stages.update({f"  {name}": seconds for name, seconds in setting.run.seconds.items()})
    stages["loading and label flips"] = training_and_scores - sum(setting.run.seconds.values())
    path = scores_path(args.results_dir, "scores", setting_name(args.dataset_name, setting.dataset, args.subset_size,
                                                                args.noise_ratio, args.network, args.noise_type,
                                                                args.recipe))
    settings = {**run_settings(args, device), "recipe": setting.run.recipe}
    save_setting(setting, path, settings)
    stages["scores file"] = time.perf_counter() - scored
    scores = {**setting.run.scores, "flipped": setting.flipped, "labels": setting.labels.cpu().numpy(),
              "predicted_labels": setting.run.predicted_labels,
              "sample_ids": np.asarray(setting.dataset.sample_ids, dtype=str)}
    title = f"{setting.dataset.name}, {len(setting.labels)} samples, " + hardness_scores.what_ran(
        settings, scores["confidence"].shape[0])
    mark = time.perf_counter()
    hardness_scores.draw_figures(scores, scores["labels"], setting.dataset.class_names, title, None,
                                 scores_path(args.figures_dir, "figures", path.stem))
    stages["figures"] = time.perf_counter() - mark
    mark = time.perf_counter()
    hardness_scores.write_answer(scores, setting.dataset, setting.dataset.class_names, args.noise_ratio, title,
                                 settings, args.report_top, args.results_dir, path.stem)
    stages["ranking CSV and report"] = time.perf_counter() - mark
    total = time.perf_counter() - start
    print(f"{device_name(device)}; {options.folder}, {len(setting.labels)} images, recipe {options.recipe} "
          f"({setting.run.recipe})")
    for name, seconds in stages.items():
        print(f"{name:32s} {seconds:7.1f} s")
    print(f"{'whole command (cache warm)':32s} {total:7.1f} s")


if __name__ == "__main__":
    main()
