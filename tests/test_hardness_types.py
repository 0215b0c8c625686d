"""Injected hardness (hardness/injection.py) on tiny hand-made images, the characterisation scores
(hardness/characterisation.py) against values worked out by hand, the verdict rules (hardness/verdicts.py) on
hand-made score vectors, and hardness_types_benchmark.py's bad input."""
import dataclasses
import json
import math

import numpy as np
import pytest
import torch

import hardness_types_benchmark
from hardness.characterisation import (agreement, aleatoric_from_data_map, augmentation_sensitivity, data_iq_aleatoric,
                                       data_iq_groups, exact_copies, latent_outlier_scores, nearest_copies,
                                       nearest_neighbours, prototypicality, shift_images)
from hardness.injection import exact_duplicate_groups, inject, shifted, zoomed
from hardness.noise import flip_labels
from hardness.seeds import LABEL_NOISE, stage_generator
from hardness.verdicts import VerdictRules, assign_verdicts, robust_z


def tiny(n: int = 12, side: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """n images [1, side, side] of distinct constant intensities k / (2n) + 0.25, labels k % 3."""
    values = 0.25 + torch.arange(n, dtype=torch.float32) / (2 * n)
    return values[:, None, None, None].expand(n, 1, side, side).clone(), torch.arange(n) % 3


def drawn(seed: int, n: int, count: int) -> list[int]:
    """The samples an injection replaces: the first `count` of torch's permutation from the LABEL_NOISE generator."""
    return torch.randperm(n, generator=stage_generator(seed, LABEL_NOISE))[:count].tolist()


def test_invert_replaces_the_drawn_samples_by_one_minus_their_pixels():
    images, labels = tiny()
    out = inject(images, labels, 3, "invert", 0.25, seed=4)
    chosen = drawn(4, 12, 3)
    assert sorted(i for i, kind in enumerate(out.kind) if kind) == sorted(chosen)
    for i in range(12):
        expected = 1 - images[i] if i in chosen else images[i]
        torch.testing.assert_close(out.images[i], expected)
    assert out.labels.tolist() == labels.tolist() and out.duplicate_of.tolist() == [-1] * 12


def test_a_mislabelled_type_is_the_one_flip_function():
    images, labels = tiny()
    out = inject(images, labels, 3, "adjacent", 0.5, seed=2)
    flipped_labels, flipped, _ = flip_labels(labels, 0.5, 3, 2, "adjacent", images)
    assert out.labels.tolist() == flipped_labels.tolist()
    assert [bool(kind) for kind in out.kind] == flipped.tolist()
    assert all(out.labels[i] == (labels[i] + 1) % 3 for i in range(12) if out.kind[i])    # class k to k + 1
    torch.testing.assert_close(out.images, images)                                       # pixels untouched


def test_gaussian_noise_has_a_standard_deviation_in_its_range():
    images = torch.full((20, 1, 32, 32), 0.5)
    out = inject(images, torch.arange(20) % 2, 2, "gaussian_noise", 0.5, seed=0)
    changed = [i for i, kind in enumerate(out.kind) if kind]
    stds = [(out.images[i] - 0.5).std().item() for i in changed]
    assert len(changed) == 10 and all(0.17 < s < 0.43 for s in stds) and max(stds) - min(stds) > 0.03
    assert out.images.min() >= 0 and out.images.max() <= 1


def test_blur_spreads_a_bright_pixel_by_a_sigma_between_one_and_two():
    images = torch.zeros(4, 1, 15, 15)
    images[:, 0, 7, 7] = 1.0
    out = inject(images, torch.tensor([0, 1, 0, 1]), 2, "blur", 0.5, seed=1)

    def centre(sigma: float) -> float:        # a normalised 1-d kernel's centre weight, squared (separable)
        radius = math.ceil(3 * sigma)
        return 1 / sum(math.exp(-x * x / (2 * sigma * sigma)) for x in range(-radius, radius + 1)) ** 2
    for i in (i for i, kind in enumerate(out.kind) if kind):
        assert centre(2.0) - 1e-6 <= out.images[i, 0, 7, 7].item() <= centre(1.0) + 1e-6
        assert out.images[i].sum().item() == pytest.approx(1.0, abs=1e-4)


def test_shift_moves_the_image_and_blackens_the_uncovered_border():
    image = torch.arange(1, 10, dtype=torch.float32).view(1, 1, 3, 3)
    assert shifted(image, torch.tensor([1]), torch.tensor([-1]))[0, 0].tolist() == [[0, 0, 0], [2, 3, 0], [5, 6, 0]]
    images = torch.zeros(6, 1, 28, 28)
    images[:, 0, 14, 14] = 1.0
    out = inject(images, torch.arange(6) % 2, 2, "shift", 0.5, seed=3)
    for i in (i for i, kind in enumerate(out.kind) if kind):
        (row, col), = (out.images[i, 0] == 1).nonzero().tolist()
        assert 4.5 <= math.hypot(row - 14, col - 14) <= 8.5 and out.images[i].sum() == 1


def test_zoom_keeps_the_centre_crop_resized_back():
    image = torch.zeros(1, 1, 8, 8)
    image[0, 0, 2:6, 2:6] = 1.0                                 # a white centre square of half the side
    torch.testing.assert_close(zoomed(image, torch.tensor([0.5]))[0], torch.ones(1, 8, 8))
    images, labels = tiny(8, 20)
    out = inject(images, labels, 3, "zoom", 0.5, seed=0)
    torch.testing.assert_close(out.images, images)               # constant images look the same zoomed
    assert sum(bool(kind) for kind in out.kind) == 4 and out.labels.tolist() == labels.tolist()


def test_far_ood_takes_the_other_datasets_images_with_drawn_classes():
    images, labels = tiny()
    other = torch.rand(30, 1, 6, 6)
    out = inject(images, labels, 3, "far_ood", 0.25, seed=5, other_images=other)
    for i in (i for i, kind in enumerate(out.kind) if kind):
        assert any(torch.equal(out.images[i], o) for o in other) and 0 <= out.labels[i] < 3
    with pytest.raises(ValueError, match="another dataset"):
        inject(images, labels, 3, "far_ood", 0.25, seed=5)


@pytest.mark.parametrize("kind", ["exact_duplicate", "near_duplicate"])
def test_copies_take_the_pixels_and_label_of_a_sample_not_replaced_and_record_the_pair(kind):
    images, labels = tiny()
    out = inject(images, labels, 3, kind, 0.25, seed=6)
    copies = drawn(6, 12, 3)
    for i in copies:
        j = int(out.duplicate_of[i])
        assert j not in copies and out.duplicate_of[j] == i and out.kind[j] == kind
        assert out.labels[i] == labels[j]
        difference = (out.images[i] - images[j]).abs().max().item()
        assert difference == 0 if kind == "exact_duplicate" else 0 < difference < 0.15
    assert sum(bool(k) for k in out.kind) == 6                   # both members of the three pairs


def test_a_blend_is_the_mean_of_two_samples_of_different_classes_labelled_as_one():
    images, labels = tiny()
    out = inject(images, labels, 3, "blend", 0.25, seed=7)
    for i in drawn(7, 12, 3):
        matches = [j for j in range(12) if labels[j] != labels[i]
                   and torch.allclose(out.images[i], (images[i] + images[j]) / 2)]
        assert len(matches) == 1 and out.labels[i] in (labels[i], labels[matches[0]])


def test_an_excluded_sample_is_never_replaced_and_own_duplicates_are_found():
    images, labels = tiny()
    images[5] = images[2]
    images[9] = images[2]
    assert exact_duplicate_groups(images).tolist() == [-1] * 5 + [2, -1, -1, -1, 2, -1, -1]
    exclude = torch.zeros(12, dtype=torch.bool)
    exclude[:6] = True
    out = inject(images, labels, 3, "invert", 0.5, seed=0, exclude=exclude)
    assert [i for i, kind in enumerate(out.kind) if kind] == list(range(6, 12))


@pytest.mark.parametrize("flags, message", [
    (["--injection", "sparkle"], "unknown injection type 'sparkle'"),
    (["--injection", "blur", "--ratio", "1.5"], "--ratio"),
    (["--injection", "blur", "--ratio", "0"], "--ratio"),
    (["--dataset_name", "cifar10"], "must be MNIST or FashionMNIST")])
def test_bad_injections_are_one_line_before_any_data(capsys, flags, message):
    with pytest.raises(SystemExit):
        hardness_types_benchmark.parse_args(flags)
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in error and "Traceback" not in error


def test_data_iq_by_hand():
    p = torch.tensor([[[0.5, 0.1], [0.9, 0.1]]])                 # [runs 1, epochs 2, N 2]
    torch.testing.assert_close(data_iq_aleatoric(p), torch.tensor([[0.17, 0.09]]))
    confidence, variability = torch.tensor([0.7, 0.1]), torch.tensor([0.2, 0.0])   # the data map of the same p
    torch.testing.assert_close(aleatoric_from_data_map(confidence, variability), torch.tensor([0.17, 0.09]))
    groups = data_iq_groups(torch.tensor([0.9, 0.8, 0.2, 0.5]), torch.tensor([0.01, 0.2, 0.005, 0.3]))
    assert groups.tolist() == [0, 1, 2, 1]                       # median 0.105: easy, ambiguous, hard, ambiguous


def test_prototypicality_is_the_cosine_distance_to_the_class_mean():
    latent = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]]])
    distance = prototypicality(latent, torch.tensor([0, 0, 1]), 2)
    torch.testing.assert_close(distance, torch.tensor([[1 - 1 / math.sqrt(2), 1 - 1 / math.sqrt(2), 0.0]]))


def test_agreement_share_and_entropy_by_hand():
    probabilities = torch.tensor([[[0.8, 0.2, 0.0], [0.3, 0.3, 0.4]],
                                  [[0.6, 0.4, 0.0], [0.1, 0.8, 0.1]],
                                  [[0.1, 0.9, 0.0], [0.9, 0.1, 0.0]]])     # [models 3, N 2, C 3]
    share, entropy, runner_up = agreement(probabilities)
    torch.testing.assert_close(share, torch.tensor([2 / 3, 1 / 3]))
    torch.testing.assert_close(runner_up, torch.tensor([0.5, 0.4]))          # means (1/2, 1/2, 0), (1.3, 1.2, 0.5) / 3
    mean = [0.5, 0.5, 0.0]                                       # sample 0's mean prediction: ln 2 nats
    assert entropy[0].item() == pytest.approx(-sum(p * math.log(p) for p in mean if p), abs=1e-6)


def test_sensitivity_to_shifts_by_hand():
    images = torch.zeros(1, 1, 3, 3)
    images[0, 0, 1, 1] = 1.0                                     # a lone centre pixel: every shift moves it away
    assert shift_images(images, 1, 0)[0, 0].tolist() == [[0, 0, 0], [0, 0, 0], [0, 1, 0]]

    def logits_of(batch: torch.Tensor) -> torch.Tensor:          # [runs 1, n, 2]: ln 3 times the centre pixel, 0
        return torch.stack([math.log(3) * batch[:, 0, 1, 1], torch.zeros(len(batch))], -1)[None]
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)   # p = (3/4, 1/4) against q = (1/2, 1/2)
    assert augmentation_sensitivity(logits_of, images).item() == pytest.approx(kl, abs=1e-6)


def test_nearest_neighbours_outliers_and_copies_by_hand():
    features = np.array([[0.0, 0.0], [0.0, 0.0], [3.0, 4.0], [10.0, 0.0]])
    distances, indices = nearest_neighbours(features, 1)
    assert indices[:2, 0].tolist() == [1, 0] and indices[3, 0] == 2
    np.testing.assert_allclose(distances[:, 0], [0, 0, 5, math.sqrt(65)])
    points = torch.tensor([[[0.0], [1.0], [2.0], [10.0]]])
    torch.testing.assert_close(latent_outlier_scores(points, k=2), torch.tensor([[1.5, 1.0, 1.5, 8.5]]))
    pixels = np.array([[0.0, 0.0], [0.0, 0.0], [0.1, 0.0], [1.0, 1.0], [0.0, 0.0]], dtype=np.float32)
    assert exact_copies(pixels).tolist() == [1, 0, -1, -1, 0]
    partner, rms = nearest_copies(pixels)
    assert partner[[0, 1, 4, 3]].tolist() == [1, 0, 0, 2]
    np.testing.assert_allclose(rms, [0, 0, 0.1 / math.sqrt(2), math.sqrt(0.81 + 1) / math.sqrt(2), 0], rtol=1e-5)


def hand_scores() -> dict[str, np.ndarray]:
    """Eight samples of 3 classes: 0 and 1 copies of each other, 2 of a near-uniform prediction (1.05 nats of ln 3 =
    1.0986), 3 predicted as another class by every model, 4 split between two classes, 5 far from its class's mean,
    6 and 7 ordinary."""
    return {"copy_distance": np.array([[0.0, 0.0, 0.5, 0.4, 0.6, 0.5, 0.45, 0.55]]),
            "nearest_copy": np.array([[1, 0, 3, 2, 5, 4, 7, 6]]),
            "agreement": np.array([[1.0, 1.0, 0.4, 1.0, 0.6, 1.0, 1.0, 1.0]]),
            "prediction_entropy": np.array([[0.1, 0.12, 1.05, 0.11, 0.6, 0.09, 0.1, 0.1]]),
            "runner_up": np.array([[0.05, 0.05, 0.33, 0.04, 0.45, 0.05, 0.05, 0.05]]),
            "prototypicality": np.array([[0.1, 0.1, 0.1, 0.12, 0.1, 0.9, 0.11, 0.09]])}


def test_robust_z_by_hand():
    values = np.array([1.0, 1.1, 50.0, 0.9, 1.0, 1.05, 0.95, 1.0])   # median 1, median absolute deviation 0.05
    np.testing.assert_allclose(robust_z(values)[[1, 2]], [0.1 / 0.07413, 49 / 0.07413], rtol=1e-4)
    assert robust_z(np.ones(4)).tolist() == [0, 0, 0, 0]


def test_the_verdict_rules_in_their_order_on_hand_made_scores():
    labels = np.array([0, 0, 1, 1, 2, 2, 0, 1])
    predicted = np.array([0, 0, 2, 2, 2, 2, 0, 1])                # samples 2 and 3 predicted as class 2
    rules = VerdictRules(copy_rms=0.03, ood_entropy=0.6, ood_prototypicality_z=None, mislabel_agreement=0.8,
                         atypical_z=6.0, ambiguous_runner_up=0.3)
    verdicts = assign_verdicts(hand_scores(), labels, predicted, 3, rules)
    assert verdicts.verdict.tolist() == ["duplicate", "duplicate", "out_of_distribution", "mislabelled", "ambiguous",
                                         "atypical", "ok", "ok"]
    assert verdicts.duplicate_of.tolist() == [1, 0, -1, -1, -1, -1, -1, -1]
    assert verdicts.outlier_rank[2] == 1 and sorted(verdicts.outlier_rank.tolist()) == list(range(1, 9))
    assert verdicts.deciding[2] == {"entropy_share": pytest.approx(1.05 / math.log(3))}     # 0.956 >= 0.6
    assert verdicts.deciding[4]["runner_up"] == 0.45 and not verdicts.notes                # 0.6 / 1.0986 < 0.6
    assert verdicts.deciding[5]["prototypicality_z"] == pytest.approx(0.8 / (1.4826 * 0.005))   # median 0.1
    both = hand_scores()
    both["copy_distance"][0, 2] = 0.0                             # a near-uniform copy: duplicate comes first
    assert assign_verdicts(both, labels, predicted, 3, rules).verdict[2] == "duplicate"
    strict = assign_verdicts(hand_scores(), labels, predicted, 3, VerdictRules(mislabel_agreement=1.01))
    assert strict.verdict[3] == "ok"


def test_out_of_distribution_needs_a_far_prototype_when_asked():
    """Sample 2's near-uniform prediction with prototypicality at the median is not out of distribution under a
    prototypicality condition (it falls to ambiguous, runner-up 0.33); at 0.5 it is: the median of the eight is
    0.105, their median absolute deviation 0.01, so z = 0.395 / 0.014826 = 26.6."""
    labels = np.array([0, 0, 1, 1, 2, 2, 0, 1])
    predicted = np.array([0, 0, 2, 2, 2, 2, 0, 1])
    rules = VerdictRules(copy_rms=0.03, ood_entropy=0.6, ood_prototypicality_z=3.0, mislabel_agreement=0.8,
                         atypical_z=200.0, ambiguous_runner_up=0.3)
    assert assign_verdicts(hand_scores(), labels, predicted, 3, rules).verdict[2] == "ambiguous"
    scores = hand_scores()
    scores["prototypicality"][0, 2] = 0.5
    verdicts = assign_verdicts(scores, labels, predicted, 3, rules)
    assert verdicts.verdict[2] == "out_of_distribution"
    assert verdicts.deciding[2]["prototypicality_z"] == pytest.approx(0.395 / 0.014826, rel=1e-4)
    assert assign_verdicts(scores, labels, predicted, 3, dataclasses.replace(rules, ood_prototypicality_z=27.0)
                           ).verdict[2] == "ambiguous"
    del scores["prototypicality"]
    alone = assign_verdicts(scores, labels, predicted, 3, rules)
    assert alone.verdict[2] == "out_of_distribution"
    assert any("by the entropy alone" in note for note in alone.notes)


def test_missing_scores_and_one_class_are_notes_not_errors():
    scores = {name: value for name, value in hand_scores().items() if name != "prediction_entropy"}
    verdicts = assign_verdicts(scores, np.zeros(8, dtype=int), np.zeros(8, dtype=int), 1)
    assert "out_of_distribution" not in verdicts.verdict.tolist() and verdicts.outlier_rank.tolist() == [0] * 8
    assert any("no out_of_distribution verdicts" in note for note in verdicts.notes)
    assert any("one class only" in note for note in verdicts.notes)
    assert verdicts.verdict[:2].tolist() == ["duplicate", "duplicate"]      # what can be decided still is


def test_the_merged_score_tables_by_hand():
    """Two seeds of two scores on far_ood: AP 0.6 and 0.8 merge to 0.700 ± 0.100 (the std over seeds), precision at
    k 0.5 and 0.7 to 0.600 ± 0.100, the seconds 1 and 3 to 2.0; the better score of a column is bold."""
    from hardness.mislabel import combine_rows
    from hardness.types_benchmark import score_table
    base = {"dataset": "MNIST", "noise_ratio": 0.1, "noise_type": "far_ood", "network": "MLP", "recipe": "fast"}
    rows = [{**base, "score": "loss", "auroc": 0.9, "ap": 0.6, "precision_at_k": 0.5, "extra_seconds": 1.0},
            {**base, "score": "loss", "auroc": 0.9, "ap": 0.8, "precision_at_k": 0.7, "extra_seconds": 3.0},
            {**base, "score": "energy", "auroc": 0.5, "ap": 0.1, "precision_at_k": 0.1, "extra_seconds": 0.5}]
    merged = combine_rows(rows)
    ap = score_table(merged, "MNIST", 0.1, "ap").splitlines()
    assert ap[0] == "| score | far_ood | s |"
    assert ap[2] == "| loss | **0.700 ± 0.100** | 2.0 |" and ap[3] == "| energy | 0.100 | 0.5 |"
    assert "| loss | **0.600 ± 0.100** | 2.0 |" in score_table(merged, "MNIST", 0.1, "precision_at_k")


def test_the_benchmark_cells_and_their_merge_end_to_end(tmp_path):
    """Two cells of a tiny MNIST (none, far_ood with the tiny Fashion-MNIST's images) laid out as a sweep's, with
    Datalab's rows, then --sweep: one AUROC table and one verdict table, and the figure."""
    from conftest import synthetic_blobs, write_mnist_layout
    root = tmp_path / "data"
    write_mnist_layout(root)
    write_mnist_layout(root, "FashionMNIST", make=synthetic_blobs)
    for kind in ("none", "far_ood"):
        cell = tmp_path / "sweep" / "stage" / kind
        hardness_types_benchmark.main(hardness_types_benchmark.parse_args([
            "--dataset_name", "mnist", "--subset_size", "80", "--injection", kind, "--ratio", "0.25", "--runs", "2",
            "--device", "cpu", "--data_root", str(root), "--results_dir", str(cell / "results"),
            "--figures_dir", str(cell / "figures")]))
    saved = np.load(tmp_path / "sweep/stage/far_ood/results/hardness_types/MNIST_80_far_ood_0.25_seed0.npz")
    assert (saved["injected_type"] == "far_ood").sum() == 20 and saved["flipped"].sum() == 20
    hardness_types_benchmark.main(hardness_types_benchmark.parse_args([
        "--sweep", str(tmp_path / "sweep"), "--results_dir", str(tmp_path / "R"), "--figures_dir", str(tmp_path / "F")]))
    table = (tmp_path / "R/hardness_types/hardness_types_sweep.md").read_text()
    assert "## MNIST, 0.25 injected: AUROC" in table and "| far_ood |" in table.split("verdicts")[1]
    assert "## MNIST, 0.25 injected: AP" in table and "## MNIST, 0.25 injected: precision at k" in table
    assert "| none (clean) |" in table and "datalab outlier (pixels)" in table
    assert (tmp_path / "F/hardness_types/auroc_by_type_MNIST.png").is_file()


def test_a_folder_against_its_manifest_with_datalab(tmp_path):
    """An exported folder of 80 tiny MNIST images with 10% far out-of-distribution images and 10% exact copies, scored
    against its injected.csv: every copy given `duplicate`, one row per type and one for the rest, Datalab's shares."""
    import csv as csv_module
    from conftest import synthetic_blobs, write_mnist_layout
    from test_user_data import export_script
    root = tmp_path / "data"
    write_mnist_layout(root)
    write_mnist_layout(root, "FashionMNIST", make=synthetic_blobs)
    script = export_script()
    folder, _ = script.export(script.parse_args(["--dataset_name", "MNIST", "--subset_size", "80", "--inject",
                                                 "far_ood:0.1", "exact_duplicate:0.1", "--data_root", str(root),
                                                 "--output", str(tmp_path / "export")]))
    hardness_types_benchmark.main(hardness_types_benchmark.parse_args([
        "--dataset_name", f"folder:{folder}", "--manifest", str(folder / "injected.csv"), "--runs", "2", "--device",
        "cpu", "--data_root", str(tmp_path / "cache"), "--results_dir", str(tmp_path / "R")]))
    with open(tmp_path / "R/hardness_types/export_manifest.csv", newline="") as handle:
        rows = {row["type"]: row for row in csv_module.DictReader(handle)}
    assert set(rows) == {"far_ood", "exact_duplicate", "(the rest)"}
    saved = np.load(tmp_path / "R/hardness_types/export_manifest.npz")         # the scores and verdicts kept
    kinds = saved["injected_type"]
    assert (kinds == "far_ood").sum() == 8 and (kinds == "exact_duplicate").sum() == 16
    assert (saved["verdict"][kinds == "exact_duplicate"] == "duplicate").all()
    settings = json.loads((tmp_path / "R/hardness_types/export_manifest.json").read_text())
    assert settings["manifest"].endswith("injected.csv") and settings["verdict_rules"] == VerdictRules().settings()
    assert [rows[kind]["samples"] for kind in ("far_ood", "exact_duplicate", "(the rest)")] == ["8", "16", "56"]
    assert float(rows["exact_duplicate"]["share_duplicate"]) == 1.0
    assert float(rows["exact_duplicate"]["datalab_near_duplicate_share"]) == 1.0
    assert float(rows["(the rest)"]["datalab_seconds"]) > 0 and float(rows["(the rest)"]["our_seconds"]) > 0
