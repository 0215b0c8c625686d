"""Grids of experiment-script runs, on this machine (a pool of processes) or on a SLURM cluster (submitit).

A grid file (YAML) lists stages that run in order; each names a script, the flags common to its cells and
the flags to cross (lists). A cell is one ordinary invocation of the script with its own --results_dir and
--figures_dir under <sweep>/<stage>/<cell>/ (a stage may give `results_dir` in `common` when its cells write
distinct file names into one folder, as GASTeN's steps do). `{sweep_dir}` in a value is the sweep's folder.

Each cell writes its own state file (state, host, start, end, exit code, job id) while it runs, and holds a
lock on its folder, so no cell runs twice at once; the manifest <sweep>/manifest.json gathers the cells'
states and is rewritten atomically, so it can be read while the sweep runs. Running a grid again skips the
cells that finished (state done and result files present) and runs the failed and lost ones again, at most
--retries times.
"""
import contextlib
import datetime
import fcntl
import itertools
import json
import logging
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hardness.cli import UserInputError
from hardness.results import write_atomically

REPO = Path(__file__).resolve().parents[1]
SLURM_DEFAULTS = {"partition": None, "timeout_min": 60, "cpus_per_task": 2, "gpus_per_task": 0, "mem_gb": 8,
                  "array_parallelism": 16}
STAGE_FIELDS = {"name", "script", "common", "cross"}
FINISHED, FAILED, RUNNING, SUBMITTED, PENDING = "done", "failed", "running", "submitted", "pending"
SACCT_WARNING = "Bypassing sacct error"   # submitit logs it on every poll when SLURM has no accounting database


class GridError(UserInputError):
    """A grid file that cannot be run, named with the field at fault."""


# ----------------------------------------------------------------------------- the grid

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


@dataclass
class Grid:
    name: str
    folder: Path                   # <results root>/sweeps/<name>
    stages: list[list[Cell]]
    slurm: dict[str, Any] = field(default_factory=dict)

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


def load_grid(path: Path, results_root: Path = Path("Results")) -> Grid:
    """Read and check a grid file; expand every stage's product of crossed flags into cells."""
    if not (REPO / "sweep.py").is_file():
        raise UserInputError(f"sweeps run the repository's scripts, and this copy of hardness ({REPO}) is an "
                             "installed one without them: run sweep.py from a clone of the repository")
    path = Path(path)
    if not path.is_file():
        raise GridError(f"grid file {path} not found")
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise GridError(f"grid file {path} is not valid YAML: {error}") from error
    if unknown := set(spec) - {"name", "stages", "slurm"}:
        raise GridError(f"{path}: unknown field(s) {sorted(unknown)}; a grid has name, stages and slurm")
    name = str(spec.get("name") or path.stem)
    folder = Path(results_root).resolve() / "sweeps" / name
    slurm = {**SLURM_DEFAULTS, **(spec.get("slurm") or {})}
    if unknown := set(slurm) - set(SLURM_DEFAULTS):
        raise GridError(f"{path}: unknown slurm field(s) {sorted(unknown)}; known: {', '.join(SLURM_DEFAULTS)}")
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
        if not script or not (REPO / script).is_file():
            raise GridError(f"{where}.script: {script!r} is not a script of this repository")
        common, cross = stage.get("common") or {}, stage.get("cross") or {}
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
    return Grid(name, folder, expanded, slurm)


def _substitute(value: Any, sweep_dir: Path) -> Any:
    if isinstance(value, list):
        return [_substitute(v, sweep_dir) for v in value]
    return value.replace("{sweep_dir}", str(sweep_dir)) if isinstance(value, str) else value


# ----------------------------------------------------------------------------- one cell

def now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


def read_state(cell: Cell) -> dict[str, Any]:
    """The cell's state file, or {'state': 'pending'} if it never started."""
    try:
        return json.loads(cell.state_file.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {"state": PENDING}


def write_state(cell: Cell, **fields: Any) -> None:
    state = {**read_state(cell), **fields}
    write_atomically(cell.state_file, (json.dumps(state, indent=2) + "\n").encode())


@contextlib.contextmanager
def cell_lock(cell: Cell) -> Iterator[bool]:
    """Try to hold the cell's lock (<cell>/.lock) without waiting: yields whether this process holds it."""
    cell.folder.mkdir(parents=True, exist_ok=True)
    with open(cell.folder / ".lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def is_locked(cell: Cell) -> bool:
    """Whether some process holds the cell's lock (it is running)."""
    with cell_lock(cell) as held:
        return not held


def run_cell(cell: Cell, threads: int | None = None, job_id: str | None = None) -> int:
    """Run one cell's command under its lock, its output appended to its log, its state file kept up to date;
    returns the exit code (-1 if another process holds the lock). With `threads`, the script's math libraries
    use that many threads."""
    with cell_lock(cell) as held:
        if not held:
            return -1
        array = os.environ.get("SLURM_ARRAY_JOB_ID")
        job_id = job_id or (f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array else os.environ.get("SLURM_JOB_ID"))
        write_state(cell, state=RUNNING, host=socket.gethostname(), start=now(), end=None, exit_code=None,
                    job_id=job_id, attempts=read_state(cell).get("attempts", 0) + 1, log=str(cell.log))
        env = dict(os.environ)
        if threads:
            env.update({name: str(threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")})
        with open(cell.log, "a") as log:
            log.write(f"# {now()} on {socket.gethostname()}: {' '.join(cell.command)}\n")
            log.flush()
            code = subprocess.call(cell.command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
        write_state(cell, state=FINISHED if code == 0 else FAILED, end=now(), exit_code=code)
        return code


def slurm_cell(cell: Cell) -> int:
    """What a SLURM job runs: the cell, failing the job (so afterok dependants do not start) if the cell fails."""
    code = run_cell(cell)
    if code != 0:
        raise RuntimeError(f"cell {cell.key} exited with {code}; see {cell.log}")
    return code


def is_finished(cell: Cell) -> bool:
    """Done: its state says so and its results or figures folder holds files."""
    folders = [Path(cell.flags[key]) for key in ("results_dir", "figures_dir")]
    return read_state(cell)["state"] == FINISHED and any(f.is_dir() and any(f.rglob("*")) for f in folders)


# ----------------------------------------------------------------------------- the manifest

def queued_jobs(cells: Sequence[Cell]) -> set[str] | None:
    """Job ids SLURM still knows (pending or running), or None without SLURM. squeue is asked only when one of
    `cells` says it is running or submitted under a job id: a local sweep never waits on an unreachable controller."""
    states = [read_state(cell) for cell in cells]
    if shutil.which("squeue") is None or not any(s["state"] in (RUNNING, SUBMITTED) and s.get("job_id") for s in states):
        return None
    try:
        listed = subprocess.run(["squeue", "--noheader", "--array", "--format=%i"], capture_output=True, text=True,
                                timeout=60)
    except subprocess.TimeoutExpired:
        return None
    return {line.strip() for line in listed.stdout.split()} if listed.returncode == 0 else None


def cell_status(cell: Cell, queued: set[str] | None) -> dict[str, Any]:
    """The cell's state, with 'lost' for a cell that says running or submitted but has no live process or job."""
    state = read_state(cell)
    if state["state"] in (RUNNING, SUBMITTED):
        job = state.get("job_id")
        alive = (job is not None and queued is not None and job in queued) \
            or is_locked(cell)
        if not alive:
            state = {**state, "state": "lost"}
    return state


def write_manifest(grid: Grid) -> dict[str, Any]:
    """Gather every cell's flags and state into <sweep>/manifest.json (atomically); returns it."""
    queued = queued_jobs(grid.cells)
    cells = {}
    for cell in grid.cells:
        status = cell_status(cell, queued)
        cells[cell.key] = {"stage": cell.stage, "script": cell.script, "flags": cell.flags, "folder": str(cell.folder),
                           "log": str(cell.log), **{key: status.get(key) for key in (
                               "state", "job_id", "host", "start", "end", "exit_code", "attempts", "slurm_log")}}
    manifest = {"grid": grid.name, "updated": now(), "cells": cells}
    write_atomically(grid.folder / "manifest.json", (json.dumps(manifest, indent=2) + "\n").encode())
    return manifest


def to_run(cells: Sequence[Cell]) -> list[Cell]:
    """The cells that need a run: never started, failed or lost; not the finished ones nor those running now."""
    queued = queued_jobs(cells)
    return [cell for cell in cells
            if not is_finished(cell) and cell_status(cell, queued)["state"] not in (RUNNING, SUBMITTED)]


# ----------------------------------------------------------------------------- launchers

def run_local(grid: Grid, max_parallel: int, retries: int, progress: bool = True) -> bool:
    """Every stage in order on this machine, `max_parallel` cells at once, each with cores / max_parallel
    threads; a failed cell is run again up to `retries` times; a stage with a failed cell stops the sweep.
    Returns whether every cell finished."""
    threads = max(1, (os.cpu_count() or 1) // max_parallel)
    lock = threading.Lock()

    def run_and_record(cell: Cell) -> None:
        run_cell(cell, threads)
        with lock:
            write_manifest(grid)

    for stage in grid.stages:
        for _ in range(retries + 1):
            pending = to_run(stage)
            if not pending:
                break
            if progress:
                print(f"{stage[0].stage}: running {len(pending)} of {len(stage)} cell(s), {max_parallel} at once, "
                      f"{threads} thread(s) each", flush=True)
            with ThreadPoolExecutor(max_parallel) as pool:
                list(pool.map(run_and_record, pending))
        write_manifest(grid)
        if not all(is_finished(cell) for cell in stage):
            failed = [cell.key for cell in stage if not is_finished(cell)]
            print(f"stage {stage[0].stage}: {len(failed)} cell(s) did not finish ({', '.join(failed[:3])}"
                  f"{', ...' if len(failed) > 3 else ''}); later stages not run; see the logs", file=sys.stderr)
            return False
    return True


def submit_slurm(grid: Grid, overrides: dict[str, Any]) -> dict[str, list[str]]:
    """Submit every stage's cells that need a run as a SLURM job array with submitit, each stage after the
    previous one's jobs succeeded (afterok); returns stage -> job ids."""
    import submitit
    settings = {**grid.slurm, **{key: value for key, value in overrides.items() if value is not None}}
    submitted, previous = {}, []
    for stage in grid.stages:
        pending = to_run(stage)
        if not pending:
            continue
        executor = submitit.AutoExecutor(folder=grid.folder / "slurm" / "%j", cluster="slurm")
        extra = {"dependency": "afterok:" + ":".join(previous)} if previous else {}
        executor.update_parameters(
            name=f"{grid.name}.{stage[0].stage}", timeout_min=settings["timeout_min"],
            slurm_setup=[f"export PYTHONPATH={shlex.quote(str(REPO))}${{PYTHONPATH:+:$PYTHONPATH}}"],
            cpus_per_task=settings["cpus_per_task"], mem_gb=settings["mem_gb"],
            slurm_array_parallelism=settings["array_parallelism"],
            **({"slurm_partition": settings["partition"]} if settings["partition"] else {}),
            **({"slurm_gpus_per_task": settings["gpus_per_task"]} if settings["gpus_per_task"] else {}),
            **({"slurm_additional_parameters": extra} if extra else {}))
        with executor.batch():
            jobs = [executor.submit(slurm_cell, cell) for cell in pending]
        for cell, job in zip(pending, jobs):
            write_state(cell, state=SUBMITTED, job_id=str(job.job_id), host=None, start=None, end=None,
                        exit_code=None, log=str(cell.log), slurm_log=str(job.paths.stderr))
        submitted[stage[0].stage] = [str(job.job_id) for job in jobs]
        previous = [str(job.job_id) for job in jobs]
    write_manifest(grid)
    return submitted


class DropSacctWarning(logging.Filter):
    """Drops exactly submitit's 'Bypassing sacct error' warning: without an accounting database sacct always
    fails, and the runner reads the cells' state files and squeue instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return SACCT_WARNING not in record.getMessage()


logging.getLogger("submitit").addFilter(DropSacctWarning())


def wait_for_slurm(grid: Grid, poll_seconds: float = 2.0) -> bool:
    """Poll the cells' state files and squeue until no cell is submitted or running; returns whether all
    finished. (A cell whose job left the queue without finishing reads 'lost'.)"""
    while True:
        states = [cell["state"] for cell in write_manifest(grid)["cells"].values()]
        if not any(state in (RUNNING, SUBMITTED) for state in states):
            return all(state == FINISHED for state in states)
        time.sleep(poll_seconds)


def status_table(grid: Grid) -> str:
    """Counts per state, then one line per cell that is not done."""
    manifest = write_manifest(grid)
    cells = manifest["cells"]
    counts: dict[str, int] = {}
    for cell in cells.values():
        counts[cell["state"]] = counts.get(cell["state"], 0) + 1
    lines = [f"{grid.name}: {len(cells)} cell(s): " + ", ".join(f"{count} {state}" for state, count in sorted(counts.items()))]
    for key, cell in cells.items():
        if cell["state"] != FINISHED:
            lines.append(f"  {cell['state']:<9} {key}  job {cell['job_id'] or '-'}  exit {cell['exit_code']}  "
                         f"log {cell['log']}")
    return "\n".join(lines)
