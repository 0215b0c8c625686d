"""Classification metrics of many networks at once, as torchmetrics defines them, and the evaluation of
freshly trained networks on test sets."""
from collections.abc import Sequence

import torch
from torch import Tensor

from hardness.engine import train_and_predict

METRICS = ("accuracy", "precision", "recall", "F1")


def confusion_matrices(predictions: Tensor, labels: Tensor, masks: Tensor, num_classes: int) -> Tensor:
    """Confusion matrix of every run, [runs, true class, predicted class], counting the samples in `masks`.

    predictions [runs, N], labels [N], masks [runs, N] or [N]; one bincount for all runs.
    """
    runs = predictions.shape[0]
    cell = (torch.arange(runs, device=labels.device)[:, None] * num_classes + labels) * num_classes + predictions
    weights = masks.expand(runs, -1).float().flatten()
    return torch.bincount(cell.flatten(), weights, minlength=runs * num_classes ** 2).view(runs, num_classes, num_classes)


def classification_metrics(predictions: Tensor, labels: Tensor, masks: Tensor, num_classes: int) -> dict[str, Tensor]:
    """Accuracy and macro precision, recall and F1 of every run at once, as torchmetrics defines them.

    predictions [runs, N], labels [N], masks [runs, N] or [N] (which samples count). Accuracy is the
    share of correct predictions (torchmetrics' average='micro'); the macro scores average the per-class
    scores over the classes that occur among the labels or predictions, a 0/0 score counting as 0.
    A run with no samples gets NaN. Returns name -> [runs].
    """
    confusion = confusion_matrices(predictions, labels, masks, num_classes)
    tp = confusion.diagonal(dim1=1, dim2=2)
    predicted, actual = confusion.sum(1), confusion.sum(2)           # tp + fp, tp + fn
    present = (predicted + actual) > 0

    def macro(numerator: Tensor, denominator: Tensor) -> Tensor:
        score = torch.where(denominator > 0, numerator / denominator.clamp_min(1), 0.0)
        return (score * present).sum(1) / present.sum(1)

    return {"accuracy": tp.sum(1) / confusion.sum((1, 2)), "precision": macro(tp, predicted),
            "recall": macro(tp, actual), "F1": macro(2 * tp, predicted + actual)}


def train_and_evaluate(network: str, seeds: Sequence[int], data: Tensor, labels: Tensor, num_classes: int,
                       epochs: int, train_masks: Tensor, test_sets: dict[str, Tensor], batch_size: int | None = None,
                       progress: bool = True) -> dict[str, dict[str, list[float]]]:
    """Train one network per seed on its row of `train_masks` [networks, N] and score it on each test set
    (name -> [N] mask shared by all networks, or [networks, N], one per network). Returns test set ->
    metric -> one value per network."""
    test_sets = {name: test.to(labels.device).expand(len(seeds), -1) for name, test in test_sets.items()}
    test_rows = torch.stack(list(test_sets.values())).flatten(0, 1).any(0).nonzero().flatten()
    predictions = train_and_predict(network, seeds, data, labels, num_classes, epochs, train_masks, test_rows,
                                    batch_size, progress)
    results = {}
    for name, test in test_sets.items():
        scores = classification_metrics(predictions, labels[test_rows], test[:, test_rows], num_classes)
        results[name] = {metric: scores[metric].tolist() for metric in METRICS}
    return results
