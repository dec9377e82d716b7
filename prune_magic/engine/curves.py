"""What a sensitivity sweep found: per layer, the metric after pruning only that layer at each
level, and what follows from it (a per-layer budget, an allocation for a target sparsity, an
estimate for several layers at once).

A metric whose name says lower is better (``perplexity``, ``loss``: see
:func:`.evaluate.lower_is_better`) is read that way: "within tolerance" means at most
``tolerance`` above the baseline, and a drop is a rise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import pairwise

from .evaluate import is_fraction, lower_is_better


@dataclass
class Sensitivity:
    """Per layer, the metric after pruning only that layer at each level."""

    step: str
    levels: tuple[float, ...]
    baseline: float
    curves: dict[str, list[float | None]]  # layer -> metric per level; None: not measured
    metric_name: str = "metric"
    seconds: float = 0.0
    evaluations: int = 0
    stopped: str = ""  # why the sweep ended early (Ctrl-C, an error); "" when complete
    sizes: dict[str, int] = field(default_factory=dict)  # weights per layer
    kinds: dict[str, str] = field(default_factory=dict)  # layer -> its type and weight shape
    _started: float = field(default=0.0, repr=False)

    @property
    def complete(self) -> bool:
        return not self.stopped

    @property
    def lower_is_better(self) -> bool:
        """Whether the metric improves downwards (perplexity, a loss)."""
        return lower_is_better(self.metric_name)

    def worse_by(self, metric: float) -> float:
        """How much worse than the baseline ``metric`` is (negative: better)."""
        return metric - self.baseline if self.lower_is_better else self.baseline - metric

    def collapsed(self, metric: float, limit: float) -> bool:
        """Whether a sweep stops at ``metric``: past ``limit`` in the worse direction."""
        return metric > limit if self.lower_is_better else metric < limit

    def default_limit(self) -> float:
        """Where a layer's sweep stops by default: half the baseline, or twice it for a lower-is-better metric."""
        return self.baseline * 2 if self.lower_is_better else self.baseline / 2

    def budget(self, tolerance: float = 0.01) -> dict[str, float]:
        """Per layer, the highest level whose metric (and every lower level's) stays within
        ``tolerance`` of the baseline; 0.0 where even the lowest level costs more."""
        budget = {}
        for layer, metrics in self.curves.items():
            best = 0.0
            for level, metric in zip(self.levels, metrics, strict=True):
                if metric is None or self.worse_by(metric) > tolerance:
                    break
                best = level
            budget[layer] = best
        return budget

    def drop(self, layer: str, amount: float) -> float:
        """Estimated metric lost when only ``layer`` is pruned by ``amount`` (interpolated;
        a layer whose sweep stopped early is assumed to lose everything past that point)."""
        points = self._drops(layer)
        for (l0, d0), (l1, d1) in pairwise(points):
            if amount <= l1:
                return d0 + (d1 - d0) * (amount - l0) / (l1 - l0) if l1 > l0 else d1
        last_level, last_drop = points[-1]
        return last_drop if amount <= last_level else max(last_drop, self.baseline)

    def _drops(self, layer: str) -> list[tuple[float, float]]:
        """(level, drop) from (0, 0), made non-decreasing, up to the last level measured."""
        points, worst = [(0.0, 0.0)], 0.0
        for level, metric in zip(self.levels, self.curves[layer], strict=True):
            if metric is None:
                break
            worst = max(worst, self.worse_by(metric))
            points.append((level, worst))
        return points

    def _amount_for(self, layer: str, drop: float) -> float:
        """The largest amount whose estimated drop for ``layer`` is at most ``drop``."""
        points = self._drops(layer)
        amount = 0.0
        for (l0, d0), (l1, d1) in pairwise(points):
            if d1 <= drop:
                amount = l1
                continue
            if d0 <= drop:
                amount = l0 + (l1 - l0) * (drop - d0) / (d1 - d0)
            break
        return amount

    def allocate(self, target: float, pinned: dict[str, float] | None = None) -> dict[str, float]:
        """Per-layer amounts that zero about ``target`` of all the layers' weights, giving
        less to sensitive layers: every free layer is pruned up to the same estimated drop.
        ``pinned`` layers keep the amounts given. Capped at the highest level measured."""
        pinned = dict(pinned or {})
        free = [layer for layer in self.curves if layer not in pinned]
        total = sum(self.sizes.values()) or 1
        need = target * total - sum(amount * self.sizes.get(layer, 0) for layer, amount in pinned.items())
        worst = [self.worse_by(m) for c in self.curves.values() for m in c if m is not None]
        low, high = 0.0, max([*worst, 0.0]) + 1e-9

        def zeros(drop: float) -> float:
            return sum(self._amount_for(layer, drop) * self.sizes.get(layer, 0) for layer in free)

        if need > 0:
            for _ in range(60):  # bisect on the common drop
                middle = (low + high) / 2
                low, high = (middle, high) if zeros(middle) < need else (low, middle)
        drop = high if need > 0 else 0.0
        return {layer: pinned.get(layer, round(self._amount_for(layer, drop), 4)) for layer in self.curves}

    def estimate(self, amounts: dict[str, float]) -> float:
        """The metric estimated for pruning several layers at once: the baseline worse by the
        sum of their single-layer drops (interactions are ignored: measure to be sure), never
        past the worst metric the sweep saw (e.g. chance accuracy)."""
        seen = [m for curve in self.curves.values() for m in curve if m is not None]
        drops = sum(self.drop(layer, amount) for layer, amount in amounts.items())
        if self.lower_is_better:
            return min(self.baseline + drops, max(seen, default=math.inf))
        estimate = self.baseline - drops
        return max(estimate, min(seen, default=estimate))

    def recipe(self, tolerance: float = 0.01) -> str:
        """The budget as a recipe: one line per layer that can be pruned at all."""
        return "\n".join(
            f"{self.step} amount={level:g} layers={layer}"
            for layer, level in self.budget(tolerance).items()
            if level > 0
        )

    def label(self, layer: str) -> str:
        """``fc1 · Linear 256×64``: the layer's name, type and weight shape."""
        kind = self.kinds.get(layer)
        return f"{layer} · {kind}" if kind else layer

    def cell(self, metric: float | None) -> str:
        """One metric of the table, with as many decimals as every other (no "0.96" beside "0.9644")."""
        if metric is None:
            return "-"
        values = [self.baseline, *(m for c in self.curves.values() for m in c if m is not None)]
        if is_fraction(self.metric_name, *values):
            return f"{metric:.1%}"
        return f"{metric:.{max(0, 3 - math.floor(math.log10(max(abs(v) for v in values) or 1)))}f}"

    def __str__(self) -> str:
        width = max([len(n) for n in self.curves] + [5])
        head = "layer".ljust(width) + "".join(f"{level:>8.0%}" for level in self.levels)
        lines = [
            f"{self.step} sensitivity: {self.metric_name} per layer and level (baseline {self.cell(self.baseline)})",
            head,
        ]
        for layer, metrics in self.curves.items():
            cells = "".join(f"{self.cell(m):>8}" for m in metrics)
            lines.append(layer.ljust(width) + cells)
        lines.append(f"{self.evaluations} evaluations in {self.seconds:.1f} s")
        if self.stopped:
            lines.append(f"stopped early: {self.stopped}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        import html

        head = "".join(f"<th>{level:.0%}</th>" for level in self.levels)
        rows = "".join(
            f"<tr><td style='text-align:left'>{html.escape(self.label(layer))}</td>"
            + "".join(f"<td style='text-align:right'>{self.cell(m)}</td>" for m in metrics)
            + "</tr>"
            for layer, metrics in self.curves.items()
        )
        note = f"<p>stopped early: {html.escape(self.stopped)}</p>" if self.stopped else ""
        return (
            f"<p>{html.escape(self.step)} sensitivity, baseline {self.cell(self.baseline)}</p>"
            "<table style='font-variant-numeric:tabular-nums'>"
            f"<thead><tr><th>layer</th>{head}</tr></thead><tbody>{rows}</tbody></table>{note}"
        )
