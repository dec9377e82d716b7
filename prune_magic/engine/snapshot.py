"""The one snapshot mechanism: what a step changed, kept so it can be put back bit for bit.

A step records, per tensor it changes, a packed bitmask of the changed positions (one
bit per weight) and the old values at those positions, on the CPU. That is the whole
undo record: for a clip it costs the values the step zeroed plus one bit per weight.
Steps that change every value (training) keep a full copy instead.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType

import torch
from torch import nn

from .magnitude import compact, int_view, pack_bits, unpack_bits


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


def restore_all(model: nn.Module, records: list[TensorRecord], swap: bool = False) -> None:
    """Undo ``records`` (in reverse order) on ``model``'s tensors, found by name.

    With ``swap=True`` the records can be restored again to redo them (in the same order).
    """
    tensors = tensors_by_name(model)
    with deferred_interrupt():
        for record in reversed(records):
            record.restore(tensors[record.name], swap)


def redo_all(model: nn.Module, records: list[TensorRecord]) -> None:
    """Redo records that :func:`restore_all` undid with ``swap=True``."""
    tensors = tensors_by_name(model)
    with deferred_interrupt():
        for record in records:
            record.restore(tensors[record.name], swap=True)


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
