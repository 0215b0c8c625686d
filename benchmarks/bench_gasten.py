"""Speed of GASTeN's DCGAN: discriminator + generator steps per second at batch 64 (random 28x28 images; the
step does not depend on their content), plain and with channels-last memory, without and with the
confusion term of a 4-filter classifier; then the projected time of the paper's MNIST configuration
(step 1 of 10 epochs, then 4 step-1 epochs x 3 classifiers x 8 weights x 40 epochs of step 2) for a pair
with --pair_size training images (7 vs 1: 13,007).

    python benchmarks/bench_gasten.py [--steps 20] [--pair_size 13007] [--device auto]
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hardness.device import device_name  # noqa: E402
from hardness.gasten import make_gan, train_epoch  # noqa: E402
from hardness.gasten_names import ConfusionWeight  # noqa: E402
from neural_networks import PairClassifierCNN  # noqa: E402
from utils import add_device_argument, positive_int, resolve_device  # noqa: E402

BATCH, WEIGHT = 64, ConfusionWeight(25.0)


def steps_per_second(device: torch.device, steps: int, channels_last: bool, classifier: torch.nn.Module | None) -> float:
    gan = make_gan("gan", device, seed=0)
    images = torch.rand((steps + 1) * BATCH, 1, 28, 28, device=device) * 2 - 1
    if channels_last:
        gan.generator.to(memory_format=torch.channels_last)
        gan.discriminator.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    noise_rng = torch.Generator().manual_seed(0)
    train_epoch(gan, images[:2 * BATCH], BATCH, noise_rng, classifier, WEIGHT, progress=False)   # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    train_epoch(gan, images, BATCH, noise_rng, classifier, WEIGHT, progress=False)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (len(images) // BATCH) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=positive_int, default=20, help="D+G steps timed per variant (default 20)")
    parser.add_argument("--pair_size", type=positive_int, default=13007,
                        help="training images of the pair, for the projection (default 13007: MNIST 7 vs 1)")
    add_device_argument(parser)
    args = parser.parse_args()
    device = resolve_device(args.device)
    classifier = PairClassifierCNN(4).to(device).eval().requires_grad_(False)
    print(f"device: {device_name(device)}; torch {torch.__version__}; batch {BATCH}")
    print(f"{'variant':<46} {'steps/s':>8} {'s/step':>7}")
    rates = {}
    for channels_last in (False, True):
        for name, model in (("step 1", None), ("step 2 (with the classifier)", classifier)):
            variant = f"{name}{', channels-last' if channels_last else ''}"
            rates[variant] = steps_per_second(device, args.steps, channels_last, model)
            print(f"{variant:<46} {rates[variant]:>8.2f} {1 / rates[variant]:>7.3f}", flush=True)
    per_epoch = args.pair_size // BATCH
    step1 = 10 * per_epoch / max(rates["step 1"], rates["step 1, channels-last"])
    step2 = 4 * 3 * 8 * 40 * per_epoch / max(rates["step 2 (with the classifier)"],
                                             rates["step 2 (with the classifier), channels-last"])
    print(f"projected paper configuration ({per_epoch} steps per epoch, training steps only): step 1 "
          f"{step1 / 3600:.2f} h, step 2 {step2 / 3600:.1f} h ({4 * 3 * 8} cells x 40 epochs)")


if __name__ == "__main__":
    main()
