"""GASTeN over seeds: the ambiguous count of a generator's samples, the collapse rule and the study's table of each
seed and the mean and std over the seeds of every step-2 cell."""
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from hardness.cli import UserInputError
from hardness.gasten import Z_DIM, generate
from hardness.gasten_names import classifier_nf, run_seed
from hardness.prediction import predict

AMBIGUOUS_SAMPLES, AMBIGUOUS_NOISE_SEED, AMBIGUOUS_HALF_WIDTH = 15000, 0, 0.1   # C in [0.4, 0.6], as the ambiguity
COLLAPSE_DISCRIMINATOR_LOSS, COLLAPSE_FID = 0.1, 100.0                          # analysis keeps samples


def in_ambiguous_band(probabilities: Tensor) -> Tensor:
    """[N] bool: C within 0.1 of 0.5, i.e. in [0.4, 0.6], the band the ambiguity analysis keeps."""
    return (probabilities - 0.5).abs() <= AMBIGUOUS_HALF_WIDTH


def ambiguous_count(generator: nn.Module, classifier: nn.Module, n_samples: int,
                    seed: int = AMBIGUOUS_NOISE_SEED) -> int:
    """How many of `n_samples` images of seeded noise (drawn as the ambiguity analysis draws its samples) the
    classifier puts in [0.4, 0.6]."""
    device = next(generator.parameters()).device
    noise = torch.randn(n_samples, Z_DIM, generator=torch.Generator().manual_seed(seed)).to(device)  # [n, 64]
    images = generate(generator, noise)                                                            # [n, 1, 28, 28]
    probabilities = predict(classifier, images)                                                    # [n]
    return int(in_ambiguous_band(probabilities).sum())


def collapsed(discriminator_loss: float, fid_own_features: float) -> bool:
    """The collapse rule of the study over seeds, fixed before it ran: the discriminator's mean loss in the last
    step-2 epoch below 0.1 (it tells real from fake almost perfectly: BCE(real) + BCE(fake) < 0.1 needs
    D(real) and 1 - D(fake) above about 0.95 on average) and FID (own features) above 100 (about three times the
    worst FID of the healthy one-seed runs, 31.6, and far below the collapsed one's 512)."""
    return discriminator_loss < COLLAPSE_DISCRIMINATOR_LOSS and fid_own_features > COLLAPSE_FID


def shared_config_name(run_folders: Sequence[Path]) -> str:
    """The config name of run folders of one config, one per GAN seed (<name>, <name>_seed<s>)."""
    names = {run_seed(folder)[0] for folder in run_folders}
    if len(names) != 1:
        raise UserInputError(f"give the run folders of one config (<name>, <name>_seed<s>), got the names "
                             f"{sorted(names)}")
    return names.pop()


def mean_and_std(values: Sequence[float]) -> tuple[float, float]:
    """The mean and the sample standard deviation (n - 1; nan for one value) of `values`."""
    values = np.asarray(values, dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else float("nan")


SEED_COLUMNS = ("fid_own_features", "ambiguous", "real_in_band", "discriminator_loss")


def over_seeds(cells: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The study's table from one dict per run and step-2 cell (classifier, weight (a ConfusionWeight),
    step1_epoch, seed, `acd`: ACD after each step-2 epoch, and SEED_COLUMNS): per (classifier, weight, step-1
    epoch), a row per seed (statistic `seed`), then the mean and the std over the seeds (`mean`, `std`) of
    acd_epoch_<e> and SEED_COLUMNS; `collapsed` is 0 or 1 in a seed's row, the number of collapsed seeds in the
    mean's row."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for cell in cells:
        groups.setdefault((classifier_nf(cell["classifier"]), cell["classifier"], cell["weight"].order(),
                           cell["step1_epoch"]), []).append(cell)
    table = []
    for (nf, classifier, _, step1_epoch), members in sorted(groups.items(), key=lambda item: item[0]):
        weight = members[0]["weight"]
        members = sorted(members, key=lambda cell: cell["seed"])
        seeds = [cell["seed"] for cell in members]
        if len(set(seeds)) != len(seeds):
            raise UserInputError(f"{classifier} weight {weight}: seed {max(seeds, key=seeds.count)} is given twice")
        epochs = {len(cell["acd"]) for cell in members}
        if len(epochs) != 1:
            raise UserInputError(f"{classifier} weight {weight}: the seeds' step-2 cells ran different numbers of "
                                 f"epochs ({sorted(epochs)}); finish them first")
        key = {"nf": nf, "classifier": classifier, "weight": weight, "step1_epoch": step1_epoch}
        rows = []
        for cell in members:
            rows.append({**key, "statistic": "seed", "seed": cell["seed"],
                         **{f"acd_epoch_{e + 1}": value for e, value in enumerate(cell["acd"])},
                         **{column: cell[column] for column in SEED_COLUMNS},
                         "collapsed": int(collapsed(cell["discriminator_loss"], cell["fid_own_features"]))})
        columns = [column for column in rows[0] if column.startswith("acd_epoch_")] + list(SEED_COLUMNS)
        summary = {column: mean_and_std([row[column] for row in rows]) for column in columns}
        table += rows
        table.append({**key, "statistic": "mean", "seed": float("nan"),
                      **{column: value[0] for column, value in summary.items()},
                      "collapsed": sum(row["collapsed"] for row in rows)})
        table.append({**key, "statistic": "std", "seed": float("nan"),
                      **{column: value[1] for column, value in summary.items()}, "collapsed": float("nan")})
    return table
