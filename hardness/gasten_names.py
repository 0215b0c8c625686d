"""GASTeN's names: of a run's folder (one per GAN seed), of a classifier under test, of step 2's weight of the
confusion term (ConfusionWeight) and of a step-2 cell (Step2Cell); each is built and read back here only."""
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hardness.cli import UserInputError

MGDA_WEIGHTS = ("mgda", "mgda:norm")


def run_folder_name(name: str, seed: int) -> str:
    """A GASTeN run's folder under <results_dir>/gasten/ (and <figures_dir>/gasten/): the config's name for
    seed 0, as before seeds had folders of their own, and <name>_seed<seed> for every other seed."""
    return name if seed == 0 else f"{name}_seed{seed}"


def run_seed(run_folder: Path) -> tuple[str, int]:
    """The config name and GAN seed of a run folder, run_folder_name reversed: <name>_seed<s> is seed s, any
    other name seed 0."""
    match = re.fullmatch(r"(.+)_seed(\d+)", Path(run_folder).name)
    return (match[1], int(match[2])) if match else (Path(run_folder).name, 0)


def classifier_name(kind: str, nf: int, epochs: int, seed: int) -> str:
    return f"{kind}-{nf}-{epochs}.{seed}"


def classifier_nf(name: str) -> int:
    """The filters of a classifier named <kind>-<nf>-<epochs>.<seed> (classifier_name)."""
    parts = name.split("-")
    if len(parts) != 3 or not parts[1].isdigit():
        raise UserInputError(f"classifier {name!r} is not named <kind>-<nf>-<epochs>.<seed>")
    return int(parts[1])


@dataclass(frozen=True)
class ConfusionWeight:
    """The weight of step 2's confusion term: a number alpha >= 0, or 'mgda' / 'mgda:norm' (chosen every step by
    MGDA from the two terms' gradients, raw or normalised). Written as its str in folder names and tables (25,
    0.5, mgda) and as `value` in the settings JSON (25.0, "mgda")."""
    value: float | str

    @classmethod
    def parse(cls, given: Any) -> "ConfusionWeight":
        """A weight from a flag, a config or a folder name; a ValueError says what is wrong."""
        if given in MGDA_WEIGHTS:
            return cls(given)
        try:
            value = float(given)
        except (TypeError, ValueError):
            raise ValueError(f"a weight is a number, mgda or mgda:norm, got {given!r}") from None
        if not value >= 0 or value == float("inf"):
            raise ValueError(f"a weight must be a finite number >= 0, got {given!r}")
        return cls(value)

    @property
    def mgda(self) -> bool:
        return isinstance(self.value, str)

    def __str__(self) -> str:
        return self.value if self.mgda else f"{self.value:g}"

    def order(self) -> tuple[float, str]:
        """A sort key: the numbers by value, then mgda and mgda:norm."""
        return (math.inf if self.mgda else self.value), str(self)


NO_CONFUSION = ConfusionWeight(0.0)


@dataclass(frozen=True)
class Step2Cell:
    """A step-2 cell of a run: the classifier's name, the weight and the step-1 epoch it starts from; its folder
    is <run>/step2/<classifier>_<weight>_<step-1 epoch>."""
    classifier: str
    weight: ConfusionWeight
    step1_epoch: int

    def folder_name(self) -> str:
        return f"{self.classifier}_{self.weight}_{self.step1_epoch}"

    @classmethod
    def parse(cls, folder_name: str) -> "Step2Cell":
        """The cell of a folder name (folder_name reversed)."""
        parts = folder_name.rsplit("_", 2)
        try:
            return cls(parts[0], ConfusionWeight.parse(parts[1]), int(parts[2]))
        except (IndexError, ValueError):
            raise UserInputError(f"{folder_name!r} is not a step-2 cell's folder "
                                 f"(<classifier>_<weight>_<step-1 epoch>)") from None


def settings_json(settings: dict) -> bytes:
    """Indented JSON of a run's settings: a ConfusionWeight as its value, a value JSON lacks as its str."""
    return (json.dumps(settings, indent=2, default=lambda value: value.value if isinstance(value, ConfusionWeight)
                       else str(value)) + "\n").encode()
