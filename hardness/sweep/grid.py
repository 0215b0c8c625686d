"""The grid file: its stages expanded into cells (one invocation of a script each), its slurm block checked,
the flags rendered, and every cell's flags checked by its script's own parser."""
import contextlib
import io
import itertools
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hardness.cli import UserInputError
from hardness.config import read_yaml
from hardness.results import sweep_path
from hardness.sweep.squeue import DEFAULT_POLL_S, SlurmQueue

REPO = Path(__file__).resolve().parents[2]
SLURM_DEFAULTS: dict[str, Any] = {"partition": None, "timeout_min": 60, "cpus_per_task": 2, "gpus_per_task": 0,
                                  "mem_gb": 8, "array_parallelism": 16, "account": None, "qos": None,
                                  "constraint": None, "gres": None, "setup": [], "extra": {}}
SLURM_KINDS = {"partition": "text", "account": "text", "qos": "text", "constraint": "text", "gres": "text",
               "timeout_min": "positive", "cpus_per_task": "positive", "mem_gb": "positive",
               "array_parallelism": "positive", "gpus_per_task": "non-negative", "setup": "lines", "extra": "options"}
KIND_TEXT = {"text": "a string", "positive": "a positive integer", "non-negative": "a non-negative integer",
             "lines": "a list of shell lines (strings)", "options": "a mapping of sbatch option: value"}
STAGE_FIELDS = {"name", "script", "common", "cross"}


class GridError(UserInputError):
    """A grid file that cannot be run, named with the field at fault."""


@dataclass
class Cell:
    """One invocation of a stage's script."""
    stage: str
    name: str                      # crossed flags as key-value, e.g. dataset_name-MNIST.strategy-vog
    script: str
    flags: dict[str, Any]          # every flag, common and crossed, with --results_dir and --figures_dir
    folder: Path                   # <sweep>/<stage>/<name>

    @property
    def key(self) -> str:
        return f"{self.stage}/{self.name}"

    @property
    def command(self) -> list[str]:
        return [sys.executable, str(REPO / self.script), *render_flags(self.flags)]

    @property
    def log(self) -> Path:
        return self.folder / "log.txt"

    @property
    def state_file(self) -> Path:
        return self.folder / "state.json"

    @property
    def sweep_folder(self) -> Path:
        return self.folder.parents[1]


@dataclass
class Grid:
    name: str
    folder: Path                   # <results root>/sweeps/<name>
    stages: list[list[Cell]]
    slurm: dict[str, Any] = field(default_factory=dict)
    queue: SlurmQueue = field(default_factory=SlurmQueue)

    @property
    def cells(self) -> list[Cell]:
        return [cell for stage in self.stages for cell in stage]


def render_flags(flags: dict[str, Any]) -> list[str]:
    """--key value; a list gives --key v1 v2; true gives --key alone and false nothing."""
    rendered = []
    for key, value in flags.items():
        if value is False or value is None:
            continue
        rendered.append(f"--{key}")
        if value is not True:
            rendered += [str(v) for v in value] if isinstance(value, list) else [str(value)]
    return rendered


def cell_name(crossed: dict[str, Any]) -> str:
    """A folder name for the crossed values: key-value pairs joined by dots, unsafe characters replaced."""
    if not crossed:
        return "single"
    parts = [f"{key}-{'+'.join(map(str, value)) if isinstance(value, list) else value}" for key, value in crossed.items()]
    return re.sub(r"[^A-Za-z0-9_.+=-]", "_", ".".join(parts))


def check_slurm_settings(settings: dict[str, Any], where: str) -> None:
    """Each SLURM setting's type (SLURM_KINDS), or a GridError naming the field."""
    for key, value in settings.items():
        kind = SLURM_KINDS[key]
        integer = isinstance(value, int) and not isinstance(value, bool)
        valid = {"text": value is None or integer or isinstance(value, str) and bool(value.strip()),
                 "positive": integer and value >= 1, "non-negative": integer and value >= 0,
                 "lines": isinstance(value, list) and all(isinstance(line, str) for line in value),
                 "options": isinstance(value, dict) and all(
                     isinstance(k, str) and isinstance(v, (str, int, float)) for k, v in value.items())}[kind]
        if not valid:
            raise GridError(f"{where}.{key}: must be {KIND_TEXT[kind]}, got {value!r}")


def load_grid(path: Path, results_root: Path = Path("Results"), poll_s: float = DEFAULT_POLL_S) -> Grid:
    """Read and check a grid file; expand every stage's product of crossed flags into cells."""
    if not (REPO / "sweep.py").is_file():
        raise UserInputError(f"sweeps run the repository's scripts, and this copy of hardness ({REPO}) is an "
                             "installed one without them: run sweep.py from a clone of the repository")
    path = Path(path)
    spec = read_yaml(path, "grid", GridError)
    if not isinstance(spec, dict):
        raise GridError(f"{path}: a grid is a mapping with name, stages and slurm, got {type(spec).__name__}")
    if unknown := set(spec) - {"name", "stages", "slurm"}:
        raise GridError(f"{path}: unknown field(s) {sorted(unknown)}; a grid has name, stages and slurm")
    name = str(spec.get("name") or path.stem)
    folder = sweep_path(Path(results_root).resolve(), name)
    given = spec.get("slurm") or {}
    if not isinstance(given, dict):
        raise GridError(f"{path}: slurm: must be a mapping of setting: value, got {given!r}")
    if unknown := set(given) - set(SLURM_DEFAULTS):
        raise GridError(f"{path}: unknown slurm field(s) {sorted(unknown)}; known: {', '.join(SLURM_DEFAULTS)}")
    check_slurm_settings(given, f"{path}: slurm")
    slurm = {**SLURM_DEFAULTS, **given}
    stages = spec.get("stages")
    if not isinstance(stages, list) or not stages:
        raise GridError(f"{path}: stages must be a non-empty list of {{name, script, common, cross}}")
    expanded, seen = [], set()
    for index, stage in enumerate(stages):
        where = f"{path}: stages[{index}]"
        if not isinstance(stage, dict) or (unknown := set(stage) - STAGE_FIELDS):
            raise GridError(f"{where}: a stage has the fields {sorted(STAGE_FIELDS)}, got {stage!r}")
        stage_name, script = str(stage.get("name", f"stage{index}")), stage.get("script")
        if stage_name in seen:
            raise GridError(f"{where}: the stage name {stage_name!r} is used twice")
        seen.add(stage_name)
        check_script(script, f"{where}.script")
        common, cross = stage.get("common") or {}, stage.get("cross") or {}
        if not isinstance(common, dict):
            raise GridError(f"{where}.common: must be a mapping of flag: value, got {common!r}")
        if not isinstance(cross, dict):
            raise GridError(f"{where}.cross: must be a mapping of flag: [values], got {cross!r}")
        for key, values in cross.items():
            if not isinstance(values, list) or not values:
                raise GridError(f"{where}.cross.{key}: must be a non-empty list, got {values!r}")
        cells = []
        for combination in itertools.product(*cross.values()):
            crossed = dict(zip(cross, combination))
            cell_folder = folder / stage_name / cell_name(crossed)
            flags = {"results_dir": str(cell_folder / "results"), "figures_dir": str(cell_folder / "figures"),
                     **common, **crossed}
            flags = {key: _substitute(value, folder) for key, value in flags.items()}
            cells.append(Cell(stage_name, cell_name(crossed), script, flags, cell_folder))
        expanded.append(cells)
    return Grid(name, folder, expanded, slurm, SlurmQueue(poll_s))


def check_script(script: Any, where: str) -> None:
    """A stage's script: a relative path (a string) of a file inside the repository."""
    if not isinstance(script, str) or not script:
        raise GridError(f"{where}: must be the path of one script of this repository, got {script!r}")
    resolved = (REPO / script).resolve()
    if not resolved.is_relative_to(REPO):
        raise GridError(f"{where}: {script!r} is outside the repository ({REPO}); sweeps run its own scripts")
    if not resolved.is_file():
        raise GridError(f"{where}: {script!r} is not a script of this repository")


def _substitute(value: Any, sweep_dir: Path) -> Any:
    if isinstance(value, list):
        return [_substitute(v, sweep_dir) for v in value]
    return value.replace("{sweep_dir}", str(sweep_dir)) if isinstance(value, str) else value


def flag_errors(grid: Grid) -> list[str]:
    """'<cell>: <message>' for each cell whose flags its script's own parser rejects. Each script is imported,
    not run (its parse_args(argv) is called on every cell's flags), in one child process per script."""
    errors = []
    for script in dict.fromkeys(cell.script for cell in grid.cells):
        cells = [cell for cell in grid.cells if cell.script == script]
        argvs = json.dumps([render_flags(cell.flags) for cell in cells])
        checked = subprocess.run([sys.executable, "-c", "import sys; from hardness.sweep.grid import parse_in_child; "
                                  "parse_in_child(sys.argv[1])", script], input=argvs, capture_output=True, text=True,
                                 cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
        if checked.returncode != 0:
            reason = (checked.stderr.strip().splitlines() or ["no output"])[-1]
            errors.append(f"{script}: its flags could not be checked ({reason})")
            continue
        errors += [f"{cell.key}: {message}" for cell, message in zip(cells, json.loads(checked.stdout)) if message]
    return errors


def parse_in_child(script: str) -> None:
    """In a child process: import `script` and print, as JSON, its parse_args' complaint (or null) about each
    argv list read from stdin."""
    import importlib.util
    argvs = json.load(sys.stdin)
    module_spec = importlib.util.spec_from_file_location("checked_script", REPO / script)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "parse_args"):
        print(json.dumps([f"{script} has no parse_args(argv) to check its flags with"] * len(argvs)))
        return
    sys.argv[0] = Path(script).name
    answers: list[str | None] = []
    for argv in argvs:
        complaint = io.StringIO()
        try:
            with contextlib.redirect_stderr(complaint), contextlib.redirect_stdout(io.StringIO()):
                module.parse_args(argv)
            answers.append(None)
        except SystemExit:
            answers.append((complaint.getvalue().strip().splitlines() or ["rejected"])[-1])
        except Exception as error:          # a script's own check of its flags (UserInputError, ValueError, ...)
            answers.append(f"{type(error).__name__}: {error}")
    print(json.dumps(answers))
