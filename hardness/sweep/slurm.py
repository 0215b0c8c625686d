"""The SLURM launcher through submitit: the tools and the controller checked, the settings of the grid and the
flags, one job array per stage (afterok on the earlier stages' jobs), cancelling, waiting."""
import contextlib
import io
import logging
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Sequence
from typing import Any

from hardness.cli import UserInputError
from hardness.sweep.cells import slurm_cell
from hardness.sweep.grid import REPO, Grid
from hardness.sweep.manifest import cell_status, refresh_queue, write_manifest
from hardness.sweep.state import CANCELLED, FINISHED, SUBMITTED, WAITED_ON, is_finished, now, read_state, write_state

DEFAULT_MAX_ARRAY_SIZE = 1001                  # SLURM's default MaxArraySize
SACCT_WARNING = "Bypassing sacct error"   # submitit logs it on every poll when SLURM has no accounting database


class SlurmError(UserInputError):
    """SLURM cannot take the sweep's jobs: what is missing or refused, and what to do."""


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
