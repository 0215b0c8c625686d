"""The ranking: average ranks, the consensus on a hand-made case, the CSV's columns and verdicts, the runs'
majority prediction, and the consensus row of the benchmark."""
import csv
import io

import numpy as np
import pytest
import torch

from hardness.mislabel import benchmark_rows, markdown_table
from hardness.results import csv_bytes
from hardness.ranking import average_ranks, build_ranking, consensus_hardness, majority_verdict
from hardness.scoring import ScoredRun, majority_labels
from hardness.setting import ScoredSetting

# Two runs, four samples. Each score's ranks (1 = most suspicious, ties share the mean place), worked out by hand:
#   aum (low = suspicious)       run 0 [0.5, -1, 2, 0.1] -> [3, 1, 4, 2];     run 1 [-0.2, -1, 2, 0.3] -> [2, 1, 4, 3]
#   data-map confidence (low)    run 0 [0.6, 0.2, 0.9, 0.6] -> [2.5, 1, 4, 2.5]; run 1 [0.3, 0.2, 0.9, 0.7] -> [2, 1, 4, 3]
# Mean rank over the 2 members and 2 runs: [9.5/4, 4/4, 16/4, 10.5/4] = [2.375, 1, 4, 2.625]: order 1, 0, 3, 2.
#   cleanlab (low), both runs    [0.9, 0.3, 0.5, 0.1] -> [4, 2, 3, 1]
# With it, over 3 members: [17.5/6, 8/6, 22/6, 12.5/6] = [2.917, 1.333, 3.667, 2.083]: order 1, 3, 0, 2.
# Forgetting (high) and EL2N are no members: counted, forgetting's ranks [3.5, 1, 3.5, 2] and [2, 1, 3.5, 3.5] would
# make the first mean [15/6, 6/6, 23/6, 16/6].
SCORES = {"aum": np.array([[0.5, -1, 2, 0.1], [-0.2, -1, 2, 0.3]]),
          "data_map_confidence": np.array([[0.6, 0.2, 0.9, 0.6], [0.3, 0.2, 0.9, 0.7]]),
          "forgetting": np.array([[0, 3, 0, 1], [2, 3, 0, 0]]),
          "el2n": np.array([[0.0, 0.0, 9.0, 0.0], [0.0, 0.0, 9.0, 0.0]])}
CLEANLAB = np.array([[0.9, 0.3, 0.5, 0.1], [0.9, 0.3, 0.5, 0.1]])


def test_average_ranks_put_the_hardest_first_and_share_ties():
    np.testing.assert_array_equal(average_ranks(np.array([3.0, 1.0, 3.0, 2.0])), [1.5, 4, 1.5, 3])
    np.testing.assert_array_equal(average_ranks(np.array([[1.0, 2.0], [5.0, 5.0]])), [[2, 1], [1.5, 1.5]])


def test_consensus_of_aum_and_data_map_by_hand():
    np.testing.assert_allclose(-consensus_hardness(SCORES).mean(0), [2.375, 1, 4, 2.625])
    ranking = build_ranking(SCORES, np.array([0, 1, 1, 0]), np.array([1, 1, 1, 0]), ["cat", "dog"],
                            ["a", "b", "c", "d"])
    assert ranking.members == ["aum", "data_map"]
    assert ranking.order.tolist() == [1, 0, 3, 2]
    assert ranking.columns["consensus_rank"] == [2, 1, 4, 3]
    np.testing.assert_allclose(ranking.columns["consensus_mean_rank"], [2.375, 1, 4, 2.625], atol=0.005)


def test_cleanlab_joins_the_consensus_when_its_folds_were_run():
    scores = {**SCORES, "cleanlab": CLEANLAB}
    np.testing.assert_allclose(-consensus_hardness(scores).mean(0), [17.5 / 6, 8 / 6, 22 / 6, 12.5 / 6])
    ranking = build_ranking(scores, np.array([0, 1, 1, 0]), np.array([1, 1, 1, 0]), ["cat", "dog"],
                            ["a", "b", "c", "d"])
    assert ranking.members == ["aum", "data_map", "cleanlab"]
    assert [row["sample_id"] for row in ranking.rows()] == ["b", "d", "a", "c"]


def test_ranking_csv_columns_ranks_labels_and_verdicts():
    scores = {**SCORES, "cleanlab": CLEANLAB, "stragglers": np.array([[1, 0, 0, 1], [1, 0, 0, 0]], dtype=bool),
              "cleanlab_flagged": np.array([[1, 1, 0, 0], [1, 0, 0, 0]], dtype=bool),
              "aum_flagged": np.array([[0, 1, 0, 0], [0, 1, 1, 0]], dtype=bool)}
    ranking = build_ranking(scores, np.array([0, 1, 1, 0]), np.array([1, 1, 1, 0]), ["cat", "dog"],
                            ["a", "b", "c", "d"], flipped=np.array([True, False, False, False]))
    rows = list(csv.DictReader(io.StringIO(csv_bytes(ranking.rows()).decode())))
    assert list(rows[0])[:6] == ["sample_id", "given_label", "predicted_label", "consensus_rank",
                                 "consensus_mean_rank", "flipped"]
    assert [row["consensus_rank"] for row in rows] == ["1", "2", "3", "4"]
    by_id = {row["sample_id"]: row for row in rows}
    assert (by_id["a"]["given_label"], by_id["a"]["predicted_label"], by_id["a"]["flipped"]) == ("cat", "dog", "1")
    # run means: forgetting [1, 3, 0, 0.5] -> ranks 2, 1, 4, 3; el2n [0, 0, 9, 0] -> 2, 2, 1, 2 (ties share the best)
    assert [by_id[i]["forgetting_rank"] for i in "abcd"] == ["2", "1", "4", "3"]
    assert [by_id[i]["el2n_rank"] for i in "abcd"] == ["2", "2", "1", "2"]
    assert [by_id[i]["aum"] for i in "abcd"] == ["0.15", "-1.0", "2.0", "0.2"]
    assert [by_id[i]["stragglers"] for i in "abcd"] == ["1.0", "0.0", "0.0", "0.5"]
    # a verdict is a majority of the runs: both of two runs flag a (cleanlab), b (AUM); one run is not enough
    assert [by_id[i]["flagged_cleanlab"] for i in "abcd"] == ["1", "0", "0", "0"]
    assert [by_id[i]["flagged_aum"] for i in "abcd"] == ["0", "1", "0", "0"]
    assert "vog" not in rows[0] and "flagged_aum" in rows[0]


def test_majority_verdict_needs_more_than_half_of_the_runs():
    flags = np.array([[1, 0, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0]], dtype=bool)
    assert majority_verdict(flags).tolist() == [True, False, False, False]
    assert majority_verdict(flags[:2] | flags[2:]).tolist() == [True, True, False, False]


def test_majority_prediction_and_its_tie_break():
    """Sample 0: runs predict 2, 2, 0 -> 2. Sample 1: runs predict 0, 1, 2, a tie; the mean probabilities are
    0.335, 0.435 and 0.230 (run 1 is the most confident), so 1."""
    logits = torch.tensor([[[0.0, 0.0, 3.0], [2.0, 0.0, 0.0]],
                           [[0.0, 1.0, 2.0], [0.0, 5.0, 0.0]],
                           [[4.0, 0.0, 0.0], [0.0, 0.0, 1.0]]])                                 # [runs, N, C]
    assert majority_labels(logits).tolist() == [2, 1]


def test_the_benchmark_puts_the_consensus_beside_its_members():
    scores = {**SCORES, "cleanlab": CLEANLAB}
    seconds = {"training": 10.0, "aum/forgetting/data_map/el2n/loss": 2.0, "cleanlab": 30.0}
    run = ScoredRun(scores, seconds, [], np.zeros((2, 0)), np.zeros(4, dtype=np.int64))
    flipped = np.array([False, True, False, True])                      # the consensus order is b, d, a, c
    setting = ScoredSetting(None, torch.zeros(4), flipped, run)
    rows = benchmark_rows(setting, "toy", 0.5, "SimpleNN", "pairs")
    assert [row["score"] for row in rows] == ["aum", "forgetting", "el2n", "data_map", "cleanlab", "consensus"]
    consensus = rows[-1]
    assert consensus["auroc"] == pytest.approx(1.0) and consensus["precision_at_k"] == pytest.approx(1.0)
    assert consensus["extra_seconds"] == pytest.approx(32.0) and consensus["noise_type"] == "pairs"
    assert "| toy | 0.5 pairs | paper | consensus | 1.000 |" in markdown_table(rows)


def test_an_npz_source_runs_end_to_end_with_its_ids_in_the_ranking(tmp_path):
    """npz:PATH through hardness_scores.py: x [N, 8, 8] uint8, y, ids and class names; the ranking CSV names every
    sample by its npz id and class name, and the scores file keeps the ids in subset order. The name carries the
    30 samples scored, not --subset_size's 20000; --replot also finds a file of the older name."""
    import hardness_scores
    rng = np.random.default_rng(2)
    labels = np.arange(30) % 3
    images = np.clip(rng.integers(0, 256, size=(3, 8, 8))[labels] + rng.normal(0, 25, (30, 8, 8)), 0, 255)
    ids = np.array([f"cell_{i:02d}" for i in range(30)])
    np.savez(tmp_path / "cells.npz", x=images.astype(np.uint8), y=labels, ids=ids,
             class_names=np.array(["round", "long", "odd"]))
    flags = ["--dataset_name", f"npz:{tmp_path / 'cells.npz'}", "--runs", "2", "--epochs", "20", "--score_epoch", "5",
             "--trajectory_every", "5", "--cleanlab_folds", "2", "--seed", "1", "--device", "cpu", "--recipe", "paper",
             "--data_root", str(tmp_path / "data"), "--results_dir", str(tmp_path / "R"), "--figures_dir", str(tmp_path / "F")]
    hardness_scores.main(hardness_scores.parse_args(flags))
    assert not list((tmp_path / "R/scores").glob("cells_20000_*"))
    with open(tmp_path / "R/scores/cells_30_0_ranking.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(row["sample_id"] for row in rows) == sorted(ids.tolist())
    given = {row["sample_id"]: row["given_label"] for row in rows}
    assert all(given[f"cell_{i:02d}"] == ["round", "long", "odd"][i % 3] for i in range(30))
    assert [int(row["consensus_rank"]) for row in rows] == sorted(int(row["consensus_rank"]) for row in rows)
    saved = np.load(tmp_path / "R/scores/cells_30_0.npz")
    assert sorted(saved["sample_ids"].tolist()) == sorted(ids.tolist())
    assert (tmp_path / "R/scores/cells_30_0_report.html").is_file()
    for suffix in (".npz", ".json"):                      # as a version before December 2026 named it
        (tmp_path / f"R/scores/cells_30_0{suffix}").rename(tmp_path / f"R/scores/cells_20000_0{suffix}")
    hardness_scores.main(hardness_scores.parse_args([*flags, "--replot"]))
    assert (tmp_path / "R/scores/cells_20000_0_ranking.csv").is_file()
