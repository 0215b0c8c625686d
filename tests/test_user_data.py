"""The user's own data: folder:, npz: and csv: sources, the folder cache, the memory estimate and the one-line
errors of bad data; every file here is written by the test itself."""
import argparse
import csv
import importlib.util
import os
import re
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, synthetic_blobs, write_mnist_layout
from hardness import memory
from hardness.cli import (TORCHVISION_ROOT, FieldError, UserInputError, add_common_arguments, add_dataset_arguments,
                          add_shared_arguments, budget_share_or_count)
from hardness.data import dataset_label, load_dataset, load_dataset_from_args, load_source
from hardness.memory import RunDescription
from hardness.user_data import SourceOptions
from hardness.engine import train_simple_nns
from hardness.identifiers import budget_counts
from neural_networks import ResNet18

CPU = torch.device("cpu")


def flags(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_dataset_arguments(parser)
    add_common_arguments(parser)
    return parser.parse_args(list(argv))


def standardised(values: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    mean = values.mean(axis=axes, keepdims=True)
    return (values - mean) / np.sqrt(values.var(axis=axes, ddof=1, keepdims=True) + 1e-9)


def write_folder(root: Path, pixels: dict[str, list[np.ndarray]]) -> None:
    for class_name, images in pixels.items():
        (root / class_name).mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(images):
            Image.fromarray(image).save(root / class_name / f"{i}.png")


@pytest.fixture
def pets(tmp_path: Path) -> tuple[Path, dict[str, list[np.ndarray]]]:
    """Two classes of 3 greyscale 4x5 images, plus one RGB image of 6x6 in 'dog' (converted and resized)."""
    rng = np.random.default_rng(0)
    pixels = {name: [rng.integers(0, 256, (4, 5), dtype=np.uint8) for _ in range(3)] for name in ("dog", "cat")}
    write_folder(tmp_path / "pets", pixels)
    Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(tmp_path / "pets/dog/rgb.png")
    (tmp_path / "pets/cat/notes.txt").write_text("not an image")
    return tmp_path / "pets", pixels


def test_folder_loads_in_imagefolder_order_converted_to_the_majority(pets, tmp_path, capsys):
    root, pixels = pets
    dataset = load_dataset_from_args(flags("--dataset_name", f"folder:{root}", "--data_root", str(tmp_path / "d"),
                                           "--subset_size", "7", "--seed", "3"), CPU)
    # classes sorted (cat before dog); files sorted within a class; the text file ignored
    files = ["cat/0.png", "cat/1.png", "cat/2.png", "dog/0.png", "dog/1.png", "dog/2.png", "dog/rgb.png"]
    order = np.random.RandomState(3).permutation(7)
    assert dataset.name == "pets" and dataset.class_names == ["cat", "dog"]
    assert dataset.indices.tolist() == order.tolist()
    assert dataset.sample_ids == [files[i] for i in order]
    assert dataset.labels.tolist() == [int(files[i].startswith("dog")) for i in order]
    assert dataset.data.shape == (7, 1, 4, 5) and not dataset.is_table
    # the six greyscale images as they are, the RGB one as PIL converts and resizes it; then standardised
    rgb = Image.open(root / "dog/rgb.png").convert("L").resize((5, 4), Image.Resampling.BILINEAR)
    raw = np.stack([*pixels["cat"], *pixels["dog"], np.asarray(rgb)]).astype(np.float64)[order] / 255
    np.testing.assert_allclose(dataset.data[:, 0].numpy(), standardised(raw, (0, 1, 2)), atol=1e-5)
    assert "1 converted from RGB, 1 resized" in capsys.readouterr().err


def test_folder_channels_and_size_flags(pets, tmp_path):
    root, pixels = pets
    dataset = load_dataset_from_args(flags("--dataset_name", f"folder:{root}", "--data_root", str(tmp_path / "d"),
                                           "--channels", "3", "--image_size", "2", "3", "--dataset_label", "my+pets"),
                                     CPU)
    assert dataset.name == "my+pets" and dataset.data.shape == (7, 3, 2, 3)
    grey = Image.fromarray(pixels["cat"][0]).convert("RGB").resize((3, 2), Image.Resampling.BILINEAR)
    raw = np.stack([np.asarray(Image.open(root / f).convert("RGB").resize((3, 2), Image.Resampling.BILINEAR))
                    for f in ["cat/0.png", "cat/1.png", "cat/2.png", "dog/0.png", "dog/1.png", "dog/2.png",
                              "dog/rgb.png"]]).astype(np.float64).transpose(0, 3, 1, 2) / 255
    assert np.array_equal(raw[0].transpose(1, 2, 0) * 255, np.asarray(grey))
    expected = standardised(raw, (0, 2, 3))[dataset.indices.numpy()]
    np.testing.assert_allclose(dataset.data.numpy(), expected, atol=1e-5)


def test_folder_cache_is_read_and_decoded_again_after_a_file_is_touched(pets, tmp_path, capsys):
    root, pixels = pets
    args = flags("--dataset_name", f"folder:{root}", "--data_root", str(tmp_path / "d"), "--seed", "1")
    first = load_dataset_from_args(args, CPU)
    assert "decoded with" in capsys.readouterr().err
    caches = list((tmp_path / "d/decoded_folders").rglob("*.npz"))
    assert len(caches) == 1
    second = load_dataset_from_args(args, CPU)
    assert "read from the cache" in capsys.readouterr().err
    assert torch.equal(first.data, second.data) and first.sample_ids == second.sample_ids
    # a file changes (same size, new pixels, new modification time): decoded again, the old decoding removed
    Image.fromarray(255 - pixels["cat"][1]).save(root / "cat/1.png")
    status = (root / "cat/1.png").stat()
    os.utime(root / "cat/1.png", ns=(status.st_atime_ns, status.st_mtime_ns + 10**9))
    third = load_dataset_from_args(args, CPU)
    assert "decoded with" in capsys.readouterr().err
    assert not torch.equal(first.data, third.data)
    assert list((tmp_path / "d/decoded_folders").rglob("*.npz")) != caches
    assert len(list((tmp_path / "d/decoded_folders").rglob("*.npz"))) == 1
    # touching alone (same bytes) also decodes again
    os.utime(root / "dog/0.png", ns=(status.st_atime_ns, status.st_mtime_ns + 2 * 10**9))
    load_dataset_from_args(args, CPU)
    assert "decoded with" in capsys.readouterr().err


def test_unreadable_images_stop_the_run_or_are_skipped_and_counted(pets, tmp_path, capsys):
    root, _ = pets
    whole = (root / "dog/0.png").read_bytes()
    (root / "dog/truncated.png").write_bytes(whole[:len(whole) // 2])
    (root / "cat/garbage.png").write_bytes(b"this is no image")
    args = flags("--dataset_name", f"folder:{root}", "--data_root", str(tmp_path / "d"))
    with pytest.raises(UserInputError, match=r"cat/garbage.png cannot be decoded: .*\(and 1 more\).*--skip_unreadable"):
        load_dataset_from_args(args, CPU)
    assert not (tmp_path / "d/decoded_folders").exists() or not list((tmp_path / "d").rglob("*.npz"))
    args.skip_unreadable = True
    dataset = load_dataset_from_args(args, CPU)
    assert "skipped 2 unreadable image(s)" in capsys.readouterr().err
    assert len(dataset.labels) == 7 and not {"cat/garbage.png", "dog/truncated.png"} & set(dataset.sample_ids)


@pytest.mark.parametrize("layout, message", [
    ({"cat": 2, "dog": 0}, "class folder {root}/dog holds no images"),
    ({"cat": 2}, "folder:{root} holds 1 class folder(s)"),
])
def test_bad_folders_are_one_line_errors(tmp_path, layout, message):
    root = tmp_path / "bad"
    for name, count in layout.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(np.zeros((3, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    with pytest.raises(UserInputError, match=re.escape(message.format(root=root))):
        load_dataset_from_args(flags("--dataset_name", f"folder:{root}", "--data_root", str(tmp_path / "d")), CPU)
    assert not (tmp_path / "d").exists()


def test_npz_images_ids_and_class_names(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (6, 3, 2), dtype=np.uint8)
    np.savez(tmp_path / "arrays.npz", x=x, y=np.array([2, 0, 1, 2, 0, 1]), ids=np.array([f"s{i}" for i in range(6)]),
             class_names=np.array(["a", "b", "c"]))
    dataset = load_dataset_from_args(flags("--dataset_name", f"npz:{tmp_path}/arrays.npz", "--subset_size", "4"), CPU)
    order = np.random.RandomState(0).permutation(6)[:4]
    assert dataset.name == "arrays" and dataset.class_names == ["a", "b", "c"]
    assert dataset.sample_ids == [f"s{i}" for i in order]
    assert dataset.labels.tolist() == np.array([2, 0, 1, 2, 0, 1])[order].tolist()
    assert dataset.data.shape == (4, 1, 3, 2)
    np.testing.assert_allclose(dataset.data[:, 0].numpy(), standardised(x[order] / 255, (0, 1, 2)), atol=1e-5)


def test_npz_features_without_names_take_the_distinct_labels(tmp_path, capsys):
    x = np.array([[1.0, 10.0], [2.0, 10.0], [4.0, 30.0], [5.0, 50.0]])
    np.savez(tmp_path / "table.npz", x=x, y=np.array([7, 3, 7, 3], dtype=np.uint8))
    dataset = load_dataset_from_args(flags("--dataset_name", f"npz:{tmp_path}/table.npz", "--subset_size", "9"), CPU)
    assert "--subset_size 9 is more than its 4 samples; using all 4" in capsys.readouterr().err
    order = np.random.RandomState(0).permutation(4)
    assert dataset.class_names == ["3", "7"] and dataset.labels.tolist() == [[1, 0, 1, 0][i] for i in order]
    assert dataset.sample_ids == [str(i) for i in order] and dataset.is_table
    np.testing.assert_allclose(dataset.data.numpy(), standardised(x[order], (0,)), atol=1e-5)
    assert dataset.feature_names is None
    np.savez(tmp_path / "named.npz", x=x, y=np.array([7, 3, 7, 3]), feature_names=np.array(["length", "mass"]))
    named = load_dataset_from_args(flags("--dataset_name", f"npz:{tmp_path}/named.npz"), CPU)
    assert named.feature_names == ["length", "mass"]


@pytest.mark.parametrize("arrays, message", [
    ({"x": np.zeros((4, 2))}, "has no array 'y'"),
    ({"x": np.zeros((4, 2)), "y": np.array([0.0, 1.0, 0.0, 1.0])}, "y holds float64 values; it must hold integer"),
    ({"x": np.array([[0.0], [np.nan], [1.0], [2.0]]), "y": np.array([0, 1, 0, 1])}, "sample 1 is nan"),
    ({"x": np.array([[0.0], [np.inf], [1.0], [2.0]]), "y": np.array([0, 1, 0, 1])}, "sample 1 is inf"),
    ({"x": np.zeros((4, 2)), "y": np.array([0, 0, 0, 0])}, "holds a single class"),
    ({"x": np.zeros((4, 2)), "y": np.array([0, 1, 0, 1]), "class_names": np.array(["a", "b", "c"])},
     "class\\(es\\) c have no samples"),
    ({"x": np.zeros((4, 2)), "y": np.array([0, 1, 0, 1]), "ids": np.array(["a", "b", "a", "c"])},
     "sample id 'a' names 2 samples"),
    ({"x": np.zeros((4, 2)), "y": np.array([0, 1, 0, 1]), "feature_names": np.array(["a", "b", "c"])},
     "feature_names is shaped \\[3\\]; it names the columns of a table x \\[N, D\\], so it must be \\[D\\]"),
])
def test_bad_npz_files_are_one_line_errors(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(UserInputError, match=f"npz:{tmp_path}/bad.npz.*{message}"):
        load_dataset_from_args(flags("--dataset_name", f"npz:{tmp_path}/bad.npz"), CPU)


def test_csv_names_ids_and_features(tmp_path):
    (tmp_path / "flowers.csv").write_text("name,petal,kind,sepal\nf1,1.5,iris,3\nf2,2.5,rose,3\nf3,4,iris,9\n")
    dataset = load_dataset_from_args(flags("--dataset_name", f"csv:{tmp_path}/flowers.csv", "--label_column", "kind",
                                           "--id_column", "name", "--seed", "2"), CPU)
    order = np.random.RandomState(2).permutation(3)
    assert dataset.name == "flowers" and dataset.class_names == ["iris", "rose"]
    assert dataset.sample_ids == [["f1", "f2", "f3"][i] for i in order]
    assert dataset.labels.tolist() == [[0, 1, 0][i] for i in order]
    table = np.array([[1.5, 3.0], [2.5, 3.0], [4.0, 9.0]])[order]
    np.testing.assert_allclose(dataset.data.numpy(), standardised(table, (0,)), atol=1e-5)
    assert dataset.feature_names == ["petal", "sepal"]                       # the header, label and id left out
    np.testing.assert_array_equal(dataset.table_values.numpy(), table)      # as read, for the report


@pytest.mark.parametrize("text, extra, message", [
    ("a,label\n1,x\n2,y\n", ["--label_column", "kind"], "has no column 'kind' \\(--label_column\\); its columns are a, label"),
    ("a,b,label\n1,2,x\n3,big,y\n", [], "column 'b' is not numeric \\(line 3 holds 'big'\\)"),
    ("a,b,label\n1,2,x\n3,nan,y\n", [], "column 'b', row 2 is nan"),
    ("a,b,label\n1,2,x\n3,-inf,y\n", [], "column 'b', row 2 is -inf"),
    ("a,label\n1,x\n2,x\n", [], "holds a single class"),
])
def test_bad_csv_files_are_one_line_errors(tmp_path, text, extra, message):
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(UserInputError, match=f"csv:{tmp_path}/bad.csv.*{message}"):
        load_dataset_from_args(flags("--dataset_name", f"csv:{tmp_path}/bad.csv", *extra), CPU)


def test_memory_estimate_stops_before_loading(pets, tmp_path, monkeypatch):
    root, _ = pets
    monkeypatch.setattr(memory, "free_memory_bytes", lambda device: 1000)
    with pytest.raises(UserInputError, match=r"7 samples of pets shaped \[1, 4, 5\] .* give a smaller --subset_size$"):
        load_dataset_from_args(flags("--dataset_name", f"folder:{root}", "--data_root", str(tmp_path / "d")), CPU)
    assert not (tmp_path / "d").exists()   # nothing decoded, nothing cached
    with pytest.raises(UserInputError, match=r"--subset_size or a --batch_size \(e.g. 128\)$"):
        load_dataset_from_args(flags("--dataset_name", f"folder:{root}"), CPU, run=RunDescription("ResNet"))
    np.savez(tmp_path / "a.npz", x=np.zeros((4, 2)), y=np.array([0, 1, 0, 1]))
    with pytest.raises(UserInputError, match="give a smaller --subset_size"):
        load_dataset_from_args(flags("--dataset_name", f"npz:{tmp_path}/a.npz"), CPU)


def test_memory_estimate_counts_the_data_and_the_networks():
    """1000 of 2000 samples of 1 x 4 x 5 on the CPU: 4 (float32) + 8 (float64) bytes per used value and 1 per
    source value; 3 SimpleNNs of 2 x 20 units: (3 * 40 + 64) * 4 bytes per network and sample and 12 bytes per
    first-layer weight."""
    expected = 1000 * 20 * 12 + 2000 * 20 + 3 * 1000 * (3 * 40 + 64) * 4 + 3 * 20 * 20 * 12
    assert memory.estimated_bytes(2000, (1, 4, 5), 1000, CPU, RunDescription("SimpleNN", 3)) == expected
    resnet = memory.estimated_bytes(2000, (1, 4, 5), 1000, CPU, RunDescription("ResNet", 3, 10))
    assert resnet == 1000 * 20 * 12 + 2000 * 20 + 16 * 11_200_000 + 7300 * 20 * 10


def test_a_run_that_trains_nothing_counts_the_data_and_names_the_source(tmp_path, monkeypatch):
    """RunDescription(None): the data only (4 bytes per used value, and on the CPU 1 per source value and 8 per used
    one); a run over the whole source (samples None) is told to take a smaller source, a FieldError of dataset_name."""
    assert memory.estimated_bytes(2000, (1, 4, 5), 1000, CPU, RunDescription(None)) == 1000 * 20 * 12 + 2000 * 20
    assert memory.estimated_bytes(2000, (1, 4, 5), 2000, torch.device("cuda"), RunDescription(None)) == 2000 * 20 * 4
    monkeypatch.setattr(memory, "free_memory_bytes", lambda device: 1000)
    check = memory.memory_check(RunDescription(None), CPU, None, "npz:x.npz")
    with pytest.raises(FieldError, match=r"^400 samples of npz:x.npz shaped \[2\] need about .* give a smaller source$") as error:
        check(400, (2,))
    assert error.value.field == "dataset_name"


def test_errors_about_a_field_are_worded_by_the_caller(tmp_path):
    """A csv's missing label column: --label_column for the scripts, the config key for a config-driven caller."""
    (tmp_path / "t.csv").write_text("a,b,kind\n1,2,x\n3,4,y\n")
    with pytest.raises(FieldError) as error:
        load_source(f"csv:{tmp_path}/t.csv", tmp_path)
    assert error.value.field == "label_column"
    assert str(error.value) == f"csv:{tmp_path}/t.csv has no column 'label' (--label_column); its columns are a, b, kind"
    assert error.value.wording(lambda field: f"dataset.{field}") == (
        f"csv:{tmp_path}/t.csv has no column 'label' (dataset.label_column); its columns are a, b, kind")
    source = load_source(f"csv:{tmp_path}/t.csv", tmp_path, SourceOptions(label_column="kind"))
    assert source.class_names == ["x", "y"] and source.in_train is None and source.values.shape == (2, 2)


def test_shared_flags_take_a_scripts_own_default_and_help():
    parser = argparse.ArgumentParser()
    add_shared_arguments(parser, "subset_size", "data_root", subset_size={"default": 10000}, data_root=TORCHVISION_ROOT)
    assert vars(parser.parse_args([])) == {"subset_size": 10000, "data_root": Path("data")}
    assert "(default 10000)" in parser.format_help() and "torchvision's layout (default ./data)" in parser.format_help()
    with pytest.raises(ValueError, match="changes to flags not declared: \\['seed'\\]"):
        add_shared_arguments(argparse.ArgumentParser(), "device", seed={"default": 1})


def test_resnet_on_a_table_is_a_one_line_error(tmp_path):
    (tmp_path / "t.csv").write_text("a,b,label\n1,2,x\n3,4,y\n")
    with pytest.raises(UserInputError, match="t is a table of 2 features, and a ResNet needs images"):
        load_dataset_from_args(flags("--dataset_name", f"csv:{tmp_path}/t.csv"), CPU, run=RunDescription("ResNet"))


def test_labels_of_sources_and_builtins(tmp_path):
    assert dataset_label("mnist") == "MNIST" and dataset_label("my_pets") == "my_pets"
    assert dataset_label(f"folder:{tmp_path}/my pets/") == "my_pets" and dataset_label("folder:x/v1.2") == "v1.2"
    assert dataset_label("npz:/x/scan.v2.npz") == "scan.v2" and dataset_label("csv:a.csv", "A-1") == "A-1"
    with pytest.raises(UserInputError, match="is a built-in dataset's name"):
        dataset_label("folder:/data/mnist")
    with pytest.raises(UserInputError, match="must be letters, digits"):
        dataset_label("csv:a.csv", "a/b")
    with pytest.raises(UserInputError, match="--dataset_label names your own data"):
        dataset_label("MNIST", "x")


def test_builtins_load_as_before(mnist_root):
    root, _ = mnist_root
    through_flags = load_dataset_from_args(flags("--dataset_name", "mnist", "--data_root", str(root),
                                                 "--subset_size", "30", "--seed", "4"), CPU)
    direct = load_dataset("MNIST", root, 30, 4, CPU)
    assert through_flags.name == "MNIST" and through_flags.sample_ids == direct.sample_ids
    assert torch.equal(through_flags.data, direct.data) and torch.equal(through_flags.indices, direct.indices)
    with pytest.raises(UserInputError, match="--subset_size must be between 1 and 80 for MNIST"):
        load_dataset_from_args(flags("--data_root", str(root), "--subset_size", "81"), CPU)


def test_networks_follow_the_data():
    """A SimpleNN on a table of 7 features and 3 classes; a ResNet-18 on 2-channel 9x11 images and 4 classes."""
    model = train_simple_nns([0, 1], torch.randn(12, 7), torch.arange(12) % 3, 3, epochs=2, progress=False)
    assert [tuple(w.shape) for w in model.weights] == [(2, 20, 7), (2, 20, 20), (2, 3, 20)]
    logits, latent = ResNet18(2, 4)(torch.randn(5, 2, 9, 11))
    assert logits.shape == (5, 4) and latent.shape == (5, 64 * 9 * 11)


def test_budget_is_a_share_or_a_count_per_class():
    sizes = torch.tensor([10, 25, 1])
    assert budget_counts(0.1, sizes).tolist() == [1, 2, 0]          # int(0.1 * size)
    assert budget_counts(2, sizes).tolist() == [2, 2, 1]            # at most the class's size
    assert [budget_share_or_count(text) for text in ("0.25", "3", "3.0")] == [0.25, 3, 3]
    for text in ("0", "1.5", "-2"):
        with pytest.raises(argparse.ArgumentTypeError, match="share in \\(0, 1\\) or a whole count"):
            budget_share_or_count(text)


def export_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("export_noisy_folder", REPO / "scripts/export_noisy_folder.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("noise_type", ["uniform", "pairs"])
def test_export_noisy_folder(mnist_root, tmp_path, noise_type):
    """40 images of a tiny MNIST as PNGs in class folders, int(0.1 * 40) = 4 of them in a wrong class's folder and
    listed in moved.csv; with pairs each moved image goes to the class whose mean image is nearest its own class's."""
    root, written = mnist_root
    script = export_script()
    output = tmp_path / "export"
    folder, moved = script.export(script.parse_args(["--dataset_name", "mnist", "--subset_size", "40", "--seed", "5",
                                                     "--noise_ratio", "0.1",
                                                     "--noise_type", noise_type, "--data_root", str(root),
                                                     "--output", str(output)]))
    assert folder == output and moved == 4
    folders = sorted(path.name for path in output.iterdir() if path.is_dir())
    assert folders == [f"{c}_{name}" for c, name in enumerate(["0 - zero", "1 - one", "2 - two", "3 - three",
                       "4 - four", "5 - five", "6 - six", "7 - seven", "8 - eight", "9 - nine"])]
    files = sorted(path.relative_to(output).as_posix() for path in output.rglob("*.png"))
    subset = np.random.RandomState(5).permutation(80)[:40]
    source = {f"{'train' if i < 60 else 'test'}_{i if i < 60 else i - 60}": i for i in subset.tolist()}
    assert len(files) == 40 and {Path(f).stem for f in files} == set(source)
    with open(output / "moved.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 and list(rows[0]) == ["sample_id", "source_id", "true_class", "given_class"]
    images, labels = written["images"].astype(np.float64), written["labels"]
    means = np.stack([images[subset][labels[subset] == c].mean(0) for c in range(10)])
    for file in files:
        i = source[Path(file).stem]
        assert np.array_equal(np.asarray(Image.open(output / file)), written["images"][i])   # the raw pixels
        row = next((row for row in rows if row["sample_id"] == file), None)
        true = int(file[0]) if row is None else int(row["true_class"][0])
        assert true == labels[i] and (row is None) == (int(file[0]) == labels[i])
        if row is not None and noise_type == "pairs":
            distances = np.linalg.norm((means - means[true]).reshape(10, -1), axis=1)
            distances[true] = np.inf
            assert int(row["given_class"][0]) == distances.argmin()
    dataset = load_dataset_from_args(flags("--dataset_name", f"folder:{output}", "--data_root", str(tmp_path / "d")),
                                     CPU)
    given = dict(zip(dataset.sample_ids, dataset.labels.tolist()))
    assert all(given[row["sample_id"]] == int(row["given_class"][0]) for row in rows)
    with pytest.raises(UserInputError, match="exists; remove it or give another --output"):
        script.export(script.parse_args(["--data_root", str(root), "--output", str(output), "--dataset_name", "MNIST"]))


def test_export_writes_every_injected_type_with_its_manifest(mnist_root, tmp_path):
    """--inject adjacent:0.1 far_ood:0.1 exact_duplicate:0.1 on 40 images: 4 moved to class k + 1, 4 replaced by
    Fashion-MNIST images, 4 copies of 4 other images (8 files in pairs), each listed in injected.csv with its type."""
    root, written = mnist_root
    fashion = write_mnist_layout(root, "FashionMNIST", make=synthetic_blobs)
    script = export_script()
    output = tmp_path / "injected"
    folder, changed = script.export(script.parse_args([
        "--dataset_name", "MNIST", "--subset_size", "40", "--seed", "3", "--inject", "adjacent:0.1", "far_ood:0.1",
        "exact_duplicate:0.1", "--data_root", str(root), "--output", str(output)]))
    with open(output / "injected.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert changed == 16 and list(rows[0]) == ["sample_id", "source_id", "type", "true_class", "given_class",
                                               "duplicate_of"]
    by_type = {kind: [row for row in rows if row["type"] == kind] for kind in ("adjacent", "far_ood", "exact_duplicate")}
    assert [len(by_type[kind]) for kind in by_type] == [4, 4, 8]
    assert all(int(row["given_class"][0]) == (int(row["true_class"][0]) + 1) % 10 for row in by_type["adjacent"])
    for row in by_type["far_ood"]:
        pixels = np.asarray(Image.open(output / row["sample_id"]))
        assert any(np.array_equal(pixels, image) for image in fashion["images"])
    for row in by_type["exact_duplicate"]:
        assert np.array_equal(np.asarray(Image.open(output / row["sample_id"])),
                              np.asarray(Image.open(output / row["duplicate_of"])))
        assert next(r for r in rows if r["sample_id"] == row["duplicate_of"])["duplicate_of"] == row["sample_id"]
    assert len({row["sample_id"] for row in rows}) == 16                                  # on disjoint samples
    with open(output / "moved.csv", newline="") as handle:
        assert {row["sample_id"] for row in csv.DictReader(handle)} == {row["sample_id"] for row in by_type["adjacent"]}


@pytest.mark.parametrize("flags, message", [(["--inject", "sparkle:0.1"], "unknown injection type"),
                                            (["--inject", "blur:1.5"], "must be in (0, 1)"),
                                            (["--inject", "uniform:0.1", "pairs:0.1"], "one mislabelled type")])
def test_export_rejects_bad_injections_in_one_line(capsys, flags, message):
    with pytest.raises(SystemExit):
        export_script().parse_args(flags)
    assert message in capsys.readouterr().err.strip().splitlines()[-1]
