"""The manifest <sweep>/manifest.json: every cell's flags and state, a running or submitted cell's state judged
by its lock and squeue, rewritten atomically under its own lock; the cells still to run; the status table."""
import contextlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from hardness.locks import file_lock
from hardness.results import write_atomically
from hardness.sweep.grid import Cell, Grid
from hardness.sweep.squeue import ENDED_BY_SLURM, SlurmQueue
from hardness.sweep.state import (FINISHED, LOST, RUNNING, SUBMITTED, UNKNOWN, WAITED_ON, is_finished, is_locked, now,
                                  read_state, write_state)


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
