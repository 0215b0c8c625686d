"""hardness_scores.py and mislabel_detection_benchmark.py end to end on tiny synthetic MNIST and Fashion-MNIST."""
import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import hardness_scores
import mislabel_detection_benchmark
from conftest import REPO, run_in_process, synthetic_blobs, write_mnist_layout
from hardness.cli import UserInputError
from hardness.mislabel import detection_scores
from hardness.results import csv_bytes
from hardness.scoring import CHARACTERISATION, RANKINGS, SETS, hardness_ranking

PAPER_RANKINGS = [name for name in RANKINGS if name not in CHARACTERISATION]     # what the paper recipe computes

SCORES, BENCHMARK = REPO / "hardness_scores.py", REPO / "mislabel_detection_benchmark.py"
TINY = ["--subset_size", "300", "--epochs", "120", "--cleanlab_folds", "2", "--seed", "3", "--device", "cpu"]


def run(script: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script), *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """Tiny MNIST and Fashion-MNIST layouts, one hardness_scores.py run (with AUM's threshold, a real subprocess)
    and one benchmark (in this process)."""
    folder = tmp_path_factory.mktemp("scores")
    for name in ("MNIST", "FashionMNIST"):
        write_mnist_layout(folder / "data", name, train=250, test=50, make=synthetic_blobs)
    done = run(SCORES, "--dataset_name", "mnist", "--runs", "2", "--aum_threshold_samples", *TINY, cwd=folder)
    assert done.returncode == 0, done.stderr
    done = run_in_process(BENCHMARK, "--dataset_name", "MNIST", "fashionmnist", "--noise_ratio", "0.1", "--runs",
                          "2", *TINY, "--results_dir", "Bench", "--figures_dir", "BenchFigures", cwd=folder)
    assert done.returncode == 0, done.stderr
    return folder


def test_scores_file_holds_every_score_the_flips_and_its_settings(workdir):
    with np.load(workdir / "Results/scores/MNIST_300_0.1.npz") as saved:
        arrays = dict(saved)
    n, runs = 300, 2
    flipped = arrays["flipped"]
    assert flipped.dtype == bool and flipped.sum() == int(0.1 * n)
    assert ((arrays["labels"] != arrays["clean_labels"]) == flipped).all()       # a flip always changes the label
    for name in {*(RANKINGS[name][0] for name in PAPER_RANKINGS), *SETS, "data_map_variability", "data_map_correctness",
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


def test_ranking_csv_lists_every_sample_most_suspicious_first(workdir):
    """The hardness_scores.py run's ranking: one row per sample, the columns of the issue, the consensus ranks 1..N
    in order, the flipped labels first far more often than chance, and the runs' majority prediction."""
    with open(workdir / "Results/scores/MNIST_300_0.1_ranking.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    with np.load(workdir / "Results/scores/MNIST_300_0.1.npz") as saved:
        arrays = dict(saved)
    class_names = json.loads((workdir / "Results/scores/MNIST_300_0.1.json").read_text())["class_names"]
    assert len(rows) == 300 and [int(row["consensus_rank"]) for row in rows] == list(range(1, 301))
    assert {"sample_id", "given_label", "predicted_label", "aum", "aum_rank", "data_map_rank", "forgetting_rank",
            "cleanlab_rank", "flagged_cleanlab", "flagged_aum", "flipped"} <= set(rows[0])
    position = {sample_id: i for i, sample_id in enumerate(arrays["sample_ids"].tolist())}
    for row in rows:
        i = position[row["sample_id"]]
        assert row["given_label"] == class_names[arrays["labels"][i]]
        assert row["predicted_label"] == class_names[arrays["predicted_labels"][i]]
        assert row["flipped"] == str(int(arrays["flipped"][i]))
    assert sum(row["flipped"] == "1" for row in rows[:30]) >= 15                 # 30 flipped of 300
    assert (workdir / "Results/scores/MNIST_300_0.1_report.html").read_text().count('class="card sample') == 60


def test_benchmark_table_matches_the_saved_scores(workdir):
    with open(workdir / "Bench/scores/benchmark.csv") as handle:
        rows = list(csv.DictReader(handle))
    settings = {(row["dataset"], row["noise_ratio"]) for row in rows}
    assert settings == {("MNIST", "0.1"), ("FashionMNIST", "0.1")}
    assert len(rows) == 2 * (len(PAPER_RANKINGS) + 3)   # every ranking, the consensus, stragglers, cleanlab's set
    assert [row["score"] for row in rows[:len(PAPER_RANKINGS) + 1]] == [*PAPER_RANKINGS, "consensus"]
    row = next(r for r in rows if r["dataset"] == "FashionMNIST" and r["score"] == "aum")
    with np.load(workdir / "Bench/scores/FashionMNIST_300_0.1.npz") as saved:
        expected = detection_scores(hardness_ranking(dict(saved), "aum"), saved["flipped"])
    assert float(row["auroc"]) == pytest.approx(expected["auroc"]) and float(row["ap"]) == pytest.approx(expected["ap"])
    table = (workdir / "Bench/scores/benchmark.md").read_text()
    assert table.startswith("`mislabel_detection_benchmark.py") and "| FashionMNIST | 0.1 | paper | stragglers |" in table
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
        "--subset_size", "300", "--replot", "--results_dir", str(workdir / "Bench"), "--figures_dir", str(tmp_path),
        "--data_root", str(workdir / "data")]))
    assert "redrew from" in capsys.readouterr().out
    with open(workdir / "Bench/scores/MNIST_300_0.1_ranking.csv", newline="") as handle:
        redrawn = list(csv.DictReader(handle))
    with np.load(workdir / "Bench/scores/MNIST_300_0.1.npz") as saved:
        assert sorted(row["sample_id"] for row in redrawn) == sorted(saved["sample_ids"].tolist())
    assert (workdir / "Bench/scores/MNIST_300_0.1_report.html").is_file()
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
        (folder / "benchmark.csv").write_bytes(csv_bytes(shifted))
    mislabel_detection_benchmark.main(mislabel_detection_benchmark.parse_args(
        ["--sweep", str(tmp_path / "sweep"), "--results_dir", str(tmp_path), "--figures_dir", str(tmp_path / "F")]))
    assert (tmp_path / "F/scores/benchmark_auroc_against_seconds_sweep.png").stat().st_size > 0
    assert "| MNIST | 0.1 uniform | 2 |" in (tmp_path / "scores/benchmark_sweep_summary.md").read_text()
    with open(tmp_path / "scores/benchmark_sweep.csv") as handle:
        merged = {(row["dataset"], row["score"]): row for row in csv.DictReader(handle)}
    original = {(row["dataset"], row["score"]): row for row in rows}
    assert len(merged) == len(rows)
    key = ("MNIST", "aum")
    assert float(merged[key]["auroc"]) == pytest.approx(float(original[key]["auroc"]) + 0.05)
    assert float(merged[key]["auroc_std_over_runs"]) == pytest.approx(0.05) and merged[key]["benchmark_runs"] == "2"
    assert float(merged[("MNIST", "stragglers")]["f1"]) == pytest.approx(float(original[("MNIST", "stragglers")]["f1"]))


def test_resnet_scores_go_to_files_of_their_own(tmp_path):
    """--network ResNet scores a minibatch-trained ResNet into files of their own, without stragglers (on 20 of
    write_moved_folder's 8x8 images, in 2 minibatches an epoch: a ResNet-18 on 28x28 MNIST costs ~12x more)."""
    write_moved_folder(tmp_path / "shapes")
    done = run_in_process(SCORES, "--dataset_name", f"folder:{tmp_path / 'shapes'}", "--noise_ratio", "0.1",
                          "--recipe", "paper", "--network", "ResNet", "--batch_size", "10", "--subset_size", "20",
                          "--epochs", "15",
                          "--score_epoch", "1", "--trajectory_every", "5", "--cleanlab_folds", "0", "--runs", "1",
                          "--seed", "3", "--device", "cpu", "--data_root", str(tmp_path / "data"), "--results_dir",
                          str(tmp_path / "R"), "--figures_dir", str(tmp_path / "F"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    saved = np.load(tmp_path / "R/scores/shapes_20_0.1_ResNet.npz")
    assert saved["flipped"].sum() == 2                                           # int(0.1 * 20)
    assert "stragglers" not in saved and saved["inversion_epochs"].shape == (1, 0)
    for name in ("confidence", "energy", "vog", "aum", "forgetting", "el2n", "grand", "data_map_confidence"):
        assert saved[name].shape == (1, 20) and np.isfinite(saved[name]).all(), name
    assert saved["loss_trajectory"].shape == (1, 3, 20)                          # after epochs 5, 10 and 15
    assert json.loads((tmp_path / "R/scores/shapes_20_0.1_ResNet.json").read_text())["network"] == "ResNet"
    assert (tmp_path / "F/scores/shapes_20_0.1_ResNet_data_map.png").is_file()
    assert not (tmp_path / "R/scores/shapes_20_0.1.npz").exists()                 # no SimpleNN file written


def test_pair_noise_moves_each_class_into_its_confusable_class(workdir, tmp_path):
    """--noise_type pairs: every flipped sample's label is its class's nearest class mean, computed here from the
    saved subset's images; the files and the table say so."""
    mislabel_detection_benchmark.main(mislabel_detection_benchmark.parse_args([
        "--dataset_name", "MNIST", "--noise_ratio", "0.2", "--noise_type", "pairs", "--subset_size", "100",
        "--epochs", "15", "--score_epoch", "3", "--trajectory_every", "5", "--cleanlab_folds", "0", "--runs", "1",
        "--device", "cpu", "--data_root", str(workdir / "data"), "--results_dir", str(tmp_path),
        "--figures_dir", str(tmp_path / "F")]))
    with np.load(tmp_path / "scores/MNIST_100_0.2_pairs.npz") as saved:
        arrays = dict(saved)
    flipped = arrays["flipped"]
    assert flipped.sum() == 20
    pixels = np.concatenate([synthetic_blobs(250, 1)[0], synthetic_blobs(50, 2)[0]])[arrays["subset_indices"]]
    flat, clean = pixels.reshape(100, -1).astype(np.float64), arrays["clean_labels"]
    means = np.stack([flat[clean == c].mean(0) for c in range(10)])
    distances = np.linalg.norm(means[:, None] - means[None], axis=-1) + np.diag(np.full(10, np.inf))
    np.testing.assert_array_equal(arrays["labels"][flipped], distances.argmin(1)[clean[flipped]])
    assert "| MNIST | 0.2 pairs | paper | consensus |" in (tmp_path / "scores/benchmark_pairs.md").read_text()


def write_moved_folder(root: Path) -> list[str]:
    """Two class folders of 20 8x8 PNGs each (a bright and a dark class); three bright images moved into the dark
    folder. Returns the moved files' paths relative to the folder, after the move."""
    rng = np.random.default_rng(0)
    moved = []
    for name in ("bright", "dark"):
        (root / name).mkdir(parents=True)
    for c, name in enumerate(["bright", "dark"]):
        for i in range(20):
            pixels = np.clip((200 if c == 0 else 50) + rng.normal(0, 20, size=(8, 8)), 0, 255).astype(np.uint8)
            target = "dark" if c == 0 and i < 3 else name
            Image.fromarray(pixels).save(root / target / f"{name}{i:02d}.png")
            if target != name:
                moved.append(f"{target}/{name}{i:02d}.png")
    return moved


def test_the_benchmark_scores_a_folder_against_its_list_of_moved_files(tmp_path):
    moved = write_moved_folder(tmp_path / "shapes")
    (tmp_path / "moved.txt").write_text("\n".join(moved) + "\n\n")
    flags = ["--dataset_name", f"folder:{tmp_path / 'shapes'}", "--recipe", "paper", "--subset_size", "40", "--epochs", "15",
             "--score_epoch", "3", "--trajectory_every", "5", "--cleanlab_folds", "0", "--runs", "1", "--device",
             "cpu", "--data_root", str(tmp_path / "data"), "--results_dir", str(tmp_path / "R"), "--figures_dir",
             str(tmp_path / "F")]
    mislabel_detection_benchmark.main(mislabel_detection_benchmark.parse_args([*flags, "--moved_list",
                                                                               str(tmp_path / "moved.txt")]))
    with np.load(tmp_path / "R/scores/shapes_40_0.075_moved.npz") as saved:           # 3 of 40 moved
        assert sorted(saved["sample_ids"][saved["flipped"]].tolist()) == sorted(moved)
        assert (saved["labels"] == saved["clean_labels"]).all()                       # nothing more flipped
    with open(tmp_path / "R/scores/benchmark_moved.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert {row["noise_type"] for row in rows} == {"moved"} and "consensus" in {row["score"] for row in rows}
    (tmp_path / "wrong.txt").write_text("shapes/dark/bright00.png\n")                  # not relative to the folder
    with pytest.raises(UserInputError, match="none of them a sample"):
        mislabel_detection_benchmark.main(mislabel_detection_benchmark.parse_args([*flags, "--moved_list",
                                                                                   str(tmp_path / "wrong.txt")]))
    with pytest.raises(SystemExit):
        mislabel_detection_benchmark.parse_args([*flags, "--moved_list", "x.txt", "--noise_ratio", "0.1"])


def test_the_moved_list_is_read_from_the_exports_csv_or_one_path_per_line(tmp_path):
    ids = ["0_a/x.png", "0_a/y.png", "1_b/z.png"]
    exported = tmp_path / "moved.csv"        # the header and columns scripts/export_noisy_folder.py writes
    exported.write_text("sample_id,source_id,true_class,given_class\n1_b/z.png,train/4,0_a,1_b\n")
    assert mislabel_detection_benchmark.read_moved_list(exported, ids).tolist() == [False, False, True]
    plain = tmp_path / "moved.txt"
    plain.write_text("0_a/y.png\n\n1_b/z.png\n")
    assert mislabel_detection_benchmark.read_moved_list(plain, ids).tolist() == [False, True, True]
