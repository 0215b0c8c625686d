"""Injected hardness: int(r * N) samples of an image subset replaced by hard ones of a known type, in pixel space
([N, C, H, W] in [0, 1], before the loader's standardisation), so that a benchmark knows which samples are hard and
why (the families of H-CAT, Seedat et al., ICLR 2024, and the duplicates of cleanlab's Datalab).

Which samples are replaced, and every random draw of a type, come from the LABEL_NOISE stage of hardness.seeds,
so a subset and a seed give the same injected samples in every script. The mislabelled types are the one flip
function of hardness/noise.py. Each replaced sample gets:
- gaussian_noise: pixel noise of a standard deviation drawn per sample in [0.2, 0.4], clipped to [0, 1];
- blur: a Gaussian blur of a standard deviation drawn in [1, 2] pixels;
- invert: 1 - pixel (a domain shift);
- far_ood: an image of another dataset, with a class drawn uniformly;
- zoom: the centre crop of 55-75% of the side, resized back (bilinear);
- shift: moved 5-8 pixels in a direction drawn uniformly, the uncovered border black;
- exact_duplicate / near_duplicate: a copy (with its label) of a sample not replaced, for near copies plus pixel
  noise of standard deviation 0.02, clipped; both members of the pair are positives, `duplicate_of` links them;
- blend: the mean of the sample and one of another class, labelled as one of the two (drawn).
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms.functional import gaussian_blur

from hardness.characterisation import exact_copies, shift_images
from hardness.noise import NOISE_TYPES, check_noise_type, flip_labels
from hardness.seeds import LABEL_NOISE, stage_generator

FAMILIES = {**{kind: "mislabelled" for kind in NOISE_TYPES},
            "gaussian_noise": "out_of_distribution", "blur": "out_of_distribution",
            "invert": "out_of_distribution", "far_ood": "out_of_distribution",
            "zoom": "atypical", "shift": "atypical",
            "exact_duplicate": "duplicate", "near_duplicate": "duplicate", "blend": "ambiguous"}
INJECTION_TYPES = tuple(FAMILIES)
NOISE_STD = (0.2, 0.4)
BLUR_SIGMA = (1.0, 2.0)
ZOOM_SIDE = (0.55, 0.75)
SHIFT_PIXELS = (5, 8)
NEAR_COPY_STD = 0.02


@dataclass
class Injected:
    """A subset after one injection (or several, on disjoint samples)."""
    images: Tensor          # [N, C, H, W] float32 in [0, 1]
    labels: Tensor          # [N] int64, the labels given
    kind: list[str]         # [N] the type injected into each sample, "" where none
    duplicate_of: Tensor    # [N] int64, the other member of a duplicate pair, -1 where none

    @property
    def injected(self) -> Tensor:
        """[N] bool: the samples of an injected type (both members of a duplicate pair)."""
        return torch.tensor([bool(kind) for kind in self.kind])


def check_injection(kind: str, ratio: float) -> None:
    """A ValueError naming the problem unless `kind` is an injection type and `ratio` is in (0, 1)."""
    if kind not in FAMILIES:
        raise ValueError(f"unknown injection type {kind!r}; known: {', '.join(INJECTION_TYPES)}")
    if not 0 < ratio < 1:
        raise ValueError(f"the injected share must be in (0, 1), got {ratio:g}")


def uniform(generator: torch.Generator, count: int, low: float, high: float) -> Tensor:
    """[count] float64 drawn uniformly in [low, high)."""
    return low + (high - low) * torch.rand(count, generator=generator, dtype=torch.float64)


def blurred(images: Tensor, sigmas: Tensor) -> Tensor:
    """Each image [C, H, W] of images [m, C, H, W] blurred with its own standard deviation (kernel 2 * ceil(3 sigma)
    + 1 pixels, reflected border)."""
    return torch.stack([gaussian_blur(image, [2 * math.ceil(3 * s) + 1] * 2, [float(s)] * 2)
                        for image, s in zip(images, sigmas.tolist())]) if len(images) else images


def zoomed(images: Tensor, sides: Tensor) -> Tensor:
    """Each image's centre crop of round(side * H) x round(side * W) pixels, resized back to H x W (bilinear)."""
    height, width = images.shape[-2:]
    out = []
    for image, side in zip(images, sides.tolist()):
        rows, cols = max(1, round(side * height)), max(1, round(side * width))
        top, left = (height - rows) // 2, (width - cols) // 2
        crop = image[None, :, top:top + rows, left:left + cols]
        out.append(F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=False)[0])
    return torch.stack(out).clamp(0, 1) if out else images


def shifted(images: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """Each image moved down `rows` and right `cols` pixels (negative: up, left), the uncovered border 0."""
    return torch.stack([shift_images(image[None], dy, dx, border="zeros")[0]
                        for image, dy, dx in zip(images, rows.tolist(), cols.tolist())]) if len(images) else images


def inject(images: Tensor, labels: Tensor, num_classes: int, kind: str, ratio: float, seed: int,
           other_images: Tensor | None = None, probabilities: Tensor | None = None,
           exclude: Tensor | None = None, start: Injected | None = None) -> Injected:
    """Replace int(ratio * N) samples of (images [N, C, H, W] in [0, 1], labels [N]) by `kind` (module docstring).
    The samples are drawn without replacement among those not in `exclude` [N] bool and not injected in `start`
    (an earlier injection this one adds to); the mislabelled types are flip_labels of hardness/noise.py (which draws
    among all samples, so they go first). far_ood needs `other_images` [M, C, H, W] in [0, 1], instance noise
    `probabilities` [N, C]."""
    check_injection(kind, ratio)
    n, count = len(labels), int(ratio * len(labels))
    state = start or Injected(images.float().clone(), labels.clone(), [""] * n, torch.full((n,), -1))
    out_images, out_labels, kinds, partner = (state.images.clone(), state.labels.clone(), list(state.kind),
                                              state.duplicate_of.clone())
    if FAMILIES[kind] == "mislabelled":
        check_noise_type(kind, num_classes)
        flipped_labels, flipped, _ = flip_labels(labels.cpu(), ratio, num_classes, seed, kind, images.cpu(),
                                                 probabilities=probabilities)
        for i in flipped.nonzero().flatten().tolist():
            out_labels[i], kinds[i] = flipped_labels[i], kind
        return Injected(out_images, out_labels, kinds, partner)

    generator = stage_generator(seed, LABEL_NOISE)
    free = torch.tensor([not k for k in kinds]) & (torch.ones(n, dtype=torch.bool) if exclude is None else ~exclude.cpu())
    candidates = free.nonzero().flatten()
    if count > len(candidates) // (2 if FAMILIES[kind] in ("duplicate", "ambiguous") else 1):
        raise ValueError(f"{kind}: {count} samples to inject, but only {len(candidates)} are free to take")
    order = candidates[torch.randperm(len(candidates), generator=generator)]
    chosen = order[:count]
    source = out_images[chosen]
    if kind == "gaussian_noise":
        sigma = uniform(generator, count, *NOISE_STD).float()[:, None, None, None]
        replaced = (source + sigma * torch.randn(source.shape, generator=generator)).clamp(0, 1)
    elif kind == "blur":
        replaced = blurred(source, uniform(generator, count, *BLUR_SIGMA))
    elif kind == "invert":
        replaced = 1 - source
    elif kind == "far_ood":
        if other_images is None or other_images.shape[1:] != images.shape[1:]:
            raise ValueError("far_ood needs images of another dataset shaped like these")
        picked = torch.randperm(len(other_images), generator=generator)[:count]
        replaced = other_images[picked].float()
        out_labels[chosen] = torch.randint(0, num_classes, (count,), generator=generator)
    elif kind == "zoom":
        replaced = zoomed(source, uniform(generator, count, *ZOOM_SIDE))
    elif kind == "shift":
        distance = torch.randint(SHIFT_PIXELS[0], SHIFT_PIXELS[1] + 1, (count,), generator=generator).double()
        angle = uniform(generator, count, 0.0, 2 * math.pi)
        replaced = shifted(source, (distance * angle.sin()).round().long(), (distance * angle.cos()).round().long())
    elif kind in ("exact_duplicate", "near_duplicate"):
        originals = order[count:2 * count]
        replaced = out_images[originals].clone()
        if kind == "near_duplicate":
            replaced = (replaced + NEAR_COPY_STD * torch.randn(replaced.shape, generator=generator)).clamp(0, 1)
        out_labels[chosen] = out_labels[originals]
        partner[chosen], partner[originals] = originals, chosen
        for i in originals.tolist():
            kinds[i] = kind
    else:                                                               # blend
        partners = blend_partners(out_labels, chosen, order[count:], generator)
        replaced = (source + out_images[partners]) / 2
        take_partner = torch.rand(count, generator=generator) < 0.5
        out_labels[chosen] = torch.where(take_partner, out_labels[partners], out_labels[chosen])
    out_images[chosen] = replaced
    for i in chosen.tolist():
        kinds[i] = kind
    return Injected(out_images, out_labels, kinds, partner)


def blend_partners(labels: Tensor, chosen: Tensor, pool: Tensor, generator: torch.Generator) -> Tensor:
    """[m] for every chosen sample, a sample of the pool (not replaced) of another class, drawn uniformly."""
    partners = torch.empty(len(chosen), dtype=torch.int64)
    for i, sample in enumerate(chosen.tolist()):
        others = pool[labels[pool] != labels[sample]]
        if not len(others):
            raise ValueError("blend needs samples of at least two classes")
        partners[i] = others[torch.randint(len(others), (1,), generator=generator)]
    return partners


def exact_duplicate_groups(images: Tensor) -> Tensor:
    """[N] int64: for every sample the first earlier sample with exactly the same pixels, -1 where none (a dataset's
    own duplicates, found before anything is injected)."""
    partner = torch.from_numpy(exact_copies(images.cpu().flatten(1).contiguous().numpy()))
    return torch.where(partner < torch.arange(len(partner)), partner, -1)
