"""The Sections 4-5 scripts end to end on a tiny synthetic MNIST, and their command-line errors."""
import importlib
import pickle
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image

import utils
from conftest import REPO, run_in_process, synthetic_blobs, write_mnist_layout

VERIFY = REPO / "verifying_importance_of_stragglers.py"
PLOT = REPO / "plotting_results.py"
DISTRIBUTION = REPO / "hard_sample_distribution_over_classes.py"
CLASS_LEVEL = REPO / "class_level_accuracies.py"
OVERLAP = REPO / "compute_overlap.py"
SUBSET, RUNS, NOISE = 400, 2, 0.1
COMMON = ["--subset_size", str(SUBSET), "--runs", str(RUNS), "--train_ratios", "0.9", "0.5",
          "--remaining_train_ratios", "0.0", "0.5", "1.0", "--epochs", "100", "--noise_ratio", str(NOISE),
          "--seed", "1", "--device", "cpu"]


def run(script: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script), *args], cwd=cwd, capture_output=True, text=True, timeout=300)


# Most runs below are run_in_process (the same run_script(main, parse_args) without a new interpreter's seconds of
# imports); each script keeps a real subprocess whose exit status and stderr are checked: VERIFY in
# test_absent_stragglers_need_a_budget, PLOT, DISTRIBUTION and OVERLAP in test_missing_inputs_are_one_line_errors,
# CLASS_LEVEL in test_class_level_accuracies_overfit_without_hard_counts.


def script_module(script: Path) -> ModuleType:
    """Import a top-level script as a module (its main does not run)."""
    return importlib.import_module(script.stem)


def load(path: Path) -> dict:
    with open(path, "rb") as handle:
        return pickle.load(handle)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A working folder with a tiny MNIST whose classes invert within 100 epochs, and five benchmark runs:
    stragglers, confidence (class level) and vog reducing easy samples, stragglers and energy reducing hard ones;
    and, in folders of their own, the straggler search on the clean labels (no noise) and with the original's
    snapshot bug."""
    folder = tmp_path_factory.mktemp("work")
    write_mnist_layout(folder / "data", "MNIST", train=300, test=100, make=synthetic_blobs)
    for extra in (["--strategy", "stragglers"], ["--strategy", "confidence", "--level", "class"], ["--strategy", "vog"],
                  ["--strategy", "stragglers", "--reduce_hard"], ["--strategy", "energy", "--reduce_hard"],
                  ["--strategy", "stragglers", "--noise_ratio", "0", "--remaining_train_ratios", "1.0",
                   "--results_dir", "Clean", "--figures_dir", "CleanFigures"],
                  ["--strategy", "stragglers", "--snapshot", "last", "--remaining_train_ratios", "1.0"]):
        done = run_in_process(VERIFY, *COMMON, *extra, cwd=folder)
        assert done.returncode == 0, done.stderr
    return folder


def results(workdir: Path, strategy: str, reduce_hard: bool, kind: str) -> dict:
    return load(workdir / "Results/F1_results" / f"MNIST_{strategy}_{reduce_hard}_{SUBSET}_{kind}.pkl")


def per_class_counts(indices: dict) -> np.ndarray:
    return np.array([[len(hard) for hard in found["hard_indices"]] for found in indices["identifications"]])


def test_benchmark_writes_metrics_indices_and_figure(workdir):
    metrics = results(workdir, "stragglers", False, "metrics")
    assert metrics["settings"]["strategy"] == "stragglers" and metrics["settings"]["noise_ratio"] == NOISE
    assert set(metrics["metrics"]) == {0.9, 0.5}
    for by_set in metrics["metrics"].values():
        assert set(by_set) == {"full", "hard", "easy"}
        for by_remaining in by_set.values():
            assert set(by_remaining) == {0.0, 0.5, 1.0}
            for by_metric in by_remaining.values():
                assert set(by_metric) == {"accuracy", "precision", "recall", "F1"}
                for values in by_metric.values():
                    assert len(values) == RUNS * RUNS and all(0 <= v <= 1 for v in values)
    full = metrics["metrics"][0.9]["full"]
    assert np.mean(full[1.0]["accuracy"]) > np.mean(full[0.0]["accuracy"])  # easy samples help

    indices = results(workdir, "stragglers", False, "indices")
    assert len(indices["identifications"]) == 2 * RUNS
    subset, labels = indices["subset_indices"], indices["subset_labels"]
    label_of = dict(zip(subset.tolist(), labels.tolist()))
    flipped = indices["flipped_indices"]
    assert len(flipped) == 40 and set(flipped) <= set(subset.tolist())  # int(0.1 * 400)
    for found in indices["identifications"]:
        assert len(found["hard_indices"]) == 10
        for c, hard in enumerate(found["hard_indices"]):
            assert all(label_of[i] == c for i in hard.tolist())
        share = np.isin(flipped, np.concatenate(found["hard_indices"])).mean()
        assert found["caught_flipped_share"] == pytest.approx(share)
        # train ratio split of hard and easy samples (floors), then 0 / half / all of the training easy samples
        hard_total = sum(len(h) for h in found["hard_indices"])
        hard_train = int(found["train_ratio"] * hard_total)
        easy_train = int(found["train_ratio"] * (SUBSET - hard_total))
        assert found["training_samples"] == [hard_train + int(r * easy_train) for r in (0.0, 0.5, 1.0)]
        assert found["inversion_epochs"].shape == (10,) and (found["inversion_epochs"] >= 25).all()
    assert Image.open(workdir / "Figures/straggler_ratio_vs_generalisation" /
                      f"MNIST_stragglers_False_{SUBSET}_accuracy.png").size[0] > 800
    assert not list((workdir / "Results").rglob("*.tmp")) and not list((workdir / "Figures").rglob("*.tmp"))


def test_identifications_are_shared_and_budgets_come_from_clean_stragglers(workdir):
    """Stragglers are searched on the noisy labels; confidence and energy budgets are the stragglers of the
    same search on the clean labels (the run without noise) plus int(0.1 * 400 / 10) = 4 per class."""
    noisy_stragglers = per_class_counts(results(workdir, "stragglers", False, "indices"))
    assert (per_class_counts(results(workdir, "stragglers", True, "indices")) == noisy_stragglers).all()
    clean = load(workdir / "Clean/F1_results" / f"MNIST_stragglers_False_{SUBSET}_indices.pkl")
    clean_stragglers = per_class_counts(clean)
    assert not (clean_stragglers == noisy_stragglers).all()  # the noise changes what the search finds
    sizes = np.bincount(results(workdir, "stragglers", False, "indices")["subset_labels"], minlength=10)
    confidence = results(workdir, "confidence", False, "indices")
    assert (per_class_counts(confidence) == np.minimum(clean_stragglers + 4, sizes)).all()      # --level class
    assert all((a["inversion_epochs"] == b["inversion_epochs"]).all()
               for a, b in zip(confidence["identifications"], clean["identifications"]))
    for strategy, reduce_hard in (("energy", True), ("vog", False)):                            # --level dataset: the total
        found = per_class_counts(results(workdir, strategy, reduce_hard, "indices"))
        assert (found.sum(1) == np.minimum(clean_stragglers + 4, sizes).sum(1)).all()


def test_snapshot_last_end_to_end(workdir):
    """--snapshot last writes its own files; the same networks judge every class by the last inversion, so
    the class that inverted last has the same stragglers as with copies, and no other class need."""
    copy = results(workdir, "stragglers", False, "indices")
    last = load(workdir / "Results/F1_results" / f"MNIST_stragglers_False_{SUBSET}_indices_snapshot_last.pkl")
    assert last["settings"]["snapshot"] == "last" and copy["settings"]["snapshot"] == "copy"
    assert (workdir / "Results/F1_results" / f"MNIST_stragglers_False_{SUBSET}_metrics_snapshot_last.pkl").is_file()
    differing = 0
    for by_copy, by_last in zip(copy["identifications"], last["identifications"]):
        assert (by_copy["inversion_epochs"] == by_last["inversion_epochs"]).all()
        for c, epoch in enumerate(by_copy["inversion_epochs"]):
            same = np.array_equal(by_copy["hard_indices"][c], by_last["hard_indices"][c])
            assert same or epoch < by_copy["inversion_epochs"].max()
            differing += not same
    assert differing > 0


def test_figure7_distribution_overlap_and_class_level_scripts(workdir):
    plotted = run_in_process(PLOT, "--subset_size", str(SUBSET), cwd=workdir)
    assert plotted.returncode == 0, plotted.stderr
    assert f"MNIST_energy_False_{SUBSET}_metrics.pkl" in plotted.stderr  # says which file it did not find
    for name in ("a_easy_accuracy", "b_easy_recall", "c_easy_precision", "d_easy_F1",
                 "e_hard_accuracy", "f_hard_recall", "g_hard_precision", "h_hard_F1"):
        assert Image.open(workdir / "Figures/Figure7" / f"{name}.png").size[0] > 500
        assert (workdir / "Figures/Figure7" / f"{name}.pdf").read_bytes().startswith(b"%PDF")

    distribution = run_in_process(DISTRIBUTION, "--strategy", "stragglers", "--subset_size", str(SUBSET), cwd=workdir)
    assert distribution.returncode == 0, distribution.stderr
    counts = load(workdir / "Results/Hard_sample_distribution" / f"MNIST_stragglers_{SUBSET}_class_counts.pkl")
    expected = per_class_counts(results(workdir, "stragglers", False, "indices"))  # the True file: the same ones
    assert counts["counts"].shape == (2 * RUNS, 10) and (counts["counts"] == expected).all()
    assert f"n = {2 * RUNS}" in distribution.stdout
    np.testing.assert_allclose(counts["mean"], expected.mean(0))
    np.testing.assert_allclose(counts["std"], expected.std(0))
    assert f"{expected.mean(0)[3]:.1f} +- {expected.std(0)[3]:.1f}" in distribution.stdout
    assert (workdir / "Figures/Figure8/hard_sample_distribution_MNIST_stragglers.png").is_file()

    overlap = run_in_process(OVERLAP, "--subset_size", str(SUBSET), cwd=workdir)
    assert overlap.returncode == 0, overlap.stderr
    table = load(workdir / "Results/F1_results" / f"MNIST_{SUBSET}_overlap.pkl")["table"]
    assert set(table) == {("stragglers", "confidence"), ("confidence", "stragglers"),
                          ("stragglers", "energy"), ("energy", "stragglers"),
                          ("stragglers", "vog"), ("vog", "stragglers"), ("confidence", "vog"), ("vog", "confidence")}
    first = [np.concatenate(f["hard_indices"]) for f in results(workdir, "stragglers", False, "indices")["identifications"]]
    second = [np.concatenate(f["hard_indices"]) for f in results(workdir, "confidence", False, "indices")["identifications"]]
    shares = [np.isin(a, b).mean() for a, b in zip(first, second)]
    assert table[("stragglers", "confidence")][:2] == pytest.approx((np.mean(shares), np.std(shares)))

    class_level = run_in_process(CLASS_LEVEL, "--subset_size", str(SUBSET), "--runs", "3", "--epochs", "60", "--device", "cpu",
                      "--hard_counts", f"Results/Hard_sample_distribution/MNIST_stragglers_{SUBSET}_class_counts.pkl",
                      cwd=workdir)
    assert class_level.returncode == 0, class_level.stderr
    saved = load(workdir / "Results/Class_level_accuracies" / f"MNIST_{SUBSET}.pkl")
    assert saved["per_class_accuracy"].shape == (3, 10)
    error = 1 - saved["per_class_accuracy"].mean(0)
    assert saved["pearson"] == pytest.approx(np.corrcoef(counts["mean"], error)[0, 1])
    assert "Pearson correlation" in class_level.stdout
    assert (workdir / "Figures/Figure8" / f"class_level_error_MNIST_{SUBSET}.png").is_file()


def test_readers_take_a_sweep_folder(workdir, tmp_path):
    """Each results pickle in a cell folder of its own, as sweep.py lays them out: the overlap table read with
    --sweep equals the one read from the single results folder."""
    for pickle_path in (workdir / "Results/F1_results").glob(f"MNIST_*_{SUBSET}_*.pkl"):
        cell = tmp_path / "sweep/benchmark" / pickle_path.stem / "results/F1_results"
        cell.mkdir(parents=True)
        (cell / pickle_path.name).write_bytes(pickle_path.read_bytes())
    overlap = run_in_process(OVERLAP, "--subset_size", str(SUBSET), "--sweep", str(tmp_path / "sweep"),
                             "--results_dir", str(tmp_path / "out"), cwd=workdir)
    assert overlap.returncode == 0, overlap.stderr
    direct = run_in_process(OVERLAP, "--subset_size", str(SUBSET), "--results_dir", "Results", cwd=workdir)
    assert direct.returncode == 0, direct.stderr
    swept = load(tmp_path / "out/F1_results" / f"MNIST_{SUBSET}_overlap.pkl")["table"]
    assert swept == load(workdir / "Results/F1_results" / f"MNIST_{SUBSET}_overlap.pkl")["table"]
    missing = run_in_process(OVERLAP, "--sweep", str(tmp_path / "nothing"), cwd=workdir)
    assert missing.returncode == 2 and "holds no sweep cells" in missing.stderr


def test_class_level_split_is_disjoint_and_covers_the_subset():
    train, test_rows = script_module(CLASS_LEVEL).train_and_test_rows(70, overfit=False)
    assert train.tolist() == [True] * 60 + [False] * 10 and test_rows.tolist() == list(range(60, 70))  # 6/7 of 70
    assert not train[test_rows].any()
    train, test_rows = script_module(CLASS_LEVEL).train_and_test_rows(70, overfit=True)
    assert train.all() and test_rows.tolist() == list(range(70))


def test_distinct_identifications_count_once():
    first = {"train_ratio": 0.9, "run": 0, "hard_indices": [np.array([1, 2]), np.array([5])]}
    same = {"train_ratio": 0.9, "run": 0, "hard_indices": [np.array([1, 2]), np.array([5])], "other": 1}
    moved = {"train_ratio": 0.9, "run": 0, "hard_indices": [np.array([1]), np.array([2, 5])]}  # same union
    later = {"train_ratio": 0.9, "run": 1, "hard_indices": [np.array([1, 2]), np.array([5])]}
    kept = utils.distinct([first, same, moved, later, first], utils.identification_key)
    assert kept == [first, moved, later]


def test_class_level_accuracies_overfit_without_hard_counts(tmp_path):
    write_mnist_layout(tmp_path / "data", "MNIST", train=60, test=10, make=synthetic_blobs)
    done = run(CLASS_LEVEL, "--subset_size", "70", "--runs", "2", "--epochs", "30", "--overfit", "--device", "cpu",
               cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "no hard-sample counts" in done.stdout and "training samples (70 samples)" in done.stdout
    assert load(tmp_path / "Results/Class_level_accuracies/MNIST_70_overfit.pkl")["pearson"] is None


@pytest.mark.parametrize("args, message", [
    (["--train_ratios", "1.0"], "must be a ratio in (0, 1), got 1.0"),
    (["--train_ratios", "0"], "must be a ratio in (0, 1), got 0"),
    (["--remaining_train_ratios", "1.5"], "must be a ratio in [0, 1], got 1.5"),
    (["--noise_ratio", "1"], "must be a ratio in [0, 1), got 1"),
    (["--noise_ratio", "nan"], "must be a ratio in [0, 1), got nan"),
    (["--strategy", "loss"], "invalid choice: 'loss'"),
    (["--level", "pixel"], "invalid choice: 'pixel'"),
    (["--evaluation_network", "VGG"], "invalid choice: 'VGG'"),
    (["--remaining_train_ratios", "0.5", "0.5"], "lists a ratio twice"),
    (["--epochs", "25"], "--epochs must be over 25"),
    (["--batch_size", "64"], "--batch_size applies to --evaluation_network ResNet only"),
    (["--evaluation_network", "ResNet", "--batch_size", "0"], "must be a positive integer, got 0"),
    (["--seed", "-1"], "must be a non-negative integer"),
])
def test_benchmark_flags_are_validated(capsys, args, message):
    with pytest.raises(SystemExit) as exit_status:
        script_module(VERIFY).parse_args(args)
    assert exit_status.value.code == 2 and message in capsys.readouterr().err


def test_missing_inputs_are_one_line_errors(tmp_path):
    write_mnist_layout(tmp_path / "data", "MNIST", train=60, test=10)
    done = run_in_process(VERIFY, "--dataset_name", "CIFAR11", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.strip().startswith("error: unknown dataset 'CIFAR11'")
    for script in (PLOT, DISTRIBUTION):
        done = run(script, cwd=tmp_path)
        assert done.returncode == 2 and "Results/F1_results/MNIST_" in done.stderr and "20000" in done.stderr
        assert done.stderr.strip().splitlines()[-1].startswith("error:")
    done = run(OVERLAP, cwd=tmp_path)
    assert done.returncode == 2 and "MNIST_stragglers_False_20000_indices.pkl" in done.stderr
    assert not (tmp_path / "Results").exists() or not list((tmp_path / "Results").rglob("*.pkl"))


@pytest.mark.parametrize("script", [VERIFY, PLOT, DISTRIBUTION, CLASS_LEVEL, OVERLAP])
def test_help_explains_every_flag(script, capsys):
    with pytest.raises(SystemExit) as exit_status:
        script_module(script).parse_args(["--help"])
    help_text = capsys.readouterr().out
    assert exit_status.value.code == 0 and "--dataset_name" in help_text
    entries = re.split(r"\n  (?=-)", help_text.split("options:")[1])[1:]
    assert len(entries) >= 3
    for entry in entries:
        words = [w for w in entry.split() if not (w.startswith(("-", "{", "[")) or w.rstrip(",]").isupper())]
        assert len(words) >= 3, entry  # the flag comes with an explanation


USER_COMMON = ["--subset_size", "180", "--runs", "1", "--train_ratios", "0.5", "--remaining_train_ratios", "0.0", "1.0",
               "--epochs", "100", "--seed", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def user_workdir(tmp_path_factory) -> Path:
    """Your own data as an npz (4 classes of blobs, named ids), through the straggler search and confidence."""
    folder = tmp_path_factory.mktemp("user")
    images, labels = synthetic_blobs(200, 7, num_classes=4)
    np.savez(folder / "blobs.npz", x=images, y=labels.astype(np.int64), ids=np.array([f"b{i:03d}" for i in range(200)]),
             class_names=np.array([f"kind{c}" for c in range(4)]))
    for strategy in ("stragglers", "confidence"):
        done = run_in_process(VERIFY, "--dataset_name", "npz:blobs.npz", "--strategy", strategy, *USER_COMMON,
                              cwd=folder)
        assert done.returncode == 0, done.stderr
    return folder


def test_user_source_through_the_sections_4_5_scripts(user_workdir):
    """File names carry the label (the npz's name); the sample ids and class names reach every result file."""
    indices = load(user_workdir / "Results/F1_results/blobs_stragglers_False_180_indices.pkl")
    metrics = load(user_workdir / "Results/F1_results/blobs_stragglers_False_180_metrics.pkl")
    order = np.random.RandomState(2).permutation(200)[:180]
    assert indices["subset_indices"].tolist() == order.tolist()
    assert indices["sample_ids"] == [f"b{i:03d}" for i in order] == metrics["sample_ids"]
    assert indices["class_names"] == [f"kind{c}" for c in range(4)] == metrics["class_names"]
    for found in indices["identifications"]:
        assert found["hard_sample_ids"] == [[f"b{i:03d}" for i in hard] for hard in found["hard_indices"]]
        assert sum(map(len, found["hard_sample_ids"])) > 0

    plotted = run_in_process(PLOT, "--dataset_name", "blobs", "--subset_size", "180", cwd=user_workdir)
    assert plotted.returncode == 0, plotted.stderr
    assert (user_workdir / "Figures/Figure7/a_easy_accuracy.png").is_file()
    distribution = run_in_process(DISTRIBUTION, "--dataset_name", "npz:blobs.npz", "--subset_size", "180",
                                  cwd=user_workdir)
    assert distribution.returncode == 0, distribution.stderr
    counts = load(user_workdir / "Results/Hard_sample_distribution/blobs_stragglers_180_class_counts.pkl")
    assert counts["class_names"] == indices["class_names"] and counts["sample_ids"] == indices["sample_ids"]
    assert (counts["counts"] == per_class_counts(indices)).all()
    assert (user_workdir / "Figures/Figure8/hard_sample_distribution_blobs_stragglers.png").is_file()
    overlap = run_in_process(OVERLAP, "--dataset_name", "blobs", "--subset_size", "180", cwd=user_workdir)
    assert overlap.returncode == 0, overlap.stderr
    table = load(user_workdir / "Results/F1_results/blobs_180_overlap.pkl")
    assert set(table["table"]) == {("stragglers", "confidence"), ("confidence", "stragglers")}
    assert table["sample_ids"] == indices["sample_ids"]
    class_level = run_in_process(CLASS_LEVEL, "--dataset_name", "npz:blobs.npz", "--runs", "2", "--epochs", "30",
                      "--device", "cpu", "--hard_counts", "Results/Hard_sample_distribution/"
                      "blobs_stragglers_180_class_counts.pkl", cwd=user_workdir)
    assert class_level.returncode == 0, class_level.stderr
    assert "--subset_size 70000 is more than its 200 samples; using all 200" in class_level.stderr
    accuracies = load(user_workdir / "Results/Class_level_accuracies/blobs_70000.pkl")
    all_ids = [f"b{i:03d}" for i in np.random.RandomState(0).permutation(200)]
    assert accuracies["sample_ids"] == all_ids and accuracies["test_sample_ids"] == all_ids[171:]  # 6/7 of 200: 171
    assert accuracies["per_class_accuracy"].shape == (2, 4)


def test_absent_stragglers_need_a_budget(tmp_path):
    """A class of one sample has no radius that could grow: no straggler set. The stragglers strategy and
    confidence without --budget stop with one line naming the class (and --budget) and write nothing; confidence
    with --budget 0.1 marks int(0.1 * size) samples per class."""
    images, labels = synthetic_blobs(61, 3, num_classes=3)
    labels[-1] = 3
    np.savez(tmp_path / "odd.npz", x=images, y=labels.astype(np.int64),
             class_names=np.array(["a", "b", "c", "lonely"]))
    common = ["--dataset_name", "npz:odd.npz", "--runs", "1", "--train_ratios", "0.5", "--remaining_train_ratios",
              "1.0", "--epochs", "30", "--device", "cpu", "--level", "class"]
    stragglers = run(VERIFY, *common, cwd=tmp_path)
    assert stragglers.returncode == 2 and stragglers.stderr.strip().splitlines()[-1].startswith(
        "error: class(es) lonely have fewer than 2 samples")
    confidence = run_in_process(VERIFY, *common, "--strategy", "confidence", cwd=tmp_path)
    assert confidence.returncode == 2 and confidence.stderr.strip().splitlines()[-1] == (
        "error: confidence takes its budget from the stragglers, and there is no straggler set: class(es) lonely never "
        "reached an inversion point; give --budget (a share of each class, e.g. 0.1, or a count per class)")
    assert not (tmp_path / "Results").exists() and not (tmp_path / "Figures").exists()
    done = run_in_process(VERIFY, *common, "--strategy", "confidence", "--budget", "0.1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    found = load(tmp_path / "Results/F1_results/odd_confidence_False_20000_indices.pkl")
    assert per_class_counts(found).tolist() == [[int(0.1 * size) for size in np.bincount(labels, minlength=4)]]
    assert (found["identifications"][0]["inversion_epochs"] == -1).all()
