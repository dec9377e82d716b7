"""The live ``%%prune`` dashboard: sliders re-apply the cell's recipe, buttons undo, and every
field is redrawn from the model's state and history. Its work runs on a thread of its own
(:mod:`.worker`); viewers without widgets see a static view (:mod:`.views`). The explorer of a
sensitivity sweep is in :mod:`.explorer`.
"""

from __future__ import annotations

import html
import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from . import plots
from .engine import PruneResult, Recipe
from .engine.evaluate import format_metric
from .rerun import PruneCall, first_metric, one_line, show_image, slider_bounds, with_widget
from .views import PruneView, dequantized_weight, progress_text, structured_note
from .worker import Worker


class PruneDashboard:
    """The live view of a ``%%prune`` cell: sliders re-apply its recipe, buttons undo.

    Moving a slider re-applies the cell's recipe with the new value from the model's state
    before the cell (the engine's tagged steps: the cell's previous run is undone first, in
    one transaction), evaluates, and redraws. If anything fails, the model stays at the
    last good state and the error shows in the dashboard. Sliders update on release; the
    work runs on a thread of the dashboard's own (:class:`~prune_magic.worker.Worker`),
    "updating…" shows meanwhile, and :meth:`wait` blocks until it is done.

    Everything it shows is drawn from the model's current state and history: after Undo,
    Reset, or a change made elsewhere (another cell, ``pm.undo`` from Python, noticed after
    each cell through :func:`sync_dashboards`), the sliders, recipe line, summary, charts
    and buttons are drawn again; a metric that would need a new evaluation is marked as not
    measured, and Refresh measures it.
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
        self.result = result  # the last run, while the model is as it left it
        self.recipe = result.recipe  # the recipe the sliders edit
        self.source = result.recipe  # the cell's own recipe: the dashboard says when the sliders differ
        self.applied = result.recipe  # the steps of this cell that the model holds now
        self.drawn: tuple[object, ...] = ()  # the history's version the dashboard drew
        self._run: list[int] = []  # the history entries the last run applied (their ids) ...
        self._base: list[int] = []  # ... and the ones before them: the model's state before the cell
        self._quiet = False  # set while the dashboard moves its own sliders to match the model
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
                bounds = slider_bounds(option, value)
                if bounds is None:
                    continue
                slider = w.FloatSlider(
                    value=step.number(option), min=bounds[0], max=bounds[1], step=bounds[2],
                    description=f"{step.kind} {option}" if len(self.recipe.steps) == 1 else f"{i + 1}: {option}",
                    continuous_update=False, readout_format=".3g" if option == "threshold" else ".2f", style={"description_width": "initial"},
                )  # fmt: skip
                slider.add_class("prune-magic-slider")
                slider.observe(self._moved(i, option), "value")
                self.sliders[i, option] = slider
        key, metric = next(iter(self.sliders), None), first_metric(result)
        # the cell's own run: the first point of the tried chart
        self.first = (self.sliders[key].value, metric) if key is not None and metric is not None else None
        rows = [r for r in (result.after.rows if result.after else ()) if r.name.endswith("weight")]
        weights = [(plots.layer_label(r), r.name) for r in rows]  # (fc1 · Linear 256×64, fc1.weight)
        self.layer = w.Dropdown(
            options=weights, description="histogram of", style={"description_width": "initial"}
        )
        self.layer.add_class("prune-magic-layer")
        self.histogram = w.Image(format="png")
        self.bars, self.cut = plots.Live(), plots.Live()  # the two charts a move redraws
        self.histogram.add_class("prune-magic-histogram")
        self.layer.observe(lambda _: self.worker.submit("draw", self._draw_histogram), "value")
        self.undo_button = w.Button(description="Undo", icon="undo")
        self.reset_button = w.Button(
            description="Reset", icon="fast-backward"
        )  # (Refresh has the circling arrows)
        self.refresh_button = w.Button(
            description="Refresh", icon="sync", layout=w.Layout(display="none"),
            tooltip="measure the model as it is now and redraw",
        )  # fmt: skip
        self.undo_button.on_click(lambda _: self._queue("history", lambda: self._history("undo")))
        self.reset_button.on_click(lambda _: self._queue("history", lambda: self._history("reset")))
        self.refresh_button.on_click(lambda _: self._queue("history", lambda: self._sync_now(measure=True)))
        # the recipe with the sliders' values, to paste into the cell (shown when it differs from it)
        self.copy = w.Textarea(
            description="recipe", layout=w.Layout(display="none", width="100%"),
            style={"description_width": "initial"},
        )  # fmt: skip
        for widget, name_ in (
            (self.summary, "summary"),
            (self.image, "chart"),
            (self.status, "status"),
            (self.line, "recipe"),
            (self.copy, "copy"),
        ):
            widget.add_class(f"prune-magic-{name_}")
        self.box = w.VBox(
            [*self.sliders.values(), self.line, self.copy,
             w.HBox([self.undo_button, self.reset_button, self.refresh_button, self.status]),
             w.HBox([self.summary, self.curve], layout=w.Layout(align_items="flex-start")), self.image, self.training, self.layer, self.histogram]
        )  # fmt: skip
        self._show(result)
        for older in list(_DASHBOARDS):  # a re-run cell's earlier dashboard is gone from the page
            if older.rerun.tag == rerun.tag and older.rerun.model is rerun.model:
                _DASHBOARDS.discard(older)
        _DASHBOARDS.add(self)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the queued slider moves and clicks have been applied."""
        return self.worker.wait(timeout)

    @property
    def stale(self) -> bool:
        """Whether the model or its history changed since the dashboard drew."""
        from .engine.history import version

        return version(self.rerun.model) != self.drawn

    def sync(self) -> None:
        """Redraw now if the model changed since it drew (after a cell, on the kernel's thread: from
        the worker, while the kernel replied, it broke ipykernel 7.0's sockets)."""
        if not self.stale:
            return
        try:
            self._redraw()
        except Exception as exc:  # (a failed redraw shows; the cell that ran goes on)
            self.status.value = _error(exc)

    def _queue(self, kind: str, task: Callable[[], None]) -> None:
        self.status.value = "<i>updating…</i>"
        self.worker.submit(kind, task)

    def _moved(self, index: int, option: str) -> Any:
        def changed(change: dict[str, Any]) -> None:
            if not self._quiet:
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
            result = self.rerun(Recipe(tuple(steps)), latency=False)  # (a move: ~0.5 s faster, "not timed")
        except Exception as exc:  # the engine rolled back: the model is at the last good state
            self.status.value = _error(exc)
            if self.stale:
                self._redraw()
            self._busy(False)
            return
        self.recipe = result.recipe
        metric = first_metric(result)
        if metric is not None:
            self.tried.append((values[moved], metric))
        # (re-applying from the cell's start is what a slider does: no "re-run" note each move)
        try:
            self._show(replace(result, replaced=0))  # the numbers go out first, then the charts, ...
        except Exception as exc:  # (the worker must go on: a cell waits for it)
            self.status.value = _error(exc)
        finally:
            self._busy(False)  # ... then "updating…" goes and the buttons come back

    def _history(self, verb: str) -> None:
        from . import engine

        self._busy(True)
        try:
            model = self.rerun.model
            done = engine.undo(model) if verb == "undo" else engine.reset(model)
            self.status.value = html.escape(
                f"undid {done.step!r}" if verb == "undo" else f"reset: undid {len(done)} step(s)"  # type: ignore[union-attr, arg-type]
            )
        except Exception as exc:
            self.status.value = _error(exc)
        finally:
            self._busy(False)
        self._sync_now(measure=True)

    def _sync_now(self, measure: bool) -> None:
        try:
            self._redraw(measure=measure)
        except Exception as exc:  # (the worker must go on: a cell waits for it)
            self.status.value = _error(exc)
        self._busy(False)  # ("updating…" goes, unless more is queued; the buttons as the model allows)

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
        for widget in (self.undo_button, self.reset_button, self.refresh_button):
            widget.disabled = busy
        if busy or self.worker.waiting:
            self.status.value = "<i>updating…</i>"
        elif self.status.value.startswith("<i>updating…"):
            self.status.value = ""
        if not busy:
            self._enable()

    def _enable(self) -> None:
        """Undo and Reset only when they can do something (else disabled, with the reason)."""
        from .engine.history import changed_outside, history

        model = self.rerun.model
        why = ""
        if not history(model).entries:
            why = "no prune_magic step to undo"
        elif changed_outside(model):
            why = "the weights changed outside prune_magic since the last step (pm.forget(model) keeps them)"
        for button in (self.undo_button, self.reset_button):
            button.disabled = bool(why)
            button.tooltip = why

    def _show(self, result: PruneResult, state: State | None = None) -> None:
        """Draw ``result``: the last run, or the model's current state (``state`` says which steps)."""
        from .engine.history import history, version

        self.drawn = version(self.rerun.model)
        if state is None:
            self.result, self.applied = result, result.recipe
            entries = history(self.rerun.model).entries
            self._run = [id(e) for e in entries if e.tag == self.rerun.tag]
            self._base = [id(e) for e in entries if e.tag != self.rerun.tag]
            self._line(result.recipe, ())
            self.refresh_button.layout.display = "none"
        self.view = PruneView(result, self.name, self.charts, untimed=self.rerun.example_input is not None)
        self.summary.value = self.view.summary_html()
        image = self.view.png(self.bars)
        if image is not None:
            show_image(self.image, image)
        if self.worker.waiting and state is None:
            return  # a newer move is queued: it draws the histogram and the curve (the moves' latest)
        self._draw_histogram()
        training = self.view.training_png()
        if training is not None:
            show_image(self.training, training)
        self.training.layout.display = None if training is not None else "none"
        if self.charts and len(set(self.tried) | {self.first} - {None}) > 1:
            start = self.result.metric_before
            chart = plots.tried_chart(
                self.tried, result.metric_name, self.first, start if isinstance(start, float) else None
            )
            show_image(self.curve, plots.png(chart))
            self.curve.layout.display = None
        self._enable()

    def _line(self, applied: Recipe, notes: tuple[str, ...], later: bool = False) -> None:
        """The recipe line: what reproduces the model, and how it differs from the cell's source."""
        if applied.steps:
            what = "is applied, under later steps (below)" if later else "reproduces this model"
            text = f"<code>{html.escape(str(applied))}</code> {what}"
        else:
            text = "this cell's recipe is not applied now (move a slider to apply it)"
        differs = bool(applied.steps) and str(applied) != str(self.source)
        if differs:
            text += (
                f" <b>— the cell says <code>{html.escape(str(self.source))}</code></b>;"
                " paste the recipe below into the cell to keep these values"
            )
        text += "".join(f"<br>{html.escape(n)}" for n in notes)
        self.line.value = text
        self.copy.value = str(applied) if differs else ""
        self.copy.layout.display = None if differs else "none"

    def _redraw(self, measure: bool = False) -> None:
        """Draw the model as it is now (after Undo, Reset or a change elsewhere), from its history.

        A metric is shown when it is known for this state (the cell's start, or its last run);
        otherwise ``measure`` evaluates the model here, or the row says it is not measured and
        Refresh appears.
        """
        from .engine.history import changed_outside, history

        model = self.rerun.model
        entries = history(model).entries
        # this cell's steps, wherever they are (a later cell's steps may sit on top of them)
        mine = [e for e in entries if e.tag == self.rerun.tag]
        rest = [id(e) for e in entries if e.tag != self.rerun.tag]
        later = [e for e in entries if e.tag != self.rerun.tag and id(e) not in self._base]
        outside = changed_outside(model)
        state = State(
            tuple(e.step for e in mine), tuple(e.step for e in later), tuple(outside),
            at_start=rest == self._base,
        )  # fmt: skip
        if not outside and rest == self._base and [id(e) for e in mine] == self._run:
            self._show(self.result)  # as the last run left it
            return
        applied = Recipe(tuple(_step(text) for text in state.mine))
        self.applied = applied
        self._quiet = True  # the sliders show the applied values (0: the step is not applied)
        try:
            for (index, option), slider in self.sliders.items():
                steps = applied.steps
                slider.value = steps[index].number(option) if index < len(steps) else slider.min
        finally:
            self._quiet = False
        if len(applied.steps) == len(self.recipe.steps):
            self.recipe = applied
        notes = state.notes(self.name)
        metric = self._known_metric(state)
        unmeasured = ""
        if metric is None and self.result.metric_before is not None:
            if measure:
                try:
                    metric = self.rerun.measure()
                except Exception as exc:
                    self.status.value = _error(exc)
            if metric is None:
                start = self.result.metric_before
                known = (
                    f"{format_metric(self.result.metric_name, start)} before the cell; "
                    if isinstance(start, float)
                    else ""
                )
                unmeasured = f"{known}not measured since the model changed: Refresh measures it"
        from . import engine

        now = engine.report(model, self.rerun.example_input)
        result = PruneResult(
            applied, tuple(_step_result(e) for e in mine), self.result.before, now,
            self.result.metric_before, metric, False, 0.0, metric_name=self.result.metric_name,
        )  # fmt: skip
        self._line(applied, notes, later=bool(state.later))
        self._show(result, state)
        self.view.unmeasured = unmeasured
        self.summary.value = self.view.summary_html()
        self.refresh_button.layout.display = None if unmeasured else "none"

    def _known_metric(self, state: State) -> Any:
        if not state.outside and state.at_start and not state.mine:  # back at the cell's start
            return self.result.metric_before
        return None

    def _draw_histogram(self) -> None:
        if not self.charts or not self.layer.value:
            return
        from .engine.report import histogram

        weight = dequantized_weight(self.rerun.model, self.layer.value)
        if weight is None:  # the layer is gone (undo across a structured step, say)
            return
        now = histogram(weight)
        before = self.start.get(self.layer.value)
        clips = any(step.kind == "clip" for step in self.applied.steps)  # (finetune, quantize: no cut)
        cut = now.smallest_kept if now.zeros and clips else None
        label, note = (
            self.layer.label or self.layer.value,
            structured_note(self.view.result, self.layer.value),
        )
        show_image(self.histogram, self.cut.histogram(before or now, label, cut, note))

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        return with_widget(self.view._repr_mimebundle_(), self.box)


@dataclass(frozen=True)
class State:
    """Where the model stands for a dashboard: its cell's steps still applied, steps applied
    after them by others, tensors changed outside prune_magic."""

    mine: tuple[str, ...]
    later: tuple[str, ...]
    outside: tuple[str, ...]
    at_start: bool = True  # the steps before the cell's are all still there

    def notes(self, name: str) -> tuple[str, ...]:
        out = []
        if self.later:
            out.append(
                f"changed since by {len(self.later)} later step(s) ({'; '.join(self.later[:3])});"
                " moving a slider applies this cell's recipe on top of them"
            )
        if not self.at_start and not self.later:
            out.append("steps applied before this cell have been undone too")
        if self.outside:
            shown = ", ".join(self.outside[:3]) + (" …" if len(self.outside) > 3 else "")
            out.append(
                f"{shown} changed outside prune_magic since the last step: Undo and Reset are off"
                f" (pm.forget({name}) keeps the current weights)"
            )
        return tuple(out)


def _step(text: str) -> Any:
    from .engine import parse_recipe

    return parse_recipe(text).steps[0]


def _step_result(entry: Any) -> Any:
    from .engine.result import StepResult

    return StepResult(_step(entry.step), (), entry.sparsity, entry.seconds, None)


def _error(exc: BaseException) -> str:
    return f"<span style='color:#b00'>{html.escape(one_line(exc))}</span>"


_DASHBOARDS: weakref.WeakSet[PruneDashboard] = weakref.WeakSet()


def sync_dashboards() -> None:
    """Redraw every dashboard whose model changed since it drew (called after every cell)."""
    for board in list(_DASHBOARDS):
        board.sync()
