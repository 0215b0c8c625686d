"""One cell's state file (state, host, start, end, exit code, job id) and its lock, held by the process that
runs the cell's script."""
import contextlib
import datetime
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hardness.locks import file_lock
from hardness.results import write_atomically
from hardness.sweep.grid import Cell

FINISHED, FAILED, RUNNING, SUBMITTED, PENDING = "done", "failed", "running", "submitted", "pending"
LOST, UNKNOWN, INTERRUPTED, CANCELLED = "lost", "unknown", "interrupted", "cancelled"
WAITED_ON = (RUNNING, SUBMITTED, UNKNOWN)      # a process or job holds the cell, or may: never run it again now


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


def is_finished(cell: Cell) -> bool:
    """Done: its state says so and its results or figures folder holds files."""
    folders = [Path(cell.flags[key]) for key in ("results_dir", "figures_dir")]
    return read_state(cell)["state"] == FINISHED and any(f.is_dir() and any(f.rglob("*")) for f in folders)
