"""GASTeN, why step 2 moves ACD the way it does: the generator's two loss terms at every step-2 checkpoint.

    python gasten_step2_diagnostics.py --run_folders Results/gasten/mnist_7v1_seeds Results/gasten/mnist_7v1_seeds_seed1 ...

For every step-2 cell of the run folders (one per GAN seed, as gasten_summarize_seeds.py takes them) and every
checkpoint it has, epoch 0 being the step-1 checkpoint it started from, G and D are loaded and shown --samples
noise vectors (drawn from --seed) and as many real training images of the pair, in batches of the run's batch
size, as a training step sees them: the adversarial term BCE(D(G(z)), 1) and the confusion term
mean |0.5 - C(G(z))|, the norms of their gradients in G's parameters and the cosine between them, the mean D on
real images and on G(z), and the share of G(z) that C calls positive (generator_step_terms). Each classifier's
accuracy, ACD and share in [0.4, 0.6] on the pair's real test images (classifier_on_real) tell what ACD a
generator of perfectly realistic images would get. Step 2 needs checkpoints to look at:
configs/gasten/mnist_7v1_seeds.yaml keeps every epoch.

Writes <results_dir>/gasten/<name>_over_seeds/step2_diagnostics.{csv,md,json} (a row per seed, cell and epoch;
the means over seeds; the settings) and the figure <figures_dir>/gasten/<name>_over_seeds/step2_diagnostics.{png,pdf}.
"""
import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from hardness.gasten import (GAN, Z_DIM, average_confusion_distance, classifier_path, epoch_folders,
                             generator_gan_loss, load_classifier, load_gan, load_pair, make_gan, step1_checkpoint)
from hardness.gasten_names import Step2Cell, classifier_nf, run_seed
from hardness.gasten_seeds import in_ambiguous_band, shared_config_name
from hardness.prediction import predict
from hardness.results import write_csv
from utils import (TORCHVISION_ROOT, UserInputError, add_device_argument, add_output_arguments, add_shared_arguments,
                   gasten_path, positive_int, resolve_device, run_script, run_settings, save_figure, write_atomically)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run_folders", type=Path, nargs="+", required=True, metavar="RUN_DIR",
                        help="the run folders of one config, one per GAN seed (<name>, <name>_seed<s>)")
    parser.add_argument("--samples", type=positive_int, default=1024,
                        help="noise vectors and real images each checkpoint is shown (default 1024)")
    add_shared_arguments(parser, "seed", "data_root", data_root=TORCHVISION_ROOT,
                         seed={"help": "seed of the noise and of the choice of real images (default 0)"})
    add_device_argument(parser)
    add_output_arguments(parser)
    return parser.parse_args(argv)


STEP_TERMS = ("adversarial", "confusion", "adversarial_gradient_norm", "confusion_gradient_norm", "gradient_cosine",
              "discriminator_real", "discriminator_fake", "positive_share")


def generator_step_terms(gan: GAN, classifier: nn.Module, noise: Tensor, real: Tensor,
                         batch_size: int) -> dict[str, float]:
    """What a step-2 generator step sees, in batches of `batch_size` of `noise` [n, 64] and `real` [n, 1, 28, 28]
    with G and D in training mode as train_epoch has them (an incomplete last batch left out, as there), averaged
    over the batches: the adversarial term BCE(D(G(z)), 1) (-mean D(G(z)) for WGAN-GP), the confusion term
    mean |0.5 - C(G(z))|, the norms of their gradients in G's parameters and the cosine between the two gradients
    (the weight multiplies the confusion gradient), the mean D(x) of real images and D(G(z)), and the share of
    G(z) that C calls positive."""
    parameters = list(gan.generator.parameters())
    gan.generator.train()
    gan.discriminator.train()
    sums = dict.fromkeys(STEP_TERMS, 0.0)
    batches = [(z, x) for z, x in zip(noise.split(batch_size), real.split(batch_size)) if len(z) == batch_size]
    if not batches:
        raise UserInputError(f"{len(noise)} samples make no full batch of {batch_size}")
    for z, x in batches:
        fake = gan.generator(z)                                                    # [b, 1, 28, 28]
        adversarial = generator_gan_loss(gan, fake)
        probabilities = classifier(fake)                                          # [b]
        confusion = average_confusion_distance(probabilities)
        adversarial_gradient = torch.cat([g.flatten() for g in torch.autograd.grad(adversarial, parameters,
                                                                                     retain_graph=True)])
        confusion_gradient = torch.cat([g.flatten() for g in torch.autograd.grad(confusion, parameters)])
        with torch.no_grad():
            terms = {"adversarial": adversarial, "confusion": confusion,
                     "adversarial_gradient_norm": adversarial_gradient.norm(),
                     "confusion_gradient_norm": confusion_gradient.norm(),
                     "gradient_cosine": F.cosine_similarity(adversarial_gradient, confusion_gradient, dim=0),
                     "discriminator_real": gan.discriminator(x).mean(),
                     "discriminator_fake": gan.discriminator(fake).mean(),
                     "positive_share": (probabilities > 0.5).float().mean()}
        for key, value in terms.items():
            sums[key] += float(value.detach())
    return {key: value / len(batches) for key, value in sums.items()}


def classifier_on_real(classifier: nn.Module, images: Tensor, targets: Tensor) -> dict[str, float]:
    """A classifier's accuracy, ACD and share of images with C in [0.4, 0.6] on real `images` with 0/1 `targets`."""
    probabilities = predict(classifier, images)                                                     # [n]
    return {"accuracy": float(((probabilities > 0.5).float() == targets).float().mean()),
            "acd": float(average_confusion_distance(probabilities)),
            "in_band_share": float(in_ambiguous_band(probabilities).float().mean())}


def cells_of(run_folders: list[Path]) -> tuple[str, list[dict[str, Any]]]:
    """The config name shared by the run folders, and every step-2 cell: its seed, classifier, weight, the
    settings of its last checkpoint and {epoch: checkpoint folder}, epoch 0 being the step-1 start."""
    name = shared_config_name(run_folders)
    cells = []
    for folder in run_folders:
        found = sorted(path for path in (Path(folder) / "step2").glob("*") if epoch_folders(path))
        if not found:
            raise UserInputError(f"no step-2 checkpoints (step2/<cell>/epoch_<e>/generator.pt) under {folder}")
        for cell in found:
            key = Step2Cell.parse(cell.name)
            checkpoints = epoch_folders(cell)
            settings = json.loads((checkpoints[max(checkpoints)] / "config.json").read_text())
            step1_folder = Path(settings["step1_run"] or settings["config"]["step1"]["run"] or Path(folder) / "step1")
            checkpoints[0] = step1_checkpoint(step1_folder, key.step1_epoch)[1]
            cells.append({"seed": run_seed(folder)[1], "classifier": key.classifier,
                          "nf": classifier_nf(key.classifier), "weight": key.weight, "step1_epoch": key.step1_epoch,
                          "settings": settings, "checkpoints": dict(sorted(checkpoints.items())),
                          "results_root": cell.parents[3]})
    return name, cells


def diagnose(cells: list[dict[str, Any]], samples: int, seed: int, data_root: Path,
             device: torch.device) -> tuple[list[dict[str, Any]], dict[str, dict[str, float]]]:
    """A row of generator_step_terms per cell and checkpoint, and each classifier's scores on real test images."""
    config = cells[0]["settings"]["config"]
    dataset = config["dataset"]
    pair = load_pair(dataset["name"], dataset["pos"], dataset["neg"], data_root, device)
    draw = torch.Generator().manual_seed(seed)
    noise = torch.randn(samples, Z_DIM, generator=draw).to(device)                               # [samples, 64]
    real = pair.train_x[torch.randperm(len(pair.train_x), generator=draw)[:samples].to(device)]   # [samples, 1, 28, 28]
    rows, classifiers, on_real = [], {}, {}
    for cell in tqdm(cells, desc="step-2 cells"):
        settings = cell["settings"]
        path = classifier_path(settings["config"], cell["results_root"], settings["classifier"])
        if path not in classifiers:
            classifiers[path] = load_classifier(path, device)
            on_real[cell["classifier"]] = classifier_on_real(classifiers[path], pair.test_x, pair.test_y)
        classifier = classifiers[path]
        for epoch, checkpoint in cell["checkpoints"].items():
            gan = load_gan(make_gan(settings["config"]["model"]["loss"], device, 0), checkpoint, optimizers=False)
            terms = generator_step_terms(gan, classifier, noise, real, settings["config"]["training"]["batch_size"])
            rows.append({key: cell[key] for key in ("seed", "classifier", "nf", "weight", "step1_epoch")} |
                        {"epoch": epoch, **terms})
    return rows, on_real


def means_over_seeds(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per classifier, weight, step-1 epoch and epoch, the mean over the seeds of every term and the seed count."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["nf"], row["classifier"], row["weight"].order(), row["step1_epoch"], row["epoch"]),
                          []).append(row)
    return [{"nf": nf, "classifier": classifier, "weight": members[0]["weight"], "step1_epoch": step1_epoch,
             "epoch": epoch, "seeds": len(members),
             **{key: float(np.mean([m[key] for m in members])) for key in STEP_TERMS}}
            for (nf, classifier, _, step1_epoch, epoch), members in sorted(groups.items())]


def diagnostics_markdown(means: list[dict[str, Any]], on_real: dict[str, dict[str, float]]) -> str:
    heads = ["nf", "weight", "epoch", "seeds", "adversarial", "confusion (= ACD)", "|grad adversarial|",
             "|grad confusion|", "cosine", "D(real)", "D(G(z))", "C(G(z)) > 0.5"]
    lines = ["| " + " | ".join(heads) + " |", "|" + " --- |" * len(heads)]
    for row in means:
        lines.append(f"| {row['nf']} | {row['weight']} | {row['epoch']} | {row['seeds']} | {row['adversarial']:.3f} | "
                     f"{row['confusion']:.3f} | {row['adversarial_gradient_norm']:.3f} | "
                     f"{row['confusion_gradient_norm']:.4f} | {row['gradient_cosine']:+.3f} | "
                     f"{row['discriminator_real']:.3f} | {row['discriminator_fake']:.3f} | {row['positive_share']:.3f} |")
    lines += ["", "| classifier | accuracy | ACD | share in [0.4, 0.6] |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {name} | {scores['accuracy']:.4f} | {scores['acd']:.3f} | {scores['in_band_share']:.4f} |"
              for name, scores in sorted(on_real.items(), key=lambda item: classifier_nf(item[0]))]
    return "\n".join(lines) + "\n"


def plot_diagnostics(means: list[dict[str, Any]], on_real: dict[str, dict[str, float]], title: str) -> plt.Figure:
    """Mean over seeds against the step-2 epoch, a line per nf (colour) and weight (style): the confusion term
    (ACD) beside the classifiers' ACD on real images, the ratio of the gradient norms, the cosine between the two
    gradients, D on real against fake images."""
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.4))
    nfs = sorted({row["nf"] for row in means})
    weights = list(dict.fromkeys(row["weight"] for row in means))
    for nf in nfs:
        for weight, style in zip(weights, ("-", "--", ":", "-.")):
            rows = [row for row in means if row["nf"] == nf and row["weight"] == weight]
            epochs = [row["epoch"] for row in rows]
            kwargs = {"color": f"C{nfs.index(nf)}", "ls": style, "marker": "o", "ms": 3}
            axes[0].plot(epochs, [row["confusion"] for row in rows], label=f"nf {nf}, weight {weight}", **kwargs)
            axes[1].plot(epochs, [row["confusion_gradient_norm"] / row["adversarial_gradient_norm"] for row in rows],
                         **kwargs)
            axes[2].plot(epochs, [row["gradient_cosine"] for row in rows], **kwargs)
            axes[3].plot(epochs, [row["discriminator_real"] - row["discriminator_fake"] for row in rows], **kwargs)
    for name, scores in on_real.items():
        axes[0].axhline(scores["acd"], color=f"C{nfs.index(classifier_nf(name))}", lw=0.8, alpha=0.6)
    for weight in weights:
        if not weight.mgda and weight.value > 0:
            axes[1].axhline(1 / weight.value, color="grey", lw=0.8, ls=":")
    axes[0].set_ylabel("ACD of G(z) (lines: real test images)")
    axes[1].set_ylabel("|grad confusion| / |grad adversarial|")
    axes[1].set_yscale("log")
    axes[2].set_ylabel("cosine(grad adversarial, grad confusion)")
    axes[2].axhline(0, color="grey", lw=0.8, ls=":")
    axes[3].set_ylabel("mean D(real) - mean D(G(z))")
    for ax in axes:
        ax.set_xlabel("step-2 epoch (0: the step-1 start)")
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def main(args: argparse.Namespace) -> None:
    device = resolve_device(args.device)
    name, cells = cells_of(args.run_folders)
    rows, on_real = diagnose(cells, args.samples, args.seed, args.data_root, device)
    means = means_over_seeds(rows)
    output = gasten_path(args.results_dir, "over_seeds", name)
    write_csv(rows, output / "step2_diagnostics.csv", missing=float("nan"))
    markdown = diagnostics_markdown(means, on_real)
    write_atomically(output / "step2_diagnostics.md", markdown.encode())
    write_atomically(output / "step2_diagnostics.json", (json.dumps(
        {**run_settings(args, device), "classifiers_on_real_test_images": on_real}, indent=2, default=str) + "\n").encode())
    save_figure(plot_diagnostics(means, on_real, f"{name}: means over {len(args.run_folders)} seed(s)"),
                gasten_path(args.figures_dir, "diagnostics_figure", name))
    print(markdown + f"written to {output / 'step2_diagnostics.md'} and .csv")


if __name__ == "__main__":
    run_script(main, parse_args)
