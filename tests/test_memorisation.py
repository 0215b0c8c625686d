"""memorisation_and_inversion.py: batched minibatch training against one network at a time, the curves and
rules on hand-built trajectories, the script end to end on tiny synthetic MNIST, errors and --help."""
import copy
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import REPO, synthetic_blobs, write_mnist_layout
from hardness.memorisation import (auroc_curves, first_epoch_above, memorisation_curves, run_inversion_epoch,
                                   scores_at_class_inversions, smoothed_inversions, whole_trajectory_scores)
from hardness.minibatch import StackedNetworks, epoch_orders, train_minibatch
from neural_networks import memorisation_cnn, memorisation_mlp

SCRIPT = REPO / "memorisation_and_inversion.py"


@pytest.mark.parametrize("shape, make", [((1, 6, 6), lambda: memorisation_mlp((1, 6, 6), 3, width=8)),
                                         ((1, 8, 8), lambda: memorisation_cnn((1, 8, 8), 3))], ids=["mlp", "cnn"])
def test_batched_minibatch_training_equals_one_network_at_a_time(shape, make):
    generator = torch.Generator().manual_seed(0)
    data, labels = torch.randn(37, *shape, generator=generator), torch.randint(0, 3, (37,), generator=generator)
    torch.manual_seed(1)
    models = [make() for _ in range(3)]
    singles = [copy.deepcopy(model) for model in models]
    stacked = StackedNetworks(models)
    optimizer = torch.optim.SGD(stacked.parameters(), lr=0.05, momentum=0.9)
    train_minibatch(stacked, optimizer, data, labels, 3, epochs=2, batch_size=10, progress=False,
                    shuffles=[torch.Generator().manual_seed(10 + run) for run in range(3)])
    for run, model in enumerate(singles):   # the same order, drawn from the same generator, batch by batch
        single_optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        shuffle = torch.Generator().manual_seed(10 + run)
        for _ in range(2):
            for batch in torch.randperm(37, generator=shuffle).split(10):
                loss = F.cross_entropy(model(data[batch])[0], labels[batch])
                single_optimizer.zero_grad()
                loss.backward()
                single_optimizer.step()
        for name, parameter in model.named_parameters():
            torch.testing.assert_close(stacked.params[name][run], parameter, atol=1e-5, rtol=1e-4)


def test_every_run_draws_its_own_order():
    orders = epoch_orders([torch.Generator().manual_seed(s) for s in (0, 1, 0)], 50, torch.device("cpu"))
    assert orders.shape == (3, 50) and sorted(orders[1].tolist()) == list(range(50))
    assert orders[0].tolist() == orders[2].tolist() and orders[0].tolist() != orders[1].tolist()


def test_memorisation_and_auroc_curves_on_a_hand_built_trajectory():
    # 1 run, 3 epochs, 4 samples; samples 1 and 3 carry flipped labels
    margin = np.array([[[2.0, -1.0, 1.0, -2.0], [2.0, 0.5, -1.0, -1.0], [3.0, 1.0, 2.0, 0.5]]])
    flipped = np.array([False, True, False, True])
    memorised, clean = memorisation_curves(margin, flipped)
    np.testing.assert_allclose(memorised, [[0.0, 0.5, 1.0]])
    np.testing.assert_allclose(clean, [[1.0, 0.5, 1.0]])
    assert first_epoch_above(memorised, 0.1).tolist() == [2]
    assert first_epoch_above(memorised, 1.0).tolist() == [-1]
    # low margin = suspicious. Epoch 1: both flips below both clean (AUROC 1). Epoch 2: clean sample 2 (-1) ties
    # flip 3 (-1) and is below flip 1 (0.5): of the 4 (flip, clean) pairs, 2 right, 1 tie, 1 wrong -> 0.625.
    # Epoch 3: flips 1.0 and 0.5 against clean 3.0 and 2.0: all right -> 1.
    np.testing.assert_allclose(auroc_curves(margin, flipped, -1), [[1.0, 0.625, 1.0]])


def test_scores_at_each_class_inversion_and_whole_trajectory_scores_by_hand():
    trajectory = np.arange(12, dtype=float).reshape(1, 3, 4)          # [run, epoch, sample] = 4 * epoch + sample
    labels = np.array([0, 1, 1, 0])
    inversions = np.array([[2, -1]])                                   # class 0 at epoch 2, class 1 never (last)
    assert scores_at_class_inversions(trajectory, labels, inversions).tolist() == [[4.0, 9.0, 10.0, 7.0]]
    margin = np.array([[[1.0, -1.0], [-1.0, -3.0], [2.0, 1.0]]])       # sample 0: right, wrong, right
    loss = np.log(np.array([[[2.0, 4.0], [4.0, 8.0], [1.0, 2.0]]]))  # probabilities 1/2, 1/4 ... as exp(-loss)
    up_to_two = whole_trajectory_scores(margin, loss, np.array([2]))
    np.testing.assert_allclose(up_to_two["aum"], [[0.0, 2.0]])                         # -(mean margin)
    np.testing.assert_allclose(up_to_two["forgetting"], [[1.0, 2.0]])                  # never right: E = 2
    np.testing.assert_allclose(up_to_two["data_map_confidence"], [[-0.375, -0.1875]])  # -(1/2+1/4)/2, -(1/4+1/8)/2


def test_smoothed_rule_on_hand_made_radius_curves():
    curve = np.array([5.0, 4.0, 3.0, 1.0, 3.0, 2.8, 3.5, 4.0])
    radii = np.stack([curve, np.linspace(5, 1, 8)], axis=-1)[None]    # [1 run, 8 epochs, 2 classes]
    assert smoothed_inversions(radii, window=1, start=1).tolist() == [[4, -1]]    # class 1 keeps shrinking
    # trailing means of 3: epoch 4 (4+3+1)/3 = 2.67, 5: 2.33, 6: (1+3+2.8)/3 = 2.27, 7: 3.1 -> the minimum at 6
    assert smoothed_inversions(radii, window=3, start=1).tolist() == [[6, -1]]
    assert smoothed_inversions(radii, window=1, start=5).tolist() == [[6, -1]]
    assert run_inversion_epoch(np.array([[4, -1], [-1, -1]])).tolist()[0] == 4.0
    assert np.isnan(run_inversion_epoch(np.array([[4, -1], [-1, -1]]))[1])


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("memorisation")
    write_mnist_layout(folder / "data", "MNIST", train=250, test=50, make=synthetic_blobs)
    args = ["--subset_size", "200", "--holdout_size", "100", "--epochs", "8", "--runs", "2", "--batch_size", "32",
            "--check_start", "2", "--check_interval", "2", "--seed", "5", "--device", "cpu"]
    done = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=folder, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return folder, args


def test_the_script_saves_what_its_rules_and_curves_say(saved_run):
    folder, _ = saved_run
    path = folder / "Results" / "memorisation" / "MNIST_mlp_200_0.2_epochs8_batch32.npz"
    with np.load(path) as saved:
        arrays = dict(saved)
    assert arrays["margin_trajectory"].shape == (2, 8, 200) and arrays["radii"].shape == (2, 8, 10)
    assert arrays["flipped"].sum() == 40 and (arrays["labels"][arrays["flipped"]] !=
                                              arrays["clean_labels"][arrays["flipped"]]).all()
    assert arrays["sample_ids"].shape == (200,)
    # the paper's rule on epochs, recomputed from the saved radii: checks at epochs 2, 4, 6, 8 (1-based); a class
    # inverts at the first check whose radius is larger than at the check before
    for run in range(2):
        for c in range(10):
            checks = [2, 4, 6, 8]
            risen = [e for p, e in zip(checks, checks[1:]) if arrays["radii"][run, e - 1, c] > arrays["radii"][run, p - 1, c]]
            assert arrays["inversion_checked"][run, c] == (risen[0] if risen else -1)
    settings = json.loads(path.with_suffix(".json").read_text())
    assert settings["runs"] == 2 and "memorised at the end" in settings["summary"]
    assert (folder / "Figures" / "memorisation" / "MNIST_mlp_200_0.2_epochs8_batch32.png").is_file()


def test_a_seeded_rerun_is_identical_and_summarize_tabulates_every_setting(saved_run):
    folder, args = saved_run
    first = dict(np.load(folder / "Results" / "memorisation" / "MNIST_mlp_200_0.2_epochs8_batch32.npz"))
    done = subprocess.run([sys.executable, str(SCRIPT), *args, "--results_dir", "Again"], cwd=folder,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    again = dict(np.load(folder / "Again" / "memorisation" / "MNIST_mlp_200_0.2_epochs8_batch32.npz"))
    for name in ("margin_trajectory", "radii", "heldout_accuracy_clean"):
        np.testing.assert_array_equal(first[name], again[name])
    done = subprocess.run([sys.executable, str(SCRIPT), "--summarize"], cwd=folder, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    table = (folder / "Results" / "memorisation" / "summary.md").read_text()
    assert "MNIST, mlp, 0.2 noise, 2 runs x 8 epochs" in table and "memorisation begins" in table
    assert (folder / "Figures" / "memorisation" / "memorisation_and_inversion.png").is_file()


@pytest.mark.parametrize("args, message", [
    (["--epochs", "5", "--check_start", "5"], "--check_start must be below --epochs (5)"),
    (["--noise_ratio", "1.5"], "must be a ratio in [0, 1)"),
    (["--model", "resnet"], "invalid choice: 'resnet'"),
])
def test_bad_flags_are_one_line_errors(tmp_path, args, message):
    done = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 2 and message in done.stderr.strip().splitlines()[-1]


def test_unknown_dataset_and_empty_summary_are_one_line_errors(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--dataset_name", "nope"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode != 0 and done.stderr.strip().splitlines() == ["error: unknown dataset 'nope': give a torchvision "
                                                                         "dataset such as MNIST, FashionMNIST or KMNIST"]
    done = subprocess.run([sys.executable, str(SCRIPT), "--summarize"], cwd=tmp_path, capture_output=True, text=True)
    assert len(done.stderr.strip().splitlines()) == 1 and "no settings saved" in done.stderr


def test_help_explains_every_flag():
    done = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True)
    assert done.returncode == 0
    for flag in ("--holdout_size", "--noise_ratio", "--model", "--width", "--runs", "--batch_size", "--lr",
                 "--momentum", "--latent", "--check_start", "--check_interval", "--smoothing", "--summarize",
                 "--seed", "--device", "--results_dir", "--figures_dir"):
        assert flag in done.stdout
