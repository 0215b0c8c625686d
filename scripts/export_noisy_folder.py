"""Export a built-in dataset's images as an image folder with known label noise.

Takes the seeded subset of --dataset_name that the experiment scripts take (train+test shuffled with --seed,
the first --subset_size), writes every image as a PNG into the folder of its class,
<output>/<class>/<source id>.png, except a seeded share (--noise_ratio, int(ratio * N) images) that goes into the
folder of another class, chosen by --noise_type through the one flip function every script uses
(hardness/noise.py: uniform, pairs, asymmetric, adjacent, instance). The list of moved files is written to
<output>/moved.csv (one row per moved file: sample_id, source_id, true_class, given_class; see
docs/your_data.md). The folder is written beside its final place and renamed into it when complete.

    python scripts/export_noisy_folder.py --dataset_name FashionMNIST --subset_size 10000 --noise_ratio 0.05
    python hardness_scores.py --dataset_name folder:data/exports/FashionMNIST_10000_uniform_0.05
"""
import argparse
import csv
import io
import os
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hardness.cli import (UserInputError, non_negative_int, positive_int, run_script,  # noqa: E402
                          unit_interval)
from hardness.data import as_nchw_uint8, dataset_class, load_dataset, torchvision_splits  # noqa: E402
from hardness.noise import NOISE_TYPES, check_noise_type, flip_labels  # noqa: E402
from hardness.noise_reference import reference_probabilities  # noqa: E402
from hardness.user_data import parse_source  # noqa: E402

MOVED_COLUMNS = ("sample_id", "source_id", "true_class", "given_class")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset_name", default="FashionMNIST",
                        help="built-in torchvision dataset to export, any letter case (default FashionMNIST)")
    parser.add_argument("--subset_size", type=positive_int, default=10000,
                        help="images exported: the head of the seeded shuffle of train+test (default 10000)")
    parser.add_argument("--noise_ratio", type=unit_interval(True, False), default=0.05,
                        help="share of the images, int(ratio * N), put into a wrong class folder, in [0, 1) "
                             "(default 0.05)")
    parser.add_argument("--noise_type", choices=NOISE_TYPES, default="uniform",
                        help="how the wrong class is chosen, as hardness_scores.py flips labels: uniform, pairs, "
                             "asymmetric, adjacent or instance (docs/scores.md) (default uniform)")
    parser.add_argument("--results_dir", type=Path, default=Path("Results"),
                        help="where instance noise caches its reference model's probabilities (default Results)")
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="seed of the subset and of the moved images (default 0)")
    parser.add_argument("--data_root", type=Path, default=Path("./data"),
                        help="folder holding torchvision's dataset layout (default ./data)")
    parser.add_argument("--output", type=Path, default=None,
                        help="folder to create; must not exist (default "
                             "<data_root>/exports/<dataset>_<subset_size>_<noise_type>_<noise_ratio>)")
    return parser.parse_args(argv)


def class_folder_names(class_names: list[str]) -> list[str]:
    """One folder name per class that sorts in class order and names no sub-folder: '<index>_<name>', the index
    zero-padded and every '/' of the name made '_'."""
    width = len(str(len(class_names) - 1))
    return [f"{index:0{width}d}_{name.replace('/', '_').replace(os.sep, '_')}" for index, name in enumerate(class_names)]


def png_bytes(image: np.ndarray) -> bytes:
    """[C, H, W] uint8 (C = 1 or 3) as a PNG."""
    encoded = io.BytesIO()
    Image.fromarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)).save(encoded, format="PNG")
    return encoded.getvalue()


def export(args: argparse.Namespace) -> tuple[Path, int]:
    """Write the folder and its moved.csv; returns the folder and how many images were moved."""
    if parse_source(args.dataset_name) is not None:
        raise UserInputError("--dataset_name must be a built-in dataset (MNIST, FashionMNIST, ...): the export makes an "
                             "image folder from one")
    name = dataset_class(args.dataset_name).__name__
    output = args.output or (Path(args.data_root) / "exports" /
                             f"{name}_{args.subset_size}_{args.noise_type}_{args.noise_ratio:g}")
    if output.exists():
        raise UserInputError(f"{output} exists; remove it or give another --output")
    dataset = load_dataset(name, args.data_root, args.subset_size, args.seed, torch.device("cpu"))
    try:
        check_noise_type(args.noise_type, dataset.num_classes)
    except ValueError as error:
        raise UserInputError(f"--noise_type {args.noise_type}: {error}") from None
    probabilities = (reference_probabilities(name, dataset, args.data_root, args.results_dir, args.seed, "MLP")
                     if args.noise_type == "instance" and args.noise_ratio > 0 else None)
    given, moved, _ = flip_labels(dataset.labels, args.noise_ratio, dataset.num_classes, args.seed, args.noise_type,
                                  dataset.data, probabilities=probabilities)
    splits = torchvision_splits(dataset.name, Path(args.data_root))
    images = torch.cat([as_nchw_uint8(split.data) for split in splits])[dataset.indices].numpy()   # [N, C, H, W]
    folders = class_folder_names(dataset.class_names)
    paths = [f"{folders[label]}/{source.replace('/', '_')}.png"
             for label, source in zip(given.tolist(), dataset.sample_ids)]

    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}."))
    try:
        for folder in folders:
            (staging / folder).mkdir()
        with ThreadPoolExecutor(os.cpu_count()) as pool:
            list(pool.map(lambda row: (staging / paths[row]).write_bytes(png_bytes(images[row])), range(len(paths))))
        with open(staging / "moved.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(MOVED_COLUMNS)
            true, noisy = dataset.labels.tolist(), given.tolist()
            for row in sorted(moved.nonzero().flatten().tolist(), key=lambda row: paths[row]):
                writer.writerow([paths[row], dataset.sample_ids[row], folders[true[row]], folders[noisy[row]]])
        os.chmod(staging, 0o755)
        os.replace(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output, int(moved.sum())


def main(args: argparse.Namespace) -> None:
    output, moved = export(args)
    print(f"wrote {args.subset_size} images to {output}/<class>/, {moved} of them ({args.noise_type}) in a wrong class "
          f"folder, listed in {output}/moved.csv")
    print(f"score it with: python hardness_scores.py --dataset_name folder:{output}")


if __name__ == "__main__":
    run_script(main, parse_args)
