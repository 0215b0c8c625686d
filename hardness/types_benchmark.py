"""The hardness-types benchmark's mechanics: one injected setting scored by the fast recipe, cleanlab's Datalab on
the same samples, and the rows of the table (every score against the injected samples, every verdict against the
injected family, the verdict rates), merged over a sweep into one table of AUROC per score and type."""
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from hardness.cleanlab_workflows import datalab_issues, workflow_features, workflow_probabilities
from hardness.data import PixelSubset, load_pixels
from hardness.injection import FAMILIES, Injected, exact_duplicate_groups, inject
from hardness.mislabel import COST_KEYS, CONSENSUS_ROW, detection_scores, set_scores
from hardness.ranking import available, consensus_hardness, consensus_members
from hardness.scoring import RANKINGS, ScoredRun, hardness_ranking
from hardness.verdicts import VERDICTS, Verdicts, assign_verdicts

OTHER_DATASET = {"MNIST": "FashionMNIST", "FashionMNIST": "MNIST"}   # far_ood's source
CLEAN = "none"                                                       # the injection of a cell with nothing injected


def own_duplicates(images: torch.Tensor) -> np.ndarray:
    """[N] bool: every member of a group of exactly equal images of the subset as loaded (left out of the ground
    truth and never chosen for an injection)."""
    first = exact_duplicate_groups(images).numpy()
    members = first >= 0
    members[first[members]] = True
    return members


def injected_subset(subset: PixelSubset, kind: str, ratio: float, seed: int, data_root: Path,
                    probabilities: torch.Tensor | None = None) -> tuple[Injected, np.ndarray]:
    """The subset with `kind` injected into int(ratio * N) samples (nothing for CLEAN), and the [N] bool mask of the
    samples evaluated (all but the subset's own exact duplicates)."""
    images = subset.images.float() / 255
    excluded = own_duplicates(subset.images)
    if kind == CLEAN:
        n = len(subset.labels)
        return Injected(images, subset.labels.clone(), [""] * n, torch.full((n,), -1)), ~excluded
    other = None
    if kind == "far_ood":
        other = load_pixels(OTHER_DATASET[subset.name], data_root, len(subset.labels), seed).images.float() / 255
    injected = inject(images, subset.labels, len(subset.class_names), kind, ratio, seed, other, probabilities,
                      exclude=torch.from_numpy(excluded))
    return injected, ~excluded


def datalab_runs(labels: np.ndarray, data: torch.Tensor, latent: np.ndarray | None,
                 seed: int) -> dict[str, tuple[dict[str, np.ndarray], float]]:
    """Datalab on the pinned 5-fold MLPClassifier probabilities with the pixels, and with our latent vectors, as
    features: features name -> (issues, seconds of the cross-validation and find_issues)."""
    start = time.perf_counter()
    probabilities = workflow_probabilities("cleanlab_mlp", data, labels, seed)
    cross_validation = time.perf_counter() - start
    out = {}
    for features_name, features in (("pixels", workflow_features(data)), ("latent", latent)):
        if features is None:
            continue
        start = time.perf_counter()
        issues = datalab_issues(labels, probabilities, features)
        out[features_name] = (issues, cross_validation + time.perf_counter() - start)
    return out


def base_row(dataset: str, kind: str, ratio: float, recipe: str, score: str) -> dict:
    return {"dataset": dataset, "noise_type": kind, "noise_ratio": ratio, "family": FAMILIES.get(kind, CLEAN),
            "network": "MLP" if recipe == "fast" else "", "recipe": recipe, "score": score}


def score_rows(run: ScoredRun, verdicts: Verdicts, positives: np.ndarray, evaluated: np.ndarray, dataset: str,
               kind: str, ratio: float) -> list[dict]:
    """Every continuous score of the run and the consensus against the positives (AUROC, AP, precision at k), each
    verdict's set against them, and the share of the evaluated samples given each verdict."""
    scores, seconds, rows = run.scores, run.seconds, []
    truth, members = positives[evaluated], consensus_members(scores)
    for name in [*available(scores, list(RANKINGS)), CONSENSUS_ROW]:
        cost = (sum(seconds[key] for key in {COST_KEYS[member] for member in members}) if name == CONSENSUS_ROW
                else seconds[COST_KEYS[name]])
        row = {**base_row(dataset, kind, ratio, "fast", name), "extra_seconds": cost,
               "training_seconds": seconds["training"], "workflow_seconds": seconds["training"] + cost}
        if truth.any():
            hardness = consensus_hardness(scores) if name == CONSENSUS_ROW else hardness_ranking(scores, name)
            row.update(detection_scores(hardness[:, evaluated], truth))
        rows.append(row)
    for verdict in VERDICTS:
        row = {**base_row(dataset, kind, ratio, "fast", f"verdict {verdict}"), "extra_seconds": 0.0,
               "training_seconds": seconds["training"], "workflow_seconds": sum(seconds.values())}
        rows.append({**row, **verdict_measures(verdicts.verdict == verdict, positives, evaluated)})
    return rows


def verdict_measures(given: np.ndarray, positives: np.ndarray, evaluated: np.ndarray) -> dict[str, float]:
    """Of a verdict given [N] bool: its share of the evaluated samples and of those not injected, and its precision,
    recall and F1 against the injected samples (where there are any)."""
    given, truth = given[evaluated], positives[evaluated]
    out = {"verdict_rate": float(given.mean()), "verdict_rate_clean": float(given[~truth].mean())}
    return {**out, **set_scores(given[None], truth)} if truth.any() else out


def refresh_verdict_rows(rows: list[dict], arrays: dict[str, np.ndarray], num_classes: int) -> list[dict]:
    """A cell's rows with every verdict row measured again from its saved scores under today's rules (a cell run
    before the rules were fixed keeps its other rows)."""
    verdicts = assign_verdicts(arrays, arrays["labels"], arrays["predicted_labels"], num_classes)
    out = []
    for row in rows:
        if row["score"].startswith("verdict "):
            given = verdicts.verdict == row["score"].removeprefix("verdict ")
            row = {**row, **verdict_measures(given, arrays["flipped"], arrays["evaluated"])}
        out.append(row)
    return out


def datalab_rows(runs: dict[str, tuple[dict[str, np.ndarray], float]], positives: np.ndarray,
                 evaluated: np.ndarray, dataset: str, kind: str, ratio: float) -> list[dict]:
    """Each Datalab issue type, with each set of features, as a continuous score (low issue score = suspicious) and
    as its flagged set."""
    rows, truth = [], positives[evaluated]
    for features_name, (issues, seconds) in runs.items():
        for issue in ("label", "outlier", "near_duplicate"):
            row = {**base_row(dataset, kind, ratio, "datalab", f"datalab {issue} ({features_name})"),
                   "extra_seconds": seconds, "training_seconds": 0.0, "workflow_seconds": seconds,
                   "verdict_rate": float(issues[f"{issue}_flagged"][evaluated].mean()),
                   "verdict_rate_clean": float(issues[f"{issue}_flagged"][evaluated][~truth].mean())}
            if truth.any():
                row.update(detection_scores(-issues[f"{issue}_score"][None, evaluated], truth))
                flagged = set_scores(issues[f"{issue}_flagged"][None, evaluated], truth)
                row.update({f"flagged_{key}": value for key, value in flagged.items()})
            rows.append(row)
    return rows


def manifest_rows(kinds: np.ndarray, verdict: np.ndarray,
                  datalab: dict[str, tuple[dict[str, np.ndarray], float]]) -> list[dict]:
    """A folder against its manifest: for every type [N] str ("" where none), its samples' share of each verdict
    and of each Datalab flag; last, the same shares among the rest (the false alarms) with Datalab's seconds."""
    names = sorted(set(verdict))
    rows = []
    for kind in [*sorted(set(kinds) - {""}), ""]:
        members = kinds == kind
        family = FAMILIES.get(kind, "ok")
        row = {"type": kind or "(the rest)", "samples": int(members.sum()), "verdict": family,
               "share_given_its_verdict": float((verdict[members] == family).mean()),
               **{f"share_{name}": float((verdict[members] == name).mean()) for name in names}}
        for found, seconds in datalab.values():
            row.update({f"datalab_{issue}_share": float(found[f"{issue}_flagged"][members].mean())
                        for issue in ("label", "outlier", "near_duplicate")})
            if not kind:
                any_flag = found["label_flagged"] | found["outlier_flagged"] | found["near_duplicate_flagged"]
                row.update({"datalab_any_flag_share": float(any_flag[members].mean()), "datalab_seconds": seconds})
        rows.append(row)
    return rows


MEASURES = {"auroc": "AUROC", "ap": "AP", "precision_at_k": "precision at k"}


def score_table(rows: Sequence[dict], dataset: str, ratio: float, measure: str = "auroc") -> str:
    """Merged rows as markdown: one line per continuous score, one column per injected type, the measure (auroc, ap
    or precision_at_k; ± its std over the seeds where there are several), the best of each column in bold, and the
    score's own seconds (beyond the shared training) averaged over the cells."""
    here = [row for row in rows if row["dataset"] == dataset and float(row["noise_ratio"]) == ratio
            and row.get(measure) not in (None, "") and row["noise_type"] != CLEAN]
    kinds = [kind for kind in FAMILIES if any(row["noise_type"] == kind for row in here)]
    scores = list(dict.fromkeys(row["score"] for row in here))
    value = {(row["score"], row["noise_type"]): row for row in here}
    best = {kind: max(float(value[s, kind][measure]) for s in scores if (s, kind) in value) for kind in kinds}
    lines = ["| score | " + " | ".join(kinds) + " | s |", "|" + " --- |" * (len(kinds) + 2)]
    for score in scores:
        cells = []
        for kind in kinds:
            row = value.get((score, kind))
            if row is None:
                cells.append("–")
                continue
            number = float(row[measure])
            spread = float(row.get(f"{measure}_std_over_runs") or 0)
            text = f"{number:.3f}" + (f" ± {spread:.3f}" if int(float(row.get("benchmark_runs", 1))) > 1 else "")
            cells.append(f"**{text}**" if number == best[kind] else text)
        seconds = np.mean([float(value[score, kind]["extra_seconds"]) for kind in kinds if (score, kind) in value])
        lines.append(f"| {score} | " + " | ".join(cells) + f" | {seconds:.1f} |")
    return "\n".join(lines) + "\n"


def training_seconds_line(rows: Sequence[dict], dataset: str, ratio: float) -> str:
    """The line under a score table: what its `s` column means and the fast recipe's training seconds a cell."""
    training = [float(row["training_seconds"]) for row in rows if row["dataset"] == dataset
                and float(row["noise_ratio"]) == ratio and row["score"].startswith("verdict")
                and row.get("training_seconds") not in (None, "")]
    return (f"s: a score's own seconds a cell, beyond the fast recipe's training, which took {np.mean(training):.1f} s "
            "a cell here (means over the cells; Datalab's rows: its cross-validation and find_issues)\n")


def verdict_table(rows: Sequence[dict], dataset: str, ratio: float) -> str:
    """Merged rows as markdown: for every injected type (and the clean cells), the precision and recall of the
    verdict of its family, the share of the clean samples given any verdict but ok, and Datalab's recall of the
    matching issue type with its flags among the clean samples."""
    lines = ["| injected | verdict | precision | recall | any verdict among the rest | Datalab (pixels) recall | "
             "Datalab flags among the rest |", "| --- | --- | --- | --- | --- | --- | --- |"]
    issue_of = {"mislabelled": "label", "out_of_distribution": "outlier", "duplicate": "near_duplicate"}
    for kind in [*FAMILIES, CLEAN]:
        here = {row["score"]: row for row in rows if row["dataset"] == dataset and row["noise_type"] == kind
                and (kind == CLEAN or float(row["noise_ratio"]) == ratio)}
        if not here:
            continue
        family = FAMILIES.get(kind)
        ok = here.get("verdict ok")
        alarms = f"{1 - float(ok['verdict_rate_clean']):.3f}" if ok else "–"
        if family is None:
            rates = ", ".join(f"{v} {float(here[f'verdict {v}']['verdict_rate']):.3f}" for v in VERDICTS
                              if f"verdict {v}" in here)
            lines.append(f"| none (clean) | {rates} | – | – | {alarms} | – | – |")
            continue
        row = here.get(f"verdict {family}", {})
        datalab = here.get(f"datalab {issue_of[family]} (pixels)") if family in issue_of else None
        datalab_cells = ([f"{float(datalab['flagged_recall']):.3f}", f"{float(datalab['verdict_rate_clean']):.3f}"]
                         if datalab and datalab.get("flagged_recall") not in (None, "") else ["–", "–"])
        lines.append(f"| {kind} | {family} | {float(row.get('precision', 'nan')):.3f} | "
                     f"{float(row.get('recall', 'nan')):.3f} | {alarms} | " + " | ".join(datalab_cells) + " |")
    return "\n".join(lines) + "\n"
