"""Class-manifold radii, for every class and every run of a batched model at once."""
import numpy as np
import torch
from torch import Tensor


def one_hot_float(labels: Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """[N, num_classes] one-hot rows of `labels` as floats, for segment sums by matmul (no device sync)."""
    return torch.zeros(len(labels), num_classes, dtype=dtype, device=labels.device).scatter_(1, labels[:, None], 1.0)


def class_radii(latent: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Radius of every class manifold, for every run at once.

    latent: [runs, N, D] (or [N, D]); labels: [N]. Each latent vector is L2-normalised onto the unit
    sphere; the radius of class c is sqrt(mean over its samples of |u - mean_c(u)|^2). Segment sums
    over classes are matmuls with the one-hot labels; the work is done feature-major, [runs, D, N],
    which is how BatchedSimpleNN lays out its activations.
    Returns [runs, num_classes] (or [num_classes]); an empty class gets NaN.
    """
    unbatched = latent.dim() == 2
    if unbatched:
        latent = latent[None]
    features = latent.transpose(1, 2)                                         # [runs, D, N]
    inverse_norms = features.square().sum(1).clamp_min(1e-24).rsqrt()        # faster than .norm() here
    units = features * inverse_norms[:, None, :]
    one_hot = one_hot_float(labels, num_classes, latent.dtype)               # [N, C]
    counts = one_hot.sum(0)                                                   # [C]
    centres = (units @ one_hot) / counts.clamp_min(1)                         # [runs, D, C]
    spread = (units - centres @ one_hot.T).square().sum(1)                    # [runs, N]
    radii = ((spread @ one_hot) / counts).sqrt()                              # [runs, C]
    return radii[0] if unbatched else radii


def mean_inversion_epochs(inversions: np.ndarray) -> np.ndarray:
    """Per class, the mean inversion epoch over the runs where the class inverted (NaN if none did)."""
    inverted = inversions >= 0
    with np.errstate(invalid="ignore"):
        return np.where(inverted, inversions, 0).sum(0) / inverted.sum(0)
