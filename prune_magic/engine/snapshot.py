"""The one snapshot mechanism: what a step changed, kept so it can be put back bit for bit.

A step records, per tensor it changes, a packed bitmask of the changed positions (one
bit per weight) and the old values at those positions, on the CPU. That is the whole
undo record: for a clip it costs the values the step zeroed plus one bit per weight.
Steps that change every value (training) keep a full copy instead. Steps that replace
a module's tensors with smaller ones (structured pruning) keep the original tensor
objects and the module's plain attributes (:class:`ModuleRecord`).
"""

from __future__ import annotations

import copy
import signal
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType

import torch
from torch import nn

from .bits import compact, int_view, pack_bits, unpack_bits
from .errors import HistoryError


@dataclass
class TensorRecord:
    """The old values of one tensor at the positions a step changed."""

    name: str
    # (offset, length, packed mask of the changed positions, their old bit patterns)
    parts: list[tuple[int, int, torch.Tensor, torch.Tensor]] = field(default_factory=list)
    full: torch.Tensor | None = None

    def add(self, offset: int, chunk_bits: torch.Tensor, changed: torch.Tensor) -> None:
        """Keep the old bit patterns of ``chunk_bits`` where ``changed`` is True.

        ``changed`` must be a bool tensor padded with False to a multiple of 8.
        """
        length = chunk_bits.numel()
        packed = pack_bits(changed).cpu()
        self.parts.append((offset, length, packed, compact(chunk_bits, changed[:length])))

    def add_packed(self, offset: int, length: int, packed: torch.Tensor, values: torch.Tensor) -> None:
        """Keep a part built elsewhere: the packed mask (bit i = element ``offset + i``, as
        :func:`pack_bits` packs) and the old bit patterns at the set bits, on the CPU."""
        self.parts.append((offset, length, packed, values))

    @classmethod
    def copy_of(cls, name: str, tensor: torch.Tensor) -> TensorRecord:
        """A full copy, for steps that change every value."""
        return cls(name, full=tensor.detach().to("cpu", copy=True))

    @property
    def nbytes(self) -> int:
        if self.full is not None:
            return self.full.numel() * self.full.element_size()
        return sum(p.numel() + v.numel() * v.element_size() for _, _, p, v in self.parts)

    @property
    def changed(self) -> int:
        """Values this record can put back."""
        if self.full is not None:
            return self.full.numel()
        return sum(v.numel() for _, _, _, v in self.parts)

    def restore(self, tensor: torch.Tensor, swap: bool = False) -> None:
        """Write the old values back into ``tensor`` (in place).

        With ``swap=True`` the record keeps the values it overwrote instead, so restoring
        it a second time redoes the step.
        """
        with torch.no_grad():
            if self.full is not None:
                current = tensor.detach().to("cpu", copy=True) if swap else None
                tensor.copy_(self.full)
                if current is not None:
                    self.full = current
                return
            flat = int_view(tensor)
            for i in reversed(range(len(self.parts))):
                offset, length, packed, values = self.parts[i]
                mask = unpack_bits(packed.to(flat.device), length)
                chunk = flat[offset : offset + length]
                if swap:
                    self.parts[i] = (offset, length, packed, compact(chunk, mask))
                chunk.masked_scatter_(mask, values.to(flat.device))

    def restore_copy(self, model: nn.Module) -> None:
        """Write the old values back into ``model``'s tensor; the record stays as it is."""
        self.restore(tensors_by_name(model)[self.name])


@dataclass
class ModuleRecord:
    """A module's tensors and plain attributes as they were before a step replaced them.

    Structured pruning swaps in new, smaller Parameters; the old objects are kept (moved
    to the CPU once the step is done), so undo puts the very same objects back.
    """

    name: str
    tensors: dict[str, torch.Tensor | None]
    attrs: dict[str, object]
    devices: dict[str, torch.device] = field(default_factory=dict)

    @classmethod
    def capture(cls, name: str, module: nn.Module) -> ModuleRecord:
        tensors = {**module._parameters, **module._buffers}
        attrs: dict[str, object] = {
            k: v for k, v in vars(module).items() if k != "training" and isinstance(v, _PLAIN)
        }
        return cls(name, tensors, attrs)

    def differs_from(self, module: nn.Module) -> bool:
        """Whether ``module`` now holds other tensor objects (or other plain attributes)."""
        now = ModuleRecord.capture(self.name, module)
        return (
            now.tensors.keys() != self.tensors.keys()
            or any(t is not self.tensors[k] for k, t in now.tensors.items())
            or now.attrs != self.attrs
        )

    def park(self, module: nn.Module) -> None:
        """Move the kept tensors that ``module`` no longer holds to the CPU, so the record
        holds no accelerator memory (the ones it still holds stay where they are)."""
        for key, tensor in self.tensors.items():
            current = module._parameters.get(key, module._buffers.get(key))
            if tensor is not None and tensor is not current and tensor.device.type != "cpu":
                self.devices[key] = tensor.device
                tensor.data = tensor.data.to("cpu")

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values() if t is not None)

    @property
    def changed(self) -> int:
        return sum(t.numel() for t in self.tensors.values() if t is not None)

    def restore(self, module: nn.Module, swap: bool = False) -> None:
        """Put the kept tensors and attributes back on ``module``."""
        current = ModuleRecord.capture(self.name, module) if swap else None
        for key, tensor in self.tensors.items():
            if tensor is not None and key in self.devices:
                tensor.data = tensor.data.to(self.devices[key])
            _put(module, key, tensor)
        for key, value in self.attrs.items():
            setattr(module, key, value)
        if current is not None:
            self.tensors, self.attrs, self.devices = current.tensors, current.attrs, {}
            self.park(module)

    def restore_copy(self, model: nn.Module) -> None:
        """Put copies of the kept tensors (on their devices) and the attributes back on the
        submodule of ``model``: the record stays as it is, and shares nothing with ``model``."""
        module = model.get_submodule(self.name)
        for key, tensor in self.tensors.items():
            copied: torch.Tensor | None = None
            if tensor is not None:
                copied = tensor.detach().to(self.devices.get(key, tensor.device), copy=True)
                if isinstance(tensor, nn.Parameter):
                    copied = nn.Parameter(copied, requires_grad=tensor.requires_grad)
            _put(module, key, copied)
        for key, value in self.attrs.items():
            setattr(module, key, value)


def _put(module: nn.Module, key: str, tensor: torch.Tensor | None) -> None:
    """Set a parameter or buffer of ``module`` (a parameter where it holds one by that name)."""
    (module._parameters if key in module._parameters else module._buffers)[key] = tensor  # type: ignore[assignment]


@dataclass
class ChildRecord:
    """A submodule that a step replaced by another (``quantize int8`` with torch.ao), kept whole."""

    name: str
    module: nn.Module

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.module.parameters(), *self.module.buffers()))

    @property
    def changed(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    def restore(self, model: nn.Module, swap: bool = False) -> None:
        """Put the kept submodule back in its place (keeping the one it replaces with ``swap``)."""
        parent, _, child = self.name.rpartition(".")
        owner = model.get_submodule(parent)
        current = getattr(owner, child)
        setattr(owner, child, self.module)
        if swap:
            self.module = current

    def restore_copy(self, model: nn.Module) -> None:
        """Put a copy of the kept submodule in its place: the record stays as it is."""
        parent, _, child = self.name.rpartition(".")
        setattr(model.get_submodule(parent), child, copy.deepcopy(self.module))


@dataclass
class ConfigRecord:
    """Fields of a Hugging Face model's ``config`` (head counts, MLP widths) as they were
    before a structured step changed them; ``name`` is the module that holds the config."""

    name: str
    fields: dict[str, object]

    @property
    def nbytes(self) -> int:
        return 0

    @property
    def changed(self) -> int:
        return 0

    def restore(self, model: nn.Module, swap: bool = False) -> None:
        """Put the fields back (keeping the ones it overwrites with ``swap``)."""
        config = model.get_submodule(self.name).config
        current = {key: getattr(config, key, None) for key in self.fields}
        for key, value in self.fields.items():
            setattr(config, key, value)
        if swap:
            self.fields = current

    def restore_copy(self, model: nn.Module) -> None:
        """Put the fields back on ``model``'s config: the record stays as it is."""
        config = model.get_submodule(self.name).config
        for key, value in self.fields.items():
            setattr(config, key, value)


_PLAIN = (int, float, bool, str, tuple, type(None))
Record = TensorRecord | ModuleRecord | ChildRecord | ConfigRecord


#: Every tensor of a model by name: the object, its shape and dtype (see :func:`signature`).
Signature = dict[str, tuple[int, tuple[int, ...], torch.dtype]]


def signature(model: nn.Module) -> Signature:
    """Which tensor objects ``model`` holds, of what shape and dtype: taken before a step, it
    tells whether undoing the step put back every tensor the step replaced."""
    return {name: (id(t), tuple(t.shape), t.dtype) for name, t in tensors_by_name(model).items()}


def restore_all(
    model: nn.Module, records: Sequence[Record], swap: bool = False, expect: Signature | None = None
) -> None:
    """Undo ``records`` (in reverse order) on ``model``, finding tensors and modules by name.

    With ``swap=True`` the records can be restored again to redo them (:func:`redo_all`).
    With ``expect`` (the :func:`signature` taken before the records were made), raise a
    :class:`HistoryError` naming every tensor that is not back as it was, rather than let
    undo, reset or a rollback say it succeeded.
    """
    with deferred_interrupt():
        for record in reversed(records):
            _restore(model, record, swap)
    if expect is not None:
        now = signature(model)
        wrong = sorted(n for n in now.keys() | expect.keys() if now.get(n) != expect.get(n))
        if wrong:
            shown = ", ".join(
                f"{n} {_described(now.get(n))} (was {_described(expect.get(n))})" for n in wrong[:3]
            )
            more = f" and {len(wrong) - 3} more" if len(wrong) > 3 else ""
            raise HistoryError(
                f"the undo record missed {len(wrong)} tensors, which are not back as they were: {shown}{more};"
                " this is a bug in prune_magic: please report it with the model's class"
            )


def _described(item: tuple[int, tuple[int, ...], torch.dtype] | None) -> str:
    return "missing" if item is None else f"{list(item[1])}"


def redo_all(model: nn.Module, records: list[Record]) -> None:
    """Redo records that :func:`restore_all` undid with ``swap=True``."""
    with deferred_interrupt():
        for record in records:
            _restore(model, record, swap=True)


def _restore(model: nn.Module, record: Record, swap: bool) -> None:
    if isinstance(record, ModuleRecord):
        record.restore(model.get_submodule(record.name), swap)
    elif isinstance(record, ChildRecord | ConfigRecord):
        record.restore(model, swap)
    else:
        record.restore(tensors_by_name(model)[record.name], swap)


def tensors_by_name(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers of ``model``, by their state_dict names."""
    return {**dict(model.named_buffers()), **dict(model.named_parameters())}


@contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Hold Ctrl-C until the block ends, so a pass that cannot be rolled back finishes.

    Off the main thread (where signals can't be caught) it does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        caught.append(signum)

    previous = signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt
