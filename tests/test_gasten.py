"""GASTeN and patterns in ambiguity: the networks, ACD, Frechet distances on Gaussians, MGDA by hand, Pareto
flags, checkpoint names, medoids, noise rejection and filtering by hand, and every script end to end on
procedural strokes (a slanted bar for "1", a top bar and a diagonal for "7"), where a weight above 0 must
bring the generator closer to the classifier's boundary."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import REPO, run_in_process, write_idx, write_mnist_layout
from hardness.ambiguity import ambiguous_samples, medoids, reduced_silhouette
from hardness.cli import UserInputError
from hardness.gasten import (average_confusion_distance, epoch_folders, load_classifier, load_gan, load_pair,
                             make_gan, mgda_weight, pareto_efficient, read_metrics_csv, save_gan, train_epoch)
from hardness.gasten_metrics import (InceptionFeatures, frechet_distance, frechet_metric, inception_features,
                                     statistics_key)
from hardness.gasten_names import ConfusionWeight, Step2Cell
from neural_networks import (DCGANDiscriminator, DCGANGenerator, FeatureCNN, PairClassifierCNN,
                             PairClassifierMLP)

CLASSIFIERS = REPO / "gasten_train_classifiers.py"
TRAIN = REPO / "gasten_train.py"


def run(script: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script), *args], cwd=cwd, capture_output=True, text=True, timeout=600)


# The fixture's runs and test_bad_config_field_is_named are real subprocesses (exit status and stderr); the other
# runs of gasten_train.py are run_in_process: the same run_script(main, parse_args) without a new interpreter's
# seconds of imports.


def test_dcgan_shapes_and_ranges():
    torch.manual_seed(0)
    generator, discriminator, critic = DCGANGenerator(), DCGANDiscriminator(), DCGANDiscriminator(wgan=True)
    images = generator(torch.randn(6, 64))
    assert images.shape == (6, 1, 28, 28) and images.abs().max() <= 1
    scores = discriminator(images)
    assert scores.shape == (6,) and ((scores > 0) & (scores < 1)).all()
    assert critic(images).shape == (6,) and any(isinstance(m, nn.LayerNorm) for m in critic.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in critic.modules())
    convolutions = [m.weight for m in generator.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert all(abs(float(w.detach().std()) - 0.02) < 0.005 for w in convolutions)


@pytest.mark.parametrize("nf", [1, 4])
def test_pair_classifiers(nf):
    x = torch.randn(5, 1, 28, 28)
    cnn, mlp = PairClassifierCNN(nf), PairClassifierMLP(nf)
    assert cnn.embed(x).shape == (5, 98 * nf) and mlp.embed(x).shape == (5, nf)
    for model in (cnn, mlp):
        p = model(x)
        assert p.shape == (5,) and ((p > 0) & (p < 1)).all()
    assert FeatureCNN()(x).shape == (5, FeatureCNN.num_features)


def test_acd_by_hand():
    # |0.5 - 0.5| = 0, |0.5 - 1| = 0.5, |0.5 - 0.2| = 0.3, |0.5 - 0.6| = 0.1: mean 0.225
    assert float(average_confusion_distance(torch.tensor([0.5, 1.0, 0.2, 0.6]))) == pytest.approx(0.225)


class Identity(nn.Module):
    num_features = 3

    def forward(self, x):
        return x


def test_frechet_distance_on_gaussians():
    """Identical samples: 0. The same samples shifted by d (equal covariance): |d|^2."""
    real = torch.randn(4000, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64).float() * \
        torch.tensor([1.0, 2.0, 0.5])
    metric = frechet_metric(Identity(), real)
    assert frechet_distance(metric, real) == pytest.approx(0, abs=1e-3)
    shift = torch.tensor([1.0, -2.0, 0.5])
    assert frechet_distance(metric, real + shift) == pytest.approx(float(shift @ shift), rel=1e-3)   # 5.25


class Counting(Identity):
    """Identity features that count the images they saw."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0

    def forward(self, x):
        self.seen += len(x)
        return x


def test_frechet_statistics_are_cached_under_their_images(tmp_path):
    """The same real images again: their statistics come from the cache (the extractor sees only the 300 fakes).
    Other real images: their own statistics, in a file of their own."""
    real = torch.randn(500, 3, generator=torch.Generator().manual_seed(1))
    fake = real[:300] + 1
    first = frechet_distance(frechet_metric(Counting(), real, tmp_path, "pair"), fake)
    extractor = Counting()
    cached = frechet_distance(frechet_metric(extractor, real, tmp_path, "pair"), fake)
    assert cached == pytest.approx(first) and extractor.seen == 300
    other = Counting()
    frechet_distance(frechet_metric(other, real[:400], tmp_path, "pair"), fake)
    assert other.seen == 400 + 300 and len(list(tmp_path.glob("pair_*.pt"))) == 2


def test_statistics_cache_key_differs_per_data_folder(tmp_path):
    """Two data folders holding different MNIST files, one a copy of the first: 60 and 100 balanced training
    images, so 12 and 20 of the pair 7 vs 1. The copy shares the first folder's statistics; the other folder's
    are its own (the cache keyed by the pair alone gave it the first folder's 12)."""
    write_mnist_layout(tmp_path / "a", train=60)
    write_mnist_layout(tmp_path / "b", train=100)
    shutil.copytree(tmp_path / "a", tmp_path / "copy_of_a")
    torch.manual_seed(0)
    extractor, stats = FeatureCNN(), tmp_path / "stats"
    keys = {}
    for folder in ("a", "b", "copy_of_a"):
        pair = load_pair("mnist", 7, 1, tmp_path / folder, torch.device("cpu"))
        keys[folder] = statistics_key(extractor, pair.train_x)
        metric = frechet_metric(extractor, pair.train_x, stats, "mnist_7v1_own_features")
        assert int(metric.real_features_num_samples) == {"a": 12, "b": 20, "copy_of_a": 12}[folder]
    assert keys["a"] != keys["b"] and keys["a"] == keys["copy_of_a"]
    assert sorted(path.name for path in stats.iterdir()) == sorted(f"mnist_7v1_own_features_{keys[f]}.pt"
                                                                   for f in ("a", "b"))
    torch.manual_seed(1)
    assert statistics_key(FeatureCNN(), pair.train_x) != keys["a"]            # other weights, other statistics


def test_inception_fid_loads_the_fid_inception_network_from_a_file(tmp_path, monkeypatch):
    """torch-fidelity's FID Inception-v3 with random weights, saved to a file, is what --inception_weights loads
    (no download): the same weights, and 2048 features per image."""
    from torch_fidelity import feature_extractor_inceptionv3 as fidelity

    class RandomInception(fidelity.FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):
            return None                                            # keeps the random initialisation

    monkeypatch.setattr(fidelity, "load_state_dict_from_url", lambda *args, **kwargs: {})    # never downloads
    torch.manual_seed(0)
    saved = RandomInception("inception-v3-compat", ["2048"]).state_dict()
    torch.save(saved, tmp_path / "inception.pt")
    features = inception_features(tmp_path / "inception.pt", torch.device("cpu"))
    assert isinstance(features, InceptionFeatures)
    loaded = features.inception.state_dict()
    assert loaded.keys() == saved.keys() and all(torch.equal(loaded[name], saved[name]) for name in saved)
    images = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert features(images).shape == (3, 2048)


@pytest.mark.parametrize("g1, g2, expected", [
    ([1.0, 0.0], [0.0, 1.0], 0.5),      # (g2 - g1) . g2 / |g1 - g2|^2 = 1 / 2
    ([2.0, 0.0], [-1.0, 0.0], 1 / 3),   # 3 / 9: s g1 + (1 - s) g2 = 0
    ([1.0, 0.0], [2.0, 0.0], 1.0),      # 2 / 1, clipped
    ([2.0, 0.0], [1.0, 0.0], 0.0),      # -1 / 1, clipped
    ([1.0, 1.0], [1.0, 1.0], 0.5),      # equal gradients: any s, 0.5
])
def test_mgda_weight_by_hand(g1, g2, expected):
    assert mgda_weight(torch.tensor(g1), torch.tensor(g2)) == pytest.approx(expected)


def test_pareto_efficient_by_hand():
    points = [[1, 5], [2, 2], [3, 3], [5, 1], [2, 2], [1, 6]]
    # [3, 3] is beaten by [2, 2]; [1, 6] by [1, 5]; the two [2, 2] tie and are both efficient
    assert pareto_efficient(points).tolist() == [True, True, False, True, True, False]


def test_epoch_folders_find_single_digit_and_padded_names(tmp_path):
    for name in ("epoch_5", "epoch_10", "epoch_00", "epoch_x"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "generator.pt").write_bytes(b"")
    (tmp_path / "epoch_7").mkdir()                          # no checkpoint inside
    assert sorted(epoch_folders(tmp_path)) == [0, 5, 10]


@pytest.mark.parametrize("name, classifier, weight, step1_epoch", [
    ("cnn-1-1.0_25_5", "cnn-1-1.0", 25.0, 5),
    ("cnn-2-1.0_0.5_10", "cnn-2-1.0", 0.5, 10),
    ("cnn-4-20.0_mgda_0", "cnn-4-20.0", "mgda", 0),
    ("my_cnn_mgda:norm_3", "my_cnn", "mgda:norm", 3),           # the classifier's own underscores stay its own
])
def test_a_step2_cells_folder_name_is_built_and_parsed_in_one_place(name, classifier, weight, step1_epoch):
    cell = Step2Cell.parse(name)
    assert cell == Step2Cell(classifier, ConfusionWeight(weight), step1_epoch) and cell.folder_name() == name


def test_confusion_weights_parse_print_and_sort():
    weights = [ConfusionWeight.parse(given) for given in ("mgda:norm", 25, "0.5", "mgda", 0)]
    assert [str(w) for w in sorted(weights, key=ConfusionWeight.order)] == ["0", "0.5", "25", "mgda", "mgda:norm"]
    assert ConfusionWeight.parse("25").value == 25.0 and ConfusionWeight.parse("mgda").mgda
    for bad in ("-3", "inf", "sometimes", None):
        with pytest.raises(ValueError):
            ConfusionWeight.parse(bad)
    with pytest.raises(UserInputError, match="not a step-2 cell's folder"):
        Step2Cell.parse("cnn-1-1.0_25")


def strokes(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """28x28 uint8 '1's (a slanted bar) and '7's (a top bar and a diagonal), random thickness, slant and place;
    labels 1 and 7 alternate."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:28, 0:28]
    images, labels = np.zeros((count, 28, 28)), np.where(np.arange(count) % 2 == 0, 1, 7)
    for i, label in enumerate(labels):
        thickness, slant, shift = rng.uniform(1.0, 2.5), rng.uniform(-0.3, 0.3), rng.uniform(-3, 3)
        if label == 1:
            stroke = np.abs(xx - (14 + shift + slant * (yy - 14))) < thickness
            stroke &= (yy > 4) & (yy < 24)
        else:
            top = (np.abs(yy - (6 + shift / 2)) < thickness) & (xx > 7) & (xx < 21)
            diagonal = np.abs(xx - (20 - 0.5 * (yy - 6) + slant * 3)) < thickness
            stroke = top | (diagonal & (yy > 6) & (yy < 24))
        images[i] = 255 * stroke
    return images.astype(np.uint8), labels.astype(np.uint8)


@pytest.fixture(scope="module")
def strokes_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("gasten")
    raw = folder / "data/MNIST/raw"
    for split, count, seed in (("train", 384, 1), ("t10k", 200, 2)):
        images, labels = strokes(count, seed)
        write_idx(raw / f"{split}-images-idx3-ubyte", images)
        write_idx(raw / f"{split}-labels-idx1-ubyte", labels)
    done = run(CLASSIFIERS, "--dataset_name", "MNIST", "--pos", "7", "--neg", "1", "--nf", "1", "2", "--epochs", "20",
               "--lr", "0.01", "--device", "cpu", cwd=folder)
    assert done.returncode == 0, done.stderr
    config = folder / "tiny.yaml"
    config.write_text("dataset: {name: mnist, pos: 7, neg: 1}\ntraining: {batch_size: 16}\n"
                      "test_noise_samples: 512\n"
                      "step1: {epochs: 4, checkpoint_every: 2}\n"
                      "step2: {epochs: 3, checkpoint_every: 2, step1_epochs: [last], weights: [0, 25, mgda],"
                      " classifiers: [cnn-1-20.0]}\n")
    done = run(TRAIN, "--config", str(config), "--device", "cpu", cwd=folder)
    assert done.returncode == 0, done.stderr
    assert "training the feature CNN of FID (own features) on all of mnist" in done.stderr      # not silently
    return folder


def test_classifiers_end_to_end(strokes_run):
    folder = strokes_run / "Results/gasten/classifiers/mnist_7v1"
    for name in ("cnn-1-20.0", "cnn-2-20.0"):
        settings = json.loads((folder / name / "settings.json").read_text())
        assert settings["nf"] == int(name[4]) and 0.9 < settings["test_accuracy"] <= 1   # strokes are easy
        history = settings["validation_loss"]
        assert settings["best_epoch"] == int(np.argmin(history)) + 1 and (folder / name / "classifier.pt").is_file()
        assert len(history) == 20 or len(history) - settings["best_epoch"] == 3          # early stopping, patience 3
    assert (strokes_run / "Figures/gasten/classifiers_mnist_7v1.png").is_file()


def test_gasten_end_to_end_and_confusion_lowers_acd(strokes_run):
    run_folder = strokes_run / "Results/gasten/tiny"
    assert sorted(epoch_folders(run_folder / "step1")) == [0, 2, 4]                # every 2 epochs, and epoch 0
    cells = {path.name for path in (run_folder / "step2").iterdir()}
    assert cells == {"cnn-1-20.0_0_4", "cnn-1-20.0_25_4", "cnn-1-20.0_mgda_4"}    # step-1 epoch 'last' is 4
    assert sorted(epoch_folders(run_folder / "step2/cnn-1-20.0_25_4")) == [2, 3]   # every 2 epochs, and the last
    final = {row["weight"]: row for row in read_metrics_csv(run_folder / "metrics.csv")}
    assert set(final) == {"0", "25", "mgda"}
    assert final["25"]["acd"] < final["0"]["acd"] - 0.15            # the confusion term moves G to the boundary
    assert 0 <= final["mgda"]["mgda_s"] <= 1
    rows = read_metrics_csv(run_folder / "step2/cnn-1-20.0_25_4/metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3] and all(r["fid_own_features"] > 0 for r in rows)
    for name in ("step1_samples", "step2_cnn-1-20.0_25_4_samples", "step2_cnn-1-20.0_25_4_histogram",
                 "fid_against_acd"):
        assert (strokes_run / "Figures/gasten/tiny" / f"{name}.png").is_file()


def test_the_acd_is_taken_over_the_first_test_noise_samples(strokes_run):
    """The fixture's config scores the first 512 of the 2048 cached noise vectors: the epoch-3 ACD of a step-2
    cell is mean |0.5 - p| over the images of exactly those, not of all 2048."""
    cell = strokes_run / "Results/gasten/tiny/step2/cnn-1-20.0_25_4"
    generator = make_gan("gan", torch.device("cpu"), seed=0).generator
    generator.load_state_dict(torch.load(cell / "epoch_03/generator.pt", weights_only=True))
    classifier = load_classifier(strokes_run / "Results/gasten/classifiers/mnist_7v1/cnn-1-20.0", torch.device("cpu"))
    noise = torch.load(strokes_run / "Results/gasten/test_noise_0.pt", weights_only=True)
    assert noise.shape == (2048, 64)
    with torch.no_grad():
        p = classifier(generator.eval()(noise)).flatten().double()
    recorded = float(read_metrics_csv(cell / "metrics.csv")[-1]["acd"])
    assert recorded == pytest.approx(float((0.5 - p[:512]).abs().mean()), abs=1e-5)
    assert recorded != pytest.approx(float((0.5 - p).abs().mean()), abs=1e-4)


def test_an_interrupted_step1_resumes_exactly(strokes_run, tmp_path):
    """A run stopped after epoch 1 and resumed to epoch 2 ends where the uninterrupted run ended."""
    config = strokes_run / "tiny.yaml"
    classifier = strokes_run / "Results/gasten/classifiers/mnist_7v1/cnn-1-20.0"
    common = ["--config", str(config), "--device", "cpu", "--step", "1", "--results_dir", str(tmp_path / "R"),
              "--figures_dir", str(tmp_path / "F"), "--data_root", str(strokes_run / "data"),
              "--set", f"step2.classifiers=[{classifier}]"]
    first = run_in_process(TRAIN, *common, "--set", "step1.epochs=1", "--set", "name=tiny", cwd=strokes_run)
    assert first.returncode == 0, first.stderr
    resumed = run_in_process(TRAIN, *common, "--set", "step1.epochs=2", "--set", "name=tiny", cwd=strokes_run)
    assert resumed.returncode == 0 and "resuming" in resumed.stdout, resumed.stderr
    ours = torch.load(tmp_path / "R/gasten/tiny/step1/epoch_02/generator.pt", weights_only=True)
    theirs = torch.load(strokes_run / "Results/gasten/tiny/step1/epoch_02/generator.pt", weights_only=True)
    for name in theirs:
        torch.testing.assert_close(ours[name], theirs[name])


def adam_steps(checkpoint: Path) -> tuple[int, int]:
    """The Adam step counts of G and D saved in a checkpoint (0 for a state never stepped)."""
    saved = torch.load(checkpoint / "optimizers.pt", weights_only=True)
    return tuple(int(saved[net]["state"][0]["step"]) if saved[net]["state"] else 0
                 for net in ("generator", "discriminator"))


def test_load_gan_weights_only_leaves_the_optimizers_fresh(tmp_path):
    images = torch.rand(8, 1, 28, 28) * 2 - 1
    gan = make_gan("gan", torch.device("cpu"), seed=0)
    train_epoch(gan, images, batch_size=4, noise_rng=torch.Generator().manual_seed(0), progress=False)  # 2 steps
    save_gan(gan, tmp_path / "epoch_01", {})
    fresh = load_gan(make_gan("gan", torch.device("cpu"), seed=1), tmp_path / "epoch_01", optimizers=False)
    assert not fresh.generator_optimizer.state and not fresh.discriminator_optimizer.state
    torch.testing.assert_close(fresh.generator.state_dict(), gan.generator.state_dict())
    kept = load_gan(make_gan("gan", torch.device("cpu"), seed=1), tmp_path / "epoch_01")
    assert {int(state["step"]) for state in kept.generator_optimizer.state.values()} == {2}


def test_step2_starts_fresh_optimizers_and_resumes_its_own(strokes_run):
    """384 training strokes in batches of 16: 24 Adam steps per epoch, 96 in the 4 epochs of step 1. A step-2
    cell starts from 0 steps (fresh optimisers), from 96 with keep_optimizer_state, and a resumed cell goes on
    from its own count."""
    run_folder = strokes_run / "Results/gasten"
    assert adam_steps(run_folder / "tiny/step1/epoch_04") == (96, 96)
    assert adam_steps(run_folder / "tiny/step2/cnn-1-20.0_25_4/epoch_02") == (48, 48)
    cell = ["--config", "tiny.yaml", "--device", "cpu", "--step", "2", "--step1_run", "Results/gasten/tiny/step1",
            "--step1_epoch", "4", "--classifier", "cnn-1-20.0", "--weight", "25"]
    done = run_in_process(TRAIN, *cell, "--set", "name=kept", "--set", "step2.epochs=1", "--set",
                          "step2.keep_optimizer_state=true", cwd=strokes_run)
    assert done.returncode == 0, done.stderr
    assert adam_steps(run_folder / "kept/step2/cnn-1-20.0_25_4/epoch_01") == (120, 120)
    shutil.copytree(run_folder / "tiny/step2/cnn-1-20.0_25_4", run_folder / "resumed/step2/cnn-1-20.0_25_4")
    done = run_in_process(TRAIN, *cell, "--set", "name=resumed", "--set", "step2.epochs=4", cwd=strokes_run)
    assert done.returncode == 0 and "resuming" in done.stdout, done.stderr
    assert adam_steps(run_folder / "resumed/step2/cnn-1-20.0_25_4/epoch_04") == (96, 96)   # 72 + 24


def test_every_seed_has_its_own_run_folder(strokes_run):
    """--seed 1 trains into tiny_seed1 (and says so), not into seed 0's tiny; a folder of another seed is an
    error, not resumed."""
    done = run_in_process(TRAIN, "--config", "tiny.yaml", "--device", "cpu", "--step", "1", "--seed", "1", "--set",
                          "step1.epochs=1", cwd=strokes_run)
    assert done.returncode == 0 and "resuming" not in done.stdout, done.stderr
    settings = json.loads((strokes_run / "Results/gasten/tiny_seed1/step1/epoch_01/config.json").read_text())
    assert settings["config"]["training"]["seed"] == 1
    assert Path(settings["run_folder"]) == Path("Results/gasten/tiny_seed1")
    assert sorted(epoch_folders(strokes_run / "Results/gasten/tiny/step1")) == [0, 2, 4]
    shutil.copytree(strokes_run / "Results/gasten/tiny/step1", strokes_run / "Results/gasten/mixed_seed1/step1")
    done = run_in_process(TRAIN, "--config", "tiny.yaml", "--device", "cpu", "--step", "1", "--seed", "1", "--set",
                          "name=mixed", cwd=strokes_run)
    assert done.returncode == 2 and "holds a run of seed 0, not 1" in done.stderr


def test_summarize_rebuilds_the_table(strokes_run):
    done = run_in_process(TRAIN, "--summarize", "Results/gasten/tiny", cwd=strokes_run)
    assert done.returncode == 0 and "3 cells" in done.stdout, done.stderr


@pytest.mark.parametrize("args, message", [
    (["--config", "x.yaml", "--step", "2"], "--step 2 runs one cell"),
    ([], "give --config"),
])
def test_flags_are_validated(args, message, capsys):
    import gasten_train
    with pytest.raises(SystemExit):
        gasten_train.parse_args(args)
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--step1_run", "Results/gasten/tiny/step1", "--step1_epoch", "4", "--classifier", "cnn-1-20.0", "--weight", "-3"],
     "a weight must be a finite number >= 0, got '-3'"),
    (["--step1_run", "Results/gasten/tiny/step1", "--step1_epoch", "abc", "--classifier", "cnn-1-20.0", "--weight", "25"],
     "a step-1 epoch is a number >= 0, best or last, got 'abc'"),
])
def test_bad_cell_flags_stop_the_parser(strokes_run, tmp_path, monkeypatch, capsys, flags, message):
    import gasten_train
    monkeypatch.chdir(strokes_run)
    with pytest.raises(SystemExit):
        gasten_train.parse_args(["--config", "tiny.yaml", "--step", "2", "--data_root", str(tmp_path / "no_data"), *flags])
    assert message in capsys.readouterr().err


CELL = ["--step", "2", "--step1_run", "Results/gasten/tiny/step1", "--step1_epoch", "4", "--classifier", "cnn-1-20.0",
        "--weight", "25"]


@pytest.mark.parametrize("flags, message", [
    (CELL[:2] + ["--step1_run", "nope", "--step1_epoch", "last"] + CELL[6:],
     "nope holds no step-1 checkpoints"),
    (CELL[:4] + ["--step1_epoch", "3"] + CELL[6:], "no step-1 checkpoint of epoch 3 in Results/gasten/tiny/step1 "
                                                   "(found [0, 2, 4])"),
    (CELL, None),
    (CELL[:6] + ["--classifier", "cnn-3-20.0"] + CELL[8:], "no classifier cnn-3-20.0"),
    (["--set", "step2.classifiers=[cnn-1-20.0, cnn-9-1.0]"], "no classifier cnn-9-1.0"),
    (["--set", "step2.weights=[0, -3]"], "config field step2.weights: a weight must be a finite number >= 0"),
    (["--set", "step2.step1_epochs=[last, 3]"], "config field step2.step1_epochs: step 1 checkpoints epochs "
                                                "[0, 2, 4], not 3"),
    (["--set", "step1.run=nope"], "nope holds no step-1 checkpoints"),
    (["--set", "step2.keep_optimizer_state=maybe"], "config field step2.keep_optimizer_state: must be true or false"),
    (["--set", "test_noise_samples=4096"], "config field test_noise_samples: must be at most 2048 (the cached test "
                                           "noise), got 4096"),
    (["--inception_weights", "nope.pt"], "--inception_weights nope.pt: no such file"),
    (["--inception_weights", "tiny.yaml"], "--inception_weights tiny.yaml does not hold the weights of the FID "
                                           "Inception network"),
])
def test_user_errors_come_before_any_data_is_loaded(strokes_run, tmp_path, monkeypatch, flags, message):
    """Each mistake, alone in an otherwise runnable command, is a one-line error before the data folder (which
    does not exist) is read or the feature CNN trained."""
    import gasten_train

    def too_early(*args, **kwargs):
        raise AssertionError("data loaded before the error")
    monkeypatch.setattr(gasten_train, "load_pair", too_early)
    monkeypatch.setattr(gasten_train, "feature_cnn", too_early)
    monkeypatch.chdir(strokes_run)
    missing = tmp_path / "no_data"
    args = gasten_train.parse_args(["--config", "tiny.yaml", "--device", "cpu", "--data_root", str(missing),
                                    "--results_dir", "Results", "--figures_dir", str(tmp_path / "F"), *flags])
    if message is None:             # the valid command gets as far as the data
        with pytest.raises(AssertionError, match="data loaded before the error"):
            gasten_train.main(args)
        return
    with pytest.raises(UserInputError) as error:
        gasten_train.main(args)
    assert message in str(error.value) and "\n" not in str(error.value) and not missing.exists()


def test_bad_config_field_is_named(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("step2: {weights: [0, sometimes]}\n")
    done = run(TRAIN, "--config", str(config), "--device", "cpu", cwd=tmp_path)
    assert done.returncode == 2 and "config field step2.weights" in done.stderr


# ----------------------------------------------------------------------------- patterns in ambiguity

def test_medoids_by_hand():
    # cluster 0: points 0, 1, 2 on a line at 0, 1, 3: summed distances 4, 3, 5 -> point 1; cluster 1: 3 and 5
    # (4 is noise): both sums 2, the first wins
    points = np.array([[0.0], [1.0], [3.0], [10.0], [50.0], [12.0]])
    labels = np.array([0, 0, 0, 1, -1, 1])
    assert medoids(points, labels) == {0: 1, 1: 3}


def test_noisy_or_single_clusterings_are_rejected():
    reduced = np.array([[0.0, 0], [0, 1], [10, 0], [10, 1], [5, 5]])
    assert reduced_silhouette(reduced, np.array([0, 0, 1, 1, -1])) > 0.8        # 20% noise: scored without it
    assert reduced_silhouette(reduced, np.array([0, 0, 1, -1, -1])) == -1       # 40% noise: rejected
    assert reduced_silhouette(reduced, np.array([0, 0, 0, 0, 0])) == -1         # one cluster


class Constant(nn.Module):
    """A 'generator' whose image is its noise's first value everywhere, and a 'classifier' reading it back."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.output = nn.Linear(2, 1)

    def forward(self, z):
        return z[:, :1, None, None].expand(-1, 1, 28, 28)

    def embed(self, x):
        return x.flatten(1)[:, :2]


def test_ambiguous_samples_are_the_ones_near_one_half():
    generator, noise = Constant(), torch.randn(40, 64, generator=torch.Generator().manual_seed(3))
    classifier = Constant()
    classifier.forward = lambda x: torch.sigmoid(x.flatten(1)[:, 0])          # C = sigmoid(z_0)
    found = ambiguous_samples(generator, classifier, 40, 0.1, seed=3)
    expected = (torch.sigmoid(noise[:, 0]) - 0.5).abs() <= 0.1
    assert torch.equal(found["kept"], expected) and 0 < int(expected.sum()) < 40
    assert found["embeddings"].shape == (int(expected.sum()), 2)


def test_ambiguity_scripts_end_to_end(strokes_run):
    config = strokes_run / "ambiguity.yaml"
    config.write_text("gasten_run: Results/gasten/tiny\nclassifier: cnn-1-20.0\nweight: 25\nstep1_epoch: 4\n"
                      "step2_epoch: 3\nn_samples: 400\nacd: 0.3\nn_trials: 3\noptions: [pca_gmm, pca_hdbscan]\n")
    for script, device, runner in (("ambiguity_generate_embeddings.py", ["--device", "cpu"], run_in_process),
                                   ("ambiguity_optimize_clustering.py", [], run_in_process),  # scikit-learn, UMAP: CPU
                                   ("ambiguity_prototypes.py", ["--device", "cpu"], run)):    # the last one for real
        done = runner(REPO / script, "--config", str(config), *device, cwd=strokes_run)
        assert done.returncode == 0, done.stderr
    folder = strokes_run / "Results/ambiguity/ambiguity"
    found, clustering = np.load(folder / "embeddings.npz"), np.load(folder / "clustering.npz")
    assert np.all(np.abs(found["probabilities"] - 0.5) <= 0.3) and len(found["embeddings"]) == len(found["images"])
    labels = clustering["labels"]
    chosen = np.load(folder / "prototypes.npz")
    assert sorted(chosen["prototype_clusters"].tolist()) == sorted(set(labels.tolist()) - {-1})   # one per cluster
    assert all(labels[i] == c for i, c in zip(chosen["prototype_indices"], chosen["prototype_clusters"]))
    for name in ("prototypes_saliency", "prototypes_gradient_shap", "map_2d", "baseline_real", "cluster_0"):
        assert (strokes_run / "Figures/ambiguity/ambiguity" / f"{name}.png").is_file()


@pytest.mark.parametrize("module", ["gasten_train_classifiers", "gasten_train", "gasten_summarize_seeds",
                                    "gasten_step2_diagnostics", "ambiguity_patterns", "ambiguity_generate_embeddings",
                                    "ambiguity_optimize_clustering", "ambiguity_prototypes"])
def test_help_explains_every_flag(module, capsys):
    import importlib
    import re
    with pytest.raises(SystemExit) as exit_status:
        importlib.import_module(module).parse_args(["--help"])
    help_text = capsys.readouterr().out
    assert exit_status.value.code == 0 and "--results_dir" in help_text and "--figures_dir" in help_text
    entries = re.split(r"\n  (?=-)", help_text.split("options:")[1])[1:]
    for entry in entries:
        words = [w for w in entry.split() if not (w.startswith(("-", "{", "[")) or w.rstrip(",]").isupper())]
        assert len(words) >= 3, entry
