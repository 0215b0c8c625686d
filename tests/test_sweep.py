"""The sweep runner: grid files, the local launcher end to end, resume after a failure, the manifest, one run of a
cell at a time, the data-fetch lock, and the same grid through a real SLURM where one runs here."""
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import REPO, write_mnist_layout
from hardness import data, sweep
from hardness.sweep import GridError, cell_lock, cell_status, load_grid, read_state, render_flags, run_cell, run_local

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
        sweep.write_state(cell, state="running")
        assert cell_status(cell, queued=None)["state"] == "running"         # the lock is held: alive
    assert cell_status(cell, queued=None)["state"] == "lost"                # nobody holds it: lost, run again
    assert cell in sweep.to_run(grid.stages[0])


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
