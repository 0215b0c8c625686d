"""Models: SimpleNN (one network), BatchedSimpleNN (many SimpleNNs as one computation), ResNet18; VoG's toy
network; the class-hardness simulations' MLP, CNN and ResNet-50.

Every model's forward returns `(logits, latent)`: the latent representation is what class-manifold
radii are measured on. Single models give `[N, classes]` and `[N, features]`; the batched model
gives the same with a leading run dimension, `[runs, N, classes]` and `[runs, N, features]`.
"""
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn


class SimpleNN(nn.Module):
    """Fully connected tanh network: input -> `depth` hidden layers of `width` -> class logits.

    `latent` is the 1-based index of the hidden layer whose tanh output is the latent
    representation (1 = the first hidden layer).
    """

    def __init__(self, input_size: int = 784, width: int = 20, depth: int = 2,
                 num_classes: int = 10, latent: int = 1) -> None:
        super().__init__()
        if not 1 <= latent <= depth:
            raise ValueError(f"latent layer {latent} must be between 1 and depth={depth}")
        sizes = [input_size] + [width] * depth
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.output = nn.Linear(width, num_classes)
        self.latent = latent

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = x.flatten(1)
        for index, layer in enumerate(self.hidden, start=1):
            h = torch.tanh(layer(h))
            if index == self.latent:
                latent = h
        return self.output(h), latent


class BatchedSimpleNN(nn.Module):
    """`runs` independent SimpleNNs with stacked parameters, trained as one computation.

    Weights are stored as `[runs, out, in]` and biases as `[runs, out]` (nn.Linear's layout with a
    run dimension). Activations are kept feature-major, `[runs, features, N]`: the input batch is
    shared by all runs, so the first layer is a single `[runs*out, in] @ [in, N]` matmul and later
    layers are batched matmuls, with no copies between them. The batch loss is the sum of the runs'
    losses, so each run's parameters receive exactly the gradient they would receive alone.
    """

    def __init__(self, models: Sequence[SimpleNN]) -> None:
        super().__init__()
        self.latent = models[0].latent
        per_model = [[*m.hidden, m.output] for m in models]
        self.weights = nn.ParameterList(
            nn.Parameter(torch.stack([layers[i].weight.detach() for layers in per_model]))
            for i in range(len(per_model[0])))
        self.biases = nn.ParameterList(
            nn.Parameter(torch.stack([layers[i].bias.detach() for layers in per_model]))
            for i in range(len(per_model[0])))

    @classmethod
    def initialise(cls, runs: int, **simple_nn_kwargs: int) -> "BatchedSimpleNN":
        """Stack `runs` SimpleNNs made one after another with PyTorch's default initialisation."""
        return cls([SimpleNN(**simple_nn_kwargs) for _ in range(runs)])

    @classmethod
    def from_seeds(cls, seeds: Sequence[int], **simple_nn_kwargs: int) -> "BatchedSimpleNN":
        """Stack one SimpleNN per seed, each initialised as `torch.manual_seed(seed); SimpleNN(...)` would be.

        A network's initialisation depends on its own seed only, not on which others share the batch;
        the global random state is left as it was.
        """
        models = []
        for seed in seeds:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                models.append(SimpleNN(**simple_nn_kwargs))
        return cls(models)

    def forward(self, x: Tensor, per_run: bool = False) -> tuple[Tensor, Tensor]:
        """x: [N, ...] shared by every run, or with `per_run` [runs, N, ...], each run its own inputs (so that
        input gradients are per run) -> logits [runs, N, classes] and latent [runs, N, width] (transposed views)."""
        runs, width, n_in = self.weights[0].shape
        if per_run:
            first = torch.baddbmm(self.biases[0][:, :, None], self.weights[0], x.flatten(2).transpose(1, 2))
        else:
            first = torch.addmm(self.biases[0].reshape(-1, 1), self.weights[0].reshape(-1, n_in), x.flatten(1).T)
        h = torch.tanh_(first).view(runs, width, -1)
        latent = h if self.latent == 1 else None
        for index in range(1, len(self.weights) - 1):
            h = torch.tanh_(torch.baddbmm(self.biases[index][:, :, None], self.weights[index], h))
            if index + 1 == self.latent:
                latent = h
        logits = torch.baddbmm(self.biases[-1][:, :, None], self.weights[-1], h)
        return logits.transpose(1, 2), latent.transpose(1, 2)

    @staticmethod
    def run_state_dict(state: dict[str, Tensor], run: int) -> dict[str, Tensor]:
        """The state dict of SimpleNN number `run` (`hidden.0.weight`, ..., `output.bias`) in a state dict of
        the batched model (`weights.0`, ..., `biases.L`)."""
        layers = sum(name.startswith("weights.") for name in state)
        names = [f"hidden.{i}" for i in range(layers - 1)] + ["output"]
        return {f"{name}.{kind}": state[f"{stacked}.{i}"][run].clone()
                for i, name in enumerate(names) for kind, stacked in (("weight", "weights"), ("bias", "biases"))}

    def stacked_parameters(self) -> dict[str, Tensor]:
        """The parameters under SimpleNN's names (`hidden.0.weight`, ..., `output.bias`), each stacked over the
        runs, [runs, ...]: what torch.func.functional_call needs to run one SimpleNN per slice."""
        names = [f"hidden.{i}" for i in range(len(self.weights) - 1)] + ["output"]
        return {f"{name}.{kind}": stacked[i] for i, name in enumerate(names)
                for kind, stacked in (("weight", self.weights), ("bias", self.biases))}

    def unstack(self, run: int) -> SimpleNN:
        """A standalone SimpleNN holding a copy of run `run`'s current parameters."""
        width, input_size = self.weights[0].shape[1:]
        model = SimpleNN(input_size, width, len(self.weights) - 1, self.weights[-1].shape[1], self.latent)
        with torch.no_grad():
            for layer, weight, bias in zip([*model.hidden, model.output], self.weights, self.biases):
                layer.weight.copy_(weight[run])
                layer.bias.copy_(bias[run])
        return model.to(self.weights[0].device)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and a residual connection."""

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride, bias=False),
                                          nn.BatchNorm2d(channels))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for small images: 3x3 stride-1 stem and no max-pool, so 28x28 inputs keep their size.

    The latent representation is the stem's output (after its batch norm and ReLU), flattened.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(64), nn.ReLU())
        blocks, channels = [], 64
        for width, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            blocks += [BasicBlock(channels, width, stride), BasicBlock(width, width, 1)]
            channels = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        stem = self.stem(x)
        features = F.adaptive_avg_pool2d(self.blocks(stem), 1).flatten(1)
        return self.fc(features), stem.flatten(1)


class VoGToyNet(nn.Module):
    """The VoG paper's toy classifier: 2 inputs -> 10 hidden units -> 2 logits, linear (tanh between the
    layers with `tanh`), one run in the engine's layout: logits [1, N, 2] and hidden units [1, N, 10].

    Weights are N(0, 1) and biases 0. Without `seed`, as the original, each layer's weights are drawn from
    a generator seeded with 0 afresh, so both layers get the same 20 draws; with `seed`, all weights come
    from one generator seeded with it; they do not depend on the global random state.
    """

    def __init__(self, tanh: bool = False, seed: int | None = None) -> None:
        super().__init__()
        self.hidden = nn.Linear(2, 10)
        self.output = nn.Linear(10, 2)
        self.tanh = tanh
        shared = None if seed is None else torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for layer in (self.hidden, self.output):
                layer.weight.normal_(generator=torch.Generator().manual_seed(0) if shared is None else shared)
                layer.bias.zero_()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x: [N, 2] -> logits [1, N, 2] and hidden units [1, N, 10]."""
        hidden = self.hidden(x)
        if self.tanh:
            hidden = torch.tanh(hidden)
        return self.output(hidden)[None], hidden[None]


# ----------------------------------------------------------------------------- class-hardness simulations

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "silu": nn.SiLU,
               "leaky_relu": nn.LeakyReLU}   # LeakyReLU's default negative slope: 0.01


class HardnessMLP(nn.Module):
    """Flatten, then `depth` x [Linear(-> width), activation], then Linear(width -> classes). The feature is
    the last activation's output (the flattened input itself when depth is 0)."""

    def __init__(self, input_shape: Sequence[int], depth: int, width: int, num_classes: int,
                 activation: str = "relu") -> None:
        super().__init__()
        layers, size = [], math.prod(input_shape)
        for _ in range(depth):
            layers += [nn.Linear(size, width), ACTIVATIONS[activation]()]
            size = width
        self.features = nn.Sequential(nn.Flatten(), *layers)
        self.head = nn.Linear(size, num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.features(x)
        return self.head(features), features


class HardnessCNN(nn.Module):
    """`depth` x [Conv3x3 padding 1 (-> width channels), activation, 2x2 pooling], Flatten, then
    Linear(width * floor(H / 2^depth) * floor(W / 2^depth) -> classes). The feature is the flattened last block
    (the flattened input when depth is 0)."""

    def __init__(self, input_shape: Sequence[int], depth: int, width: int, num_classes: int,
                 activation: str = "relu", pooling: str = "max") -> None:
        super().__init__()
        channels, height, width_pixels = input_shape
        pool = nn.MaxPool2d if pooling == "max" else nn.AvgPool2d
        layers = []
        for _ in range(depth):
            layers += [nn.Conv2d(channels, width, 3, padding=1), ACTIVATIONS[activation](), pool(2)]
            channels = width
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.head = nn.Linear(channels * (height // 2 ** depth) * (width_pixels // 2 ** depth), num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.features(x)
        return self.head(features), features


class HardnessResNet50(nn.Module):
    """torchvision's ResNet-50 (no pretrained weights) with a `num_classes`-way head and a stem for
    `in_channels`. `cifar_stem`: a 3x3 stride-1 stem conv and no max-pool, for small images as they are;
    otherwise the 7x7 stride-2 ImageNet stem, with inputs resized (bilinear) to 224x224. Every ReLU becomes
    `activation` (see ACTIVATIONS) and the global pool is `pooling` ('avg' or 'max'). The feature is the
    globally pooled output of the last stage, [N, 2048]."""

    def __init__(self, in_channels: int, num_classes: int, cifar_stem: bool = True, activation: str = "relu",
                 pooling: str = "avg") -> None:
        super().__init__()
        self.cifar_stem = cifar_stem
        self.net = torchvision.models.resnet50(weights=None, num_classes=num_classes)
        if cifar_stem:
            self.net.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
            self.net.maxpool = nn.Identity()
        elif in_channels != 3:
            self.net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        pool = nn.AdaptiveAvgPool2d(1) if pooling == "avg" else nn.AdaptiveMaxPool2d(1)
        self.net.avgpool = pool   # torchvision's name for the global pool, whichever it is
        for name, module in list(self.net.named_modules()):
            if isinstance(module, nn.ReLU):
                parent, _, attribute = name.rpartition(".")
                setattr(self.net.get_submodule(parent), attribute, ACTIVATIONS[activation]())

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        net = self.net
        if not self.cifar_stem:
            x = F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False)   # [N, C, 224, 224]
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        x = net.layer4(net.layer3(net.layer2(net.layer1(x))))                              # [N, 2048, h, w]
        features = torch.flatten(net.avgpool(x), 1)                                        # [N, 2048]
        return net.fc(features), features


def kaiming_initialise(model: nn.Module, init: str) -> nn.Module:
    """Every Linear and Conv weight drawn with Kaiming's normal or uniform scheme ('kaiming_normal',
    'kaiming_uniform'), every bias zero; BatchNorm is left as it is."""
    draw = nn.init.kaiming_normal_ if init == "kaiming_normal" else nn.init.kaiming_uniform_
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            draw(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


# ----------------------------------------------------------------------------- GASTeN: classifiers under test and the DCGAN

class PairClassifierCNN(nn.Module):
    """A deliberately weak binary classifier of 28x28 images: Conv3x3(1 -> nf) -> MaxPool2 -> Conv3x3(nf -> 2nf)
    -> MaxPool2 -> Flatten (98 nf) -> Linear(-> 1) -> sigmoid, no other nonlinearity. `embed` is the 98 nf
    vector before the last layer; `forward` the probability of the positive class, [N]."""

    def __init__(self, nf: int) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, nf, 3, padding=1), nn.MaxPool2d(2),
                                      nn.Conv2d(nf, 2 * nf, 3, padding=1), nn.MaxPool2d(2), nn.Flatten())
        self.output = nn.Linear(98 * nf, 1)

    def embed(self, x: Tensor) -> Tensor:
        return self.features(x)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.output(self.features(x)))[:, 0]


class PairClassifierMLP(nn.Module):
    """The original's MLP variant: Flatten -> Linear(784 -> nf) -> Linear(nf -> 1) -> sigmoid; `embed` is the
    nf vector before the last layer."""

    def __init__(self, nf: int) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(784, nf))
        self.output = nn.Linear(nf, 1)

    def embed(self, x: Tensor) -> Tensor:
        return self.features(x)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.output(self.features(x)))[:, 0]


def _dcgan_init(module: nn.Module) -> None:
    """Conv and transposed-conv weights N(0, 0.02); BatchNorm gamma N(1, 0.02), beta 0; Linear as torch's."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class DCGANGenerator(nn.Module):
    """z [N, z_dim] -> images [N, 1, 28, 28] in (-1, 1): Linear(z -> 256*4*4, no bias)+BN+ReLU, then 5x5
    stride-2 transposed convs 256 -> 128 (7x7), 128 -> 64 (14x14), 64 -> 1 (28x28) with BN+ReLU between, tanh."""

    def __init__(self, z_dim: int = 64) -> None:
        super().__init__()
        self.project = nn.Sequential(nn.Linear(z_dim, 256 * 4 * 4, bias=False), nn.BatchNorm1d(256 * 4 * 4), nn.ReLU())
        self.deconvolve = nn.Sequential(
            nn.ConvTranspose2d(256, 128, 5, 2, 2, output_padding=0, bias=False), nn.BatchNorm2d(128), nn.ReLU(),
            nn.ConvTranspose2d(128, 64, 5, 2, 2, output_padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.ConvTranspose2d(64, 1, 5, 2, 2, output_padding=1), nn.Tanh())
        self.z_dim = z_dim
        self.apply(_dcgan_init)

    def forward(self, z: Tensor) -> Tensor:
        return self.deconvolve(self.project(z).view(-1, 256, 4, 4))


class DCGANDiscriminator(nn.Module):
    """images [N, 1, 28, 28] -> [N]: 5x5 stride-2 convs 1 -> 64 (no bias, LeakyReLU 0.2), 64 -> 128 and
    128 -> 256 (norm + LeakyReLU), Linear(4096 -> 1), then sigmoid. The WGAN-GP critic (`wgan`) has
    LayerNorm instead of BatchNorm and no sigmoid."""

    def __init__(self, wgan: bool = False) -> None:
        super().__init__()

        def norm(channels: int, size: int) -> nn.Module:
            return nn.LayerNorm([channels, size, size]) if wgan else nn.BatchNorm2d(channels)
        self.features = nn.Sequential(
            nn.Conv2d(1, 64, 5, 2, 2, bias=False), nn.LeakyReLU(0.2),
            nn.Conv2d(64, 128, 5, 2, 2, bias=False), norm(128, 7), nn.LeakyReLU(0.2),
            nn.Conv2d(128, 256, 5, 2, 2, bias=False), norm(256, 4), nn.LeakyReLU(0.2), nn.Flatten())
        self.output = nn.Linear(4096, 1)
        self.wgan = wgan
        self.apply(_dcgan_init)

    def forward(self, x: Tensor) -> Tensor:
        score = self.output(self.features(x))[:, 0]
        return score if self.wgan else torch.sigmoid(score)


class FeatureCNN(nn.Module):
    """The feature extractor of "FID (own features)": two conv blocks (32 and 64 channels), Linear 128, ReLU,
    then a 10-way head for training on all classes of the dataset. `forward` gives the 128-d features."""
    num_features = 128

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU())
        self.head = nn.Linear(128, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)

    def classify(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


# ----------------------------------------------------------------------------- networks that memorise

class MemorisationNet(nn.Module):
    """Hidden blocks, then a linear head; the latent representation is the flattened output of hidden block
    `latent` (1-based, 1 = the first), as Section 3 measures radii in the first hidden layer."""

    def __init__(self, blocks: Sequence[nn.Module], head: nn.Module, latent: int = 1) -> None:
        super().__init__()
        if not 1 <= latent <= len(blocks):
            raise ValueError(f"latent layer {latent} must be between 1 and {len(blocks)}")
        self.hidden, self.head, self.latent = nn.ModuleList(blocks), head, latent

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        latent = x
        for index, block in enumerate(self.hidden, start=1):
            x = block(x)
            if index == self.latent:
                latent = x
        return self.head(x.flatten(1)), latent.flatten(1)


def memorisation_mlp(input_shape: Sequence[int], num_classes: int, width: int = 512, latent: int = 1) -> MemorisationNet:
    """Flatten, two hidden layers of `width` ReLUs, a linear head."""
    blocks = [nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), width), nn.ReLU()),
              nn.Sequential(nn.Linear(width, width), nn.ReLU())]
    return MemorisationNet(blocks, nn.Linear(width, num_classes), latent)


def memorisation_cnn(input_shape: Sequence[int], num_classes: int, latent: int = 1) -> MemorisationNet:
    """Two 3x3 convolutions (16 and 32 channels, padding 1), each followed by ReLU and 2x2 max-pooling; a linear head."""
    channels, height, width = input_shape
    blocks = [nn.Sequential(nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
              nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))]
    return MemorisationNet(blocks, nn.Linear(32 * (height // 4) * (width // 4), num_classes), latent)
