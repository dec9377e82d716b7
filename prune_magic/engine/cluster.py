"""Sensitivity sweeps on a Dask cluster: the model goes to each worker once, not once per point.

``pm.sensitivity(model, evaluate, executor=client)`` with a ``dask.distributed.Client``
(a ``LocalCluster`` on a laptop, a scheduler's address on a cluster):

- the model, the eval function (with what it holds: a notebook's ``X_test``, ``y_test``)
  and the calibration data travel together, scattered once to every worker
  (``broadcast=True``); a point is a task that names only its layer and level;
- a worker sweeps its own copy in place as the local sweep does: it prunes, measures and
  puts the layer back bit for bit, replaying the outputs before the layer from one baseline
  evaluation of its own, and never copies the model per point;
- results are taken per layer in level order as they arrive: the early stop leaves the same
  points as the local sweep (the levels past a collapsed one are cancelled), and progress
  sees each point as it lands; lower levels are scheduled first, so little is wasted;
- Ctrl-C cancels every outstanding future, and the local model is never touched;
- a worker that dies: Dask runs its points again on another (every worker has the payload).

``distributed`` is imported only here, and only when a sweep is given a Dask client.
"""

from __future__ import annotations

import contextlib
import io
import threading
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .errors import PruneError
from .guard import WeightsChanged
from .recipe import Step, parse_step
from .replay import NoPrefix, Plan, Prefix, Recording
from .selection import Target
from .sensitivity import Progress, Saved, Sensitivity, measure_once, point_in_place
from .steps import select_targets


def on_cluster(executor: object) -> bool:
    """Whether ``executor`` is a Dask client (duck-typed: ``distributed`` is not imported)."""
    return type(executor).__module__.partition(".")[0] == "distributed" and hasattr(executor, "scatter")


class Payload:
    """What every worker needs, sent once: the model, the eval function and the sweep's settings.

    They travel as bytes pickled on the client, unpickled on each worker at its first task
    (:class:`Sweeper`): a worker that fetches the payload from another while that one is
    pruning its copy gets the client's bytes, never a copy caught halfway through a point.
    The bytes are ``torch.save``'s (with cloudpickle, so a notebook's functions travel by
    value), which stores each tensor storage once: plain pickling writes a whole storage for
    every view of it, and an eval function over ``X.split(32)`` became 64 copies of ``X``.
    A lock keeps the points of a multi-threaded worker from pruning the same copy at once.
    """

    def __init__(self, blob: bytes) -> None:
        self.blob = blob
        self.sweeper: Sweeper | None = None
        self.lock = threading.Lock()

    @classmethod
    def pack(
        cls,
        model: nn.Module,
        evaluate: Callable[[nn.Module], object],
        step: str,
        names: list[str],
        example_input: object,
        data: object,
    ) -> Payload:
        import cloudpickle  # (comes with distributed) a notebook's functions travel by value

        buffer = io.BytesIO()
        torch.save((model, evaluate, step, names, example_input, data), buffer, pickle_module=cloudpickle)
        return cls(buffer.getvalue())

    def __getstate__(self) -> dict[str, Any]:
        return {"blob": self.blob}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["blob"])  # type: ignore[misc]


class Sweeper:
    """A worker's side of the sweep: its copy of the model, pruned in place one point at a time."""

    def __init__(self, payload: Payload) -> None:
        # this worker's own copy, pruned in place from now on (the client's bytes: trusted)
        unpacked = torch.load(io.BytesIO(payload.blob), weights_only=False)
        self.model: nn.Module = unpacked[0]
        self.evaluate: Callable[[nn.Module], object] = unpacked[1]
        self.step: str = unpacked[2]
        names: list[str] = unpacked[3]
        self.example_input, self.data = unpacked[4], unpacked[5]
        model = self.model
        # clip leaves everything before the layer as it is: one baseline records what to replay
        recording = Recording(model, names) if self.step == "clip" else None
        with recording if recording is not None else contextlib.nullcontext():
            self.baseline = self.measure(model)
        self.plans: dict[str, Plan] = recording.finish(names) if recording is not None else {}
        self.layer = ""
        self.targets: list[Target] = []
        self.saved: Saved | None = None

    def measure(self, model: nn.Module) -> float:
        return measure_once(model, self.evaluate)

    def point(self, name: str, level: float) -> float:
        model = self.model
        step = parse_step(f"{self.step} amount={level!r} layers={name}")
        if name != self.layer:  # one layer's copy at a time: a worker holds one model and one layer more
            self.layer, self.targets = name, select_targets(model, step)
            self.saved = Saved(self.targets) if self.step == "clip" else None
        plan = self.plans.get(name)
        with Prefix(model, name, plan) if plan else NoPrefix() as prefix:
            prefix.rewind()
            return point_in_place(
                model, step, self.targets, self.saved, self.measure, self.example_input, self.data
            )


def remote_point(payload: Payload, name: str, level: float) -> float:
    """One point, run on a worker against its own copy of the model (a Dask task)."""
    with payload.lock:
        return _sweeper(payload).point(name, level)


def remote_baseline(payload: Payload) -> float:
    """The unpruned model's metric, measured on a worker (which records its replay on the way)."""
    with payload.lock:
        return _sweeper(payload).baseline


def _sweeper(payload: Payload) -> Sweeper:
    """This worker's copy, unpacked at its first task (the caller holds the payload's lock)."""
    if payload.sweeper is None:
        payload.sweeper = Sweeper(payload)
    return payload.sweeper


class Cluster:
    """A sweep's payload on ``client``'s workers: the baseline and every point, submitted at once.

    The baseline comes from a worker too (it records that worker's replay on the way), so the
    client evaluates nothing itself: a laptop can drive a sweep it could not run. The points
    go out with it, so the other workers start on theirs (and their own baselines) meanwhile;
    which of them count is decided as results arrive (:meth:`sweep`).
    """

    def __init__(
        self,
        client: Any,
        model: nn.Module,
        evaluate: Callable[[nn.Module], object],
        step: str,
        names: list[str],
        example_input: object,
        data: object,
        steps: dict[tuple[str, float], Step],
        levels: tuple[float, ...],
    ) -> None:
        self.client = client
        payload = Payload.pack(model, evaluate, step, names, example_input, data)
        self.payload = client.scatter(payload, broadcast=True, hash=False)
        self.first = client.submit(remote_baseline, self.payload, pure=False, priority=len(levels) + 1)
        self.futures: dict[tuple[str, int], Any] = {
            (name, i): client.submit(
                remote_point, self.payload, name, level, pure=False, priority=len(levels) - i
            )
            for (name, level) in steps
            for i in [levels.index(level)]
        }

    def baseline(self) -> float:
        value: float = self.first.result()
        return value

    def sweep(self, limit: float, result: Sensitivity, progress: Progress | None) -> None:
        """Take the points as they arrive; ``result`` filled as the local sweep fills it."""
        from distributed import as_completed

        client, futures = self.client, self.futures
        names, levels = list(result.curves), result.levels
        keys = {future.key: key for key, future in futures.items()}
        arrived: dict[tuple[str, int], float] = {}
        taken = dict.fromkeys(names, 0)  # per layer, how many levels are in the result
        open_layers = set(names)
        for future in as_completed(list(futures.values())):
            name, i = keys[future.key]
            if name not in open_layers:
                continue  # a level past the layer's collapse (cancelled, or done before the cancel)
            try:
                arrived[name, i] = future.result()
            except WeightsChanged as exc:  # a worker's copy, not this model: nothing here to taint
                raise PruneError(f"on a worker, {exc}; your model here is as it was") from None
            while (name, taken[name]) in arrived:  # in level order, as the local sweep
                metric = arrived.pop((name, taken[name]))
                result.curves[name][taken[name]] = metric
                taken[name] += 1
                result.evaluations += 1
                if progress is not None:
                    progress(result)
                if result.collapsed(metric, limit) or taken[name] == len(levels):
                    open_layers.discard(name)
                    client.cancel([futures[name, j] for j in range(taken[name], len(levels))])
                    break
            if not open_layers:
                break

    def close(self) -> None:
        """Cancel what is outstanding (Ctrl-C, an error) and let the workers drop the payload."""
        self.client.cancel([self.first, *self.futures.values(), self.payload])
