"""Multiply-accumulates of a forward pass, per module: counted as the pass runs.

:func:`~prune_magic.engine.report.count_macs` runs one pass to count; :class:`MacTap` counts the passes that run anyway
(a structured step traces the model before it changes and checks it after: the report's
before and after, with no pass of its own).
"""

from __future__ import annotations

from functools import partial
from typing import Any

from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry


def enter(inside: list[str], name: str, module: nn.Module, args: object) -> None:
    inside.append(name)


def leave(inside: list[str], module: nn.Module, args: object, out: object) -> None:
    inside.pop()  # returns None: the output stays as it is


class MacCounter(TorchDispatchMode):  # type: ignore[no-untyped-call]
    """Counts the FLOPs of every op torch's FLOP counter has a formula for."""

    def __init__(self, inside: list[str] | None = None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.total = 0
        self.per_module: dict[str, int] = {}
        self.inside = inside if inside is not None else []  # the modules running now, outermost first

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            flops = int(formula(*args, **(kwargs or {}), out_val=out))
            self.total += flops
            for name in self.inside:
                self.per_module[name] = self.per_module.get(name, 0) + flops
        return out


class MacTap:
    """The MACs of every call of ``model`` on ``example_input`` made inside the block, counted
    as each runs (calls on other inputs, a step's calibration batches, are not counted).

    ``counts[i]`` is what :func:`count_macs` would give for the i-th such call (the total and
    per module name). The modules' hooks and the counting mode live only inside the block.
    """

    def __init__(self, model: nn.Module, example_input: object) -> None:
        self.model = model
        self.args = example_input if isinstance(example_input, tuple) else (example_input,)
        self.counts: list[tuple[int, dict[str, int]]] = []
        self.inside: list[str] = []
        self.counter: MacCounter | None = None
        self.depth = 0  # a call of the model from inside its own call counts in the outer one
        self.handles: list[Any] = []

    def __enter__(self) -> MacTap:
        model = self.model
        self.handles = [
            model.register_forward_pre_hook(self._start),
            model.register_forward_hook(self._stop, always_call=True),
        ]
        for name, module in model.named_modules():
            if name:
                self.handles.append(module.register_forward_pre_hook(partial(enter, self.inside, name)))
                self.handles.append(module.register_forward_hook(partial(leave, self.inside)))
        return self

    def __exit__(self, *exc: object) -> None:
        if self.counter is not None:  # (a call interrupted before its hook could close the count)
            self.counter.__exit__(None, None, None)  # type: ignore[no-untyped-call]
            self.counter = None
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def _start(self, module: nn.Module, args: tuple[object, ...]) -> None:
        self.depth += 1
        if self.depth == 1 and len(args) == len(self.args) and all(a is b for a, b in zip(args, self.args)):
            self.inside.clear()  # (a call that raised left its modules on the stack)
            self.counter = MacCounter(self.inside)
            self.counter.__enter__()  # type: ignore[no-untyped-call]

    def _stop(self, module: nn.Module, args: object, out: object) -> None:  # (also when the call raised)
        self.depth -= 1
        counter = self.counter
        if self.depth == 0 and counter is not None:
            self.counter = None
            counter.__exit__(None, None, None)  # type: ignore[no-untyped-call]
            self.counts.append((counter.total // 2, {n: f // 2 for n, f in counter.per_module.items()}))
