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
  level: the baseline evaluation records them and each level replays them, so only the
  layer and the rest of the network run (:mod:`.replay` says when it cannot);
- a layer's sweep stops once its metric collapses (``stop_below``);
- the baseline is measured once, and a clip puts back only the layer's tensors, from a
  copy taken once per layer.

Points are independent, so they can also go elsewhere: with a ``dask.distributed.Client``
as ``executor`` the model and the eval function go to each worker once and every worker
sweeps its copy in place (:mod:`.cluster`); any other ``concurrent.futures``-style executor
(a ``ProcessPoolExecutor``) gets each point with its own copy of the model.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any

import torch
from torch import nn

from .curves import Sensitivity as Sensitivity  # (re-exported: the sweep's result, and its old home)
from .errors import PruneError
from .evaluate import as_metric, eval_mode, metric_name
from .guard import WeightsChanged, check_model, check_untouched, exclusive, versions, who
from .history import sync_versions, taint
from .recipe import Step, parse_step
from .replay import NoPrefix, Plan, Prefix, Recording
from .report import fits
from .selection import Target, select
from .snapshot import Record, deferred_interrupt, restore_all, signature
from .steps import cut, select_targets

Progress = Callable[["Sensitivity"], None]


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
    executor: object = None,
    progress: Progress | None = None,
) -> Sensitivity:
    """Prune each selected layer alone at each level, evaluate, and put it back.

    Args:
        evaluate: ``evaluate(model) -> float``, higher is better (e.g. accuracy), unless its name
            says lower is (``perplexity``, ``loss``: see :func:`.evaluate.lower_is_better`).
        levels: the amounts to try, each ``0 <= level < 1``.
        step: ``"clip"`` (zero the smallest weights) or ``"structured"`` (remove channels;
            needs ``example_input``).
        stop_below: stop a layer's sweep once its metric falls below this (default: half
            the baseline), since higher levels only do worse; for a lower-is-better metric,
            once it rises above this (default: twice the baseline).
        executor: a ``dask.distributed.Client``: the points run on its workers, each
            sweeping its own copy in place (same results, same early stop); or any
            ``concurrent.futures`` executor: each point on its own copy of the model
            (no early stop).
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
    names = [
        t.name.rpartition(".")[0]
        for t in select(model, layers, exclude, step == "clip")
        if t.name.endswith(".weight")
    ]
    if not names:
        raise PruneError("no layer with a weight is selected")
    steps = {(n, v): parse_step(f"{step} amount={v!r} layers={n}") for n in names for v in levels}

    def measure(m: nn.Module) -> float:
        return measure_once(m, evaluate)

    if executor is not None and not callable(getattr(executor, "submit", None)):
        raise TypeError(
            f"executor={type(executor).__name__}: give a dask.distributed.Client or a"
            " concurrent.futures executor (something with .submit)"
        )
    if example_input is not None:
        fits(model, example_input)
    with exclusive(model, "pm.sensitivity"):
        return _sensitivity(model, evaluate, levels, step, names, steps, measure, example_input, data,
                            stop_below, executor, progress)  # fmt: skip


def measure_once(model: nn.Module, evaluate: Callable[[nn.Module], object]) -> float:
    """``evaluate(model)`` in eval mode, checked to leave the weights alone and to give one number."""
    before = versions(model)
    with eval_mode(model):  # an eval that forgets m.eval() must not move BatchNorm statistics
        value = as_metric(evaluate(model))
    check_untouched(model, before, who(evaluate))
    if not isinstance(value, float):
        raise PruneError("the sweep needs an eval function that returns one number")
    return value


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
    executor: object,
    progress: Progress | None,
) -> Sensitivity:
    from .cluster import Cluster, on_cluster  # (it builds on this module)

    started = time.perf_counter()
    cluster = None
    if on_cluster(executor):  # the workers measure the baseline too: the client evaluates nothing
        cluster = Cluster(executor, model, evaluate, step, names, example_input, data, steps, levels)
    # clip leaves everything before the layer as it is: the baseline records what to replay
    recording = Recording(model, names) if step == "clip" and executor is None else None
    with recording if recording is not None else contextlib.nullcontext():
        try:
            baseline = cluster.baseline() if cluster is not None else measure(model)
        except BaseException:
            if cluster is not None:
                cluster.close()
            raise
    plans = recording.finish(names) if recording is not None else {}
    result = Sensitivity(step, levels, baseline, {n: [None] * len(levels) for n in names})
    result.sizes = {n: model.get_parameter(f"{n}.weight").numel() for n in names}
    shapes = {n: "×".join(map(str, model.get_parameter(f"{n}.weight").shape)) for n in names}
    result.kinds = {n: f"{type(model.get_submodule(n)).__name__} {shapes[n]}" for n in names}
    result.metric_name, result.evaluations = metric_name(evaluate), 1
    limit = stop_below if stop_below is not None else result.default_limit()
    changed: tuple[str, ...] = ()
    try:
        if executor is None:
            _sweep_in_place(
                model, steps, names, levels, measure, example_input, data, limit, result, progress, plans
            )
        elif cluster is not None:
            cluster.sweep(limit, result, progress)
        else:
            _sweep_with(executor, model, steps, example_input, data, evaluate, result, progress)
    except KeyboardInterrupt:
        result.stopped = "interrupted (Ctrl-C); the model is as it was"
    except WeightsChanged as exc:
        changed = exc.names
        result.stopped = f"{exc}; the sweep put back its own clips, and what your code changed stays"
    except Exception as exc:
        result.stopped = f"{type(exc).__name__}: {exc}; the model is as it was"
    finally:
        if cluster is not None:
            cluster.close()
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
    plans: dict[str, Plan],
) -> None:
    for name in names:
        targets = select_targets(model, steps[name, levels[0]])
        # structured steps reshape the layer's input side too: only clip can replay a prefix
        with Prefix(model, name, plans[name]) if plans.get(name) else NoPrefix() as prefix:
            saved = Saved(targets) if result.step == "clip" else None
            for i, level in enumerate(levels):
                prefix.rewind()
                metric = point_in_place(
                    model, steps[name, level], targets, saved, measure, example_input, data
                )
                result.curves[name][i] = metric
                result.evaluations += 1
                if progress is not None:
                    progress(result)
                if result.collapsed(metric, limit):
                    break


def point_in_place(
    model: nn.Module,
    step: Step,
    targets: list[Target],
    saved: Saved | None,
    measure: Callable[[nn.Module], float],
    example_input: object,
    data: object,
) -> float:
    """Prune ``model`` in place as ``step`` says, measure, and put it back bit for bit.

    ``saved`` (clip steps): the targets' tensors, written back from that copy; otherwise
    the step's undo records put everything back.
    """
    records: list[Record] = []
    before = signature(model) if saved is None else None
    try:
        if saved is not None:  # clip changes only the layer's weights: put them back from a copy
            cut(model, step, targets, None)
        else:
            _apply(model, step, records, example_input, data)
        return measure(model)
    finally:
        if saved is not None:
            saved.restore()
        restore_all(model, records, expect=before)


class Saved:
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
    model: nn.Module, step: Step, example_input: object, data: object, evaluate: Callable[[nn.Module], object]
) -> float:
    """One point on its own copy of the model (for executors; picklable for process pools)."""
    mine = copy.deepcopy(model)
    _apply(mine, step, [], example_input, data)
    return measure_once(mine, evaluate)


def _sweep_with(
    executor: Executor | Any,  # anything with concurrent.futures' submit
    model: nn.Module,
    steps: dict[tuple[str, float], Step],
    example_input: object,
    data: object,
    evaluate: Callable[[nn.Module], object],
    result: Sensitivity,
    progress: Progress | None,
) -> None:
    futures = {
        key: executor.submit(_point, model, step, example_input, data, evaluate)
        for key, step in steps.items()
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
