"""Keep clipped weights at zero while the model trains.

No reparametrisation and no forward hooks: the mask is applied to the weights right
after each optimizer step, so the state_dict keeps its keys and a forward pass costs
what it did. The masks (one byte per masked weight) live only inside the ``with`` block.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from .errors import HistoryError
from .guard import exclusive
from .history import Entry, begin, commit, history
from .selection import select
from .snapshot import Record, TensorRecord, tensors_by_name


@dataclass
class Masks:
    """Bool masks (True = held at zero) by parameter name."""

    masks: dict[str, torch.Tensor]
    params: dict[str, nn.Parameter]

    @torch.no_grad()
    def apply(self) -> None:
        """Zero the masked weights now (call it yourself if you update weights by hand)."""
        for name, mask in self.masks.items():
            self.params[name].masked_fill_(mask, 0)

    @property
    def sparsity(self) -> float:
        """The fraction of the masked parameters' weights held at zero."""
        total = sum(m.numel() for m in self.masks.values())
        return sum(int(m.sum()) for m in self.masks.values()) / total if total else 0.0

    @property
    def nbytes(self) -> int:
        return sum(m.numel() for m in self.masks.values())


@contextmanager
def keep_masks(model: nn.Module, *optimizers: torch.optim.Optimizer, undo: bool = True) -> Iterator[Masks]:
    """Hold every clipped weight of ``model`` at zero through the optimizers' steps.

    The weights held are the zeros of the tensors that earlier clip steps changed (or,
    with no history, the zeros of the Linear/Conv weights). With ``undo=True`` the whole
    training run becomes one undoable step: a full copy of the parameters and buffers
    is kept (on the CPU) so ``pm.undo(model)`` returns to the weights before training.

    >>> import torch, prune_magic as pm
    >>> model = torch.nn.Linear(8, 4)
    >>> _ = pm.prune(model, "clip amount=0.5")
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    >>> with pm.keep_masks(model, opt):
    ...     for _ in range(3):
    ...         opt.zero_grad(); model(torch.randn(2, 8)).sum().backward(); opt.step()
    >>> int((model.weight == 0).sum())
    16
    """
    if not optimizers:
        raise TypeError("keep_masks(model, optimizer, ...) needs the optimizer(s) that will train the model")
    with exclusive(model, "pm.keep_masks"), _kept(model, optimizers, undo) as masks:
        yield masks


@contextmanager
def _kept(model: nn.Module, optimizers: tuple[torch.optim.Optimizer, ...], undo: bool) -> Iterator[Masks]:
    begin(model)
    params = dict(model.named_parameters())
    names = _clipped(model)
    masks = Masks({name: params[name].detach() == 0 for name in names}, params)
    if not any(bool(m.any()) for m in masks.masks.values()):
        raise HistoryError(
            "keep_masks found no clipped weights in the model; clip it first, e.g. pm.prune(model, 'clip amount=0.5')"
        )
    started = time.perf_counter()
    records: list[Record] = (
        [TensorRecord.copy_of(name, t) for name, t in tensors_by_name(model).items() if t.is_floating_point()]
        if undo
        else []
    )
    handles = [opt.register_step_post_hook(lambda *_: masks.apply()) for opt in optimizers]
    try:
        yield masks
    finally:
        for handle in handles:
            handle.remove()
        masks.apply()
        total = sum(m.numel() for m in masks.masks.values())
        sparsity = sum(int(m.sum()) for m in masks.masks.values()) / total
        commit(model, Entry("train (keep_masks)", records, sparsity, time.perf_counter() - started, undo))


def _clipped(model: nn.Module) -> list[str]:
    named = {
        r.name
        for e in history(model).entries
        for r in e.records
        if isinstance(r, TensorRecord) and r.full is None
    } | {name for e in history(model).entries for name in e.clipped}  # (by=sparsegpt keeps full records)
    if named:
        return [name for name, _ in model.named_parameters() if name in named]
    return [t.name for t in select(model)]
