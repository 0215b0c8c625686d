"""Every hardness score from one batched training run, the confident-learning baseline, and how well each
score tells flipped labels from clean ones (the mislabel-detection benchmark).

`score_training_run` trains one SimpleNN per seed, all at once and full batch, on the (noisy) labels, and
lets observers of that one run find the stragglers, record the training dynamics and keep the VoG
checkpoints; confidence and energy come from the trained networks. With network 'ResNet' it trains one
ResNet-18 per seed instead (full batch or minibatches), one after another, each watched by observers of its
own that see the whole data's logits after every epoch; stragglers are the SimpleNN's (its latent space is
where the paper's class manifolds invert), so a ResNet run has none. Each observer is timed, so every score's
extra cost over the plain training is known. Cleanlab's confident learning needs out-of-sample
probabilities: K more networks per run, each trained without one fold (all of them at once as well).
"""
import argparse
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import Tensor, nn

from hardness.cli import UserInputError, add_common_arguments, non_negative_int, positive_int
from hardness.data import Dataset, flip_labels, load_dataset
from hardness.device import seconds_on_device
from hardness.dynamics import RANKINGS as DYNAMICS_RANKINGS
from hardness.dynamics import DynamicsRecorder
from hardness.engine import (TrainingState, WholeDataObservers, derived_seed, network_logits, train_networks,
                             train_resnets, train_simple_nns)
from hardness.identifiers import SCORERS, VOG_CHECKPOINTS, VOG_STAGE, StragglerTracker
from hardness.results import save_npz_with_settings
from hardness.vog import CheckpointRecorder, calibrate, checkpoint_epochs, vog_scores

RANKINGS = {"confidence": ("confidence", -1), "energy": ("energy", 1), "vog": ("vog", 1), **DYNAMICS_RANKINGS,
            "cleanlab": ("cleanlab", -1)}         # strategy -> (array, sign): sign * array is higher when harder
SETS = ("stragglers", "cleanlab_flagged", "aum_flagged")
TRAJECTORY_SCORES = ("loss", "confidence", "el2n", "margin")   # taken at each trajectory epoch
AUM_THRESHOLD_PERCENTILE = 99
SHARED_COST = "aum/forgetting/data_map/el2n/loss"       # one observer records these five together


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
    notes: list[str] = field(default_factory=list)


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


def confident_learning(seeds: Sequence[int], data: Tensor, labels: Tensor, num_classes: int, epochs: int,
                       folds: int, fold_seed: int, network: str = "SimpleNN", batch_size: int | None = None,
                       progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Cleanlab on K-fold out-of-sample probabilities, one fold assignment per seed: label quality [runs, N]
    (self-confidence, low = suspicious) and cleanlab's flagged set [runs, N] bool. Trains runs x folds
    networks of the scored type (SimpleNNs all at once), network (r, k) on every sample outside run r's fold k."""
    from cleanlab.filter import find_label_issues          # imported here: cleanlab alone adds 1.6 s to every script
    from cleanlab.rank import get_label_quality_scores
    runs, n = len(seeds), len(labels)
    generator = torch.Generator().manual_seed(fold_seed)
    fold_of = torch.stack([torch.randperm(n, generator=generator) % folds for _ in range(runs)]).to(labels.device)
    train_masks = fold_of[:, None, :] != torch.arange(folds, device=labels.device)[None, :, None]  # [runs, K, N]
    model = train_networks(network, [derived_seed(seed, k) for seed in seeds for k in range(folds)], data, labels,
                           num_classes, epochs, train_masks.flatten(0, 1).float(), batch_size, progress=progress,
                           description=f"cleanlab: {runs} x {folds} fold networks")
    probabilities = network_logits(model, data).softmax(-1).view(runs, folds, n, num_classes)
    held_out = probabilities.gather(1, fold_of[:, None, :, None].expand(-1, 1, -1, num_classes))[:, 0]  # [runs, N, C]
    labels_np, held_out = labels.cpu().numpy(), held_out.double().cpu().numpy()
    quality = np.stack([get_label_quality_scores(labels_np, p, method="self_confidence") for p in held_out])
    flagged = np.stack([find_label_issues(labels_np, p, n_jobs=1) for p in held_out])
    return quality.astype(np.float32), flagged


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
        _, sets, _ = train_observed(network, [derived_seed(seed, part) for seed in seeds], data, relabelled,
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

    def final_scores() -> None:
        logits = network_logits(model, data)                                                 # [runs, N, C]
        scores["confidence"] = -SCORERS["confidence"](logits)                                # the largest logit
        scores["energy"] = SCORERS["energy"](logits)
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
            seeds, data, labels, num_classes, epochs, cleanlab_folds, derived_seed(seeds[0], 2), network, batch_size,
            progress)
        seconds["cleanlab"] = time.perf_counter() - start
    if aum_threshold:
        start = time.perf_counter()
        arrays["aum_flagged"] = aum_threshold_flags(seeds, data, labels, num_classes, epochs,
                                                    derived_seed(seeds[0], 3), network, batch_size, progress)
        seconds["aum_flagged"] = time.perf_counter() - start
    notes = []
    if (inversion < 0).any():
        notes.append(f"{int((inversion < 0).sum())} (run, class) pairs never inverted within {epochs} epochs: "
                     "those classes have no stragglers")
    if network != "SimpleNN":
        notes.append("ResNet runs: no stragglers (they are found in the SimpleNN's latent space)")
    return ScoredRun(arrays, seconds, trajectory_epochs, inversion, notes)


# ----------------------------------------------------------------------------- how well scores find flipped labels

def hardness_ranking(scores: dict[str, np.ndarray], strategy: str) -> np.ndarray:
    """[runs, N] `strategy`'s score oriented so that higher is harder (a key of RANKINGS)."""
    array, sign = RANKINGS[strategy]
    return sign * scores[array].astype(np.float64)


def precision_at_k(hardness: np.ndarray, positives: np.ndarray, k: int) -> float:
    """Share of positives among the k highest scores (ties to the lower index)."""
    top = np.argsort(-hardness, kind="stable")[:k]
    return float(positives[top].mean()) if k else float("nan")


def detection_scores(hardness: np.ndarray, flipped: np.ndarray) -> dict[str, float]:
    """How a continuous score [runs, N] (higher = more suspicious) separates flipped [N] bool from clean labels:
    AUROC, average precision and precision at k = number flipped of the score averaged over runs, and the
    mean and std of each run's AUROC and AP."""
    from sklearn.metrics import average_precision_score, roc_auc_score
    mean = hardness.mean(0)
    per_run_auroc = [roc_auc_score(flipped, run) for run in hardness]
    per_run_ap = [average_precision_score(flipped, run) for run in hardness]
    return {"auroc": float(roc_auc_score(flipped, mean)), "ap": float(average_precision_score(flipped, mean)),
            "precision_at_k": precision_at_k(mean, flipped, int(flipped.sum())),
            "auroc_run_mean": float(np.mean(per_run_auroc)), "auroc_run_std": float(np.std(per_run_auroc)),
            "ap_run_mean": float(np.mean(per_run_ap)), "ap_run_std": float(np.std(per_run_ap))}


def set_scores(flagged: np.ndarray, flipped: np.ndarray) -> dict[str, float]:
    """Precision, recall and F1 of a flagged set [runs, N] bool against flipped [N] bool: mean and std over
    runs (a run that flags nothing has precision 0), and the mean size of the set."""
    true_positives = (flagged & flipped).sum(1)
    precision = true_positives / np.maximum(flagged.sum(1), 1)
    recall = true_positives / max(int(flipped.sum()), 1)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    return {"precision": float(precision.mean()), "precision_std": float(precision.std()),
            "recall": float(recall.mean()), "recall_std": float(recall.std()),
            "f1": float(f1.mean()), "f1_std": float(f1.std()), "flagged": float(flagged.sum(1).mean())}


def trajectory_auroc(scores: dict[str, np.ndarray], flipped: np.ndarray) -> dict[str, np.ndarray]:
    """AUROC against the flipped labels of loss, confidence (low largest logit), EL2N and margin (low) taken at
    each trajectory epoch, averaged over runs first: name -> [T]."""
    from sklearn.metrics import roc_auc_score
    signs = {"loss": 1, "confidence": -1, "el2n": 1, "margin": -1}
    return {name: np.array([roc_auc_score(flipped, signs[name] * scores[f"{name}_trajectory"][:, t].mean(0))
                            for t in range(scores[f"{name}_trajectory"].shape[1])]) for name in TRAJECTORY_SCORES}


def rank_correlations(scores: dict[str, np.ndarray], names: Sequence[str]) -> np.ndarray:
    """Spearman correlation [S, S] between the run-averaged hardness of each named ranking (stragglers: the
    share of runs marking a sample)."""
    from scipy.stats import spearmanr
    columns = [scores[name].mean(0) if name in SETS else hardness_ranking(scores, name).mean(0) for name in names]
    return np.atleast_2d(spearmanr(np.stack(columns, 1)).statistic)


# ----------------------------------------------------------------------------- one setting, saved

def add_scoring_arguments(parser: argparse.ArgumentParser, runs: int) -> None:
    """The flags of the scoring run that hardness_scores.py and mislabel_detection_benchmark.py share."""
    parser.add_argument("--runs", type=positive_int, default=runs,
                        help=f"independent networks (seeds); SimpleNNs are trained as one batched computation "
                             f"(default {runs})")
    parser.add_argument("--network", choices=["SimpleNN", "ResNet"], default="SimpleNN",
                        help="the network scored: SimpleNN (full batch, SGD lr 0.1, as Section 3) or the evaluation "
                             "ResNet-18 (Adam lr 1e-3, wd 1e-2, full batch unless --batch_size; no stragglers) "
                             "(default SimpleNN)")
    parser.add_argument("--batch_size", type=positive_int, default=None,
                        help="--network ResNet only: shuffled minibatches of this size instead of full batch")
    parser.add_argument("--epochs", type=positive_int, default=500,
                        help="training epochs: full-batch steps of the SimpleNN, passes of the ResNet (default 500)")
    parser.add_argument("--score_epoch", type=non_negative_int, default=20,
                        help="EL2N, GraNd and loss are taken after the step of this 0-based epoch (default 20)")
    parser.add_argument("--trajectory_every", type=positive_int, default=10,
                        help="margin, loss, largest logit and EL2N are kept after every this many epochs, for the "
                             "AUROC-against-epoch figure (default 10)")
    parser.add_argument("--cleanlab_folds", type=non_negative_int, default=5,
                        help="folds of cleanlab's out-of-sample probabilities: this many more networks per run; "
                             "0 skips the baseline (default 5)")
    parser.add_argument("--aum_threshold_samples", action="store_true",
                        help="also AUM's own verdict: two more trainings in which N // (C + 1) samples get a fake "
                             "extra class; flag the samples whose AUM is at most the 99th percentile of theirs")
    add_common_arguments(parser)


def check_scoring_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.epochs < VOG_CHECKPOINTS:
        parser.error(f"--epochs must be at least {VOG_CHECKPOINTS}: VoG takes a checkpoint after each of "
                     f"{VOG_CHECKPOINTS} epochs, got {args.epochs}")
    if args.score_epoch >= args.epochs:
        parser.error(f"--score_epoch must be below --epochs ({args.epochs}), got {args.score_epoch}")
    if args.cleanlab_folds == 1:
        parser.error("--cleanlab_folds must be 0 (no baseline) or at least 2")
    if args.batch_size is not None and args.network != "ResNet":
        parser.error("--batch_size applies to --network ResNet only; SimpleNNs train full batch")


NOISE, SCORE = 0, 4      # seed stages: the label noise as verifying_importance_of_stragglers.py flips it; the runs


@dataclass
class ScoredSetting:
    """One dataset subset with flipped labels and every score of its runs."""
    dataset: Dataset
    labels: Tensor               # [N] the labels trained on, after flipping
    flipped: np.ndarray          # [N] bool
    run: ScoredRun


def score_setting(dataset_name: str, subset_size: int, noise_ratio: float, args: argparse.Namespace,
                  device: torch.device) -> ScoredSetting:
    """Load the subset, flip int(noise_ratio * N) labels (seeded, as Sections 4-5 do) and score `args.runs` runs
    with the scoring flags of `args` (add_scoring_arguments)."""
    seed = args.seed
    dataset = load_dataset(dataset_name, args.data_root, subset_size, seed, device)
    labels, flipped_rows = flip_labels(dataset.labels, noise_ratio, dataset.num_classes,
                                       torch.Generator().manual_seed(derived_seed(seed, NOISE)))
    flipped = np.zeros(len(labels), dtype=bool)
    flipped[flipped_rows.cpu().numpy()] = True
    run = score_training_run([derived_seed(seed, SCORE, i) for i in range(args.runs)], dataset.data, labels,
                             dataset.num_classes, args.epochs, args.score_epoch, args.trajectory_every,
                             args.cleanlab_folds, args.aum_threshold_samples, args.network, args.batch_size)
    return ScoredSetting(dataset, labels, flipped, run)


def save_setting(setting: ScoredSetting, path: Path, settings: dict) -> None:
    """Every score [runs, N] (trajectories [runs, T, N]), the flipped mask, the labels and where the samples come
    from to `path` (.npz); the settings, seconds and score orientations to the .json beside it."""
    arrays = {**setting.run.scores, "flipped": setting.flipped, "labels": setting.labels.cpu().numpy(),
              "clean_labels": setting.dataset.labels.cpu().numpy(), "subset_indices": setting.dataset.indices.numpy(),
              "inversion_epochs": setting.run.inversion_epochs,
              "trajectory_epochs": np.asarray(setting.run.trajectory_epochs)}
    save_npz_with_settings(arrays, path, {**settings, "class_names": setting.dataset.class_names,
                                          "seconds": setting.run.seconds, "notes": setting.run.notes,
                                          "rankings": {name: {"array": array, "harder_when": "high" if sign > 0 else "low"}
                                                       for name, (array, sign) in RANKINGS.items()}})


def load_setting_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays save_setting wrote."""
    if not Path(path).is_file():
        raise UserInputError(f"scores file {path} not found; make it first with hardness_scores.py")
    with np.load(path) as saved:
        return dict(saved)


def load_settings(path: Path) -> dict:
    """The settings JSON save_setting wrote beside `path`."""
    return json.loads(Path(path).with_suffix(".json").read_text())


COST_KEYS = {"stragglers": "stragglers", "confidence": "confidence/energy", "energy": "confidence/energy",
             "vog": "vog", "grand": "grand", "cleanlab": "cleanlab", "cleanlab_flagged": "cleanlab",
             "aum_flagged": "aum_flagged", **{name: SHARED_COST for name in ("aum", "forgetting", "el2n", "data_map", "loss")}}


def benchmark_rows(setting: ScoredSetting, dataset_name: str, noise_ratio: float, network: str) -> list[dict]:
    """One row per score: its detection scores (continuous) or set scores (set-valued), and its extra seconds."""
    scores, seconds, rows = setting.run.scores, setting.run.seconds, []
    for name in [*RANKINGS, *SETS]:
        if name not in scores and RANKINGS.get(name, (name,))[0] not in scores:
            continue
        row = {"dataset": dataset_name, "noise_ratio": noise_ratio, "network": network, "score": name,
               "extra_seconds": seconds[COST_KEYS[name]], "training_seconds": seconds["training"]}
        row.update(set_scores(scores[name], setting.flipped) if name in SETS
                   else detection_scores(hardness_ranking(scores, name), setting.flipped))
        rows.append(row)
    return rows


def combine_rows(rows: list[dict]) -> list[dict]:
    """Rows of several benchmark runs (e.g. the seeds of a sweep) merged per dataset, noise, network and score:
    every number averaged, with the number of runs and the std of the AUROC (or F1) over them."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        key = (row["dataset"], float(row["noise_ratio"]), row.get("network") or "SimpleNN", row["score"])
        groups.setdefault(key, []).append(row)
    combined = []
    for (dataset, noise_ratio, network, score), members in groups.items():
        numbers = {key for row in members for key, value in row.items() if value not in ("", None)} - {
            "dataset", "noise_ratio", "network", "score"}
        merged = {"dataset": dataset, "noise_ratio": noise_ratio, "network": network, "score": score,
                  "benchmark_runs": len(members)}
        merged.update({key: float(np.mean([float(row[key]) for row in members])) for key in sorted(numbers)})
        headline = "auroc" if "auroc" in numbers else "f1"
        merged[f"{headline}_std_over_runs"] = float(np.std([float(row[headline]) for row in members]))
        combined.append(merged)
    return combined


def markdown_table(rows: list[dict]) -> str:
    """The benchmark as a markdown table: continuous scores by AUROC, AP and precision at k; sets by P / R / F1.
    The network is named in the dataset column where it is not the SimpleNN."""
    lines = ["| dataset | noise | score | AUROC | AP | P@k | AUROC per run | set P / R / F1 | extra s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        network = row.get("network") or "SimpleNN"
        dataset = row["dataset"] + ("" if network == "SimpleNN" else f" ({network})")
        if row.get("auroc") not in (None, ""):
            cells = [f"{row['auroc']:.3f}", f"{row['ap']:.3f}", f"{row['precision_at_k']:.3f}",
                     f"{row['auroc_run_mean']:.3f} ± {row['auroc_run_std']:.3f}", "–"]
        else:
            cells = ["–", "–", "–", "–", f"{row['precision']:.3f} / {row['recall']:.3f} / {row['f1']:.3f}"]
        cost = f"{row['extra_seconds']:.1f}" + (" *" if COST_KEYS[row["score"]] == SHARED_COST else "")
        lines.append(f"| {dataset} | {row['noise_ratio']:g} | {row['score']} | " + " | ".join(cells) + f" | {cost} |")
    return "\n".join(lines) + ("\n\n* one observer records aum, forgetting, data_map, el2n and loss together; the "
                               "seconds are theirs jointly.\n")


# ----------------------------------------------------------------------------- figures

def plot_data_map(scores: dict[str, np.ndarray], flipped: np.ndarray, title: str) -> plt.Figure:
    """Confidence against variability (means over runs), coloured by correctness, flipped labels marked."""
    confidence, variability = scores["data_map_confidence"].mean(0), scores["data_map_variability"].mean(0)
    fig, ax = plt.subplots(figsize=(6, 5))
    points = ax.scatter(variability, confidence, c=scores["data_map_correctness"].mean(0), cmap="viridis", s=2,
                        vmin=0, vmax=1, rasterized=True)
    ax.scatter(variability[flipped], confidence[flipped], facecolors="none", edgecolors="red", s=8, linewidths=0.5,
               label=f"flipped label ({int(flipped.sum())})", rasterized=True)
    fig.colorbar(points, ax=ax, label="correctness (share of epochs correct)")
    ax.set_xlabel("variability (std of the label's probability over epochs)")
    ax.set_ylabel("confidence (mean probability of the label)")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title, fontsize=10)
    return fig


def plot_correlations(matrix: np.ndarray, names: Sequence[str], title: str) -> plt.Figure:
    """The Spearman correlation matrix of the scores' run-averaged hardness."""
    fig, ax = plt.subplots(figsize=(7, 6))
    image = ax.imshow(matrix, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right")
    ax.set_yticks(range(len(names)), names)
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7)
    fig.colorbar(image, ax=ax, label="Spearman correlation")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_top_k_classes(scores: dict[str, np.ndarray], labels: np.ndarray, class_names: Sequence[str], k: int,
                       title: str) -> plt.Figure:
    """Share of each class among each score's k hardest samples (run-averaged hardness), and in the data."""
    rows, names = [], []
    for name in RANKINGS:
        if RANKINGS[name][0] in scores:
            top = np.argsort(-hardness_ranking(scores, name).mean(0), kind="stable")[:k]
            rows.append(np.bincount(labels[top], minlength=len(class_names)) / k)
            names.append(name)
    rows.append(np.bincount(labels, minlength=len(class_names)) / len(labels))
    names.append("all samples")
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(names) + 1.5))
    image = ax.imshow(np.stack(rows), cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    fig.colorbar(image, ax=ax, label=f"share of the top {k}")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_trajectory_auroc(curves: dict[str, dict[str, np.ndarray]], epochs: dict[str, np.ndarray],
                          inversion: dict[str, float]) -> plt.Figure:
    """AUROC of each trajectory score against the epoch it is taken at, one panel per setting, the mean
    inversion epoch dashed."""
    fig, axes = plt.subplots(1, len(curves), figsize=(4.5 * len(curves), 3.6), sharey=True, squeeze=False)
    for ax, (setting, by_score) in zip(axes[0], curves.items()):
        for name, values in by_score.items():
            ax.plot(epochs[setting] + 1, values, label=name)
        if not np.isnan(inversion[setting]):
            ax.axvline(inversion[setting] + 1, color="black", linestyle="--", linewidth=1,
                       label=f"mean inversion point ({inversion[setting] + 1:.0f})")
        ax.set_xscale("log")
        ax.set_title(setting, fontsize=10)
        ax.set_xlabel("epochs trained (log scale)")
    axes[0, 0].set_ylabel("AUROC, flipped vs clean labels")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return fig
