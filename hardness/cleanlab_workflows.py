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


def workflow_probabilities(name: str, data: Tensor, labels: np.ndarray, seed: int) -> np.ndarray:
    """[N, C] the workflow's out-of-fold probabilities of the pixels in [0, 1] (or a table's columns)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    folds = StratifiedKFold(WORKFLOW_FOLDS, shuffle=True, random_state=seed % 2**32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)            # max_iter is part of the pinned workflow
        return cross_val_predict(workflow_model(name, seed % 2**32), workflow_features(data), labels, cv=folds,
                                 method="predict_proba")


def run_workflow(name: str, data: Tensor, labels: np.ndarray, seed: int) -> tuple[np.ndarray, float]:
    """The workflow's label quality [N] (low = suspicious) and its seconds (features to scores)."""
    from cleanlab.rank import get_label_quality_scores
    start = time.perf_counter()
    probabilities = workflow_probabilities(name, data, labels, seed)
    quality = get_label_quality_scores(labels, probabilities, method="self_confidence")
    return quality, time.perf_counter() - start


DATALAB_ISSUES = ("label", "outlier", "near_duplicate")


def datalab_issues(labels: np.ndarray, probabilities: np.ndarray, features: np.ndarray) -> dict[str, np.ndarray]:
    """cleanlab's Datalab.find_issues for the label, outlier and near-duplicate issue types, as its docs show it
    (out-of-fold probabilities [N, C] and features [N, D]): <type>_score [N] (low = an issue) and <type>_flagged
    [N] bool per type, and near_duplicate_of [N] (a member of the sample's near-duplicate set, -1 where none)."""
    from cleanlab import Datalab
    lab = Datalab(data={"label": labels}, label_name="label", verbosity=0)
    lab.find_issues(pred_probs=probabilities, features=features, issue_types={kind: {} for kind in DATALAB_ISSUES})
    out = {}
    for kind in DATALAB_ISSUES:
        issues = lab.get_issues(kind)
        out[f"{kind}_score"] = issues[f"{kind}_score"].to_numpy(np.float64)
        out[f"{kind}_flagged"] = issues[f"is_{kind}_issue"].to_numpy(bool)
    sets = lab.get_issues("near_duplicate")["near_duplicate_sets"]
    out["near_duplicate_of"] = np.array([int(members[0]) if len(members) else -1 for members in sets], dtype=np.int64)
    return out
