"""GASTeN over seeds: the table, the collapse verdict and the figure of gasten_summarize_seeds.py on
run folders written by hand (the expected means and stds worked out by hand below), the ambiguous counts from a
checkpoint whose images and classifier are built so that the counts are known, and the grid of the study."""
import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import gasten_summarize_seeds
import gasten_train
from conftest import REPO, write_idx
from hardness.cli import UserInputError
from hardness.gasten import make_gan, save_classifier, save_gan
from hardness.gasten_seeds import collapsed
from hardness.sweep import flag_errors, load_grid
from neural_networks import PairClassifierCNN

HEADER = "epoch,acd,fid_own_features,fid_classifier,discriminator_loss,generator_loss,confusion,mgda_s,pareto"


def write_cell(run: Path, cell: str, acd: list[float], fid: float, d_loss: float,
               ambiguity: dict | None = None) -> Path:
    """A step-2 cell's metrics.csv (ACD per epoch; the last epoch's FID and discriminator loss) and, if given,
    its ambiguity.json."""
    folder = run / "step2" / cell
    folder.mkdir(parents=True)
    lines = [HEADER] + [f"{e + 1},{value},{fid if e == len(acd) - 1 else 50.0},1.0,"
                        f"{d_loss if e == len(acd) - 1 else 1.3},0.7,{value},nan,True" for e, value in enumerate(acd)]
    (folder / "metrics.csv").write_text("\n".join(lines) + "\n")
    if ambiguity is not None:
        (folder / "ambiguity.json").write_text(json.dumps({"epoch": len(acd), "samples": 15000, "noise_seed": 0,
                                                           "band": [0.4, 0.6], **ambiguity}))
    return folder


@pytest.fixture
def two_seeds(tmp_path: Path) -> tuple[Path, Path]:
    """Seeds 0 (study) and 1 (study_seed1): nf 1 and 2 x weights 0 and 25, three step-2 epochs each."""
    results = tmp_path / "Results"
    seed0, seed1 = results / "gasten/study", results / "gasten/study_seed1"
    # nf 1, weight 25: the cell the expected values below are worked out for
    write_cell(seed0, "cnn-1-1.0_25_5", [0.30, 0.20, 0.10], 20.0, 0.9, {"ambiguous": 1000, "real_in_band": 178})
    write_cell(seed1, "cnn-1-1.0_25_5", [0.20, 0.10, 0.30], 30.0, 1.1, {"ambiguous": 3000, "real_in_band": 178})
    write_cell(seed0, "cnn-1-1.0_0_5", [0.31, 0.31, 0.31], 10.0, 1.2, {"ambiguous": 10, "real_in_band": 178})
    write_cell(seed1, "cnn-1-1.0_0_5", [0.33, 0.33, 0.33], 12.0, 1.2, {"ambiguous": 20, "real_in_band": 178})
    # nf 2: seed 0's weight-25 cell collapses (D loss 0.002 < 0.1 and FID 512 > 100); seed 1's has D loss 0.05
    # but FID 90, and seed 1's weight-0 cell FID 150 but D loss 0.5: neither collapses
    write_cell(seed0, "cnn-2-1.0_25_5", [0.10, 0.08, 0.06], 512.0, 0.002, {"ambiguous": 12315, "real_in_band": 26})
    write_cell(seed1, "cnn-2-1.0_25_5", [0.20, 0.15, 0.12], 90.0, 0.05, {"ambiguous": 500, "real_in_band": 26})
    write_cell(seed0, "cnn-2-1.0_0_5", [0.40, 0.40, 0.40], 15.0, 1.0, {"ambiguous": 5, "real_in_band": 26})
    write_cell(seed1, "cnn-2-1.0_0_5", [0.40, 0.40, 0.40], 150.0, 0.5, {"ambiguous": 7, "real_in_band": 26})
    return seed0, seed1


def summarize(tmp_path: Path, *runs: Path, samples: int = 15000, data_root: Path | None = None,
              script=gasten_summarize_seeds) -> None:
    flags = ["--summarize_seeds", *map(str, runs), "--results_dir", str(tmp_path / "Results"), "--figures_dir",
             str(tmp_path / "Figures"), "--ambiguous_samples", str(samples), "--device", "cpu"]
    script.main(script.parse_args(flags + (["--data_root", str(data_root)] if data_root else [])))


def test_the_collapse_rule_needs_both_thresholds():
    assert collapsed(0.002, 512.0)
    assert not collapsed(0.05, 90.0)            # the discriminator wins, but the samples still look like digits
    assert not collapsed(0.5, 150.0)            # far from the data, but the discriminator is not winning
    assert not collapsed(0.1, 101.0)            # the loss threshold is strict


def test_table_over_two_seeds_by_hand(tmp_path, two_seeds, capsys):
    summarize(tmp_path, *two_seeds)
    output = tmp_path / "Results/gasten/study_over_seeds"
    with open(output / "over_seeds.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 * (2 + 2)                   # 4 cells x (2 seeds, mean, std)

    def row(nf: int, weight: str, statistic: str, seed: str = "nan") -> dict:
        return next(r for r in rows if (r["nf"], r["weight"], r["statistic"], r["seed"]) ==
                    (str(nf), weight, statistic, seed))

    mean, std = row(1, "25", "mean"), row(1, "25", "std")
    # ACD: (0.30 + 0.20) / 2 = 0.25, (0.20 + 0.10) / 2 = 0.15, (0.10 + 0.30) / 2 = 0.20; the sample std of two
    # values is |a - b| / sqrt(2): 0.1 / sqrt(2) = 0.0707107 twice, 0.2 / sqrt(2) = 0.1414214
    for epoch, expected_mean, expected_std in ((1, 0.25, 0.0707107), (2, 0.15, 0.0707107), (3, 0.20, 0.1414214)):
        assert float(mean[f"acd_epoch_{epoch}"]) == pytest.approx(expected_mean)
        assert float(std[f"acd_epoch_{epoch}"]) == pytest.approx(expected_std, abs=1e-6)
    # FID 20 and 30: 25 +- 7.0710678; ambiguous 1000 and 3000: 2000 +- 1414.2136; real images 178 twice: 178 +- 0;
    # discriminator loss 0.9 and 1.1: 1.0 +- 0.1414214
    for column, expected_mean, expected_std in (("fid_own_features", 25.0, 7.0710678), ("ambiguous", 2000, 1414.2136),
                                                ("real_in_band", 178, 0.0), ("discriminator_loss", 1.0, 0.1414214)):
        assert float(mean[column]) == pytest.approx(expected_mean)
        assert float(std[column]) == pytest.approx(expected_std, abs=1e-4)
    assert float(row(1, "25", "seed", "1")["acd_epoch_3"]) == pytest.approx(0.30)   # each seed's own row
    assert [row(2, "25", "seed", s)["collapsed"] for s in ("0", "1")] == ["1", "0"]
    assert row(2, "0", "seed", "1")["collapsed"] == "0" and row(2, "25", "mean")["collapsed"] == "1"

    markdown = (output / "over_seeds.md").read_text()
    assert ("| 1 | 25 | 5 | 2 | 0.250 ± 0.071 | 0.150 ± 0.071 | 0.200 ± 0.141 | 25.0 ± 7.1 | 2,000.0 ± 1,414.2 | "
            "178.0 ± 0.0 | 1.0000 ± 0.1414 | 0 of 2 |") in markdown
    assert "| 2 | 25 | 5 | 0 | 0.100 | 0.080 | 0.060 | 512.0 | 12,315 | 26 | 0.0020 | yes |" in markdown
    assert "| 1 | 4 | 0 |" in markdown and "| 2 | 4 | 1 |" in markdown     # collapsed runs per nf
    assert markdown in capsys.readouterr().out
    figure = tmp_path / "Figures/gasten/study_over_seeds/over_seeds.png"
    assert figure.is_file() and figure.stat().st_size > 10_000


def test_gasten_train_summarize_seeds_writes_the_same_table(tmp_path, two_seeds):
    """gasten_train.py --summarize_seeds, the flag from before the study had a script of its own, runs the same."""
    summarize(tmp_path, *two_seeds)
    table = tmp_path / "Results/gasten/study_over_seeds/over_seeds.csv"
    expected = table.read_text()
    table.unlink()
    summarize(tmp_path, *two_seeds, script=gasten_train)
    assert table.read_text() == expected


def test_seed_folders_must_be_one_config_and_one_length(tmp_path, two_seeds):
    other = tmp_path / "Results/gasten/another_seed2"
    write_cell(other, "cnn-1-1.0_25_5", [0.3, 0.2, 0.1], 20.0, 0.9, {"ambiguous": 1, "real_in_band": 1})
    with pytest.raises(UserInputError, match="one config"):
        summarize(tmp_path, two_seeds[0], other)
    short = tmp_path / "Results/gasten/study_seed2"
    write_cell(short, "cnn-1-1.0_25_5", [0.3, 0.2], 20.0, 0.9, {"ambiguous": 1, "real_in_band": 1})
    with pytest.raises(UserInputError, match="different numbers of epochs"):
        summarize(tmp_path, *two_seeds, short)


def constant_classifier() -> PairClassifierCNN:
    """nf 1 with both convolutions passing the centre pixel only and the output the mean of the 98 features: on
    an image of constant value v every feature is v (max-pooling a constant keeps it), so C = sigmoid(v)."""
    model = PairClassifierCNN(1)
    with torch.no_grad():
        for convolution in (model.features[0], model.features[2]):
            convolution.weight.zero_()
            convolution.weight[:, :, 1, 1] = 1.0
            convolution.bias.zero_()
        model.output.weight.fill_(1 / 98)
        model.output.bias.zero_()
    return model


def test_ambiguous_counts_from_the_checkpoint_and_the_test_images(tmp_path):
    # test images of constant pixels 0, 51, 102, 127, 153, 204, 255, i.e. v = pixel / 127.5 - 1 = -1, -0.6, -0.2,
    # -0.004, 0.2, 0.6, 1; C = sigmoid(v) is in [0.4, 0.6] iff |v| <= log(0.6 / 0.4) = 0.405: three of seven
    pixels = np.array([0, 51, 102, 127, 153, 204, 255], dtype=np.uint8)
    raw = tmp_path / "data/MNIST/raw"
    write_idx(raw / "t10k-images-idx3-ubyte", np.broadcast_to(pixels[:, None, None], (7, 28, 28)))
    write_idx(raw / "t10k-labels-idx1-ubyte", np.array([7, 1, 7, 1, 7, 1, 7], dtype=np.uint8))
    write_idx(raw / "train-images-idx3-ubyte", np.zeros((4, 28, 28), dtype=np.uint8))
    write_idx(raw / "train-labels-idx1-ubyte", np.array([7, 1, 7, 1], dtype=np.uint8))
    results = tmp_path / "Results"
    save_classifier(constant_classifier(), "cnn", 1, results / "gasten/classifiers/mnist_7v1/cnn-1-1.0", {})
    config = {"dataset": {"name": "mnist", "pos": 7, "neg": 1}, "model": {"loss": "gan"}}
    # generators whose last layer is zero but for its bias b draw the constant image tanh(b) whatever z:
    # b = 0 gives C = sigmoid(0) = 0.5 for every sample, b = 1 gives C = sigmoid(tanh(1)) = sigmoid(0.762) = 0.68
    runs = []
    for seed, bias, cell in ((0, 0.0, "cnn-1-1.0_25_5"), (1, 1.0, "cnn-1-1.0_25_5")):
        run = results / "gasten" / ("study" if seed == 0 else f"study_seed{seed}")
        folder = write_cell(run, cell, [0.3, 0.2], 20.0, 0.9)
        gan = make_gan("gan", torch.device("cpu"), seed)
        with torch.no_grad():
            gan.generator.deconvolve[-2].weight.zero_()
            gan.generator.deconvolve[-2].bias.fill_(bias)
        save_gan(gan, folder / "epoch_02", {"config": config, "classifier": "cnn-1-1.0"})
        runs.append(run)
    summarize(tmp_path, *runs, samples=300, data_root=tmp_path / "data")
    counted = [json.loads((run / "step2/cnn-1-1.0_25_5/ambiguity.json").read_text()) for run in runs]
    assert [c["ambiguous"] for c in counted] == [300, 0] and all(c["samples"] == 300 for c in counted)
    assert [c["real_in_band"] for c in counted] == [3, 3] and counted[0]["real_test_images"] == 7
    with open(tmp_path / "Results/gasten/study_over_seeds/over_seeds.csv") as handle:
        mean = next(r for r in csv.DictReader(handle) if r["statistic"] == "mean")
    assert float(mean["ambiguous"]) == 150 and float(mean["real_in_band"]) == 3
    assert math.isclose(float(mean["acd_epoch_2"]), 0.2)


def test_the_grid_runs_each_seed_from_its_own_step1(flag_checks_in_process):
    grid = load_grid(REPO / "configs/sweeps/gasten_seeds.yaml")
    stages = {cells[0].stage: cells for cells in grid.stages}
    assert list(stages) == ["classifiers", "step1", "step2_seed0", "step2_seed1", "step2_seed2", "summary",
                            "diagnostics"]
    assert sorted(cell.flags["seed"] for cell in stages["step1"]) == [0, 1, 2]
    for seed in (0, 1, 2):
        cells = stages[f"step2_seed{seed}"]
        folder = "mnist_7v1_seeds" + ("" if seed == 0 else f"_seed{seed}")
        assert {(c.flags["classifier"], c.flags["weight"]) for c in cells} == {
            (f"cnn-{nf}-1.0", w) for nf in (1, 2, 4) for w in (0, 25)}
        assert all(c.flags["seed"] == seed and c.flags["step1_run"].endswith(f"/gasten/{folder}/step1")
                   and c.flags["set"] == "step2.epochs=5" for c in cells)
    assert stages["summary"][0].script == "gasten_summarize_seeds.py"
    summary = stages["summary"][0].flags["summarize_seeds"]
    assert [Path(path).name for path in summary] == ["mnist_7v1_seeds", "mnist_7v1_seeds_seed1", "mnist_7v1_seeds_seed2"]
    assert stages["diagnostics"][0].flags["run_folders"] == summary
    assert flag_errors(grid) == []
