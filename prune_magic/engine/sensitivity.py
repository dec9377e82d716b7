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
  level: the baseline evaluation records every module's output (by reference, no copy)
  and each level replays the outermost ones that end before its layer, so only the layer
  and the rest of the network run, from the first level on. Version counters tell when
  something changed a recorded output in place (an in-place ReLU, a residual ``+=``):
  that module then runs for real. It needs an eval function that feeds the same inputs
  each time: they are compared exactly (keywords too), and replay is off for an
  evaluation that feeds others. Nothing is replayed before a layer whose weights a module
  uses earlier (tied weights);
- a layer's sweep stops once its metric collapses (``stop_below``);
- the baseline is measured once, and a clip puts back only the layer's tensors, from a
  copy taken once per layer.

Points are independent, so they can also go through a ``concurrent.futures``-style
executor (``executor.submit``): each point then prunes its own copy of the model.
"""

from __future__ import annotations

import contextlib
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
from .evaluate import as_metric, eval_mode, metric_name
from .guard import WeightsChanged, check_model, check_untouched, exclusive, versions, who
from .history import sync_versions, taint
from .recipe import Step, parse_step
from .report import fits
from .selection import Target, select
from .snapshot import Record, deferred_interrupt, restore_all, signature
from .steps import cut, select_targets

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
    check_model(model, "pm.sensitivity")
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
        before = versions(m)
        with eval_mode(m):  # an eval that forgets m.eval() must not move BatchNorm statistics
            value = as_metric(evaluate(m))
        check_untouched(m, before, who(evaluate))
        if not isinstance(value, float):
            raise PruneError("the sweep needs an eval function that returns one number")
        return value

    if example_input is not None:
        fits(model, example_input)
    with exclusive(model, "pm.sensitivity"):
        return _sensitivity(model, evaluate, levels, step, names, steps, measure, example_input, data,
                            stop_below, executor, progress)  # fmt: skip


def _sensitivity(
    model: nn.Module,
    evaluate: Callable[[nn.Module], object],
    levels: tuple[float, ...],
    step: str,
    names: list[str],
    steps: dict[tuple[str, float], Step],
    measure: Callable[[nn.Module], float],
    example_input: object,
    data: object,
    stop_below: float | None,
    executor: Executor | None,
    progress: Progress | None,
) -> Sensitivity:
    started = time.perf_counter()
    # clip leaves everything before the layer as it is: the baseline records what to replay
    recording = _Recording(model, names) if step == "clip" and executor is None else None
    with recording if recording is not None else contextlib.nullcontext():
        baseline = measure(model)
    plans = recording.finish(names) if recording is not None else {}
    result = Sensitivity(step, levels, baseline, {n: [None] * len(levels) for n in names})
    result.sizes = {n: model.get_parameter(f"{n}.weight").numel() for n in names}
    result.metric_name, result.evaluations = metric_name(evaluate), 1
    limit = stop_below if stop_below is not None else result.baseline / 2
    changed: tuple[str, ...] = ()
    try:
        if executor is None:
            _sweep_in_place(
                model, steps, names, levels, measure, example_input, data, limit, result, progress, plans
            )
        else:
            _sweep_with(executor, model, steps, example_input, data, measure, result, progress)
    except KeyboardInterrupt:
        result.stopped = "interrupted (Ctrl-C); the model is as it was"
    except WeightsChanged as exc:
        changed = exc.names
        result.stopped = f"{exc}; the sweep put back its own clips, and what your code changed stays"
    except Exception as exc:
        result.stopped = f"{type(exc).__name__}: {exc}; the model is as it was"
    finally:
        sync_versions(model)
        result.seconds = time.perf_counter() - started
    taint(model, changed)  # undo and reset must not pass over what the eval function changed
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
    plans: dict[str, _Plan],
) -> None:
    for name in names:
        targets = select_targets(model, steps[name, levels[0]])
        # structured steps reshape the layer's input side too: only clip can replay a prefix
        with _Prefix(model, name, plans[name]) if plans.get(name) else _NoPrefix() as prefix:
            saved = _Saved(targets) if result.step == "clip" else None
            for i, level in enumerate(levels):
                records: list[Record] = []
                before = signature(model) if saved is None else None
                prefix.rewind()
                try:
                    if saved is not None:  # clip changes only the layer's weights: put them back from a copy
                        cut(model, steps[name, level], targets, None)
                    else:
                        _apply(model, steps[name, level], records, example_input, data)
                    metric = measure(model)
                finally:
                    if saved is not None:
                        saved.restore()
                    restore_all(model, records, expect=before)
                result.curves[name][i] = metric
                result.evaluations += 1
                if progress is not None:
                    progress(result)
                if metric < limit:
                    break


class _Saved:
    """A copy of the targets' tensors, written back bit for bit after each point (even on Ctrl-C)."""

    def __init__(self, targets: list[Target]) -> None:
        self.pairs = [(t.param, t.param.detach().clone()) for t in targets]

    def restore(self) -> None:
        with deferred_interrupt(), torch.no_grad():
            for param, copy_ in self.pairs:
                param.copy_(copy_)


def _apply(model: nn.Module, step: Step, records: list[Record], example_input: object, data: object) -> None:
    cut(model, step, select_targets(model, step), records, example_input, data)


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


class _Output:
    """One recorded module output (see :class:`_Recording`).

    It is handed out as it is, without a copy, while nothing changed it in place: the
    version counters of its tensors tell. Once something did (a ``+=`` after the call, an
    in-place ReLU), the module runs for real again and copies are handed out from then on.
    """

    __slots__ = ("copies", "value", "versions")

    def __init__(self, value: Any) -> None:
        try:
            self.value, self.versions, self.copies = value, _versions(value), False
        except RuntimeError:  # inference-mode tensors have no version counter: keep a copy now
            self.value, self.versions, self.copies = _copy(value), (), True

    def intact(self) -> bool:
        return self.copies or _versions(self.value) == self.versions

    def take(self, run: Callable[[], Any]) -> Any:
        if self.copies:
            return _copy(self.value)
        if _versions(self.value) == self.versions:
            return self.value
        out = run()  # changed in place since it was recorded: compute it again, keep a copy
        self.value, self.copies = _copy(out), True
        return out


@dataclass(eq=False)
class _Call:
    module: nn.Module
    root: int  # which call of the model it belongs to
    start: int
    end: int
    enclosing: tuple[nn.Module, ...]  # the modules whose calls were open around it
    output: _Output | None  # None: an output the replay cannot check (not tensors, tuples, lists)


class _Recording:
    """Every module call inside each call of the model during the baseline evaluation.

    The baseline runs the unpruned model, so the outputs of the calls that end before a
    layer's first call (in each call of the model) are what those calls give at every level
    of that layer: :class:`_Prefix` replays them. The outputs are kept by reference (no
    copy); version counters later tell whether something changed one in place. The model's
    inputs are copied, to check that later evaluations feed the same ones.
    """

    def __init__(self, model: nn.Module, layers: list[str]) -> None:
        self.model = model
        self.targets = {model.get_submodule(n) for n in layers}
        self.calls: list[_Call] = []
        self.inputs: list[tuple[Any, Any]] = []  # per call of the model: its (args, kwargs), copied
        self.first: list[dict[nn.Module, int]] = []  # per call of the model: when each target started
        self.open: list[tuple[nn.Module, int]] = []
        self.active = False
        self.clock = 0
        self.handles: list[Any] = []

    def __enter__(self) -> _Recording:
        self.handles.append(self.model.register_forward_pre_hook(self._enter_model, with_kwargs=True))
        self.handles.append(self.model.register_forward_hook(self._leave_model, always_call=True))
        for module in self.model.modules():
            if module is not self.model:
                self.handles.append(module.register_forward_pre_hook(self._enter))
                self.handles.append(module.register_forward_hook(self._leave))
        return self

    def __exit__(self, *exc: object) -> None:
        with deferred_interrupt():
            for handle in self.handles:
                handle.remove()
        self.handles.clear()
        self.open.clear()

    def _enter_model(self, module: nn.Module, args: Any, kwargs: Any) -> None:
        self.active = True
        self.open.clear()
        self.inputs.append((_snapshot(args), _snapshot(kwargs)))
        self.first.append({})

    def _leave_model(self, module: nn.Module, args: Any, out: Any) -> None:
        self.active = False

    def _enter(self, module: nn.Module, args: Any) -> None:
        if not self.active:
            return
        self.clock += 1
        self.open.append((module, self.clock))
        if module in self.targets:
            self.first[-1].setdefault(module, self.clock)

    def _leave(self, module: nn.Module, args: Any, out: Any) -> None:
        if not self.active or not self.open or self.open[-1][0] is not module:
            return
        _, start = self.open.pop()
        self.clock += 1
        output = _Output(out) if _tensors(out) is not None else None
        enclosing = tuple(m for m, _ in self.open)
        self.calls.append(_Call(module, len(self.inputs) - 1, start, self.clock, enclosing, output))

    def plan(self, layer: str) -> _Plan:
        """The modules to replay before ``layer``, each with its recorded outputs in call order.

        The outermost modules whose calls all end before the layer's first call (in each
        call of the model) and whose outputs are unchanged. Nothing when a module called
        before the layer uses the layer's weights (tied weights change too).
        """
        target = self.model.get_submodule(layer)
        weights = {id(p) for p in target.parameters()}
        before: dict[nn.Module, list[_Call]] = {}
        for call in self.calls:
            if call.end < self.first[call.root].get(target, call.end + 1):
                before.setdefault(call.module, []).append(call)
        if any(id(p) in weights for module in before for p in module.parameters()):
            return _Plan({}, self.inputs)
        kept = {
            m for m, calls in before.items() if all(c.output is not None and c.output.intact() for c in calls)
        }
        outputs = {
            module: [c.output for c in before[module] if c.output is not None]
            for module in kept
            if not any(m in kept for c in before[module] for m in c.enclosing)
        }
        return _Plan(outputs, self.inputs)

    def finish(self, layers: list[str]) -> dict[str, _Plan]:
        """Each layer's plan; the outputs no plan needs are let go."""
        plans = {layer: self.plan(layer) for layer in layers}
        self.calls.clear()
        return plans


@dataclass
class _Plan:
    """What to replay before one layer: per module, its recorded outputs in call order."""

    outputs: dict[nn.Module, list[_Output]]
    inputs: list[tuple[Any, Any]]  # per call of the model: the baseline's (args, kwargs)

    def __bool__(self) -> bool:
        return bool(self.outputs)


class _Prefix:
    """Replays, for one layer, the outputs of the modules that finish before it (module docs).

    The planned modules' ``forward`` is replaced by a lookup, in call order; :meth:`rewind`
    starts each evaluation from the first call. A call of the model with other inputs than
    the baseline's switches the replay off for the rest of that evaluation, and calls
    after the layer's first call (a reused ReLU, say) run for real.
    """

    def __init__(self, model: nn.Module, layer: str, plan: _Plan) -> None:
        self.model, self.target, self.plan = model, model.get_submodule(layer), plan
        self.position: dict[nn.Module, int] = {}
        self.calls = 0
        self.valid = self.active = self.target_seen = False
        self.handles: list[Any] = []

    def __enter__(self) -> _Prefix:
        if not self.plan:
            return self
        self.handles = [
            self.model.register_forward_pre_hook(self._enter_model, with_kwargs=True),
            self.model.register_forward_hook(self._leave_model, always_call=True),
            self.target.register_forward_pre_hook(self._enter_target),
        ]
        for module in self.plan.outputs:
            module.forward = self._lookup(module)
        return self

    def __exit__(self, *exc: object) -> None:
        with deferred_interrupt():
            for handle in self.handles:
                handle.remove()
            for module in self.plan.outputs:
                vars(module).pop("forward", None)  # back to the class's forward

    def rewind(self) -> None:
        """A new evaluation starts: replay from the first call again."""
        self.position.clear()
        self.calls = 0
        self.valid, self.active, self.target_seen = True, False, False

    def _enter_model(self, module: nn.Module, args: Any, kwargs: Any) -> None:
        self.active, self.target_seen = True, False
        inputs = self.plan.inputs
        if self.valid and (self.calls >= len(inputs) or not _same((args, kwargs), inputs[self.calls])):
            self.valid = False  # other inputs than the baseline's: run everything for real
        self.calls += 1

    def _leave_model(self, module: nn.Module, args: Any, out: Any) -> None:
        self.active = False

    def _enter_target(self, module: nn.Module, args: Any) -> None:
        self.target_seen = True

    def _lookup(self, module: nn.Module) -> Callable[..., Any]:
        forward = type(module).forward
        outputs = self.plan.outputs[module]

        def replay(*args: Any, **kwargs: Any) -> Any:
            if not (self.active and self.valid) or self.target_seen:
                return forward(module, *args, **kwargs)
            i = self.position.get(module, 0)
            self.position[module] = i + 1
            if i >= len(outputs):
                return forward(module, *args, **kwargs)
            return outputs[i].take(lambda: forward(module, *args, **kwargs))

        return replay


def _tensors(value: Any) -> list[torch.Tensor] | None:
    """The tensors in an output of tensors, tuples, lists and plain values; None for anything else."""
    if isinstance(value, torch.Tensor):
        return [value]
    if type(value) in (tuple, list):
        found: list[torch.Tensor] = []
        for item in value:
            inner = _tensors(item)
            if inner is None:
                return None
            found += inner
        return found
    return [] if value is None or isinstance(value, int | float | bool | str) else None


def _versions(value: Any) -> tuple[int, ...]:
    return tuple(t._version for t in _tensors(value) or ())


def _copy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, tuple | list) and type(value) in (tuple, list):
        return type(value)(_copy(v) for v in value)
    return value


class _Unknown:
    """An input that could not be copied: equal to nothing, so the replay stays off."""


def _snapshot(value: Any) -> Any:
    """A copy of a model input, to compare later inputs with."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if type(value) in (tuple, list):
        return type(value)(_snapshot(v) for v in value)
    if type(value) is dict:
        return {k: _snapshot(v) for k, v in value.items()}
    try:
        return copy.deepcopy(value)
    except Exception:
        return _Unknown()


def _same(a: Any, b: Any) -> bool:
    """Equal inputs: tensors with the same dtype, shape and bits; other values by ``==``."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and a.device == b.device
            and bool(torch.equal(a.detach(), b))
        )
    if isinstance(a, tuple | list) and isinstance(b, tuple | list):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(b, _Unknown):
        return False
    try:
        return bool(a == b)
    except Exception:
        return False


class _NoPrefix:
    """Stands in for :class:`_Prefix` where nothing can be replayed."""

    def __enter__(self) -> _NoPrefix:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def rewind(self) -> None:
        pass
