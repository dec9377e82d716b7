"""N:M sparsity (``clip nm=2:4``): exactly N zeros in every M consecutive input weights of
each output, the pattern sparse tensor cores run fast (2:4 on NVIDIA Ampere and later).

The groups run along a layer's inputs: a Linear's rows, a ``Conv1D``'s columns (its weight
is stored transposed) and a ConvNd's flattened (input channel, kernel) rows. Which N go is
chosen by a score: |w| (``by=magnitude``), Wanda's |w| x input norm, or SparseGPT's
w² / [H⁻¹]ᵢᵢ (:mod:`.sparsegpt`).

>>> import torch
>>> nm_mask(torch.tensor([[4.0, 1.0, 3.0, 2.0]]), 2, 4)
tensor([[False,  True, False,  True]])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .bits import flat_view, int_view
from .errors import PruneError
from .language import rows
from .recipe import Step
from .selection import Target
from .snapshot import TensorRecord


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """True at the ``n`` lowest scores of every ``m`` consecutive columns of each row (ties: the
    first goes first). ``scores`` is (out, in) with ``in`` a multiple of ``m``."""
    out, cols = scores.shape
    groups = scores.float().reshape(out, cols // m, m)
    lowest = groups.argsort(dim=2, stable=True)[:, :, :n]
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(2, lowest, True)
    return mask.reshape(out, cols)


def check_groups(step: Step, model: nn.Module, targets: Sequence[Target]) -> tuple[int, int]:
    """The step's (N, M), refused (naming the layer) where a layer's inputs do not split into groups of M."""
    ratio = step.ratio("nm")
    assert ratio is not None
    m = ratio[1]
    for target in targets:
        module = model.get_submodule(target.name.rpartition(".")[0])
        if target.param.dim() < 2:
            raise PruneError(f"line {step.line}: nm= prunes layer weights, and {target.name} is a vector")
        cols = rows(module, target.param).shape[1]
        if cols % m:
            raise PruneError(
                f"line {step.line}: nm={step.options['nm']} needs each layer's inputs in groups of {m}, and"
                f" {target.name} has {cols}; exclude it (exclude={target.name.rpartition('.')[0]}) or pick M"
                f" dividing {cols}"
            )
    return ratio


@torch.no_grad()
def zero_where(target: Target, mask: torch.Tensor, records: list[TensorRecord] | None) -> None:
    """Zero ``target`` where ``mask`` (its shape) is True, recording the values that change."""
    param = target.param
    # in the weight's memory order, as the record's positions are (channels_last, transposed)
    changed = flat_view(torch.empty_like(param, dtype=torch.bool).copy_(mask & (param != 0)))
    if records is not None and bool(changed.any()):
        padded = torch.zeros(-(-changed.numel() // 8) * 8, dtype=torch.bool, device=param.device)
        padded[: changed.numel()] = changed
        record = TensorRecord(target.name)
        record.add(0, int_view(param), padded)
        records.append(record)
    param.masked_fill_(mask, 0)


@torch.no_grad()
def apply_nm(
    model: nn.Module, step: Step, targets: Sequence[Target], records: list[TensorRecord] | None
) -> int:
    """``clip nm=N:M``: the N smallest |w| of every group go. Returns the zeros after."""
    n, m = check_groups(step, model, targets)
    zeros = 0
    for target in targets:
        module = model.get_submodule(target.name.rpartition(".")[0])
        mask = torch.zeros_like(target.param, dtype=torch.bool)
        view = rows(module, mask)
        view.copy_(nm_mask(rows(module, target.param).abs(), n, m).reshape(view.shape))
        zero_where(target, mask, records)
        zeros += int((target.param == 0).sum())
    return zeros
