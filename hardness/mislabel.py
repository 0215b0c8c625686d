"""How well each score tells flipped labels from clean ones (the mislabel-detection benchmark): detection
metrics of continuous scores and of flagged sets, the AUROC of per-epoch scores, rank correlations, and the
benchmark's rows and tables."""
from collections.abc import Sequence

import numpy as np

from hardness.ranking import CONSENSUS, available, consensus_hardness, consensus_members
from hardness.scoring import CHARACTERISATION, RANKINGS, SETS, SHARED_COST, TRAJECTORY_SCORES, hardness_ranking
from hardness.setting import ScoredSetting


def precision_at_k(hardness: np.ndarray, positives: np.ndarray, k: int) -> float:
    """Share of positives among the k highest scores (ties to the lower index)."""
    top = np.argsort(-hardness, kind="stable")[:k]
    return float(positives[top].mean()) if k else float("nan")


def recall_at_k(hardness: np.ndarray, positives: np.ndarray, k: int) -> float:
    """Share of the positives found among the k highest scores (ties to the lower index)."""
    top = np.argsort(-hardness, kind="stable")[:k]
    return float(positives[top].sum() / positives.sum()) if positives.any() else float("nan")


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
            "recall_at_2k": recall_at_k(mean, flipped, 2 * int(flipped.sum())),
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


CONSENSUS_ROW = "consensus"
COST_KEYS = {"stragglers": "stragglers", "confidence": "confidence/energy", "energy": "confidence/energy",
             "vog": "vog", "grand": "grand", "cleanlab": "cleanlab", "cleanlab_flagged": "cleanlab",
             "aum_flagged": "aum_flagged", **{name: "characterisation" for name in CHARACTERISATION},
             "duplicate": "duplicates", **{name: SHARED_COST for name in ("aum", "forgetting", "el2n", "data_map", "loss",
                                                                          "data_iq")}}


def benchmark_rows(setting: ScoredSetting, dataset_name: str, noise_ratio: float, network: str,
                   noise_type: str = "uniform", recipe: str = "paper") -> list[dict]:
    """One row per score: its detection scores (continuous) or set scores (set-valued), its extra seconds and the
    whole workflow's (the training and the score); the consensus (hardness/ranking.py) follows the continuous
    scores, its seconds those of its members together."""
    scores, seconds, rows = setting.run.scores, setting.run.seconds, []
    members = consensus_members(scores)
    for name in [*available(scores, list(RANKINGS)), CONSENSUS_ROW, *available(scores, SETS)]:
        cost = (sum(seconds[key] for key in {COST_KEYS[member] for member in members}) if name == CONSENSUS_ROW
                else seconds[COST_KEYS[name]])
        row = {"dataset": dataset_name, "noise_ratio": noise_ratio, "noise_type": noise_type, "network": network,
               "recipe": recipe, "score": name, "extra_seconds": cost, "training_seconds": seconds["training"],
               "workflow_seconds": seconds["training"] + cost}
        if name in SETS:
            row.update(set_scores(scores[name], setting.flipped))
        else:
            hardness = consensus_hardness(scores) if name == CONSENSUS_ROW else hardness_ranking(scores, name)
            row.update(detection_scores(hardness, setting.flipped))
        rows.append(row)
    return rows


def combine_rows(rows: list[dict]) -> list[dict]:
    """Rows of several benchmark runs (e.g. the seeds of a sweep) merged per dataset, noise, network and score:
    every number averaged, with the number of runs and the std of the AUROC, AP and precision at k (or F1) over them."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        key = (row["dataset"], float(row["noise_ratio"]), row.get("noise_type") or "uniform",
               row.get("network") or "SimpleNN", row.get("recipe") or "paper", row["score"])
        groups.setdefault(key, []).append(row)
    combined = []
    for (dataset, noise_ratio, noise_type, network, recipe, score), members in groups.items():
        numbers = {key for row in members for key, value in row.items() if value not in ("", None)} - {
            "dataset", "noise_ratio", "noise_type", "network", "recipe", "score"}
        merged = {"dataset": dataset, "noise_ratio": noise_ratio, "noise_type": noise_type, "network": network,
                  "recipe": recipe, "score": score, "benchmark_runs": len(members)}
        merged.update({key: float(np.mean([float(row[key]) for row in members])) for key in sorted(numbers)})
        spread = ("auroc", "ap", "precision_at_k") if "auroc" in numbers else ("f1",)
        for measure in (m for m in spread if m in numbers):   # a cell with nothing to find (nothing injected): none
            merged[f"{measure}_std_over_runs"] = float(np.std([float(row[measure]) for row in members]))
        combined.append(merged)
    return combined


def _number(row: dict, key: str, digits: int = 3) -> str:
    value = row.get(key)
    return "–" if value in (None, "") or value != value else f"{float(value):.{digits}f}"


def markdown_table(rows: list[dict]) -> str:
    """The benchmark as a markdown table: continuous scores by AUROC, AP, precision at k and recall within the top
    2k; sets by P / R / F1; the extra seconds of the score and the whole workflow's. The network is named in the
    dataset column where it is not the recipe's default, the noise type in the noise column where not uniform."""
    lines = ["| dataset | noise | recipe | score | AUROC | AP | P@k | R@2k | AUROC per run | set P / R / F1 | extra s "
             "| workflow s |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        network, recipe = row.get("network") or "SimpleNN", row.get("recipe") or "paper"
        dataset = row["dataset"] + ("" if network in ("SimpleNN", "MLP", "") else f" ({network})")
        noise_type = row.get("noise_type") or "uniform"
        noise = f"{float(row['noise_ratio']):g}" + ("" if noise_type == "uniform" else f" {noise_type}")
        if row.get("auroc") not in (None, ""):
            cells = [_number(row, "auroc"), _number(row, "ap"), _number(row, "precision_at_k"),
                     _number(row, "recall_at_2k"),
                     f"{float(row['auroc_run_mean']):.3f} ± {float(row['auroc_run_std']):.3f}", "–"]
        else:
            cells = ["–"] * 5 + [f"{float(row['precision']):.3f} / {float(row['recall']):.3f} / {float(row['f1']):.3f}"]
        mark = " †" if row["score"] == CONSENSUS_ROW else " *" if COST_KEYS.get(row["score"]) == SHARED_COST else ""
        lines.append(f"| {dataset} | {noise} | {recipe} | {row['score']} | " + " | ".join(cells)
                     + f" | {float(row['extra_seconds']):.1f}{mark} | {_number(row, 'workflow_seconds', 1)} |")
    return "\n".join(lines) + ("\n\n* one observer records aum, forgetting, data_map, el2n and loss together; the "
                               "seconds are theirs jointly.\n† the consensus: the mean rank of its members (the paper "
                               f"recipe's: {', '.join(CONSENSUS)}, each where computed; the fast recipe's: those its "
                               "settings JSON names); the seconds of its members together. Workflow seconds: the "
                               "training and the score (a cleanlab workflow: its whole cross-validation).\n")


WORKFLOWS_SUMMARISED = (("fast", CONSENSUS_ROW), ("paper", CONSENSUS_ROW), ("sklearn", "cleanlab_mlp"),
                        ("sklearn", "cleanlab_logreg"))


def summary_table(rows: list[dict]) -> str:
    """Merged rows (combine_rows) as one line per setting (dataset, noise type, ratio): the AUROC (mean ± std over
    the seeds), AP and whole-workflow seconds of both recipes' consensus and the two cleanlab workflows, and the
    best single score of each recipe by mean AUROC."""
    settings = sorted({(row["dataset"], row["noise_type"], float(row["noise_ratio"])) for row in rows})
    header = ["dataset", "noise", "seeds"] + [f"{recipe} {score}" for recipe, score in WORKFLOWS_SUMMARISED] + [
        "best single (fast)", "best single (paper)"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for dataset, noise_type, ratio in settings:
        here = [row for row in rows if (row["dataset"], row["noise_type"], float(row["noise_ratio"]))
                == (dataset, noise_type, ratio) and row.get("auroc") not in (None, "")]
        cells = []
        for recipe, score in WORKFLOWS_SUMMARISED:
            found = [row for row in here if row["recipe"] == recipe and row["score"] == score]
            cells.append(_summary_cell(found[0]) if found else "–")
        for recipe in ("fast", "paper"):
            singles = [row for row in here if row["recipe"] == recipe and row["score"] != CONSENSUS_ROW]
            best = max(singles, key=lambda row: float(row["auroc"])) if singles else None
            cells.append(f"{best['score']}: {_summary_cell(best)}" if best else "–")
        seeds = max(int(row.get("benchmark_runs", 1)) for row in here) if here else 0
        lines.append(f"| {dataset} | {ratio:g} {noise_type} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + ("\n\nEach cell: AUROC ± its std over the seeds, AP, and the whole workflow's seconds "
                               "(training and every score it needs; a cleanlab workflow: its cross-validation).\n")


def _summary_cell(row: dict) -> str:
    return (f"{float(row['auroc']):.3f} ± {float(row['auroc_std_over_runs']):.3f}, AP {float(row['ap']):.3f}, "
            f"{float(row['workflow_seconds']):.0f} s")
