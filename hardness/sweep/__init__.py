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

The package, one module per subject: grid (the grid file and flag checks), squeue (what SLURM says of the
sweep's jobs), state (a cell's state file and lock), manifest (the manifest, what to run, the status table),
cells (running one cell), local (the local launcher) and slurm (the SLURM launcher through submitit).
"""
from hardness.sweep.cells import run_cell, slurm_cell
from hardness.sweep.grid import GridError, flag_errors, load_grid, render_flags
from hardness.sweep.local import run_local
from hardness.sweep.manifest import cell_status, status_table, to_run, write_manifest
from hardness.sweep.slurm import SlurmError, cancel_slurm, submit_slurm, wait_for_slurm
from hardness.sweep.squeue import DEFAULT_POLL_S, SlurmQueue
from hardness.sweep.state import cell_lock, read_state, write_state

__all__ = ["DEFAULT_POLL_S", "GridError", "SlurmError", "SlurmQueue", "cancel_slurm", "cell_lock", "cell_status",
           "flag_errors", "load_grid", "read_state", "render_flags", "run_cell", "run_local", "slurm_cell",
           "status_table", "submit_slurm", "to_run", "wait_for_slurm", "write_manifest", "write_state"]
