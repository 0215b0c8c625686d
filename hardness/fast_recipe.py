"""The fast recipe: every score of a user's data from minibatch networks scored early, before they memorise.

`--runs` networks (an MLP of two hidden layers of 512 ReLUs, or for images the small CNN of
memorisation_and_inversion.py) train at once as one batched computation (hardness.minibatch: stacked under
`torch.vmap`), each from its own initialisation and in its own minibatch order, with SGD (lr 0.01, momentum
0.9) on minibatches of `batch_size`. After every epoch the observers see the eval-mode logits of all samples:
the training dynamics (AUM, forgetting events, data maps, every epoch's margin, loss, largest logit and EL2N),
the stragglers (each class's inversion point in the first hidden layer) and the stopping rule
(hardness.stopping), which ends training at an epoch chosen without clean labels, or at the epoch cap. EL2N,
GraNd, loss, confidence and energy are taken at that epoch; the trajectory scores run over the epochs up to it.
So are the scores of why a sample is hard (hardness/characterisation.py): Data-IQ from the data map,
prototypicality and the latent outlier score in the last hidden layer, agreement over runs x the last 3 epochs, for
images the sensitivity to one- and two-pixel shifts, and every sample's nearest copy in pixel space. VoG (15 checkpoints over 500 full-batch steps in the paper recipe) is not computed. Cleanlab, where
`cleanlab_folds` > 0, scores the out-of-fold probabilities of runs x folds more networks of the same kind,
trained to the same epoch.
"""
import copy
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from hardness.characterisation import (RecentPredictions, agreement, aleatoric_from_data_map, augmentation_sensitivity,
                                       data_iq_groups, latent_outlier_scores, nearest_copies, prototypicality)
from hardness.cleanlab_workflows import workflow_features
from hardness.device import seconds_on_device
from hardness.dynamics import DynamicsRecorder, el2n, per_sample_gradient_norms, sample_losses
from hardness.identifiers import SCORERS, StragglerTracker
from hardness.minibatch import StackedNetworks, train_minibatch
from hardness.prediction import predict
from hardness.scoring import ScoredRun, TimedObserver, cleanlab_on_folds, fold_assignment, majority_labels
from hardness.seeds import NetworkStage, child_seeds, stage_generator, stage_seed
from hardness.stopping import INVERSION_FIRST_CHECK, StoppingRule, UntilStopped, stopping_epoch
from neural_networks import memorisation_cnn, memorisation_mlp

FAST_NETWORKS = ("MLP", "CNN")
LR, MOMENTUM, WIDTH = 0.01, 0.9, 512
SHIFT_PIXELS = 2                                   # augmentation: shifts of up to this many pixels each way
AUTO_SHIFT_MIN_SIDE = 16                           # augment "auto": only images whose both sides are this long
AUGMENT_CHOICES = ("auto", "on", "off")


@dataclass(frozen=True)
class FastRecipe:
    """What the fast recipe trains and how it stops. Every default was chosen on the MNIST and digits settings of
    benchmarks/choose_fast_recipe.py (docs/scores.md, "The fast recipe"); cleanlab joins the consensus only where
    its folds run."""
    network: str = "MLP"
    epoch_cap: int = 12
    batch_size: int = 128
    stopping: str = "rank_stability"
    augment: str = "auto"
    cleanlab_folds: int = 0
    consensus: tuple[str, ...] = ("el2n", "cleanlab")

    def shifts_images(self, sample_shape: tuple[int, ...]) -> bool:
        """Whether training sees random shifts: "on" for images, "auto" for images of sides >= 16 pixels (a 2-pixel
        shift of an 8x8 digit cost 0.12 AUROC), never for tables."""
        if len(sample_shape) != 3 or self.augment == "off":
            return False
        return self.augment == "on" or min(sample_shape[1:]) >= AUTO_SHIFT_MIN_SIDE

    def consensus_members(self) -> list[str]:
        """The consensus's members this run computes (cleanlab only where its folds run)."""
        return [member for member in self.consensus if member != "cleanlab" or self.cleanlab_folds]

    def settings(self) -> dict:
        return {"recipe": "fast", **asdict(self), "consensus": self.consensus_members()}


def build_networks(network: str, seeds: Sequence[int], sample_shape: tuple[int, ...], num_classes: int,
                   device: torch.device) -> StackedNetworks:
    """One network per seed (torch seeded with it), stacked: the MLP, or the CNN for images [C, H, W]."""
    if network == "CNN" and len(sample_shape) != 3:
        raise ValueError(f"the CNN needs images [C, H, W], got samples shaped {list(sample_shape)} (a table)")
    models = []
    for seed in seeds:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            models.append(memorisation_mlp(sample_shape, num_classes, WIDTH) if network == "MLP"
                          else memorisation_cnn(sample_shape, num_classes))
    return StackedNetworks([model.to(device) for model in models])


def random_shifts(generators: Sequence[torch.Generator], max_shift: int = SHIFT_PIXELS):
    """An augmentation for train_minibatch: every image of a batch [runs, b, C, H, W] moved by its own whole-pixel
    offset in [-max_shift, max_shift] on each axis, run r's offsets drawn from generators[r] (so a run shifts alike
    batched or alone), the border repeated (standardised images have no zero)."""
    def shift(batch: Tensor) -> Tensor:
        runs, b, channels, height, width = batch.shape
        images = F.pad(batch.flatten(0, 1), (max_shift,) * 4, mode="replicate")              # [R*b, C, H+2s, W+2s]
        offsets = torch.cat([torch.randint(0, 2 * max_shift + 1, (2, b), generator=g) for g in generators],
                            1).to(batch.device)                                                # [2, R*b]
        rows = offsets[0, :, None] + torch.arange(height, device=batch.device)                 # [R*b, H]
        cols = offsets[1, :, None] + torch.arange(width, device=batch.device)                  # [R*b, W]
        picked = images[torch.arange(runs * b, device=batch.device)[:, None, None, None],
                        torch.arange(channels, device=batch.device)[None, :, None, None],
                        rows[:, None, :, None], cols[:, None, None, :]]                        # [R*b, C, H, W]
        return picked.view(runs, b, channels, height, width)
    return shift


def train_fast(recipe: FastRecipe, seeds: Sequence[int], data: Tensor, labels: Tensor, num_classes: int, epochs: int,
               observers: Sequence[object] = (), train_rows: Tensor | None = None, progress: bool = True,
               description: str = "training") -> StackedNetworks:
    """The recipe's networks, one per seed (initialised from it, in the order of its MINIBATCH_ORDER stage, on its
    row of `train_rows` where given), trained for up to `epochs` epochs and watched by `observers`."""
    networks = build_networks(recipe.network, seeds, tuple(data.shape[1:]), num_classes, data.device)
    optimizer = torch.optim.SGD(networks.parameters(), lr=LR, momentum=MOMENTUM)
    shuffles = [stage_generator(seed, NetworkStage.MINIBATCH_ORDER) for seed in seeds]
    augment = (random_shifts([stage_generator(seed, NetworkStage.AUGMENTATION) for seed in seeds])
               if recipe.shifts_images(tuple(data.shape[1:])) else None)
    train_minibatch(networks, optimizer, data, labels, num_classes, epochs, recipe.batch_size, shuffles, observers,
                    progress, description, augment, train_rows)
    return networks


def fold_rows(fold_of: Tensor, folds: int) -> Tensor:
    """[runs * K, M] the rows network (r, k) trains on: every sample outside run r's fold k, the first M of them,
    M the smallest such count (folds differ by at most one sample, so at most one is left out per network)."""
    masks = fold_of[:, None, :] != torch.arange(folds, device=fold_of.device)[None, :, None]   # [runs, K, N]
    masks = masks.flatten(0, 1)
    size = int(masks.sum(1).min())
    return torch.stack([mask.nonzero().flatten()[:size] for mask in masks])


def score_fast_run(recipe: FastRecipe, seeds: Sequence[int], data: Tensor, labels: Tensor, num_classes: int,
                   progress: bool = True) -> ScoredRun:
    """Every score of the recipe's runs on (data, labels), as hardness.scoring.score_training_run returns them;
    `stopping_epoch` (0-based) is where the rule stopped training, and `trajectory_epochs` every epoch up to it."""
    device, runs = data.device, len(seeds)
    tracker = StragglerTracker(runs, labels, num_classes, start=INVERSION_FIRST_CHECK, interval=1)
    rule = StoppingRule(recipe.stopping, labels, tracker)
    dynamics = DynamicsRecorder(data, labels, num_classes, runs, range(recipe.epoch_cap), None,
                                range(recipe.epoch_cap), grand=False)
    recent = RecentPredictions()
    timed = {"stragglers": TimedObserver(tracker, device), "dynamics": TimedObserver(dynamics, device),
             "stopping": TimedObserver(rule, device), "characterisation": TimedObserver(recent, device)}
    watcher = UntilStopped(timed["stopping"], [timed["stragglers"], timed["dynamics"], timed["characterisation"]])
    start = time.perf_counter()
    networks = train_fast(recipe, seeds, data, labels, num_classes, recipe.epoch_cap, [watcher], progress=progress,
                          description=f"fast recipe: {runs} {recipe.network}s")
    observed = sum(observer.seconds for observer in timed.values())
    seconds = {"training": time.perf_counter() - start - observed + timed["stopping"].seconds,   # the rule is training's
               "stragglers": timed["stragglers"].seconds}
    stop = stopping_epoch(rule, dynamics.recorded)

    scores: dict[str, Tensor] = {"stragglers": tracker.hard("copy")}
    predicted: list[Tensor] = []

    def at_stop() -> None:
        logits, _ = networks.whole_data(data)                                               # [runs, N, C]
        scores["confidence"] = -SCORERS["confidence"](logits)
        scores["energy"] = SCORERS["energy"](logits)
        scores["el2n"], scores["loss"] = el2n(logits, labels), sample_losses(logits, labels)
        predicted.append(majority_labels(logits))
    seconds["confidence/energy"] = seconds_on_device(device, at_stop)
    recorded = dynamics.scores()
    trajectories = {name: value[:, :stop + 1] for name, value in recorded.items() if name.endswith("_trajectory")}
    scores.update({name: value for name, value in recorded.items() if not name.endswith("_trajectory")
                   and name not in ("el2n", "loss")})
    scores.update(trajectories)
    seconds["aum/forgetting/data_map/el2n/loss"] = timed["dynamics"].seconds

    def grand() -> None:
        scores["grand"] = per_sample_gradient_norms(networks, data, labels)
    seconds["grand"] = seconds_on_device(device, grand)
    latent: list[np.ndarray] = []

    def characterise() -> None:
        characterised, first_latent = characterisation_scores(networks, data, labels, num_classes, recent, scores)
        scores.update(characterised)
        latent.append(first_latent)
    seconds["characterisation"] = timed["characterisation"].seconds + seconds_on_device(device, characterise)
    start = time.perf_counter()
    if len(data) > 1:
        partner, distance = nearest_copies(workflow_features(data))
        scores["nearest_copy"], scores["copy_distance"] = torch.from_numpy(partner)[None], torch.from_numpy(distance)[None]
    seconds["duplicates"] = time.perf_counter() - start

    arrays = {name: value.cpu().numpy() for name, value in scores.items()}
    arrays = {name: value.astype(np.float32) if value.dtype == np.float64 else value for name, value in arrays.items()}
    if recipe.cleanlab_folds:
        start = time.perf_counter()
        arrays["cleanlab"], arrays["cleanlab_flagged"] = fast_cleanlab(recipe, seeds, data, labels, num_classes,
                                                                       stop + 1, progress)
        seconds["cleanlab"] = time.perf_counter() - start
    arrays["consensus_members"] = np.asarray(recipe.consensus_members())
    inversion = tracker.inverted_at.cpu().numpy()
    notes = [f"fast recipe: {runs} {recipe.network}s stopped by the {recipe.stopping} rule after epoch {stop + 1} "
             f"(cap {recipe.epoch_cap})" + ("" if rule.stopped_at is not None else "; the rule never fired"),
             "fast recipe: no VoG (the paper recipe's 15 full-batch checkpoints)"]
    shifted = recipe.shifts_images(tuple(data.shape[1:]))
    if shifted:
        notes.append(f"fast recipe: trained on random shifts of up to {SHIFT_PIXELS} pixels")
    if (inversion < 0).any():
        notes.append(f"{int((inversion < 0).sum())} (run, class) pairs never inverted within {stop + 1} epochs: "
                     "those classes have no stragglers")
    return ScoredRun(arrays, seconds, list(range(stop + 1)), inversion, predicted[0].cpu().numpy(), notes,
                     {**recipe.settings(), "stopping_epoch": stop + 1, "rule_fired": rule.stopped_at is not None,
                      "shifted": shifted}, latent[0])


def last_hidden_layer(networks: StackedNetworks, data: Tensor) -> Tensor:
    """[runs, N, D] every sample's activations in the networks' last hidden layer, chunk by chunk."""
    base = copy.deepcopy(networks.template)
    base.latent = len(base.hidden)
    call = lambda params, buffers, inputs: functional_call(base, (params, buffers), (inputs,))[1]   # noqa: E731
    return predict(lambda x: torch.vmap(call, in_dims=(0, 0, None))(networks.params, networks.buffers, x), data,
                   sample_dim=1)


def characterisation_scores(networks: StackedNetworks, data: Tensor, labels: Tensor, num_classes: int,
                            recent: RecentPredictions,
                            scores: dict[str, Tensor]) -> tuple[dict[str, Tensor], np.ndarray]:
    """The scores of hardness/characterisation.py at the stopping epoch: Data-IQ from the data map, prototypicality
    and the latent outlier score in the last hidden layer, agreement over runs x the last recorded epochs and, for
    images, the sensitivity to one- and two-pixel shifts; and the first run's latent vectors [N, D]."""
    aleatoric = aleatoric_from_data_map(scores["data_map_confidence"], scores["data_map_variability"])
    latent = last_hidden_layer(networks, data)                                              # [runs, N, D]
    share, entropy, runner_up = agreement(recent.stacked())
    out = {"data_iq_aleatoric": aleatoric, "data_iq_group": data_iq_groups(scores["data_map_confidence"], aleatoric),
           "prototypicality": prototypicality(latent, labels, num_classes), "agreement": share[None],
           "prediction_entropy": entropy[None], "runner_up": runner_up[None]}
    if len(data) > 1:                                       # neighbours need another sample
        out["latent_outlier"] = latent_outlier_scores(latent)
    if data.dim() == 4:
        out["augmentation_sensitivity"] = augmentation_sensitivity(lambda x: networks.forward(x)[0], data)
    return out, latent[0].cpu().numpy()


def fast_cleanlab(recipe: FastRecipe, seeds: Sequence[int], data: Tensor, labels: Tensor, num_classes: int,
                  epochs: int, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Cleanlab on the out-of-fold probabilities of runs x folds recipe networks trained for `epochs` epochs, the
    folds and the fold networks' seeds drawn as the paper recipe draws them."""
    runs, folds = len(seeds), recipe.cleanlab_folds
    fold_of = fold_assignment(runs, len(labels), folds, stage_seed(seeds[0], NetworkStage.FOLD_ASSIGNMENT),
                              labels.device)
    networks = train_fast(recipe, [fold for seed in seeds for fold in child_seeds(seed, folds)], data, labels,
                          num_classes, epochs, train_rows=fold_rows(fold_of, folds), progress=progress,
                          description=f"cleanlab: {runs} x {folds} fold networks")
    probabilities = networks.whole_data(data)[0].softmax(-1).view(runs, folds, len(labels), num_classes)
    return cleanlab_on_folds(labels, probabilities, fold_of)
