"""The batched engine equals a plain one-model-at-a-time loop; the models behave as specified."""
import copy

import pytest
import torch
import torch.nn.functional as F

from hardness.engine import RadiiRecorder, per_run_cross_entropy, train_full_batch
from neural_networks import BatchedSimpleNN, ResNet18, SimpleNN


def naive_radii(latent: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float]:
    """The definition, one class at a time."""
    radii = []
    for c in range(num_classes):
        units = latent[labels == c]
        units = units / units.norm(dim=1, keepdim=True)
        radii.append((units - units.mean(0)).pow(2).sum(1).mean().sqrt().item())
    return radii


def train_one_model_at_a_time(model: SimpleNN, data, labels, epochs: int, radii_from: int, lr: float):
    """The original recipe: one network, full batch, SGD, radii after the step of each epoch (0-based)
    from radii_from on."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    losses, radii = [], []
    for epoch in range(epochs):
        logits, _ = model(data)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if epoch >= radii_from:
            with torch.no_grad():
                radii.append(naive_radii(model(data)[1], labels, 10))
    return torch.tensor(losses), torch.tensor(radii)


@pytest.mark.parametrize("depth, latent", [(2, 1), (3, 2)])
def test_batched_training_equals_the_one_model_loop(depth, latent):
    torch.manual_seed(0)
    data = torch.randn(300, 1, 28, 28)
    labels = torch.arange(300) % 10
    models = [SimpleNN(depth=depth, latent=latent) for _ in range(4)]
    references = [copy.deepcopy(m) for m in models]
    batched = BatchedSimpleNN(models)
    recorder = RadiiRecorder(4, 10, 5, 29, data.device)
    history = train_full_batch(batched, torch.optim.SGD(batched.parameters(), lr=0.1), data, labels,
                               epochs=30, num_classes=10, observers=[recorder], progress=False)
    assert recorder.epochs.tolist() == list(range(5, 30)) and history.shape == (4, 30)
    for run, reference in enumerate(references):
        losses, radii = train_one_model_at_a_time(reference, data, labels, epochs=30, radii_from=5, lr=0.1)
        torch.testing.assert_close(torch.from_numpy(history[run]), losses, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(torch.from_numpy(recorder.radii[run]), radii, atol=1e-5, rtol=1e-4)
        trained = batched.unstack(run)
        for ours, theirs in zip(trained.parameters(), reference.parameters(), strict=True):
            torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    assert history[:, -1].max() < history[:, 0].min()  # it learnt something


def test_batched_forward_matches_each_model_and_unstack_round_trips():
    torch.manual_seed(1)
    models = [SimpleNN(input_size=12, width=5, depth=3, num_classes=4, latent=3) for _ in range(3)]
    batched = BatchedSimpleNN(models)
    x = torch.randn(7, 12)
    logits, latent = batched(x)
    assert logits.shape == (3, 7, 4) and latent.shape == (3, 7, 5)
    for run, model in enumerate(models):
        single_logits, single_latent = model(x)
        torch.testing.assert_close(logits[run], single_logits)
        torch.testing.assert_close(latent[run], single_latent)
        torch.testing.assert_close(batched.unstack(run)(x)[0], single_logits)


def test_per_run_loss_is_each_runs_mean_cross_entropy():
    logits = torch.randn(3, 8, 5)
    labels = torch.randint(0, 5, (8,))
    expected = torch.stack([F.cross_entropy(logits[r], labels) for r in range(3)])
    torch.testing.assert_close(per_run_cross_entropy(logits, labels), expected)


def test_seeded_training_is_reproducible():
    def run() -> tuple:
        torch.manual_seed(7)
        model = BatchedSimpleNN.initialise(3)
        data, labels = torch.randn(100, 784), torch.randint(0, 10, (100,))
        recorder = RadiiRecorder(3, 10, 2, 9, data.device)
        losses = train_full_batch(model, torch.optim.SGD(model.parameters(), lr=0.1), data, labels, 10, 10,
                                  observers=[recorder], progress=False)
        return losses, recorder.radii

    (losses_a, radii_a), (losses_b, radii_b) = run(), run()
    assert (losses_a == losses_b).all() and (radii_a == radii_b).all()


def test_simple_nn_rejects_a_latent_layer_past_its_depth():
    with pytest.raises(ValueError, match="latent layer 3"):
        SimpleNN(depth=2, latent=3)


def test_resnet18_keeps_28x28_and_exposes_the_stem_as_latent():
    torch.manual_seed(0)
    model = ResNet18(in_channels=1, num_classes=10)
    assert model.stem[0].kernel_size == (3, 3) and model.stem[0].stride == (1, 1)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
    x = torch.randn(6, 1, 28, 28)
    logits, latent = model(x)
    assert logits.shape == (6, 10) and latent.shape == (6, 64 * 28 * 28)
    labels = torch.arange(6) % 10
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-2)
    losses = []
    for _ in range(5):
        loss = F.cross_entropy(model(x)[0], labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
