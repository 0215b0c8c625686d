"""Shared test helpers: small MNIST-layout IDX files written by the tests themselves."""
import struct
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX format: magic (0, 0, 0x08 = uint8, number of dims), big-endian int32 sizes, raw bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def synthetic_digits(count: int, seed: int, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """28x28 uint8 images: a fixed random template per class plus noise, with balanced labels."""
    templates = np.random.default_rng(1234).integers(0, 256, size=(num_classes, 28, 28))
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % num_classes
    rng.shuffle(labels)
    images = np.clip(templates[labels] + rng.normal(0, 60, size=(count, 28, 28)), 0, 255)
    return images.astype(np.uint8), labels.astype(np.uint8)


def synthetic_blobs(count: int, seed: int, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """28x28 uint8 images made of 2x2 blocks of 14x14 pixels whose four values are drawn from a Gaussian
    around a fixed centre per class. The classes overlap, so a SimpleNN's class-manifold radii shrink and
    then grow again (an inversion point) within about 100 full-batch epochs, like MNIST's do within 500."""
    centres = np.random.default_rng(4321).normal(size=(num_classes, 4)) * 1.5
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % num_classes
    rng.shuffle(labels)
    blocks = np.clip(128 + 40 * (centres[labels] + rng.normal(size=(count, 4))), 0, 255).reshape(count, 2, 2)
    return np.kron(blocks, np.ones((14, 14))).astype(np.uint8), labels.astype(np.uint8)


def write_mnist_layout(root: Path, name: str = "MNIST", train: int = 60, test: int = 20,
                       make: Callable[[int, int], tuple[np.ndarray, np.ndarray]] = synthetic_digits) -> dict[str, np.ndarray]:
    """Write train and test IDX files (images and labels from `make(count, seed)`) under root/name/raw/
    and return what was written."""
    raw = root / name / "raw"
    train_images, train_labels = make(train, 1)
    test_images, test_labels = make(test, 2)
    write_idx(raw / "train-images-idx3-ubyte", train_images)
    write_idx(raw / "train-labels-idx1-ubyte", train_labels)
    write_idx(raw / "t10k-images-idx3-ubyte", test_images)
    write_idx(raw / "t10k-labels-idx1-ubyte", test_labels)
    return {"images": np.concatenate([train_images, test_images]),
            "labels": np.concatenate([train_labels, test_labels])}


@pytest.fixture
def mnist_root(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path / "data"
    return root, write_mnist_layout(root)
