"""A verdict per sample: why it is hard (mislabelled, out of distribution, atypical, ambiguous, duplicate) or ok.

The rules read the scores the fast recipe records (hardness/characterisation.py), in this order (the first that
holds decides):
1. duplicate: another sample's pixels are within `copy_rms` root-mean-square difference (in [0, 1] units; exact
   copies are at 0); `duplicate_of` names that sample;
2. out_of_distribution: the entropy of the mean prediction over runs x the last 3 epochs is at least `ood_entropy`
   of its maximum, ln C (the networks spread their belief over the classes), and the sample's prototypicality is
   more than `ood_prototypicality_z` robust standard deviations above its median (it is far from its class in the
   latent space too: no class fits, where a sample between two or three classes is merely uncertain);
3. mislabelled: the runs' majority prediction is another class than the label given, with an agreement of at least
   `mislabel_agreement` over runs x the last 3 epochs;
4. atypical: prototypicality (the cosine distance to its class's mean latent vector) more than `atypical_z` robust
   standard deviations (1.4826 times the median absolute deviation over the samples) above its median;
5. ambiguous: the mean prediction's second-largest probability is at least `ambiguous_runner_up` (the belief
   split between two classes).
No rule depends on how many samples are hard. The scores and thresholds were fixed on MNIST
(benchmarks/choose_verdict_rules.py, its output in docs/results/choose_verdict_rules_mnist.txt;
docs/hardness_types.md) before any Fashion-MNIST or folder number was computed: each threshold is the loosest
of its grid that gives its verdict to at most 1% of clean MNIST (0.1% for duplicates). Rule 2 was the entropy alone
(at least 0.6) until its out-of-distribution verdicts missed the Fashion-MNIST folder's false-alarm target; its pair
(entropy at least 0.7, prototypicality z above 1) was then chosen, again on MNIST alone, as the fewest verdicts on
clean MNIST that keep the far-OOD recall within 0.01 of the entropy alone (benchmarks/choose_verdict_rules.py).
"""
from dataclasses import asdict, dataclass

import numpy as np

VERDICTS = ("mislabelled", "out_of_distribution", "atypical", "ambiguous", "duplicate", "ok")
COPY_RMS = 0.04
OOD_PROTOTYPICALITY_Z = 1.0              # None: the entropy alone (the first rules)


@dataclass(frozen=True)
class VerdictRules:
    """The thresholds of the rules (module docstring); the entropy as a share of ln C."""
    copy_rms: float = COPY_RMS
    ood_entropy: float = 0.7
    ood_prototypicality_z: float | None = OOD_PROTOTYPICALITY_Z
    mislabel_agreement: float = 0.8
    atypical_z: float = 5.0
    ambiguous_runner_up: float = 0.4

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


def assign_verdicts(scores: dict[str, np.ndarray], labels: np.ndarray, predicted: np.ndarray, num_classes: int,
                    rules: VerdictRules = VerdictRules()) -> Verdicts:
    """Every sample's verdict from its scores ([runs, N] arrays as hardness_scores.py saves them), the labels given
    [N], the runs' majority prediction [N] and the number of classes; a rule whose scores are missing decides
    nothing, said in `notes`."""
    n = len(labels)
    verdict = np.full(n, "ok", dtype=object)
    open_ = np.ones(n, dtype=bool)
    duplicate_of = np.full(n, -1, dtype=np.int64)
    outlier_rank = np.zeros(n, dtype=np.int64)
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
    prototypicality_z = robust_z(scores["prototypicality"].mean(0)) if "prototypicality" in scores else None  # [N]
    if "prediction_entropy" in scores and num_classes > 1:
        entropy = scores["prediction_entropy"][0] / np.log(num_classes)                 # [N] in [0, 1]
        outlier_rank[np.argsort(-entropy, kind="stable")] = np.arange(1, n + 1)
        evidence = {"entropy_share": entropy}
        far = entropy >= rules.ood_entropy
        if prototypicality_z is not None and rules.ood_prototypicality_z is not None:
            far &= prototypicality_z > rules.ood_prototypicality_z
            evidence["prototypicality_z"] = prototypicality_z
        elif rules.ood_prototypicality_z is not None:
            notes.append("out_of_distribution verdicts by the entropy alone: the run recorded no prototypicality")
        decide("out_of_distribution", far, evidence)
    else:
        missing("out_of_distribution", "prediction entropies")
    if "agreement" in scores and num_classes > 1:
        share = scores["agreement"][0]
        decide("mislabelled", (predicted != labels) & (share >= rules.mislabel_agreement), {"agreement": share})
    else:
        missing("mislabelled", "agreement")
    if prototypicality_z is not None:
        decide("atypical", prototypicality_z > rules.atypical_z,
               {"prototypicality": scores["prototypicality"].mean(0), "prototypicality_z": prototypicality_z})
    else:
        missing("atypical", "prototypicality")
    if "runner_up" in scores:
        runner_up = scores["runner_up"][0]
        decide("ambiguous", runner_up >= rules.ambiguous_runner_up, {"runner_up": runner_up})
    else:
        missing("ambiguous", "runner-up probabilities")
    if num_classes < 2:
        notes.append("one class only: no prediction can disagree with a label or spread over classes, so no "
                     "mislabelled, out_of_distribution or ambiguous verdicts")
    return Verdicts(verdict.astype(str), duplicate_of, outlier_rank, deciding, notes)
