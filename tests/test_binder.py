"""Binder's configuration, checked without Docker: what repo2docker would build, and that the
pinned requirements install the project in a fresh virtual environment."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
BINDER = ROOT / "binder"


def test_requirements_are_pinned_and_cpu_only() -> None:
    lines = [
        line.strip()
        for line in (BINDER / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    options = [line for line in lines if line.startswith("--")]
    packages = [line for line in lines if not line.startswith("--")]
    assert options == [
        "--extra-index-url https://download.pytorch.org/whl/cpu"
    ]  # the small CPU build of torch
    assert all("==" in p for p in packages), packages
    assert "torch==2.13.0" in packages
    assert (BINDER / "runtime.txt").read_text().strip() == "python-3.11"


def test_repo2docker_renders_a_build_that_installs_the_project() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "repo2docker", "--no-build", "--user-id", "1000", "--user-name", "jovyan", str(ROOT)],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    dockerfile = run.stdout
    assert "python=3.11" in run.stderr
    assert 'pip install --no-cache-dir -r "binder/requirements.txt"' in dockerfile
    assert "dataset-fashion-mnist" in dockerfile  # binder/apt.txt
    assert "./binder/postBuild" in dockerfile  # which installs prune_magic itself


@pytest.mark.slow
def test_a_fresh_venv_installs_the_project_from_the_binder_requirements(tmp_path) -> None:
    # the PyTorch CPU index is not reachable from this machine: everything else comes from PyPI
    lines = (BINDER / "requirements.txt").read_text().splitlines()
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("\n".join(line for line in lines if not line.startswith("--extra-index-url")))
    venv.create(tmp_path / "env", with_pip=True)
    python = tmp_path / "env" / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "-r", str(requirements)], check=True, timeout=900)
    subprocess.run([*pip, "--no-deps", str(ROOT)], check=True, timeout=300)  # what binder/postBuild does
    code = "import prune_magic as pm, torch; print(pm.prune(torch.nn.Linear(8, 8), 'clip amount=0.5').steps[0].sparsity)"
    out = subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path
    ).stdout
    assert out.strip() == "0.5"
