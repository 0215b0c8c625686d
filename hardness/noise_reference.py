"""The reference model of instance-dependent label noise (`--noise_type instance`): out-of-sample probabilities
[N, C] that say, per sample, which other class it most resembles and how much. The model is never scored.

- A built-in image dataset: a network of another architecture than the one scored (the small CNN of
  memorisation_and_inversion.py, or the MLP where the CNN is scored), trained for REFERENCE_EPOCHS on the clean
  labels of up to REFERENCE_SAMPLES samples *outside* the scored subset (the rest of the train+test shuffle).
- A table, or a user's source (which has nothing outside it): the out-of-fold probabilities of scikit-learn's
  HistGradientBoostingClassifier over REFERENCE_FOLDS stratified folds of the subset's clean labels.

Cached under <results_dir>/scores/instance_reference/ per dataset, subset size, seed and reference.
"""
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from hardness.data import Dataset, dataset_label, load_source, subset_dataset
from hardness.minibatch import StackedNetworks, train_minibatch
from hardness.results import save_npz_with_settings, scores_path
from hardness.seeds import Stage, stage_generator, stage_seed
from hardness.user_data import parse_source
from neural_networks import memorisation_cnn, memorisation_mlp

REFERENCE_SAMPLES, REFERENCE_EPOCHS, REFERENCE_FOLDS = 20_000, 3, 5


def outside_network_probabilities(name: str, root: Path, subset: Dataset, architecture: str, seed: int,
                                  progress: bool = True) -> Tensor:
    """[N, C] softmax of a network trained on the clean labels of samples outside the subset (a built-in dataset)."""
    source = load_source(name, root)
    total = len(source.labels)
    n = len(subset.labels)
    if total - n < 1000:
        raise ValueError(f"instance noise needs samples outside the scored subset to train its reference model; "
                         f"{name} has {total} and the subset takes {n}")
    full = subset_dataset(source, dataset_label(name), total, seed, subset.data.device)  # same shuffle: subset first
    train = slice(n, n + REFERENCE_SAMPLES)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stage_seed(seed, Stage.INSTANCE_REFERENCE))
        shape = tuple(full.data.shape[1:])
        build = memorisation_cnn if architecture == "CNN" else memorisation_mlp
        model = build(shape, full.num_classes)
    networks = StackedNetworks([model.to(full.data.device)])
    optimizer = torch.optim.SGD(networks.parameters(), lr=0.01, momentum=0.9)
    train_minibatch(networks, optimizer, full.data[train], full.labels[train], full.num_classes, REFERENCE_EPOCHS,
                    128, [stage_generator(seed, Stage.INSTANCE_REFERENCE, 1)], progress=progress,
                    description=f"instance noise: reference {architecture}")
    return networks.whole_data(full.data[:n])[0][0].softmax(-1).cpu()


def out_of_fold_probabilities(subset: Dataset, seed: int) -> Tensor:
    """[N, C] out-of-fold probabilities of a HistGradientBoostingClassifier on the subset's clean labels."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    features = subset.data.reshape(len(subset.labels), -1).cpu().numpy()
    labels = subset.labels.cpu().numpy()
    state = stage_seed(seed, Stage.INSTANCE_REFERENCE) % 2**32
    folds = StratifiedKFold(REFERENCE_FOLDS, shuffle=True, random_state=state)
    probabilities = cross_val_predict(HistGradientBoostingClassifier(random_state=state), features, labels, cv=folds,
                                      method="predict_proba")
    full = np.zeros((len(labels), subset.num_classes))
    full[:, np.unique(labels)] = probabilities                        # a class absent from the subset gets 0
    return torch.from_numpy(full).float()


def reference_probabilities(dataset_name: str, subset: Dataset, data_root: Path, results_dir: Path, seed: int,
                            scored_network: str, progress: bool = True) -> Tensor:
    """[N, C] on the CPU: the reference model's probabilities of the subset's samples, cached."""
    builtin_images = parse_source(dataset_name) is None and subset.data.dim() == 4
    reference = ("MLP" if scored_network == "CNN" else "CNN") if builtin_images else "boosting"
    path = scores_path(results_dir, "instance_reference", f"{subset.name}_{len(subset.labels)}_seed{seed}_{reference}")
    if path.is_file():
        with np.load(path) as saved:
            if saved["sample_ids"].tolist() == list(subset.sample_ids):
                return torch.from_numpy(saved["probabilities"])
    probabilities = (outside_network_probabilities(dataset_name, data_root, subset, reference, seed, progress)
                     if builtin_images else out_of_fold_probabilities(subset, seed))
    save_npz_with_settings({"probabilities": probabilities.numpy(), "sample_ids": np.asarray(subset.sample_ids)},
                           path, {"reference": reference, "seed": seed, "dataset": subset.name,
                                  "samples": len(subset.labels)})
    return probabilities
