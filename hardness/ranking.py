"""The answer a user wants: every sample ranked from most to least suspicious (likely mislabelled), with every
score and its rank, the runs' majority prediction beside the given label, and the verdicts asked for.

The consensus is a rank aggregate of the label-aware scores the mislabel benchmark found best (CONSENSUS: AUM,
data-map confidence and cleanlab's label quality, each where it was computed): in every run, each member ranks
the samples (1 = most suspicious, tied samples share the mean of their places); a sample's consensus is the
mean of its ranks over the members and the runs. Ranks, not the scores themselves, are averaged because the
members live on unrelated scales (a margin in logits, a probability, cleanlab's self-confidence); each run ranks
on its own, so the consensus of one run is the recipe applied to that run (the benchmark's per-run AUROC) and
the mean over runs is what the CSV sorts by. Forgetting events were a candidate and are left out: on MNIST at
10% noise adding them lowered the aggregate's average precision from 0.960 to 0.957 and its precision at k from
0.901 to 0.891 (docs/scores.md), as their integer counts tie across thousands of samples.
"""
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import rankdata

from hardness.results import write_csv
from hardness.scoring import RANKINGS, SETS, hardness_ranking
from hardness.verdicts import Verdicts

CONSENSUS = ("aum", "data_map", "cleanlab")      # members, each where its scores exist
VERDICTS = {"cleanlab_flagged": "flagged_cleanlab", "aum_flagged": "flagged_aum"}   # set -> CSV column


def average_ranks(hardness: np.ndarray) -> np.ndarray:
    """Ranks along the last axis, 1 = highest hardness; tied values share the mean of their places. [..., N]."""
    return rankdata(-hardness, method="average", axis=-1)


def oriented(scores: dict[str, np.ndarray], name: str) -> np.ndarray:
    """[runs, N] higher = harder: a ranking's oriented score, or for a set (SETS) 1 where the run marks the sample."""
    return scores[name].astype(np.float64) if name in SETS else hardness_ranking(scores, name)


def available(scores: dict[str, np.ndarray], names: Sequence[str]) -> list[str]:
    """The names (rankings or sets) whose arrays are in `scores`, in the given order."""
    return [name for name in names if (name if name in SETS else RANKINGS[name][0]) in scores]


def rank_aggregate(scores: dict[str, np.ndarray], members: Sequence[str]) -> np.ndarray:
    """[runs, N] minus the mean over `members` of each run's average ranks: higher = more suspicious."""
    if not members:
        raise ValueError("a rank aggregate needs at least one member score")
    return -np.mean([average_ranks(oriented(scores, name)) for name in members], axis=0)


def consensus_members(scores: dict[str, np.ndarray]) -> list[str]:
    """The consensus's members: those a run recorded (`consensus_members`, the fast recipe's), else the CONSENSUS
    members present in `scores` (the paper recipe's, and every file older versions wrote)."""
    recorded = scores.get("consensus_members")
    return available(scores, [str(name) for name in recorded] if recorded is not None else CONSENSUS)


def consensus_hardness(scores: dict[str, np.ndarray]) -> np.ndarray:
    """[runs, N] the consensus of consensus_members(scores) (higher = more suspicious)."""
    return rank_aggregate(scores, consensus_members(scores))


def suspicion_order(hardness: np.ndarray) -> np.ndarray:
    """[N] positions, most suspicious first, by the run-averaged hardness [runs, N]; ties keep the subset order."""
    return np.argsort(-hardness.mean(0), kind="stable")


def majority_verdict(flags: np.ndarray) -> np.ndarray:
    """[N] bool: flagged by more than half of the runs of flags [runs, N]."""
    return 2 * flags.sum(0) > len(flags)


@dataclass
class Ranking:
    """Every sample's row of the ranking CSV: columns in subset order, and the order the rows are written in."""
    columns: dict[str, list]       # column -> [N] values, subset order
    order: np.ndarray              # [N] subset positions, most suspicious first
    members: list[str]             # the consensus members present

    def rows(self) -> list[dict]:
        """The rows, most suspicious first."""
        return [{name: values[i] for name, values in self.columns.items()} for i in self.order.tolist()]


def build_ranking(scores: dict[str, np.ndarray], labels: np.ndarray, predicted: np.ndarray,
                  class_names: Sequence[str], sample_ids: Sequence[str], flipped: np.ndarray | None = None,
                  verdicts: Verdicts | None = None) -> Ranking:
    """The ranking of every sample: sample_id, given_label and predicted_label (class names), consensus_rank
    (1 = most suspicious) and consensus_mean_rank, `flipped` where labels were flipped on purpose, the verdict,
    duplicate_of (the sample_id of the other member of a duplicate pair, else empty) and outlier_rank (1 = most out of
    distribution) where `verdicts` are given, then every score present (its run mean, its rank by the run-averaged
    hardness, ties sharing the best place), the share of runs marking a straggler, and the majority verdicts of
    cleanlab and of AUM's threshold where they were run."""
    members = consensus_members(scores)
    consensus = consensus_hardness(scores)
    order = suspicion_order(consensus)
    consensus_rank = np.empty(len(order), dtype=np.int64)
    consensus_rank[order] = np.arange(1, len(order) + 1)
    names = np.asarray(class_names, dtype=object)
    columns: dict[str, list] = {"sample_id": list(sample_ids), "given_label": names[labels].tolist(),
                                "predicted_label": names[predicted].tolist(), "consensus_rank": consensus_rank.tolist(),
                                "consensus_mean_rank": (-consensus.mean(0)).round(2).tolist()}
    if flipped is not None:
        columns["flipped"] = flipped.astype(int).tolist()
    if verdicts is not None:
        columns["verdict"] = verdicts.verdict.tolist()
        columns["duplicate_of"] = [sample_ids[j] if j >= 0 else "" for j in verdicts.duplicate_of.tolist()]
        columns["outlier_rank"] = [rank if rank > 0 else "" for rank in verdicts.outlier_rank.tolist()]
    for name in available(scores, list(RANKINGS)):
        columns[name] = [float(f"{value:.6g}") for value in scores[RANKINGS[name][0]].astype(np.float64).mean(0)]
        columns[f"{name}_rank"] = rankdata(-hardness_ranking(scores, name).mean(0), method="min").astype(int).tolist()
    if "stragglers" in scores:
        columns["stragglers"] = scores["stragglers"].mean(0).round(3).tolist()
    for name, column in VERDICTS.items():
        if name in scores:
            columns[column] = majority_verdict(scores[name]).astype(int).tolist()
    return Ranking(columns, order, members)


def write_ranking(ranking: Ranking, path: Path) -> None:
    """The ranking CSV to `path`, atomically."""
    write_csv(ranking.rows(), path)
