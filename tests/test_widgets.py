"""The dashboard, driven from Python as the browser's messages would drive it."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch

import prune_magic as pm
from prune_magic.rerun import PruneCall
from prune_magic.widgets import PruneDashboard
from tests.conftest import same_bits, state


class Histograms:
    """Every magnitude histogram a dashboard draws from now on: its cut and its note."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from prune_magic import plots

        self.cuts: list[object] = []
        self.notes: list[str] = []
        draw = plots.magnitude_histogram

        def record(h: Any, layer: str, cut: float | None = None, note: str = "") -> Any:
            self.cuts.append(cut)
            self.notes.append(note)
            return draw(h, layer, cut, note)

        monkeypatch.setattr(plots, "magnitude_histogram", record)


@pytest.fixture
def dashboard(mlp):
    x = torch.randn(128, 64)
    y = mlp(x).argmax(1)
    calls = {"n": 0, "fail": False}

    def agreement(model):
        calls["n"] += 1
        if calls["fail"]:
            raise RuntimeError("eval broke")
        return float((model(x).argmax(1) == y).float().mean())

    from prune_magic.engine.report import histogram

    start = {n: histogram(p) for n, p in mlp.named_parameters() if n.endswith("weight")}
    rerun = PruneCall(mlp, agreement, tag="cell-1")
    result = rerun("clip amount=0.5 scope=global")
    return PruneDashboard(result, "mlp", rerun, start=start), mlp, calls


def zeros(model) -> int:
    return sum(int((t.param == 0).sum()) for t in pm.select(model))


def test_moving_the_slider_reapplies_the_recipe_from_the_cells_start(dashboard) -> None:
    board, model, _ = dashboard
    total = sum(t.param.numel() for t in pm.select(model))
    chart, summary = board.image.value, board.summary.value
    slider = board.sliders[0, "amount"]
    slider.value = 0.9
    board.wait()
    assert zeros(model) == round(0.9 * total)
    assert len(pm.history(model)) == 1  # replaced, not compounded
    assert "clip amount=0.9 scope=global" in board.summary.value and board.summary.value != summary
    assert board.image.value != chart
    assert "clip amount=0.9 scope=global" in board.line.value
    slider.value = 0.2
    board.wait()
    assert zeros(model) == round(0.2 * total)  # lower than before: the cell starts from the dense model
    assert [v for v, _ in board.tried] == [0.9, 0.2]
    assert board.first is not None and board.first[0] == 0.5  # the cell's own run starts the tried chart
    from prune_magic.plots import css_width

    for image in (board.image, board.curve, board.histogram):  # shown at natural size, not stretched
        assert image.width == str(css_width(bytes(image.value))) and image.layout.max_width == "100%"
    assert (
        board.curve.value and board.curve.layout.display is None
    )  # the metric-vs-value chart, from two points on
    assert not slider.disabled and "updating" not in board.status.value  # busy state cleared


def test_an_eval_that_raises_shows_in_the_dashboard_and_keeps_the_last_good_model(dashboard) -> None:
    board, model, calls = dashboard
    good = state(model)
    calls["fail"] = True
    board.sliders[0, "amount"].value = 0.95
    board.wait()
    assert "eval broke" in board.status.value
    assert same_bits(model, good)
    assert not board.sliders[0, "amount"].disabled


def test_undo_and_reset_buttons(dashboard, mlp) -> None:
    board, model, _ = dashboard
    board.undo_button.click()
    board.wait()
    assert zeros(model) == 0 and "undid &#x27;clip amount=0.5 scope=global&#x27;" in board.status.value
    board.sliders[0, "amount"].value = 0.7
    board.wait()
    board.reset_button.click()
    board.wait()
    assert zeros(model) == 0 and "reset: undid 1 step(s)" in board.status.value


def test_static_viewers_get_text_html_and_png_beside_the_widget(dashboard) -> None:
    board, _, _ = dashboard
    bundle = board._repr_mimebundle_()
    assert {"text/plain", "text/html", "image/png", "application/vnd.jupyter.widget-view+json"} <= set(bundle)


def test_threshold_and_sigma_get_sliders_too(mlp) -> None:
    rerun = PruneCall(mlp, tag="c")
    board = PruneDashboard(rerun("clip threshold=0.02\nclip sigma=0.5 layers=out"), "mlp", rerun)
    assert set(board.sliders) == {(0, "threshold"), (1, "sigma")}
    board.sliders[1, "sigma"].value = 1.0
    board.wait()
    assert str(board.recipe).splitlines()[1] == "clip sigma=1 layers=out"


def test_the_histogram_follows_the_chosen_layer_and_the_cut(dashboard) -> None:
    board, _, _ = dashboard
    assert board.layer.options == (
        ("fc1 · Linear 256×64", "fc1.weight"),
        ("fc2 · Linear 128×256", "fc2.weight"),
        ("out · Linear 10×128", "out.weight"),
    )  # named by name, type and shape; the value stays the weight's name
    first = board.histogram.value
    board.layer.value = "fc2.weight"
    board.wait()
    assert board.histogram.value != first
    drawn = board.histogram.value
    board.sliders[0, "amount"].value = 0.9
    board.wait()
    assert board.histogram.value != drawn  # redrawn after the re-run


def test_histograms_bin_every_weight_and_mark_the_cut(mlp) -> None:
    from prune_magic.engine.report import histogram

    pm.prune(mlp, "clip amount=0.7 layers=fc1")
    hist = histogram(mlp.fc1.weight)
    assert hist.zeros + sum(hist.counts) == mlp.fc1.weight.numel()
    assert hist.zeros == round(0.7 * mlp.fc1.weight.numel())
    kept = mlp.fc1.weight.detach()[mlp.fc1.weight.detach() != 0].abs()
    assert hist.smallest_kept == float(kept.min())
    big = histogram(torch.randn(2_000_000), exact_up_to=1 << 20)
    assert big.sampled and sum(big.counts) == -(-(2_000_000 // 4096) // 16) * 4096  # every 16th block of 4096


def agreement_with(mlp):
    """An eval function: how often the model agrees with the dense mlp on 128 fixed inputs."""
    x = torch.randn(128, 64)
    y = mlp(x).argmax(1)

    def agreement(model):  # (its name is the metric's name in the view)
        return float((model(x).argmax(1) == y).float().mean())

    return agreement


def test_explore_spreads_a_global_amount_by_sensitivity_measures_and_applies(mlp) -> None:
    from prune_magic.explorer import ExploreView

    agreement = agreement_with(mlp)
    sweep = pm.sensitivity(mlp, agreement, levels=(0.3, 0.6, 0.9), stop_below=-1)
    before = state(mlp)
    view = ExploreView(sweep, "mlp", PruneCall(mlp, agreement, tag="explore"))
    # the sweep's chart and table are in the widget (a notebook shows the widget, not the static HTML)
    assert view.chart in view.box.children and bytes(view.chart.value).startswith(b"\x89PNG")
    assert view.chart.layout.display is None and "fc1 · Linear 256×64" in view.table.value
    assert view.layers["fc1"].description == "fc1 · Linear 256×64"
    sliders = [view.overall, *view.layers.values()]  # one description width, one length: in line
    assert (
        len({s.style.description_width for s in sliders}) == 1 and len({s.layout.width for s in sliders}) == 1
    )
    view.overall.value = 0.6  # returns at once: the dry run is on the view's thread
    assert view.wait(30)
    amounts = view.amounts()
    total = sum(sweep.sizes.values())
    assert sum(a * sweep.sizes[layer] for layer, a in amounts.items()) == pytest.approx(0.6 * total, rel=0.02)
    assert "estimated agreement" in view.estimate.value and "measured agreement" in view.measured.value
    assert same_bits(mlp, before)  # measuring is a dry run
    view.layers["out"].value = 0.0  # pin the output layer
    assert view.pinned == {"out": 0.0} and "layers=out" not in view.recipe()
    view.overall.value = 0.7
    assert view.layers["out"].value == 0.0
    view.apply_button.click()
    assert view.wait(30)
    steps = len(pm.history(mlp))
    assert f"applied as {steps} step(s); %prune undo mlp {steps} takes it back" in view.status.value
    assert sum(int((t.param == 0).sum()) for t in pm.select(mlp)) > 0.6 * total
    for _ in range(steps):
        pm.undo(mlp)
    assert same_bits(mlp, before)


def test_explore_measures_off_the_kernels_thread(mlp) -> None:
    import threading

    from prune_magic.explorer import ExploreView

    x = torch.randn(64, 64)
    y = mlp(x).argmax(1)
    release, measuring = threading.Event(), threading.Event()

    def agreement(model):
        if threading.current_thread() is not threading.main_thread():
            measuring.set()
            release.wait(10)
        return float((model(x).argmax(1) == y).float().mean())

    sweep = pm.sensitivity(mlp, agreement, levels=(0.3, 0.6), stop_below=-1)
    view = ExploreView(sweep, "mlp", PruneCall(mlp, agreement, tag="explore"), charts=False)
    view.overall.value = 0.4  # returns while the dry run waits on the view's thread
    assert measuring.wait(10) and view.worker.busy and "measuring" in view.status.value
    release.set()
    assert view.wait(30) and "measured agreement" in view.measured.value
    assert view.status.value == ""


def test_a_running_sweep_shows_a_progress_bar() -> None:
    from prune_magic.engine.sensitivity import Sensitivity
    from prune_magic.views import SweepView

    partial = Sensitivity("clip", (0.5, 0.9), 1.0, {"a": [0.9, None], "b": [None, None]})
    view = SweepView(partial, "m", running=True, charts=False)
    assert "<progress value='1' max='4'></progress> 1/4 points" in view._repr_mimebundle_()["text/html"]
    view.running = False
    assert "<progress" not in view._repr_mimebundle_()["text/html"]


def test_a_slider_move_evaluates_once(dashboard) -> None:
    board, _, calls = dashboard
    before = calls["n"]
    board.sliders[0, "amount"].value = 0.8
    board.wait()
    assert calls["n"] == before + 1  # the start state's metric is reused
    assert board.view.result.metric_before == 1.0


def test_a_structured_recipe_gets_a_slider_that_reshapes_the_model(cnn) -> None:
    x = torch.randn(4, 1, 8, 8)
    rerun = PruneCall(cnn, example_input=x, tag="s")
    board = PruneDashboard(rerun("structured amount=0.5"), "cnn", rerun)
    assert cnn.features[0].out_channels == 4
    assert board.result.latency() is not None  # the cell times the model (~0.5 s) ...
    board.sliders[0, "amount"].value = 0.25
    board.wait()
    assert cnn.features[0].out_channels == 6 and len(pm.history(cnn)) == 1
    assert board.result.latency() is None  # ... a slider move does not, and says so
    assert "not timed since the cell ran" in dict(board.view.summary())["latency"]
    assert "alt='width per layer'" in board.view._repr_html_()
    board.reset_button.click()
    board.wait()
    assert cnn.features[0].out_channels == 8


def test_the_plain_text_of_a_dashboard_is_the_summary_not_the_widget_repr(dashboard) -> None:
    board, _, _ = dashboard
    text = board._repr_mimebundle_()["text/plain"]
    assert "sparsity" in text and "VBox" not in text


def test_a_training_recipe_shows_its_recovery_curve_and_progress(mlp) -> None:
    x = torch.randn(256, 64)
    y = mlp(x).argmax(1)

    def agreement(model):
        return float((model(x).argmax(1) == y).float().mean())

    rerun = PruneCall(mlp, agreement, tag="cell-2", train=(x, y))
    result = rerun("clip amount=0.8 scope=global\nfinetune epochs=2")
    board = PruneDashboard(result, "mlp", rerun)
    assert board.training.layout.display is None and board.training.value
    first = board.training.value
    statuses = []
    board.status.observe(lambda change: statuses.append(change["new"]), "value")
    board.sliders[0, "amount"].value = 0.6
    board.wait()
    assert any("finetune epochs=2:" in s and "batches" in s for s in statuses)  # progress while training
    assert board.training.value != first
    assert "updating" not in board.status.value
    assert zeros(mlp) == round(0.6 * sum(t.param.numel() for t in pm.select(mlp)))


def test_the_histogram_reads_quantized_weights(mlp) -> None:
    rerun = PruneCall(mlp, tag="cell-3")
    result = rerun("clip amount=0.5\nquantize int8 backend=torch")
    board = PruneDashboard(result, "mlp", rerun)
    assert board.layer.options and board.histogram.value  # dequantized int8 weights, drawn
    assert "quantized" in board.summary.value


def test_moves_run_off_the_kernels_thread_and_the_latest_move_wins(mlp) -> None:
    import threading

    x = torch.randn(64, 64)
    release, started = threading.Event(), threading.Event()

    def slow(model):
        started.set()
        release.wait(10)
        return float((model(x) != 0).float().mean())

    rerun = PruneCall(mlp, slow, tag="cell-4")
    release.set()
    board = PruneDashboard(rerun("clip amount=0.5 scope=global"), "mlp", rerun)
    applied: list[str] = []
    original = rerun.__call__

    class Counting(PruneCall):
        def __call__(self, recipe, dry_run=False, latency=None):  # type: ignore[no-untyped-def]
            applied.append(recipe)
            return original(recipe, dry_run, latency)

    board.rerun = Counting(mlp, slow, tag="cell-4")
    release.clear()
    started.clear()
    slider = board.sliders[0, "amount"]
    slider.value = 0.6  # returns at once: the work is on the dashboard's thread
    assert started.wait(10) and board.worker.busy and "updating" in board.status.value
    for value in (0.7, 0.8, 0.9):  # moved again while busy: queued, each replacing the last
        slider.value = value
    assert board.worker.waiting == 1
    release.set()
    assert board.wait(30)
    assert [str(r).split()[1] for r in applied] == ["amount=0.6", "amount=0.9"]  # (parsed recipes)
    seen = [v for v, _ in board.tried]
    assert seen == [0.6, 0.9]
    assert zeros(mlp) == round(0.9 * sum(t.param.numel() for t in pm.select(mlp)))
    assert "updating" not in board.status.value


def test_a_cell_waits_for_a_dashboard_update_to_finish(mlp) -> None:
    import threading

    from IPython.core.interactiveshell import InteractiveShell

    from prune_magic import worker

    release = threading.Event()

    def slow(model):
        release.wait(10)
        return 1.0

    rerun = PruneCall(mlp, slow, tag="cell-5")
    release.set()
    board = PruneDashboard(rerun("clip amount=0.5 scope=global"), "mlp", rerun)
    release.clear()
    board.sliders[0, "amount"].value = 0.8
    timer = threading.Timer(0.3, release.set)
    timer.start()
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "prune_magic")
    try:
        shell.user_ns["net"] = mlp
        shell.run_cell(
            "zeros_seen = sum(int((p == 0).sum()) for n, p in net.named_parameters() if n.endswith('weight'))"
        )
    finally:
        shell.run_line_magic("unload_ext", "prune_magic")
    assert (
        shell.user_ns["zeros_seen"] == zeros(mlp) == round(0.8 * sum(t.param.numel() for t in pm.select(mlp)))
    )
    assert not board.worker.busy and worker._WORKERS


def test_the_recipe_line_has_no_float_noise_from_the_slider(dashboard) -> None:
    board, _, _ = dashboard
    board.sliders[0, "amount"].value = 0.1 + 0.2  # 0.30000000000000004, as slider steps add up
    board.wait()
    assert str(board.recipe) == "clip amount=0.3 scope=global"
    assert "clip amount=0.3 scope=global" in board.line.value


def test_the_histogram_draws_a_cut_only_for_a_recipe_that_clips(mlp, monkeypatch) -> None:

    histograms = Histograms(monkeypatch)
    pm.prune(mlp, "clip amount=0.5")  # an earlier cell clipped
    rerun = PruneCall(mlp, tag="cell-6")
    PruneDashboard(rerun("quantize bits=8"), "mlp", rerun)
    PruneDashboard(rerun("clip amount=0.7"), "mlp", PruneCall(mlp, tag="cell-7"))
    assert histograms.cuts[0] is None and isinstance(histograms.cuts[-1], float)


def test_a_structured_dashboard_histogram_and_summary_tell_widths_not_sparsity(cnn, monkeypatch) -> None:

    histograms = Histograms(monkeypatch)
    rerun = PruneCall(cnn, example_input=torch.randn(1, 1, 8, 8), tag="s")
    board = PruneDashboard(rerun("structured amount=0.5"), "cnn", rerun)
    assert histograms.notes[-1].startswith(
        "structured step: 8 → 4 outputs kept"
    )  # features.0.weight, the first
    summary = dict(board.view.summary())
    assert "sparsity" not in summary and "nonzero" not in summary
    assert summary["widths"].startswith("features.0 8→4, features.3 16→8")


def shows_the_model(board, model) -> None:
    """Every field of the dashboard agrees with the model as it is now."""
    import html

    report = pm.report(model)
    drawn = board.view.result.after
    assert [(r.name, r.nonzero) for r in drawn.rows] == [(r.name, r.nonzero) for r in report.rows]
    assert f"{report.sparsity:.1%}" in board.summary.value
    entries = [e for e in pm.history(model).entries if e.tag == board.rerun.tag]
    slider = board.sliders[0, "amount"]
    if entries:
        assert html.escape(entries[-1].step) in board.line.value and (
            "reproduces this model" in board.line.value or "under later steps" in board.line.value
        )
        assert slider.value == pytest.approx(float(entries[-1].step.split("amount=")[1].split()[0]))
    else:
        assert "not applied" in board.line.value and slider.value == 0.0
    assert "color:#b00" not in board.status.value
    assert not board.stale


def test_after_undo_every_field_describes_the_model_and_reset_is_disabled_not_an_error(
    dashboard, monkeypatch
) -> None:

    board, model, calls = dashboard
    board.sliders[0, "amount"].value = 0.99
    board.wait()
    chart = board.image.value
    histograms = Histograms(monkeypatch)
    measured = calls["n"]
    board.undo_button.click()
    board.wait()
    shows_the_model(board, model)
    assert zeros(model) == 0 and "undid" in board.status.value
    assert board.image.value != chart and histograms.cuts[-1] is None  # the bar chart redrawn; no stale cut
    assert "agreement" in board.summary.value and calls["n"] == measured  # the start's metric, known
    assert board.undo_button.disabled and board.reset_button.disabled  # nothing left to undo
    assert "no prune_magic step" in board.reset_button.tooltip
    board.sliders[0, "amount"].value = 0.5  # the slider applies the recipe again
    board.wait()
    shows_the_model(board, model)
    assert not board.undo_button.disabled and zeros(model) > 0


def test_a_change_made_elsewhere_redraws_the_dashboard_and_refresh_measures(dashboard) -> None:
    from prune_magic.widgets import sync_dashboards

    board, model, calls = dashboard
    pm.undo(model)  # from Python, as another cell would
    assert board.stale
    sync_dashboards()  # (what the hook after every cell calls)
    board.wait()
    shows_the_model(board, model)
    pm.prune(model, "clip amount=0.3", tag="another cell")
    sync_dashboards()
    board.wait()
    shows_the_model(board, model)
    assert "later step(s) (clip amount=0.3)" in board.line.value
    assert "not measured" in board.summary.value and board.refresh_button.layout.display is None
    measured = calls["n"]
    board.refresh_button.click()
    board.wait()
    assert calls["n"] == measured + 1 and "not measured" not in board.summary.value
    assert board.refresh_button.layout.display == "none" and "updating" not in board.status.value


def test_a_cell_that_undoes_redraws_the_dashboard_through_the_hook(dashboard) -> None:
    from IPython.core.interactiveshell import InteractiveShell

    board, model, _ = dashboard
    board.wait()
    threads = []
    redraw = board._redraw
    board._redraw = lambda *args, **kwargs: (threads.append(threading.get_ident()), redraw(*args, **kwargs))
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "prune_magic")
    try:
        shell.user_ns["net"] = model
        shell.run_cell("%prune undo net")
    finally:
        shell.run_line_magic("unload_ext", "prune_magic")
    # redrawn before the cell returns, on the kernel's thread: a worker updating widgets while the
    # kernel replies to the cell broke ipykernel 7.0.1's sockets (the Binder image) and hung the next cell
    assert threads == [threading.get_ident()]
    shows_the_model(board, model)


def test_weights_changed_outside_disable_undo_and_say_why(dashboard) -> None:
    board, model, _ = dashboard
    with torch.no_grad():
        model.fc1.bias.add_(1)  # as a training loop would
    board.sync()
    board.wait()
    assert board.undo_button.disabled and board.reset_button.disabled
    assert "changed outside prune_magic" in board.line.value and "pm.forget(mlp)" in board.line.value


def test_slider_moves_add_no_rerun_note(dashboard) -> None:
    board, _, _ = dashboard
    for value in (0.6, 0.7):
        board.sliders[0, "amount"].value = value
        board.wait()
    assert "re-run" not in board.summary.value


def test_values_that_differ_from_the_cell_are_marked_with_a_recipe_to_paste(dashboard) -> None:
    board, _, _ = dashboard
    assert board.copy.layout.display == "none" and "the cell says" not in board.line.value
    board.sliders[0, "amount"].value = 0.83
    board.wait()
    assert "the cell says <code>clip amount=0.5 scope=global</code>" in board.line.value
    assert board.copy.value == "clip amount=0.83 scope=global" and board.copy.layout.display is None
    board.sliders[0, "amount"].value = 0.5
    board.wait()
    assert board.copy.layout.display == "none"


def test_explore_measures_the_sparsity_its_slider_sets_and_formats_the_metric(mlp) -> None:
    from prune_magic.explorer import ExploreView

    agreement = agreement_with(mlp)
    sweep = pm.sensitivity(mlp, agreement, levels=(0.3, 0.6, 0.9), stop_below=-1)
    view = ExploreView(sweep, "mlp", PruneCall(mlp, agreement, tag="explore"), charts=False)
    assert view.wait(30)
    swept = sum(sweep.sizes.values())
    dry = view.rerun.dry_run(view.recipe())
    zero = sum(r.params - r.nonzero for r in dry.after.rows if r.name[: -len(".weight")] in sweep.curves)
    import html

    measured = html.unescape(view.measured.value)
    assert f"{zero / swept:.1%} of the swept layers' weights zero (overall sparsity 50.0%)" in measured
    assert "% of all parameters" in measured
    assert "measured agreement: " in view.measured.value and "%" in view.estimate.value
    pm.prune(mlp, "clip amount=0.3 layers=fc1")  # zeros already there: the difference is explained
    view.overall.value = 0.2
    assert view.wait(30)
    assert "were zero before" in view.measured.value


def test_the_dashboard_counts_sparsity_both_ways_and_shows_metrics_as_percentages(dashboard) -> None:
    import html

    board, model, _ = dashboard
    board.sliders[0, "amount"].value = 0.8
    board.wait()
    facts = dict(board.view.summary())
    entry = pm.history(model).entries[-1]
    assert facts["pruned layers"] == f"0.0% → {entry.sparsity:.1%} of their weights zero"  # as history counts
    assert facts["sparsity"] == f"0.0% → {pm.report(model).sparsity:.1%} of all parameters"
    after = board.view.result.metric_after
    assert facts["agreement"] == f"100.0% → {after:.1%} ({(after - 1) * 100:+.1f} points)"
    assert html.escape(facts["agreement"]) in board.summary.value
    assert "of the weights each step selected" in str(pm.history(model))


def test_only_the_latest_dashboard_of_a_cell_follows_the_model(dashboard) -> None:
    from prune_magic.widgets import _DASHBOARDS

    board, _, _ = dashboard
    again = PruneDashboard(board.rerun("clip amount=0.6 scope=global"), "mlp", board.rerun)  # the cell re-run
    assert again in _DASHBOARDS and board not in _DASHBOARDS


def test_a_redraw_that_fails_shows_in_the_status_and_the_worker_goes_on(dashboard, monkeypatch) -> None:
    board, model, _ = dashboard
    pm.undo(model)
    monkeypatch.setattr(board, "_redraw", lambda measure=False: 1 / 0)
    board.sync()
    assert board.wait(10) and "ZeroDivisionError" in board.status.value
    monkeypatch.setattr(board.bars, "sparsity", lambda after, before: 1 / 0)  # a chart that fails on a move
    board.sliders[0, "amount"].value = 0.6
    assert board.wait(10) and "ZeroDivisionError" in board.status.value
    assert not board.worker.busy  # (an exception on the worker's thread used to end it: wait() hung)


def test_the_explorer_follows_a_change_made_elsewhere_and_refresh_measures_again(mlp) -> None:
    from prune_magic.explorer import ExploreView, sync_explorers

    agreement = agreement_with(mlp)
    sweep = pm.sensitivity(mlp, agreement, levels=(0.3, 0.6, 0.9), stop_below=-1)
    view = ExploreView(sweep, "mlp", PruneCall(mlp, agreement, tag="explore:mlp"), charts=False)
    assert view.wait(30) and not view.stale and view.notice.value == ""
    measured = view.measured.value
    assert "measured agreement" in measured and view.refresh_button.layout.display == "none"
    pm.prune(mlp, "clip amount=0.5", tag="another cell")  # as another cell would
    assert view.stale
    sync_explorers()  # (what the hook after every cell calls)
    assert "not measured since mlp changed" in view.measured.value
    assert view.refresh_button.layout.display is None and not view.stale
    assert "mlp changed since the sweep" in view.notice.value and "clip amount=0.5" in view.notice.value
    view.refresh_button.click()  # measures the recipe on the model as it is now
    assert view.wait(30) and "measured agreement" in view.measured.value
    assert view.refresh_button.layout.display == "none" and "changed since the sweep" in view.notice.value
    pm.undo(mlp)  # back to the model the sweep measured: the note goes
    sync_explorers()
    assert view.notice.value == "" and "not measured" in view.measured.value
    view.apply_button.click()
    assert view.wait(30) and "applied as" in view.status.value
    sync_explorers()  # its own Apply is not a change made elsewhere
    assert view.notice.value == "" and "applied as" in view.status.value
    assert view.measured.value.startswith("measured")
    pm.prune(mlp, "clip amount=0.9", dry_run=True)  # another cell's dry run changes nothing
    sync_explorers()
    assert view.measured.value.startswith("measured") and "applied as" in view.status.value
    pm.reset(mlp)
    sync_explorers()
    assert view.status.value == "" and "not measured" in view.measured.value and view.notice.value == ""
    view.overall.value = 0.0  # nothing to apply: Apply is off and says why
    assert view.apply_button.disabled and "nothing to apply" in view.apply_button.tooltip


def test_a_later_cells_step_on_top_of_a_slider_move_leaves_the_cells_step_shown(dashboard) -> None:
    from prune_magic.widgets import sync_dashboards

    board, model, _ = dashboard
    board.sliders[0, "amount"].value = 0.7
    board.wait()
    pm.prune(model, "clip amount=0.3 layers=fc1", tag="another cell")  # on top of the cell's step
    sync_dashboards()
    shows_the_model(board, model)  # the cell's step is still applied: slider at 0.7, its recipe line
    assert "changed since by 1 later step(s) (clip amount=0.3 layers=fc1)" in board.line.value
    assert "is applied, under later steps" in board.line.value  # (not "reproduces this model")


def test_a_cell_that_undoes_marks_the_explorer_out_of_date_through_the_hook(mlp) -> None:
    from IPython.core.interactiveshell import InteractiveShell

    from prune_magic.explorer import ExploreView

    agreement = agreement_with(mlp)
    sweep = pm.sensitivity(mlp, agreement, levels=(0.3, 0.6), stop_below=-1)
    view = ExploreView(sweep, "net", PruneCall(mlp, agreement, tag="explore:net"), charts=False)
    view.apply_button.click()
    assert view.wait(30) and "applied as" in view.status.value
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "prune_magic")
    try:
        shell.user_ns["net"] = mlp
        shell.run_cell("%prune undo net")
    finally:
        shell.run_line_magic("unload_ext", "prune_magic")
    assert "not measured since net changed" in view.measured.value and view.status.value == ""
    assert "net changed since the sweep" in view.notice.value and view.refresh_button.layout.display is None
