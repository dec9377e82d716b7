"""Every control of the quickstart dashboard and of ``%prune explore``, in JupyterLab in headless
Chromium: after each action (a slider key press, Undo, Reset, Refresh, the histogram's layer,
Apply, a change made from another cell) every field the page shows must agree with what the kernel says of the model,
read from a check cell's output. Each state is saved as a screenshot under
``tests/browser/artifacts/`` (for a person to look at), and the time from a slider key press
to new numbers and to a new chart is measured in the page and saved to ``latency.json``.

The latency bounds asserted here are 3x the goals (0.1 s to numbers, 0.2 s to the chart): a
shared CI box is noisy; ``benchmarks/dashboard.py`` checks the goals themselves.
"""

from __future__ import annotations

import json
import os
import statistics
from typing import Any

import pytest

from tests.browser.conftest import ARTIFACTS, SKIP, open_notebook, write_notebook

pytestmark = [pytest.mark.slow, SKIP]

GOALS = {"numbers": 0.1, "chart": 0.2}  # seconds, median, from a key press
PRESSES = 8

SETUP = """\
import json
from collections import OrderedDict

import torch
from sklearn.datasets import load_digits
from torch import nn

import prune_magic as pm
from prune_magic.engine.evaluate import format_metric

torch.manual_seed(0)
digits = load_digits()
X = torch.tensor(digits.data, dtype=torch.float32) / 16
y = torch.tensor(digits.target)
order = torch.randperm(len(X))
X_train, y_train, X_test, y_test = X[order[:1347]], y[order[:1347]], X[order[1347:]], y[order[1347:]]
model = nn.Sequential(OrderedDict(fc1=nn.Linear(64, 256), relu1=nn.ReLU(), fc2=nn.Linear(256, 128),
                                  relu2=nn.ReLU(), out=nn.Linear(128, 10)))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
for epoch in range(10):
    for batch in torch.randperm(len(X_train)).split(64):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(X_train[batch]), y_train[batch]).backward()
        optimizer.step()


@torch.no_grad()
def accuracy(model):
    return (model(X_test).argmax(1) == y_test).float().mean().item()


def truth(model, recipe=None):
    \"\"\"What the kernel says of the model (or of a dry run of ``recipe`` on it), as the views format it.\"\"\"
    result = pm.prune(model, recipe, evaluate=accuracy, dry_run=True) if recipe else None
    report = result.after if result else pm.report(model)
    metric = result.metric_after if result else accuracy(model)
    steps = [entry.step for entry in pm.history(model).entries]
    print("TRUTH " + json.dumps({"sparsity": f"{report.sparsity:.1%}", "accuracy": format_metric("accuracy", metric),
                                  "steps": steps}))
"""

CELLS = [
    "%load_ext prune_magic",
    SETUP,
    "%%prune model --eval accuracy --example-input X_test[:1]\nclip amount=0.8 scope=global",  # 2
    "truth(model)",  # 3
    "%prune undo model",  # 4
    'pm.prune(model, "clip amount=0.3 layers=fc1")',  # 5: a later step, from another cell
    "pm.reset(model)",  # 6
    "%prune explore model --eval accuracy --levels 0.3,0.6,0.9",  # 7
    "truth(model)",  # 8
]

# Times, in the page, from a key press on the focused slider handle to the first change of the
# status ("updating…": the round trip to the kernel), of the summary's text and of the charts' src.
ARM = """() => {
  const cell = document.querySelectorAll('.jp-Notebook .jp-CodeCell')[2];
  const read = {
    ack: () => cell.querySelector('.prune-magic-status')?.innerText,  // "updating…": the kernel got the move
    numbers: () => cell.querySelector('table.prune-magic-summary')?.innerText,
    chart: () => cell.querySelector('img.prune-magic-chart')?.src,
    histogram: () => cell.querySelector('img.prune-magic-histogram')?.src,
  };
  const before = Object.fromEntries(Object.entries(read).map(([k, f]) => [k, f()]));
  const seen = {};
  let start = null;
  window.__latency = seen;
  const check = () => {
    if (start === null) return;
    const now = performance.now();
    for (const [k, f] of Object.entries(read))
      if (!(k in seen) && f() !== before[k]) seen[k] = (now - start) / 1000;
    if (Object.keys(read).every(k => k in seen)) { seen.done = true; observer.disconnect(); }
  };
  const observer = new MutationObserver(check);
  observer.observe(cell, {subtree: true, childList: true, attributes: true, characterData: true});
  document.addEventListener('keydown', () => { start = performance.now(); }, {capture: true, once: true});
}"""


def test_every_control_of_both_dashboards_agrees_with_the_model(lab, chromium) -> None:
    from playwright.sync_api import expect

    write_notebook(lab[2], "dashboards.ipynb", CELLS)
    errors: list[str] = []
    page = open_notebook(chromium, lab, "dashboards.ipynb", errors)
    cells = page.locator(".jp-Notebook .jp-CodeCell")
    ARTIFACTS.mkdir(exist_ok=True)

    def run(index: int) -> None:
        prompt = cells.nth(index).locator(".jp-InputPrompt")
        before = prompt.inner_text()
        prompt.click()
        page.keyboard.press("Control+Enter")
        expect(prompt).not_to_have_text(before)
        expect(prompt).not_to_contain_text("*")

    def truth(recipe: str | None = None, cell: int = 3) -> dict[str, Any]:
        """The kernel's account of the model: run the check cell (its source set to ask about ``recipe``)."""
        editor = cells.nth(cell).locator(".cm-content")
        editor.click()
        page.keyboard.press("Control+a")
        page.keyboard.insert_text(f"truth(model, {recipe!r})" if recipe else "truth(model)")
        page.keyboard.press("Escape")
        run(cell)
        output = cells.nth(cell).locator(".jp-OutputArea-output")
        expect(output).to_contain_text("TRUTH")
        line = next(t for t in output.inner_text().splitlines() if t.startswith("TRUTH "))
        return dict(json.loads(line.removeprefix("TRUTH ")))

    def shot(name: str, cell: int) -> None:
        cells.nth(cell).locator(".jp-OutputArea").screenshot(path=str(ARTIFACTS / f"{name}.png"))

    for index in range(4):
        run(index)
    board = cells.nth(2).locator(".jp-OutputArea-output")
    summary = board.locator("table.prune-magic-summary")
    readout = board.locator(".prune-magic-slider .widget-readout")
    line = board.locator(".prune-magic-recipe")
    status = board.locator(".prune-magic-status")
    undo, reset = board.locator("button:has-text('Undo')"), board.locator("button:has-text('Reset')")
    refresh = board.locator("button:has-text('Refresh')")

    def dashboard_agrees(kernel: dict[str, Any], measured: bool = True) -> None:
        """Every field of the dashboard says what the kernel says (waiting for a redraw in flight)."""
        expect(status).not_to_contain_text("updating")
        expect(summary.locator("tr:has-text('sparsity') td")).to_contain_text(
            f"→ {kernel['sparsity']} of all parameters"
        )
        ours = [
            s for s in kernel["steps"] if "scope=global" in s
        ]  # the cell's step (the others are later ones)
        later = len(kernel["steps"]) - len(ours)
        if ours:
            what = "is applied, under later steps" if later else "reproduces this model"
            expect(line).to_contain_text(f"{ours[-1]} {what}")
            assert float(readout.inner_text()) == float(ours[-1].split("amount=")[1].split()[0])
        else:
            expect(line).to_contain_text("this cell's recipe is not applied now")
            assert float(readout.inner_text()) == 0.0
        if later:
            expect(line).to_contain_text(f"changed since by {later} later step(s)")
        else:
            expect(line).not_to_contain_text("later step")
        accuracy = summary.locator("tr:has-text('accuracy') td")
        if measured:
            expect(accuracy).to_contain_text(f"→ {kernel['accuracy']}")
            expect(refresh).to_be_hidden()
        else:  # the out-of-date notice, and the button that measures
            expect(accuracy).to_contain_text("not measured since the model changed: Refresh measures it")
            expect(refresh).to_be_visible()
        for button in (undo, reset):  # enabled exactly when there is a step to undo
            (expect(button).to_be_enabled if kernel["steps"] else expect(button).to_be_disabled)()
        expect(status).not_to_contain_text("Error")

    dashboard_agrees(truth())
    expect(line).not_to_contain_text("the cell says")
    shot("dashboard-1-cell", 2)

    # slider key presses, timed in the page: 0.8 -> 0.81 -> ... (every press a new value)
    latencies: list[dict[str, float]] = []
    handle = board.locator(".prune-magic-slider .noUi-handle")
    handle.focus()
    for _ in range(PRESSES):
        page.evaluate(ARM)
        page.keyboard.press("ArrowRight")
        page.wait_for_function("window.__latency.done === true", timeout=30_000)
        latencies.append(page.evaluate("window.__latency"))
        expect(status).not_to_contain_text("updating")
    medians = {part: statistics.median(t[part] for t in latencies) for part in GOALS}
    record = {
        "presses": latencies,
        "median_s": medians,
        "goal_s": GOALS,
        "loadavg": os.getloadavg(),
    }
    (ARTIFACTS / "latency.json").write_text(json.dumps(record, indent=1))
    print(f"\nkey press -> numbers {medians['numbers']:.3f} s, chart {medians['chart']:.3f} s (median)")

    kernel = truth()
    dashboard_agrees(kernel)
    assert kernel["steps"] == [f"clip amount={0.8 + PRESSES / 100:g} scope=global"]
    expect(line).to_contain_text("the cell says clip amount=0.8 scope=global")
    expect(board.locator(".prune-magic-copy textarea")).to_have_value(kernel["steps"][0])
    histogram = board.locator("img.prune-magic-histogram")
    drawn = histogram.get_attribute("src")
    board.locator(".prune-magic-layer select").select_option(label="fc2 · Linear 128×256")
    expect(histogram).not_to_have_attribute("src", drawn)  # the other layer's |w|, with the cut
    shot("dashboard-2-moved", 2)

    undo.click()
    expect(status).to_contain_text("undid 'clip amount=0.88 scope=global'")
    dashboard_agrees(truth())
    shot("dashboard-3-undo", 2)

    handle.focus()
    page.keyboard.press("End")  # the slider applies the recipe again, at 0.99
    expect(line).to_contain_text("clip amount=0.99 scope=global reproduces this model")
    dashboard_agrees(truth())
    reset.click()
    expect(status).to_contain_text("reset: undid 1 step(s)")
    dashboard_agrees(truth())
    shot("dashboard-4-reset", 2)

    # changes made from other cells: undo, a later step (the metric is then unknown), reset
    handle.focus()
    page.keyboard.press("End")
    expect(line).to_contain_text("clip amount=0.99 scope=global reproduces this model")
    run(4)  # %prune undo model
    dashboard_agrees(truth())
    handle.focus()
    page.keyboard.press("End")
    expect(line).to_contain_text("clip amount=0.99 scope=global reproduces this model")
    run(5)  # pm.prune(model, "clip amount=0.3 layers=fc1")
    dashboard_agrees(truth(), measured=False)
    shot("dashboard-5-changed-elsewhere", 2)
    refresh.click()
    dashboard_agrees(truth())
    run(6)  # pm.reset(model)
    dashboard_agrees(truth())

    # the explorer
    run(7)
    explorer = cells.nth(7).locator(".jp-OutputArea-output")
    measured = explorer.locator(".prune-magic-explore-measured")
    recipe = explorer.locator(".prune-magic-explore-recipe")
    notice = explorer.locator(".prune-magic-explore-notice")
    explore_status = explorer.locator(".prune-magic-explore-status")
    apply, again = (
        explorer.locator("button:has-text('Apply')"),
        explorer.locator("button:has-text('Refresh')"),
    )

    def explorer_agrees(changed: bool = False) -> None:
        """The measured line is what a dry run of the shown recipe on the model gives now."""
        expect(explore_status).not_to_contain_text("measuring")
        kernel = truth(recipe.inner_text().strip(), cell=8)
        expect(measured).to_contain_text(f"measured accuracy: {kernel['accuracy']}")
        expect(measured).to_contain_text(f"{kernel['sparsity']} of all parameters")
        expect(again).to_be_hidden()
        expect(apply).to_be_enabled()
        (expect(notice).to_contain_text if changed else expect(notice).not_to_contain_text)(
            "changed since the sweep"
        )

    explorer_agrees()
    expect(explorer.locator(".prune-magic-overall .widget-readout")).to_have_text("50%")
    shot("explore-1-cell", 7)
    first = measured.inner_text()
    explorer.locator(".prune-magic-overall .noUi-handle").focus()
    page.keyboard.press("ArrowRight")  # 51% overall
    expect(explorer.locator(".prune-magic-overall .widget-readout")).to_have_text("51%")
    expect(measured).not_to_have_text(first)
    explorer_agrees()
    fc1 = explorer.locator(".prune-magic-layer-slider").first
    fc1.locator(".noUi-handle").focus()
    page.keyboard.press("End")  # pins fc1 at 99%
    expect(recipe).to_contain_text("clip amount=0.99 layers=fc1")
    explorer_agrees()
    shot("explore-2-moved", 7)
    lines = recipe.inner_text().strip().splitlines()
    apply.click()
    expect(explore_status).to_contain_text(f"applied as {len(lines)} step(s)")
    kernel = truth(cell=8)
    assert kernel["steps"] == lines
    expect(measured).to_contain_text(f"{kernel['sparsity']} of all parameters")
    expect(measured).to_contain_text(f"measured accuracy: {kernel['accuracy']}")
    expect(notice).not_to_contain_text("changed since the sweep")
    shot("explore-3-applied", 7)

    run(4)  # %prune undo model (one of the applied steps): the explorer is out of date
    expect(measured).to_contain_text("not measured since model changed: Refresh measures")
    expect(notice).to_contain_text("model changed since the sweep")
    expect(again).to_be_visible()
    expect(explore_status).not_to_contain_text("applied as")
    shot("explore-4-changed-elsewhere", 7)
    again.click()
    explorer_agrees(changed=True)
    run(6)  # pm.reset(model): the model the sweep measured again
    expect(notice).not_to_contain_text("changed since the sweep")
    again.click()
    explorer_agrees()
    dashboard_agrees(truth())  # the %%prune dashboard followed all of it too
    page.screenshot(path=str(ARTIFACTS / "dashboards.png"), full_page=True)
    page.close()
    assert not errors, errors
    for part, goal in GOALS.items():  # 3x the goal: a regression, not the noise of a shared box
        assert medians[part] <= 3 * goal, f"key press -> {part}: median {medians[part]:.3f} s > 3 x {goal} s"
