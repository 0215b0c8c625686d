"""Write two of scikit-learn's bundled datasets in the user-data formats, to try the scoring scripts on a table
and on an array file without any download:

    <output>/breast_cancer.csv   569 rows: an `id` column, the 30 numeric features, `label` (malignant/benign)
    <output>/digits.npz          x [1797, 8, 8] uint8 (the 0-16 grey levels scaled to 0-255), y [1797], ids,
                                 class_names

The labels are the datasets' own; flip a share with the scoring scripts' --noise_ratio.

    python scripts/export_sklearn_examples.py --output data/examples
    python hardness_scores.py --dataset_name csv:data/examples/breast_cancer.csv --id_column id --noise_ratio 0.1
    python hardness_scores.py --dataset_name npz:data/examples/digits.npz --noise_ratio 0.1
"""
import argparse
import csv
import io
import sys
from pathlib import Path

import numpy as np
from sklearn.datasets import load_breast_cancer, load_digits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hardness.results import write_atomically  # noqa: E402


def breast_cancer_csv() -> bytes:
    table = load_breast_cancer()
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["id", *table.feature_names, "label"])
    for index, (features, target) in enumerate(zip(table.data, table.target)):
        writer.writerow([f"patient_{index:03d}", *(f"{value:g}" for value in features), table.target_names[target]])
    return text.getvalue().encode()


def digits_npz() -> bytes:
    digits = load_digits()
    packed = io.BytesIO()
    np.savez(packed, x=np.round(digits.images * 255 / 16).astype(np.uint8), y=digits.target.astype(np.int64),
             ids=np.array([f"digit_{index:04d}" for index in range(len(digits.target))]),
             class_names=np.array([str(name) for name in digits.target_names]))
    return packed.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("data/examples"),
                        help="folder to write breast_cancer.csv and digits.npz into (default data/examples)")
    args = parser.parse_args()
    write_atomically(args.output / "breast_cancer.csv", breast_cancer_csv())
    write_atomically(args.output / "digits.npz", digits_npz())
    print(f"wrote {args.output / 'breast_cancer.csv'} and {args.output / 'digits.npz'}")


if __name__ == "__main__":
    main()
