"""Export a built-in dataset's images as an image folder with known label noise.

Takes the seeded subset of --dataset_name that the experiment scripts take (train+test shuffled with --seed,
the first --subset_size), writes every image as a PNG into the folder of its class,
<output>/<class>/<source id>.png, except a seeded share (--noise_ratio, int(ratio * N) images) that goes into the
folder of another class, chosen by --noise_type through the one flip function every script uses
(hardness/noise.py: uniform, pairs, asymmetric, adjacent, instance). The list of moved files is written to
<output>/moved.csv (one row per moved file: sample_id, source_id, true_class, given_class; see
docs/your_data.md). With --inject TYPE:RATIO ... it writes instead every injected type of
hardness_types_benchmark.py (hardness/injection.py: label noise, out-of-distribution, atypical, duplicated and
ambiguous images), each on its own samples, the mislabelled type first; every changed file is listed in
<output>/injected.csv (sample_id, source_id, type, true_class, given_class, duplicate_of: the other member of a
duplicate pair), the moved ones also in moved.csv. The folder is written beside its final place and renamed into
it when complete.

    python scripts/export_noisy_folder.py --dataset_name FashionMNIST --subset_size 10000 --noise_ratio 0.05
    python hardness_scores.py --dataset_name folder:data/exports/FashionMNIST_10000_uniform_0.05
    python scripts/export_noisy_folder.py --inject asymmetric:0.05 far_ood:0.05 exact_duplicate:0.05
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

from hardness.cli import UserInputError, add_shared_arguments, run_script, unit_interval  # noqa: E402
from hardness.data import (dataset_class, load_pixels, load_source, standardised_dataset,  # noqa: E402
                           subset_dataset)
from hardness.noise import NOISE_TYPES, check_noise_type, flip_labels  # noqa: E402
from hardness.injection import FAMILIES, INJECTION_TYPES, Injected, check_injection, inject  # noqa: E402
from hardness.noise_reference import reference_probabilities  # noqa: E402
from hardness.types_benchmark import OTHER_DATASET, own_duplicates  # noqa: E402
from hardness.user_data import parse_source  # noqa: E402

MOVED_COLUMNS = ("sample_id", "source_id", "true_class", "given_class")
INJECTED_COLUMNS = ("sample_id", "source_id", "type", "true_class", "given_class", "duplicate_of")


def injection(text: str) -> tuple[str, float]:
    """argparse type: TYPE:RATIO, a known injection type and a share in (0, 1)."""
    kind, _, ratio = text.partition(":")
    try:
        check_injection(kind, float(ratio))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r}: {error}") from None
    return kind, float(ratio)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shared_arguments(parser, "dataset_name", "subset_size", dataset_name={
        "default": "FashionMNIST", "help": "built-in torchvision dataset to export, any letter case (default FashionMNIST)"},
        subset_size={"default": 10000, "help": "images exported: the head of the seeded shuffle of train+test (default "
                                                "10000)"})
    parser.add_argument("--noise_ratio", type=unit_interval(True, False), default=0.05,
                        help="share of the images, int(ratio * N), put into a wrong class folder, in [0, 1) "
                             "(default 0.05)")
    parser.add_argument("--noise_type", choices=NOISE_TYPES, default="uniform",
                        help="how the wrong class is chosen, as hardness_scores.py flips labels: uniform, pairs, "
                             "asymmetric, adjacent or instance (docs/scores.md) (default uniform)")
    parser.add_argument("--inject", type=injection, nargs="+", default=None, metavar="TYPE:RATIO",
                        help="write these injected types instead of label noise, each into its own share of the "
                             f"images: {', '.join(INJECTION_TYPES)}; one mislabelled type at most, e.g. "
                             "asymmetric:0.05 far_ood:0.05 exact_duplicate:0.05 (hardness_types_benchmark.py)")
    add_shared_arguments(parser, "results_dir", "seed", "data_root", results_dir={
        "help": "where instance noise caches its reference model's probabilities (default Results)"},
        seed={"help": "seed of the subset and of the moved images (default 0)"},
        data_root={"help": "folder holding torchvision's dataset layout (default ./data)"})
    parser.add_argument("--output", type=Path, default=None,
                        help="folder to create; must not exist (default "
                             "<data_root>/exports/<dataset>_<subset_size>_<noise_type>_<noise_ratio>)")
    args = parser.parse_args(argv)
    if args.inject and sum(FAMILIES[kind] == "mislabelled" for kind, _ in args.inject) > 1:
        parser.error("--inject takes one mislabelled type at most (each would flip labels of its own draw)")
    return args


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


def injected_images(args: argparse.Namespace, name: str) -> tuple[Injected, list[str], list[str], list[int]]:
    """The subset with every --inject type on its own samples (the mislabelled one first), as uint8-ready pixels:
    (injected, class names, source ids, true labels)."""
    subset = load_pixels(name, args.data_root, args.subset_size, args.seed)
    images, excluded = subset.images.float() / 255, torch.from_numpy(own_duplicates(subset.images))
    state = None
    for kind, ratio in sorted(args.inject, key=lambda item: FAMILIES[item[0]] != "mislabelled"):
        probabilities = other = None
        if kind == "instance":
            clean = standardised_dataset(subset, images, subset.labels, torch.device("cpu"))
            probabilities = reference_probabilities(name, clean, args.data_root, args.results_dir, args.seed, "MLP")
        if kind == "far_ood":
            if name not in OTHER_DATASET:
                raise UserInputError(f"far_ood takes the images of another dataset; {name} has none named "
                                     f"(MNIST and FashionMNIST take each other's)")
            other = load_pixels(OTHER_DATASET[name], args.data_root, args.subset_size, args.seed).images.float() / 255
        try:
            state = inject(images, subset.labels, len(subset.class_names), kind, ratio, args.seed, other,
                           probabilities, exclude=excluded, start=state)
        except ValueError as error:
            raise UserInputError(f"--inject {kind}:{ratio:g}: {error}") from None
    return state, subset.class_names, subset.sample_ids, subset.labels.tolist()


def export(args: argparse.Namespace) -> tuple[Path, int]:
    """Write the folder and its moved.csv (and injected.csv with --inject); returns the folder and how many images
    were moved (or, with --inject, changed)."""
    if parse_source(args.dataset_name) is not None:
        raise UserInputError("--dataset_name must be a built-in dataset (MNIST, FashionMNIST, ...): the export makes an "
                             "image folder from one")
    name = dataset_class(args.dataset_name).__name__
    tag = ("_".join(f"{kind}_{ratio:g}" for kind, ratio in args.inject) if args.inject
           else f"{args.noise_type}_{args.noise_ratio:g}")
    output = args.output or (Path(args.data_root) / "exports" / f"{name}_{args.subset_size}_{tag}")
    if output.exists():
        raise UserInputError(f"{output} exists; remove it or give another --output")
    if args.inject:
        injected, class_names, sample_ids, true = injected_images(args, name)
        images = (injected.images * 255).round().to(torch.uint8).numpy()                       # [N, C, H, W]
        given, kinds, partner = injected.labels.tolist(), injected.kind, injected.duplicate_of.tolist()
    else:
        source = load_source(name, args.data_root)
        dataset = subset_dataset(source, name, args.subset_size, args.seed, torch.device("cpu"))
        try:
            check_noise_type(args.noise_type, dataset.num_classes)
        except ValueError as error:
            raise UserInputError(f"--noise_type {args.noise_type}: {error}") from None
        probabilities = (reference_probabilities(name, dataset, args.data_root, args.results_dir, args.seed, "MLP")
                         if args.noise_type == "instance" and args.noise_ratio > 0 else None)
        noisy, moved, _ = flip_labels(dataset.labels, args.noise_ratio, dataset.num_classes, args.seed,
                                      args.noise_type, dataset.data, probabilities=probabilities)
        images = source.values[dataset.indices.numpy()]                                          # [N, C, H, W]
        class_names, sample_ids, true, given = (dataset.class_names, dataset.sample_ids, dataset.labels.tolist(),
                                                noisy.tolist())
        kinds, partner = [args.noise_type if m else "" for m in moved.tolist()], [-1] * len(given)
    folders = class_folder_names(class_names)
    paths = [f"{folders[label]}/{source.replace('/', '_')}.png" for label, source in zip(given, sample_ids)]
    moved_rows = [row for row in range(len(paths)) if kinds[row] and FAMILIES[kinds[row]] == "mislabelled"]

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
            for row in sorted(moved_rows, key=lambda row: paths[row]):
                writer.writerow([paths[row], sample_ids[row], folders[true[row]], folders[given[row]]])
        if args.inject:
            with open(staging / "injected.csv", "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(INJECTED_COLUMNS)
                for row in sorted((row for row in range(len(paths)) if kinds[row]), key=lambda row: paths[row]):
                    writer.writerow([paths[row], sample_ids[row], kinds[row], folders[true[row]], folders[given[row]],
                                     paths[partner[row]] if partner[row] >= 0 else ""])
        os.chmod(staging, 0o755)
        os.replace(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output, sum(bool(kind) for kind in kinds) if args.inject else len(moved_rows)


def main(args: argparse.Namespace) -> None:
    output, moved = export(args)
    if args.inject:
        print(f"wrote {args.subset_size} images to {output}/<class>/, {moved} of them changed "
              f"({', '.join(kind for kind, _ in args.inject)}), listed in {output}/injected.csv")
    else:
        print(f"wrote {args.subset_size} images to {output}/<class>/, {moved} of them ({args.noise_type}) in a wrong "
              f"class folder, listed in {output}/moved.csv")
    print(f"score it with: python hardness_scores.py --dataset_name folder:{output}")


if __name__ == "__main__":
    run_script(main, parse_args)
