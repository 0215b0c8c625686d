"""Every hardness score from one batched training run, and cleanlab's confident-learning baseline.

`score_training_run` trains one SimpleNN per seed, all at once and full batch, on the (noisy) labels, and
lets observers of that one run find the stragglers, record the training dynamics and keep the VoG
checkpoints; confidence and energy come from the trained networks. With network 'ResNet' it trains one
ResNet-18 per seed instead (full batch or minibatches), one after another, each watched by observers of its
own that see the whole data's logits after every epoch; stragglers are the SimpleNN's (its latent space is
where the paper's class manifolds invert), so a ResNet run has none. Each observer is timed, so every score's
extra cost over the plain training is known. Cleanlab's confident learning needs out-of-sample
probabilities: K more networks per run, each trained without one fold (all of them at once as well).
"""
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from hardness.device import seconds_on_device
from hardness.dynamics import RANKINGS as DYNAMICS_RANKINGS
from hardness.dynamics import DynamicsRecorder
from hardness.engine import (TrainingState, WholeDataObservers, network_logits, train_networks,
                             train_resnets, train_simple_nns)
from hardness.identifiers import SCORERS, VOG_CHECKPOINTS, VOG_STAGE, StragglerTracker
from hardness.seeds import NetworkStage, child_seeds, stage_seed
from hardness.vog import CheckpointRecorder, calibrate, checkpoint_epochs, vog_scores

RANKINGS = {"confidence": ("confidence", -1), "energy": ("energy", 1), "vog": ("vog", 1), **DYNAMICS_RANKINGS,
            "cleanlab": ("cleanlab", -1),
            "data_iq": ("data_iq_aleatoric", 1), "prototypicality": ("prototypicality", 1),
            "agreement": ("agreement", -1), "prediction_entropy": ("prediction_entropy", 1),
            "runner_up": ("runner_up", 1),
            "augmentation_sensitivity": ("augmentation_sensitivity", 1), "latent_outlier": ("latent_outlier", 1),
            "duplicate": ("copy_distance", -1)}   # strategy -> (array, sign): sign * array is higher when harder
CHARACTERISATION = ("data_iq", "prototypicality", "agreement", "prediction_entropy", "runner_up",
                    "augmentation_sensitivity", "latent_outlier", "duplicate")   # the fast recipe's only
SETS = ("stragglers", "cleanlab_flagged", "aum_flagged")
TRAJECTORY_SCORES = ("loss", "confidence", "el2n", "margin")   # taken at each trajectory epoch
AUM_THRESHOLD_PERCENTILE = 99
SHARED_COST = "aum/forgetting/data_map/el2n/loss"       # one observer records these five together


def hardness_ranking(scores: dict[str, np.ndarray], strategy: str) -> np.ndarray:
    """[runs, N] `strategy`'s score oriented so that higher is harder (a key of RANKINGS)."""
    array, sign = RANKINGS[strategy]
    return sign * scores[array].astype(np.float64)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TimedObserver:
    """An observer that adds up the seconds its `observer` spends observing."""

    def __init__(self, observer: object, device: torch.device) -> None:
        self.observer, self.device, self.seconds = observer, device, 0.0

    def is_check(self, epoch: int) -> bool:
        return self.observer.is_check(epoch)

    def observe(self, state: TrainingState) -> None:
        start = time.perf_counter()
        self.observer.observe(state)
        _synchronize(self.device)
        self.seconds += time.perf_counter() - start

    def done(self) -> bool:
        return self.observer.done()


@dataclass
class ScoredRun:
    """The scores of one batched run: name -> [runs, N] array (trajectories [runs, T, N]), and seconds spent:
    'training' (plain training) and each score's extra cost."""
    scores: dict[str, np.ndarray]
    seconds: dict[str, float]
    trajectory_epochs: list[int]
    inversion_epochs: np.ndarray                      # [runs, C], -1 where a class never inverted
    predicted_labels: np.ndarray                      # [N] the runs' majority prediction after the last epoch
    notes: list[str] = field(default_factory=list)
    recipe: dict = field(default_factory=lambda: {"recipe": "paper"})   # what ran, for the settings JSON
    latent: np.ndarray | None = None                  # [N, D] the first run's last hidden layer (fast; never saved)


def majority_labels(logits: Tensor) -> Tensor:
    """[N] the class most runs predict from logits [runs, N, C]; a tie goes to the tied class of the highest mean
    probability (half of it, in [0, 0.5], is added to the integer votes, so it never outweighs one vote)."""
    num_classes = logits.shape[-1]
    votes = nn.functional.one_hot(logits.argmax(-1), num_classes).sum(0).double()          # [N, C]
    return (votes + logits.double().softmax(-1).mean(0) / 2).argmax(-1)


def train_observed(network: str, seeds: Sequence[int], data: Tensor, labels: Tensor, num_classes: int, epochs: int,
                   batch_size: int | None, make_observers: Callable[[int], dict[str, TimedObserver]],
                   progress: bool = True,
                   description: str = "training") -> tuple[nn.Module, list[dict[str, TimedObserver]], float]:
    """One network per seed, watched by the timed observers `make_observers(runs)` returns (name -> observer):
    one set for the whole batch of SimpleNNs, or one set per ResNet (runs = 1), shown the whole data's logits.
    Returns the networks, the observer sets in seed order, and the seconds of the ResNets' whole-data passes."""
    if network == "SimpleNN":
        observers = make_observers(len(seeds))
        model = train_simple_nns(seeds, data, labels, num_classes, epochs, observers=list(observers.values()),
                                 progress=progress, description=description)
        return model, [observers], 0.0
    models, sets, pass_seconds = nn.ModuleList(), [], 0.0
    for run, seed in enumerate(seeds):
        observers = make_observers(1)
        watcher = WholeDataObservers(list(observers.values()), data)
        models.extend(train_resnets([seed], data, labels, num_classes, epochs, batch_size=batch_size,
                                    observers=[watcher], progress=progress,
                                    description=f"{description} (ResNet {run + 1}/{len(seeds)})"))
        sets.append(observers)
        pass_seconds += watcher.seconds
    return models, sets, pass_seconds


def fold_assignment(runs: int, n: int, folds: int, fold_seed: int, device: torch.device) -> Tensor:
    """[runs, N] each sample's cleanlab fold in every run, one seeded assignment per run (sizes differ by <= 1)."""
    generator = torch.Generator().manual_seed(fold_seed)
    return torch.stack([torch.randperm(n, generator=generator) % folds for _ in range(runs)]).to(device)


def cleanlab_on_folds(labels: Tensor, probabilities: Tensor, fold_of: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Cleanlab's label quality (self-confidence, low = suspicious) and flagged set, both [runs, N], from the
    probabilities [runs, K, N, C] of every fold network on every sample, each sample taken from the network that
    did not train on it (fold_of [runs, N])."""
    from cleanlab.filter import find_label_issues          # imported here: cleanlab alone adds 1.6 s to every script
    from cleanlab.rank import get_label_quality_scores
    num_classes = probabilities.shape[-1]
    held_out = probabilities.gather(1, fold_of[:, None, :, None].expand(-1, 1, -1, num_classes))[:, 0]  # [runs, N, C]
    labels_np, held_out = labels.cpu().numpy(), held_out.double().cpu().numpy()
    quality = np.stack([get_label_quality_scores(labels_np, p, method="self_confidence") for p in held_out])
    flagged = np.stack([find_label_issues(labels_np, p, n_jobs=1) for p in held_out])
    return quality.astype(np.float32), flagged


def confident_learning(seeds: Sequence[int], data: Tensor, labels: Tensor, num_classes: int, epochs: int,
                       folds: int, fold_seed: int, network: str = "SimpleNN", batch_size: int | None = None,
                       progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Cleanlab on K-fold out-of-sample probabilities, one fold assignment per seed: label quality [runs, N]
    (self-confidence, low = suspicious) and cleanlab's flagged set [runs, N] bool. Trains runs x folds
    networks of the scored type (SimpleNNs all at once), network (r, k) on every sample outside run r's fold k."""
    runs, n = len(seeds), len(labels)
    fold_of = fold_assignment(runs, n, folds, fold_seed, labels.device)
    train_masks = fold_of[:, None, :] != torch.arange(folds, device=labels.device)[None, :, None]  # [runs, K, N]
    model = train_networks(network, [fold for seed in seeds for fold in child_seeds(seed, folds)], data, labels,
                           num_classes, epochs, train_masks.flatten(0, 1).float(), batch_size, progress=progress,
                           description=f"cleanlab: {runs} x {folds} fold networks")
    probabilities = network_logits(model, data).softmax(-1).view(runs, folds, n, num_classes)
    return cleanlab_on_folds(labels, probabilities, fold_of)


def stacked_dynamics(sets: list[dict[str, TimedObserver]]) -> dict[str, Tensor]:
    """The DynamicsRecorder scores of every observer set, stacked along the runs axis."""
    per_set = [observers["dynamics"].observer.scores() for observers in sets]
    return {name: torch.cat([scores[name] for scores in per_set]) for name in per_set[0]}


def aum_threshold_flags(seeds: Sequence[int], data: Tensor, labels: Tensor, num_classes: int, epochs: int,
                        threshold_seed: int, network: str = "SimpleNN", batch_size: int | None = None,
                        progress: bool = True) -> np.ndarray:
    """AUM's own verdict [runs, N] bool, as its paper: give N // (C + 1) samples a fake extra class, train,
    and flag the others whose AUM is at most the 99th percentile of the fake-class samples' AUM. Two passes
    with disjoint fake-class samples, so every sample is judged by a pass in which it kept its label."""
    n, share = len(labels), len(labels) // (num_classes + 1)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(threshold_seed)).to(labels.device)
    flags = torch.zeros(len(seeds), n, dtype=torch.bool, device=labels.device)
    judged = torch.zeros(n, dtype=torch.bool, device=labels.device)
    for part in range(2):
        fake = torch.zeros(n, dtype=torch.bool, device=labels.device)
        fake[order[part * share:(part + 1) * share]] = True
        relabelled = torch.where(fake, num_classes, labels)

        def make_observers(runs: int) -> dict[str, TimedObserver]:
            recorder = DynamicsRecorder(data, relabelled, num_classes + 1, runs, range(epochs), 0, grand=False)
            return {"dynamics": TimedObserver(recorder, data.device)}
        _, sets, _ = train_observed(network, [child_seeds(seed, 2)[part] for seed in seeds], data, relabelled,
                                    num_classes + 1, epochs, batch_size, make_observers, progress,
                                    f"AUM threshold pass {part + 1}")
        aum = stacked_dynamics(sets)["aum"]                                                   # [runs, N]
        threshold = torch.quantile(aum[:, fake], AUM_THRESHOLD_PERCENTILE / 100, dim=1)     # [runs]
        verdict = ~fake & ~judged                                                            # judged by this pass
        flags[:, verdict] = aum[:, verdict] <= threshold[:, None]
        judged |= verdict
    return flags.cpu().numpy()


def score_training_run(seeds: Sequence[int], data: Tensor, labels: Tensor, num_classes: int, epochs: int,
                       score_epoch: int = 20, trajectory_every: int = 10, cleanlab_folds: int = 5,
                       aum_threshold: bool = False, network: str = "SimpleNN", batch_size: int | None = None,
                       progress: bool = True) -> ScoredRun:
    """Every score of one network per seed trained on `labels` for `epochs` epochs (SimpleNNs all at once, full
    batch; ResNets one by one, full batch or minibatches of `batch_size`): stragglers at each class's inversion
    point (SimpleNN only), confidence and energy of the trained networks, late-stage VoG (normalised within
    each class) over VOG_CHECKPOINTS checkpoints, AUM, forgetting, EL2N, GraNd and loss at `score_epoch`, data
    maps; trajectories every `trajectory_every` epochs; cleanlab with `cleanlab_folds` folds (0: none) and
    AUM's threshold verdict with `aum_threshold`."""
    device, runs = data.device, len(seeds)
    trajectory_epochs = list(range(trajectory_every - 1, epochs, trajectory_every))

    def make_observers(count: int) -> dict[str, TimedObserver]:
        observers = {"dynamics": DynamicsRecorder(data, labels, num_classes, count, range(epochs), score_epoch,
                                                  trajectory_epochs),
                     "checkpoints": CheckpointRecorder(checkpoint_epochs(epochs, VOG_CHECKPOINTS))}
        if network == "SimpleNN":
            observers["stragglers"] = StragglerTracker(count, labels, num_classes)
        return {name: TimedObserver(observer, device) for name, observer in observers.items()}

    start = time.perf_counter()
    model, sets, pass_seconds = train_observed(network, seeds, data, labels, num_classes, epochs, batch_size,
                                               make_observers, progress, f"scores: {runs} network(s)")
    _synchronize(device)

    def observed(name: str) -> float:
        return sum(observers[name].seconds for observers in sets if name in observers)
    seconds = {"training": time.perf_counter() - start - pass_seconds - sum(map(observed, sets[0]))}
    scores: dict[str, Tensor] = {}
    if network == "SimpleNN":
        scores["stragglers"], seconds["stragglers"] = sets[0]["stragglers"].observer.hard("copy"), observed("stragglers")
        inversion = sets[0]["stragglers"].observer.inverted_at.cpu().numpy()
    else:
        inversion = np.zeros((runs, 0), dtype=np.int64)                  # no inversion point without stragglers

    predicted: list[Tensor] = []                                                             # [N], once

    def final_scores() -> None:
        logits = network_logits(model, data)                                                 # [runs, N, C]
        scores["confidence"] = -SCORERS["confidence"](logits)                                # the largest logit
        scores["energy"] = SCORERS["energy"](logits)
        predicted.append(majority_labels(logits))
    seconds["confidence/energy"] = seconds_on_device(device, final_scores)

    def vog() -> None:
        networks = [model] if network == "SimpleNN" else list(model)
        raw = torch.cat([vog_scores(one, observers["checkpoints"].observer.checkpoints, data, labels,
                                    stages=[VOG_STAGE])[VOG_STAGE].reshape(-1, len(labels))
                         for one, observers in zip(networks, sets)])                        # [runs, N]
        scores["vog"] = calibrate(raw, labels, "normalize")
    seconds["vog"] = observed("checkpoints") + seconds_on_device(device, vog)
    scores.update(stacked_dynamics(sets))
    grand_seconds = sum(observers["dynamics"].observer.grand_seconds for observers in sets)
    seconds["grand"] = grand_seconds
    seconds[SHARED_COST] = observed("dynamics") - grand_seconds + pass_seconds

    arrays = {name: value.cpu().numpy() for name, value in scores.items()}
    arrays = {name: value.astype(np.float32) if value.dtype == np.float64 else value for name, value in arrays.items()}
    if cleanlab_folds:
        start = time.perf_counter()
        arrays["cleanlab"], arrays["cleanlab_flagged"] = confident_learning(
            seeds, data, labels, num_classes, epochs, cleanlab_folds, stage_seed(seeds[0], NetworkStage.FOLD_ASSIGNMENT), network, batch_size,
            progress)
        seconds["cleanlab"] = time.perf_counter() - start
    if aum_threshold:
        start = time.perf_counter()
        arrays["aum_flagged"] = aum_threshold_flags(seeds, data, labels, num_classes, epochs,
                                                    stage_seed(seeds[0], NetworkStage.AUM_THRESHOLD), network, batch_size, progress)
        seconds["aum_flagged"] = time.perf_counter() - start
    notes = []
    if (inversion < 0).any():
        notes.append(f"{int((inversion < 0).sum())} (run, class) pairs never inverted within {epochs} epochs: "
                     "those classes have no stragglers")
    if network != "SimpleNN":
        notes.append("ResNet runs: no stragglers (they are found in the SimpleNN's latent space)")
    return ScoredRun(arrays, seconds, trajectory_epochs, inversion, predicted[0].cpu().numpy(), notes)
