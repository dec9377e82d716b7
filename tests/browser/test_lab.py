"""One real-browser smoke test: JupyterLab + headless Chromium, as a student would use it.

It checks what only a real frontend can: JupyterLab sends the cell id, so editing and
re-running a %%prune cell replaces its previous run; and the output renders (summary,
chart image) without errors. Needs Debian's chromium (`.ci/run` installs it); without it
the test is skipped, unless PRUNE_MAGIC_BROWSER=required (as in CI), where it fails.
"""

from __future__ import annotations

import pytest

from tests.browser.conftest import ARTIFACTS, SKIP, open_notebook, write_notebook

pytestmark = [pytest.mark.slow, SKIP]

CELLS = [
    "%load_ext prune_magic",
    "import torch\nfrom torch import nn\nimport prune_magic as pm\ntorch.manual_seed(0)\n"
    "model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))\nx = torch.randn(64, 64)\n"
    "y = model(x).argmax(1)",
    "%%prune model --data (x,y)\nclip amount=0.5 scope=global",
    "print('steps:', len(pm.history(model)), 'sparsity:', round(pm.report(model).sparsity, 2))",
    "student = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))\nstudent.load_state_dict(model.state_dict())",
    "%%prune student --data (x,y) --train (x,y)\nclip amount=0.8 exclude=2\nfinetune epochs=3",
]


def test_rerunning_an_edited_cell_in_jupyterlab_does_not_compound(lab, chromium) -> None:
    from playwright.sync_api import expect

    write_notebook(lab[2], "smoke.ipynb", CELLS)
    errors: list[str] = []
    page = open_notebook(chromium, lab, "smoke.ipynb", errors)
    page.locator(".lm-MenuBar-itemLabel:has-text('Run')").click()
    page.locator(".lm-Menu-item[data-command='runmenu:run-all']").click()
    cells = page.locator(".jp-Notebook .jp-CodeCell")
    expect(cells.nth(3).locator(".jp-OutputArea-output")).to_contain_text("steps: 1 sparsity: 0.49")
    output = cells.nth(2).locator(".jp-OutputArea-output")
    expect(output.locator("table.prune-magic-summary")).to_contain_text("accuracy")
    chart = output.locator("img.prune-magic-chart")
    expect(chart).to_be_visible()
    first_chart = chart.get_attribute("src")
    accuracy = output.locator("table.prune-magic-summary tr:has-text('accuracy') td")
    first_accuracy = accuracy.inner_text()

    # the dashboard: one key press on the slider re-applies the recipe at 0.51
    output.locator(".prune-magic-slider .noUi-handle").focus()
    page.keyboard.press("ArrowRight")
    expect(output.locator(".prune-magic-recipe")).to_contain_text("clip amount=0.51 scope=global")
    expect(output.locator(".prune-magic-status")).not_to_contain_text("updating")
    expect(chart).not_to_have_attribute("src", first_chart)
    page.keyboard.press("End")  # to the slider's end: 99% of the weights go, accuracy must move
    expect(output.locator(".prune-magic-recipe")).to_contain_text("clip amount=0.99 scope=global")
    expect(output.locator(".prune-magic-status")).not_to_contain_text("updating")
    expect(accuracy).not_to_have_text(first_accuracy)
    page.keyboard.press("Escape")

    # a recipe that trains: the output shows the recovery curve beside the per-layer chart
    trained = cells.nth(5).locator(".jp-OutputArea")  # (the progress bar's output is empty now)
    expect(trained.locator("table.prune-magic-summary")).to_contain_text("finetune epochs=3: 3 epochs")
    expect(trained.locator("img.prune-magic-training")).to_be_visible()
    trained.scroll_into_view_if_needed()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "lab-recover.png"), full_page=True)

    # edit the %%prune cell (0.5 -> 0.8) and run it again, then the check cell
    editor = cells.nth(2).locator(".cm-content")
    editor.click()
    page.keyboard.press("Control+End")
    for _ in range(len("scope=global")):
        page.keyboard.press("ArrowLeft")
    for _ in range(4):
        page.keyboard.press("Backspace")
    page.keyboard.type("0.8 ")
    page.keyboard.press("Shift+Enter")
    expect(output).to_contain_text("re-run: first undid the 1 step(s) this cell applied last time")
    expect(output.locator(".prune-magic-recipe")).to_contain_text("clip amount=0.8 scope=global")
    page.keyboard.press("Shift+Enter")  # the check cell is selected now
    expect(cells.nth(3).locator(".jp-OutputArea-output")).to_contain_text("steps: 1 sparsity: 0.79")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "lab.png"), full_page=True)  # kept for a person to look at
    page.close()
    assert not errors, errors
