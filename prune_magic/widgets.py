"""The live views: the ``%%prune`` dashboard (sliders re-apply the cell's recipe, buttons undo)
and the explorer of a sensitivity sweep. Both run their work on a thread of their own and show
a static view (:mod:`.views`) to viewers without widgets.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import plots
from .engine import PruneResult, Recipe
from .engine.report import SPARSE_FORMAT, format_bytes
from .engine.sensitivity import Sensitivity
from .views import PruneView, SweepView, dequantized_weight, progress_text
from .worker import Worker


class PruneDashboard:
    """The live view of a ``%%prune`` cell: sliders re-apply its recipe, buttons undo.

    Moving a slider re-applies the cell's recipe with the new value from the model's state
    before the cell (the engine's tagged steps: the cell's previous run is undone first, in
    one transaction), evaluates, and redraws. If anything fails, the model stays at the
    last good state and the error shows in the dashboard. Sliders update on release; the
    work runs on a thread of the dashboard's own (:class:`~prune_magic.worker.Worker`),
    "updating…" shows meanwhile, and :meth:`wait` blocks until it is done.
    """

    def __init__(
        self,
        result: PruneResult,
        name: str,
        rerun: PruneCall,
        charts: bool = True,
        start: dict[str, Any] | None = None,
    ) -> None:
        """``start``: histograms of the weights before the cell (name -> Histogram), to draw the cut on."""
        import ipywidgets as w

        self.start = start or {}
        self.name, self.rerun, self.charts = name, rerun, charts
        self.worker = Worker()
        self.view = PruneView(result, name, charts)
        self.recipe = result.recipe
        self.tried: list[tuple[float, float]] = []  # (slider value, metric) of the points tried
        self.summary = w.HTML()
        self.image = w.Image(format="png")
        self.curve = w.Image(format="png", layout=w.Layout(display="none"))  # shown from two points on
        self.training = w.Image(format="png", layout=w.Layout(display="none"))  # when a step trains
        self.training.add_class("prune-magic-training")
        self._last_progress = 0.0
        rerun.progress = self._progress
        self.line = w.HTML()
        self.status = w.HTML()
        self.sliders = {}
        for i, step in enumerate(self.recipe.steps):
            for option, value in step.options.items():
                bounds = _bounds(option, value)
                if bounds is None:
                    continue
                slider = w.FloatSlider(
                    value=step.number(option), min=bounds[0], max=bounds[1], step=bounds[2],
                    description=f"{step.kind} {option}" if len(self.recipe.steps) == 1 else f"{i + 1}: {option}",
                    continuous_update=False, readout_format=".3g", style={"description_width": "initial"},
                )  # fmt: skip
                slider.add_class("prune-magic-slider")
                slider.observe(self._moved(i, option), "value")
                self.sliders[i, option] = slider
        weights = [r.name for r in (result.after.rows if result.after else ()) if r.name.endswith("weight")]
        self.layer = w.Dropdown(
            options=weights, description="histogram of", style={"description_width": "initial"}
        )
        self.layer.add_class("prune-magic-layer")
        self.histogram = w.Image(format="png")
        self.histogram.add_class("prune-magic-histogram")
        self.layer.observe(lambda _: self.worker.submit("draw", self._draw_histogram), "value")
        self.undo_button = w.Button(description="Undo", icon="undo")
        self.reset_button = w.Button(description="Reset", icon="refresh")
        self.undo_button.on_click(lambda _: self._queue("history", lambda: self._history("undo")))
        self.reset_button.on_click(lambda _: self._queue("history", lambda: self._history("reset")))
        for widget, name_ in (
            (self.summary, "summary"),
            (self.image, "chart"),
            (self.status, "status"),
            (self.line, "recipe"),
        ):
            widget.add_class(f"prune-magic-{name_}")
        self.box = w.VBox(
            [*self.sliders.values(), self.line, w.HBox([self.undo_button, self.reset_button, self.status]),
             w.HBox([self.summary, self.curve]), self.image, self.training, self.layer, self.histogram]
        )  # fmt: skip
        self._show(result)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the queued slider moves and clicks have been applied."""
        return self.worker.wait(timeout)

    def _queue(self, kind: str, task: Callable[[], None]) -> None:
        self.status.value = "<i>updating…</i>"
        self.worker.submit(kind, task)

    def _moved(self, index: int, option: str) -> Any:
        def changed(change: dict[str, Any]) -> None:
            self._queue("update", lambda: self._update((index, option)))

        return changed

    def _update(self, moved: tuple[int, str]) -> None:
        """Apply the recipe with every slider's current value (the latest move wins)."""
        steps = list(self.recipe.steps)
        # 6 significant digits: a slider's steps add up to 0.8500000000000001; the recipe says 0.85
        values = {key: float(f"{slider.value:.6g}") for key, slider in self.sliders.items()}
        for (index, option), value in values.items():
            steps[index] = steps[index].replace(**{option: value})
        self._busy(True)
        try:
            result = self.rerun(Recipe(tuple(steps)))
        except Exception as exc:  # the engine rolled back: the model is at the last good state
            self.status.value = f"<span style='color:#b00'>{html.escape(_one_line(exc))}</span>"
            return
        finally:
            self._busy(False)
        self.recipe = result.recipe
        metric = _first_metric(result)
        if metric is not None:
            self.tried.append((values[moved], metric))
        self._show(result)

    def _history(self, verb: str) -> None:
        from . import engine

        self._busy(True)
        try:
            model = self.rerun.model
            done = engine.undo(model) if verb == "undo" else engine.reset(model)
            self.status.value = html.escape(
                f"undid {done.step!r}" if verb == "undo" else f"reset: undid {len(done)} step(s)"  # type: ignore[union-attr, arg-type]
            )
            report = engine.report(model)
            self.summary.value = f"<pre>{html.escape(report.summary())}</pre>"
        except Exception as exc:
            self.status.value = f"<span style='color:#b00'>{html.escape(_one_line(exc))}</span>"
        finally:
            self._busy(False)

    def _progress(self, progress: Any) -> None:
        """Training during a re-run: say how far it got (at most 4 times a second)."""
        import time

        now = time.monotonic()
        if progress.point is None and now - self._last_progress < 0.25:
            return
        self._last_progress = now
        self.status.value = f"<i>updating… {html.escape(progress_text(progress))}</i>"

    def _busy(self, busy: bool) -> None:
        # the sliders stay live (a move while busy is queued, and replaces one still waiting)
        for widget in (self.undo_button, self.reset_button):
            widget.disabled = busy
        if busy or self.worker.waiting:
            self.status.value = "<i>updating…</i>"
        elif self.status.value.startswith("<i>updating…"):
            self.status.value = ""

    def _show(self, result: PruneResult) -> None:
        self.view = PruneView(result, self.name, self.charts)
        self.summary.value = self.view.summary_html()
        self.line.value = f"<code>{html.escape(str(result.recipe))}</code> reproduces this model"
        image = self.view.png()
        if image is not None:
            self.image.value = image
        self._draw_histogram()
        training = self.view.training_png()
        if training is not None:
            self.training.value = training
        self.training.layout.display = None if training is not None else "none"
        if self.charts and len(self.tried) > 1:
            self.curve.value = plots.png(plots.tried_chart(self.tried, result.metric_name))
            self.curve.layout.display = None

    def _draw_histogram(self) -> None:
        if not self.charts or not self.layer.value:
            return
        from .engine.report import histogram

        weight = dequantized_weight(self.rerun.model, self.layer.value)
        if weight is None:  # the layer is gone (undo across a structured step, say)
            return
        now = histogram(weight)
        before = self.start.get(self.layer.value)
        clips = any(step.kind == "clip" for step in self.recipe.steps)  # (finetune, quantize: no cut)
        figure = plots.magnitude_histogram(
            before or now, self.layer.value, cut=now.smallest_kept if now.zeros and clips else None
        )
        self.histogram.value = plots.png(figure)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        return _with_widget(self.view._repr_mimebundle_(), self.box)


@dataclass
class PruneCall:
    """A ``pm.prune`` call with everything but the recipe fixed: applies a cell's recipe again, as
    the cell would (same model, eval, input and tag)."""

    model: Any
    evaluate: Any = None
    example_input: Any = None
    data: Any = None
    tag: str | None = None
    train: Any = None
    loss: Any = None
    progress: Any = None  # called while a step trains (the dashboard's status line)

    def __call__(self, recipe: str | Recipe, dry_run: bool = False) -> PruneResult:
        from . import engine

        parsed = engine.parse_recipe(recipe)  # (once: the engine takes the Recipe as it is)
        return engine.prune(
            self.model,
            parsed,
            evaluate=self.evaluate,
            example_input=self.example_input,
            tag=self.tag,
            data=self.data,
            dry_run=dry_run,
            train=self.train,
            loss=self.loss,
            progress=self.progress,
            latency=parsed.removes_channels,
        )

    def dry_run(self, recipe: str | Recipe) -> PruneResult:
        """What ``recipe`` would do, measured, with the model left as it is."""
        return self(recipe, dry_run=True)


def _bounds(option: str, value: object) -> tuple[float, float, float] | None:
    """(min, max, step) of the slider for a numeric recipe option, or None."""
    if not isinstance(value, float):
        return None
    if option == "amount":
        return 0.0, 0.99, 0.01
    if option == "sigma":
        return 0.0, max(3.0, 2 * value), 0.05
    if option == "threshold":
        top = 2 * value if value > 0 else 0.1
        return 0.0, top, top / 100
    return None


def _first_metric(result: PruneResult) -> float | None:
    metrics = result.metrics()
    return metrics[0].after if metrics else None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class ExploreView:
    """One overall-sparsity slider spread over the layers by their sensitivity.

    Each layer's amount follows the global slider (sensitive layers get less) until its
    own slider is moved, which pins it. The metric is first estimated from the sweep, then
    measured by a dry run (the model does not change) on a thread of the view's own, as the
    dashboard's re-runs are (a move replaces a measurement still waiting); Apply writes the
    per-layer recipe into the model as one undoable call.
    """

    def __init__(self, sweep: Sensitivity, name: str, rerun: PruneCall, charts: bool = True) -> None:
        import ipywidgets as w

        self.sweep, self.name, self.rerun, self.charts = sweep, name, rerun, charts
        self.worker = Worker()  # dry runs off the kernel's thread: a slider move returns at once
        self.pinned: dict[str, float] = {}
        self._quiet = False  # set while the global slider moves the layer sliders
        self.overall = w.FloatSlider(
            value=0.5, min=0.0, max=0.95, step=0.01, description="overall sparsity",
            continuous_update=False, readout_format=".0%", style={"description_width": "initial"},
        )  # fmt: skip
        self.overall.add_class("prune-magic-overall")
        self.layers = {
            layer: w.FloatSlider(
                min=0.0,
                max=0.99,
                step=0.01,
                description=layer,
                continuous_update=False,
                readout_format=".0%",
                style={"description_width": "initial"},
            )
            for layer in sweep.curves
        }
        self.estimate = w.HTML()
        self.measured = w.HTML()
        self.recipe_text = w.HTML()
        self.apply_button = w.Button(description="Apply", icon="check")
        self.status = w.HTML()
        self.overall.observe(lambda _: self._spread(), "value")
        for layer, slider in self.layers.items():
            slider.observe(self._pin(layer), "value")
        self.apply_button.on_click(lambda _: self.worker.submit("apply", lambda: self._apply(self.recipe())))
        self.box = w.VBox(
            [self.overall, *self.layers.values(), self.estimate, self.measured, self.recipe_text,
             w.HBox([self.apply_button, self.status])]
        )  # fmt: skip
        self._spread(now=True)  # (the first measurement in the cell, on the kernel's thread)

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
        self.estimate.value = html.escape(
            f"estimated {self.sweep.metric_name}: {self.sweep.estimate(amounts):.4g}"
            f" (baseline {self.sweep.baseline:.4g}; the sum of single-layer losses)"
        )
        recipe = self.recipe()
        self.recipe_text.value = f"<pre>{html.escape(recipe or '(nothing pruned)')}</pre>"
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
            result = self.rerun.dry_run(recipe)
        except Exception as exc:
            self.measured.value = f"<span style='color:#b00'>{html.escape(_one_line(exc))}</span>"
            return
        finally:
            if not self.worker.waiting:
                self.status.value = ""
        metric = _first_metric(result)
        after = result.after
        facts = [f"measured {self.sweep.metric_name}: {metric:.4g}" if metric is not None else ""]
        if after is not None:
            facts.append(
                f"{after.nonzero:,} of {after.params:,} params nonzero ({after.sparsity:.1%} sparse);"
                f" {format_bytes(after.sparse_bytes)} as {SPARSE_FORMAT}"
            )
        self.measured.value = html.escape("; ".join(f for f in facts if f))

    def _apply(self, recipe: str) -> None:
        try:
            result = self.rerun(recipe)
        except Exception as exc:
            self.status.value = f"<span style='color:#b00'>{html.escape(_one_line(exc))}</span>"
            return
        steps = len(result.steps)
        self.status.value = html.escape(
            f"applied as {steps} step(s); %prune undo {self.name} {steps} takes it back"
        )

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        return _with_widget(
            SweepView(self.sweep, self.name, charts=self.charts)._repr_mimebundle_(), self.box
        )


def _with_widget(static: dict[str, Any], box: Any) -> dict[str, Any]:
    """The static bundle (text, HTML, PNG for viewers without widgets) plus the widget view."""
    view = box._repr_mimebundle_()
    return {**static, **{k: v for k, v in view.items() if k != "text/plain"}}
