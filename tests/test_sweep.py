"""The sweep runner: grid files, the local launcher end to end, resume after a failure, the manifest, one run of a
cell at a time, the data-fetch lock, stopping a local sweep, SLURM's answers read with stand-in commands, and the
same grids through a real one-node SLURM (which CI starts; HARDNESS_REQUIRE_SLURM=1 makes its absence a failure)."""
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import sweep as sweep_script
from conftest import REPO, run_in_process, write_mnist_layout
from hardness import data
from hardness.cli import UserInputError
from hardness.sweep import (GridError, SlurmQueue, cell_lock, cell_status, load_grid, read_state, render_flags, run_cell,
                            run_local, slurm_cell, status_table, to_run, write_manifest, write_state)

FAKE = "tests/sweep_fake_experiment.py"


def write_grid(folder: Path, text: str) -> Path:
    path = folder / "grid.yaml"
    path.write_text(text)
    return path


def two_stage_grid(folder: Path) -> Path:
    """Stage `values` crosses --value 1 2 3 (a cell fails while <folder>/fail_<value> exists); stage `after`
    has one cell; `toy` runs the real VoG toy script once."""
    return write_grid(folder, f"""
name: tiny
stages:
  - name: values
    script: {FAKE}
    common: {{sleep: 0.5, fail_markers: "{folder}"}}
    cross: {{value: [1, 2, 3]}}
  - name: after
    script: {FAKE}
    common: {{value: 9}}
  - name: toy
    script: variance_of_gradients_toy.py
    common: {{device: cpu, steps: 30}}
""")


def test_flags_and_cells_of_a_grid(tmp_path):
    assert render_flags({"a": [1, 2], "b": True, "c": False, "d": "x y"}) == ["--a", "1", "2", "--b", "--d", "x y"]
    path = write_grid(tmp_path, f"""
stages:
  - name: first
    script: {FAKE}
    common: {{sleep: 0, note: "{{sweep_dir}}/shared"}}
    cross: {{value: [1, 2], flag: [true, false]}}
""")
    grid = load_grid(path, tmp_path / "Results")
    assert grid.name == "grid" and grid.folder == (tmp_path / "Results/sweeps/grid").resolve()
    cells = grid.stages[0]
    assert [cell.name for cell in cells] == ["value-1.flag-True", "value-1.flag-False", "value-2.flag-True",
                                             "value-2.flag-False"]
    assert len({cell.flags["results_dir"] for cell in cells}) == 4        # no two cells share a results folder
    assert cells[0].flags["note"] == f"{grid.folder}/shared"
    assert render_flags(cells[1].flags)[-4:] == ["--note", f"{grid.folder}/shared", "--value", "1"]


@pytest.mark.parametrize("text, message", [
    ("stages: []", "non-empty list"),
    ("stages: [{script: nope.py}]", "stages[0].script"),
    (f"stages: [{{script: {FAKE}, cross: {{value: 3}}}}]", "stages[0].cross.value"),
    (f"stages: [{{script: {FAKE}, typo: 1}}]", "stages[0]"),
    (f"stages: [{{name: a, script: {FAKE}}}, {{name: a, script: {FAKE}}}]", "used twice"),
    (f"slurm: {{partitions: x}}\nstages: [{{script: {FAKE}}}]", "unknown slurm field"),
    (f"stages: [{{script: {FAKE}, common: [sleep, 1]}}]", "stages[0].common: must be a mapping"),
    (f"stages: [{{script: {FAKE}, cross: [value, 1]}}]", "stages[0].cross: must be a mapping"),
    (f"stages: [{{script: [{FAKE}]}}]", "stages[0].script: must be the path of one script"),
    ("stages: [{script: /etc/hostname}]", "stages[0].script: '/etc/hostname' is outside the repository"),
    ("stages: [{script: ../outside.py}]", "stages[0].script: '../outside.py' is outside the repository"),
    (f"slurm: {{mem_gb: 8G}}\nstages: [{{script: {FAKE}}}]", "slurm.mem_gb: must be a positive integer, got '8G'"),
    (f"slurm: {{cpus_per_task: true}}\nstages: [{{script: {FAKE}}}]", "slurm.cpus_per_task: must be a positive"),
    (f"slurm: {{setup: module load x}}\nstages: [{{script: {FAKE}}}]", "slurm.setup: must be a list of shell lines"),
    (f"slurm: {{extra: [comment]}}\nstages: [{{script: {FAKE}}}]", "slurm.extra: must be a mapping"),
    (f"slurm: [account]\nstages: [{{script: {FAKE}}}]", "slurm: must be a mapping"),
])
def test_bad_grids_name_the_field(tmp_path, text, message):
    with pytest.raises(GridError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_grid(write_grid(tmp_path, text), tmp_path)


def test_local_sweep_end_to_end_then_resume_after_a_failure(tmp_path):
    marker = tmp_path / "fail_2"
    marker.touch()
    grid = load_grid(two_stage_grid(tmp_path), tmp_path / "Results")
    assert not run_local(grid, max_parallel=2, retries=1, progress=False)
    manifest = json.loads((grid.folder / "manifest.json").read_text())["cells"]
    assert manifest["values/value-2"]["state"] == "failed" and manifest["values/value-2"]["exit_code"] == 3
    assert manifest["values/value-2"]["attempts"] == 2                      # the first run and one retry
    assert manifest["values/value-1"]["state"] == manifest["values/value-3"]["state"] == "done"
    assert manifest["after/single"]["state"] == "pending"                   # a failed stage stops the sweep
    first = {key: manifest[key]["start"] for key in ("values/value-1", "values/value-3")}
    records = [json.loads((grid.folder / f"values/value-{v}/results/value.json").read_text()) for v in (1, 3)]
    assert all(r["threads"] == str(max(1, (os.cpu_count() or 1) // 2)) for r in records)  # cores / max_parallel

    marker.unlink()
    assert run_local(grid, max_parallel=2, retries=0, progress=False)
    manifest = json.loads((grid.folder / "manifest.json").read_text())["cells"]
    assert all(cell["state"] == "done" and cell["exit_code"] == 0 for cell in manifest.values())
    assert {key: manifest[key]["start"] for key in first} == first          # finished cells were not run again
    assert manifest["values/value-2"]["attempts"] == 3
    for key, cell in manifest.items():
        assert cell["host"] and cell["end"] >= cell["start"] and Path(cell["log"]).is_file()
    assert list((grid.folder / "toy/single/results").rglob("*.npz"))       # a real script, in its own folders
    assert "failing on purpose" in (grid.folder / "values/value-2/log.txt").read_text()


def test_a_cell_never_runs_twice_at_once(tmp_path):
    grid = load_grid(two_stage_grid(tmp_path), tmp_path / "Results")
    cell = grid.stages[0][0]
    with cell_lock(cell) as held:
        assert held
        assert run_cell(cell) == -1 and read_state(cell)["state"] == "pending"
        write_state(cell, state="running")
        assert cell_status(cell, SlurmQueue())["state"] == "running"        # the lock is held: alive
    assert cell_status(cell, SlurmQueue())["state"] == "lost"               # nobody holds it: lost, run again
    assert cell in to_run(grid, grid.stages[0])


def test_concurrent_fetches_of_one_dataset_fetch_it_once(tmp_path, monkeypatch):
    """Two threads load MNIST from an empty folder at once: the second waits for the first's fetch and then
    finds the files, so the dataset is fetched once and never by two at the same time."""
    fetching, fetches, overlap = threading.Lock(), [], []

    def slow_fetch(name, root):
        if not fetching.acquire(blocking=False):
            overlap.append(name)
            return
        fetches.append(name)
        time.sleep(0.5)
        write_mnist_layout(Path(root), "MNIST")
        fetching.release()

    monkeypatch.setattr(data, "fetch_dataset", slow_fetch)
    results = []
    threads = [threading.Thread(target=lambda: results.append(data.torchvision_splits("MNIST", tmp_path)))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert fetches == ["MNIST"] and not overlap and len(results) == 2
    assert all(len(train) == 60 and len(test) == 20 for train, test in results)


def test_sweep_script_dry_run_and_status(tmp_path, flag_checks_in_process):
    """sweep.py's --dry_run, --status and a missing grid, run in this process, the dry run's flag checks too
    (sweep.py's real exit statuses and flag-checking children are the subprocesses of the tests below)."""
    path = two_stage_grid(tmp_path)
    sweep_py = REPO / "sweep.py"
    done = run_in_process(sweep_py, "--grid", str(path), "--dry_run", "--results_dir", str(tmp_path / "R"), cwd=tmp_path)
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0 and len(lines) == 5 and lines[0].startswith(f"python {FAKE} --results_dir")
    done = run_in_process(sweep_py, "--grid", str(path), "--status", "--results_dir", str(tmp_path / "R"), cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.startswith("tiny: 5 cell(s): 5 pending")
    done = run_in_process(sweep_py, "--grid", str(tmp_path / "none.yaml"), cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0 and "not found" in done.stderr


def test_commands_are_shell_quoted_in_the_dry_run_and_the_cell_log(tmp_path, flag_checks_in_process):
    """A value with a space and a `;` is one quoted word, in the dry run's commands and in the cell log's."""
    path = write_grid(tmp_path, f'stages: [{{script: {FAKE}, common: {{fail_markers: "MNIST; rm -rf x"}}}}]')
    done = run_in_process(REPO / "sweep.py", "--grid", str(path), "--dry_run", "--results_dir", str(tmp_path / "R"),
                          cwd=tmp_path)
    assert done.returncode == 0 and " --fail_markers 'MNIST; rm -rf x'" in done.stdout, done.stdout + done.stderr
    assert shlex.split(done.stdout)[-1] == "MNIST; rm -rf x"
    cell = load_grid(path, tmp_path / "R").cells[0]
    assert run_cell(cell) == 0
    assert " --fail_markers 'MNIST; rm -rf x'" in cell.log.read_text().splitlines()[0]


def test_dry_run_reports_the_cells_whose_flags_their_script_rejects(tmp_path):
    """The script's own parser, without running it: an unknown flag and a value its type refuses, each named by
    its cell, on one line; the cells that parse are not named."""
    path = write_grid(tmp_path, f"""
name: flags
stages:
  - name: values
    script: {FAKE}
    cross: {{value: [1, x]}}
  - name: typo
    script: {FAKE}
    common: {{valeu: 2}}
""")
    done = subprocess.run([sys.executable, str(REPO / "sweep.py"), "--grid", str(path), "--dry_run", "--results_dir",
                           str(tmp_path / "R")], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0, done.stderr
    assert "2 cell(s) have flags their script rejects" in done.stderr
    assert "values/value-x: sweep_fake_experiment.py: error: argument --value: invalid int value: 'x'" in done.stderr
    assert "typo/single: sweep_fake_experiment.py: error: unrecognized arguments: --valeu 2" in done.stderr
    assert "values/value-1" not in done.stderr
    assert not (tmp_path / "fail_x").exists() and not (tmp_path / "R/sweeps/flags/values").exists()  # nothing ran


def running_keys(manifest_path: Path) -> set[str]:
    try:
        cells = json.loads(manifest_path.read_text())["cells"]
    except (FileNotFoundError, json.JSONDecodeError):
        return set()
    return {key for key, cell in cells.items() if cell["state"] == "running" and cell["start"] and not cell["end"]}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"


def wait_until(condition, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.2)


def test_sigterm_stops_a_local_sweep_and_its_cells_and_a_rerun_runs_each_unfinished_cell_once(tmp_path):
    """Cells 2 and 3 wait on their hold markers while cell 1 finishes: the manifest says running for 2 and 3 while
    they run; SIGTERM to the sweep stops them (no process left), marks them interrupted and exits with one line;
    the rerun runs 2 and 3 once each and not 1. (Before the fix the cells went on running after the sweep died.)"""
    runs = tmp_path / "runs.txt"
    path = write_grid(tmp_path, f"""
name: stop
stages:
  - name: values
    script: {FAKE}
    common: {{fail_markers: "{tmp_path}", runs_log: "{runs}"}}
    cross: {{value: [1, 2, 3]}}
""")
    for value in (2, 3):
        (tmp_path / f"hold_{value}").touch()
    command = [sys.executable, str(REPO / "sweep.py"), "--grid", str(path), "--max_parallel", "3", "--results_dir",
               str(tmp_path / "R")]
    sweep_process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    manifest = tmp_path / "R/sweeps/stop/manifest.json"

    def held_pids() -> list[int]:        # the manifest can say running before a cell has logged its pid
        lines = runs.read_text().splitlines() if runs.is_file() else []
        return [int(line.split()[1]) for line in lines if line.split()[0] in ("2", "3")]
    wait_until(lambda: running_keys(manifest) == {"values/value-2", "values/value-3"} and len(held_pids()) == 2)
    cell_pids = held_pids()
    assert len(cell_pids) == 2 and all(alive(pid) for pid in cell_pids)
    sweep_process.send_signal(signal.SIGTERM)
    _, stderr = sweep_process.communicate(timeout=60)
    assert sweep_process.returncode == 2 and stderr.strip().count("\n") == 0, stderr
    assert stderr.startswith("error: SIGTERM stopped the sweep: 2 running cell(s) stopped and marked interrupted")
    assert not any(alive(pid) for pid in cell_pids)                         # no cell process left behind
    cells = json.loads(manifest.read_text())["cells"]
    assert [cells[f"values/value-{v}"]["state"] for v in (1, 2, 3)] == ["done", "interrupted", "interrupted"]

    for value in (2, 3):
        (tmp_path / f"hold_{value}").unlink()
    rerun = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    started = sorted(line.split()[0] for line in runs.read_text().splitlines())
    assert started == ["1", "2", "2", "3", "3"]                             # 2 and 3 once more each, 1 not again
    cells = json.loads(manifest.read_text())["cells"]
    assert all(cell["state"] == "done" for cell in cells.values())


def test_the_process_running_a_cell_holds_its_lock_after_its_runner_is_killed(tmp_path):
    """SIGKILL to the local sweep (no chance to clean up): the cell's own process still holds the lock, so the
    cell reads running, not lost, and is not run again beside itself."""
    runs = tmp_path / "runs.txt"
    path = write_grid(tmp_path, f"""
name: orphan
stages:
  - name: values
    script: {FAKE}
    common: {{fail_markers: "{tmp_path}", runs_log: "{runs}", value: 4}}
""")
    (tmp_path / "hold_4").touch()
    command = [sys.executable, str(REPO / "sweep.py"), "--grid", str(path), "--results_dir", str(tmp_path / "R")]
    sweep_process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    wait_until(lambda: running_keys(tmp_path / "R/sweeps/orphan/manifest.json") == {"values/single"})
    sweep_process.kill()
    sweep_process.wait()
    grid = load_grid(path, tmp_path / "R")
    cell = grid.stages[0][0]
    pid = int(runs.read_text().split()[1])
    assert alive(pid) and cell_status(cell, SlurmQueue())["state"] == "running" and to_run(grid, grid.stages[0]) == []
    (tmp_path / "hold_4").unlink()
    wait_until(lambda: not alive(pid))
    assert cell_status(cell, SlurmQueue())["state"] == "lost"               # gone without its runner: run again


def stand_ins(folder: Path, **scripts: str) -> Path:
    """A folder of stand-in commands (name -> sh body) to put first on PATH; each logs '<name> <args>' to
    <folder>/calls.txt."""
    folder.mkdir(exist_ok=True)
    for name, body in scripts.items():
        (folder / name).write_text(f'#!/bin/sh\necho "{name} $*" >> {folder}/calls.txt\n{body}\n')
        (folder / name).chmod(0o755)
    return folder


def submitted_grid(tmp_path: Path, job_ids: list[str], poll_s: float = 30.0):
    """The `values` stage of the two-stage grid, its three cells recorded as submitted under these job ids."""
    grid = load_grid(two_stage_grid(tmp_path), tmp_path / "Results", poll_s)
    for cell, job in zip(grid.stages[0], job_ids):
        write_state(cell, state="submitted", job_id=job)
    return grid


@pytest.mark.parametrize("squeue", ["echo 'slurm_load_jobs error: Socket timed out' >&2; exit 1", "exit 0"])
def test_a_failing_or_empty_squeue_makes_queued_cells_unknown_never_lost(tmp_path, monkeypatch, squeue):
    """squeue fails, or answers nothing while scontrol cannot confirm the jobs are gone: the queued cells are
    unknown, none is run or submitted again, and --status shows them. (Before the fix all three counted as lost
    and a rerun submitted three duplicate jobs.)"""
    fake = stand_ins(tmp_path / "bin", squeue=squeue, scontrol="echo 'Unable to contact slurm controller' >&2; exit 1")
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    grid = submitted_grid(tmp_path, ["71_0", "71_1", "71_2"])
    assert to_run(grid, grid.stages[0]) == []
    assert [cell_status(cell, grid.queue)["state"] for cell in grid.stages[0]] == ["unknown"] * 3
    table = status_table(grid)
    assert "3 unknown" in table and "unknown   values/value-1  job 71_0" in table


def test_squeue_answers_are_read_per_job_and_asked_only_about_the_sweep_at_most_once_per_poll(tmp_path, monkeypatch):
    """A stand-in squeue lists 71_0 pending and 71_1 ended by its time limit, and not 71_2: queued, timeout (kept in
    its state file), lost. Over 2.5 s of manifest writes with poll_s 1 it is asked at most 3 times, always with
    --jobs=71 (this sweep's only job) and never about all users' jobs."""
    fake = stand_ins(tmp_path / "bin", squeue='printf "71_0 PENDING\\n71_1 TIMEOUT\\n"')
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    grid = submitted_grid(tmp_path, ["71_0", "71_1", "71_2"], poll_s=1.0)
    start = time.monotonic()
    while time.monotonic() - start < 2.5:
        cells = write_manifest(grid)["cells"]
        time.sleep(0.05)
    assert [cells[f"values/value-{v}"]["state"] for v in (1, 2, 3)] == ["submitted", "timeout", "lost"]
    assert cells["values/value-2"]["slurm_state"] == "TIMEOUT" and read_state(grid.stages[0][1])["state"] == "timeout"
    assert [cell.name for cell in to_run(grid, grid.stages[0])] == ["value-2", "value-3"]
    calls = (fake / "calls.txt").read_text().splitlines()
    assert 2 <= len(calls) <= 3
    assert all(call.startswith("squeue ") and "--jobs=71" in call.split() for call in calls)


def test_a_job_for_a_finished_or_held_cell_does_not_run_it_again(tmp_path):
    """A job that starts for a finished cell succeeds without running it; one that finds the cell held waits for
    the holder and ends with the cell's result: success when it finished, failure when it failed."""
    runs = tmp_path / "runs.txt"
    path = write_grid(tmp_path, f"""
stages:
  - name: values
    script: {FAKE}
    common: {{runs_log: "{runs}"}}
    cross: {{value: [1, 2]}}
""")
    grid = load_grid(path, tmp_path / "Results")
    done, failing = grid.stages[0]
    assert slurm_cell(done) == 0 and runs.read_text().split()[0] == "1"
    assert slurm_cell(done) == 0 and len(runs.read_text().splitlines()) == 1      # finished: not run again

    for outcome in ("done", "failed"):
        released = threading.Event()

        def holder():
            with cell_lock(failing) as held:
                assert held
                released.set()
                time.sleep(1.0)
                write_state(failing, state=outcome, exit_code=0 if outcome == "done" else 3, job_id="5_1")
                if outcome == "done":
                    Path(failing.flags["results_dir"]).mkdir(parents=True, exist_ok=True)
                    (Path(failing.flags["results_dir"]) / "value.json").write_text("{}")
        thread = threading.Thread(target=holder)
        thread.start()
        released.wait()
        start = time.monotonic()
        if outcome == "done":
            assert slurm_cell(failing) == 0
        else:
            with pytest.raises(RuntimeError, match="ran in job 5_1 and ended failed"):
                slurm_cell(failing)
        assert time.monotonic() - start >= 0.9                               # it waited for the holder
        thread.join()
        shutil.rmtree(Path(failing.flags["results_dir"]), ignore_errors=True)
    assert len(runs.read_text().splitlines()) == 1                           # cell 2 never ran here


def fake_cluster(folder: Path, sbatch: str | None = None, ping: str = "echo 'Slurmctld(primary) at fake is UP'") -> Path:
    """Stand-ins for SLURM's commands: sbatch keeps each script it is given (sbatch_<job id>.sh) and answers job ids
    from 101 on; scontrol says MaxArraySize = 2; squeue fails."""
    counter = folder / "count"
    return stand_ins(folder, srun="exit 0", squeue="exit 1",
                     scontrol=f'case "$1" in ping) {ping};; *) echo "MaxArraySize            = 2";; esac',
                     sbatch=sbatch or f'n=$(( $(/bin/cat {counter} 2>/dev/null || echo 100) + 1 )); echo $n > {counter}; '
                                      f'/bin/cp "$1" {folder}/sbatch_$n.sh; echo "Submitted batch job $n"')


def run_sweep(arguments: list[str], monkeypatch, path: Path) -> None:
    """sweep.py in this process with only `path` on PATH (its one-line errors are its UserInputErrors)."""
    monkeypatch.setenv("PATH", str(path))
    sweep_script.main(sweep_script.parse_args(arguments))


def test_the_sbatch_scripts_carry_the_cluster_options_and_split_at_max_array_size(tmp_path, monkeypatch, capsys):
    """The submitit scripts sbatch would get, with stand-in SLURM commands: the grid's and the flags' account, QoS,
    constraint, GRES, GPUs, pass-through options and setup lines; the 3 cells of `values` as two arrays (MaxArraySize
    2) and `after` depending on all three."""
    fake = fake_cluster(tmp_path / "bin")
    text = two_stage_grid(tmp_path).read_text().replace("name: tiny", "name: tiny\nslurm: {extra: {mail_type: FAIL}, "
                                                         "setup: [module load python/3.11]}")
    path = write_grid(tmp_path, text.split("  - name: toy")[0])
    run_sweep(["--grid", str(path), "--launcher", "slurm", "--no_wait", "--slurm_account", "proj42", "--slurm_qos",
               "short", "--slurm_constraint", "a100|v100", "--gres", "gpu:2", "--gpus_per_task", "1", "--slurm_extra",
               "reservation=course", "--slurm_extra", "exclusive", "--slurm_setup", "source /opt/env/bin/activate",
               "--results_dir", str(tmp_path / "R")], monkeypatch, fake)
    assert "submitted: values 3 job(s), after 1 job(s)" in capsys.readouterr().out
    scripts = {n: (fake / f"sbatch_{n}.sh").read_text() for n in (101, 102, 103)}
    for script in scripts.values():
        for line in ("#SBATCH --account=proj42", "#SBATCH --qos=short", "#SBATCH --constraint='a100|v100'",
                     "#SBATCH --gres=gpu:2", "#SBATCH --gpus-per-task=1", "#SBATCH --reservation=course",
                     "#SBATCH --exclusive", "#SBATCH --mail-type=FAIL", "module load python/3.11",
                     "source /opt/env/bin/activate"):
            assert line in script.splitlines(), line
    assert "#SBATCH --array=0-1%2" in scripts[101] and "--array" not in scripts[102]      # 2 + 1: MaxArraySize 2
    assert "#SBATCH --dependency=afterok:101_0:101_1:102" in scripts[103].splitlines()
    states = json.loads((tmp_path / "R/sweeps/tiny/manifest.json").read_text())["cells"]
    assert [states[key]["job_id"] for key in ("values/value-1", "values/value-2", "values/value-3", "after/single")] \
        == ["101_0", "101_1", "102", "103"]


@pytest.mark.parametrize("case, message", [
    ("no sbatch", "--launcher slurm needs SLURM's sbatch, not on the PATH"),
    ("controller down", "SLURM's controller does not answer (scontrol ping: Slurmctld(primary) at fake is DOWN)"),
    ("sbatch refuses", "sbatch refused stage values's jobs (sbatch: error: Batch job submission failed: Invalid "
                       "account or account/partition combination specified)"),
])
def test_slurm_that_cannot_take_the_jobs_is_one_line(tmp_path, monkeypatch, capsys, case, message):
    fake = fake_cluster(tmp_path / "bin", ping="echo 'Slurmctld(primary) at fake is DOWN'; exit 1"
                        if case == "controller down" else "echo 'Slurmctld(primary) at fake is UP'",
                        sbatch="echo 'sbatch: error: Batch job submission failed: Invalid account or account/partition "
                               "combination specified' >&2; exit 1" if case == "sbatch refuses" else None)
    if case == "no sbatch":
        (fake / "sbatch").unlink()
    with pytest.raises(UserInputError) as raised:
        run_sweep(["--grid", str(two_stage_grid(tmp_path)), "--launcher", "slurm", "--results_dir", str(tmp_path / "R")],
                  monkeypatch, fake)
    assert message in str(raised.value) and "\n" not in str(raised.value)
    assert capsys.readouterr().err == ""                                     # sbatch's own complaint not printed
    assert not list((tmp_path / "R").rglob("state.json"))                   # nothing recorded as submitted


def slurm_controller_answers() -> bool:
    try:
        return subprocess.run(["scontrol", "ping"], capture_output=True, timeout=20).returncode == 0
    except subprocess.TimeoutExpired:
        return False


@pytest.fixture(scope="module")
def local_slurm():
    """A SLURM controller to submit to: the one already answering, or the local one-node SLURM started for this
    module and stopped after it. Skipped only where SLURM's client tools (sinfo) are absent."""
    if shutil.which("sinfo") is None:
        if os.environ.get("HARDNESS_REQUIRE_SLURM") == "1":
            pytest.fail("HARDNESS_REQUIRE_SLURM=1 but sinfo is absent: scripts/local_slurm.sh start installs SLURM")
        pytest.skip("sinfo is absent: no SLURM on this machine (scripts/local_slurm.sh start installs one)")
    if slurm_controller_answers():
        yield
        return
    started = subprocess.run(["bash", str(REPO / "scripts/local_slurm.sh"), "start"], capture_output=True, text=True,
                             timeout=300)
    assert started.returncode == 0, "scripts/local_slurm.sh start failed: " + started.stderr
    yield
    subprocess.run(["bash", str(REPO / "scripts/local_slurm.sh"), "stop"], capture_output=True, timeout=60)


def scontrol_job(job_id: str) -> str:
    return subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=60).stdout


def test_the_same_grid_through_slurm(tmp_path, local_slurm):
    """Three stages, one job array each, with an account, a pass-through option and a setup line, which
    `scontrol show job` and the cells see."""
    path = two_stage_grid(tmp_path)
    done = subprocess.run([sys.executable, str(REPO / "sweep.py"), "--grid", str(path), "--launcher", "slurm",
                           "--cpus_per_task", "1", "--mem_gb", "1", "--timeout_min", "10", "--poll_s", "1",
                           "--slurm_account", "sweeptest", "--slurm_extra", "comment=hardness-sweep-test",
                           "--slurm_setup", "export SWEEP_TEST_SETUP=set-up", "--results_dir", str(tmp_path / "R")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "sacct" not in done.stderr                                       # the one warning silenced
    manifest = json.loads((tmp_path / "R/sweeps/tiny/manifest.json").read_text())["cells"]
    assert len(manifest) == 5 and all(cell["state"] == "done" and cell["job_id"] for cell in manifest.values())
    jobs = {cell["job_id"].split("_")[0] for cell in manifest.values()}
    assert len(jobs) == 3                                                   # one job array per stage
    shown = scontrol_job(manifest["values/value-1"]["job_id"])
    assert "Account=sweeptest" in shown and "Comment=hardness-sweep-test" in shown
    record = json.loads((tmp_path / "R/sweeps/tiny/values/value-1/results/value.json").read_text())
    assert record["setup"] == "set-up"                                      # the setup line ran before the cell


def job_states(job_ids: list[str]) -> dict[str, str]:
    listed = subprocess.run(["squeue", "--noheader", "--array", "--states=all", "--format=%i %T",
                             "--jobs=" + ",".join(sorted({job.split("_")[0] for job in job_ids}))],
                            capture_output=True, text=True, timeout=60).stdout
    return dict(line.split() for line in listed.splitlines())


def test_a_resumed_later_stage_waits_for_the_earlier_stage_and_a_failing_squeue_duplicates_nothing(tmp_path, local_slurm,
                                                                                                    monkeypatch):
    """Stage `values` (3 cells, held running or pending) and `after` are submitted; `after`'s job is cancelled.
    A rerun with a failing squeue on PATH submits nothing (unknown is not lost); a rerun with SLURM's own squeue
    resubmits `after` alone, depending on the three jobs of the first call (scontrol show job). Released, every
    cell runs once and `after` starts after the last of `values` ended. (Before the fix the resubmitted `after`
    had no dependency, and the failing squeue resubmitted all four cells.)"""
    runs = tmp_path / "runs.txt"
    path = write_grid(tmp_path, f"""
name: resume
stages:
  - name: values
    script: {FAKE}
    common: {{fail_markers: "{tmp_path}", runs_log: "{runs}"}}
    cross: {{value: [1, 2, 3]}}
  - name: after
    script: {FAKE}
    common: {{value: 9, runs_log: "{runs}"}}
""")
    for value in (1, 2, 3):
        (tmp_path / f"hold_{value}").touch()
    command = [sys.executable, str(REPO / "sweep.py"), "--grid", str(path), "--launcher", "slurm", "--cpus_per_task",
               "1", "--mem_gb", "1", "--timeout_min", "10", "--poll_s", "1", "--results_dir", str(tmp_path / "R")]
    # the three --no_wait calls run sweep.py in this process (the jobs are real SLURM's); the last one for real
    first = run_in_process(*command[1:], "--no_wait", cwd=tmp_path)
    assert first.returncode == 0 and "submitted: values 3 job(s), after 1 job(s)" in first.stdout, first.stderr
    grid = load_grid(path, tmp_path / "R")
    values_jobs = [read_state(cell)["job_id"] for cell in grid.stages[0]]
    after_job = read_state(grid.stages[1][0])["job_id"]
    subprocess.run(["scancel", after_job], check=True, timeout=60)
    wait_until(lambda: job_states([after_job]).get(after_job) == "CANCELLED", timeout=60)

    failing = stand_ins(tmp_path / "bin", squeue="echo 'slurm_load_jobs error: Socket timed out' >&2; exit 1")
    with monkeypatch.context() as patched:
        patched.setenv("PATH", f"{failing}:{os.environ['PATH']}")
        rerun = run_in_process(*command[1:], "--no_wait", cwd=tmp_path)
    assert rerun.returncode == 0 and "submitted: nothing" in rerun.stdout, rerun.stdout + rerun.stderr
    assert [read_state(cell)["job_id"] for cell in grid.cells] == [*values_jobs, after_job]

    resumed = run_in_process(*command[1:], "--no_wait", cwd=tmp_path)
    assert resumed.returncode == 0 and "submitted: after 1 job(s)" in resumed.stdout, resumed.stdout + resumed.stderr
    new_after = read_state(grid.stages[1][0])["job_id"]
    shown = scontrol_job(new_after)
    dependency = re.search(r"Dependency=(\S+)", shown).group(1)
    assert sorted(re.findall(r"afterok:(\d+_\d+)", dependency)) == sorted(values_jobs), dependency
    assert "JobState=PENDING" in shown and "Reason=Dependency" in shown

    for value in (1, 2, 3):
        (tmp_path / f"hold_{value}").unlink()
    finish = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert finish.returncode == 0 and "submitted: nothing" in finish.stdout, finish.stdout + finish.stderr
    assert sorted(line.split()[0] for line in runs.read_text().splitlines()) == ["1", "2", "3", "9"]   # each once
    records = [json.loads((cell.folder / "results/value.json").read_text()) for cell in grid.cells]
    assert records[3]["start"] >= max(record["end"] for record in records[:3])


def test_cancel_cancels_the_sweeps_jobs_and_marks_their_cells(tmp_path, local_slurm):
    path = write_grid(tmp_path, f"""
name: cancel
stages:
  - name: values
    script: {FAKE}
    common: {{fail_markers: "{tmp_path}"}}
    cross: {{value: [5, 6]}}
""")
    for value in (5, 6):
        (tmp_path / f"hold_{value}").touch()
    command = [sys.executable, str(REPO / "sweep.py"), "--grid", str(path), "--launcher", "slurm", "--cpus_per_task",
               "1", "--mem_gb", "1", "--timeout_min", "10", "--poll_s", "1", "--results_dir", str(tmp_path / "R")]
    subprocess.run([*command, "--no_wait"], check=True, capture_output=True, timeout=300)
    grid = load_grid(path, tmp_path / "R")
    jobs = [read_state(cell)["job_id"] for cell in grid.cells]
    cancelled = subprocess.run([*command, "--cancel"], capture_output=True, text=True, timeout=300)
    assert cancelled.stdout.startswith("cancelled the jobs of 2 cell(s)"), cancelled.stdout + cancelled.stderr
    wait_until(lambda: set(job_states(jobs).values()) <= {"CANCELLED"}, timeout=60)
    assert [read_state(cell)["state"] for cell in grid.cells] == ["cancelled", "cancelled"]
    cells = json.loads((grid.folder / "manifest.json").read_text())["cells"]
    assert [cell["state"] for cell in cells.values()] == ["cancelled", "cancelled"]


def test_local_slurm_keeps_a_slurm_conf_it_did_not_write(tmp_path):
    conf = tmp_path / "slurm.conf"
    env = {**os.environ, "LOCAL_SLURM_CONF": str(conf)}
    script = str(REPO / "scripts/local_slurm.sh")
    written = subprocess.run(["bash", script, "configure"], capture_output=True, text=True, env=env, timeout=60)
    assert written.returncode == 0, written.stderr
    lines = conf.read_text().splitlines()
    assert lines[0] == "# written by scripts/local_slurm.sh: one node, one partition, no accounting"
    assert f"CPUs={os.cpu_count()}" in next(line for line in lines if line.startswith("NodeName="))
    foreign = "# the cluster's own\nClusterName=campus\n"
    conf.write_text(foreign)
    kept = subprocess.run(["bash", script, "configure"], capture_output=True, text=True, env=env, timeout=60)
    assert kept.returncode == 0 and kept.stdout.strip() == f"keeping {conf}: local_slurm.sh did not write it"
    assert conf.read_text() == foreign
