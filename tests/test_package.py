"""The installable package: `pip install .` puts `hardness` and `neural_networks` on a path of their own, and the
score functions import and compute from a folder that is not the repository."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

USE_FROM_ELSEWHERE = """
import torch, hardness, neural_networks
from hardness.dynamics import area_under_margin, correct_predictions, forgetting_events
# 2 samples, 2 classes, 2 epochs: sample 0 has margins 1 then 3 (AUM 2), sample 1 margins 2 then -2 (AUM 0, forgotten once)
logits = torch.tensor([[[1.0, 0.0], [0.0, 2.0]], [[3.0, 0.0], [0.0, -2.0]]])
labels = torch.tensor([0, 1])
print(hardness.__file__, neural_networks.__file__)
print(area_under_margin(logits, labels).tolist(), forgetting_events(correct_predictions(logits, labels)).tolist())
"""


def test_pip_installs_the_package_that_imports_from_another_folder(tmp_path):
    source = tmp_path / "source"                        # a copy, so the build leaves nothing in the repository
    shutil.copytree(ROOT / "hardness", source / "hardness", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "neural_networks.py"):
        shutil.copy(ROOT / name, source / name)
    target = tmp_path / "installed"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(source)], check=True)
    assert (target / "hardness" / "dynamics.py").is_file() and (target / "neural_networks.py").is_file()
    assert any(target.glob("hard_sample_toolkit-*.dist-info"))

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    output = subprocess.run([sys.executable, "-c", USE_FROM_ELSEWHERE], cwd=elsewhere, env=env, check=True,
                            capture_output=True, text=True).stdout.splitlines()
    assert output[0].split() == [str(target / "hardness" / "__init__.py"), str(target / "neural_networks.py")]
    aum, forgetting = output[1].split("] [")
    assert [float(v) for v in aum.strip("[]").split(",")] == [2.0, 0.0]
    assert [float(v) for v in forgetting.strip("[]").split(",")] == [0.0, 1.0]   # sample 1: right, then wrong


def test_an_installed_copy_says_in_one_line_that_sweeps_need_the_repository(tmp_path):
    target = tmp_path / "installed"
    shutil.copytree(ROOT / "hardness", target / "hardness", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "neural_networks.py", target)
    code = "from hardness.sweep import load_grid; load_grid('grid.yaml')"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(target)},
                            capture_output=True, text=True)
    assert result.returncode != 0
    assert "run sweep.py from a clone of the repository" in result.stderr.strip().splitlines()[-1]
