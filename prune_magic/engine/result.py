"""What a :func:`~prune_magic.engine.prune.prune` call did: per-step results, the reports and
metrics before and after, the changes and notes they add up to, and the summary lines that say it
(as text; :mod:`prune_magic.views` draws the same facts as an HTML table).
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any, Literal

from .evaluate import Metric, format_change, format_metric, is_fraction, metric_changes
from .quantize import Quantized
from .recipe import Recipe, Step
from .report import Report, Timing
from .structured import Removal
from .train import Point

#: Why a structured step removes more parameters than its amount: said in the text and the dashboard.
WHY_STRUCTURED = (
    "removing a layer's output channels also removes the next layer's inputs, so half the channels is"
    " about three quarters of the parameters of a stack of layers"
)


@dataclass(frozen=True)
class Change:
    """A quantity measured before and after the call: a metric, the MACs or the latency."""

    name: str
    before: float
    after: float


@dataclass(frozen=True)
class Note:
    """What to know beside the numbers; ``str()`` gives ``kind: text``."""

    kind: Literal["dry run", "re-run", "warning", "note"]
    text: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.text}"


@dataclass(frozen=True)
class StepResult:
    """What one recipe line did."""

    step: Step
    targets: tuple[str, ...]
    sparsity: float
    seconds: float
    changed: int | None  # values changed; None when no undo record was kept
    removals: tuple[Removal, ...] = ()  # structured steps: the channels removed per layer
    curve: tuple[Point, ...] = ()  # training steps: metric and sparsity after each epoch / gradual step
    quantized: Quantized | None = None  # quantize steps: how, and the size before/after


@dataclass(frozen=True, repr=False)
class PruneResult:
    """The outcome of :func:`prune`: per-step results, reports and metrics before/after."""

    recipe: Recipe
    steps: tuple[StepResult, ...]
    before: Report | None
    after: Report | None
    metric_before: Metric | None
    metric_after: Metric | None
    dry_run: bool
    seconds: float
    note: str = ""
    replaced: int = 0  # earlier steps with the same tag that this call undid first
    metric_name: str = "metric"  # what a single-number metric is called (the eval function's name)
    latency_before: float | None = None  # seconds per forward of the example input (structured steps)
    latency_after: float | None = None
    notes: tuple[str, ...] = ()  # about the selection: layers skipped and why, tied weights
    timings: tuple[Timing, Timing] | None = None  # the latencies' spread, before and after

    @property
    def structured(self) -> bool:
        """Whether a step removed channels (then widths, not zeros, are the story)."""
        return any(s.removals for s in self.steps)

    def metrics(self) -> list[Change]:
        """Each metric measured before and after (one, named :attr:`metric_name`, or a dict's)."""
        if self.metric_before is None or self.metric_after is None:
            return []
        changes = metric_changes(self.metric_before, self.metric_after, self.metric_name)
        return [Change(name, before, after) for name, before, after in changes]

    def pruned_sparsity(self) -> Change | None:
        """Sparsity of the weights the recipe's clip steps selected (the pruned layers' weights,
        as ``pm.history`` counts them), before and after; :attr:`Report.sparsity` counts every
        parameter (biases too). None without a clip step or reports."""
        names = {n for s in self.steps if s.step.kind == "clip" for n in s.targets}
        if not names or self.before is None or self.after is None:
            return None
        return Change("pruned layers", _sparsity(self.before, names), _sparsity(self.after, names))

    def macs(self) -> Change | None:
        """MACs per forward of the example input, when one was given."""
        b, a = self.before, self.after
        if b is None or a is None or b.macs is None or a.macs is None:
            return None
        return Change("MACs", b.macs, a.macs)

    def latency(self) -> Change | None:
        """Seconds per forward of the example input (structured steps), measured."""
        if self.latency_before is None or self.latency_after is None:
            return None
        return Change("latency", self.latency_before, self.latency_after)

    def latency_line(self, arrow: str = "→") -> str | None:
        """``12.40 ms → 4.10 ms per forward of the example input (3.02x faster, ...)``; or, when the two
        timings' middle halves overlap or differ by under 5%, that the model is too small to time
        reliably; a pass under a millisecond is said to be mostly overhead."""
        latency = self.latency()
        if latency is None:
            return None
        text = f"{latency.before * 1e3:.2f} ms {arrow} {latency.after * 1e3:.2f} ms per forward of the example input"
        ratio = latency.before / latency.after
        noise = self.timings is not None and self.timings[0].overlaps(self.timings[1])
        if noise or abs(ratio - 1) < 0.05:
            return (
                f"{text}: too small to time reliably (the difference is within the run-to-run noise;"
                " a larger model or batch shows it)"
            )
        if latency.before < 1e-3:  # per-call overhead, not arithmetic, sets the time of so short a pass
            return f"{text} ({ratio:.2f}x faster; a pass under 1 ms is mostly overhead: the MACs removed barely show)"
        return f"{text} ({ratio:.2f}x faster; measured on this CPU)"

    def remarks(self) -> list[Note]:
        """What to know beside the numbers: a dry run, a re-run, warnings and notes, in that order."""
        out = []
        if self.dry_run:
            out.append(Note("dry run", "the model was not changed"))
        if self.replaced:
            out.append(Note("re-run", f"first undid the {self.replaced} step(s) this cell applied last time"))
        if self.after is not None:
            dead = [r.name for r in self.after.rows if r.sparsity == 1 and r.name.endswith("weight")]
            if dead:
                out.append(
                    Note(
                        "warning",
                        f"{', '.join(dead)} now entirely zero (the layer passes on only its bias);"
                        " exclude it or use scope=layer",
                    )
                )
        out.extend(Note("note", n) for n in self.notes)
        if self.note:
            out.append(Note("note", self.note))
        return out

    def lines(self) -> list[str]:
        """The summary, one fact a line."""
        remarks = self.remarks()
        out = [str(n) for n in remarks if n.kind in ("dry run", "re-run")]
        out.extend(_step_line(s) for s in self.steps)
        if self.before is not None and self.after is not None:
            b, a = self.before, self.after
            pruned = self.pruned_sparsity()
            layers = (
                f"; {pruned.before:.1%} -> {pruned.after:.1%} of the pruned layers' weights" if pruned else ""
            )
            out.append(
                f"nonzero {b.nonzero:,} -> {a.nonzero:,} of {a.params:,} params "
                f"(sparsity {b.sparsity:.1%} -> {a.sparsity:.1%} of all parameters{layers})"
            )
            if self.structured:
                out.append(
                    f"params {b.params:,} -> {a.params:,} ({a.params / b.params - 1:+.1%}): {WHY_STRUCTURED}"
                )
                macs, latency = self.macs(), self.latency()
                if macs is not None:
                    out.append(
                        f"MACs {int(macs.before):,} -> {int(macs.after):,} ({macs.after / macs.before - 1:+.1%})"
                    )
                if latency is not None:
                    out.append(f"latency {self.latency_line('->')}")
        out.extend(f"{m.name} {format_change(m.name, m.before, m.after, '->')}" for m in self.metrics())
        out.extend(str(n) for n in remarks if n.kind in ("warning", "note"))
        return out

    def __repr__(self) -> str:
        return f"<PruneResult: {'; '.join(self.lines())}>"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))

    def __str__(self) -> str:
        text = "\n".join(self.lines())
        if self.after is not None:
            text += "\n\n" + str(self.after)
        return text

    def _repr_html_(self) -> str:
        items = "".join(f"<li>{html.escape(line)}</li>" for line in self.lines())
        table = self.after._repr_html_() if self.after is not None else ""
        return f"<ul>{items}</ul>{table}"


def _sparsity(report: Report, names: set[str]) -> float:
    rows = [r for r in report.rows if r.name in names]
    params = sum(r.params for r in rows)
    return 1 - sum(r.nonzero for r in rows) / params if params else 0.0


def _step_line(s: StepResult) -> str:
    took = f"({s.seconds * 1e3:.0f} ms)" if s.seconds < 10 else f"({s.seconds:.1f} s)"
    if s.quantized is not None:
        return f"{s.step}: {s.quantized.line()} {took}"
    if s.curve:
        return f"{s.step}: {describe_curve(s)}; now {s.sparsity:.1%} sparse {took}"
    if not s.removals:
        ratio = s.step.ratio("nm") if s.step.kind == "clip" else None
        pattern = (
            f" in a {ratio[0]}:{ratio[1]} pattern ({ratio[0]} zeros in every {ratio[1]} consecutive inputs)"
            if ratio
            else ""
        )
        return f"{s.step}: {len(s.targets)} tensors now {s.sparsity:.1%} sparse{pattern} {took}"
    cut = [r for r in s.removals if not r.why_kept and r.unit == "channels"]
    widths = ", ".join(f"{r.layer} {r.width}->{r.kept}" for r in cut[:6])
    more = f" and {len(cut) - 6} more" if len(cut) > 6 else ""
    removed = sum(len(r.removed) for r in cut) / max(sum(r.width for r in cut), 1)
    line = f"{s.step}: removed {removed:.0%} of the channels of {len(cut)} layers ({widths}{more}) {took}"
    for note in dict.fromkeys(r.note for r in cut if r.note):
        line += f" ({note})"
    heads = [r for r in s.removals if not r.why_kept and r.unit == "heads"]
    if heads:
        counts = ", ".join(f"{r.layer} {r.width}->{r.kept}" for r in heads[:4])
        line += f"; attention heads: {counts}{f' and {len(heads) - 4} more' if len(heads) > 4 else ''}"
        for note in dict.fromkeys(r.note for r in heads if r.note):
            line += f" ({note})"
    whole = [r for r in s.removals if r.why_kept]
    for why in sorted({r.why_kept for r in whole}):
        layers = [r.layer for r in whole if r.why_kept == why]
        line += f"; kept whole ({why}): {', '.join(layers[:4])}{f' and {len(layers) - 4} more' if len(layers) > 4 else ''}"
    return line


def describe_curve(s: StepResult) -> str:
    """``2 epochs; metric 0.80 before training, then 0.87, 0.90; last training loss 1.2``."""
    start = [p for p in s.curve if p.label == "before training"]
    trained = [p for p in s.curve if p.label != "before training"]
    unit = "step" if s.step.kind == "clip" else "epoch"
    text = f"{len(trained)} {unit}{'s' if len(trained) != 1 else ''}"
    if trained and all(isinstance(p.metric, float) for p in trained):
        floats = [p.metric for p in s.curve if isinstance(p.metric, float)]
        percent = is_fraction("metric", *floats)  # (one format for every point of the curve)
        first = (
            f" {format_metric('metric', start[0].metric, percent)} before training, then"
            if start and isinstance(start[0].metric, float)
            else ""
        )
        each = ", ".join(format_metric("metric", p.metric, percent) for p in trained)  # type: ignore[arg-type]
        text += f"; metric{first} {each} after each"
    last = s.curve[-1]
    if last.loss is not None:
        text += f"; last training loss {last.loss:.4g}"
    return text
