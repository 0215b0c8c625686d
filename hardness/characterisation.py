"""Scores that say why a sample is hard, not only whether its label is suspect: Data-IQ's aleatoric uncertainty and
groups, prototypicality, agreement, sensitivity to shifts, latent-space outliers and near duplicates. Plain
functions over recorded tensors, as hardness/dynamics.py is; the fast recipe (hardness/fast_recipe.py) computes them
from its networks at the stopping epoch.

Nearest neighbours come from scikit-learn's NearestNeighbors (a ball tree or brute force in chunks, chosen by
the library), never an N x N matrix held at once.
"""
import hashlib
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from hardness.prediction import predict

EASY_CONFIDENCE, HARD_CONFIDENCE = 0.75, 0.25      # Data-IQ's thresholds on the data-map confidence
DATA_IQ_GROUPS = ("easy", "ambiguous", "hard")     # the group codes 0, 1, 2
AGREEMENT_EPOCHS = 3                               # agreement: the last this many recorded epochs of every run
OUTLIER_NEIGHBOURS = 10                            # the latent outlier score's k
SENSITIVITY_SHIFTS = ((1, 0), (-1, 0), (0, 1), (0, -1), (2, 0), (-2, 0), (0, 2), (0, -2))   # (rows, cols)


def data_iq_aleatoric(probabilities: Tensor) -> Tensor:
    """[runs, N] Data-IQ's aleatoric uncertainty: the mean over epochs of p (1 - p), p the probability of the
    given label, from probabilities [runs, T, N]."""
    return (probabilities * (1 - probabilities)).mean(1)


def aleatoric_from_data_map(confidence: Tensor, variability: Tensor) -> Tensor:
    """The same from a data map's confidence (the mean of p) and variability (its standard deviation over the
    epochs, population form): mean p (1 - p) = mean p - mean p^2 = c (1 - c) - v^2."""
    return (confidence * (1 - confidence) - variability.square()).clamp_min(0)


def data_iq_groups(confidence: Tensor, aleatoric: Tensor, easy: float = EASY_CONFIDENCE,
                   hard: float = HARD_CONFIDENCE) -> Tensor:
    """[...] int8 codes of DATA_IQ_GROUPS from confidence and aleatoric uncertainty [..., N]: easy (confidence >=
    `easy`, aleatoric below its median over the samples, the mean of the middle two for an even count), hard
    (confidence <= `hard`, aleatoric below its median), ambiguous (every other sample)."""
    low_aleatoric = aleatoric < aleatoric.double().quantile(0.5, dim=-1, keepdim=True)
    groups = torch.ones(confidence.shape, dtype=torch.int8, device=confidence.device)
    groups[(confidence >= easy) & low_aleatoric] = 0
    groups[(confidence <= hard) & low_aleatoric] = 2
    return groups


def prototypicality(latent: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """[runs, N] the cosine distance (1 - cosine similarity) of every sample's latent vector [runs, N, D] to the mean
    latent vector of its given class in the same run (high = atypical for its class)."""
    runs, _, width = latent.shape
    means = torch.zeros(runs, num_classes, width, dtype=latent.dtype, device=latent.device)
    means.index_add_(1, labels, latent)
    means /= torch.bincount(labels, minlength=num_classes).clamp(min=1)[None, :, None]   # [runs, C, D]
    return 1 - F.cosine_similarity(latent, means[:, labels], dim=-1)


def agreement(probabilities: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """From predictions [M, N, C] of M models (runs x recorded epochs): the share of models predicting the sample's
    majority class (ties to the lower class) [N], the entropy in nats of the mean prediction [N], and the mean
    prediction's second-largest probability [N] (high when the belief is split between two classes)."""
    votes = F.one_hot(probabilities.argmax(-1), probabilities.shape[-1]).sum(0)              # [N, C]
    share = votes.amax(-1).float() / len(probabilities)
    mean = probabilities.mean(0)                                                             # [N, C]
    entropy = -(mean * mean.clamp_min(1e-12).log()).sum(-1)
    runner_up = mean.topk(2, dim=-1).values[:, 1] if mean.shape[-1] > 1 else torch.zeros(len(mean))
    return share, entropy, runner_up


def shift_images(images: Tensor, rows: int, cols: int, border: str = "replicate") -> Tensor:
    """images [N, C, H, W] moved down `rows` and right `cols` pixels (negative: up, left), the uncovered border
    repeated (standardised data have no black to pad with) or, with border "zeros", 0."""
    pad = max(abs(rows), abs(cols))
    height, width = images.shape[-2:]
    padded = F.pad(images, (pad,) * 4, mode="replicate" if border == "replicate" else "constant")
    return padded[..., pad - rows:pad - rows + height, pad - cols:pad - cols + width]


def augmentation_sensitivity(logits_of: Callable[[Tensor], Tensor], data: Tensor) -> Tensor:
    """[runs, N] the mean over the 8 one- and two-pixel shifts of images [N, C, H, W] of KL(p || p_shifted), p the
    prediction of the image as given, `logits_of` a batch [n, ...] -> logits [runs, n, C]."""
    log_p = predict(logits_of, data, sample_dim=1).log_softmax(-1)                           # [runs, N, C]
    total = torch.zeros(log_p.shape[:2], device=data.device)
    for rows, cols in SENSITIVITY_SHIFTS:
        log_q = predict(lambda batch: logits_of(shift_images(batch, rows, cols)), data, sample_dim=1).log_softmax(-1)
        total += (log_p.exp() * (log_p - log_q)).sum(-1)
    return total / len(SENSITIVITY_SHIFTS)


def nearest_neighbours(features: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """For every row of features [N, D], its k nearest other rows (Euclidean): distances [N, k] and indices [N, k],
    nearest first (scikit-learn's NearestNeighbors)."""
    from sklearn.neighbors import NearestNeighbors
    k = min(k, len(features) - 1)
    if k < 1:
        raise ValueError("nearest neighbours need at least two samples")
    finder = NearestNeighbors(n_neighbors=k + 1).fit(features)
    distances, indices = finder.kneighbors(features)
    own = indices == np.arange(len(features))[:, None]                       # a sample is its own nearest, unless a
    keep = np.where(own.any(1, keepdims=True), ~own, np.arange(k + 1) < k)   # copy ties it: drop itself, else the last
    return distances[keep].reshape(-1, k), indices[keep].reshape(-1, k)


def latent_outlier_scores(latent: Tensor, k: int = OUTLIER_NEIGHBOURS) -> Tensor:
    """[runs, N] the mean distance of every sample's latent vector [runs, N, D] to its k nearest other samples in
    the same run (high = far from the data)."""
    return torch.stack([torch.from_numpy(nearest_neighbours(run.cpu().numpy(), k)[0].mean(1)).float()
                        for run in latent]).to(latent.device)


def exact_copies(features: np.ndarray) -> np.ndarray:
    """[N] int64: for every sample whose values [N, D] another sample has exactly, that other sample (for the first
    of a group the second, for every later one the first); -1 for the others."""
    groups: dict[bytes, list[int]] = {}
    for i, row in enumerate(np.ascontiguousarray(features)):
        groups.setdefault(hashlib.blake2b(row.tobytes(), digest_size=16).digest(), []).append(i)
    partner = np.full(len(features), -1, dtype=np.int64)
    for members in groups.values():
        if len(members) > 1:
            partner[members] = members[0]
            partner[members[0]] = members[1]
    return partner


def nearest_copies(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every sample of features [N, D]: its nearest other sample [N] and the root-mean-square difference to it
    [N] (0 for exact copies, which come first: a copy's partner is the sample it copies)."""
    distances, indices = nearest_neighbours(features, 1)
    partner, rms = indices[:, 0], distances[:, 0] / np.sqrt(features.shape[1])
    exact = exact_copies(features)
    partner = np.where(exact >= 0, exact, partner)
    rms = np.where(exact >= 0, 0.0, rms)
    return partner.astype(np.int64), rms.astype(np.float32)


class RecentPredictions:
    """An engine observer keeping the softmax predictions [runs, N, C] of the last AGREEMENT_EPOCHS epochs it saw."""

    def __init__(self, epochs: int = AGREEMENT_EPOCHS) -> None:
        self.epochs, self.kept = epochs, []

    def is_check(self, epoch: int) -> bool:
        return True

    def observe(self, state) -> None:
        self.kept = [*self.kept, state.logits.float().softmax(-1)][-self.epochs:]

    def done(self) -> bool:
        return True

    def stacked(self) -> Tensor:
        """[runs * epochs kept, N, C]."""
        return torch.cat(self.kept)
