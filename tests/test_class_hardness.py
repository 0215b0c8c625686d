"""Class-hardness simulations: the step schedule, the config's checks, overlap matrices by hand, batched runs
against one run at a time, what is saved, and the plots. The data's tests are test_class_hardness_data.py."""
import math
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
import yaml

from conftest import REPO, run_in_process
from hardness.class_hardness import build_model, cosine_matrix, evaluation_steps, simulate, static_overlap, train_group
from hardness.class_hardness_config import SCHEMA, load_config
from hardness.class_hardness_data import load_simulation_data
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


@pytest.mark.parametrize("script", [SIMULATE, PLOT])
def test_help_explains_every_flag(script):
    done = run_in_process(script, "--help", cwd=REPO)
    assert done.returncode == 0 and "--results_dir" in done.stdout and "--figures_dir" in done.stdout
    for entry in done.stdout.split("options:")[1].split("\n  -")[1:]:
        flag, _, explanation = entry.strip().partition("  ")
        described = len(explanation.split()) >= 3 or len(entry.split("\n", 1)[-1].split()) >= 3
        assert described, f"flag without help: -{entry}"


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
