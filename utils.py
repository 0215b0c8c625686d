"""The one import of the experiment scripts: a short, explicit list of what they use.

The mechanics live in the package `hardness/`, one module per subject:

| module                  | subject                                                                        |
| ----------------------- | ------------------------------------------------------------------------------ |
| `hardness/cli.py`       | typed flag parsers, the shared flags, `run_script` (user errors as one line)   |
| `hardness/device.py`    | choosing the device, timing and peak memory, the CPU allocator setting         |
| `hardness/data.py`      | fetching datasets; load_source, every source's samples; the standardised subset |
| `hardness/user_data.py` | the user's own data: folder:, npz:, csv: sources, the folder cache, checks     |
| `hardness/memory.py`    | the memory estimate of a run (RunDescription) against the free memory         |
| `hardness/splits.py`    | random splits: VoG's training and held-out parts, the benchmark's splits       |
| `hardness/radii.py`     | class-manifold radii                                                           |
| `hardness/engine.py`    | batched full-batch training with observers, ResNet-18 training, predictions    |
| `hardness/identifiers.py` | stragglers, confidence, energy, vog, the dynamics strategies; budgets       |
| `hardness/metrics.py`   | accuracy, precision, recall, F1 of many networks at once; evaluation           |
| `hardness/results.py`   | result paths, atomic pickles and .npz files with settings, figures             |
| `hardness/vog.py`       | Variance of Gradients: checkpoints, batched input gradients, the score, stages |
| `hardness/dynamics.py`  | training-dynamics scores (AUM, forgetting, EL2N, GraNd, data maps, loss)       |
| `hardness/scoring.py`   | every score from one batched run, cleanlab's baseline, AUM's threshold verdict |
| `hardness/setting.py`   | the scoring flags; one subset with flipped labels scored, saved and loaded     |
| `hardness/mislabel.py`  | the mislabel benchmark: detection metrics, rank correlations, its tables       |
| `hardness/score_figures.py` | the data map, correlations, top-k class shares, AUROC against the epoch    |
| `hardness/ranking.py`   | the ranking CSV: the consensus rank, every score's rank, majority verdicts     |
| `hardness/report.py`    | the self-contained HTML report of the suspicious samples (Jinja2 template)    |
| `hardness/sweep/`       | grids of script runs: cells, manifest, resume, local pool and SLURM launchers  |
"""
from hardness.cli import (TORCHVISION_ROOT, UserInputError, add_benchmark_dataset_arguments, add_common_arguments,
                          add_dataset_arguments, add_device_argument, add_output_arguments, add_shared_arguments,
                          add_results_arguments, budget_share_or_count, non_negative_int, positive_float, positive_int, run_script,
                          unit_interval)
from hardness.data import canonical_dataset_name, dataset_label, load_benchmark_dataset, load_dataset, load_dataset_from_args
from hardness.memory import RunDescription
from hardness.device import keep_freed_memory_in_heap, resolve_device
from hardness.engine import (RadiiRecorder, input_channels, simple_nn_size, train_and_predict, train_full_batch,
                             train_networks)
from hardness.identifiers import (INVERSION_INTERVAL, INVERSION_START, STRATEGIES, StragglerTracker, class_counts,
                                  identify_hard_samples)
from hardness.mislabel import (benchmark_rows, combine_rows, detection_scores, markdown_table, rank_correlations,
                               summary_table, trajectory_auroc)
from hardness.score_figures import plot_correlations, plot_data_map, plot_top_k_classes, plot_trajectory_auroc
from hardness.scoring import RANKINGS, SETS, hardness_ranking
from hardness.setting import (add_scoring_arguments, check_scoring_arguments, load_setting_arrays, load_settings,
                              save_setting, score_setting)
from hardness.noise import NOISE_TYPES, flip_labels
from hardness.splits import benchmark_splits, random_split
from hardness.seeds import (ClassHardnessStage, MemorisationStage, NetworkStage, Stage, VogStage, child_seeds, derived_seed,
                            stage_generator, stage_seed)
from hardness.metrics import METRICS, confusion_matrices, train_and_evaluate
from hardness.radii import mean_inversion_epochs
from hardness.results import (class_grid, class_hardness_path, distinct, existing_f1_results, gasten_path,
                              hard_samples_path, identification_key, inversion_path, load_pickle, memorisation_path,
                              results_folders, run_settings, save_figure, save_npz_with_settings, save_pickle,
                              scores_name, scores_path, sweep_path, vog_path, write_atomically)
from hardness.sweep import load_grid, render_flags, run_local, status_table, submit_slurm, wait_for_slurm
from hardness.vog import (CALIBRATIONS, STAGES, CheckpointRecorder, calibrate, checkpoint_epochs, checkpoint_predictions,
                          input_gradients, stage_windows, vog_from_gradients, vog_scores)

__all__ = [
    "TORCHVISION_ROOT", "UserInputError", "add_benchmark_dataset_arguments", "add_common_arguments", "add_dataset_arguments",
    "add_device_argument", "add_output_arguments", "add_results_arguments", "add_shared_arguments",
    "budget_share_or_count", "non_negative_int", "positive_float", "positive_int", "run_script", "unit_interval",
    "RunDescription", "benchmark_splits", "canonical_dataset_name", "dataset_label", "random_split", "load_benchmark_dataset", "load_dataset", "load_dataset_from_args",
    "keep_freed_memory_in_heap", "resolve_device",
    "RadiiRecorder", "input_channels", "simple_nn_size", "train_and_predict", "train_full_batch", "train_networks",
    "INVERSION_INTERVAL", "INVERSION_START", "STRATEGIES", "StragglerTracker", "class_counts",
    "identify_hard_samples",
    "NOISE_TYPES", "flip_labels",
    "ClassHardnessStage", "MemorisationStage", "NetworkStage", "Stage", "VogStage", "child_seeds", "derived_seed",
    "stage_generator", "stage_seed",
    "METRICS", "confusion_matrices", "train_and_evaluate",
    "RANKINGS", "SETS", "add_scoring_arguments", "benchmark_rows", "check_scoring_arguments", "combine_rows", "detection_scores",
    "hardness_ranking", "load_setting_arrays", "load_settings", "markdown_table", "plot_correlations", "plot_data_map",
    "summary_table",
    "plot_top_k_classes", "plot_trajectory_auroc", "rank_correlations", "save_setting", "score_setting",
    "trajectory_auroc",
    "mean_inversion_epochs",
    "class_grid", "class_hardness_path", "distinct", "existing_f1_results", "gasten_path", "hard_samples_path",
    "identification_key", "inversion_path", "load_pickle", "memorisation_path", "results_folders", "run_settings",
    "save_figure", "save_npz_with_settings", "save_pickle", "scores_name", "scores_path", "sweep_path", "vog_path",
    "write_atomically",
    "load_grid", "render_flags", "run_local", "status_table", "submit_slurm", "wait_for_slurm",
    "CALIBRATIONS", "STAGES", "CheckpointRecorder", "calibrate", "checkpoint_epochs", "checkpoint_predictions",
    "input_gradients", "stage_windows", "vog_from_gradients", "vog_scores",
]
