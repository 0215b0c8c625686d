"""Speed of reading an image folder (folder:PATH): images per second decoded cold (every file opened,
converted and stacked with every core, then cached) and warm (read back from the cache under --data_root).

Writes --images random 28x28 greyscale PNGs in 10 class folders to a temporary folder (written once, not
timed), then loads it twice through load_dataset_from_args on the CPU.

    python benchmarks/bench_folder_decode.py [--images 10000]
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hardness.cli import add_common_arguments, add_dataset_arguments, positive_int  # noqa: E402
from hardness.data import load_dataset_from_args  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=positive_int, default=10000, help="PNG files in the folder (default 10000)")
    options = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "bench"
        for i in range(options.images):
            folder = root / f"class{i % 10}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(folder / f"{i:06d}.png")
        flags = argparse.ArgumentParser()
        add_dataset_arguments(flags)
        add_common_arguments(flags)
        args = flags.parse_args(["--dataset_name", f"folder:{root}", "--data_root", str(Path(tmp) / "data"),
                                 "--subset_size", str(options.images)])
        print(f"{options.images} PNGs of 28x28, {os.cpu_count()} CPU core(s)")
        for kind in ("cold", "warm"):
            start = time.perf_counter()
            load_dataset_from_args(args, torch.device("cpu"))
            seconds = time.perf_counter() - start
            print(f"{kind}: {seconds:.2f} s, {options.images / seconds:,.0f} images/s")


if __name__ == "__main__":
    main()
