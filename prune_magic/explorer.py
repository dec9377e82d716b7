"""The explorer of a sensitivity sweep (``%prune explore``): one overall-sparsity slider
spread over the layers by their sensitivity, per-layer sliders that pin a layer, a dry run
that measures the metric, and Apply."""

from __future__ import annotations

import html
import weakref
from typing import Any

from .engine.evaluate import format_metric, is_fraction
from .engine.report import SPARSE_FORMAT, format_bytes
from .engine.sensitivity import Sensitivity
from .rerun import PruneCall, first_metric, one_line, show_image, with_widget
from .views import SweepView
from .worker import Worker


class ExploreView:
    """One overall-sparsity slider spread over the layers by their sensitivity.

    Each layer's amount follows the global slider (sensitive layers get less) until its
    own slider is moved, which pins it. The metric is first estimated from the sweep, then
    measured by a dry run (the model does not change) on a thread of the view's own, as the
    dashboard's re-runs are (a move replaces a measurement still waiting); Apply writes the
    per-layer recipe into the model as one undoable call.

    Like the dashboard, it follows changes made elsewhere (another cell, ``pm.undo`` from
    Python; noticed after each cell through :func:`sync_explorers`): the measured line says it
    is out of date, Refresh measures again, and a note says when the sweep describes the
    model as it was, not as it is.
    """

    def __init__(self, sweep: Sensitivity, name: str, rerun: PruneCall, charts: bool = True) -> None:
        import ipywidgets as w

        # where the model stood (its history's entries, tensors changed outside): for the sweep, ...
        self.swept = self.seen = _where(rerun.model)  # ... for the measurement shown, ...
        self.applied: Where | None = None  # ... and after this view's Apply
        self.sweep, self.name, self.rerun, self.charts = sweep, name, rerun, charts
        self.worker = Worker()  # dry runs off the kernel's thread: a slider move returns at once
        self.pinned: dict[str, float] = {}
        self._quiet = False  # set while the global slider moves the layer sliders
        labels = {layer: sweep.label(layer) for layer in sweep.curves}
        # one description width and one slider width for all: the sliders' tracks line up
        longest = max(len(text) for text in [*labels.values(), "overall sparsity"])
        style = {"description_width": f"{0.55 * longest + 1:.1f}em"}
        layout = w.Layout(width="min(100%, 60em)")
        self.overall = w.FloatSlider(
            value=0.5, min=0.0, max=0.95, step=0.01, description="overall sparsity",
            continuous_update=False, readout_format=".0%", style=style, layout=layout,
        )  # fmt: skip
        self.overall.add_class("prune-magic-overall")
        self.layers = {
            layer: w.FloatSlider(
                min=0.0,
                max=0.99,
                step=0.01,
                description=label,
                continuous_update=False,
                readout_format=".0%",
                style=style,
                layout=layout,
            )
            for layer, label in labels.items()
        }
        for slider in self.layers.values():
            slider.add_class("prune-magic-layer-slider")
        self.estimate = w.HTML()
        self.measured = w.HTML()
        self.recipe_text = w.HTML()
        self.apply_button = w.Button(description="Apply", icon="check")
        self.refresh_button = w.Button(
            description="Refresh", icon="sync", layout=w.Layout(display="none"),
            tooltip="measure the recipe on the model as it is now",
        )  # fmt: skip
        self.refresh_button.on_click(lambda _: self._update())
        self.status = w.HTML()
        self.notice = w.HTML()  # the sweep is of the model as it was: says so while it differs
        self.overall.observe(lambda _: self._spread(), "value")
        for layer, slider in self.layers.items():
            slider.observe(self._pin(layer), "value")
        self.apply_button.on_click(lambda _: self.worker.submit("apply", lambda: self._apply(self.recipe())))
        static = SweepView(sweep, name, charts=charts)
        self.chart = w.Image(format="png", layout=w.Layout(display="none"))  # the sweep's curves
        self.chart.add_class("prune-magic-sensitivity")
        image = static.png()
        if image is not None:
            show_image(self.chart, image)
            self.chart.layout.display = None
        self.table = w.HTML(sweep._repr_html_())
        self.box = w.VBox(
            [self.overall, *self.layers.values(), self.estimate, self.measured, self.recipe_text,
             w.HBox([self.apply_button, self.refresh_button, self.status]), self.notice, self.chart, self.table]
        )  # fmt: skip
        for widget, kind in ((self.estimate, "estimate"), (self.measured, "measured"), (self.notice, "notice"),
                             (self.recipe_text, "recipe"), (self.status, "status")):  # fmt: skip
            widget.add_class(f"prune-magic-explore-{kind}")
        self._spread(now=True)  # (the first measurement in the cell, on the kernel's thread)
        for older in list(_EXPLORERS):  # a re-run cell's earlier explorer is gone from the page
            if older.rerun.tag == rerun.tag and older.rerun.model is rerun.model:
                _EXPLORERS.discard(older)
        _EXPLORERS.add(self)

    def amounts(self) -> dict[str, float]:
        return {layer: round(slider.value, 4) for layer, slider in self.layers.items()}

    def recipe(self) -> str:
        return "\n".join(f"clip amount={a:g} layers={layer}" for layer, a in self.amounts().items() if a > 0)

    def _spread(self, now: bool = False) -> None:
        allocation = self.sweep.allocate(self.overall.value, self.pinned)
        self._quiet = True
        try:
            for layer, amount in allocation.items():
                self.layers[layer].value = amount
        finally:
            self._quiet = False
        self._update(now)

    def _pin(self, layer: str) -> Any:
        def moved(change: dict[str, Any]) -> None:
            if self._quiet:
                return
            self.pinned[layer] = float(change["new"])
            self._update()

        return moved

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the queued measurements and Apply have run."""
        return self.worker.wait(timeout)

    def _update(self, now: bool = False) -> None:
        """The estimate at once; the measurement (a dry run) on the worker, the latest move winning
        (``now``: here, as the cell that builds the view does)."""
        amounts = self.amounts()
        name, estimate, baseline = self.sweep.metric_name, self.sweep.estimate(amounts), self.sweep.baseline
        percent = is_fraction(name, estimate, baseline)
        self.estimate.value = html.escape(
            f"estimated {name}: {format_metric(name, estimate, percent)}"
            f" (baseline {format_metric(name, baseline, percent)}; the sum of single-layer losses)"
        )
        recipe = self.recipe()
        self.recipe_text.value = f"<pre>{html.escape(recipe or '(nothing pruned)')}</pre>"
        self.apply_button.disabled = not recipe
        self.apply_button.tooltip = "" if recipe else "nothing to apply: every layer's amount is 0"
        if not recipe:
            self.measured.value = ""
            return
        self.status.value = "<i>measuring…</i>"
        if now:
            self._measure(recipe)
        else:
            self.worker.submit("update", lambda: self._measure(recipe))

    def _measure(self, recipe: str) -> None:
        try:
            self.seen = _where(self.rerun.model)  # (a dry run leaves it as it is)
            self.refresh_button.layout.display = "none"
            self._note()
            result = self.rerun.dry_run(recipe)
        except Exception as exc:
            self.measured.value = f"<span style='color:#b00'>{html.escape(one_line(exc))}</span>"
            return
        finally:
            if not self.worker.waiting:
                self.status.value = ""
        self._show_measured(result)

    def _show_measured(self, result: Any) -> None:
        metric = first_metric(result)
        name = self.sweep.metric_name
        facts = [f"measured {name}: {format_metric(name, metric)}" if metric is not None else ""]
        if result.after is not None and result.before is not None:
            facts.append(self._sparsity(result.before, result.after))
        self.measured.value = html.escape("; ".join(f for f in facts if f))

    def _sparsity(self, before: Any, after: Any) -> str:
        """The measured sparsity of the swept layers' weights (what the overall slider sets), beside
        the target, and why they differ, if they do; then the whole model's."""
        swept = {f"{layer}.weight" for layer in self.sweep.curves}
        rows = [r for r in after.rows if r.name in swept]
        old = [r for r in before.rows if r.name in swept]
        params = sum(r.params for r in rows) or 1
        zeros = 1 - sum(r.nonzero for r in rows) / params
        already = 1 - sum(r.nonzero for r in old) / (sum(r.params for r in old) or 1)
        planned = sum(a * self.sweep.sizes.get(layer, 0) for layer, a in self.amounts().items())
        target = planned / (sum(self.sweep.sizes.values()) or 1)
        text = f"{zeros:.1%} of the swept layers' weights zero (overall sparsity {self.overall.value:.1%})"
        why = []
        if abs(target - self.overall.value) >= 0.001:
            why.append(f"the layers' amounts add up to {target:.1%} (pinned layers, or a layer at its limit)")
        if abs(zeros - target) >= 0.001:
            why.append(
                f"{already:.1%} of these weights were zero before, and a clip counts those zeros as pruned"
                if already >= 0.001
                else "each layer's amount rounds to whole weights"
            )
        if why:
            text += ": " + "; ".join(why)
        return (
            f"{text}; {after.sparsity:.1%} of all parameters ({after.nonzero:,} of {after.params:,} nonzero);"
            f" {format_bytes(after.sparse_bytes)} as {SPARSE_FORMAT}"
        )

    @property
    def stale(self) -> bool:
        """Whether the model or its history changed since the view measured it."""
        return not _same(_where(self.rerun.model), self.seen)

    def sync(self) -> None:
        """After a cell (on the kernel's thread): if the model changed, say that the measurement is
        out of date and show Refresh. It does not measure here: a cell's hook must return quickly."""
        if not self.stale:  # (a dry run elsewhere changes the history's version, not its steps)
            return
        self.seen = _where(self.rerun.model)
        if not _same(self.seen, self.applied):
            self.status.value = ""  # "applied as N step(s)" no longer describes the model
        self._note()
        if self.recipe():
            self.measured.value = html.escape(
                f"not measured since {self.name} changed: Refresh measures this recipe on it as it is now"
            )
            self.refresh_button.layout.display = None

    def _note(self) -> None:
        """Whether the sweep (and so the estimate) still describes the model."""
        now = _where(self.rerun.model)
        if _same(now, self.swept) or _same(now, self.applied):
            self.notice.value = ""
            return
        steps, outside = [str(e.step) for e in now[0]], now[1]
        what = f"{len(steps)} prune_magic step(s) in its history now" + (
            f", last: {steps[-1]}" if steps else ""
        )
        if outside:
            what += f"; {', '.join(outside[:3])} changed outside prune_magic"
        self.notice.value = (
            f"<b>{html.escape(self.name)} changed since the sweep</b> ({html.escape(what)}): the estimate is"
            f" of the model the sweep measured; run <code>%prune explore {html.escape(self.name)}</code>"
            " again to sweep it as it is."
        )

    def _apply(self, recipe: str) -> None:
        try:
            result = self.rerun(recipe)
        except Exception as exc:
            self.status.value = f"<span style='color:#b00'>{html.escape(one_line(exc))}</span>"
            return
        self.seen = self.applied = _where(self.rerun.model)
        self._show_measured(result)  # (the model now holds what a measurement would have dry-run)
        self.refresh_button.layout.display = "none"
        steps = len(result.steps)
        self.status.value = html.escape(
            f"applied as {steps} step(s); %prune undo {self.name} {steps} takes it back"
        )

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        return with_widget(SweepView(self.sweep, self.name, charts=self.charts)._repr_mimebundle_(), self.box)


Where = tuple[list[Any], list[str]]  # a model's history entries, and its tensors changed outside


def _where(model: Any) -> Where:
    from .engine.history import changed_outside, history

    return list(history(model).entries), sorted(changed_outside(model))


def _same(where: Where, other: Where | None) -> bool:
    """The same history (the same entry objects: a step undone and done again is a new entry)."""
    if other is None or where[1] != other[1] or len(where[0]) != len(other[0]):
        return False
    return all(a is b for a, b in zip(where[0], other[0], strict=True))


_EXPLORERS: weakref.WeakSet[ExploreView] = weakref.WeakSet()


def sync_explorers() -> None:
    """Mark every explorer whose model changed since it measured (called after every cell)."""
    for view in list(_EXPLORERS):
        view.sync()
