"""Training-dynamics scores on hand-built trajectories, the observer against the plain functions and against one
network at a time, GraNd against a per-sample loop, the detection metrics by hand, and cleanlab's baseline."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from hardness import dynamics, mislabel, scoring
from hardness.dynamics import (AMBIGUOUS, EASY, HARD_TO_LEARN, DynamicsRecorder, area_under_margin,
                               assigned_probabilities, correct_predictions, data_map, data_map_regions, el2n,
                               forgetting_events, margins, per_sample_gradient_norms, sample_losses)
from hardness.engine import TrainingState, resnet_logits, train_resnets, train_simple_nns
from hardness.mislabel import detection_scores, precision_at_k, set_scores, trajectory_auroc
from hardness.scoring import confident_learning, score_training_run
from neural_networks import BatchedSimpleNN

L3 = math.log(3)
A, B, C = [L3, 0.0, 0.0], [0.0, L3, 0.0], [0.0, 0.0, L3]   # softmax (.6, .2, .2) and its permutations
# 3 samples (labels 0, 1, 2) over 4 epochs. Sample 0 alternates right and wrong (p = .6 .2 .6 .2); sample 1 is
# never right (p = .2 throughout); sample 2 is wrong at epoch 0, then right (p = .2 .6 .6 .6).
HAND_LOGITS = torch.tensor([[A, A, A], [B, A, C], [A, A, C], [B, A, C]])   # [E=4, N=3, C=3]
HAND_LABELS = torch.tensor([0, 1, 2])


def test_margins_losses_probabilities_and_el2n_by_hand():
    first = HAND_LOGITS[0]
    torch.testing.assert_close(margins(first, HAND_LABELS), torch.tensor([L3, -L3, -L3]))
    torch.testing.assert_close(assigned_probabilities(first, HAND_LABELS), torch.tensor([0.6, 0.2, 0.2]))
    torch.testing.assert_close(sample_losses(first, HAND_LABELS), torch.tensor([-math.log(0.6), -math.log(0.2),
                                                                                -math.log(0.2)]))
    # (.6 - 1, .2, .2) has norm sqrt(.24); (.6, .2 - 1, .2) and (.6, .2, .2 - 1) have norm sqrt(1.04)
    torch.testing.assert_close(el2n(first, HAND_LABELS), torch.tensor([0.24, 1.04, 1.04]).sqrt())
    assert correct_predictions(first, HAND_LABELS).tolist() == [True, False, False]


def test_aum_forgetting_and_data_map_of_a_hand_trajectory():
    torch.testing.assert_close(area_under_margin(HAND_LOGITS, HAND_LABELS), torch.tensor([0.0, -L3, L3 / 2]))
    correct = correct_predictions(HAND_LOGITS, HAND_LABELS)
    assert correct.tolist() == [[True, False, False], [False, False, True], [True, False, True], [False, False, True]]
    # sample 0 is forgotten twice; sample 1 never learned gets E = 4; sample 2 is learned once and kept
    assert forgetting_events(correct).tolist() == [2.0, 4.0, 0.0]
    coordinates = data_map(assigned_probabilities(HAND_LOGITS, HAND_LABELS), correct)
    torch.testing.assert_close(coordinates["data_map_confidence"], torch.tensor([0.4, 0.2, 0.5]))
    torch.testing.assert_close(coordinates["data_map_variability"], torch.tensor([0.2, 0.0, math.sqrt(0.03)]))
    torch.testing.assert_close(coordinates["data_map_correctness"], torch.tensor([0.5, 0.0, 0.75]))


def test_data_map_regions_by_hand():
    """Six samples: the two most variable are ambiguous; of the other four, the two least confident are hard."""
    confidence = torch.tensor([0.9, 0.1, 0.5, 0.3, 0.8, 0.2])
    variability = torch.tensor([0.05, 0.30, 0.01, 0.02, 0.25, 0.03])
    assert data_map_regions(confidence, variability).tolist() == [EASY, AMBIGUOUS, EASY, HARD_TO_LEARN, AMBIGUOUS,
                                                                  HARD_TO_LEARN]
    rows = data_map_regions(torch.stack([confidence, confidence.flip(0)]), torch.stack([variability, variability.flip(0)]))
    assert rows[1].tolist() == rows[0].flip(0).tolist()  # each row on its own


def hand_states(logits: Tensor) -> list[TrainingState]:
    """One engine state per epoch of a trajectory [E, runs, N, C] (no model: GraNd off)."""
    return [TrainingState(epoch, None, epoch_logits, None, HAND_LABELS, 3) for epoch, epoch_logits in enumerate(logits)]


def test_the_recorder_equals_the_functions_and_the_hand_values():
    second_run = HAND_LOGITS.flip(-1)                                           # another run of the same samples
    logits = torch.stack([HAND_LOGITS, second_run], 1)                          # [E, runs=2, N, C]
    recorder = DynamicsRecorder(torch.zeros(3, 1, 1, 2), HAND_LABELS, 3, 2, range(4), score_epoch=0,
                                trajectory_epochs=[1, 3], grand=False)
    for state in hand_states(logits):
        assert recorder.is_check(state.epoch)
        recorder.observe(state)
    scores = recorder.scores()
    torch.testing.assert_close(scores["aum"][0], torch.tensor([0.0, -L3, L3 / 2]))
    assert scores["forgetting"][0].tolist() == [2.0, 4.0, 0.0]
    torch.testing.assert_close(scores["data_map_variability"][0], torch.tensor([0.2, 0.0, math.sqrt(0.03)]))
    torch.testing.assert_close(scores["el2n"][0], torch.tensor([0.24, 1.04, 1.04]).sqrt())
    correct = correct_predictions(logits, HAND_LABELS)
    torch.testing.assert_close(scores["aum"], area_under_margin(logits, HAND_LABELS))
    torch.testing.assert_close(scores["forgetting"], forgetting_events(correct))
    for name, value in data_map(assigned_probabilities(logits, HAND_LABELS), correct).items():
        torch.testing.assert_close(scores[name], value)
    torch.testing.assert_close(scores["loss"], sample_losses(logits[0], HAND_LABELS))
    torch.testing.assert_close(scores["margin_trajectory"], margins(logits[[1, 3]], HAND_LABELS).transpose(0, 1))
    torch.testing.assert_close(scores["confidence_trajectory"], logits[[1, 3]].amax(-1).transpose(0, 1))
    torch.testing.assert_close(scores["el2n_trajectory"], el2n(logits[[1, 3]], HAND_LABELS).transpose(0, 1))


def test_the_functions_reject_bad_shapes_and_dtypes():
    with pytest.raises(ValueError, match=r"int64 tensor \[N\] with N = 3"):
        margins(HAND_LOGITS[0], HAND_LABELS.int())
    with pytest.raises(ValueError, match="floating-point"):
        el2n(HAND_LOGITS[0].long(), HAND_LABELS)
    with pytest.raises(ValueError, match=r"lie in \[0, 3\)"):
        margins(HAND_LOGITS[0], torch.tensor([0, 1, 3]))
    with pytest.raises(ValueError, match="dtype torch.bool"):
        forgetting_events(torch.ones(4, 3))
    with pytest.raises(ValueError, match="at least one epoch"):
        area_under_margin(HAND_LOGITS[0, 0], HAND_LABELS)
    with pytest.raises(ValueError, match="differ in shape"):
        data_map(torch.rand(4, 3), torch.ones(3, 3, dtype=torch.bool))


def test_scores_of_a_trajectory_require_the_epoch_axis():
    """[N, C] logits are one moment, not a trajectory: AUM says what it expected instead of averaging the margins
    of the samples into one number; integer probabilities get the same kind of message instead of torch's."""
    with pytest.raises(ValueError, match=r"logit_trajectory must be a tensor \[epochs, \.\.\., N, C\].*got \(3, 3\)"):
        area_under_margin(HAND_LOGITS[0], HAND_LABELS)
    with pytest.raises(ValueError, match=r"logit_trajectory must be a floating-point tensor"):
        area_under_margin(HAND_LOGITS.long(), HAND_LABELS)
    with pytest.raises(ValueError, match=r"probability_trajectory must be a floating-point tensor \[epochs, \.\.\., N\]"):
        data_map(torch.ones(4, 3, dtype=torch.int64), torch.ones(4, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"correct_trajectory must be a tensor \[epochs, \.\.\., N\]"):
        forgetting_events(torch.ones(3, dtype=torch.bool))


# ----------------------------------------------------------------------------- GraNd

def test_grand_chunks_equal_a_per_sample_loop():
    generator = torch.Generator().manual_seed(0)
    data, labels = torch.randn(23, 1, 4, 4, generator=generator), torch.randint(0, 3, (23,), generator=generator)
    model = BatchedSimpleNN.from_seeds([3, 4], input_size=16, width=20, depth=2, num_classes=3)
    norms = per_sample_gradient_norms(model, data, labels, chunk_size=5)                       # [2, 23]
    for run in range(2):
        network = model.unstack(run)
        for i in range(len(data)):
            network.zero_grad()
            F.cross_entropy(network(data[i:i + 1])[0], labels[i:i + 1]).backward()
            expected = torch.cat([p.grad.flatten() for p in network.parameters()]).norm()
            torch.testing.assert_close(norms[run, i], expected, rtol=1e-5, atol=1e-6)
    single = per_sample_gradient_norms(model.unstack(1), data, labels, chunk_size=7)            # any module: [N]
    torch.testing.assert_close(single, norms[1], rtol=1e-5, atol=1e-6)


def test_the_mlps_layerwise_grand_equals_per_sample_backward_passes():
    """Stacked MLPs (memorisation_mlp) take the exact layer-wise GraNd: equal to one backward pass per sample."""
    from hardness.minibatch import StackedNetworks
    from neural_networks import memorisation_mlp
    generator = torch.Generator().manual_seed(1)
    data, labels = torch.randn(9, 1, 3, 3, generator=generator), torch.randint(0, 4, (9,), generator=generator)
    models = []
    for seed in (5, 6):
        torch.manual_seed(seed)
        models.append(memorisation_mlp((1, 3, 3), 4, width=7))
    norms = per_sample_gradient_norms(StackedNetworks(models), data, labels)                  # [2, 9]
    assert norms.shape == (2, 9) and not norms.requires_grad
    for run, network in enumerate(models):
        for i in range(len(data)):
            network.zero_grad()
            F.cross_entropy(network(data[i:i + 1])[0], labels[i:i + 1]).backward()
            expected = torch.cat([p.grad.flatten() for p in network.parameters()]).norm()
            torch.testing.assert_close(norms[run, i], expected, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- batched run against one network at a time

def blobs(per_class: int = 20, flipped_per_class: int = 4) -> tuple[Tensor, Tensor, np.ndarray]:
    """Three Gaussian blobs as 1x4x4 images; the first `flipped_per_class` of each class carry the next label."""
    generator = torch.Generator().manual_seed(7)
    centres = torch.randn(3, 16, generator=generator) * 2
    clean = torch.arange(3).repeat_interleave(per_class)
    data = (centres[clean] + 0.7 * torch.randn(len(clean), 16, generator=generator)).view(-1, 1, 4, 4)
    flipped = ((torch.arange(len(clean)) % per_class) < flipped_per_class).numpy()
    return data, torch.where(torch.from_numpy(flipped), (clean + 1) % 3, clean), flipped


def recorded_scores(seeds: list[int], data: Tensor, labels: Tensor, epochs: int) -> dict[str, Tensor]:
    recorder = DynamicsRecorder(data, labels, 3, len(seeds), range(epochs), score_epoch=5, trajectory_epochs=[9, 19])
    train_simple_nns(seeds, data, labels, 3, epochs, observers=[recorder], progress=False)
    return recorder.scores()


def test_the_batched_recorder_equals_one_network_at_a_time():
    data, labels, _ = blobs()
    batched = recorded_scores([11, 12, 13], data, labels, 30)
    for run, seed in enumerate([11, 12, 13]):
        alone = recorded_scores([seed], data, labels, 30)
        for name, value in alone.items():
            torch.testing.assert_close(batched[name][run].float(), value[0].float(), rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- detection metrics

def test_detection_scores_by_hand():
    """Positives score .9 and .4, negatives .1 and .6: 3 of the 4 pairs are ordered, AUROC 3/4; ranked .9 (+),
    .6 (-), .4 (+), .1 (-): AP = (1/1 + 2/3) / 2; the top k = 2 hold one positive."""
    flipped = np.array([True, False, True, False])
    runs = np.array([[0.9, 0.1, 0.4, 0.6], [0.9, 0.1, 0.4, 0.6]])
    scores = detection_scores(runs, flipped)
    assert scores["auroc"] == pytest.approx(0.75) and scores["auroc_run_std"] == pytest.approx(0.0)
    assert scores["ap"] == pytest.approx((1 + 2 / 3) / 2) and scores["precision_at_k"] == pytest.approx(0.5)
    other = np.array([[0.9, 0.1, 0.4, 0.6], [0.5, 0.1, 0.4, 0.3]])   # the second run orders every pair: AUROC 1
    scores = detection_scores(other, flipped)
    assert scores["auroc_run_mean"] == pytest.approx(0.875) and scores["auroc_run_std"] == pytest.approx(0.125)
    # averaged first: .7 .1 .4 .45 -> pairs (.7>.1, .7>.45, .4>.1, .4<.45): 3/4
    assert scores["auroc"] == pytest.approx(0.75)
    assert precision_at_k(np.array([1.0, 1.0, 0.0]), np.array([False, True, True]), 1) == 0.0   # ties: lower index


def test_set_scores_by_hand():
    flipped = np.array([True, True, False, False, False])
    flagged = np.array([[True, False, True, False, False], [True, True, True, True, False]])
    scores = set_scores(flagged, flipped)
    # run 1: P 1/2, R 1/2, F1 1/2; run 2: P 2/4, R 1, F1 2/3
    assert scores["precision"] == pytest.approx(0.5) and scores["recall"] == pytest.approx(0.75)
    assert scores["f1"] == pytest.approx((0.5 + 2 / 3) / 2) and scores["flagged"] == pytest.approx(3.0)
    assert set_scores(np.zeros((1, 5), dtype=bool), flipped)["f1"] == 0.0


# ----------------------------------------------------------------------------- cleanlab and the whole run

def test_confident_learning_flags_the_flipped_blobs():
    data, labels, flipped = blobs()
    quality, flagged = confident_learning([1, 2], data, labels, 3, 150, folds=3, fold_seed=0, progress=False)
    assert quality.shape == flagged.shape == (2, len(labels)) and ((quality >= 0) & (quality <= 1)).all()
    for run in range(2):  # out of sample, flipped labels look wrong
        assert detection_scores(-quality[run:run + 1], flipped)["auroc"] > 0.9
    assert flagged[:, flipped].mean() >= 0.75 and flagged[:, ~flipped].mean() <= 0.2


def test_score_training_run_finds_the_flipped_blobs_and_times_every_score():
    data, labels, flipped = blobs()
    run = score_training_run([5, 6], data, labels, 3, 150, score_epoch=20, trajectory_every=50, cleanlab_folds=2,
                             aum_threshold=True, progress=False)
    assert run.trajectory_epochs == [49, 99, 149]
    for name in scoring.RANKINGS:
        if name not in scoring.CHARACTERISATION:                            # those are the fast recipe's only
            assert run.scores[scoring.RANKINGS[name][0]].shape == (2, len(labels)), name
    assert not any(scoring.RANKINGS[name][0] in run.scores for name in scoring.CHARACTERISATION)
    assert run.scores["loss_trajectory"].shape == (2, 3, len(labels))
    for name in ("aum", "data_map", "forgetting", "cleanlab"):
        assert detection_scores(scoring.hardness_ranking(run.scores, name), flipped)["auroc"] > 0.9, name
    assert set_scores(run.scores["aum_flagged"], flipped)["recall"] > 0.8
    assert set(run.seconds) == {"training", "stragglers", "confidence/energy", "vog", "grand", scoring.SHARED_COST,
                                "cleanlab", "aum_flagged"} and all(v >= 0 for v in run.seconds.values())
    curves = trajectory_auroc(run.scores, flipped)
    assert set(curves) == {"loss", "confidence", "el2n", "margin"} and all(len(c) == 3 for c in curves.values())


def test_rankings_point_the_way_their_scores_say():
    """sign * array is higher for harder samples: AUM and data-map confidence low, forgetting high."""
    assert dynamics.RANKINGS["aum"][1] == -1 and dynamics.RANKINGS["data_map"] == ("data_map_confidence", -1)
    scores = {"aum": np.array([[2.0, -1.0]]), "forgetting": np.array([[0.0, 3.0]])}
    assert scoring.hardness_ranking(scores, "aum").argmax() == 1 == scoring.hardness_ranking(scores, "forgetting").argmax()


def test_the_recorder_scores_a_users_own_loop_and_model():
    """The example of docs/scores.md: an ordinary nn.Sequential trained in a plain loop, logits recorded by hand and by the
    recorder (GraNd through torch.func on the plain module), agree."""
    torch.manual_seed(0)
    inputs, labels = torch.randn(40, 5), torch.randint(0, 3, (40,))
    model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    recorder = DynamicsRecorder(inputs, labels, 3, runs=1, epochs=range(12), score_epoch=4)
    recorded = []
    for epoch in range(12):
        optimizer.zero_grad()
        F.cross_entropy(model(inputs), labels).backward()
        optimizer.step()
        with torch.no_grad():
            recorded.append(model(inputs))
        recorder.observe(TrainingState(epoch, model, recorded[-1][None], None, labels, 3))
        if epoch == 4:
            grand = per_sample_gradient_norms(model, inputs, labels)
    logits = torch.stack(recorded)
    scores = recorder.scores()
    torch.testing.assert_close(scores["aum"][0], area_under_margin(logits, labels))
    torch.testing.assert_close(scores["forgetting"][0], forgetting_events(correct_predictions(logits, labels)))
    torch.testing.assert_close(scores["el2n"][0], el2n(logits[4], labels))
    torch.testing.assert_close(scores["grand"][0], grand)


def test_resnet_scores_come_from_each_networks_whole_data_logits_in_eval_mode():
    """ResNets on minibatches: each network's recorder sees the logits a plain eval-mode pass over all the data
    gives after every epoch, so its AUM, forgetting and EL2N equal the functions of those logits; GraNd is taken
    in eval mode; the networks are stacked in seed order."""
    data, labels, _ = blobs(per_class=6, flipped_per_class=1)
    data = data.repeat(1, 1, 2, 2)                                                       # [18, 1, 8, 8]
    seeds, epochs = [3, 4], 4

    class EvalLogits:                                           # the reference: one eval pass per epoch, by hand
        def __init__(self):
            self.logits, self.grand = [], None

        def is_check(self, epoch):
            return True

        def observe(self, state):
            self.logits.append(resnet_logits(state.model, data))
            if state.epoch == 1:
                self.grand = per_sample_gradient_norms(state.model.eval(), data, labels)
                state.model.train()

        def done(self):
            return False

    def make_observers(runs):
        recorder = DynamicsRecorder(data, labels, 3, runs, range(epochs), score_epoch=1, trajectory_epochs=[2])
        return {"dynamics": scoring.TimedObserver(recorder, data.device)}
    models, sets, pass_seconds = scoring.train_observed("ResNet", seeds, data, labels, 3, epochs, 8, make_observers,
                                                        progress=False)
    assert len(models) == len(sets) == 2 and pass_seconds > 0
    scores = scoring.stacked_dynamics(sets)
    for run, seed in enumerate(seeds):
        reference = EvalLogits()
        train_resnets([seed], data, labels, 3, epochs, batch_size=8, observers=[reference], progress=False)
        logits = torch.stack(reference.logits)                                           # [epochs, N, C]
        torch.testing.assert_close(scores["aum"][run], area_under_margin(logits, labels))
        torch.testing.assert_close(scores["forgetting"][run], forgetting_events(correct_predictions(logits, labels)))
        torch.testing.assert_close(scores["el2n"][run], el2n(logits[1], labels))
        torch.testing.assert_close(scores["grand"][run], reference.grand)
        torch.testing.assert_close(scores["margin_trajectory"][run, 0], margins(logits[2], labels))


def test_the_benchmark_table_names_a_network_other_than_the_simple_nn():
    row = {"dataset": "MNIST", "noise_ratio": 0.1, "score": "aum", "auroc": 0.9, "ap": 0.8, "precision_at_k": 0.7,
           "auroc_run_mean": 0.9, "auroc_run_std": 0.0, "extra_seconds": 1.0}
    table = mislabel.markdown_table([{**row, "network": "SimpleNN"}, {**row, "network": "ResNet"}, row])
    assert table.count("| MNIST | 0.1 | paper | aum |") == 2 and table.count("| MNIST (ResNet) | 0.1 | paper | aum |") == 1
    merged = mislabel.combine_rows([{**row, "network": "ResNet"}, {**row, "network": "ResNet", "auroc": 0.7}, row])
    assert [(m["network"], m["benchmark_runs"], round(m["auroc"], 3)) for m in merged] == [("ResNet", 2, 0.8),
                                                                                          ("SimpleNN", 1, 0.9)]
