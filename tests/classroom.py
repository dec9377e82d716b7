"""What a student does to an exercise notebook: type an answer where it says `# YOUR CODE HERE`."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import nbformat

EXERCISES = Path(__file__).parents[1] / "notebooks" / "exercises"
STUDENT = sorted(EXERCISES.glob("*.ipynb"))
STUB = re.compile(r"^([ \t]*)# YOUR CODE HERE\n[ \t]*raise NotImplementedError\(\)$", re.M)
SOLUTION = re.compile(r"^[ \t]*### BEGIN SOLUTION\n(.*?)^[ \t]*### END SOLUTION\n?", re.M | re.S)


def answer_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution")]


def solution_answers(name: str) -> dict[str, str]:
    """grade_id -> the code between a solution's BEGIN and END SOLUTION markers, dedented."""
    nb = nbformat.read(EXERCISES / "solutions" / name, as_version=4)
    return {
        c.metadata.nbgrader.grade_id: textwrap.dedent(SOLUTION.search(c.source).group(1))  # type: ignore[union-attr]
        for c in answer_cells(nb)
    }


def answered(nb: nbformat.NotebookNode, answers: dict[str, str]) -> nbformat.NotebookNode:
    """A copy of a student notebook with each answer typed in place of its stub, at its indent."""
    nb = nbformat.from_dict(nb)
    for cell in answer_cells(nb):
        code = answers[cell.metadata.nbgrader.grade_id]
        match = STUB.search(cell.source)
        assert match, f"{cell.metadata.nbgrader.grade_id}: no `# YOUR CODE HERE` stub"
        typed = textwrap.indent(code.rstrip("\n"), match.group(1))
        cell.source = cell.source[: match.start()] + typed + cell.source[match.end() :]
    return nb
