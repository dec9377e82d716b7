"""scripts/setup and scripts/lab, run against stand-ins for .venv's python and jupyter."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUB = '#!/usr/bin/env bash\necho "$(basename "$0") $*" >> "$(dirname "$0")/../calls"\n'


def checkout(tmp_path: Path) -> Path:
    """A copy of the scripts and what setup reads, with a .venv whose python and jupyter log their calls."""
    for name in ("scripts/setup", "scripts/lab", "pyproject.toml", "requirements/constraints.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, tmp_path / name)
    for tool in ("python", "jupyter"):
        path = tmp_path / ".venv/bin" / tool
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(STUB)
        path.chmod(0o755)
    return tmp_path


def calls(root: Path) -> list[str]:
    log = root / ".venv/calls"
    lines = log.read_text().splitlines() if log.exists() else []
    log.unlink(missing_ok=True)
    return lines


def test_setup_runs_pip_only_when_something_it_reads_changed(tmp_path) -> None:
    root = checkout(tmp_path)
    setup = [str(root / "scripts/setup"), "test"]
    first = subprocess.run(setup, capture_output=True, text=True, check=True)
    assert sum("-m pip install" in c for c in calls(root)) == 2  # torch, then the package
    assert "installed prune_magic[test]: .venv is " in first.stdout
    again = subprocess.run(setup, capture_output=True, text=True, check=True)
    assert not [c for c in calls(root) if "pip" in c] and "skipping pip" in again.stdout
    with (root / "pyproject.toml").open("a") as f:
        f.write("\n# a changed dependency\n")
    subprocess.run(setup, capture_output=True, text=True, check=True)
    assert any("-m pip install" in c for c in calls(root))


def test_lab_prints_urls_that_open_the_quickstart_and_skips_the_news_prompt(tmp_path) -> None:
    root = checkout(tmp_path)
    subprocess.run([str(root / "scripts/lab"), "--no-browser"], capture_output=True, text=True, check=True)
    jupyter = [c for c in calls(root) if c.startswith("jupyter ")]
    assert len(jupyter) == 1
    args = jupyter[0].split()
    # jupyter_server prints its URLs with the default URL: the notebook, not the Launcher at /lab
    assert "--LabApp.default_url=/lab/tree/notebooks/01-quickstart.ipynb" in args
    assert "--LabApp.news_url=None" in args  # (the page config then says news is disabled)
    assert args[-1] == "notebooks/01-quickstart.ipynb" and "--no-browser" in args
