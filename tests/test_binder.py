"""Binder's image, built without Docker the way repo2docker builds it: its base environment (from
repo2docker's own lock file), then `pip install -r binder/requirements.txt`, then `binder/postBuild`.
`pip check` must be clean, and every tutorial and exercise solution must run in that environment,
within Binder-sized budgets."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
BINDER = ROOT / "binder"
NOTEBOOKS = ROOT / "notebooks"
MINUTES, GIB = 2, 1  # each notebook runs in under 2 minutes and 1 GB, as on Binder's machines


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


# repo2docker's base environment is a conda lock file; these of its packages have another name on PyPI
CONDA_TO_PYPI = {
    "brotli-python": "brotli",
    "jupyterhub-base": "jupyterhub",
    "nbconvert-core": "nbconvert",
    "python-fastjsonschema": "fastjsonschema",
}


def base_environment() -> list[str]:
    """The Python packages of the environment repo2docker starts from for Python 3.11 (JupyterLab,
    Notebook, ipykernel, JupyterHub and their dependencies), pinned as its lock file pins them."""
    spec = importlib.util.find_spec("repo2docker")  # found, not imported: it warns on import
    assert spec and spec.submodule_search_locations
    conda = Path(spec.submodule_search_locations[0]) / "buildpacks" / "conda"
    lock = conda / "environment.py-3.11-linux-64.lock"
    pins = []
    for url in re.findall(r"^https://\S+", lock.read_text(), flags=re.M):
        name, version, build = re.sub(r"\.(conda|tar\.bz2)$", "", url.split("#")[0].rsplit("/", 1)[1]).rsplit(
            "-", 2
        )
        python_package = build.startswith("py")  # noarch Python (pyh...) or built for CPython (py311...)
        if python_package and name not in {"pip", "setuptools", "wheel"}:
            pins.append(f"{CONDA_TO_PYPI.get(name, name)}=={version}")
    assert any(p.startswith("jupyterlab==") for p in pins) and any(p.startswith("notebook==") for p in pins)
    return pins


class BinderEnv:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.python = root / "bin" / "python"
        self.env = {
            **{k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "PYTHONPATH"}},
            "PATH": f"{root / 'bin'}{os.pathsep}{os.environ['PATH']}",  # as repo2docker's image has it
        }
        self.before_post_build: set[str] = set()

    def pip(self, *args: str) -> str:
        done = subprocess.run(
            [str(self.python), "-m", "pip", "--disable-pip-version-check", *args],
            env=self.env, capture_output=True, text=True, timeout=1800,
        )  # fmt: skip
        assert done.returncode == 0, f"pip {' '.join(args)}\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def packages(self) -> set[str]:
        return {f"{p['name'].lower()}=={p['version']}" for p in json.loads(self.pip("list", "--format=json"))}


@pytest.fixture(scope="module")
def binder(tmp_path_factory: pytest.TempPathFactory) -> BinderEnv:
    """A fresh environment built as repo2docker builds the image: once for this module."""
    tmp = tmp_path_factory.mktemp("binder")
    venv.create(tmp / "env", with_pip=True)
    env = BinderEnv(tmp / "env")
    (tmp / "base.txt").write_text("\n".join(base_environment()))
    env.pip("install", "--quiet", "-r", str(tmp / "base.txt"))
    # the PyTorch CPU index is not reachable from this machine: everything else comes from PyPI
    lines = (BINDER / "requirements.txt").read_text().splitlines()
    (tmp / "requirements.txt").write_text(
        "\n".join(x for x in lines if not x.startswith("--extra-index-url"))
    )
    env.pip("install", "--quiet", "-r", str(tmp / "requirements.txt"))
    env.before_post_build = env.packages()
    subprocess.run(
        ["./binder/postBuild"], cwd=ROOT, env=env.env, check=True, timeout=600, capture_output=True
    )
    return env


@pytest.mark.slow
def test_the_binder_image_has_every_dependency_and_no_conflicts(binder: BinderEnv) -> None:
    assert "No broken requirements found." in binder.pip("check")
    added = {p.split("==")[0] for p in binder.packages() - binder.before_post_build}
    assert added == {"prune-magic"}, (
        f"postBuild had to install {added - {'prune-magic'}}: pin them in binder/requirements.txt"
    )
    code = "import prune_magic as pm, torch; print(pm.prune(torch.nn.Linear(8, 8), 'clip amount=0.5').steps[0].sparsity)"
    out = subprocess.run(
        [str(binder.python), "-c", code], env=binder.env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "0.5"


# Run by the Binder environment's Python: executes one notebook with its kernel, then reports the
# run time, the kernel's peak memory and where the kernel found Python and prune_magic.
EXECUTE = """
import json, sys, time
from pathlib import Path
import nbformat
from nbclient import NotebookClient
path = Path(sys.argv[1])
nb = nbformat.read(path, as_version=4)
nb.cells.append(nbformat.v4.new_code_cell(
    "import json, resource, sys, prune_magic\\n"
    "print(json.dumps([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, sys.prefix, prune_magic.__file__]))"
))
started = time.perf_counter()
NotebookClient(nb, timeout=300, kernel_name="python3", allow_errors=True,
               resources={"metadata": {"path": str(path.parent)}}).execute()
seconds = time.perf_counter() - started
peak_kib, prefix, package = json.loads(nb.cells.pop().outputs[0]["text"])
outputs = [(c.metadata.get("tags", []), o) for c in nb.cells if c.cell_type == "code" for o in c.outputs]
errors = [f"{o.ename}: {o.evalue}" for _, o in outputs if o.output_type == "error"]
checks = [o.get("text", "") for tags, o in outputs if "check" in tags]
print(json.dumps({"seconds": seconds, "peak": peak_kib * 1024, "prefix": prefix, "package": package,
                  "errors": errors, "checks": checks}))
"""
RUN_IN_BINDER = sorted(NOTEBOOKS.glob("*.ipynb")) + sorted(
    (NOTEBOOKS / "exercises" / "solutions").glob("*.ipynb")
)


@pytest.mark.slow
@pytest.mark.parametrize("path", RUN_IN_BINDER, ids=lambda p: str(p.relative_to(NOTEBOOKS)))
def test_every_tutorial_and_solution_runs_in_the_binder_image(binder: BinderEnv, path: Path) -> None:
    done = subprocess.run(
        [str(binder.python), "-c", EXECUTE, str(path)],
        env=binder.env, cwd=binder.root, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    run = json.loads(done.stdout.splitlines()[-1])
    print(
        f"Binder, {path.relative_to(NOTEBOOKS)}: {run['seconds']:.0f} s, peak {run['peak'] / 2**20:.0f} MiB"
    )
    root = binder.root.resolve()  # the kernel ran in the Binder environment, on the installed package
    assert Path(run["prefix"]).resolve() == root and Path(run["package"]).resolve().is_relative_to(root)
    assert not run["errors"], run["errors"]
    if "solutions" in path.parts:  # every check passes
        assert run["checks"] and all(text.startswith("✓") for text in run["checks"]), run["checks"]
    assert run["seconds"] < 60 * MINUTES and run["peak"] < GIB * 2**30
