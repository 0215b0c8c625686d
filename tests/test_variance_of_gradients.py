"""variance_of_gradients.py end to end on a tiny synthetic MNIST: what it saves against a recomputation from
its own checkpoints, the split and the label noise, reading checkpoints back, figures, and its errors; and on
the user's own data (a table and an image folder the tests write), with their sample ids and class names."""
import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from PIL import Image

import variance_of_gradients as vog_script
from conftest import REPO, run_in_process, synthetic_digits, write_mnist_layout
from hardness.cli import UserInputError
from hardness.data import load_dataset
from hardness.vog import CALIBRATIONS, STAGES, input_gradients, stage_windows, vog_from_gradients
from neural_networks import SimpleNN

SCRIPT = REPO / "variance_of_gradients.py"
SUBSET, EPOCHS, CHECKPOINTS, NOISE = 300, 30, 7, 0.1
COMMON = ["--subset_size", str(SUBSET), "--epochs", str(EPOCHS), "--checkpoints", str(CHECKPOINTS),
          "--noise_ratio", str(NOISE), "--seed", "3", "--device", "cpu"]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def run_here(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The same run in this process (no new interpreter's seconds of imports). The real subprocesses left: the
    first run (workdir) and test_a_resnet_on_a_table_is_a_one_line_error_and_writes_nothing (exit status 2)."""
    return run_in_process(SCRIPT, *args, cwd=cwd)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    folder = tmp_path_factory.mktemp("vog")
    write_mnist_layout(folder / "data", "MNIST", train=300, test=100, make=synthetic_digits)
    done = run(*COMMON, "--save_checkpoints", cwd=folder)
    assert done.returncode == 0, done.stderr
    return folder, done


def test_split_noise_and_shapes(workdir):
    folder, _ = workdir
    saved = np.load(folder / "Results/VoG/MNIST_300_vog.npz")
    train, held = saved["train_indices"], saved["held_out_indices"]
    assert len(train) == int(0.8 * SUBSET) and len(held) == SUBSET - len(train)
    assert len(np.intersect1d(train, held)) == 0 and len(np.unique(np.concatenate([train, held]))) == SUBSET
    flipped = saved["train_flipped"]
    assert flipped.sum() == int(NOISE * len(train))
    assert np.array_equal(saved["train_labels"] != saved["train_clean_labels"], flipped)
    assert saved["train_vog"].shape == (len(STAGES), len(CALIBRATIONS), len(train))
    assert saved["held_out_vog"].shape == (len(STAGES), len(CALIBRATIONS), len(held))
    assert saved["train_predictions"].shape == (CHECKPOINTS, len(train))
    assert saved["checkpoint_epochs"].tolist() == [3, 8, 12, 16, 20, 25, 29]  # round(k * 30 / 7) steps - 1
    assert list(saved["stages"]) == list(STAGES) and list(saved["calibrations"]) == list(CALIBRATIONS)
    settings = json.loads((folder / "Results/VoG/MNIST_300_vog.json").read_text())
    assert settings["noise_ratio"] == NOISE and settings["checkpoints"] == CHECKPOINTS


def test_saved_vog_equals_a_recomputation_from_the_saved_checkpoints(workdir):
    """Every stage's raw VoG of the held-out samples (true labels) and of the training samples (labels
    trained on), from the checkpoints on disk, gradients one chunk at a time; the calibrations from raw."""
    folder, _ = workdir
    saved = np.load(folder / "Results/VoG/MNIST_300_vog.npz")
    paths = sorted((folder / "Results/VoG/checkpoints/MNIST_300").glob("*.pt"))
    assert [p.name for p in paths] == [f"checkpoint_{k}_epoch_{e}.pt" for k, e in
                                       zip(range(1, 8), saved["checkpoint_epochs"])]
    states = [torch.load(path, weights_only=True) for path in paths]
    subset = load_dataset("MNIST", folder / "data", SUBSET, 3, torch.device("cpu"))
    position = {int(index): i for i, index in enumerate(subset.indices)}
    network = SimpleNN(784, 20, 2, 10)
    for part, labels in (("held_out", saved["held_out_labels"]), ("train", saved["train_labels"])):
        rows = torch.tensor([position[int(i)] for i in saved[f"{part}_indices"]])
        gradients = input_gradients(network, states, subset.data[rows], torch.from_numpy(labels), chunk=50)
        for s, (stage, window) in enumerate(stage_windows(CHECKPOINTS).items()):
            raw = vog_from_gradients(gradients[window]).numpy()
            np.testing.assert_allclose(saved[f"{part}_vog"][s, 0], raw, rtol=1e-5, atol=1e-12)
            for c in range(10):
                members = labels == c
                standardised = (raw[members] - raw[members].mean()) / raw[members].std()
                # float32 gradients summed in other chunks: raw agrees to 1e-5, standardised values near 0 to 1e-4
                np.testing.assert_allclose(saved[f"{part}_vog"][s, 1, members], standardised, rtol=1e-5, atol=1e-4)
                np.testing.assert_allclose(saved[f"{part}_vog"][s, 2, members], np.abs(standardised), rtol=1e-5,
                                           atol=1e-4)
    network.load_state_dict(states[-1])
    rows = torch.tensor([position[int(i)] for i in saved["held_out_indices"]])
    with torch.no_grad():
        predictions = network(subset.data[rows])[0].argmax(1)
    assert np.array_equal(saved["held_out_predictions"][-1], predictions.numpy())


def test_printed_claims_and_figures(workdir):
    folder, done = workdir
    saved = np.load(folder / "Results/VoG/MNIST_300_vog.npz")
    late, normalize = STAGES.index("late"), CALIBRATIONS.index("normalize")
    held = saved["held_out_vog"][late, normalize]
    wrong = saved["held_out_predictions"][-1] != saved["held_out_labels"]
    order = np.argsort(held, kind="stable")
    bottom, top = wrong[order[:6]].mean(), wrong[order[-6:]].mean()          # 60 held-out samples: deciles of 6
    assert f"lowest VoG decile {100 * bottom:.2f}%, highest {100 * top:.2f}%" in done.stdout
    from sklearn.metrics import roc_auc_score
    auroc = roc_auc_score(saved["train_flipped"], saved["train_vog"][late, normalize])
    assert f"from the clean ones: {auroc:.3f}" in done.stdout
    kept_half = 1 - wrong[order[:30]].mean()
    assert f"50% {100 * kept_half:.2f}" in done.stdout
    for figure in ("error_by_vog", "accuracy_kept", "histograms", "extremes"):
        for suffix in (".png", ".pdf"):
            assert (folder / "Figures/VoG" / f"MNIST_300_late_normalize_{figure}{suffix}").stat().st_size > 0
    assert not list(folder.rglob("*.tmp"))


@pytest.fixture(scope="module")
def early_run(workdir) -> subprocess.CompletedProcess:
    """The first run again from its saved checkpoints, drawing the early stage's raw VoG."""
    folder, _ = workdir
    done = run_here(*COMMON, "--checkpoint_dir", "Results/VoG/checkpoints/MNIST_300", "--results_dir", "Again",
               "--figures_dir", "AgainFigures", "--mode", "early", "--vog_cal", "raw", cwd=folder)
    assert done.returncode == 0, done.stderr
    return done


def test_checkpoint_dir_reproduces_the_run(workdir, early_run):
    folder, _ = workdir
    first = np.load(folder / "Results/VoG/MNIST_300_vog.npz")
    again = np.load(folder / "Again/VoG/MNIST_300_vog.npz")
    np.testing.assert_array_equal(again["train_vog"], first["train_vog"])
    assert (folder / "AgainFigures/VoG/MNIST_300_early_raw_extremes.png").is_file()


def claims(vog: np.ndarray, wrong: np.ndarray) -> tuple[str, str]:
    """The printed decile errors and the accuracy keeping the lowest-VoG half, of 60 held-out samples."""
    order = np.argsort(vog, kind="stable")
    bottom, top = wrong[order[:6]].mean(), wrong[order[-6:]].mean()          # deciles of 6
    return (f"lowest VoG decile {100 * bottom:.2f}%, highest {100 * top:.2f}%",
            f"50% {100 * (1 - wrong[order[:30]].mean()):.2f}")


def test_early_mode_uses_the_early_stage_last_checkpoint(workdir, early_run):
    """7 checkpoints: the early stage is the first 7 // 3 = 2, so its last is the 2nd (index 1)."""
    folder, _ = workdir
    saved = np.load(folder / "Again/VoG/MNIST_300_vog.npz")
    held = saved["held_out_vog"][STAGES.index("early"), CALIBRATIONS.index("raw")]
    predictions, labels = saved["held_out_predictions"], saved["held_out_labels"]
    stage_last, final = claims(held, predictions[1] != labels), claims(held, predictions[-1] != labels)
    assert stage_last != final                                # the two checkpoints tell apart
    for claim in stage_last:
        assert claim in early_run.stdout
    accuracy = 100 * (predictions[1] == labels).mean()
    assert f"early stage's last checkpoint (2 of 7): held-out accuracy {accuracy:.1f}%" in early_run.stdout


def test_seeded_runs_are_reproducible(workdir, tmp_path):
    folder, _ = workdir
    done = run_here(*COMMON, "--results_dir", str(tmp_path / "R"), "--figures_dir", str(tmp_path / "F"), cwd=folder)
    assert done.returncode == 0, done.stderr
    first, again = np.load(folder / "Results/VoG/MNIST_300_vog.npz"), np.load(tmp_path / "R/VoG/MNIST_300_vog.npz")
    for name in ("train_vog", "held_out_vog", "train_indices", "train_flipped", "held_out_predictions"):
        np.testing.assert_array_equal(first[name], again[name])


def test_checkpoint_dir_errors_are_one_line(workdir, tmp_path):
    folder, _ = workdir
    (tmp_path / "few").mkdir()
    done = run_here(*COMMON, "--checkpoint_dir", str(tmp_path / "few"), cwd=folder)
    assert done.returncode == 2 and re.search(r"error: --checkpoint_dir .* holds 0 \*\.pt checkpoint\(s\)", done.stderr)
    done = run_here(*COMMON, "--checkpoint_dir", "Results/VoG/checkpoints/MNIST_300", "--evaluation_network", "ResNet",
               "--batch_size", "8", cwd=folder)
    assert done.returncode == 2 and "is not a state dict of this --evaluation_network" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_missing_checkpoint_dir_is_named_before_the_data_are_read(tmp_path, monkeypatch):
    def no_data(*args, **kwargs):
        raise AssertionError("the data were read before --checkpoint_dir was checked")
    monkeypatch.setattr(vog_script, "load_dataset_from_args", no_data)
    (tmp_path / "file.pt").touch()
    for folder, problem in [(tmp_path / "nowhere", "does not exist"), (tmp_path / "file.pt", "is not a folder"),
                            (tmp_path, "holds 1 \\*\\.pt checkpoint")]:
        args = vog_script.parse_args(["--checkpoint_dir", str(folder), "--data_root", str(tmp_path / "no_data"),
                                      "--device", "cpu", "--results_dir", str(tmp_path / "R")])
        with pytest.raises(UserInputError, match=f"^--checkpoint_dir {re.escape(str(folder))} {problem}"):
            vog_script.main(args)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["file.pt"]


@pytest.mark.parametrize("args, message", [
    (["--checkpoints", "2"], "--checkpoints must be between 3"),
    (["--checkpoints", "40", "--epochs", "30"], "--checkpoints must be between 3"),
    (["--train_ratio", "1"], "must be a ratio in (0, 1)"),
    (["--batch_size", "8"], "--batch_size applies to --evaluation_network ResNet only"),
    (["--mode", "last"], "invalid choice: 'last'"),
])
def test_flags_are_validated(capsys, args, message):
    with pytest.raises(SystemExit) as exit_status:
        vog_script.parse_args(args)
    assert exit_status.value.code == 2 and message in capsys.readouterr().err


def write_pets(folder: Path, per_class: int) -> None:
    """folder/cat and folder/dog, `per_class` 8x8 greyscale PNGs each, the dogs brighter."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(("cat", "dog")):
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(rng.normal(80 + 100 * c, 30, size=(8, 8)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / name / f"{i}.png")


def test_resnet_checkpoints_on_minibatches(tmp_path):
    """20 training samples (8x8 images of 2 classes: a ResNet and its figures cost a fraction of 28x28 MNIST's 10
    classes) in minibatches of 8, 3 steps an epoch."""
    write_pets(tmp_path / "pets", 20)
    done = run_here("--dataset_name", "folder:pets", "--subset_size", "40", "--evaluation_network", "ResNet",
                    "--batch_size", "8", "--epochs", "3", "--checkpoints", "3", "--train_ratio", "0.5", "--device",
                    "cpu", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    saved = np.load(tmp_path / "Results/VoG/pets_40_vog.npz")
    assert saved["checkpoint_epochs"].tolist() == [0, 1, 2] and saved["train_vog"].shape == (4, 3, 20)
    assert np.isfinite(saved["train_vog"]).all()
    assert (saved["train_vog"][:3, 0] == 0).all()        # early, middle and late hold one checkpoint each: no spread
    assert (saved["train_vog"][STAGES.index("complete"), 0] > 0).all()


@pytest.mark.parametrize("module", ["variance_of_gradients", "variance_of_gradients_toy"])
def test_help_explains_every_flag(module, capsys):
    with pytest.raises(SystemExit) as exit_status:
        __import__(module).parse_args(["--help"])
    help_text = capsys.readouterr().out
    assert exit_status.value.code == 0 and "--vog_cal" in help_text and "--results_dir" in help_text
    entries = re.split(r"\n  (?=-)", help_text.split("options:")[1])[1:]
    assert len(entries) >= 8
    for entry in entries:
        words = [w for w in entry.split() if not (w.startswith(("-", "{", "[")) or w.rstrip(",]").isupper())]
        assert len(words) >= 3, entry  # the flag comes with an explanation


# ----------------------------------------------------------------------------- the user's own data

def write_table(path: Path) -> dict[str, str]:
    """60 rows of 3 features (class 'malignant' shifted by +2 in every feature), named p00..p59, the columns in
    the order id, f1, diagnosis, f2, f3; returns each row's class by id."""
    rng = np.random.default_rng(5)
    classes = {f"p{i:02d}": ("benign", "malignant")[i % 3 == 0] for i in range(60)}
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "f1", "diagnosis", "f2", "f3"])
        for sample_id, name in classes.items():
            f1, f2, f3 = rng.normal(2.0 * (name == "malignant"), 1.0, size=3)
            writer.writerow([sample_id, f"{f1:.4f}", name, f"{f2:.4f}", f"{f3:.4f}"])
    return classes


TABLE_FLAGS = ["--id_column", "id", "--label_column", "diagnosis", "--subset_size", "1000", "--epochs", "12",
               "--checkpoints", "6", "--seed", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def table_run(tmp_path_factory) -> tuple[Path, dict[str, str], subprocess.CompletedProcess]:
    folder = tmp_path_factory.mktemp("vog_table")
    classes = write_table(folder / "patients.csv")
    done = run_here("--dataset_name", "csv:patients.csv", *TABLE_FLAGS, "--save_checkpoints", cwd=folder)
    assert done.returncode == 0, done.stderr
    return folder, classes, done


def test_a_table_end_to_end_keeps_its_ids_and_class_names(table_run):
    folder, classes, done = table_run
    assert "--subset_size 1000 is more than its 60 samples; using all 60" in done.stderr
    saved = np.load(folder / "Results/VoG/patients_1000_vog.npz")            # named by the file's name
    assert saved["class_names"].tolist() == ["benign", "malignant"]          # sorted names
    train, held = saved["train_sample_ids"].tolist(), saved["held_out_sample_ids"].tolist()
    assert len(train) == 48 and len(held) == 12 and sorted(train + held) == sorted(classes)   # int(0.8 * 60)
    names = saved["class_names"].tolist()
    assert [names[c] for c in saved["train_clean_labels"]] == [classes[i] for i in train]
    assert [names[c] for c in saved["held_out_labels"]] == [classes[i] for i in held]
    assert saved["train_vog"].shape == (len(STAGES), len(CALIBRATIONS), 48)
    for suffix in (".png", ".pdf"):
        assert (folder / f"Figures/VoG/patients_1000_late_normalize_extremes{suffix}").stat().st_size > 0


def test_a_table_trains_the_greyscale_simple_nn(table_run):
    """3 features are not 3 colour channels: the SimpleNN is the greyscale one, 2 hidden layers of 20."""
    folder, _, _ = table_run
    paths = sorted((folder / "Results/VoG/checkpoints/patients_1000").glob("*.pt"))
    state = torch.load(paths[0], weights_only=True)
    assert {key: tuple(value.shape) for key, value in state.items()} == {
        "hidden.0.weight": (20, 3), "hidden.0.bias": (20,), "hidden.1.weight": (20, 20), "hidden.1.bias": (20,),
        "output.weight": (2, 20), "output.bias": (2,)}


def test_extreme_rows_show_each_row_under_its_id():
    """2 classes, 20 places each (10 lowest, 10 highest); class 1 holds only 2 samples, one on each side."""
    rows = torch.arange(40 * 3, dtype=torch.float32).view(40, 3) / 10 - 6              # [40, 3]
    maps = torch.ones(40, 3)
    shown = torch.ones(40, dtype=torch.bool)
    shown[21:39] = False
    ids = [f"s{i}" if shown[i] else "" for i in range(40)]
    fig = vog_script.plot_extreme_rows(rows, maps, shown, (2, 20), ["a", "b"], ids, "title")
    axes = np.array(fig.axes).reshape(2, 4)
    assert [t.get_text() for t in axes[0, 0].get_yticklabels()] == [f"s{i}" for i in range(10)]
    assert [t.get_text() for t in axes[0, 2].get_yticklabels()] == [f"s{i}" for i in range(10, 20)]
    assert [t.get_text() for t in axes[1, 0].get_yticklabels()] == ["s20"] + [""] * 9
    assert [t.get_text() for t in axes[1, 2].get_yticklabels()] == [""] * 9 + ["s39"]
    np.testing.assert_array_equal(axes[0, 2].get_images()[0].get_array(), rows[10:20].numpy())
    shown_values = np.ma.filled(axes[1, 0].get_images()[0].get_array(), np.nan)
    np.testing.assert_array_equal(shown_values[0], rows[20].numpy())
    assert np.isnan(shown_values[1:]).all()                                  # empty places stay blank
    assert axes[1, 0].get_ylabel() == "b"
    plt.close(fig)


def test_an_image_folder_end_to_end(tmp_path):
    """Two class folders of 8x8 greyscale PNGs; the sample ids are the files' paths in the folder."""
    write_pets(tmp_path / "pets", 10)
    done = run_here("--dataset_name", "folder:pets", "--dataset_label", "my_pets", "--subset_size", "20", "--epochs", "6",
               "--checkpoints", "3", "--device", "cpu", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    saved = np.load(tmp_path / "Results/VoG/my_pets_20_vog.npz")
    assert saved["class_names"].tolist() == ["cat", "dog"]
    ids = saved["train_sample_ids"].tolist() + saved["held_out_sample_ids"].tolist()
    assert sorted(ids) == sorted(f"{name}/{i}.png" for name in ("cat", "dog") for i in range(10))
    labels = np.concatenate([saved["train_clean_labels"], saved["held_out_labels"]])
    assert [("cat", "dog")[c] for c in labels] == [sample_id.split("/")[0] for sample_id in ids]
    assert (tmp_path / "Figures/VoG/my_pets_20_late_normalize_extremes.png").is_file()


def test_a_resnet_on_a_table_is_a_one_line_error_and_writes_nothing(tmp_path):
    write_table(tmp_path / "patients.csv")
    done = run("--dataset_name", "csv:patients.csv", *TABLE_FLAGS, "--evaluation_network", "ResNet", cwd=tmp_path)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "error: patients is a table of 3 features, and a ResNet needs images" in done.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["patients.csv"]
