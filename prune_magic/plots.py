"""Matplotlib figures drawn from engine data (reports, results), never from raw weights.

Figures are made with ``matplotlib.figure.Figure`` directly, not pyplot: no global
state, no figure shown twice by the inline backend, nothing left open.
"""

from __future__ import annotations

import io
import math
from itertools import pairwise
from typing import Any

from matplotlib import colormaps
from matplotlib.artist import Artist
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from .engine import PruneResult, Report
from .engine.report import Histogram, Row
from .engine.sensitivity import Sensitivity

KEPT, REMOVED = "#4c72b0", "#dd8452"


def layer_label(row: Row) -> str:
    """``fc1 · Linear 256×64``: a weight's layer by name, type and shape."""
    return f"{row.name.removesuffix('.weight')} · {row.module_type} {'×'.join(map(str, row.shape))}"


def sparsity_chart(after: Report, before: Report | None = None, title: str = "Sparsity per layer") -> Figure:
    """Horizontal bars: the share of zero weights in each weight tensor (before, if given, as an outline)."""
    rows = [r for r in after.rows if r.name.endswith("weight")] or list(after.rows)
    names = [layer_label(r) for r in rows]
    height = 1.0 + 0.32 * len(rows)
    fig = Figure(figsize=(6.4, min(height, 12)), layout="constrained")
    ax = fig.subplots()
    positions = range(len(rows))[::-1]
    ax.barh(list(positions), [100 * r.sparsity for r in rows], color=REMOVED, label="zero")
    old = {r.name: r.sparsity for r in before.rows} if before is not None else {}
    if any(old.get(r.name, 0.0) > 0 for r in rows):
        ax.barh(
            list(positions),
            [100 * old.get(r.name, 0.0) for r in rows],
            fill=False,
            edgecolor="black",
            linewidth=0.8,
            label="before",
        )
    for y, r in zip(positions, rows, strict=True):
        ax.text(101, y, _counts(r), va="center", fontsize=8)
    ax.set_yticks(list(positions), names, fontsize=8)
    ax.set_xlim(0, 125)
    ax.set_xticks([0, 25, 50, 75, 100])
    ax.set_xlabel("weights that are zero (%)   ·   labels: nonzero/total")
    ax.set_title(_sparsity_title(title, after), fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    if old and any(old.values()):
        fig.legend(loc="outside lower center", ncols=2, fontsize=8)
    return fig


def _counts(row: Row) -> str:
    return f"{row.nonzero:,}/{row.params:,}"


def _sparsity_title(title: str, after: Report) -> str:
    return f"{title}: {after.sparsity:.1%} of all parameters zero"


def width_chart(after: Report, before: Report, title: str = "Width per layer") -> Figure:
    """Horizontal bars: each layer's outputs (channels or neurons) before (outline) and after (filled)."""
    old, rows = _width_rows(after, before)
    fig = Figure(figsize=(6.4, min(1.2 + 0.32 * len(rows), 12)), layout="constrained")
    ax = fig.subplots()
    positions = list(range(len(rows)))[::-1]
    ax.barh(
        positions,
        [old[r.name].shape[0] for r in rows],
        fill=False,
        edgecolor="black",
        linewidth=0.8,
        label="before",
    )
    ax.barh(positions, [r.shape[0] for r in rows], color=KEPT, label="after")
    for y, r in zip(positions, rows, strict=True):
        ax.text(old[r.name].shape[0], y, _widths(old[r.name], r), va="center", fontsize=8)
    ax.set_yticks(positions, [layer_label(old[r.name]) for r in rows], fontsize=8)
    ax.set_xlim(0, 1.25 * max((old[r.name].shape[0] for r in rows), default=1))
    ax.set_xlabel("output channels / neurons")
    ax.set_title(_width_title(title, after, before), fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.legend(loc="outside lower center", ncols=2, fontsize=8)
    return fig


def _width_rows(after: Report, before: Report) -> tuple[dict[str, Row], list[Row]]:
    old = {
        r.name: r
        for r in before.rows
        if r.name.endswith("weight") and r.shape and "Norm" not in r.module_type
    }
    return old, [r for r in after.rows if r.name in old]


def _widths(old: Row, row: Row) -> str:
    return f" {old.shape[0]}→{row.shape[0]}"


def _width_title(title: str, after: Report, before: Report) -> str:
    return f"{title}: {after.params:,} of {before.params:,} parameters left"


def sensitivity_chart(result: Sensitivity, tolerance: float = 0.01) -> Figure:
    """One line per layer: the metric after pruning only that layer, against the level."""
    legend = len(result.curves) <= 12
    rows = (len(result.curves) + 3) // 2 if legend else 0  # the legend below, two columns of labels
    fig = Figure(figsize=(6.4, 3.8 + 0.2 * rows), layout="constrained")
    ax = fig.subplots()
    palette = colormaps["tab10" if len(result.curves) <= 10 else "tab20"]
    ax.set_prop_cycle(color=[palette(i) for i in range(palette.N)])
    levels = [100 * v for v in result.levels]
    for layer, metrics in result.curves.items():
        points = [(x, m) for x, m in zip(levels, metrics, strict=True) if m is not None]
        if points:  # every curve starts at the unpruned model
            xs, ys = zip((0.0, result.baseline), *points, strict=True)
            ax.plot(xs, ys, marker="o", markersize=3, linewidth=1, label=result.label(layer))
    ax.axhline(result.baseline, color="black", linewidth=0.8, linestyle="--", label="unpruned")
    worst = result.baseline + tolerance if result.lower_is_better else result.baseline - tolerance
    ax.axhspan(
        min(worst, result.baseline), max(worst, result.baseline), color="0.85", zorder=0,
        label=f"within {tolerance:g}",
    )  # fmt: skip
    ax.set_xlabel(f"{result.step} amount in one layer (%)")
    ax.set_ylabel(result.metric_name)
    ax.set_title(f"Sensitivity: {result.metric_name} when only one layer is pruned", fontsize=10)
    ax.grid(alpha=0.3)
    if legend:  # below the axes, at the labels' size: long layer labels leave the plot its width
        fig.legend(loc="outside lower center", ncols=2, fontsize=8)
    return fig


def tried_chart(
    points: list[tuple[float, float]],
    metric: str = "metric",
    first: tuple[float, float] | None = None,
    start: float | None = None,
) -> Figure:
    """The metric at every slider value tried so far, in value order.

    ``first``: the cell's own run (value, metric), marked; ``start``: the metric before the cell, a
    dashed line. The y-axis spans at least a tenth of the values' size, so that one test sample's
    difference does not read as a cliff.
    """
    fig = Figure(figsize=(3.6, 2.6))
    fig.subplots_adjust(left=0.2, right=0.95, bottom=0.18, top=0.88)  # fixed: constrained layout is slow
    ax = fig.subplots()
    xs, ys = zip(*sorted(set(points) | ({first} if first else set())), strict=True)
    ax.plot(xs, ys, marker="o", markersize=4, color=KEPT, label="tried")
    if first is not None:
        ax.plot(*first, marker="*", markersize=9, color=REMOVED, linestyle="", label="the cell's value")
    if start is not None:
        ax.axhline(start, color="black", linewidth=0.8, linestyle="--", label="before the cell")
    ax.set_ylim(*metric_range([*ys, *([start] if start is not None else [])]))
    ax.set_xlabel("value tried")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} at each value tried", fontsize=9)
    ax.grid(alpha=0.3)
    if first is not None or start is not None:
        ax.legend(fontsize=7, loc="best")
    return fig


def metric_range(values: list[float]) -> tuple[float, float]:
    """A y-range around ``values`` at least a tenth of their size wide (inside [0, 1] for fractions)."""
    low, high = min(values), max(values)
    span = max(high - low, 0.1 * max(abs(low), abs(high)), 1e-6)
    middle = (low + high) / 2
    bottom, top = middle - 0.6 * span, middle + 0.6 * span
    if low >= 0 and high <= 1:  # an accuracy: never past 0 or 1
        bottom, top = max(bottom, 0.0), min(top, 1.0)
    return bottom, top


def training_chart(result: PruneResult) -> Figure:
    """Recovery: the metric (or the training loss) after each epoch or gradual step, and the sparsity.

    Starts from the metric before the cell; a dashed line marks it, so the cost of the cut
    and what training won back read off the same axis.
    """
    steps = [s for s in result.steps if s.curve]
    points = [p for s in steps for p in s.curve]
    metric = all(isinstance(p.metric, float) for p in points)
    measured = result.metrics() if metric else []
    start = measured[0].before if measured else None
    labels = ["cell start"] if start is not None else []
    values = [start] if start is not None else []
    for p in points:
        labels.append(p.label)
        value = p.metric if metric else p.loss
        values.append(value if isinstance(value, float) else math.nan)  # (a gap, as None would be)
    fig = Figure(figsize=(max(4.2, 0.5 * len(labels) + 1.5), 3.0))
    fig.subplots_adjust(left=0.16, right=0.86, bottom=0.28, top=0.88)
    ax = fig.subplots()
    xs = range(len(values))
    ax.plot(xs, values, marker="o", markersize=4, color=KEPT, label=result.metric_name if metric else "loss")
    if start is not None:
        ax.axhline(start, color="black", linewidth=0.8, linestyle="--", label="before the cell")
    ax.set_xticks(list(xs), labels, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel(result.metric_name if metric else "training loss")
    ax.grid(alpha=0.3)
    sparsity = [p.sparsity for p in points]
    if len(set(sparsity)) > 1:  # a gradual schedule: sparsity climbs step by step
        twin = ax.twinx()
        offset = len(values) - len(points)
        twin.plot(
            range(offset, len(values)), [100 * s for s in sparsity], marker="s", markersize=3,
            linestyle=":", color=REMOVED, label="sparsity (right axis)",
        )  # fmt: skip
        twin.set_ylabel("sparsity (%)", color=REMOVED)
        twin.set_ylim(0, 100)
        ax.set_zorder(twin.get_zorder() + 1)  # the legend and the metric above the sparsity line
        ax.patch.set_visible(False)
        lines = ax.get_lines() + twin.get_lines()
        ax.legend(lines, [str(line.get_label()) for line in lines], fontsize=7, loc="best")
    else:
        ax.legend(fontsize=7, loc="best")
    kinds = ", ".join(dict.fromkeys(s.step.kind if s.step.kind != "clip" else "gradual clip" for s in steps))
    what = result.metric_name if metric else "training loss"
    ax.set_title(
        f"Recovery ({kinds}): {what} after each {'step' if 'gradual' in kinds else 'epoch'}", fontsize=9
    )
    return fig


def magnitude_histogram(hist: Histogram, layer: str, cut: float | None = None, note: str = "") -> Figure:
    """How many weights have each magnitude |w| (log scale), with a clip's cut drawn at ``cut``
    and ``note`` (what a step without a cut did to the layer) in a box.

    Drawn on a linear axis of log10 |w| with fixed margins: a log-scale axis and constrained
    layout made this the slowest figure of a dashboard update (~0.4 s).
    """
    fig = Figure(figsize=(4.8, 2.8))
    fig.subplots_adjust(left=0.14, right=0.97, bottom=0.17, top=0.88)
    ax = fig.subplots()
    if hist.counts:
        logs = [math.log10(e) for e in hist.edges]
        ax.bar(logs[:-1], hist.counts, width=[b - a for a, b in pairwise(logs)], align="edge", color=KEPT)
        decades = range(math.floor(logs[0]), math.ceil(logs[-1]) + 1)
        ax.set_xticks(list(decades), [f"{10.0**d:g}" for d in decades])
        ax.set_xlim(logs[0], logs[-1])
        if cut is not None and cut > 0:
            ax.axvline(
                math.log10(cut), color=REMOVED, linewidth=1.5, label="cut: smaller |w| are zeroed", gid="cut"
            )
            # the zeroed side, a patch of its own (axvspan's type changed in matplotlib 3.9): Live moves it
            span = Rectangle((logs[0], 0), math.log10(cut) - logs[0], 1, transform=ax.get_xaxis_transform())
            ax.add_patch(span).set(color=REMOVED, alpha=0.15, gid="zeroed", label="_nolegend_")
            ax.legend(fontsize=7, loc="upper left")
    if note:
        ax.text(
            0.98, 0.95, note, transform=ax.transAxes, ha="right", va="top", fontsize=7, wrap=True,
            bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": REMOVED},
        )  # fmt: skip
    sample = " (1/16 sample)" if hist.sampled else ""
    ax.set_title(f"{layer}: |w| before the cell{sample}", fontsize=9)
    ax.set_xlabel("|w| (log scale)")
    ax.set_ylabel("weights")
    return fig


SCALE = 2  # device pixels per CSS pixel: sharp on high-density screens, and no worse elsewhere


def png(fig: Figure) -> bytes:
    """The figure as PNG bytes, at :data:`SCALE` times its natural size (96 pixels an inch); show
    it :func:`css_width` wide, not stretched to the output's width."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=96 * SCALE)
    return buffer.getvalue()


def css_width(image: bytes) -> int:
    """The width (CSS pixels) to show a :func:`png` at: its natural size, the width from its header."""
    return int.from_bytes(image[16:20], "big") // SCALE


class Live:
    """A dashboard chart that changes with every slider move but keeps its frame (axes, ticks,
    labels, layout): drawn in full once, then only the artists that move are drawn again, over
    the saved background (matplotlib's blitting). A move costs ~10 ms of drawing and encoding
    instead of ~60 ms for a new figure. Anything else that changes draws a new figure.
    """

    def __init__(self) -> None:
        self.key: object = None  # what the frame was drawn for
        self.figure: Figure | None = None
        self.moving: list[Artist] = []
        self._kept: object = None  # the histogram drawn (its id() is in the key: kept alive)
        self._canvas: Any = None  # a FigureCanvasAgg (its blitting methods are untyped)
        self._background: Any = None

    def sparsity(self, after: Report, before: Report | None) -> bytes:
        """:func:`sparsity_chart`; a move changes the bars, their labels and the title."""
        rows = [r for r in after.rows if r.name.endswith("weight")] or list(after.rows)
        old = tuple((r.name, r.sparsity) for r in before.rows) if before is not None else None
        key = ("sparsity", tuple((r.name, r.shape, r.params) for r in rows), old)
        if key != self.key:
            fig = sparsity_chart(after, before)
            ax = fig.axes[0]
            return self._draw(key, fig, [*ax.containers[0], *ax.texts, ax.title])
        ax = self.figure.axes[0]  # type: ignore[union-attr]
        for bar, label, row in zip(ax.containers[0], ax.texts, rows, strict=True):
            bar.set_width(100 * row.sparsity)
            label.set_text(_counts(row))
        ax.title.set_text(_sparsity_title("Sparsity per layer", after))
        return self._png()

    def widths(self, after: Report, before: Report) -> bytes:
        """:func:`width_chart`; a move changes the filled bars, their labels and the title."""
        old, rows = _width_rows(after, before)
        key = ("widths", tuple((r.name, r.shape) for r in old.values()), tuple(r.name for r in rows))
        if key != self.key:
            fig = width_chart(after, before)
            ax = fig.axes[0]
            return self._draw(key, fig, [*ax.containers[1], *ax.texts, ax.title])
        ax = self.figure.axes[0]  # type: ignore[union-attr]
        for bar, label, row in zip(ax.containers[1], ax.texts, rows, strict=True):
            bar.set_width(row.shape[0])
            label.set_text(_widths(old[row.name], row))
        ax.title.set_text(_width_title("Width per layer", after, before))
        return self._png()

    def histogram(self, hist: Histogram, layer: str, cut: float | None = None, note: str = "") -> bytes:
        """:func:`magnitude_histogram`; a move shifts the cut."""
        cuts = bool(hist.counts) and cut is not None and cut > 0
        key = ("histogram", id(hist), layer, note, cuts)
        if key != self.key:
            fig = magnitude_histogram(hist, layer, cut, note)
            moving = [a for a in fig.axes[0].get_children() if a.get_gid() in ("cut", "zeroed")]
            return self._draw(key, fig, moving, keep=hist)
        if cuts:
            x = math.log10(cut)  # type: ignore[arg-type]
            line, span = self.moving
            line.set_xdata([x, x])  # type: ignore[attr-defined]
            span.set_width(x - span.get_x())  # type: ignore[attr-defined]
        return self._png()

    def _draw(self, key: object, fig: Figure, moving: list[Artist], keep: object = None) -> bytes:
        self.key, self.figure, self.moving, self._kept = key, fig, moving, keep
        for artist in moving:
            artist.set_animated(True)  # left out of the full draw; drawn over the background
        fig.set_dpi(96 * SCALE)
        self._canvas = FigureCanvasAgg(fig)
        self._canvas.draw()  # (runs the layout engine once, with every artist in place) ...
        fig.set_layout_engine("none")  # ... and keeps that layout from now on
        self._background = self._canvas.copy_from_bbox(fig.bbox)
        return self._png()

    def _png(self) -> bytes:
        from PIL import Image

        canvas, figure = self._canvas, self.figure
        assert canvas is not None and figure is not None
        canvas.restore_region(self._background)
        for artist in self.moving:
            figure.draw_artist(artist)
        image = Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba())
        buffer = io.BytesIO()
        image.save(buffer, format="png", compress_level=1)  # (level 6, savefig's: 5 ms more, 1% smaller)
        return buffer.getvalue()
