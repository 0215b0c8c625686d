"""Class-hardness data (hardness/class_hardness_data.py): class maps and classes by name, standardisation, Gaussian
separations, torchvision's layout and its missing-data error; the user's own data (a PNG folder, an npz and a csv
the tests write) with their stratified split, sample ids and field errors."""
import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import run_in_process, write_mnist_layout
from hardness.class_hardness import simulate
from hardness.class_hardness_config import load_config
from hardness.class_hardness_data import class_mapping, gaussian_splits, load_simulation_data, stratified_split
from hardness.config import ConfigError
from test_class_hardness import CPU, DEFAULTS, SIMULATE, config_file, gaussian, run


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
