"""GASTeN, step 0: the binary classifiers under test (deliberately weak CNNs, or the original's MLP).

    python gasten_train_classifiers.py --dataset mnist --pos 7 --neg 1 --nf 1,2,4 --epochs 1

Keeps classes --pos (target 1) and --neg (target 0) of the dataset, scaled to [-1, 1]; trains one
classifier per --nf with BCE and Adam on a seeded 5/6 of the pair's training images, stopping early on the
loss of the other 1/6 (the best epoch is kept), and scores it on the pair's test images. Saves
<results_dir>/gasten/classifiers/<dataset>_<pos>v<neg>/<type>-<nf>-<epochs>.<seed>/{classifier.pt,settings.json}
and draws the test accuracies to <figures_dir>/gasten/classifiers_<dataset>_<pos>v<neg> (PNG and PDF).
"""
import argparse

import matplotlib.pyplot as plt

from hardness.gasten import CLASSIFIERS, PAIR_DATASETS, load_pair, save_classifier, train_classifier
from hardness.gasten_names import classifier_name
from utils import (TORCHVISION_ROOT, add_shared_arguments, gasten_path, non_negative_int, positive_float, positive_int,
                   resolve_device, run_script, run_settings, save_figure)

DEFAULT_EPOCHS = {"mnist": 1, "fashionmnist": 3}


def filter_counts(text: str) -> list[int]:
    """'1,2,4' -> [1, 2, 4]."""
    return [positive_int(part) for part in text.split(",") if part]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", "--dataset_name", dest="dataset", type=str.lower, default="mnist",
                        choices=PAIR_DATASETS, help="dataset, any case (default mnist)")
    parser.add_argument("--pos", type=non_negative_int, required=True, help="class whose target is 1")
    parser.add_argument("--neg", type=non_negative_int, required=True, help="class whose target is 0")
    parser.add_argument("--nf", type=filter_counts, nargs="+", default=None,
                        help="filters of each classifier: 1,2,4 or 1 2 4 (default 1,2,4 for MNIST, 4,8,16 for "
                             "Fashion-MNIST)")
    parser.add_argument("--epochs", type=positive_int, default=None,
                        help="most training epochs (default 1 for MNIST, 3 for Fashion-MNIST)")
    parser.add_argument("--c_type", "--classifier_type", dest="classifier_type", choices=list(CLASSIFIERS),
                        default="cnn", help="the CNN or the original's MLP variant (default cnn)")
    parser.add_argument("--batch_size", type=positive_int, default=64, help="minibatch size (default 64)")
    parser.add_argument("--lr", type=positive_float, default=1e-3, help="Adam's learning rate (default 1e-3)")
    parser.add_argument("--early_stop", type=positive_int, default=3,
                        help="epochs without a lower validation loss before stopping (default 3)")
    add_shared_arguments(parser, "seed", "data_root", "device", "results_dir", "figures_dir",
                         seed={"help": "seed of the split, the shuffling and the initialisation (default 0)"},
                         data_root=TORCHVISION_ROOT)
    args = parser.parse_args(argv)
    args.nf = sorted({nf for group in (args.nf or [[1, 2, 4] if args.dataset == "mnist" else [4, 8, 16]])
                      for nf in group})
    args.epochs = args.epochs or DEFAULT_EPOCHS[args.dataset]
    return args


def main(args: argparse.Namespace) -> None:
    device = resolve_device(args.device)
    data = load_pair(args.dataset, args.pos, args.neg, args.data_root, device)
    accuracies = {}
    for nf in args.nf:
        model, history = train_classifier(args.classifier_type, nf, args.epochs, data, args.seed, args.batch_size,
                                          args.lr, args.early_stop)
        name = classifier_name(args.classifier_type, nf, args.epochs, args.seed)
        folder = gasten_path(args.results_dir, "classifier", name, args.dataset, args.pos, args.neg)
        save_classifier(model, args.classifier_type, nf, folder, {**run_settings(args, device), **history})
        accuracies[name] = history["test_accuracy"]
        print(f"{name}: test accuracy {100 * history['test_accuracy']:.2f}% (best epoch {history['best_epoch']}), "
              f"saved {folder}")
    fig, ax = plt.subplots(figsize=(1.2 * len(accuracies) + 2, 3.2))
    ax.bar(list(accuracies), [100 * a for a in accuracies.values()])
    ax.set_ylim(min(accuracies.values()) * 100 - 5, 100)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{args.dataset} {args.pos} (1) vs {args.neg} (0)")
    fig.tight_layout()
    save_figure(fig, gasten_path(args.figures_dir, "classifiers_figure", dataset=args.dataset, pos=args.pos, neg=args.neg))


if __name__ == "__main__":
    run_script(main, parse_args)
