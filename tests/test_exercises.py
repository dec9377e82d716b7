"""The exercises as a class meets them: nbgrader writes the student versions from the solutions,
and grades them with the commands of the README's section for teachers."""

from __future__ import annotations

import csv
import filecmp
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from tests.classroom import STUDENT, answered, solution_answers

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"


def run(command: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", command],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def with_nbgrader_on_path() -> dict[str, str]:
    # nbgrader runs `alembic` from PATH: this interpreter's scripts first
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def test_the_student_versions_are_what_nbgrader_writes_from_the_solutions(tmp_path) -> None:
    run(f"scripts/exercises {tmp_path}", cwd=ROOT, env=with_nbgrader_on_path())
    written = sorted(p.name for p in tmp_path.glob("*.ipynb"))
    assert written == [p.name for p in STUDENT]
    stale = [
        name for name in written if not filecmp.cmp(tmp_path / name, STUDENT[0].parent / name, shallow=False)
    ]
    assert not stale, f"{stale} differ from their solutions: edit the solutions, then run scripts/exercises"


# A plausible wrong answer per exercise, typed where the student version says `# YOUR CODE HERE`
WRONG = {
    "01-clip-by-hand-clip": "return torch.where(weights < threshold, torch.zeros_like(weights), weights)\n",
    "02-largest-amount-amount": """\
baseline = accuracy(model)
answer = 0.0
for amount in [a / 100 for a in range(5, 100, 5)]:
    result = pm.prune(model, f"clip amount={amount} scope=global", evaluate=accuracy, dry_run=True)
    if result.metric_after >= baseline - 1:  # "within 1 point" read as 1, not 0.01
        answer = amount
""",
    "03-protect-layers-protect": """\
budget = sens.budget(0.01)
protected = [max(budget, key=budget.get)]  # the layer that takes the most, not the least
""",
    "04-mac-budget-mac": """\
pm.prune(cnn, "clip amount=0.6", example_input=x)  # zeros, not fewer channels
train(cnn, 2)
""",
}


def teacher_commands() -> tuple[str, str, str]:
    """The README's commands: before the students' turn, the students' own, after it."""
    block = re.search(r"### For teachers.*?```bash\n(.*?)```", README.read_text(), flags=re.S)
    assert block, "README: no bash block in the section for teachers"
    lines = block.group(1).splitlines()
    turn = next(i for i, line in enumerate(lines) if line.startswith("# each student"))
    students = " ".join(line.lstrip("# ") for line in lines if line.startswith("#"))

    def commands(part: list[str]) -> str:
        return "\n".join(line.split("  #")[0].strip() for line in part if not line.startswith("#"))

    return commands(lines[:turn]), students, commands(lines[turn:])


@pytest.mark.slow
def test_nbgrader_grades_the_exercises_as_a_teacher_would(tmp_path) -> None:
    before, students, after = teacher_commands()
    fetch, submit = (
        "nbgrader fetch_assignment exercises --course pruning",
        "nbgrader submit exercises --course pruning",
    )
    assert fetch in students and submit in students
    # a private exchange, not /srv/nbgrader/exchange: nbgrader reads JUPYTER_CONFIG_DIR's settings too
    exchange, config = tmp_path / "exchange", tmp_path / "jupyter"
    exchange.mkdir(mode=0o777)
    config.mkdir()
    (config / "nbgrader_config.py").write_text(f"c = get_config()\nc.Exchange.root = {str(exchange)!r}\n")
    env = {**with_nbgrader_on_path(), "JUPYTER_CONFIG_DIR": str(config)}
    (tmp_path / "notebooks").symlink_to(ROOT / "notebooks")
    course = tmp_path / "course"
    run(before, cwd=tmp_path, env=env)

    answers = {
        "solutions": {k: v for p in STUDENT for k, v in solution_answers(p.name).items()},
        "unanswered": None,
        "wrong answers": WRONG,
    }
    scores: dict[str, dict[str, float]] = {}
    for turn, (name, typed) in enumerate(answers.items()):
        desk = tmp_path / f"student-{turn}"
        desk.mkdir()
        run(fetch, cwd=desk, env=env)
        fetched = sorted((desk / "exercises").glob("*.ipynb"))
        for path in fetched:
            nb = nbformat.read(path, as_version=4)
            assert [c.source for c in nb.cells] == [
                c.source for c in nbformat.read(STUDENT[0].parent / path.name, as_version=4).cells
            ], f"{path.name}: the released version is not the one in notebooks/exercises"
            if typed is not None:
                nbformat.write(answered(nb, typed), path)
        if name == "unanswered":  # what a student sees who checks before submitting
            shown = run(
                "nbgrader validate exercises/01-clip-by-hand.ipynb exercises/04-mac-budget.ipynb", desk, env
            )
            assert shown.count("VALIDATION FAILED ON 1 CELL(S)") == 2, shown
            assert "passes all the tests" not in shown
        run(submit, cwd=desk, env=env)
        again = (
            after
            if turn == 0
            else after.replace("collect", "collect --update").replace("autograde", "autograde --force")
        )
        started = time.perf_counter()
        log = run(again, cwd=course, env=env)
        print(f"nbgrader, {name}: collect and autograde {time.perf_counter() - started:.0f} s")
        assert "cannot be converted to a float" not in log
        scores[name] = graded(course)
        print(f"nbgrader, {name}: {scores[name]}")

    names = [p.stem for p in STUDENT]
    assert scores["solutions"] == dict.fromkeys(names, 1.0)
    assert scores["unanswered"] == dict.fromkeys(names, 0.0)
    assert scores["wrong answers"] == dict.fromkeys(names, 0.0)
    # a wrong answer fails its check cell with a one-line hint, not a traceback
    (student,) = [p.name for p in (course / "autograded").iterdir()]
    for path in sorted((course / "autograded" / student / "exercises").glob("*.ipynb")):
        checks = [c for c in nbformat.read(path, as_version=4).cells if "check" in c.metadata.get("tags", [])]
        errors = [o for c in checks for o in c.outputs if o.output_type == "error"]
        assert errors and all(o.ename == "WrongAnswer" and len(o.traceback) == 1 for o in errors), path.name
        assert all(o.traceback[0].startswith("✗ ") for o in errors), [o.traceback for o in errors]


def graded(course: Path) -> dict[str, float]:
    """Each notebook's score in the gradebook; `nbgrader export`'s grades.csv has their sum."""
    from nbgrader.api import Gradebook

    (student,) = [p.name for p in (course / "submitted").iterdir()]
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        submission = gradebook.find_submission("exercises", student)
        scores = {nb.name: nb.score for nb in submission.notebooks}
    with (course / "grades.csv").open() as f:
        (row,) = [r for r in csv.DictReader(f) if r["assignment"] == "exercises"]
    assert float(row["raw_score"]) == sum(scores.values())
    return scores
