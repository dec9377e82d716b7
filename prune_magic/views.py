"""What a ``%%prune`` cell and a sweep show when no widget is live: views that need no ipywidgets.

:class:`PruneView` renders as one rich output whose bundle carries ``text/html`` (with the
chart inline), ``image/png`` and ``text/plain``, so it reads the same in JupyterLab, in a
terminal, after nbconvert and in static viewers. The live dashboard (:mod:`.widgets`) grows
from it; :class:`SweepView` does the same for a sensitivity sweep.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from typing import Any

from . import plots
from .engine import PruneResult, Report
from .engine.evaluate import format_change, format_metric
from .engine.report import SPARSE_FORMAT, format_bytes, format_count
from .engine.result import WHY_STRUCTURED, describe_curve
from .engine.sensitivity import Sensitivity


@dataclass
class PruneView:
    """The display of one :class:`~prune_magic.PruneResult` for the model named ``name``."""

    result: PruneResult
    name: str
    charts: bool = True
    _png: bytes | None = field(default=None, repr=False)
    unmeasured: str = ""  # why the metric after is missing (a live view of a changed model), if it is
    untimed: bool = False  # a live view, whose slider moves skip the timing a structured cell does

    def summary(self) -> list[tuple[str, str]]:
        """(label, value) pairs: the facts at the top of the cell's output."""
        r = self.result
        facts = [
            ("model", self.name),
            ("recipe", "; ".join(str(s.step) for s in r.steps) or "(no step applied)"),
        ]
        if r.before is not None and r.after is not None:
            b, a = r.before, r.after
            facts.append(("params", _change(b.params, a.params)))
            if r.structured:  # whole channels went: widths tell it, the few zeros left do not
                facts.append(("widths", _widths(b, a)))
            else:
                facts += [
                    ("nonzero", f"{b.nonzero:,} → {a.nonzero:,}"),
                    ("sparsity", f"{b.sparsity:.1%} → {a.sparsity:.1%} of all parameters"),
                ]
            facts.append(("size", _size(b, a)))
            pruned = r.pruned_sparsity()
            if pruned is not None:  # (what %prune history counts: the weights the steps selected)
                facts.insert(
                    -1, ("pruned layers", f"{pruned.before:.1%} → {pruned.after:.1%} of their weights zero")
                )
            macs, latency = r.macs(), r.latency()
            if macs is not None:
                note = "" if r.structured else " (zeros in dense weights still cost MACs)"
                facts.append(
                    ("MACs", f"{format_count(macs.before)} → {format_count(macs.after)} per forward{note}")
                )
            if latency is not None:
                facts.append(("latency", r.latency_line() or ""))
            elif self.untimed and r.structured:
                facts.append(
                    ("latency", "not timed since the cell ran (timing takes ~0.5 s): re-run the cell")
                )
            if r.structured:
                facts.append(("why", WHY_STRUCTURED))
        facts += [(m.name, format_change(m.name, m.before, m.after)) for m in r.metrics()]
        if self.unmeasured and not r.metrics():
            facts.append((r.metric_name, self.unmeasured))
        for s in r.steps:
            if s.quantized is not None:
                facts.append(("quantized", s.quantized.line()))
            elif s.curve:
                facts.append(("trained", _trained(s)))
        facts += [("note", str(n)) for n in r.remarks()]
        facts.append(("time", f"{r.seconds:.2f} s"))
        return facts

    @property
    def structured(self) -> bool:
        """Whether a step removed channels (then widths, not zeros, are the story)."""
        return self.result.structured

    def png(self, live: plots.Live | None = None) -> bytes | None:
        """The per-layer chart (``live``: a dashboard's, redrawn where only the bars moved)."""
        r = self.result
        if not self.charts or r.after is None:
            return None
        if self._png is None:
            after, before = r.after, r.before
            if self.structured and before is not None:
                self._png = (
                    live.widths(after, before) if live else plots.png(plots.width_chart(after, before))
                )
            else:
                self._png = (
                    live.sparsity(after, before) if live else plots.png(plots.sparsity_chart(after, before))
                )
        return self._png

    def training_png(self) -> bytes | None:
        """The recovery curve (metric after each epoch or gradual step), when a step trained."""
        if not self.charts or not any(s.curve for s in self.result.steps):
            return None
        return plots.png(plots.training_chart(self.result))

    def __str__(self) -> str:
        width = max(len(k) for k, _ in self.summary())
        lines = [f"{k.rjust(width)}  {v}" for k, v in self.summary()]
        if self.result.after is not None:
            lines += ["", str(self.result.after)]
        return "\n".join(lines)

    def summary_html(self) -> str:
        """The summary as an HTML table."""
        rows = "".join(
            f"<tr><th style='text-align:right;white-space:nowrap'>{html.escape(k)}</th><td style='text-align:left'>{html.escape(v)}</td></tr>"
            for k, v in self.summary()
        )
        return f"<table class='prune-magic-summary'>{rows}</table>"

    def _repr_html_(self) -> str:
        parts = [self.summary_html()]
        image = self.png()
        if image is not None:
            parts.append(img(image, "width per layer" if self.structured else "sparsity per layer"))
        training = self.training_png()
        if training is not None:
            parts.append(img(training, "recovery curve"))
        if self.result.after is not None:
            parts.append(
                f"<details><summary>per-layer table</summary>{self.result.after._repr_html_()}</details>"
            )
        return "<div class='prune-magic'>" + "".join(parts) + "</div>"

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        bundle: dict[str, Any] = {"text/plain": str(self), "text/html": self._repr_html_()}
        image = self.png()
        if image is not None:
            bundle["image/png"] = base64.b64encode(image).decode()
        return bundle


def img(image: bytes, alt: str) -> str:
    """An ``<img>`` of a :func:`plots.png` at its natural size (at most the output's width)."""
    data = base64.b64encode(image).decode()
    return (
        f"<img alt='{alt}' width='{plots.css_width(image)}' style='max-width:100%;height:auto'"
        f" src='data:image/png;base64,{data}'/>"
    )


def _trained(step: Any) -> str:
    took = f"{step.seconds:.1f} s" if step.seconds >= 0.1 else f"{step.seconds * 1e3:.0f} ms"
    return f"{step.step}: {describe_curve(step)} ({took})"


def structured_note(result: PruneResult, weight: str) -> str:
    """What a structured step did to ``weight`` (for its histogram: channels go, no |w| cut); "" else."""
    if not result.structured or result.before is None or result.after is None:
        return ""
    try:
        old, new = result.before.row(weight).shape, result.after.row(weight).shape
    except KeyError:
        return ""
    kept = f"{old[0]} → {new[0]} outputs kept" if old[:1] != new[:1] else "outputs unchanged"
    inputs = f", {old[1]} → {new[1]} inputs" if len(old) > 1 and old[1] != new[1] else ""
    return f"structured step: {kept}{inputs}\n(whole channels removed by importance; no |w| cut)"


def _widths(before: Report, after: Report) -> str:
    """``fc1 256→128, fc2 128→64 outputs``: the layers a structured step narrowed."""
    old = {
        r.name: r.shape[0]
        for r in before.rows
        if r.name.endswith("weight") and r.shape and "Norm" not in r.module_type
    }
    narrowed = [
        f"{r.name.removesuffix('.weight')} {old[r.name]}→{r.shape[0]}"
        for r in after.rows
        if r.name in old and r.shape and r.shape[0] != old[r.name]
    ]
    return (", ".join(narrowed) + " outputs") if narrowed else "unchanged"


def _size(before: Report, after: Report) -> str:
    dense = (
        f"{format_bytes(after.dense_bytes)} dense (unchanged: zeros are still stored)"
        if before.dense_bytes == after.dense_bytes
        else f"{format_bytes(before.dense_bytes)} → {format_bytes(after.dense_bytes)} dense"
    )
    return f"{dense}; {format_bytes(before.sparse_bytes)} → {format_bytes(after.sparse_bytes)} as {SPARSE_FORMAT}"


def _change(before: int, after: int) -> str:
    if before == after or not before:
        return f"{after:,}"
    return f"{before:,} → {after:,} ({after / before - 1:+.1%})"


@dataclass
class SweepView:
    """The display of a sensitivity sweep: curves per layer, the table and the budget recipe."""

    result: Sensitivity
    name: str
    tolerance: float = 0.01
    charts: bool = True
    running: bool = False  # a sweep still in progress: show how far it got

    def progress(self) -> tuple[int, int]:
        """(points measured, points in the sweep)."""
        curves = self.result.curves.values()
        return sum(m is not None for c in curves for m in c), len(self.result.curves) * len(
            self.result.levels
        )

    def _budget(self) -> str:
        recipe = self.result.recipe(self.tolerance)
        if not recipe:
            return f"no layer can be pruned at {self.result.levels[0]:.0%} within {self.tolerance:g} of the baseline"
        return recipe

    def __str__(self) -> str:
        return (
            f"{self.result}\n\nper-layer budget (highest level within {self.tolerance:g} of the baseline),"
            f" as a recipe to paste into a %%prune {self.name} cell:\n{self._budget()}"
        )

    def png(self) -> bytes | None:
        return plots.png(plots.sensitivity_chart(self.result, self.tolerance)) if self.charts else None

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        bundle: dict[str, Any] = {"text/plain": str(self)}
        image = self.png()
        parts = []
        if image is not None:
            bundle["image/png"] = base64.b64encode(image).decode()
            parts.append(img(image, "sensitivity per layer"))
        if self.running:
            done, total = self.progress()
            parts.insert(
                0, f"<p><progress value='{done}' max='{total}'></progress> {done}/{total} points</p>"
            )
        parts.append(self.result._repr_html_())
        parts.append(
            f"<p>Per-layer budget (highest level within {self.tolerance:g} of the baseline), as a recipe:</p>"
            f"<pre class='prune-magic-budget'>{html.escape(self._budget())}</pre>"
        )
        bundle["text/html"] = "<div class='prune-magic'>" + "".join(parts) + "</div>"
        return bundle


def dequantized_weight(model: Any, name: str) -> Any:
    """A weight by name as floats: quantized weights (torch.ao, torchao) dequantized."""
    from .engine.report import weights

    tensor = dict(weights(model)).get(name)
    if tensor is not None and (tensor.is_quantized or hasattr(tensor, "qdata")):
        tensor = tensor.dequantize()
    return tensor


def progress_text(progress: Any) -> str:
    """``finetune epochs=2: 31/42 batches`` (and the metric of the last epoch, when there is one)."""
    done = f"{progress.done}/{progress.total} batches" if progress.total else f"{progress.done} batches"
    if progress.stage:
        done = f"{progress.stage}, {done}"
    point = progress.point
    metric = (
        f"; {point.label}: {format_metric('metric', point.metric)}"
        if point is not None and isinstance(point.metric, float)
        else ""
    )
    return f"{progress.step}: {done}{metric}"


def weight_histograms(model: Any) -> dict[str, Any]:
    """Magnitude histograms of the model's weights, by parameter name (int8 ones dequantized)."""
    from .engine.report import histogram

    names = [name for name, _ in model.named_parameters() if name.endswith("weight")]
    return {name: histogram(dequantized_weight(model, name)) for name in names}
