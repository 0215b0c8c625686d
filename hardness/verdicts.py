"""A verdict per sample: why it is hard (mislabelled, out of distribution, atypical, ambiguous, duplicate) or ok.

The rules read the scores of hardness/characterisation.py that the fast recipe records, in this order (the first
that holds decides):
1. duplicate: another sample's pixels are within COPY_RMS root-mean-square difference (in [0, 1] units; exact copies
   are at 0); `duplicate_of` names that sample;
2. out_of_distribution: the latent outlier score (mean distance to the 10 nearest samples in the last hidden layer)
   is more than `outlier_z` robust standard deviations above its median;
3. mislabelled: the runs' majority prediction is another class than the label given, with an agreement of at least
   `mislabel_agreement` over runs x the last 3 epochs;
4. ambiguous: the entropy of the mean prediction is more than `ambiguous_z` robust standard deviations above its
   median;
5. atypical: prototypicality (the cosine distance to its class's mean latent vector) more than `atypical_z` robust
   standard deviations above its median.
A robust standard deviation is 1.4826 times the median absolute deviation over the samples, so no rule depends on
how many samples are hard. The thresholds were fixed on MNIST (benchmarks/choose_verdict_rules.py,
docs/hardness_types.md) before any Fashion-MNIST or folder number was computed.
"""
from dataclasses import asdict, dataclass

import numpy as np

from hardness.scoring import RANKINGS, hardness_ranking

VERDICTS = ("mislabelled", "out_of_distribution", "atypical", "ambiguous", "duplicate", "ok")
COPY_RMS = 0.03


@dataclass(frozen=True)
class VerdictRules:
    """Which score decides each verdict and from which threshold (the scores are names of hardness.scoring.RANKINGS,
    oriented so that higher is harder, averaged over runs)."""
    copy_rms: float = COPY_RMS
    outlier_score: str = "latent_outlier"
    outlier_z: float = 3.5
    mislabel_agreement: float = 0.5
    ambiguous_score: str = "prediction_entropy"
    ambiguous_z: float = 3.5
    atypical_score: str = "prototypicality"
    atypical_z: float = 3.5

    def settings(self) -> dict:
        return asdict(self)


@dataclass
class Verdicts:
    verdict: np.ndarray        # [N] str, one of VERDICTS
    duplicate_of: np.ndarray   # [N] int64 subset position of the other member of a duplicate pair, -1 where none
    outlier_rank: np.ndarray   # [N] int64, 1 = the most out of distribution; 0 where no outlier score was recorded
    deciding: list[dict]       # [N] the scores that decided each verdict
    notes: list[str]           # what could not be decided, and why


def robust_z(values: np.ndarray) -> np.ndarray:
    """(values - median) / (1.4826 * median absolute deviation) over the samples [N]; 0 where the deviation is 0."""
    median = np.median(values)
    spread = 1.4826 * np.median(np.abs(values - median))
    return (values - median) / spread if spread > 0 else np.zeros_like(values, dtype=np.float64)


def assign_verdicts(scores: dict[str, np.ndarray], labels: np.ndarray, predicted: np.ndarray,
                    rules: VerdictRules = VerdictRules()) -> Verdicts:
    """Every sample's verdict from its scores ([runs, N] arrays as hardness_scores.py saves them), the labels given
    [N] and the runs' majority prediction [N]; a rule whose scores are missing decides nothing, said in `notes`."""
    n = len(labels)
    verdict = np.full(n, "ok", dtype=object)
    open_ = np.ones(n, dtype=bool)
    duplicate_of = np.full(n, -1, dtype=np.int64)
    deciding: list[dict] = [{} for _ in range(n)]
    notes: list[str] = []

    def decide(name: str, mask: np.ndarray, evidence: dict[str, np.ndarray]) -> None:
        for i in np.flatnonzero(mask & open_):
            verdict[i] = name
            deciding[i] = {key: float(values[i]) for key, values in evidence.items()}
        open_[mask] = False

    def missing(rule: str, needed: str) -> None:
        notes.append(f"no {rule} verdicts: the run recorded no {needed} (the fast recipe's characterisation scores)")

    if "copy_distance" in scores:
        distance, partner = scores["copy_distance"][0], scores["nearest_copy"][0]
        close = distance <= rules.copy_rms
        duplicate_of[close] = partner[close]
        decide("duplicate", close, {"copy_rms_difference": distance})
    else:
        missing("duplicate", "nearest-copy distances")
    outlier_rank = np.zeros(n, dtype=np.int64)

    def z_rule(verdict_name: str, score: str, threshold: float) -> np.ndarray | None:
        if RANKINGS[score][0] not in scores:
            missing(verdict_name, f"{score} scores")
            return None
        hardness = hardness_ranking(scores, score).mean(0)
        z = robust_z(hardness)
        decide(verdict_name, z > threshold, {score: hardness, f"{score}_z": z})
        return hardness

    outlier = z_rule("out_of_distribution", rules.outlier_score, rules.outlier_z)
    if outlier is not None:
        outlier_rank[np.argsort(-outlier, kind="stable")] = np.arange(1, n + 1)
    if "agreement" in scores:
        share = scores["agreement"][0]
        decide("mislabelled", (predicted != labels) & (share >= rules.mislabel_agreement), {"agreement": share})
    else:
        missing("mislabelled", "agreement")
    z_rule("ambiguous", rules.ambiguous_score, rules.ambiguous_z)
    z_rule("atypical", rules.atypical_score, rules.atypical_z)
    if len(np.unique(labels)) < 2:
        notes.append("one class only: every prediction agrees with the label, so no mislabelled verdicts")
    return Verdicts(verdict.astype(str), duplicate_of, outlier_rank, deciding, notes)
