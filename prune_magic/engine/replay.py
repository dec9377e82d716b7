"""Replaying a sweep's prefix: the outputs of the modules that finish before a pruned layer.

A clip of one layer leaves every module that finishes before it unchanged, so the sweep
(:mod:`.sensitivity`) records, during its baseline evaluation, every module's output
(:class:`Recording`, by reference, no copy) and, at each level of a layer, hands the
outermost ones that end before that layer back instead of running them (:class:`Prefix`).
Version counters tell when something changed a recorded output in place (an in-place ReLU, a
residual ``+=``): that module then runs for real (:class:`Output`). The model's inputs are
compared exactly with the baseline's (keywords too): an evaluation that feeds others runs
everything. Nothing is replayed before a layer whose weights a module uses earlier (tied
weights). What the recording keeps is bounded (:data:`BUDGET`): an eval set whose activations
would not fit (ImageNet's validation set through a ResNet) is swept without the replay.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .snapshot import deferred_interrupt

#: Bytes of outputs and inputs the baseline may keep for the replay. Past it the recording is
#: dropped and every point evaluates the whole model (slower, same results): the replay saves
#: time, it must never be what runs a machine out of memory.
BUDGET = 2**30


class Output:
    """One recorded module output (see :class:`Recording`).

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
class Call:
    module: nn.Module
    root: int  # which call of the model it belongs to
    start: int
    end: int
    enclosing: tuple[nn.Module, ...]  # the modules whose calls were open around it
    output: Output | None  # None: an output the replay cannot check (not tensors, tuples, lists)


class Recording:
    """Every module call inside each call of the model during the baseline evaluation.

    The baseline runs the unpruned model, so the outputs of the calls that end before a
    layer's first call (in each call of the model) are what those calls give at every level
    of that layer: :class:`Prefix` replays them. The outputs are kept by reference (no
    copy); version counters later tell whether something changed one in place. The model's
    inputs are copied, to check that later evaluations feed the same ones.
    """

    def __init__(self, model: nn.Module, layers: list[str]) -> None:
        self.model = model
        self.targets = {model.get_submodule(n) for n in layers}
        self.calls: list[Call] = []
        self.inputs: list[tuple[Any, Any]] = []  # per call of the model: its (args, kwargs), copied
        self.first: list[dict[nn.Module, int]] = []  # per call of the model: when each target started
        self.open: list[tuple[nn.Module, int]] = []
        self.active = False
        self.clock = 0
        self.handles: list[Any] = []
        self.kept = 0  # bytes held for the replay (each storage counted once)
        self.storages: set[int] = set()
        self.over = False  # past BUDGET: nothing recorded, nothing replayed

    def __enter__(self) -> Recording:
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
        if self.over:
            return
        self.active = True
        self.open.clear()
        self.inputs.append((_snapshot(args), _snapshot(kwargs)))
        self.first.append({})
        self._keep(self.inputs[-1])

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
        output = Output(out) if _tensors(out) is not None else None
        enclosing = tuple(m for m, _ in self.open)
        self.calls.append(Call(module, len(self.inputs) - 1, start, self.clock, enclosing, output))
        if output is not None:
            self._keep(output.value)

    def _keep(self, value: Any) -> None:
        """Count what the recording now holds; past :data:`BUDGET`, let all of it go."""
        for tensor in _all_tensors(value):
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in self.storages:  # (held: its address is not reused)
                self.storages.add(storage.data_ptr())
                self.kept += storage.nbytes()
        if self.kept > BUDGET:
            self.over, self.active = True, False
            self.calls.clear()
            self.inputs.clear()
            self.first.clear()
            self.open.clear()
            self.storages.clear()

    def plan(self, layer: str) -> Plan:
        """The modules to replay before ``layer``, each with its recorded outputs in call order.

        The outermost modules whose calls all end before the layer's first call (in each
        call of the model) and whose outputs are unchanged. Nothing when a module called
        before the layer uses the layer's weights (tied weights change too).
        """
        target = self.model.get_submodule(layer)
        weights = {id(p) for p in target.parameters()}
        before: dict[nn.Module, list[Call]] = {}
        for call in self.calls:
            if call.end < self.first[call.root].get(target, call.end + 1):
                before.setdefault(call.module, []).append(call)
        if any(id(p) in weights for module in before for p in module.parameters()):
            return Plan({}, self.inputs)
        kept = {
            m for m, calls in before.items() if all(c.output is not None and c.output.intact() for c in calls)
        }
        outputs = {
            module: [c.output for c in before[module] if c.output is not None]
            for module in kept
            if not any(m in kept for c in before[module] for m in c.enclosing)
        }
        return Plan(outputs, self.inputs)

    def finish(self, layers: list[str]) -> dict[str, Plan]:
        """Each layer's plan; the outputs no plan needs are let go."""
        plans = {layer: self.plan(layer) for layer in layers}
        self.calls.clear()
        return plans


@dataclass
class Plan:
    """What to replay before one layer: per module, its recorded outputs in call order."""

    outputs: dict[nn.Module, list[Output]]
    inputs: list[tuple[Any, Any]]  # per call of the model: the baseline's (args, kwargs)

    def __bool__(self) -> bool:
        return bool(self.outputs)


class Prefix:
    """Replays, for one layer, the outputs of the modules that finish before it (module docs).

    The planned modules' ``forward`` is replaced by a lookup, in call order; :meth:`rewind`
    starts each evaluation from the first call. A call of the model with other inputs than
    the baseline's switches the replay off for the rest of that evaluation, and calls
    after the layer's first call (a reused ReLU, say) run for real.
    """

    def __init__(self, model: nn.Module, layer: str, plan: Plan) -> None:
        self.model, self.target, self.plan = model, model.get_submodule(layer), plan
        self.position: dict[nn.Module, int] = {}
        self.calls = 0
        self.valid = self.active = self.target_seen = False
        self.handles: list[Any] = []

    def __enter__(self) -> Prefix:
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


def _all_tensors(value: Any) -> list[torch.Tensor]:
    """Every tensor in tuples, lists and dicts (inputs' keywords): what a recording holds."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, tuple | list):
        return [t for item in value for t in _all_tensors(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _all_tensors(item)]
    return []


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


class NoPrefix:
    """Stands in for :class:`Prefix` where nothing can be replayed."""

    def __enter__(self) -> NoPrefix:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def rewind(self) -> None:
        pass
