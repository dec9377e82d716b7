"""Every tutorial runs top to bottom in a fresh kernel, with no error, and so does every exercise as a
student who typed the solution's answers into the student version would run it."""

from __future__ import annotations

import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.classroom import answered, solution_answers

ROOT = Path(__file__).parents[1] / "notebooks"
ALL = sorted(ROOT.rglob("*.ipynb"))
TUTORIALS = sorted(ROOT.glob("*.ipynb"))
STUDENT = sorted((ROOT / "exercises").glob("*.ipynb"))
SOLUTIONS = sorted((ROOT / "exercises" / "solutions").glob("*.ipynb"))


def read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def test_there_is_a_quickstart_and_four_exercises() -> None:
    assert any(p.name == "01-quickstart.ipynb" for p in TUTORIALS)
    assert len(SOLUTIONS) >= 4
    assert [p.name for p in STUDENT] == [p.name for p in SOLUTIONS]


@pytest.mark.parametrize("path", ALL, ids=lambda p: str(p.relative_to(ROOT)))
def test_notebooks_are_stored_without_outputs(path: Path) -> None:
    nb = read(path)
    stale = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not stale, f"{path.name}: cells {stale} carry outputs; clear them before committing"


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.name)
def test_tutorials_state_their_goal_and_run_time(path: Path) -> None:
    first = read(path).cells[0].source
    assert "**Goal:**" in first and "**Run time:**" in first


@pytest.mark.parametrize("student", STUDENT, ids=lambda p: p.name)
def test_student_versions_carry_the_solutions_checks_and_no_answers(student: Path) -> None:
    solution = read(ROOT / "exercises" / "solutions" / student.name)
    mine = read(student)

    def checks(nb: nbformat.NotebookNode) -> list[str]:
        return [c.source for c in nb.cells if "check" in c.metadata.get("tags", [])]

    assert checks(mine) == checks(solution) and checks(mine)
    answers = [c.source for c in mine.cells if c.metadata.get("nbgrader", {}).get("solution")]
    assert answers and all("# YOUR CODE HERE" in a and "BEGIN SOLUTION" not in a for a in answers)
    assert [c.metadata["nbgrader"]["grade_id"] for c in mine.cells] == [
        c.metadata["nbgrader"]["grade_id"] for c in solution.cells
    ]


MINUTES, GIB = 2, 1  # Binder-sized budgets: each notebook runs in under 2 minutes and 1 GB
PEAK = "import resource\nprint('peak-rss-kib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"


@pytest.mark.slow
@pytest.mark.parametrize("path", TUTORIALS + SOLUTIONS, ids=lambda p: str(p.relative_to(ROOT)))
def test_notebook_runs_without_errors(path: Path) -> None:
    if path in SOLUTIONS:  # the student version, answered: it must not lack what the solution has
        nb = answered(read(ROOT / "exercises" / path.name), solution_answers(path.name))
    else:
        nb = read(path)
    nb.cells.append(nbformat.v4.new_code_cell(PEAK))  # the kernel's own peak memory, read last
    started = time.perf_counter()
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    seconds = time.perf_counter() - started
    peak = int(nb.cells.pop().outputs[0]["text"].split()[1]) * 1024
    print(f"{path.relative_to(ROOT)}: {seconds:.0f} s, peak {peak / 2**20:.0f} MiB")  # shown by pytest -s
    assert seconds < 60 * MINUTES and peak < GIB * 2**30
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    if path in SOLUTIONS:  # every check passes
        verdicts = [
            o.text
            for c in nb.cells
            if "check" in c.metadata.get("tags", [])
            for o in c.outputs
            if "text" in o
        ]
        assert verdicts and all(v.startswith("✓") for v in verdicts), verdicts
    else:
        assert any("image/png" in o.get("data", {}) for o in outputs), (
            "a tutorial should draw at least one figure"
        )
