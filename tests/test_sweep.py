"""The sweep runner: grid files, the local launcher end to end, resume after a failure, the manifest, one run of a
cell at a time, the data-fetch lock, stopping a local sweep, SLURM's answers read with stand-in commands, and the
same grids through a real one-node SLURM (which CI starts; HARDNESS_REQUIRE_SLURM=1 makes its absence a failure)."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import REPO, write_mnist_layout
from hardness import data, sweep
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


def test_sweep_script_dry_run_and_status(tmp_path):
    path = two_stage_grid(tmp_path)
    done = subprocess.run([sys.executable, str(REPO / "sweep.py"), "--grid", str(path), "--dry_run", "--results_dir",
                           str(tmp_path / "R")], capture_output=True, text=True, cwd=tmp_path)
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0 and len(lines) == 5 and lines[0].startswith(f"python {FAKE} --results_dir")
    done = subprocess.run([sys.executable, str(REPO / "sweep.py"), "--grid", str(path), "--status", "--results_dir",
                           str(tmp_path / "R")], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.startswith("tiny: 5 cell(s): 5 pending")
    done = subprocess.run([sys.executable, str(REPO / "sweep.py"), "--grid", str(tmp_path / "none.yaml")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 1 and done.stderr.strip().count("\n") == 0 and "not found" in done.stderr


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
    assert done.returncode == 1 and done.stderr.strip().count("\n") == 0, done.stderr
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
    wait_until(lambda: running_keys(manifest) == {"values/value-2", "values/value-3"})
    cell_pids = [int(line.split()[1]) for line in runs.read_text().splitlines() if line.split()[0] in ("2", "3")]
    assert len(cell_pids) == 2 and all(alive(pid) for pid in cell_pids)
    sweep_process.send_signal(signal.SIGTERM)
    _, stderr = sweep_process.communicate(timeout=60)
    assert sweep_process.returncode == 1 and stderr.strip().count("\n") == 0, stderr
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
        pytest.skip("sinfo is absent: no SLURM on this machine (scripts/local_slurm.sh start installs one)")
    if slurm_controller_answers():
        yield
        return
    started = subprocess.run(["bash", str(REPO / "scripts/local_slurm.sh"), "start"], capture_output=True, text=True,
                             timeout=300)
    assert started.returncode == 0, "scripts/local_slurm.sh start failed: " + started.stderr
    yield
    subprocess.run(["bash", str(REPO / "scripts/local_slurm.sh"), "stop"], capture_output=True, timeout=60)


def test_the_same_grid_through_slurm(tmp_path, local_slurm):
    path = two_stage_grid(tmp_path)
    done = subprocess.run([sys.executable, str(REPO / "sweep.py"), "--grid", str(path), "--launcher", "slurm",
                           "--cpus_per_task", "1", "--mem_gb", "1", "--timeout_min", "10", "--results_dir",
                           str(tmp_path / "R")], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "sacct" not in done.stderr                                       # the one warning silenced
    manifest = json.loads((tmp_path / "R/sweeps/tiny/manifest.json").read_text())["cells"]
    assert len(manifest) == 5 and all(cell["state"] == "done" and cell["job_id"] for cell in manifest.values())
    jobs = {cell["job_id"].split("_")[0] for cell in manifest.values()}
    assert len(jobs) == 3                                                   # one job array per stage
