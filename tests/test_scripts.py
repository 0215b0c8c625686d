"""Both Section 3 scripts end to end on a tiny subset, and their command-line errors."""
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, synthetic_blobs, write_mnist_layout

REPLICATE = REPO / "replicate_inversion_results_on_multiple_classes.py"
PLOT = REPO / "plotting_mean_radii_over_epochs.py"


def run(script: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script), *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A working folder with tiny MNIST and FashionMNIST IDX files under ./data."""
    folder = tmp_path_factory.mktemp("work")
    write_mnist_layout(folder / "data", "MNIST", train=300, test=100)
    write_mnist_layout(folder / "data", "FashionMNIST", train=300, test=100)
    return folder


@pytest.mark.parametrize("dataset", ["MNIST", "FashionMNIST"])
def test_replicate_then_plot_end_to_end(workdir, dataset):
    done = run(REPLICATE, "--dataset_name", dataset, "--subset_size", "200", "--number_of_runs", "3",
               "--epochs", "40", "--seed", "5", "--device", "cpu", cwd=workdir)
    assert done.returncode == 0, done.stderr
    with open(workdir / "Results/Radii_over_epoch" / f"{dataset}_all_epoch_radii.pkl", "rb") as handle:
        results = pickle.load(handle)
    settings = results["settings"]
    assert (settings["dataset_name"], settings["subset_size"], settings["number_of_runs"]) == (dataset, 200, 3)
    assert (settings["epochs"], settings["seed"], settings["device"], settings["depth"], settings["width"]) == \
        (40, 5, "cpu", 2, 20)
    assert {"python", "torch", "torchvision", "numpy"} <= set(settings["versions"])
    assert results["epochs"].tolist() == list(range(21, 40))  # after the steps of epochs 21 .. 39 (0-based)
    assert results["radii"].shape == (3, 19, 10) and np.isfinite(results["radii"]).all()
    assert ((results["radii"] >= 0) & (results["radii"] <= 1 + 1e-6)).all()  # radii of unit vectors
    assert results["losses"].shape == (3, 40) and (results["losses"][:, -1] < results["losses"][:, 0]).all()
    assert results["inversion_epochs"].shape == (3, 10)
    assert set(results["inversion_epochs"].flat) <= {-1, 25, 30, 35}
    assert len(results["class_names"]) == 10 and results["subset_indices"].shape == (200,)
    assert Image.open(workdir / "Figures" / f"radii_on_{dataset}.png").size[0] > 800
    assert (workdir / "Figures" / f"radii_on_{dataset}.pdf").read_bytes().startswith(b"%PDF")
    assert not list((workdir / "Results").rglob("*.tmp")) and not list((workdir / "Figures").rglob("*.tmp"))

    plotted = run(PLOT, "--dataset_name", dataset, cwd=workdir)
    assert plotted.returncode == 0, plotted.stderr
    assert "mean inversion epoch" in plotted.stdout
    for name in ("mean_std_radii_on", "mean_std_radii_overlay_on"):  # the paper's panels, and all in one
        assert Image.open(workdir / "Figures/Figure2" / f"{name}_{dataset}.png").size[0] > 500
        assert (workdir / "Figures/Figure2" / f"{name}_{dataset}.pdf").read_bytes().startswith(b"%PDF")


def test_inversion_epochs_follow_the_recorded_radii(workdir):
    """With radii recorded from epoch 20, the saved inversion epochs are the first checks (20, 25, ...)
    whose radius exceeds the previous check's, recomputed here from the saved curves; a lower-case
    dataset name and other folders work too."""
    done = run(REPLICATE, "--dataset_name", "mnist", "--subset_size", "200", "--number_of_runs", "4", "--epochs", "60",
               "--radii_from", "20", "--device", "cpu", "--results_dir", "elsewhere", "--figures_dir", "pictures",
               cwd=workdir)
    assert done.returncode == 0, done.stderr
    results = pickle.loads((workdir / "elsewhere/Radii_over_epoch/MNIST_all_epoch_radii.pkl").read_bytes())
    assert (workdir / "pictures/radii_on_MNIST.png").is_file()
    epochs, radii = results["epochs"], results["radii"]
    checks = [i for i, epoch in enumerate(epochs) if epoch % 5 == 0]
    assert epochs[checks].tolist() == [20, 25, 30, 35, 40, 45, 50, 55]
    expected = np.full((4, 10), -1)
    for run_index in range(4):
        for c in range(10):
            for before, after in zip(checks, checks[1:]):
                if radii[run_index, after, c] > radii[run_index, before, c]:
                    expected[run_index, c] = epochs[after]
                    break
    assert (results["inversion_epochs"] == expected).all() and (expected > 0).any()


def test_same_seed_same_results(workdir):
    outputs = []
    for _ in range(2):
        done = run(REPLICATE, "--subset_size", "100", "--number_of_runs", "2", "--epochs", "25", "--device", "cpu",
                   cwd=workdir)
        assert done.returncode == 0, done.stderr
        with open(workdir / "Results/Radii_over_epoch/MNIST_all_epoch_radii.pkl", "rb") as handle:
            outputs.append(pickle.load(handle))
    assert np.array_equal(outputs[0]["radii"], outputs[1]["radii"])
    assert np.array_equal(outputs[0]["losses"], outputs[1]["losses"])


def test_plot_reads_an_overridden_results_path(workdir):
    source = workdir / "Results/Radii_over_epoch/MNIST_all_epoch_radii.pkl"
    if not source.exists():
        assert run(REPLICATE, "--subset_size", "100", "--number_of_runs", "2", "--epochs", "25", cwd=workdir).returncode == 0
    moved = workdir / "elsewhere.pkl"
    moved.write_bytes(source.read_bytes())
    done = run(PLOT, "--dataset_name", "Renamed", "--results_path", str(moved), cwd=workdir)
    assert done.returncode == 0, done.stderr
    assert (workdir / "Figures/Figure2/mean_std_radii_on_Renamed.png").exists()


@pytest.mark.parametrize("script, args, message", [
    (REPLICATE, ["--dataset_name", "NotADataset"], "error: unknown dataset 'NotADataset'"),
    (REPLICATE, ["--subset_size", "100000"], "error: --subset_size must be between 1 and 400 for MNIST"),
    (REPLICATE, ["--subset_size", "0"], "--subset_size: must be a positive integer, got 0"),
    (REPLICATE, ["--lr", "-0.1"], "--lr: must be a positive number, got -0.1"),
    (REPLICATE, ["--epochs", "20"], "--radii_from must be between 0 and --epochs - 1 (19)"),
    (REPLICATE, ["--subset_size", "100", "--latent", "3"], "error: --latent 3 is past the last hidden layer (--depth 2)"),
    (PLOT, ["--dataset_name", "KMNIST"], "error: results file Results/Radii_over_epoch/KMNIST_all_epoch_radii.pkl not found"),
])
def test_bad_input_is_a_one_line_error(workdir, script, args, message):
    done = run(script, *args, cwd=workdir)
    assert done.returncode != 0
    assert message in done.stderr and "Traceback" not in done.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_a_one_line_error(workdir):
    done = run(REPLICATE, "--subset_size", "100", "--device", "cuda", cwd=workdir)
    assert done.returncode == 2 and done.stderr.strip() == (
        "error: --device cuda was asked for but no CUDA device is available; use --device cpu")


@pytest.mark.parametrize("script", [REPLICATE, PLOT])
def test_help_explains_every_flag(script):
    done = run(script, "--help", cwd=REPO)
    assert done.returncode == 0
    flags = [word for word in done.stdout.split() if word.startswith("--")]
    assert "--dataset_name" in flags
    for action_line in done.stdout.split("\n  --")[1:]:
        assert len(action_line.split(None, 1)) == 2, f"flag without help: --{action_line}"


def test_image_folder_through_section_3(tmp_path):
    """Your own images: a folder of 3 classes of PNGs named by path; the figure script takes the label."""
    images, labels = synthetic_blobs(60, 4, num_classes=3)
    for i, (image, label) in enumerate(zip(images, labels)):
        (tmp_path / "shapes" / f"c{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(tmp_path / "shapes" / f"c{label}" / f"{i:02d}.png")
    done = run(REPLICATE, "--dataset_name", "folder:shapes", "--number_of_runs", "2", "--epochs", "30",
               "--device", "cpu", "--seed", "1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "--subset_size 20000 is more than its 60 samples; using all 60" in done.stderr
    results = pickle.loads((tmp_path / "Results/Radii_over_epoch/shapes_all_epoch_radii.pkl").read_bytes())
    order = np.random.RandomState(1).permutation(60)
    assert results["class_names"] == ["c0", "c1", "c2"] and results["radii"].shape == (2, 9, 3)
    files = sorted(f"c{label}/{i:02d}.png" for i, label in enumerate(labels))   # class folders, then file names
    assert results["sample_ids"] == [files[j] for j in order]
    assert (tmp_path / "data/decoded_folders").is_dir() and (tmp_path / "Figures/radii_on_shapes.png").is_file()
    plotted = run(PLOT, "--dataset_name", "shapes", cwd=tmp_path)
    assert plotted.returncode == 0, plotted.stderr
    assert (tmp_path / "Figures/Figure2/mean_std_radii_on_shapes.png").is_file()


def test_bad_user_data_is_one_line_and_writes_nothing(tmp_path):
    (tmp_path / "pets/cat").mkdir(parents=True)
    (tmp_path / "pets/dog").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(tmp_path / "pets/cat/0.png")
    (tmp_path / "pets/dog/1.png").write_bytes(b"not a png")
    done = run(REPLICATE, "--dataset_name", "folder:pets", "--device", "cpu", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "error: pets/dog/1.png cannot be decoded: cannot identify image file 'pets/dog/1.png'; fix or remove it, or "
        "give --skip_unreadable"]
    assert not (tmp_path / "Results").exists() and not (tmp_path / "Figures").exists()
