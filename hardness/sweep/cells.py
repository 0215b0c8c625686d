"""Running one cell: its script in its own process group, which inherits the cell's lock, its output in the
cell's log, its state file and manifest entry kept up to date; alone, among a local sweep's running cells
(stopped together), or as a SLURM job."""
import contextlib
import os
import shlex
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

from hardness.locks import file_lock
from hardness.sweep.grid import REPO, Cell
from hardness.sweep.manifest import note_in_manifest
from hardness.sweep.state import (CANCELLED, FAILED, FINISHED, INTERRUPTED, RUNNING, cell_lock, is_finished, now,
                                  read_state, write_state)

NOT_RUN = -1                                   # run_cell's answer when another process holds the cell
STOP_GRACE_S = 10.0                            # SIGTERM to SIGKILL for a cell stopped with its sweep


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
