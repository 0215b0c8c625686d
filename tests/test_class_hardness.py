"""Class-hardness simulations: the step schedule, the config's checks, class maps, Gaussian classes, overlap
matrices by hand, batched runs against one run at a time, what is saved, and the plots; the user's own data
(a PNG folder, an npz and a csv the tests write) with their stratified split, sample ids and field errors."""
import csv
import math
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import REPO, run_in_process, write_mnist_layout
from hardness.class_hardness import build_model, cosine_matrix, evaluation_steps, simulate, static_overlap, train_group
from hardness.class_hardness_config import SCHEMA, load_config
from hardness.class_hardness_data import class_mapping, gaussian_splits, load_simulation_data, stratified_split
from hardness.class_hardness_figures import plot_dynamics
from hardness.config import ConfigError, schema_defaults

DEFAULTS = schema_defaults(SCHEMA)
SIMULATE = REPO / "class_hardness_simulation.py"
PLOT = REPO / "plotting_class_hardness.py"
CONFIGS = REPO / "configs/class_hardness"
CPU = torch.device("cpu")


def run(script: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script), *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def config_file(tmp_path: Path, name: str = "setting", **sections) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(sections))
    return path


@pytest.mark.parametrize("total, points, expected", [
    (4, 5, [0, 1, 2, 4]),
    (1000, 10, [0, 1, 2, 4, 10, 21, 46, 100, 215, 464, 1000]),
    (1, 3, [0, 1]),
])
def test_evaluation_steps(total, points, expected):
    assert evaluation_steps(total, points) == expected


def test_shipped_configs_are_valid():
    names = sorted(path.stem for path in CONFIGS.glob("*.yaml"))
    assert names == ["cifar100_resnet_example", "gaussian_example", "gaussian_separated", "mnist_0v1", "mnist_4v9",
                     "mnist_mlp"]
    for name in names:
        config = load_config(CONFIGS / f"{name}.yaml")
        assert config["output"] == name
    example = load_config(CONFIGS / "gaussian_example.yaml")
    assert example["dataset"]["class_map"] == {0: 0, 2: 1} and example["model"]["width"] == 32
    four_nine, zero_one = load_config(CONFIGS / "mnist_4v9.yaml"), load_config(CONFIGS / "mnist_0v1.yaml")
    assert four_nine["evaluation"] == zero_one["evaluation"] and four_nine["training"] == zero_one["training"]


@pytest.mark.parametrize("sections, overrides, field", [
    ({"model": {"widht": 3}}, [], "model.widht"),
    ({"model": {"width": "wide"}}, [], "model.width"),
    ({"model": {"width": 0}}, [], "model.width"),
    ({"dataset": {"name": "imagenet"}}, [], "dataset.name"),
    ({"dataset": {"class_map": {0: 1, 1: 2}}}, [], "dataset.class_map"),
    ({"training": {"lr": -1}}, [], "training.lr"),
    ({"training": {"optimizer": "rmsprop"}}, [], "training.optimizer"),
    ({}, ["training.epochs=1.5"], "training.epochs"),
    ({}, ["evaluation.steps=[0, -2]"], "evaluation.steps"),
    ({"runs": True}, [], "runs"),
    ({"dataset": {"gaussian": {"chanels": 1}}}, [], "dataset.gaussian.chanels"),
    ({"dataset": {"gaussian": 3}}, [], "dataset.gaussian"),
    ({"dataset": {"std": 1.0, "gaussian": {"std": 2.0}}}, [], "dataset.std: given twice, also as dataset.gaussian.std"),
    ({"dataset": {"classes": [0, True]}}, [], "dataset.classes"),
    ({"model": {"small_input": True, "cifar_stem": False}}, [],
     "model.small_input: given twice, also as model.cifar_stem"),
    ({"model": {"small_input": "yes"}}, [], "model.cifar_stem"),
    ({"model": {"activation": "swish"}}, [], "model.activation"),
    ({"model": {"type": "resnet", "pooling": "none"}}, [], "model.pooling"),
    ({}, ["dataset.gaussian.std=0"], "dataset.std"),
    ({"rnus": 2}, [], "rnus: unknown field; known: dataset, model, training, runs, evaluation, output"),
    ({}, ["training.epoch=2"], "training.epoch: unknown field; known: epochs, batch_size"),
    ({"dataset": {"height": None}}, [], "dataset.height: must be an integer, got None"),
])
def test_bad_config_fields_are_named(tmp_path, sections, overrides, field):
    sections = {**sections, "dataset": {"name": "gaussian", **sections.get("dataset", {})}}
    with pytest.raises(ConfigError, match=f"config field {field}"):
        load_config(config_file(tmp_path, **sections), overrides)


@pytest.mark.parametrize("override, message", [
    ("evaluaton.steps=[1]", "evaluaton: unknown field; known: dataset, model, training, runs, evaluation, output"),
    ("model.widht=4", "model.widht: unknown field; known: type, depth, width, activation, pooling, cifar_stem, "
                      "init, small_input"),
])
def test_a_misspelt_field_is_one_line_naming_it(tmp_path, override, message):
    done = run_in_process(SIMULATE, "--config", str(CONFIGS / "gaussian_example.yaml"), "--set", override,
                          cwd=tmp_path)
    assert done.returncode == 2 and done.stderr == f"error: config field {message}\n"
    assert not (tmp_path / "Results").exists()


def test_a_missing_dataset_name_says_so(tmp_path):
    with pytest.raises(ConfigError, match="config field dataset.name: missing"):
        load_config(config_file(tmp_path, model={"width": 4}))


def test_resnet_pooling_none_says_why(tmp_path):
    with pytest.raises(ConfigError, match="none does not work for resnet: its head and the overlap feature take"):
        load_config(config_file(tmp_path, dataset={"name": "gaussian"}, model={"type": "resnet", "pooling": "none"}))


ORIGINAL_EXAMPLE = """
dataset:
  name: gaussian
  gaussian:
    channels: 1
    height: 8
    width: 8
    num_classes: 3
    mean: 0.0
    std: 1.0
    train_samples_per_class: 20
    test_samples_per_class: 10
  class_map: {0: 0, 2: 1}
model:
  type: mlp
  depth: 1
  width: 32
  activation: relu
training:
  epochs: 1
  batch_size: 10
  lr: 0.01
  optimizer: sgd
runs: 1
evaluation:
  num_points: 5
"""


def test_the_originals_gaussian_example_in_its_own_layout(tmp_path):
    path = tmp_path / "original.yaml"
    path.write_text(ORIGINAL_EXAMPLE)
    config = load_config(path)
    data = load_simulation_data(config["dataset"], Path("."), CPU)
    assert data.train_x.shape == (40, 1, 8, 8) and data.test_x.shape == (20, 1, 8, 8)   # 2 kept classes
    results, steps = simulate(config, data, progress=False)
    assert steps == [0, 1, 2, 4]               # 40 samples / batch 10 = 4 steps; 10^linspace(0, log10 4, 5)
    assert results[0]["overlap_dynamic"].shape == (4, 2, 2)
    flat = yaml.safe_load(ORIGINAL_EXAMPLE)
    flat["dataset"] = {"name": "gaussian", "class_map": {0: 0, 2: 1}, **flat["dataset"]["gaussian"]}
    assert load_config(config_file(tmp_path, "original", **flat)) == config
    assert load_config(CONFIGS / "gaussian_example.yaml") == {**config, "output": "gaussian_example"}


def test_small_input_is_another_name_of_cifar_stem(tmp_path):
    assert load_config(config_file(tmp_path, dataset={"name": "gaussian"}))["model"]["cifar_stem"] is True
    config = load_config(config_file(tmp_path, dataset={"name": "gaussian"}, model={"small_input": False}))
    assert config["model"]["cifar_stem"] is False and "small_input" not in config["model"]
    config = load_config(config_file(tmp_path, dataset={"name": "gaussian"}), ["model.small_input=false"])
    assert config["model"]["cifar_stem"] is False


def test_pooling_defaults_follow_the_model_type(tmp_path):
    for kind, pooling in (("resnet", "avg"), ("cnn", "max")):
        config = load_config(config_file(tmp_path, dataset={"name": "gaussian"}, model={"type": kind}))
        assert config["model"]["pooling"] == pooling


def test_overrides_seed_and_case_insensitive_names(tmp_path):
    path = config_file(tmp_path, dataset={"name": "GAUSSIAN"}, training={"seed": 3})
    config = load_config(path, ["training.lr=0.5", "model.activation=tanh"], seed=7)
    assert config["dataset"]["name"] == "gaussian" and config["training"]["lr"] == 0.5
    assert config["model"]["activation"] == "tanh" and config["training"]["seed"] == 7
    assert config["output"] == "setting" and config["model"]["depth"] == DEFAULTS["model"]["depth"]


def gaussian(**dataset) -> dict:
    return {**DEFAULTS["dataset"], "name": "gaussian", "channels": 1, **dataset}     # channels as validate fills it


def test_class_map_swap_and_classes_in_order():
    """Means 0, 5 and 10 per class: after standardisation the classes stay apart, so every sample's class
    can be read from its values."""
    base = gaussian(num_classes=3, means=[0, 5, 10], std=0.1, train_samples_per_class=4, test_samples_per_class=2)
    plain = load_simulation_data(base, Path("."), CPU)
    swapped = load_simulation_data({**base, "class_map": {0: 1, 1: 0}}, Path("."), CPU)
    kept = plain.train_y < 2
    assert swapped.num_classes == 2 and len(swapped.train_y) == 8
    assert torch.equal(swapped.train_y, 1 - plain.train_y[kept])
    assert (swapped.train_x[swapped.train_y == 1].mean() < swapped.train_x[swapped.train_y == 0].mean())
    ordered = load_simulation_data({**base, "classes": [2, 0]}, Path("."), CPU)
    assert torch.equal(ordered.test_y, torch.tensor([1, 1, 0, 0]))        # class 0 comes first, becomes 1
    assert ordered.train_x[ordered.train_y == 0].mean() > ordered.train_x[ordered.train_y == 1].mean()
    with pytest.raises(ConfigError, match="dataset.classes: label\\(s\\) \\[7\\]"):
        load_simulation_data({**base, "classes": [0, 7]}, Path("."), CPU)


def test_class_names_resolve_to_their_indices():
    names = ["apple", "aquarium_fish", "baby", "bear", "beaver"]
    dataset = {**DEFAULTS["dataset"], "name": "cifar100"}
    labels = torch.tensor([0, 4])
    assert class_mapping({**dataset, "classes": ["bear", "apple", 2]}, labels, names) == {3: 0, 0: 1, 2: 2}
    assert class_mapping({**dataset, "class_map": {"beaver": 1, 0: 0}}, labels, names) == {4: 1, 0: 0}
    with pytest.raises(ConfigError, match="dataset.classes: no class named 'aple' in cifar100; did you mean "
                                          "'apple'\\? its names are 'apple', 'aquarium_fish'"):
        class_mapping({**dataset, "classes": ["aple"]}, labels, names)
    with pytest.raises(ConfigError, match="dataset.classes: class 3 is given twice: as 'bear' and as 3"):
        class_mapping({**dataset, "classes": ["bear", 3]}, labels, names)
    with pytest.raises(ConfigError, match="dataset.classes: gaussian classes have no names"):
        load_simulation_data(gaussian(classes=["apple"]), Path("."), CPU)


def test_mnist_classes_by_torchvision_name(tmp_path):
    write_mnist_layout(tmp_path / "data", "MNIST", train=60, test=20)
    by_name = load_simulation_data({**DEFAULTS["dataset"], "name": "mnist", "classes": ["9 - nine", "4 - four"]},
                                   tmp_path / "data", CPU)
    by_index = load_simulation_data({**DEFAULTS["dataset"], "name": "mnist", "classes": [9, 4]}, tmp_path / "data", CPU)
    assert torch.equal(by_name.train_y, by_index.train_y) and torch.equal(by_name.train_x, by_index.train_x)
    with pytest.raises(ConfigError, match="no class named 'nine' in mnist; did you mean '9 - nine'\\? its names are "
                                          "'0 - zero', .*\\(10 in all\\), or give indices 0-9"):
        load_simulation_data({**DEFAULTS["dataset"], "name": "mnist", "classes": ["nine"]}, tmp_path / "data", CPU)


def test_standardisation_uses_the_training_split_then_shift():
    data = load_simulation_data(gaussian(mean=3.0, std=2.0, shift=0.5, train_samples_per_class=50,
                                         test_samples_per_class=50), Path("."), CPU)
    centred = data.train_x - 0.5
    assert abs(float(centred.mean())) < 1e-5 and abs(float(centred.std(correction=0)) - 1) < 1e-5
    assert abs(float(data.test_x.mean()) - 0.5) < 0.2                 # same statistics, other samples


def test_separation_puts_class_means_that_far_apart():
    data = gaussian(num_classes=4, separation=6.0, std=1e-4, channels=2, height=3, width=3,
                    train_samples_per_class=1, test_samples_per_class=1)
    train_x, train_y, _, _ = gaussian_splits(data)
    distances = torch.cdist(train_x.flatten(1).double(), train_x.flatten(1).double())
    off_diagonal = distances[~torch.eye(4, dtype=torch.bool)]
    torch.testing.assert_close(off_diagonal, torch.full_like(off_diagonal, 6.0), atol=1e-2, rtol=0)


def test_cosine_matrix_by_hand():
    means = torch.tensor([[1., 0.], [1., 1.], [0., 0.], [-2., 0.]], dtype=torch.float64)
    cosine = cosine_matrix(means)
    r = 1 / math.sqrt(2)
    expected = torch.tensor([[1, r, 0, -1], [r, 1, 0, -r], [0, 0, 0, 0], [-1, -r, 0, 1]], dtype=torch.float64)
    keep = torch.tensor([True, True, False, True])
    torch.testing.assert_close(cosine[keep][:, keep], expected[keep][:, keep])
    assert cosine[2].isnan().all() and cosine[:, 2].isnan().all()       # an all-zero mean: NaN, kept


def test_static_overlap_by_hand():
    data = load_simulation_data(gaussian(num_classes=2, means=[1, -1], std=1e-6, channels=1, height=1, width=2,
                                         train_samples_per_class=2, test_samples_per_class=1), Path("."), CPU)
    # standardised: class 0 at (+1, +1), class 1 at (-1, -1): cosine -1
    torch.testing.assert_close(static_overlap(data), torch.tensor([[1., -1.], [-1., 1.]], dtype=torch.float64))


def small_config(tmp_path: Path, **changes) -> dict:
    sections = {"dataset": {"name": "gaussian", "num_classes": 3, "separation": 4.0, "train_samples_per_class": 30,
                            "test_samples_per_class": 20},
                "model": {"type": "mlp", "depth": 1, "width": 16},
                "training": {"epochs": 3, "batch_size": 16, "lr": 0.05}, "runs": 3, "evaluation": {"num_points": 6}}
    for section, values in changes.items():
        sections[section] = {**sections.get(section, {}), **values} if isinstance(values, dict) else values
    return load_config(config_file(tmp_path, **sections))


@pytest.mark.parametrize("model", [{"type": "mlp", "depth": 2, "activation": "tanh"},
                                   {"type": "cnn", "depth": 2, "width": 4, "pooling": "avg"}])
def test_batched_runs_equal_one_run_at_a_time(tmp_path, model):
    config = small_config(tmp_path, model=model)
    data = load_simulation_data(config["dataset"], Path("."), CPU)
    steps = [0, 1, 5, 17]
    together = train_group(config, data, [0, 1, 2], steps, progress=False)
    for run in range(3):
        alone = train_group(config, data, [run], steps, progress=False)[0]
        for key, values in together[run].items():
            np.testing.assert_allclose(values, alone[key], rtol=1e-4, atol=1e-6, err_msg=key)
    assert not np.allclose(together[0]["loss"], together[1]["loss"])            # different initialisations


def test_metrics_overlaps_and_weighted_loss(tmp_path):
    config = small_config(tmp_path)
    data = load_simulation_data(config["dataset"], Path("."), CPU)
    results, steps = simulate(config, data, progress=False)
    assert steps == evaluation_steps(3 * 6, 6) and len(results) == 3
    T, C = len(steps), 3
    shapes = {"steps": (T,), "loss": (T,), "accuracy": (T,), "loss_per_class": (T, C), "accuracy_per_class": (T, C),
              "train_loss": (T,), "train_accuracy": (T,), "train_loss_per_class": (T, C),
              "train_accuracy_per_class": (T, C), "overlap_dynamic": (T, C, C), "overlap_static": (C, C)}
    for arrays in results:
        assert {key: value.shape for key, value in arrays.items()} == shapes
        assert arrays["steps"].dtype == np.int64 and arrays["loss"].dtype == np.float64
        assert arrays["loss_per_class"].dtype == np.float32 and arrays["overlap_dynamic"].dtype == np.float32
        for matrix in [*arrays["overlap_dynamic"], arrays["overlap_static"]]:
            np.testing.assert_allclose(matrix, matrix.T, atol=1e-6)
            np.testing.assert_allclose(np.diag(matrix), 1, atol=1e-5)
            assert (np.abs(matrix) <= 1).all()
        for prefix, counts in (("", torch.bincount(data.test_y)), ("train_", torch.bincount(data.train_y))):
            weights = counts.numpy() / counts.sum().item()
            np.testing.assert_allclose(arrays[f"{prefix}loss_per_class"] @ weights, arrays[f"{prefix}loss"], rtol=1e-5)
            np.testing.assert_allclose(arrays[f"{prefix}accuracy_per_class"] @ weights, arrays[f"{prefix}accuracy"],
                                       rtol=1e-5)


def test_separated_gaussians_are_learnt_and_identical_ones_are_not(tmp_path):
    separated = small_config(tmp_path, training={"epochs": 10},
                             dataset={"train_samples_per_class": 100, "test_samples_per_class": 100})
    learnt, _ = simulate(separated, load_simulation_data(separated["dataset"], Path("."), CPU), progress=False)
    assert min(r["accuracy"][-1] for r in learnt) > 0.85                 # chance is 1/3
    noise = small_config(tmp_path, training={"epochs": 10},
                         dataset={"separation": 0.0, "train_samples_per_class": 100, "test_samples_per_class": 1000})
    chance, _ = simulate(noise, load_simulation_data(noise["dataset"], Path("."), CPU), progress=False)
    assert abs(np.mean([r["accuracy"][-1] for r in chance]) - 1 / 3) < 0.05   # 3000 test samples: std ~0.009


def test_explicit_steps_gain_step_zero(tmp_path):
    config = small_config(tmp_path, evaluation={"steps": [5, 2]})
    _, steps = simulate(config, load_simulation_data(config["dataset"], Path("."), CPU), progress=False)
    assert steps == [0, 2, 5]


def test_cnn_of_depth_zero_is_a_linear_model_of_the_input(tmp_path):
    config = small_config(tmp_path, model={"type": "cnn", "depth": 0, "width": 4})
    model = build_model(config["model"], (1, 8, 8), 3)
    logits, features = model(torch.zeros(2, 1, 8, 8))
    assert logits.shape == (2, 3) and features.shape == (2, 64)          # the flattened 1x8x8 input
    results, _ = simulate(config, load_simulation_data(config["dataset"], Path("."), CPU), progress=False)
    assert np.isfinite(results[0]["loss"]).all()


def resnet_config(tmp_path: Path, **model) -> dict:
    return load_config(config_file(tmp_path, dataset={"name": "gaussian"}, model={"type": "resnet", **model}))["model"]


def test_resnet_activation_and_pooling_replace_relu_and_average_pool(tmp_path):
    network = build_model(resnet_config(tmp_path, activation="gelu", pooling="max"), (3, 8, 8), 4)
    kinds = [type(module) for module in network.modules()]
    assert torch.nn.ReLU not in kinds and torch.nn.AdaptiveAvgPool2d not in kinds and torch.nn.AvgPool2d not in kinds
    assert kinds.count(torch.nn.GELU) == 17                  # the stem's and one per bottleneck (3 + 4 + 6 + 3)
    assert kinds.count(torch.nn.AdaptiveMaxPool2d) == 1
    leaky = build_model(resnet_config(tmp_path, activation="leaky_relu"), (3, 8, 8), 4)
    assert {m.negative_slope for m in leaky.modules() if isinstance(m, torch.nn.LeakyReLU)} == {0.01}


@pytest.mark.parametrize("cifar_stem, kernel, stride, seen", [(True, 3, 1, 32), (False, 7, 2, 224)])
def test_resnet_stems(tmp_path, cifar_stem, kernel, stride, seen):
    network = build_model(resnet_config(tmp_path, cifar_stem=cifar_stem), (1, 32, 32), 2)
    conv = network.net.conv1
    assert conv.kernel_size == (kernel, kernel) and conv.stride == (stride, stride) and conv.in_channels == 1
    assert isinstance(network.net.maxpool, torch.nn.Identity) == cifar_stem
    shapes = []
    conv.register_forward_hook(lambda module, inputs, output: shapes.append(inputs[0].shape))
    logits, features = network.eval()(torch.zeros(2, 1, 32, 32))
    assert shapes == [(2, 1, seen, seen)] and logits.shape == (2, 2) and features.shape == (2, 2048)


def test_steps_beyond_training_and_cnn_depth_are_config_errors(tmp_path):
    config = small_config(tmp_path, evaluation={"steps": [0, 500]})
    with pytest.raises(ConfigError, match="evaluation.steps: step 500 is beyond the 18 optimizer steps"):
        simulate(config, load_simulation_data(config["dataset"], Path("."), CPU), progress=False)
    config = small_config(tmp_path, model={"type": "cnn", "depth": 4})
    with pytest.raises(ConfigError, match="model.depth: 4 poolings leave no pixels of a 8x8 input"):
        simulate(config, load_simulation_data(config["dataset"], Path("."), CPU), progress=False)


def test_scripts_end_to_end(tmp_path):
    """Each script once as a real subprocess (exit 0, and the plotter's exit 2); the other runs in this process."""
    config = CONFIGS / "gaussian_example.yaml"
    done = run(SIMULATE, "--config", str(config), "--device", "cpu", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    run_folder = tmp_path / "Results/class_hardness/gaussian_example/run_0"
    arrays = np.load(run_folder / "metrics.npz")
    assert arrays["steps"].tolist() == [0, 1, 2, 4]                       # 40 samples, batch 10, one epoch
    assert arrays["overlap_dynamic"].shape == (4, 2, 2)
    assert yaml.safe_load((run_folder / "config.yaml").read_text())["dataset"]["class_map"] == {0: 0, 2: 1}
    again = run_in_process(SIMULATE, "--config", str(config), "--device", "cpu", cwd=tmp_path)   # real exit 2: below
    assert again.returncode == 2 and "exists; give --overwrite" in again.stderr
    other = run_in_process(SIMULATE, "--config", str(config), "--device", "cpu", "--set", "output=shifted", "--set",
                           "dataset.shift=1.0", cwd=tmp_path)
    assert other.returncode == 0, other.stderr
    plotted = run(PLOT, "--results", "Results/class_hardness/gaussian_example", "--results", "shifted", cwd=tmp_path)
    assert plotted.returncode == 0, plotted.stderr
    assert "gaussian_example: 1 run(s)" in plotted.stdout and "shifted: 1 run(s)" in plotted.stdout
    twice = run_in_process(PLOT, "--results", "shifted", "--results", "shifted", cwd=tmp_path)
    assert twice.returncode == 2 and "--results names shifted more than once" in twice.stderr
    for name in ("loss_and_overlap", "accuracy_and_overlap", "overlap_dynamic_vs_static"):
        for suffix in (".png", ".pdf"):
            assert (tmp_path / "Figures/class_hardness/gaussian_example_vs_shifted" / f"{name}{suffix}").stat().st_size
    longer = run_in_process(SIMULATE, "--config", str(config), "--device", "cpu", "--set", "output=longer", "--set",
                            "training.epochs=3", cwd=tmp_path)
    assert longer.returncode == 0, longer.stderr
    mismatch = run(PLOT, "--results", "gaussian_example", "longer", cwd=tmp_path)
    assert mismatch.returncode == 2 and "different steps" in mismatch.stderr
    assert not list((tmp_path / "Results").rglob("*.tmp"))


def fake_runs(num_classes: int, runs: int, steps: list[int], level: float) -> list[dict[str, np.ndarray]]:
    T, C = len(steps), num_classes
    return [{"steps": np.array(steps), "loss_per_class": np.full((T, C), level + r, np.float32),
             "overlap_dynamic": np.full((T, C, C), 0.5, np.float32)} for r in range(runs)]


def test_dynamics_figure_has_one_class_legend_and_shared_y():
    steps = [0, 1, 3, 7]
    fig = plot_dynamics({"a": fake_runs(10, 2, steps, 1.0), "b": fake_runs(10, 3, steps, 5.0)}, "loss")
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None] + fig.legends
    assert len(legends) == 1 and [t.get_text() for t in legends[0].get_texts()] == [f"class {c}" for c in range(10)]
    curves = [ax for ax in fig.axes if ax.get_xscale() == "log"]
    assert len(curves) == 2 and curves[0].get_shared_y_axes().joined(curves[0], curves[1])
    low, high = curves[0].get_ylim()
    # a: runs at 1 and 2, mean 1.5 +- standard error 0.5; b: runs at 5, 6, 7, mean 6 +- 1/sqrt(3)
    assert low <= 1.0 and high >= 6 + 1 / math.sqrt(3)
    titles = sorted(ax.get_title() for ax in fig.axes if ax.get_title().startswith("step"))
    assert titles == ["step 0", "step 0", "step 1", "step 1", "step 7", "step 7"]   # first, middle, last of each
    plt.close(fig)


def offline(*args, **kwargs):
    raise RuntimeError("Error downloading:\n<urlopen error offline>")


@pytest.mark.parametrize("name, folder", [("KMNIST", "KMNIST/raw"), ("cifar10", "cifar-10-batches-py")])
def test_missing_torchvision_data_names_the_folder_to_fill(tmp_path, monkeypatch, name, folder):
    import torchvision
    from hardness.cli import UserInputError
    cls = getattr(torchvision.datasets, "CIFAR10" if name == "cifar10" else name)
    monkeypatch.setattr(cls, "download", offline)                     # never touch the network
    with pytest.raises(UserInputError) as error:
        load_simulation_data({**DEFAULTS["dataset"], "name": name.lower()}, tmp_path, CPU)
    message = str(error.value)
    assert "\n" not in message and f"{tmp_path}/{folder}/" in message and "could not download" in message


def test_mnist_classes_from_torchvision_layout(tmp_path):
    write_mnist_layout(tmp_path / "data", "MNIST", train=60, test=20)
    dataset = {**DEFAULTS["dataset"], "name": "mnist", "classes": [4, 9]}
    data = load_simulation_data(dataset, tmp_path / "data", CPU)
    assert data.num_classes == 2 and set(data.train_y.tolist()) == {0, 1}
    assert len(data.train_y) == 12 and len(data.test_y) == 4             # 10 balanced classes: 6 and 2 of each
    assert data.train_x.shape[1:] == (1, 28, 28)


@pytest.mark.parametrize("script", [SIMULATE, PLOT])
def test_help_explains_every_flag(script):
    done = run_in_process(script, "--help", cwd=REPO)
    assert done.returncode == 0 and "--results_dir" in done.stdout and "--figures_dir" in done.stdout
    for entry in done.stdout.split("options:")[1].split("\n  -")[1:]:
        flag, _, explanation = entry.strip().partition("  ")
        assert len(explanation.split()) >= 3 or len(entry.split("\n", 1)[-1].split()) >= 3, f"flag without help: -{entry}"


def test_seeded_simulations_repeat_exactly(tmp_path):
    config = small_config(tmp_path, runs=2)
    data = load_simulation_data(config["dataset"], Path("."), CPU)
    first, _ = simulate(config, data, progress=False)
    again, _ = simulate(config, data, progress=False)
    for ours, theirs in zip(first, again, strict=True):
        for key in ours:
            np.testing.assert_array_equal(ours[key], theirs[key])


def test_resnet_runs_train_one_after_another(tmp_path):
    config = small_config(tmp_path, runs=2, dataset={"channels": 3, "train_samples_per_class": 4,
                                                      "test_samples_per_class": 2},
                          model={"type": "resnet", "small_input": True},
                          training={"epochs": 1, "batch_size": 6, "optimizer": "adam", "lr": 1e-3})
    data = load_simulation_data(config["dataset"], Path("."), CPU)
    results, steps = simulate(config, data, progress=False)
    assert steps == [0, 1, 2] and len(results) == 2
    assert results[0]["overlap_dynamic"].shape == (3, 3, 3) and np.isfinite(results[0]["loss"]).all()
    assert not np.array_equal(results[0]["loss"], results[1]["loss"])


# ----------------------------------------------------------------------------- the user's own data

def test_stratified_split_counts_by_hand():
    """fraction 0.1: a class of 30 holds out ceil(3) = 3 (not the 4 that ceil(0.1 * 30 = 3.0000000000000004)
    gives), one of 7 ceil(0.7) = 1, one of 2 ceil(0.2) = 1; class 3 is not kept and goes nowhere."""
    labels = np.random.default_rng(0).permutation(np.repeat([0, 1, 2, 3], [30, 7, 2, 5]))
    names = ["a", "b", "c", "d"]
    train, test = stratified_split(labels, [2, 0, 1], 0.1, 4, names)
    assert np.bincount(labels[test], minlength=4).tolist() == [3, 1, 1, 0]
    assert np.bincount(labels[train], minlength=4).tolist() == [27, 6, 1, 0]
    assert sorted(np.concatenate([train, test]).tolist()) == np.flatnonzero(labels < 3).tolist()
    assert train.tolist() == sorted(train.tolist()) and test.tolist() == sorted(test.tolist())
    again_train, again_test = stratified_split(labels, [0, 1, 2], 0.1, 4, names)
    assert np.array_equal(again_train, train) and np.array_equal(again_test, test)          # seeded
    assert not np.array_equal(stratified_split(labels, [0, 1, 2], 0.1, 5, names)[1], test)
    train, test = stratified_split(labels, [1], 0.25, 0, names)                          # ceil(1.75) = 2
    assert len(test) == 2 and len(train) == 5
    with pytest.raises(ConfigError, match="dataset.test_fraction: class 'c' has 2 sample\\(s\\), and 0.6 of them"):
        stratified_split(labels, [2], 0.6, 0, names)                                      # ceil(1.2) = 2 of 2


def write_flowers(path: Path) -> dict[str, str]:
    """A table of 41 rows (classes a, b, c with 20, 12 and 9 rows, interleaved), 3 features, ids r0..r40 in
    column row_id, classes in column species; returns each row's class by id."""
    rng = np.random.default_rng(2)
    classes = {f"r{i}": name for i, name in enumerate(rng.permutation(["a"] * 20 + ["b"] * 12 + ["c"] * 9))}
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["f1", "species", "f2", "row_id", "f3"])
        for sample_id, name in classes.items():
            f1, f2, f3 = rng.normal("abc".index(name), 1.0, size=3)
            writer.writerow([f"{f1:.4f}", name, f"{f2:.4f}", sample_id, f"{f3:.4f}"])
    return classes


def flowers_config(tmp_path: Path, **dataset) -> Path:
    return config_file(tmp_path, "flowers_setting",
                       dataset={"name": f"csv:{tmp_path / 'flowers.csv'}", "label_column": "species",
                                "id_column": "row_id", "classes": ["c", "a"], "test_fraction": 0.25, "seed": 4,
                                **dataset},
                       model={"type": "mlp", "depth": 1, "width": 8},
                       training={"epochs": 2, "batch_size": 8, "lr": 0.05}, runs=2, evaluation={"num_points": 3})


def test_a_table_end_to_end_with_its_ids_and_class_names(tmp_path):
    """Classes c (9 rows) and a (20), by name, in that order; test_fraction 0.25 holds out ceil(2.25) = 3 of c
    and ceil(5) = 5 of a."""
    classes = write_flowers(tmp_path / "flowers.csv")
    done = run_in_process(SIMULATE, "--config", str(flowers_config(tmp_path)), "--device", "cpu", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "2 classes, 21 training and 8 test samples" in done.stdout
    assert "final test accuracy per class (mean over runs): c: " in done.stdout
    folder = tmp_path / "Results/class_hardness/flowers_setting"
    samples = np.load(folder / "samples.npz")
    assert samples["class_names"].tolist() == ["c", "a"]
    assert np.bincount(samples["train_labels"]).tolist() == [6, 15]
    assert np.bincount(samples["test_labels"]).tolist() == [3, 5]
    train, test = samples["train_sample_ids"].tolist(), samples["test_sample_ids"].tolist()
    assert sorted(train + test) == sorted(i for i, name in classes.items() if name in "ac")
    assert [classes[i] for i in train] == [["c", "a"][label] for label in samples["train_labels"]]
    assert [classes[i] for i in test] == [["c", "a"][label] for label in samples["test_labels"]]
    resolved = yaml.safe_load((folder / "run_1/config.yaml").read_text())["dataset"]
    assert resolved["test_fraction"] == 0.25 and resolved["label"] == "flowers" and resolved["seed"] == 4
    metrics = np.load(folder / "run_1/metrics.npz")
    assert metrics["overlap_static"].shape == (2, 2) and metrics["loss_per_class"].shape[1] == 2
    assert (tmp_path / "Figures/class_hardness/flowers_setting/accuracy_and_overlap.png").is_file()


def test_a_bad_field_is_one_line_and_writes_nothing(tmp_path):
    """Found once the table is read (the other fields' errors are checked in-process below)."""
    write_flowers(tmp_path / "flowers.csv")
    done = run(SIMULATE, "--config", str(flowers_config(tmp_path)), "--device", "cpu", "--set", "model.type=cnn",
               cwd=tmp_path)
    message = "error: config field model.type: cnn needs images, and the data are a table of 3 features; give mlp"
    assert done.returncode == 2 and done.stderr.strip() == message
    assert not (tmp_path / "Results").exists() and not (tmp_path / "Figures").exists()


def write_pets(folder: Path) -> None:
    """cat/0..5.png and dog/0..4.png, 8x8 greyscale, dogs brighter."""
    rng = np.random.default_rng(3)
    for name, count, level in (("cat", 6, 70), ("dog", 5, 180)):
        (folder / name).mkdir(parents=True)
        for i in range(count):
            pixels = np.clip(rng.normal(level, 40, size=(8, 8)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / name / f"{i}.png")


def test_an_image_folder_split_and_standardised_on_its_training_part(tmp_path):
    """Default test_fraction 0.2: ceil(1.2) = 2 of the 6 cats and ceil(1.0) = 1 of the 5 dogs are held out; the
    pixels are standardised with the training images' own mean and population std, read here with PIL."""
    write_pets(tmp_path / "pets")
    config = load_config(config_file(tmp_path, dataset={"name": f"folder:{tmp_path / 'pets'}"},
                                     model={"type": "cnn", "depth": 1, "width": 4},
                                     training={"epochs": 1, "batch_size": 4}))
    assert config["dataset"]["test_fraction"] == 0.2 and config["dataset"]["label"] == "pets"
    data = load_simulation_data(config["dataset"], tmp_path / "data", CPU)
    assert data.class_names == ["cat", "dog"] and data.train_x.shape == (8, 1, 8, 8)
    assert data.test_ids == sorted(data.test_ids) and len(data.test_ids) == 3             # in the folder's order
    assert [i.split("/")[0] for i in data.test_ids].count("cat") == 2
    every_file = [f"cat/{i}.png" for i in range(6)] + [f"dog/{i}.png" for i in range(5)]
    assert sorted(data.train_ids + data.test_ids) == every_file
    assert [["cat", "dog"][y] for y in data.train_y.tolist()] == [i.split("/")[0] for i in data.train_ids]
    pixels = np.stack([np.asarray(Image.open(tmp_path / "pets" / i), dtype=np.float64) / 255 for i in data.train_ids])
    expected = (pixels - pixels.mean()) / pixels.std()
    np.testing.assert_allclose(data.train_x[:, 0].numpy(), expected, rtol=1e-4, atol=1e-5)
    results, _ = simulate(config, data, progress=False)
    assert np.isfinite(results[0]["loss"]).all() and results[0]["overlap_static"].shape == (2, 2)


def test_an_npz_table_by_class_names_and_only_an_mlp_takes_it(tmp_path):
    ids = np.array([f"s{i}" for i in range(10)])
    y = np.array([0, 1] * 5)
    x = np.random.default_rng(1).normal(size=(10, 4)) + y[:, None]
    np.savez(tmp_path / "cells.npz", x=x, y=y, ids=ids, class_names=np.array(["neg", "pos"]))
    path = config_file(tmp_path, dataset={"name": f"npz:{tmp_path / 'cells.npz'}", "class_map": {"pos": 0, "neg": 1},
                                          "test_fraction": 0.4},
                       training={"epochs": 1, "batch_size": 3})
    data = load_simulation_data(load_config(path)["dataset"], tmp_path, CPU)
    assert data.class_names == ["pos", "neg"] and data.train_x.shape == (6, 4)             # ceil(2.0) = 2 per class
    assert [1 - y[int(i[1:])] for i in data.test_ids] == data.test_y.tolist()              # swapped labels
    torch.testing.assert_close(data.train_x.mean(0), torch.zeros(4), atol=1e-5, rtol=0)    # per column
    torch.testing.assert_close(data.train_x.std(0, correction=0), torch.ones(4), atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match="model.type: resnet needs images, and the data are a table of 4 features"):
        simulate(load_config(path, ["model.type=resnet"]), data, progress=False)


@pytest.mark.parametrize("dataset, message", [
    ({"name": "mnist", "test_fraction": 0.3}, "dataset.test_fraction: applies to folder: and npz: and csv: sources"),
    ({"name": "npz:{tmp}/cells.npz", "label_column": "y"}, "dataset.label_column: applies to csv: sources only"),
    ({"name": "npz:{tmp}/cells.npz", "channels": 3}, "dataset.channels: applies to folder: sources and gaussian"),
    ({"name": "csv:{tmp}/flowers.csv", "test_fraction": 0}, "dataset.test_fraction: must be > 0"),
    ({"name": "csv:{tmp}/flowers.csv", "test_fraction": 1.5}, "dataset.test_fraction: must be below 1"),
    ({"name": "csv:{tmp}/flowers.csv", "label_column": "species", "id_column": "id"},
     "dataset.id_column: csv:.* has no column 'id'; its columns are f1, species, f2, row_id, f3"),
    ({"name": "csv:{tmp}/flowers.csv"}, "dataset.label_column: csv:.* has no column 'label'"),
    ({"name": "csv:{tmp}/flowers.csv", "label_column": 3}, "dataset.label_column: must be a column name"),
    ({"name": "csv:{tmp}/flowers.csv", "label": "../up"}, "dataset.label: must be letters"),
    ({"name": "csv:{tmp}/missing.csv"}, "dataset.name: csv:.*/missing.csv: no such file"),
    ({"name": "npz:"}, "dataset.name: 'npz:' names no path"),
    ({"name": "folder:{tmp}/pets", "channels": 2}, "dataset.channels: a folder's images are converted to 1"),
    ({"name": "folder:{tmp}/pets", "image_size": [8]}, "dataset.image_size: must be \\[height, width\\]"),
    ({"name": "folder:{tmp}/pets", "skip_unreadable": "yes"}, "dataset.skip_unreadable: must be true or false"),
    ({"name": "folder:{tmp}/flowers.csv"}, "dataset.name: folder:.*: no such folder"),
])
def test_bad_user_data_fields_are_named(tmp_path, dataset, message):
    write_flowers(tmp_path / "flowers.csv")
    write_pets(tmp_path / "pets")
    np.savez(tmp_path / "cells.npz", x=np.zeros((4, 2)), y=np.array([0, 1, 0, 1]))
    dataset = {key: value.format(tmp=tmp_path) if isinstance(value, str) else value for key, value in dataset.items()}
    with pytest.raises(ConfigError, match=f"config field {message}"):
        load_config(config_file(tmp_path, dataset=dataset))
