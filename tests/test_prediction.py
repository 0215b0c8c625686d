"""Chunked prediction: the same outputs as one pass, for plain, tuple and stacked outputs, with the mode kept."""
import torch
from torch import nn

from hardness.prediction import evaluating, predict


class TwoOutputs(nn.Module):
    """Logits [n, 3] and a latent [n, 2] of a fixed linear map, with dropout that only training mode applies."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.dropout = nn.Dropout(0.5)

    def forward(self, x):
        logits = self.dropout(self.linear(x))
        return logits, logits[:, :2] * 2


def test_predict_in_chunks_equals_one_pass_without_gradients():
    torch.manual_seed(0)
    model, x = TwoOutputs(), torch.randn(10, 4)
    with evaluating(model):
        logits, latent = predict(model, x, chunk=3)                  # chunks of 3, 3, 3 and 1
        whole = model.linear(x)
    assert model.training                                            # back in the mode it was in
    torch.testing.assert_close(logits, whole)   # a 1-sample chunk may differ in the last bit
    torch.testing.assert_close(latent, whole[:, :2] * 2)
    assert not logits.requires_grad


def test_predict_concatenates_stacked_outputs_along_their_sample_axis():
    weights = torch.arange(6.0).view(2, 3, 1)                        # two "runs" of a 1 -> 3 map
    stacked = lambda x: (weights @ x.T[None]).transpose(1, 2)       # noqa: E731  [runs, n, 3]
    x = torch.arange(5.0)[:, None]
    out = predict(stacked, x, chunk=2, sample_dim=1)
    assert out.shape == (2, 5, 3)
    assert out[1, 4].tolist() == [3 * 4.0, 4 * 4.0, 5 * 4.0]          # run 1's weights times sample 4


def test_predict_on_no_samples_calls_the_model_once_on_the_empty_batch():
    model = nn.Linear(4, 3)
    assert predict(model, torch.zeros(0, 4)).shape == (0, 3)
    model.eval()
    with evaluating(model):
        pass
    assert not model.training
