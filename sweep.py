"""Run a grid of experiment-script invocations on this machine or on a SLURM cluster, and resume it.

    python sweep.py --grid configs/sweeps/figure7.yaml --launcher local --max_parallel 2
    python sweep.py --grid configs/sweeps/figure7.yaml --launcher slurm --slurm_partition gpu --gpus_per_task 1 --timeout_min 120
    python sweep.py --grid configs/sweeps/figure7.yaml --status          # what is done, running, failed
    python sweep.py --grid configs/sweeps/figure7.yaml --dry_run         # the commands, each checked by its script
    python sweep.py --grid configs/sweeps/figure7.yaml --cancel          # cancel this sweep's SLURM jobs

A grid file (configs/sweeps/*.yaml) lists stages run in order, each a script with the flags common to its
cells and the flags to cross (lists); every cell is one ordinary invocation of the script with its own
--results_dir and --figures_dir under <results_dir>/sweeps/<grid name>/<stage>/<cell>/, and its log there.
The manifest <results_dir>/sweeps/<grid name>/manifest.json records each cell's flags, state, job id,
host, start, end, exit code and log. Running the same grid again skips the finished cells and runs the
unfinished ones again (failed, lost, interrupted, cancelled, timed out); a cell whose SLURM job cannot be read is
"unknown" and is not run again while it is. On SLURM (through submitit) each stage is a job array that starts once
every unfinished cell of the earlier stages succeeded (afterok), whichever call submitted them. SIGTERM or
Ctrl-C stops a local sweep and its cells.
"""
import argparse
import shlex
import sys
from pathlib import Path

from hardness.cli import add_shared_arguments, non_negative_int, positive_float, positive_int, run_script
from hardness.sweep import (DEFAULT_POLL_S, GridError, SlurmError, cancel_slurm, flag_errors, load_grid, render_flags,
                            run_local, status_table, submit_slurm, wait_for_slurm)


def slurm_option(text: str) -> tuple[str, str | bool]:
    """argparse type of --slurm_extra: KEY=VALUE, or KEY alone for an sbatch flag without a value."""
    key, separator, value = text.partition("=")
    if not key.strip():
        raise argparse.ArgumentTypeError(f"must be KEY=VALUE (an sbatch option without its dashes), got {text!r}")
    return key.strip(), value if separator else True


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", type=Path, required=True, help="the grid file (YAML; see configs/sweeps/)")
    parser.add_argument("--launcher", choices=["local", "slurm"], default="local",
                        help="local: a pool of processes on this machine; slurm: submitit's SLURM executor, one "
                             "job array per stage (default local)")
    parser.add_argument("--status", action="store_true",
                        help="print what is done, running, failed, lost or unknown (from the manifest and squeue) "
                             "and exit")
    parser.add_argument("--dry_run", action="store_true",
                        help="print the command of every cell, check every cell's flags with its script's own parser "
                             "(the scripts are imported, not run), and exit")
    parser.add_argument("--cancel", action="store_true",
                        help="slurm: cancel this sweep's queued and running jobs, mark their cells cancelled, and exit")
    parser.add_argument("--max_parallel", type=positive_int, default=1,
                        help="local: cells run at once; each gets cores / max_parallel threads (default 1)")
    parser.add_argument("--retries", type=non_negative_int, default=1,
                        help="times a failed or lost cell is run again within this call (default 1)")
    parser.add_argument("--slurm_partition", default=None, help="slurm: the partition (default: the grid's, or "
                                                                "the cluster's default)")
    parser.add_argument("--slurm_account", default=None,
                        help="slurm: the account (project) the jobs are charged to (default: the grid's, or yours)")
    parser.add_argument("--slurm_qos", default=None, help="slurm: the quality of service (default: the grid's, or "
                                                          "the account's default)")
    parser.add_argument("--slurm_constraint", default=None,
                        help="slurm: node features the jobs need, e.g. a100 or 'v100|a100' (default: the grid's)")
    parser.add_argument("--gres", default=None, help="slurm: generic resources of each job, e.g. gpu:1 or gpu:a100:1 "
                                                     "(default: the grid's)")
    parser.add_argument("--slurm_extra", type=slurm_option, action="append", default=[], metavar="KEY=VALUE",
                        help="slurm: any other sbatch option, e.g. reservation=course or mail_type=FAIL (repeatable; "
                             "added to the grid's slurm.extra)")
    parser.add_argument("--slurm_setup", action="append", default=[], metavar="LINE",
                        help="slurm: a shell line each job runs before its cell, e.g. 'module load cuda/12.1' "
                             "(repeatable; after the grid's slurm.setup)")
    parser.add_argument("--timeout_min", type=positive_int, default=None,
                        help="slurm: time limit of each job in minutes (default: the grid's, else 60)")
    parser.add_argument("--cpus_per_task", type=positive_int, default=None,
                        help="slurm: CPUs of each job (default: the grid's, else 2)")
    parser.add_argument("--gpus_per_task", type=non_negative_int, default=None,
                        help="slurm: GPUs of each job (default: the grid's, else 0)")
    parser.add_argument("--mem_gb", type=positive_int, default=None,
                        help="slurm: memory of each job in GiB (default: the grid's, else 8)")
    parser.add_argument("--array_parallelism", type=positive_int, default=None,
                        help="slurm: jobs of one array running at once (default: the grid's, else 16)")
    parser.add_argument("--poll_s", type=positive_float, default=DEFAULT_POLL_S,
                        help=f"slurm: seconds between two questions to squeue, which asks only about this sweep's "
                             f"jobs (default {DEFAULT_POLL_S:g})")
    parser.add_argument("--no_wait", action="store_true",
                        help="slurm: submit and return; --status tells how the jobs are doing (no retries then)")
    add_shared_arguments(parser, "results_dir", results_dir={
        "help": "the sweep lives in <results_dir>/sweeps/<grid name>/ (default Results)"})
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    grid = load_grid(args.grid, args.results_dir, args.poll_s)
    if args.status:
        print(status_table(grid))
        return
    if args.cancel:
        cancelled = cancel_slurm(grid)
        print(f"cancelled the jobs of {len(cancelled)} cell(s)" + (f": {', '.join(cancelled)}" if cancelled else ""))
        return
    if args.dry_run:
        for stage in grid.stages:
            for cell in stage:
                print(shlex.join(["python", cell.script, *render_flags(cell.flags)]))
        if errors := flag_errors(grid):
            raise GridError(f"{len(errors)} cell(s) have flags their script rejects: {'; '.join(errors)}")
        return
    if args.launcher == "local":
        finished = run_local(grid, args.max_parallel, args.retries)
    else:
        overrides = {"partition": args.slurm_partition, "timeout_min": args.timeout_min,
                     "cpus_per_task": args.cpus_per_task, "gpus_per_task": args.gpus_per_task, "mem_gb": args.mem_gb,
                     "array_parallelism": args.array_parallelism, "account": args.slurm_account, "qos": args.slurm_qos,
                     "constraint": args.slurm_constraint, "gres": args.gres, "extra": dict(args.slurm_extra),
                     "setup": args.slurm_setup}
        finished = False
        for _ in range(args.retries + 1):
            submitted = submit_slurm(grid, overrides)
            print("submitted: " + (", ".join(f"{stage} {len(jobs)} job(s)" for stage, jobs in submitted.items())
                                   or "nothing, every cell is finished, queued, running or unknown"), flush=True)
            if args.no_wait:
                return
            try:
                finished = wait_for_slurm(grid)
            except KeyboardInterrupt:
                raise SlurmError("stopped waiting; the jobs go on: --status tells how they do, --cancel cancels "
                                 "them") from None
            if finished or not submitted:
                break
    print(status_table(grid))
    if not finished:
        sys.exit(1)


if __name__ == "__main__":
    run_script(main, parse_args)
