"""The local launcher: every stage in order on this machine in a pool of processes, failed cells run again,
SIGTERM and SIGINT stopping the running cells."""
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from hardness.cli import UserInputError
from hardness.sweep.cells import LocalCells, run_cell
from hardness.sweep.grid import Grid
from hardness.sweep.manifest import to_run, write_manifest
from hardness.sweep.state import is_finished


class SweepInterrupted(UserInputError):
    """SIGTERM or SIGINT stopped a local sweep; its running cells were stopped and marked interrupted."""


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
