"""Sensitivity: prune one layer at a time at several levels and measure what it costs.

>>> import torch
>>> from torch import nn
>>> torch.manual_seed(0)  # doctest: +ELLIPSIS
<...>
>>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
>>> x = torch.randn(32, 8)
>>> y = model(x).argmax(1)
>>> result = sensitivity(model, lambda m: (m(x).argmax(1) == y).float().mean().item(), levels=(0.5, 0.9))
>>> sorted(result.curves)
['0', '2']
>>> result.baseline
1.0

Each point prunes one layer in place, evaluates and puts the layer back bit for bit
(no copy of the model). Three things keep a sweep fast:

- the modules that finish before the pruned layer starts give the same outputs at every
  level: their outputs are recorded during the layer's first evaluation and replayed
  for the next levels, so only the rest of the network runs (when the eval function
  feeds the same inputs each time; otherwise this is detected and switched off);
- a layer's sweep stops once its metric collapses (``stop_below``);
- the baseline is measured once.

Points are independent, so they can also go through a ``concurrent.futures``-style
executor (``executor.submit``): each point then prunes its own copy of the model.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import torch
from torch import nn

from .errors import PruneError
from .history import sync_versions
from .prune import apply_step, as_metric, metric_name
from .recipe import Step, parse_step
from .selection import select
from .snapshot import Record, restore_all

Progress = Callable[["Sensitivity"], None]


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
    _started: float = field(default=0.0, repr=False)

    @property
    def complete(self) -> bool:
        return not self.stopped

    def budget(self, tolerance: float = 0.01) -> dict[str, float]:
        """Per layer, the highest level whose metric (and every lower level's) stays within
        ``tolerance`` of the baseline; 0.0 where even the lowest level costs more."""
        floor = self.baseline - tolerance
        budget = {}
        for layer, metrics in self.curves.items():
            best = 0.0
            for level, metric in zip(self.levels, metrics, strict=True):
                if metric is None or metric < floor:
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
            worst = max(worst, self.baseline - metric)
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
        worst = [self.baseline - m for c in self.curves.values() for m in c if m is not None]
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
        """The metric estimated for pruning several layers at once: the baseline minus the
        sum of their single-layer drops (interactions are ignored: measure to be sure), never
        below the worst metric the sweep saw (e.g. chance accuracy)."""
        seen = [m for curve in self.curves.values() for m in curve if m is not None]
        estimate = self.baseline - sum(self.drop(layer, amount) for layer, amount in amounts.items())
        return max(estimate, min(seen, default=estimate))

    def recipe(self, tolerance: float = 0.01) -> str:
        """The budget as a recipe: one line per layer that can be pruned at all."""
        return "\n".join(
            f"{self.step} amount={level:g} layers={layer}"
            for layer, level in self.budget(tolerance).items()
            if level > 0
        )

    def __str__(self) -> str:
        width = max([len(n) for n in self.curves] + [5])
        head = "layer".ljust(width) + "".join(f"{level:>8.0%}" for level in self.levels)
        lines = [
            f"{self.step} sensitivity: {self.metric_name} per layer and level (baseline {self.baseline:.4g})",
            head,
        ]
        for layer, metrics in self.curves.items():
            cells = "".join(f"{m:>8.4g}" if m is not None else f"{'-':>8}" for m in metrics)
            lines.append(layer.ljust(width) + cells)
        lines.append(f"{self.evaluations} evaluations in {self.seconds:.1f} s")
        if self.stopped:
            lines.append(f"stopped early: {self.stopped}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        import html

        head = "".join(f"<th>{level:.0%}</th>" for level in self.levels)
        rows = "".join(
            f"<tr><td>{html.escape(layer)}</td>"
            + "".join(f"<td>{m:.4g}</td>" if m is not None else "<td>-</td>" for m in metrics)
            + "</tr>"
            for layer, metrics in self.curves.items()
        )
        note = f"<p>stopped early: {html.escape(self.stopped)}</p>" if self.stopped else ""
        return (
            f"<p>{html.escape(self.step)} sensitivity, baseline {self.baseline:.4g}</p>"
            f"<table><thead><tr><th>layer</th>{head}</tr></thead><tbody>{rows}</tbody></table>{note}"
        )


def sensitivity(
    model: nn.Module,
    evaluate: Callable[[nn.Module], object],
    *,
    levels: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9),
    step: str = "clip",
    layers: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    example_input: object = None,
    data: object = None,
    stop_below: float | None = None,
    executor: Executor | None = None,
    progress: Progress | None = None,
) -> Sensitivity:
    """Prune each selected layer alone at each level, evaluate, and put it back.

    Args:
        evaluate: ``evaluate(model) -> float``, higher is better (e.g. accuracy).
        levels: the amounts to try, each ``0 <= level < 1``.
        step: ``"clip"`` (zero the smallest weights) or ``"structured"`` (remove channels;
            needs ``example_input``).
        stop_below: stop a layer's sweep once its metric falls below this (default: half
            the baseline), since higher levels only do worse.
        executor: run points through ``executor.submit`` (each on its own copy of the
            model) instead of in place, one after the other.
        progress: called with the partial result after every point.

    Ctrl-C or an error in ``evaluate`` stops the sweep: the model is put back exactly
    and the partial result is returned with ``stopped`` saying why.
    """
    if step not in ("clip", "structured"):
        raise PruneError(f"step={step!r}: the sweep prunes with 'clip' or 'structured'")
    levels = tuple(sorted(float(v) for v in levels))
    if not levels or any(not 0 <= v < 1 for v in levels):
        raise PruneError("levels must be amounts 0 <= level < 1, e.g. 0.1,0.3,0.5,0.7,0.9")
    names = [t.name.rpartition(".")[0] for t in select(model, layers, exclude) if t.name.endswith(".weight")]
    if not names:
        raise PruneError("no layer with a weight is selected")
    steps = {(n, v): parse_step(f"{step} amount={v!r} layers={n}") for n in names for v in levels}

    def measure(m: nn.Module) -> float:
        value = as_metric(evaluate(m))
        if not isinstance(value, float):
            raise PruneError("the sweep needs an eval function that returns one number")
        return value

    started = time.perf_counter()
    result = Sensitivity(step, levels, measure(model), {n: [None] * len(levels) for n in names})
    result.sizes = {n: model.get_parameter(f"{n}.weight").numel() for n in names}
    result.metric_name, result.evaluations = metric_name(evaluate), 1
    limit = stop_below if stop_below is not None else result.baseline / 2
    try:
        if executor is None:
            _sweep_in_place(
                model, steps, names, levels, measure, example_input, data, limit, result, progress
            )
        else:
            _sweep_with(executor, model, steps, example_input, data, measure, result, progress)
    except KeyboardInterrupt:
        result.stopped = "interrupted (Ctrl-C); the model is as it was"
    except Exception as exc:
        result.stopped = f"{type(exc).__name__}: {exc}; the model is as it was"
    finally:
        sync_versions(model)
        result.seconds = time.perf_counter() - started
    return result


def _sweep_in_place(
    model: nn.Module,
    steps: dict[tuple[str, float], Step],
    names: list[str],
    levels: tuple[float, ...],
    measure: Callable[[nn.Module], float],
    example_input: object,
    data: object,
    limit: float,
    result: Sensitivity,
    progress: Progress | None,
) -> None:
    for name in names:
        # structured steps reshape the layer's input side too: only clip can replay a prefix
        with _Prefix(model, name) if result.step == "clip" else _NoPrefix() as prefix:
            for i, level in enumerate(levels):
                records: list[Record] = []
                prefix.rewind()
                try:
                    _apply(model, steps[name, level], records, example_input, data)
                    metric = measure(model)
                finally:
                    restore_all(model, records)
                prefix.arm()  # the outputs before the layer are recorded: replay them from now on
                result.curves[name][i] = metric
                result.evaluations += 1
                if progress is not None:
                    progress(result)
                if metric < limit:
                    break


def _apply(model: nn.Module, step: Step, records: list[Record], example_input: object, data: object) -> None:
    apply_step(model, step, select(model, step.options.get("layers")), records, example_input, data)  # type: ignore[arg-type]


def _point(
    model: nn.Module, step: Step, example_input: object, data: object, measure: Callable[[nn.Module], float]
) -> float:
    """One point on its own copy of the model (for executors)."""
    mine = copy.deepcopy(model)
    _apply(mine, step, [], example_input, data)
    return measure(mine)


def _sweep_with(
    executor: Executor,
    model: nn.Module,
    steps: dict[tuple[str, float], Step],
    example_input: object,
    data: object,
    measure: Callable[[nn.Module], float],
    result: Sensitivity,
    progress: Progress | None,
) -> None:
    futures = {
        key: executor.submit(_point, model, step, example_input, data, measure) for key, step in steps.items()
    }
    try:
        for (name, level), future in futures.items():
            result.curves[name][result.levels.index(level)] = future.result()
            result.evaluations += 1
            if progress is not None:
                progress(result)
    finally:
        for future in futures.values():
            future.cancel()


class _Prefix:
    """Replays the outputs of the modules that run before ``layer`` (see the module docs).

    While recording (the layer's first evaluation), every module call that ends before the
    layer's first call (in each call of the model) is recorded with its output (a copy: a later in-place op must not
    change it). :meth:`arm` then replaces the outermost of those modules' ``forward`` by a
    lookup, in call order; :meth:`rewind` starts each evaluation from the first call.
    The model's own inputs are fingerprinted; if an evaluation feeds different ones,
    replay is switched off and every module runs for real again.
    """

    def __init__(self, model: nn.Module, layer: str) -> None:
        self.model, self.target = model, model.get_submodule(layer)
        self.recording, self.valid = True, True
        self.outputs: dict[nn.Module, list[Any]] = {}
        self.enclosing: dict[nn.Module, set[nn.Module]] = {}
        self.inputs: list[tuple[Any, ...]] = []
        self.root_calls = 0
        self.position: dict[nn.Module, int] = {}
        self.stack: list[nn.Module] = []
        self.target_seen = False
        self.handles: list[Any] = []
        self.replaced: list[nn.Module] = []

    def __enter__(self) -> _Prefix:
        for module in self.model.modules():
            self.handles.append(module.register_forward_pre_hook(self._enter))
            self.handles.append(module.register_forward_hook(self._leave))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()
        for module in self.replaced:
            del module.forward  # back to the class's forward

    def _enter(self, module: nn.Module, args: Any) -> None:
        if module is self.model:  # each call of the model: a batch, from its first module on
            self.target_seen = False
            self._check(args)
        if module is self.target:
            self.target_seen = True
        self.stack.append(module)

    def _leave(self, module: nn.Module, args: Any, out: Any) -> None:
        self.stack.pop()
        if self.recording and not self.target_seen and module is not self.model:
            self.outputs.setdefault(module, []).append(_copy(out))
            self.enclosing.setdefault(module, set()).update(self.stack)

    def _check(self, args: Any) -> None:
        print_ = _fingerprint(args)
        if self.recording:
            self.inputs.append(print_)
        elif self.root_calls >= len(self.inputs) or self.inputs[self.root_calls] != print_:
            self.valid = False  # other inputs than recorded: run everything for real
        self.root_calls += 1

    def arm(self) -> None:
        """Stop recording; replay the outermost recorded modules from now on."""
        if not self.recording:
            return
        self.recording = False
        weights = {id(p) for p in self.target.parameters()}
        for module in self.outputs:
            shares = any(id(p) in weights for p in module.parameters())  # tied weights change too
            if not shares and not self.enclosing[module] & self.outputs.keys():
                module.forward = self._lookup(module)
                self.replaced.append(module)

    def rewind(self) -> None:
        """A new evaluation starts: replay from the first call again."""
        self.position.clear()
        self.root_calls = 0

    def _lookup(self, module: nn.Module) -> Callable[..., Any]:
        forward = type(module).forward

        def replay(*args: Any, **kwargs: Any) -> Any:
            if (
                self.target_seen or not self.valid
            ):  # a call after the layer (a reused ReLU, say) runs for real
                return forward(module, *args, **kwargs)
            i = self.position.get(module, 0)
            self.position[module] = i + 1
            if i >= len(self.outputs[module]):
                return forward(module, *args, **kwargs)
            return _copy(self.outputs[module][i])

        return replay


def _copy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, tuple | list):
        return type(value)(_copy(v) for v in value)
    return value


def _fingerprint(args: Any) -> tuple[Any, ...]:
    return tuple(
        (tuple(a.shape), float(a.detach().float().sum())) if isinstance(a, torch.Tensor) else repr(a)[:80]
        for a in args
    )


class _NoPrefix:
    """Stands in for :class:`_Prefix` where nothing can be replayed."""

    def __enter__(self) -> _NoPrefix:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def arm(self) -> None:
        pass

    def rewind(self) -> None:
        pass
