"""Shared test helpers: small MNIST-layout IDX files written by the tests themselves, and a script run in this
process."""
import contextlib
import importlib
import io
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def run_in_process(script: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`python script args` in `cwd`, run in this process instead of a new interpreter (which spends seconds
    importing torch): the script's own `run_script(main, parse_args)` with sys.argv set as the interpreter would
    set it, stdout and stderr captured. The exit status is 0, or that of the SystemExit it raised (2 for a user
    error or a flag argparse refuses), as a subprocess.CompletedProcess. Tests that check a script's real exit
    status keep at least one real subprocess per script."""
    from hardness.cli import run_script
    import matplotlib.pyplot as plt
    module = importlib.import_module(Path(script).stem)
    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = [str(script), *args]
    try:
        with contextlib.chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                run_script(module.main, module.parse_args)
                code = 0
            except SystemExit as exit_status:                  # as the interpreter reports it
                code = exit_status.code if isinstance(exit_status.code, int) else int(exit_status.code is not None)
                if exit_status.code is not None and not isinstance(exit_status.code, int):
                    print(exit_status.code, file=sys.stderr)
    finally:
        sys.argv = argv
        plt.close("all")
    return subprocess.CompletedProcess([sys.executable, str(script), *args], code, out.getvalue(), err.getvalue())


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


@pytest.fixture
def flag_checks_in_process(monkeypatch):
    """hardness.sweep.grid.flag_errors's child processes (one per script: `python -c "...parse_in_child(script)"`, a
    new interpreter and its imports each) answered by parse_in_child in this process instead, with the child's
    stdin, stdout, working folder and sys.argv. Every other subprocess.run runs as usual. The real children are
    exercised by tests/test_sweep.py::test_dry_run_reports_the_cells_whose_flags_their_script_rejects."""
    from hardness.sweep import grid
    real_run = subprocess.run

    def run(command, *args, **kwargs):
        if not (isinstance(command, list) and command[1:2] == ["-c"] and "parse_in_child" in command[2]):
            return real_run(command, *args, **kwargs)
        out, argv, stdin = io.StringIO(), sys.argv[:], sys.stdin
        sys.stdin = io.StringIO(kwargs["input"])
        try:
            with contextlib.chdir(kwargs["cwd"]), contextlib.redirect_stdout(out):
                grid.parse_in_child(command[3])
        finally:
            sys.argv, sys.stdin = argv, stdin
        return subprocess.CompletedProcess(command, 0, out.getvalue(), "")
    monkeypatch.setattr(grid.subprocess, "run", run)
