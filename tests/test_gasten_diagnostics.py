"""GASTeN's step-2 diagnostics: the generator's two loss terms, their gradient norms and the discriminator on
networks small enough to work out by hand, a classifier on real images by hand, and gasten_step2_diagnostics.py
end to end on run folders written by hand (epoch 0 is the step-1 checkpoint the cell started from)."""
import csv
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import gasten_step2_diagnostics
from conftest import write_idx
from gasten_step2_diagnostics import classifier_on_real, generator_step_terms
from hardness.cli import UserInputError
from hardness.gasten import GAN, make_gan, save_classifier, save_gan
from test_gasten_seeds import constant_classifier


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


class ConstantImage(nn.Module):
    """G(z) = b for every z: one 2x2 image of parameters."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.b = nn.Parameter(torch.full((1, 1, 2, 2), value))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.b.expand(len(z), 1, 2, 2)


class SigmoidOfSum(nn.Module):
    """x -> sigmoid(scale * sum of pixels), [N]."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.scale * x.flatten(1).sum(1))


def test_generator_step_terms_by_hand():
    # G(z) = b with four pixels 0.25, so s = sum = 1; D = sigmoid(s), C = sigmoid(2 s).
    # adversarial = -log sigmoid(1) = 0.3132617; d/db_i = -(1 - sigmoid(1)) for each of 4 pixels: norm 2 (1 - sigmoid(1))
    # confusion = sigmoid(2) - 0.5 = 0.3807971; d/db_i = 2 sigmoid'(2): norm 2 * 2 sigmoid(2) (1 - sigmoid(2))
    # the two gradients point opposite ways (cosine -1): the confusion term asks for darker images, D for brighter
    gan = GAN(ConstantImage(0.25), SigmoidOfSum(1.0), None, None, "gan")
    noise = torch.zeros(10, 64)                                       # batches of 4: two full ones, 2 samples left out
    real = torch.cat([torch.zeros(4, 1, 2, 2), torch.full((6, 1, 2, 2), 0.25)])   # D(real) 0.5, then sigmoid(1)
    terms = generator_step_terms(gan, SigmoidOfSum(2.0), noise, real, batch_size=4)
    assert terms["adversarial"] == pytest.approx(-math.log(sigmoid(1)))
    assert terms["adversarial_gradient_norm"] == pytest.approx(2 * (1 - sigmoid(1)))
    assert terms["confusion"] == pytest.approx(sigmoid(2) - 0.5)
    assert terms["confusion_gradient_norm"] == pytest.approx(4 * sigmoid(2) * (1 - sigmoid(2)))
    assert terms["gradient_cosine"] == pytest.approx(-1.0)
    assert terms["discriminator_real"] == pytest.approx((0.5 + sigmoid(1)) / 2)   # the mean of the two batch means
    assert terms["discriminator_fake"] == pytest.approx(sigmoid(1))
    assert terms["positive_share"] == 1.0
    with pytest.raises(UserInputError, match="no full batch"):
        generator_step_terms(gan, SigmoidOfSum(2.0), noise[:3], real[:3], batch_size=4)


def test_classifier_on_real_by_hand():
    # pixel sums 0, 2, -2, 0.1 -> C = sigmoid(2 sum) = 0.5, sigmoid(4), sigmoid(-4), sigmoid(0.2) = 0.5498;
    # targets 1, 1, 0, 0: right on the 2nd and 3rd (0.5 is not > 0.5), accuracy 0.5; 0.5 and 0.5498 in [0.4, 0.6]
    sums = torch.tensor([0.0, 2.0, -2.0, 0.1])
    images = (sums / 4)[:, None, None, None].expand(4, 1, 2, 2)
    scores = classifier_on_real(SigmoidOfSum(2.0), images, torch.tensor([1.0, 1.0, 0.0, 0.0]))
    assert scores["accuracy"] == 0.5
    assert scores["acd"] == pytest.approx((0 + 2 * (sigmoid(4) - 0.5) + sigmoid(0.2) - 0.5) / 4)
    assert scores["in_band_share"] == 0.5


def test_the_script_from_hand_made_run_folders(tmp_path, capsys):
    # the classifier is sigmoid(v) on images of constant value v (test_gasten_seeds.constant_classifier), and a
    # generator whose last layer is zero but for its bias b draws tanh(b) whatever z: b = 0 at the step-1 start
    # gives C = 0.5 (confusion 0, nothing positive), b = 1 after step-2 epoch 1 gives C = sigmoid(tanh(1))
    raw = tmp_path / "data/MNIST/raw"
    write_idx(raw / "train-images-idx3-ubyte", np.full((8, 28, 28), 255, dtype=np.uint8))
    write_idx(raw / "train-labels-idx1-ubyte", np.array([7, 1] * 4, dtype=np.uint8))
    write_idx(raw / "t10k-images-idx3-ubyte", np.array([0, 255])[:, None, None].repeat(28, 1).repeat(28, 2).astype(np.uint8))
    write_idx(raw / "t10k-labels-idx1-ubyte", np.array([1, 7], dtype=np.uint8))   # C = sigmoid(-1), sigmoid(1): right
    results = tmp_path / "Results"
    save_classifier(constant_classifier(), "cnn", 1, results / "gasten/classifiers/mnist_7v1/cnn-1-1.0", {})
    config = {"dataset": {"name": "mnist", "pos": 7, "neg": 1}, "model": {"loss": "gan"},
              "training": {"batch_size": 4}, "step1": {"run": None}}
    run = results / "gasten/study"
    for folder, bias in ((run / "step1/epoch_05", 0.0), (run / "step2/cnn-1-1.0_25_5/epoch_01", 1.0)):
        gan = make_gan("gan", torch.device("cpu"), 0)
        with torch.no_grad():
            gan.generator.deconvolve[-2].weight.zero_()
            gan.generator.deconvolve[-2].bias.fill_(bias)
        save_gan(gan, folder, {"config": config, "classifier": "cnn-1-1.0", "step1_run": None})
    gasten_step2_diagnostics.main(gasten_step2_diagnostics.parse_args(
        ["--run_folders", str(run), "--samples", "8", "--device", "cpu", "--data_root", str(tmp_path / "data"),
         "--results_dir", str(results), "--figures_dir", str(tmp_path / "Figures")]))
    output = results / "gasten/study_over_seeds"
    with open(output / "step2_diagnostics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["epoch"], row["weight"], row["seed"]) for row in rows] == [("0", "25", "0"), ("1", "25", "0")]
    assert float(rows[0]["confusion"]) == pytest.approx(0.0, abs=1e-6) and float(rows[0]["positive_share"]) == 0.0
    assert float(rows[1]["confusion"]) == pytest.approx(sigmoid(math.tanh(1)) - 0.5, abs=1e-5)
    assert float(rows[1]["positive_share"]) == 1.0
    settings = json.loads((output / "step2_diagnostics.json").read_text())
    on_real = settings["classifiers_on_real_test_images"]["cnn-1-1.0"]
    assert on_real["accuracy"] == 1.0 and on_real["acd"] == pytest.approx(sigmoid(1) - 0.5, abs=1e-6)
    assert on_real["in_band_share"] == 0.0
    markdown = (output / "step2_diagnostics.md").read_text()
    assert "| 1 | 25 | 1 | 1 |" in markdown and "| cnn-1-1.0 | 1.0000 | 0.231 | 0.0000 |" in markdown
    assert markdown in capsys.readouterr().out
    assert (tmp_path / "Figures/gasten/study_over_seeds/step2_diagnostics.png").stat().st_size > 10_000
