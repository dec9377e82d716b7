"""Layers whose weight is stored in another form: what a clip must keep right.

``torch.nn.utils.prune``: a clip keeps the mask and the weight in agreement.

Such a layer keeps ``weight_orig`` (a parameter) and ``weight_mask`` (a buffer); its
``weight`` is their product, recomputed before each forward. A clip step selects it
through ``weight_orig`` (see :mod:`.selection`) and

1. first zeroes ``weight_orig`` where the mask is 0 (those weights are zero in the layer
   already), so ``amount=`` counts them as the zeros they are;
2. clips ``weight_orig``;
3. then sets the mask to 0 wherever ``weight_orig`` is 0, so torch's own pruning, which
   holds masked weights at zero while you train, holds the new zeros too;

and ``module.weight`` is computed again. Both tensors are recorded, so undo puts them back
bit for bit.

``weight_norm``: a clip of its direction must not zero a whole row (see :func:`check_directions`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from .bits import flat_view, int_view
from .errors import PruneError
from .selection import Target
from .snapshot import Record, TensorRecord


def _masked(model: nn.Module, targets: Sequence[Target]) -> Iterator[tuple[Target, str, torch.Tensor]]:
    """(target, name of its mask, the mask) for each target that is a torch-pruned ``*_orig``."""
    for target in targets:
        owner, _, attr = target.name.rpartition(".")
        if not attr.endswith("_orig"):
            continue
        mask_attr = attr.removesuffix("_orig") + "_mask"
        mask = model.get_submodule(owner)._buffers.get(mask_attr)
        if mask is not None:
            yield target, f"{owner}.{mask_attr}" if owner else mask_attr, mask


@torch.no_grad()
def zero_masked(model: nn.Module, targets: Sequence[Target], records: list[Record] | None) -> None:
    """Before a clip: zero ``weight_orig`` where the layer's mask hides it."""
    for target, _, mask in _masked(model, targets):
        _zero(target.name, target.param, mask == 0, records)


@torch.no_grad()
def sync_masks(model: nn.Module, targets: Sequence[Target], records: list[Record] | None) -> None:
    """After a clip: mask what the clip zeroed, and compute the layers' weights again."""
    for target, name, mask in _masked(model, targets):
        _zero(name, mask, target.param == 0, records)
    refresh(model)


def check_directions(model: nn.Module, targets: Sequence[Target]) -> None:
    """After a clip: refuse one that zeroed a whole slice of a ``weight_norm`` direction.

    ``weight_norm`` computes ``g * v / |v|`` per slice of ``v`` (per output row by default):
    a slice that is all zeros gives ``0 / 0``, weights that are NaN. The step is rolled back.
    """
    for target in targets:
        if not target.name.endswith("parametrizations.weight.original1"):
            continue
        chain: Any = model.get_submodule(target.name.removesuffix(".original1"))
        norm = chain[0]
        if type(norm).__name__ != "_WeightNorm":
            continue
        v = target.param.detach()
        dim = getattr(norm, "dim", 0)
        slices = v.reshape(1, -1) if dim == -1 else v.transpose(0, dim).reshape(v.shape[dim], -1)
        empty = int((slices == 0).all(dim=1).sum())
        if empty:
            raise PruneError(
                f"{target.name}: the clip zeroed {empty} whole slice(s) of this weight_norm direction, and"
                " weight_norm divides each by its norm (0 / 0: NaN weights); use a smaller amount or"
                " threshold for this layer, or torch.nn.utils.parametrize.remove_parametrizations first"
            )


def refresh(model: nn.Module) -> None:
    """Compute ``module.weight`` of every torch-pruned layer again from ``weight_orig * weight_mask``
    (torch does it before each forward; this makes it right at once, after a clip or an undo)."""
    with torch.no_grad():
        for module in model.modules():
            for hook in module._forward_pre_hooks.values():
                if isinstance(hook, torch_prune.BasePruningMethod):
                    setattr(module, hook._tensor_name, hook.apply_mask(module))  # type: ignore[no-untyped-call]


def _zero(name: str, tensor: torch.Tensor, where: torch.Tensor, records: list[Record] | None) -> None:
    changed = where & (tensor != 0)
    if not bool(changed.any()):
        return
    if records is not None:
        # in the tensor's memory order, as a record's positions are
        flat = flat_view(torch.empty_like(tensor, dtype=torch.bool).copy_(changed))
        padded = torch.zeros(-(-flat.numel() // 8) * 8, dtype=torch.bool, device=tensor.device)
        padded[: flat.numel()] = flat
        record = TensorRecord(name)
        record.add(0, int_view(tensor), padded)
        records.append(record)
    tensor.masked_fill_(changed, 0)
