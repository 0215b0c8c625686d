"""Grids of experiment-script runs, on this machine (a pool of processes) or on a SLURM cluster (submitit).

A grid file (YAML) lists stages that run in order; each names a script, the flags common to its cells and
the flags to cross (lists). A cell is one ordinary invocation of the script with its own --results_dir and
--figures_dir under <sweep>/<stage>/<cell>/ (a stage may give `results_dir` in `common` when its cells write
distinct file names into one folder, as GASTeN's steps do). `{sweep_dir}` in a value is the sweep's folder.

Each cell writes its own state file (state, host, start, end, exit code, job id) while it runs. The process
that runs the cell's script holds the lock on its folder (it inherits it from its runner), so no cell runs
twice at once, even after its runner died. The manifest <sweep>/manifest.json gathers the cells' states; it is
rewritten atomically under its own lock, when a cell starts, when it ends and whenever a launcher looks, so it
can be read while the sweep runs. Running a grid again skips the cells that finished (state done and result
files present) and runs the others again (failed, lost, interrupted, cancelled, timed out), at most --retries
times within one call. A cell whose SLURM job cannot be read (squeue failed or said nothing) is "unknown":
never run again while it is. SLURM is asked only about the sweep's own jobs, at most once per `poll_s`.
"""
import contextlib
import datetime
import io
import itertools
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hardness.cli import UserInputError
from hardness.locks import file_lock
from hardness.results import sweep_path, write_atomically

REPO = Path(__file__).resolve().parents[1]
SLURM_DEFAULTS: dict[str, Any] = {"partition": None, "timeout_min": 60, "cpus_per_task": 2, "gpus_per_task": 0,
                                  "mem_gb": 8, "array_parallelism": 16, "account": None, "qos": None,
                                  "constraint": None, "gres": None, "setup": [], "extra": {}}
SLURM_KINDS = {"partition": "text", "account": "text", "qos": "text", "constraint": "text", "gres": "text",
               "timeout_min": "positive", "cpus_per_task": "positive", "mem_gb": "positive",
               "array_parallelism": "positive", "gpus_per_task": "non-negative", "setup": "lines", "extra": "options"}
KIND_TEXT = {"text": "a string", "positive": "a positive integer", "non-negative": "a non-negative integer",
             "lines": "a list of shell lines (strings)", "options": "a mapping of sbatch option: value"}
STAGE_FIELDS = {"name", "script", "common", "cross"}
FINISHED, FAILED, RUNNING, SUBMITTED, PENDING = "done", "failed", "running", "submitted", "pending"
LOST, UNKNOWN, INTERRUPTED, CANCELLED = "lost", "unknown", "interrupted", "cancelled"
WAITED_ON = (RUNNING, SUBMITTED, UNKNOWN)      # a process or job holds the cell, or may: never run it again now
ENDED_BY_SLURM = {"TIMEOUT", "OUT_OF_MEMORY", "CANCELLED", "FAILED", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE"}
DEFAULT_POLL_S = 30.0
DEFAULT_MAX_ARRAY_SIZE = 1001                  # SLURM's default MaxArraySize
NOT_RUN = -1                                   # run_cell's answer when another process holds the cell
STOP_GRACE_S = 10.0                            # SIGTERM to SIGKILL for a cell stopped with its sweep
SACCT_WARNING = "Bypassing sacct error"   # submitit logs it on every poll when SLURM has no accounting database


class GridError(UserInputError):
    """A grid file that cannot be run, named with the field at fault."""


class SlurmError(UserInputError):
    """SLURM cannot take the sweep's jobs: what is missing or refused, and what to do."""


class SweepInterrupted(UserInputError):
    """SIGTERM or SIGINT stopped a local sweep; its running cells were stopped and marked interrupted."""


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

    @property
    def sweep_folder(self) -> Path:
        return self.folder.parents[1]


class SlurmQueue:
    """What SLURM says of one sweep's jobs: `squeue --jobs <their ids>`, asked at most once per `poll_s` seconds
    and never about other jobs. A job submitted since the last answer counts as pending."""

    def __init__(self, poll_s: float = DEFAULT_POLL_S) -> None:
        self.poll_s = poll_s
        self.asked_at: float | None = None
        self.asked: set[str] = set()                      # base job ids of the last question
        self.listed: dict[str, str] | None = None         # job id -> SLURM state; None: SLURM could not be read
        self.submitted: set[str] = set()                  # base job ids submitted since the last question

    def refresh(self, job_ids: Iterable[str]) -> None:
        """Ask squeue about these jobs, unless it was asked less than poll_s ago or there is nothing to ask."""
        bases = {job.split("_")[0] for job in job_ids}
        if not bases or (self.asked_at is not None and time.monotonic() - self.asked_at < self.poll_s):
            return
        self.asked_at, self.asked, self.submitted = time.monotonic(), bases, set()
        self.listed = ask_squeue(bases)

    def note_submitted(self, job_ids: Iterable[str]) -> None:
        self.submitted |= {job.split("_")[0] for job in job_ids}

    def state(self, job_id: str) -> str | None:
        """The job's SLURM state (PENDING, RUNNING, TIMEOUT, ...), '' once SLURM no longer lists it, None when
        it cannot be told."""
        base = job_id.split("_")[0]
        if base in self.submitted:
            return "PENDING"
        if self.listed is None or base not in self.asked:
            return None
        return self.listed.get(job_id, "")


def ask_squeue(bases: set[str]) -> dict[str, str] | None:
    """squeue's state of every job of these job ids (array tasks one by one), or None if it cannot be read. An
    answer that lists none of them counts only if `scontrol show job` confirms that SLURM no longer knows them."""
    if shutil.which("squeue") is None:
        return None
    ids = ",".join(sorted(bases))
    try:
        answer = subprocess.run(["squeue", "--noheader", "--array", "--states=all", "--format=%i %T", f"--jobs={ids}"],
                                capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return None
    listed = dict(line.split()[:2] for line in answer.stdout.splitlines() if len(line.split()) >= 2)
    if answer.returncode == 0 and listed:
        return listed
    if answer.returncode not in (0, 1) or shutil.which("scontrol") is None:
        return None
    try:
        shown = subprocess.run(["scontrol", "show", "job", min(bases)], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return None
    return {} if "Invalid job id" in shown.stdout + shown.stderr else None


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
    if not path.is_file():
        raise GridError(f"grid file {path} not found")
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise GridError(f"grid file {path} is not valid YAML: {error}") from error
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
        checked = subprocess.run([sys.executable, "-c", "import sys; from hardness.sweep import parse_in_child; "
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
def cell_lock(cell: Cell, wait: bool = False) -> Iterator[bool]:
    """Hold the cell's lock (<cell>/.lock), waiting for its holder if `wait`: yields whether this process holds it."""
    with file_lock(cell.folder / ".lock", wait) as handle:
        yield handle is not None


def is_locked(cell: Cell) -> bool:
    """Whether some process holds the cell's lock (it is running)."""
    with cell_lock(cell) as held:
        return not held


class LocalCells:
    """The running cells of a local sweep, each its own process group, to stop together on SIGTERM or SIGINT."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running: dict[str, subprocess.Popen] = {}
        self.stopped_by: str | None = None
        self.stopped_at = 0.0
        self.interrupted: list[str] = []

    def start(self, cell: Cell, start: Callable[[], subprocess.Popen]) -> subprocess.Popen | None:
        """Start the cell's process, unless the sweep is stopping."""
        with self.lock:
            if self.stopped_by:
                return None
            self.running[cell.key] = process = start()
            return process

    def stop(self, signum: int, frame: Any = None) -> None:
        """The signal handler: SIGTERM to every running cell's process group (SIGKILL follows in wait)."""
        self.stopped_by, self.stopped_at = signal.Signals(signum).name, time.monotonic()
        with self.lock:
            processes = list(self.running.values())
        for process in processes:
            signal_group(process, signal.SIGTERM)

    def wait(self, cell: Cell, process: subprocess.Popen) -> int:
        """The cell's exit code; once the sweep stops, its whole group is killed after STOP_GRACE_S."""
        while True:
            try:
                code = process.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                if self.stopped_by and time.monotonic() - self.stopped_at > STOP_GRACE_S:
                    signal_group(process, signal.SIGKILL)
        with self.lock:
            del self.running[cell.key]
            if self.stopped_by:
                signal_group(process, signal.SIGKILL)          # whatever of the group outlived its leader
                if code != 0:
                    self.interrupted.append(cell.key)
        return code


def signal_group(process: subprocess.Popen, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)


def run_cell(cell: Cell, threads: int | None = None, job_id: str | None = None,
             local: LocalCells | None = None) -> int:
    """Run one cell's command, its output appended to its log, its state file and manifest entry kept up to
    date; returns the exit code, or NOT_RUN if another process holds the cell or the local sweep is stopping.
    The script's process inherits the cell's lock and leads its own process group. With `threads`, the script's
    math libraries use that many threads."""
    with file_lock(cell.folder / ".lock", wait=False) as lock:
        if lock is None:
            return NOT_RUN
        if local is not None and local.stopped_by:
            return NOT_RUN
        array = os.environ.get("SLURM_ARRAY_JOB_ID")
        job_id = job_id or (f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array else os.environ.get("SLURM_JOB_ID"))
        write_state(cell, state=RUNNING, host=socket.gethostname(), start=now(), end=None, exit_code=None,
                    job_id=job_id, attempts=read_state(cell).get("attempts", 0) + 1, log=str(cell.log))
        note_in_manifest(cell)
        env = dict(os.environ)
        if threads:
            env.update({name: str(threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")})
        with open(cell.log, "a") as log:
            log.write(f"# {now()} on {socket.gethostname()}: {shlex.join(cell.command)}\n")
            log.flush()

            def start() -> subprocess.Popen:
                return subprocess.Popen(cell.command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env,
                                        pass_fds=(lock.fileno(),), start_new_session=True)
            process = start() if local is None else local.start(cell, start)
            if process is None:
                code = NOT_RUN
            else:
                code = process.wait() if local is None else local.wait(cell, process)
        stopped = local is not None and local.stopped_by is not None
        state = FINISHED if code == 0 else INTERRUPTED if stopped else FAILED
        if code == 0 or read_state(cell)["state"] != CANCELLED:         # --cancel's mark stays
            write_state(cell, state=state, end=now(), exit_code=code)
        note_in_manifest(cell)
        return code


def slurm_cell(cell: Cell) -> int:
    """What a SLURM job runs. A finished cell succeeds without running again; a cell that another process holds
    is waited for, and its result is this job's; otherwise the cell runs. The job fails (so afterok dependants
    do not start) when the cell did not finish."""
    if is_finished(cell):
        return 0
    code = run_cell(cell)
    if code == NOT_RUN:
        with cell_lock(cell, wait=True):
            pass
        if is_finished(cell):
            return 0
        state = read_state(cell)
        raise RuntimeError(f"cell {cell.key} ran in job {state.get('job_id')} and ended {state['state']} "
                           f"(exit {state.get('exit_code')}); see {cell.log}")
    if code != 0:
        raise RuntimeError(f"cell {cell.key} exited with {code}; see {cell.log}")
    return code


def is_finished(cell: Cell) -> bool:
    """Done: its state says so and its results or figures folder holds files."""
    folders = [Path(cell.flags[key]) for key in ("results_dir", "figures_dir")]
    return read_state(cell)["state"] == FINISHED and any(f.is_dir() and any(f.rglob("*")) for f in folders)


# ----------------------------------------------------------------------------- the manifest

def refresh_queue(grid: Grid) -> None:
    """Ask SLURM (at most once per poll_s) about the jobs of the cells that wait on one."""
    states = [read_state(cell) for cell in grid.cells]
    grid.queue.refresh(s["job_id"] for s in states if s["state"] in (RUNNING, SUBMITTED) and s.get("job_id"))


def cell_status(cell: Cell, queue: SlurmQueue) -> dict[str, Any]:
    """The cell's state, judged for a cell that says running or submitted: kept while its lock is held or SLURM
    lists its job as queued or running; SLURM's end (timeout, out_of_memory, cancelled, ...) where SLURM ended the
    job; unknown where SLURM cannot be read; lost where the process or job is gone."""
    state = read_state(cell)
    if state["state"] not in (RUNNING, SUBMITTED) or is_locked(cell):
        return state
    job = state.get("job_id")
    slurm = queue.state(job) if job else ""
    fresh = read_state(cell)                       # the cell may have ended while SLURM was asked
    if fresh["state"] not in (RUNNING, SUBMITTED):
        return fresh
    if slurm is None:
        return {**state, "state": UNKNOWN}
    if slurm in ("", "COMPLETED"):
        return {**state, "state": LOST, "slurm_state": slurm or None}
    if slurm in ENDED_BY_SLURM:
        return {**state, "state": slurm.lower(), "slurm_state": slurm}
    return {**state, "slurm_state": slurm}


@contextlib.contextmanager
def manifest_lock(sweep_folder: Path) -> Iterator[None]:
    with file_lock(Path(sweep_folder) / ".manifest.lock"):
        yield


def manifest_entry(cell: Cell, status: dict[str, Any]) -> dict[str, Any]:
    return {"stage": cell.stage, "script": cell.script, "flags": cell.flags, "folder": str(cell.folder),
            "log": str(cell.log), **{key: status.get(key) for key in (
                "state", "job_id", "slurm_state", "host", "start", "end", "exit_code", "attempts", "slurm_log")}}


def write_manifest(grid: Grid) -> dict[str, Any]:
    """Gather every cell's flags and state into <sweep>/manifest.json (atomically, under the manifest's lock);
    a cell that SLURM ended keeps that end in its state file. Returns the manifest."""
    refresh_queue(grid)
    with manifest_lock(grid.folder):
        cells = {}
        for cell in grid.cells:
            status = cell_status(cell, grid.queue)
            if status.get("slurm_state") in ENDED_BY_SLURM and read_state(cell)["state"] != status["state"]:
                write_state(cell, state=status["state"], slurm_state=status["slurm_state"], end=now())
            cells[cell.key] = manifest_entry(cell, status)
        manifest = {"grid": grid.name, "updated": now(), "cells": cells}
        write_atomically(grid.folder / "manifest.json", (json.dumps(manifest, indent=2) + "\n").encode())
    return manifest


def note_in_manifest(cell: Cell) -> None:
    """Put the cell's state file into the manifest's entry for it (a cell starting or ending); nothing before
    a launcher wrote the manifest."""
    path = cell.sweep_folder / "manifest.json"
    with manifest_lock(cell.sweep_folder):
        try:
            manifest = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return
        manifest["cells"][cell.key] = manifest_entry(cell, read_state(cell))
        manifest["updated"] = now()
        write_atomically(path, (json.dumps(manifest, indent=2) + "\n").encode())


def to_run(grid: Grid, cells: Sequence[Cell]) -> list[Cell]:
    """The cells that need a run: not finished, and neither running, queued nor unknown."""
    refresh_queue(grid)
    return [cell for cell in cells
            if not is_finished(cell) and cell_status(cell, grid.queue)["state"] not in WAITED_ON]


# ----------------------------------------------------------------------------- launchers

@contextlib.contextmanager
def stop_on_signals(local: LocalCells) -> Iterator[None]:
    """SIGTERM and SIGINT stop the local sweep's cells while inside (only the main thread can take signals)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, local.stop) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run_local(grid: Grid, max_parallel: int, retries: int, progress: bool = True) -> bool:
    """Every stage in order on this machine, `max_parallel` cells at once, each with cores / max_parallel
    threads; a failed cell is run again up to `retries` times; a stage with a failed cell stops the sweep.
    SIGTERM or SIGINT stops the running cells (their process groups), marks them interrupted, writes the
    manifest and raises SweepInterrupted. Returns whether every cell finished."""
    threads = max(1, (os.cpu_count() or 1) // max_parallel)
    local = LocalCells()
    with stop_on_signals(local):
        for stage in grid.stages:
            write_manifest(grid)
            for _ in range(retries + 1):
                pending = to_run(grid, stage)
                if not pending or local.stopped_by:
                    break
                if progress:
                    print(f"{stage[0].stage}: running {len(pending)} of {len(stage)} cell(s), {max_parallel} at once, "
                          f"{threads} thread(s) each", flush=True)
                with ThreadPoolExecutor(max_parallel) as pool:
                    list(pool.map(lambda cell: run_cell(cell, threads, local=local), pending))
            write_manifest(grid)
            if local.stopped_by:
                raise SweepInterrupted(f"{local.stopped_by} stopped the sweep: {len(local.interrupted)} running "
                                       f"cell(s) stopped and marked interrupted ({', '.join(local.interrupted)}); "
                                       f"the manifest is written; run the same command again to resume")
            if not all(is_finished(cell) for cell in stage):
                failed = [cell.key for cell in stage if not is_finished(cell)]
                print(f"stage {stage[0].stage}: {len(failed)} cell(s) did not finish ({', '.join(failed[:3])}"
                      f"{', ...' if len(failed) > 3 else ''}); later stages not run; see the logs", file=sys.stderr)
                return False
    return True


def check_slurm_tools(*tools: str) -> None:
    """SLURM's commands on the PATH and its controller answering, or one line that says what to do."""
    if missing := [tool for tool in tools if shutil.which(tool) is None]:
        raise SlurmError(f"--launcher slurm needs SLURM's {' and '.join(missing)}, not on the PATH: run sweep.py on "
                         "the cluster's login node (load its slurm module if it has one), or start a one-node SLURM "
                         "here with scripts/local_slurm.sh start")
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=60)
        answer = (ping.stdout + ping.stderr).strip().replace("\n", " ")
    except (OSError, subprocess.TimeoutExpired) as error:
        ping, answer = None, str(error)
    if ping is None or ping.returncode != 0 or "UP" not in answer:
        raise SlurmError(f"SLURM's controller does not answer (scontrol ping: {answer or 'no answer'}): start its "
                         "daemons (scripts/local_slurm.sh start on a one-node set-up) or ask the cluster's admins, "
                         "then run again")


def max_array_size() -> int:
    """The cluster's MaxArraySize (`scontrol show config`): the most tasks one job array may have."""
    try:
        config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        config = ""
    match = re.search(r"^MaxArraySize\s*=\s*(\d+)", config, re.MULTILINE)
    return max(1, int(match.group(1))) if match else DEFAULT_MAX_ARRAY_SIZE


def slurm_settings(grid: Grid, overrides: dict[str, Any]) -> dict[str, Any]:
    """The grid's slurm block with the flags given over it; `extra` and `setup` add to the grid's."""
    settings = {**grid.slurm, **{key: value for key, value in overrides.items()
                                 if value is not None and key not in ("extra", "setup")}}
    settings["extra"] = {**grid.slurm["extra"], **(overrides.get("extra") or {})}
    settings["setup"] = [*grid.slurm["setup"], *(overrides.get("setup") or [])]
    return settings


def executor_parameters(grid: Grid, stage: str, settings: dict[str, Any], after: Sequence[str]) -> dict[str, Any]:
    """submitit's AutoExecutor parameters of one stage's jobs, which start after the jobs `after` succeeded."""
    setup = [f"export PYTHONPATH={shlex.quote(str(REPO))}${{PYTHONPATH:+:$PYTHONPATH}}", *settings["setup"]]
    return {"name": f"{grid.name}.{stage}", "timeout_min": settings["timeout_min"],
            "cpus_per_task": settings["cpus_per_task"], "mem_gb": settings["mem_gb"],
            "slurm_array_parallelism": settings["array_parallelism"], "slurm_setup": setup,
            **{f"slurm_{key}": str(settings[key]) for key in ("partition", "account", "qos", "constraint", "gres")
               if settings[key] is not None},
            **({"slurm_gpus_per_task": settings["gpus_per_task"]} if settings["gpus_per_task"] else {}),
            **({"slurm_dependency": "afterok:" + ":".join(after)} if after else {}),
            **({"slurm_additional_parameters": dict(settings["extra"])} if settings["extra"] else {})}


def submit_slurm(grid: Grid, overrides: dict[str, Any]) -> dict[str, list[str]]:
    """Submit every stage's cells that need a run as SLURM job arrays (split at the cluster's MaxArraySize) with
    submitit. A stage's jobs start once every unfinished cell of the earlier stages succeeded (afterok): the jobs
    submitted now, and those of earlier calls that SLURM still lists or cannot be asked about. Returns stage ->
    job ids."""
    import submitit
    from submitit.core.utils import FailedJobError, FailedSubmissionError
    check_slurm_tools("sbatch", "srun", "scontrol")
    settings = slurm_settings(grid, overrides)
    array_size = max_array_size()
    refresh_queue(grid)
    submitted: dict[str, list[str]] = {}
    earlier: list[str] = []                    # job ids of the unfinished cells of the stages so far
    for stage in grid.stages:
        name = stage[0].stage
        statuses = {cell.key: cell_status(cell, grid.queue) for cell in stage}
        pending = [cell for cell in stage if not is_finished(cell) and statuses[cell.key]["state"] not in WAITED_ON]
        if pending:
            executor = submitit.AutoExecutor(folder=grid.folder / "slurm" / "%j", cluster="slurm")
            executor.update_parameters(**executor_parameters(grid, name, settings, earlier))
        for start in range(0, len(pending), array_size):
            chunk = pending[start:start + array_size]
            try:
                with contextlib.redirect_stderr(io.StringIO()), executor.batch():
                    jobs = [executor.submit(slurm_cell, cell) for cell in chunk]
            except (FailedJobError, FailedSubmissionError) as error:
                reason = (str(error).strip().splitlines() or ["no message"])[-1]
                raise SlurmError(f"sbatch refused stage {name}'s jobs ({reason}); fix the option it names "
                                 "(--slurm_account, --slurm_qos, --slurm_partition, --gres, --slurm_extra, ...) and "
                                 "run again") from None
            job_ids = [str(job.job_id) for job in jobs]
            grid.queue.note_submitted(job_ids)
            for cell, job, job_id in zip(chunk, jobs, job_ids):
                write_state(cell, state=SUBMITTED, job_id=job_id, host=None, start=None, end=None, exit_code=None,
                            slurm_state=None, log=str(cell.log), slurm_log=str(job.paths.stderr))
            submitted.setdefault(name, []).extend(job_ids)
        earlier += [job for cell in stage if not is_finished(cell) and (job := read_state(cell).get("job_id"))]
    write_manifest(grid)
    return submitted


def cancel_slurm(grid: Grid) -> list[str]:
    """scancel this sweep's queued and running jobs (and those SLURM cannot be asked about) and mark their cells
    cancelled; returns the cells' keys."""
    check_slurm_tools("scancel", "scontrol")
    refresh_queue(grid)
    targets = [(cell, status["job_id"]) for cell in grid.cells
               if (status := cell_status(cell, grid.queue))["state"] in WAITED_ON and status.get("job_id")]
    if targets:
        subprocess.run(["scancel", *sorted({job for _, job in targets})], capture_output=True, timeout=60)
        for cell, _ in targets:
            write_state(cell, state=CANCELLED, end=now())
    write_manifest(grid)
    return [cell.key for cell, _ in targets]


class DropSacctWarning(logging.Filter):
    """Drops exactly submitit's 'Bypassing sacct error' warning: without an accounting database sacct always
    fails, and the runner reads the cells' state files and squeue instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return SACCT_WARNING not in record.getMessage()


logging.getLogger("submitit").addFilter(DropSacctWarning())


def wait_for_slurm(grid: Grid) -> bool:
    """Poll the cells' state files and squeue (every grid.queue.poll_s) until no cell is submitted, running or
    unknown; returns whether all finished."""
    while True:
        states = [cell["state"] for cell in write_manifest(grid)["cells"].values()]
        if not any(state in WAITED_ON for state in states):
            return all(state == FINISHED for state in states)
        time.sleep(grid.queue.poll_s)


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
    if counts.get(UNKNOWN):
        lines.append(f"  ({UNKNOWN}: SLURM could not be asked about the job; it is neither run nor submitted again "
                     "until SLURM answers; --cancel cancels it)")
    return "\n".join(lines)
