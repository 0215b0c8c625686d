"""hardness_scores.py and mislabel_detection_benchmark.py end to end on tiny synthetic MNIST and Fashion-MNIST."""
import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import hardness_scores
import mislabel_detection_benchmark
from conftest import REPO, synthetic_blobs, write_mnist_layout
from hardness.cli import UserInputError
from hardness.mislabel import detection_scores
from hardness.scoring import RANKINGS, SETS, hardness_ranking

SCORES, BENCHMARK = REPO / "hardness_scores.py", REPO / "mislabel_detection_benchmark.py"
TINY = ["--subset_size", "300", "--epochs", "120", "--cleanlab_folds", "2", "--seed", "3", "--device", "cpu"]


def run(script: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script), *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """Tiny MNIST and Fashion-MNIST layouts, one hardness_scores.py run (with AUM's threshold) and one benchmark."""
    folder = tmp_path_factory.mktemp("scores")
    for name in ("MNIST", "FashionMNIST"):
        write_mnist_layout(folder / "data", name, train=250, test=50, make=synthetic_blobs)
    done = run(SCORES, "--dataset_name", "mnist", "--runs", "2", "--aum_threshold_samples", *TINY, cwd=folder)
    assert done.returncode == 0, done.stderr
    done = run(BENCHMARK, "--dataset_name", "MNIST", "fashionmnist", "--noise_ratio", "0.1", "--runs", "2",
               *TINY, "--results_dir", "Bench", "--figures_dir", "BenchFigures", cwd=folder)
    assert done.returncode == 0, done.stderr
    return folder


def test_scores_file_holds_every_score_the_flips_and_its_settings(workdir):
    with np.load(workdir / "Results/scores/MNIST_300_0.1.npz") as saved:
        arrays = dict(saved)
    n, runs = 300, 2
    flipped = arrays["flipped"]
    assert flipped.dtype == bool and flipped.sum() == int(0.1 * n)
    assert ((arrays["labels"] != arrays["clean_labels"]) == flipped).all()       # a flip always changes the label
    for name in {*(array for array, _ in RANKINGS.values()), *SETS, "data_map_variability", "data_map_correctness",
                 "data_map_region"}:
        assert arrays[name].shape == (runs, n), name
    trajectory = arrays["trajectory_epochs"].tolist()
    assert trajectory == list(range(9, 120, 10)) and arrays["loss_trajectory"].shape == (runs, len(trajectory), n)
    assert arrays["inversion_epochs"].shape == (runs, 10)
    assert set(np.unique(arrays["data_map_region"])) <= {0, 1, 2}
    assert arrays["stragglers"].any() and arrays["aum_flagged"].any()
    settings = json.loads((workdir / "Results/scores/MNIST_300_0.1.json").read_text())
    assert settings["noise_ratio"] == 0.1 and settings["runs"] == 2 and settings["command"].startswith("hardness_scores.py")
    assert settings["rankings"]["aum"] == {"array": "aum", "harder_when": "low"}
    assert {"training", "stragglers", "vog", "grand", "cleanlab", "aum_flagged"} <= set(settings["seconds"])
    for name in ("data_map", "correlations", "top_"):
        assert list((workdir / "Figures/scores").glob(f"MNIST_300_0.1_{name}*.png")), name


def test_benchmark_table_matches_the_saved_scores(workdir):
    with open(workdir / "Bench/scores/benchmark.csv") as handle:
        rows = list(csv.DictReader(handle))
    settings = {(row["dataset"], row["noise_ratio"]) for row in rows}
    assert settings == {("MNIST", "0.1"), ("FashionMNIST", "0.1")}
    assert len(rows) == 2 * (len(RANKINGS) + 2)       # every ranking, stragglers and cleanlab's flagged set
    row = next(r for r in rows if r["dataset"] == "FashionMNIST" and r["score"] == "aum")
    with np.load(workdir / "Bench/scores/FashionMNIST_300_0.1.npz") as saved:
        expected = detection_scores(hardness_ranking(dict(saved), "aum"), saved["flipped"])
    assert float(row["auroc"]) == pytest.approx(expected["auroc"]) and float(row["ap"]) == pytest.approx(expected["ap"])
    table = (workdir / "Bench/scores/benchmark.md").read_text()
    assert table.startswith("`mislabel_detection_benchmark.py") and "| FashionMNIST | 0.1 | stragglers |" in table
    assert (workdir / "BenchFigures/scores/benchmark_auroc_by_epoch.png").is_file()


def test_seeded_runs_are_reproducible(workdir):
    """The benchmark's MNIST 0.1 setting repeats the hardness_scores.py run (same seed and flags, no AUM threshold)."""
    with np.load(workdir / "Results/scores/MNIST_300_0.1.npz") as first, \
            np.load(workdir / "Bench/scores/MNIST_300_0.1.npz") as second:
        assert set(first) == set(second) | {"aum_flagged"}
        for name in second:
            np.testing.assert_array_equal(first[name], second[name], err_msg=name)


@pytest.mark.parametrize("args, message", [
    (["--cleanlab_folds", "1"], "at least 2"),
    (["--score_epoch", "500"], "--score_epoch must be below --epochs"),
    (["--noise_ratio", "1.0"], "noise_ratio"),
    (["--batch_size", "8"], "--batch_size applies to --network ResNet only"),
    (["--epochs", "14", "--score_epoch", "3"], "--epochs must be at least 15"),
])
def test_flags_are_validated(capsys, args, message):
    with pytest.raises(SystemExit):
        hardness_scores.parse_args(args)
    assert message in capsys.readouterr().err


def test_bad_inputs_are_one_line_errors(tmp_path):
    with pytest.raises(UserInputError, match="NoSuchSet"):
        hardness_scores.main(hardness_scores.parse_args(["--dataset_name", "NoSuchSet", "--device", "cpu"]))
    args = mislabel_detection_benchmark.parse_args(["--dataset_name", "KMNIST", "--data_root", str(tmp_path),
                                                    "--results_dir", str(tmp_path), "--device", "cpu"])
    with pytest.raises(UserInputError, match="KMNIST"):                # not on disk, and no network here
        mislabel_detection_benchmark.main(args)
    assert not list(tmp_path.rglob("*.npz"))


@pytest.mark.parametrize("module", [hardness_scores, mislabel_detection_benchmark])
def test_help_explains_every_flag(module, capsys):
    with pytest.raises(SystemExit) as exit_status:
        module.parse_args(["--help"])
    help_text = capsys.readouterr().out
    assert exit_status.value.code == 0 and "--cleanlab_folds" in help_text
    entries = re.split(r"\n  (?=-)", help_text.split("options:")[1])[1:]
    for entry in entries:
        words = [w for w in entry.split() if not (w.startswith(("-", "{", "[")) or w.rstrip(",]").isupper())]
        assert len(words) >= 3, entry


def test_replot_redraws_the_figures_from_the_saved_scores(workdir, tmp_path, capsys):
    hardness_scores.main(hardness_scores.parse_args([
        "--subset_size", "300", "--replot", "--results_dir", str(workdir / "Bench"), "--figures_dir", str(tmp_path)]))
    assert "redrew from" in capsys.readouterr().out
    assert sorted(p.name.split("0.1_")[1] for p in (tmp_path / "scores").glob("*.png"))[:2] == ["correlations.png",
                                                                                               "data_map.png"]
    with pytest.raises(UserInputError, match="not found"):
        hardness_scores.main(hardness_scores.parse_args(["--subset_size", "301", "--replot", "--results_dir",
                                                         str(workdir / "Bench")]))


def test_a_sweep_of_benchmarks_merges_into_one_table(workdir, tmp_path):
    """Two cells holding the benchmark's table (one with every AUROC 0.1 higher) merge into their means."""
    with open(workdir / "Bench/scores/benchmark.csv") as handle:
        rows = list(csv.DictReader(handle))
    for cell, shift in (("seed-0", 0.0), ("seed-1", 0.1)):
        folder = tmp_path / "sweep/benchmark" / cell / "results/scores"
        folder.mkdir(parents=True)
        shifted = [{**row, "auroc": float(row["auroc"]) + shift if row["auroc"] else ""} for row in rows]
        (folder / "benchmark.csv").write_bytes(mislabel_detection_benchmark.csv_bytes(shifted))
    mislabel_detection_benchmark.main(mislabel_detection_benchmark.parse_args(
        ["--sweep", str(tmp_path / "sweep"), "--results_dir", str(tmp_path)]))
    with open(tmp_path / "scores/benchmark_sweep.csv") as handle:
        merged = {(row["dataset"], row["score"]): row for row in csv.DictReader(handle)}
    original = {(row["dataset"], row["score"]): row for row in rows}
    assert len(merged) == len(rows)
    key = ("MNIST", "aum")
    assert float(merged[key]["auroc"]) == pytest.approx(float(original[key]["auroc"]) + 0.05)
    assert float(merged[key]["auroc_std_over_runs"]) == pytest.approx(0.05) and merged[key]["benchmark_runs"] == "2"
    assert float(merged[("MNIST", "stragglers")]["f1"]) == pytest.approx(float(original[("MNIST", "stragglers")]["f1"]))


def test_resnet_scores_go_to_files_of_their_own(workdir, tmp_path):
    """--network ResNet scores a minibatch-trained ResNet into files of their own, without stragglers."""
    done = run(SCORES, "--dataset_name", "MNIST", "--network", "ResNet", "--batch_size", "20", "--subset_size", "40",
               "--epochs", "15", "--score_epoch", "1", "--trajectory_every", "5", "--cleanlab_folds", "0", "--runs", "1",
               "--seed", "3", "--device", "cpu", "--data_root", str(workdir / "data"), "--results_dir",
               str(tmp_path / "R"), "--figures_dir", str(tmp_path / "F"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    saved = np.load(tmp_path / "R/scores/MNIST_40_0.1_ResNet.npz")
    assert "stragglers" not in saved and saved["inversion_epochs"].shape == (1, 0)
    for name in ("confidence", "energy", "vog", "aum", "forgetting", "el2n", "grand", "data_map_confidence"):
        assert saved[name].shape == (1, 40) and np.isfinite(saved[name]).all(), name
    assert saved["loss_trajectory"].shape == (1, 3, 40)                          # after epochs 5, 10 and 15
    assert json.loads((tmp_path / "R/scores/MNIST_40_0.1_ResNet.json").read_text())["network"] == "ResNet"
    assert (tmp_path / "F/scores/MNIST_40_0.1_ResNet_data_map.png").is_file()
    assert not (tmp_path / "R/scores/MNIST_40_0.1.npz").exists()                  # no SimpleNN file written
