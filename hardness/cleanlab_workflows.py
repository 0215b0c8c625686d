"""The five-line cleanlab workflows a user would write instead of this toolkit, pinned so that the benchmark runs
them on the same flipped labels in the same run:

    features = pixels flattened in [0, 1] (a table: its standardised columns)
    probabilities = cross_val_predict(model, features, labels, method="predict_proba",
                                      cv=StratifiedKFold(5, shuffle=True, random_state=seed))
    quality = get_label_quality_scores(labels, probabilities, method="self_confidence")

with model LogisticRegression(max_iter=300) or MLPClassifier(hidden_layer_sizes=(256,), max_iter=40,
random_state=seed). Low quality = suspicious; each workflow's seconds are its whole cross-validation.
"""
import time
import warnings

import numpy as np
from torch import Tensor

WORKFLOWS = ("cleanlab_logreg", "cleanlab_mlp")
WORKFLOW_FOLDS = 5


def workflow_features(data: Tensor) -> np.ndarray:
    """[N, D] float32: images [N, C, H, W] rescaled per channel to [0, 1] (the loader's standardisation is affine
    per channel, so this is pixel / 255 wherever the data holds a black and a white pixel), flattened; a table's
    standardised columns as they are."""
    values = data.detach().cpu().double()
    if values.dim() == 4:
        low = values.amin(dim=(0, 2, 3), keepdim=True)
        high = values.amax(dim=(0, 2, 3), keepdim=True)
        values = (values - low) / (high - low).clamp_min(1e-12)
    return values.reshape(len(values), -1).float().numpy()


def workflow_model(name: str, seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    if name == "cleanlab_logreg":
        return LogisticRegression(max_iter=300)
    return MLPClassifier(hidden_layer_sizes=(256,), max_iter=40, random_state=seed)


def run_workflow(name: str, data: Tensor, labels: np.ndarray, seed: int) -> tuple[np.ndarray, float]:
    """The workflow's label quality [N] (low = suspicious) and its seconds (features to scores)."""
    from cleanlab.rank import get_label_quality_scores
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    start = time.perf_counter()
    features = workflow_features(data)
    folds = StratifiedKFold(WORKFLOW_FOLDS, shuffle=True, random_state=seed % 2**32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)            # max_iter is part of the pinned workflow
        probabilities = cross_val_predict(workflow_model(name, seed % 2**32), features, labels, cv=folds,
                                          method="predict_proba")
    quality = get_label_quality_scores(labels, probabilities, method="self_confidence")
    return quality, time.perf_counter() - start
