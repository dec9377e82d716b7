"""What a ``%%prune`` cell shows: a summary, the per-layer table and the sparsity chart.

:class:`PruneView` renders as one rich output whose bundle carries ``text/html`` (with the
chart inline), ``image/png`` and ``text/plain``, so it reads the same in JupyterLab, in a
terminal, after nbconvert and in static viewers. It is the object the interactive
dashboard grows from.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from typing import Any

from . import plots
from .engine import PruneResult, Report
from .engine.prune import metric_changes
from .engine.report import SPARSE_FORMAT, format_bytes, format_count
from .engine.sensitivity import Sensitivity


@dataclass
class PruneView:
    """The display of one :class:`~prune_magic.PruneResult` for the model named ``name``."""

    result: PruneResult
    name: str
    charts: bool = True
    _png: bytes | None = field(default=None, repr=False)

    def summary(self) -> list[tuple[str, str]]:
        """(label, value) pairs: the facts at the top of the cell's output."""
        r = self.result
        facts = [("model", self.name), ("recipe", "; ".join(str(s.step) for s in r.steps))]
        if r.before is not None and r.after is not None:
            b, a = r.before, r.after
            facts += [
                (
                    "params",
                    f"{b.params:,} → {a.params:,}"
                    + (f" ({a.params / b.params - 1:+.1%})" if b.params else ""),
                ),
                ("nonzero", f"{b.nonzero:,} → {a.nonzero:,}"),
                ("sparsity", f"{b.sparsity:.1%} → {a.sparsity:.1%}"),
                ("size", _size(b, a)),
            ]
            if b.macs is not None and a.macs is not None:
                note = "" if self.structured else " (zeros in dense weights still cost MACs)"
                facts.append(("MACs", f"{format_count(b.macs)} → {format_count(a.macs)} per forward{note}"))
            if r.latency_before is not None and r.latency_after is not None:
                facts.append(
                    (
                        "latency",
                        f"{r.latency_before * 1e3:.2f} ms → {r.latency_after * 1e3:.2f} ms"
                        f" ({r.latency_before / r.latency_after:.2f}x faster; measured on this CPU)",
                    )
                )
            if self.structured:
                facts.append(
                    (
                        "why",
                        "removing a layer's output channels also removes the next layer's inputs:"
                        " half the channels of a stack of layers is about three quarters of its parameters",
                    )
                )
        if r.metric_before is not None and r.metric_after is not None:
            changes = metric_changes(r.metric_before, r.metric_after, r.metric_name)
            facts += [(k, f"{b:.4g} → {a:.4g} ({a - b:+.4g})") for k, b, a in changes]
        notes = [line for line in r.lines() if line.startswith(("warning:", "note:", "re-run:", "dry run:"))]
        facts += [("note", n) for n in notes]
        facts.append(("time", f"{r.seconds:.2f} s"))
        return facts

    @property
    def structured(self) -> bool:
        """Whether a step removed channels (then widths, not zeros, are the story)."""
        return any(s.removals for s in self.result.steps)

    def png(self) -> bytes | None:
        r = self.result
        if not self.charts or r.after is None:
            return None
        if self._png is None:
            if self.structured and r.before is not None:
                figure = plots.width_chart(r.after, r.before)
            else:
                figure = plots.sparsity_chart(r.after, r.before)
            self._png = plots.png(figure)
        return self._png

    def __str__(self) -> str:
        width = max(len(k) for k, _ in self.summary())
        lines = [f"{k.rjust(width)}  {v}" for k, v in self.summary()]
        if self.result.after is not None:
            lines += ["", str(self.result.after)]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><th style='text-align:right'>{html.escape(k)}</th><td style='text-align:left'>{html.escape(v)}</td></tr>"
            for k, v in self.summary()
        )
        parts = [f"<table class='prune-magic-summary'>{rows}</table>"]
        image = self.png()
        if image is not None:
            data = base64.b64encode(image).decode()
            alt = "width per layer" if self.structured else "sparsity per layer"
            parts.append(f"<img alt='{alt}' src='data:image/png;base64,{data}'/>")
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
            data = base64.b64encode(image).decode()
            bundle["image/png"] = data
            parts.append(f"<img alt='sensitivity per layer' src='data:image/png;base64,{data}'/>")
        parts.append(self.result._repr_html_())
        parts.append(
            f"<p>Per-layer budget (highest level within {self.tolerance:g} of the baseline), as a recipe:</p>"
            f"<pre class='prune-magic-budget'>{html.escape(self._budget())}</pre>"
        )
        bundle["text/html"] = "<div class='prune-magic'>" + "".join(parts) + "</div>"
        return bundle
