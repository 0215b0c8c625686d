"""GASTeN's scores of a generator: the Frechet distances and their feature extractors, and the scorer of every epoch.

"FID (own features)" takes its features from a small CNN trained here on the dataset's ten classes (never
comparable with Inception-based FIDs); the Frechet distance in a classifier's embedding takes the classifier's
`embed`; given a local file of the standard FID Inception-v3's weights, the Inception FID. Each is torchmetrics'
Frechet distance against the pair's training images, whose statistics are computed once and cached.
"""
import hashlib
import importlib.util
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance, NoTrainInceptionV3
from tqdm import tqdm

from hardness.cli import UserInputError
from hardness.gasten import average_confusion_distance, dataset_splits, generate
from hardness.prediction import PREDICTION_CHUNK, predict
from hardness.results import gasten_path, write_atomically
from neural_networks import FeatureCNN


class Embedding(nn.Module):
    """A model's `embed` as a feature extractor for torchmetrics' Frechet distance."""

    def __init__(self, model: nn.Module, num_features: int) -> None:
        super().__init__()
        self.model, self.num_features = model, num_features

    def forward(self, x: Tensor) -> Tensor:
        return self.model.embed(x)


def statistics_key(extractor: nn.Module, real_images: Tensor) -> str:
    """16 hex digits of a SHA-256 over everything the real images' statistics depend on: the extractor's class
    and weights, and the real images themselves (so the data folder, the dataset and the pair)."""
    digest = hashlib.sha256(type(extractor).__name__.encode())
    for name, tensor in [*extractor.state_dict().items(), ("real_images", real_images)]:
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def frechet_metric(extractor: nn.Module, real_images: Tensor, cache_dir: Path | None = None,
                   label: str = "real") -> FrechetInceptionDistance:
    """torchmetrics' Frechet distance in `extractor`'s features, with the statistics of `real_images`
    computed once (and kept in cache_dir/<label>_<statistics_key>.pt when `cache_dir` is given); `reset()`
    keeps them and drops the generated ones."""
    extractor = extractor.eval().requires_grad_(False)
    cache = None if cache_dir is None else Path(cache_dir) / f"{label}_{statistics_key(extractor, real_images)}.pt"
    metric = FrechetInceptionDistance(feature=extractor, reset_real_features=False, normalize=False)
    metric = metric.to(real_images.device)
    states = ("real_features_sum", "real_features_cov_sum", "real_features_num_samples")
    if cache is not None and cache.is_file():
        saved = torch.load(cache, map_location=real_images.device, weights_only=True)
        for name in states:
            setattr(metric, name, saved[name])
        return metric
    with torch.no_grad():
        for chunk in real_images.split(PREDICTION_CHUNK):
            metric.update(chunk, real=True)
    if cache is not None:
        write_atomically(cache, lambda temporary: torch.save({name: getattr(metric, name) for name in states},
                                                             temporary))
    return metric


def frechet_distance(metric: FrechetInceptionDistance, images: Tensor) -> float:
    """The distance between `images` and the metric's real images (needs more images than features)."""
    metric.reset()
    with torch.no_grad():
        for chunk in images.split(PREDICTION_CHUNK):
            metric.update(chunk, real=False)
    return float(metric.compute())


class InceptionFeatures(nn.Module):
    """The 2048 pool features of the standard FID Inception-v3 (torchmetrics' NoTrainInceptionV3 over
    torch-fidelity's network, weights from a local file) of [N, 1, H, W] images in [-1, 1], fed to it as
    3-channel uint8 images as FID expects (it resizes them to 299 x 299 itself)."""
    num_features = 2048

    def __init__(self, weights: Path) -> None:
        super().__init__()
        self.inception = NoTrainInceptionV3(name="inception-v3-compat", features_list=[str(self.num_features)],
                                            feature_extractor_weights_path=str(weights))

    def forward(self, x: Tensor) -> Tensor:
        pixels = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1)  # [N, 3, H, W]
        return self.inception(pixels)                                                           # [N, 2048]


def inception_features(weights: Path, device: torch.device) -> InceptionFeatures:
    """InceptionFeatures of the weights file, or a one-line error when the file or torch-fidelity is missing or
    the file does not hold the FID Inception network's weights."""
    weights = Path(weights)
    if not weights.is_file():
        raise UserInputError(f"--inception_weights {weights}: no such file")
    if importlib.util.find_spec("torch_fidelity") is None:      # torchmetrics' Inception is torch-fidelity's network
        raise UserInputError("--inception_weights needs torch-fidelity: pip install torch-fidelity")
    try:
        return InceptionFeatures(weights).to(device)
    except (RuntimeError, EOFError, KeyError, ValueError, pickle.UnpicklingError) as error:  # torch.load, load_state_dict
        reason = str(error).partition("\n")[0]
        raise UserInputError(f"--inception_weights {weights} does not hold the weights of the FID Inception "
                             f"network (torch-fidelity's FeatureExtractorInceptionV3): {type(error).__name__}: "
                             f"{reason}") from error


def feature_cnn(dataset: str, root: Path, results_dir: Path, device: torch.device, progress: bool = True) -> FeatureCNN:
    """The extractor of "FID (own features)": FeatureCNN trained on all ten classes of the dataset (2 epochs,
    Adam lr 1e-3, batch 128, seed 0) on first use, which it says on stderr, and cached under
    <results_dir>/gasten/feature_cnn_<dataset>.pt."""
    path = gasten_path(results_dir, "feature_cnn", dataset=dataset)
    model = FeatureCNN().to(device)
    if path.is_file():
        model.load_state_dict(torch.load(path, map_location=device, weights_only=True))
        return model.eval()
    print(f"training the feature CNN of FID (own features) on all of {dataset} (2 epochs, once: kept in {path})",
          file=sys.stderr)
    train_x, train_y, _, _ = dataset_splits(dataset, root)
    train_x, train_y = train_x.to(device), train_y.to(device)
    generator = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = FeatureCNN().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(2):
        order = torch.randperm(len(train_y), generator=generator).to(device)
        for batch in tqdm(order.split(128), desc=f"feature CNN epoch {epoch + 1}", disable=not progress, leave=False):
            loss = F.cross_entropy(model.classify(train_x[batch]), train_y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    write_atomically(path, lambda temporary: torch.save(model.state_dict(), temporary))
    return model.eval()


@dataclass
class Scorer:
    """Scores a generator on the fixed test noise: ACD under the classifier, FID (own features), the Frechet
    distance in the classifier's embedding and, given the Inception metric, the Inception FID."""
    noise: Tensor
    classifier: nn.Module
    own_features: FrechetInceptionDistance
    classifier_features: FrechetInceptionDistance
    inception: FrechetInceptionDistance | None = None

    def __call__(self, generator: nn.Module) -> dict[str, float]:
        images = generate(generator, self.noise)
        probabilities = predict(self.classifier, images)
        scores = {"acd": float(average_confusion_distance(probabilities)),
                  "fid_own_features": frechet_distance(self.own_features, images),
                  "fid_classifier": frechet_distance(self.classifier_features, images)}
        if self.inception is not None:
            scores["fid_inception"] = frechet_distance(self.inception, images)
        return scores
