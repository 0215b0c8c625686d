"""The user's own data: an image folder (folder:PATH), an array file (npz:PATH) or a table (csv:PATH), checked
and read whole into a Source (hardness.data reads the built-in datasets into one too, standardises and takes the
subset). Folders are decoded once, with every core, and cached under --data_root, keyed by every file's path, size
and modification time. Errors about a field of the request (label_column, ...) are FieldErrors, which each caller
words as its flag or config key."""
import csv
import hashlib
import io
import os
import re
import sys
import zipfile
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from hardness.cli import FieldError, UserInputError
from hardness.results import write_atomically

SOURCES = ("folder", "npz", "csv")
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")
GREYSCALE_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}
LABEL_PATTERN = re.compile(r"[\w.+-]+")
CACHE_FOLDER = "decoded_folders"
CACHE_VERSION = 1                    # part of the cache key: a new layout of the cache file decodes again

MemoryCheck = Callable[[int, tuple[int, ...]], None]   # (samples in the source, shape of one sample) -> raises


@dataclass
class Source:
    """A source read whole, before any subset, split or standardisation: the user's data or a built-in dataset."""
    values: np.ndarray        # [N, C, H, W] uint8 images, [N, C, H, W] float images or [N, D] features
    labels: np.ndarray        # [N] int64 class indices into class_names
    class_names: list[str]
    sample_ids: list[str]     # [N] "train/123", "test/45" (built-ins), a file's path, a row's id or number
    feature_names: list[str] | None = None   # [D] a table's column names
    in_train: np.ndarray | None = None       # [N] bool, a built-in's torchvision train split (None: user data)



@dataclass(frozen=True)
class SourceOptions:
    """How a user source is read: the dataset flags of docs/your_data.md, or a config's dataset fields."""
    label: str | None = None                       # names the folder's decoding cache (default: the folder's name)
    channels: int | None = None                    # folder: 1 or 3 (default: what most files are)
    image_size: tuple[int, int] | None = None      # folder: (H, W) (default: the most common size)
    label_column: str = "label"                    # csv: the class column
    id_column: str | None = None                   # csv: the sample ids' column (default: the row numbers)
    skip_unreadable: bool = False                  # folder: drop undecodable images instead of stopping


def parse_source(name: str) -> tuple[str, Path] | None:
    """('folder' | 'npz' | 'csv', path) of a user source 'KIND:PATH', or None for any other name."""
    kind, separator, path = name.partition(":")
    if not separator or kind not in SOURCES:
        return None
    if not path:
        raise FieldError("dataset_name", lambda field: f"{field('dataset_name')} {name} names no path; give {kind}:PATH")
    return kind, Path(path).expanduser()


def default_label(kind: str, path: Path) -> str:
    """The folder's name or the file's name without its suffix, with every character that cannot name a file
    made '_'."""
    name = path.resolve().name if kind == "folder" else path.stem
    return re.sub(r"[^\w.+-]", "_", name).strip(".") or "data"


def check_label(label: str) -> str:
    """A label that names result files: letters, digits and . _ + -, not starting with a dot."""
    if not LABEL_PATTERN.fullmatch(label) or label.startswith("."):
        raise FieldError("dataset_label", lambda field: f"{field('dataset_label')} {label!r} must be letters, digits and "
                                                        ". _ + - (it names result files)")
    return label


def check_classes(class_names: list[str], labels: np.ndarray, source: str) -> None:
    """At least two classes, each with at least one sample."""
    if len(class_names) < 2:
        raise UserInputError(f"{source} holds a single class ({', '.join(class_names) or 'none'}); hardness needs "
                             "at least 2 classes")
    counts = np.bincount(labels, minlength=len(class_names))
    if (counts == 0).any():
        empty = ", ".join(name for name, count in zip(class_names, counts) if count == 0)
        raise UserInputError(f"{source}: class(es) {empty} have no samples")


def classes_of_values(values: list[str] | np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Class indices and names of raw class values: sorted numerically when all are integers, else as text."""
    text = [str(value).strip() for value in values]
    if all(re.fullmatch(r"[+-]?\d+", value) for value in text):
        names = [str(value) for value in sorted({int(value) for value in text})]
        text = [str(int(value)) for value in text]
    else:
        names = sorted(set(text))
    position = {name: index for index, name in enumerate(names)}
    return np.array([position[value] for value in text], dtype=np.int64), names


def check_ids(ids: list[str], source: str) -> list[str]:
    """Sample ids, each one unique."""
    repeated = [name for name, count in Counter(ids).items() if count > 1]
    if repeated:
        raise UserInputError(f"{source}: sample id {repeated[0]!r} names {Counter(ids)[repeated[0]]} samples; ids must "
                             "be unique")
    return ids


def check_finite(values: np.ndarray, source: str, names: list[str] | None = None) -> None:
    """No NaN or infinite value; names the first column holding one (for tables) or the first sample."""
    finite = np.isfinite(values)
    if finite.all():
        return
    row, *rest = np.argwhere(~finite)[0]
    where = f"column {names[rest[0]]!r}, row {row + 1}" if names is not None else f"sample {row}"
    raise UserInputError(f"{source}: {where} is {values[tuple([row, *rest])]}; every value must be finite")


# ----------------------------------------------------------------------------- npz

def npz_shape(path: Path, key: str) -> tuple[tuple[int, ...], np.dtype] | None:
    """Shape and dtype of array `key` in an .npz, read from its header only (None if it is not there)."""
    with zipfile.ZipFile(path) as archive:
        if f"{key}.npy" not in archive.namelist():
            return None
        with archive.open(f"{key}.npy") as handle:
            version = np.lib.format.read_magic(handle)
            header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = header(handle)
    return shape, dtype


def load_npz(path: Path, check_memory: MemoryCheck) -> Source:
    """x ([N, D], [N, H, W] or [N, C, H, W], uint8 or numbers) and integer y [N]; optional ids [N], class_names
    and, for a table, feature_names [D]."""
    source = f"npz:{path}"
    try:
        headers = {key: npz_shape(path, key) for key in ("x", "y")}
    except (OSError, zipfile.BadZipFile, ValueError) as error:
        raise UserInputError(f"{source} is not a readable .npz file ({error})") from error
    for key, header in headers.items():
        if header is None:
            raise UserInputError(f"{source} has no array '{key}'; save x (the samples) and y (their classes)")
    (x_shape, x_dtype), (y_shape, y_dtype) = headers["x"], headers["y"]
    if len(x_shape) not in (2, 3, 4) or x_dtype.kind not in "biuf":
        raise UserInputError(f"{source}: x must be numbers shaped [N, D], [N, H, W] or [N, C, H, W], got {x_dtype} "
                             f"{list(x_shape)}")
    if y_dtype.kind not in "iu":
        raise UserInputError(f"{source}: y holds {y_dtype} values; it must hold integer class indices")
    if y_shape != x_shape[:1]:
        raise UserInputError(f"{source}: y is shaped {list(y_shape)}, x holds {x_shape[0]} samples; y must be [N]")
    sample_shape = tuple(x_shape[1:]) if len(x_shape) != 3 else (1, *x_shape[1:])
    check_memory(x_shape[0], sample_shape)
    with np.load(path, allow_pickle=False) as archive:
        try:
            x, y = archive["x"], archive["y"].astype(np.int64)
            ids = archive["ids"] if "ids" in archive.files else None
            names = archive["class_names"] if "class_names" in archive.files else None
            columns = archive["feature_names"] if "feature_names" in archive.files else None
        except ValueError as error:
            raise UserInputError(f"{source}: ids, class_names and feature_names must be string arrays, not objects "
                                 f"({error})") from error
    if columns is not None and (len(x_shape) != 2 or columns.shape != (x_shape[1],)):
        raise UserInputError(f"{source}: feature_names is shaped {list(columns.shape)}; it names the columns of a "
                             f"table x [N, D], so it must be [D]")
    x = x.reshape(len(x), *sample_shape)
    if x.dtype != np.uint8:
        x = x.astype(np.float32)
        check_finite(x.reshape(len(x), -1), source)
    if names is None:
        labels, class_names = classes_of_values(y)
    else:
        class_names = [str(name) for name in names.reshape(-1)]
        if y.min() < 0 or y.max() >= len(class_names):
            raise UserInputError(f"{source}: y holds {y.min() if y.min() < 0 else y.max()}, outside the "
                                 f"{len(class_names)} class_names")
        labels = y
    check_classes(class_names, labels, source)
    if ids is not None and ids.shape != (len(x),):
        raise UserInputError(f"{source}: ids is shaped {list(ids.shape)}; it must name every sample, [{len(x)}]")
    sample_ids = check_ids([str(i) for i in ids] if ids is not None else [str(i) for i in range(len(x))], source)
    return Source(x, labels, class_names, sample_ids, None if columns is None else [str(c) for c in columns])


# ----------------------------------------------------------------------------- csv

def load_csv(path: Path, label_column: str, id_column: str | None, check_memory: MemoryCheck) -> Source:
    """A table with a header row: the class in `label_column`, row names in `id_column` (optional), every other
    column a number."""
    source = f"csv:{path}"
    try:
        with open(path, newline="") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError) as error:
        raise UserInputError(f"{source} cannot be read ({error})") from error
    if not rows:
        raise UserInputError(f"{source} is empty; it needs a header row and one row per sample")
    header, body = [name.strip() for name in rows[0]], [row for row in rows[1:] if row]
    for name, column in (("label_column", label_column), ("id_column", id_column)):
        if column is not None and column not in header:
            raise FieldError(name, lambda field: f"{source} has no column {column!r} ({field(name)}); its columns are "
                                                 f"{', '.join(header)}")
    short = next((number for number, row in enumerate(body, start=2) if len(row) != len(header)), None)
    if short is not None:
        raise UserInputError(f"{source}: line {short} has {len(body[short - 2])} fields, the header {len(header)}")
    features = [i for i, name in enumerate(header) if name not in (label_column, id_column)]
    if not features:
        raise UserInputError(f"{source} has no feature column besides {label_column!r}")
    if not body:
        raise UserInputError(f"{source} has a header but no rows")
    check_memory(len(body), (len(features),))
    table = np.empty((len(body), len(features)), dtype=np.float64)
    for j, column in enumerate(features):
        for i, row in enumerate(body):
            try:
                table[i, j] = float(row[column])
            except ValueError:
                raise UserInputError(f"{source}: column {header[column]!r} is not numeric (line {i + 2} holds "
                                     f"{row[column]!r}); every column but the label and id must be a number") from None
    check_finite(table, source, [header[column] for column in features])
    labels, class_names = classes_of_values([row[header.index(label_column)] for row in body])
    check_classes(class_names, labels, source)
    ids = ([row[header.index(id_column)].strip() for row in body] if id_column is not None
           else [str(i) for i in range(len(body))])
    return Source(table, labels, class_names, check_ids(ids, source), [header[column] for column in features])


# ----------------------------------------------------------------------------- image folders

def folder_files(root: Path) -> tuple[list[str], list[Path], np.ndarray]:
    """ImageFolder's layout: class names (the sorted sub-folders), every image file under them (sorted) and
    its class index."""
    if not root.is_dir():
        raise UserInputError(f"folder:{root} is not a folder")
    class_names = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    files, labels = [], []
    for index, name in enumerate(class_names):
        found = sorted(path for path in (root / name).rglob("*")
                       if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file())
        if not found:
            raise UserInputError(f"class folder {root / name} holds no images ({' '.join(IMAGE_EXTENSIONS)})")
        files += found
        labels += [index] * len(found)
    if len(class_names) < 2:
        raise UserInputError(f"folder:{root} holds {len(class_names)} class folder(s); give one sub-folder per "
                             "class, at least 2 (PATH/<class name>/<image>)")
    return class_names, files, np.array(labels, dtype=np.int64)


def cache_key(root: Path, files: list[Path], settings: tuple) -> str:
    """A digest of every file's path (relative to the folder), size and modification time, and the settings."""
    digest = hashlib.sha256(repr((CACHE_VERSION, settings)).encode())
    for path in files:
        status = path.stat()
        digest.update(f"{path.relative_to(root)}\0{status.st_size}\0{status.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def image_header(path: Path) -> tuple[str, tuple[int, int]] | str:
    """(mode, (width, height)) from the file's header, or why it cannot be opened."""
    try:
        with Image.open(path) as image:
            return image.mode, image.size
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        return str(error).splitlines()[0] if str(error) else type(error).__name__


def decode_image(path: Path, mode: str, size: tuple[int, int]) -> tuple[np.ndarray | None, bool, str]:
    """The image converted to `mode` ('L' or 'RGB') at `size` (width, height), bilinear: [H, W] or [H, W, 3] uint8,
    whether it was resized, and why it failed (None and '' on success)."""
    try:
        with Image.open(path) as image:
            image.load()
            converted = image.convert(mode)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        return None, False, str(error).splitlines()[0] if str(error) else type(error).__name__
    resized = converted.size != size
    if resized:
        converted = converted.resize(size, Image.Resampling.BILINEAR)
    return np.asarray(converted, dtype=np.uint8), resized, ""


def decode_chunk(paths: list[Path], mode: str, size: tuple[int, int]) -> list[tuple[np.ndarray | None, bool, str]]:
    """decode_image of several files: one task of the process pool."""
    return [decode_image(path, mode, size) for path in paths]


def unreadable(root: Path, failures: list[tuple[Path, str]], skip: bool) -> None:
    """Stop at unreadable images unless `skip`; with `skip` say how many are dropped."""
    if not failures:
        return
    path, reason = failures[0]
    if not skip:
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        raise FieldError("skip_unreadable", lambda field: f"{path} cannot be decoded: {reason}{more}; fix or remove it, "
                                                          f"or give {field('skip_unreadable')}")
    print(f"folder:{root}: skipped {len(failures)} unreadable image(s), e.g. {path.relative_to(root)} ({reason})",
          file=sys.stderr)


def decode_folder(root: Path, files: list[Path], channels: int | None, image_size: tuple[int, int] | None,
                  skip: bool, check_memory: MemoryCheck) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Every file decoded to one mode and size with every core: images [N, C, H, W] uint8, the kept rows [N] of
    `files`, and notes on what was converted."""
    workers = os.cpu_count() or 1
    with ThreadPoolExecutor(workers) as pool:
        headers = list(pool.map(image_header, files))
    failures = [(path, header) for path, header in zip(files, headers) if isinstance(header, str)]
    opened = [i for i, header in enumerate(headers) if not isinstance(header, str)]
    if not opened:
        unreadable(root, failures, False)
    modes = Counter(1 if headers[i][0] in GREYSCALE_MODES else 3 for i in opened)
    channels = channels or (1 if modes[1] > modes[3] else 3)
    sizes = Counter(headers[i][1] for i in opened)
    size = (image_size[1], image_size[0]) if image_size else sizes.most_common(1)[0][0]   # PIL's (width, height)
    check_memory(len(opened), (channels, size[1], size[0]))
    chunks = [opened[start:start + 64] for start in range(0, len(opened), 64)]
    with ProcessPoolExecutor(workers) as pool:
        decoded = [item for chunk in pool.map(decode_chunk, [[files[i] for i in chunk] for chunk in chunks],
                                              [("L", "RGB")[channels == 3]] * len(chunks), [size] * len(chunks))
                   for item in chunk]
    failures += [(files[i], reason) for i, (_, _, reason) in zip(opened, decoded) if reason]
    unreadable(root, sorted(failures), skip)
    kept = [i for i, (array, _, _) in zip(opened, decoded) if array is not None]
    arrays = [array for array, _, _ in decoded if array is not None]
    images = np.stack(arrays).reshape(len(arrays), size[1], size[0], channels).transpose(0, 3, 1, 2)
    resized = sum(was_resized for array, was_resized, _ in decoded if array is not None)
    notes = [f"{len(arrays)} images as {channels} channel(s) of {size[1]}x{size[0]} pixels "
             f"({sum(modes.values()) - modes[channels]} converted from {'RGB' if channels == 1 else 'greyscale'}, "
             f"{resized} resized), decoded with {workers} process(es)"]
    return np.ascontiguousarray(images), np.array(kept, dtype=np.int64), notes


def load_folder(root: Path, data_root: Path, label: str, channels: int | None, image_size: tuple[int, int] | None,
                skip: bool, check_memory: MemoryCheck) -> Source:
    """ImageFolder's layout decoded (or read from the cache of the same files and settings)."""
    class_names, files, labels = folder_files(root)
    settings = (channels, tuple(image_size) if image_size else None, skip)
    key = cache_key(root, files, settings)
    folder_digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
    cache = Path(data_root) / CACHE_FOLDER / f"{label}_{folder_digest}" / f"{key}.npz"
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as stored:
            images, kept = stored["images"], stored["kept"]
        check_memory(len(kept), images.shape[1:])
        print(f"folder:{root}: {len(kept)} images read from the cache {cache}", file=sys.stderr)
    else:
        images, kept, notes = decode_folder(root, files, channels, image_size, skip, check_memory)
        packed = io.BytesIO()
        np.savez(packed, images=images, kept=kept)
        for stale in cache.parent.glob("*.npz"):   # decodings of earlier versions of this folder
            stale.unlink(missing_ok=True)
        write_atomically(cache, packed.getvalue())
        print(f"folder:{root}: {notes[0]}; cached in {cache}", file=sys.stderr)
    labels = labels[kept]
    check_classes(class_names, labels, f"folder:{root} (after skipping unreadable images)")
    sample_ids = [files[i].relative_to(root).as_posix() for i in kept.tolist()]
    return Source(images, labels, class_names, sample_ids)
