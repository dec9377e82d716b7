"""The ``clip`` step: zero the weights of smallest magnitude |w|, in place.

The seed text compares ``w < threshold``, which zeroes every negative weight however
large. Here it is always the magnitude: a weight of -3.0 is kept by ``threshold=0.1``.

- ``threshold=T``: zero every selected weight with |w| < T.
- ``sigma=S``: per layer, T = S x the layer's standard deviation (Han et al. 2015).
- ``amount=A``: zero exactly ``round(A x n)`` weights of smallest |w|, per layer
  (``scope=layer``) or over all selected layers at once (``scope=global``). Ties at the
  cut are broken in selection order, then by position in the tensor.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .magnitude import CHUNK, chunks, int_view, key_bits, kth_key, shrink_value, threshold_key
from .recipe import Step
from .selection import Target
from .snapshot import TensorRecord


@torch.no_grad()
def apply_clip(step: Step, targets: Sequence[Target], records: list[TensorRecord] | None) -> None:
    """Clip ``targets`` as ``step`` says; append what changed to ``records`` (unless None)."""
    options = step.options
    if "amount" in options:
        amount = float(options["amount"])  # type: ignore[arg-type]
        if options.get("scope") == "global":
            total = sum(t.param.numel() for t in targets)
            _clip_count(targets, round(amount * total), records)
        else:
            for target in targets:
                _clip_count([target], round(amount * target.param.numel()), records)
        return
    for target in targets:
        if "threshold" in options:
            threshold = float(options["threshold"])  # type: ignore[arg-type]
        else:
            threshold = float(options["sigma"]) * layer_std(target.param)  # type: ignore[arg-type]
        _zero_below(target, threshold_key(threshold, target.param.dtype), records)


def layer_std(param: torch.Tensor) -> float:
    """Standard deviation of a layer's weights (Bessel-corrected, as ``torch.std``)."""
    values = param.detach()
    return float(values.std() if values.dtype in (torch.float32, torch.float64) else values.float().std())


def _clip_count(targets: Sequence[Target], k: int, records: list[TensorRecord] | None) -> None:
    """Zero exactly the ``k`` smallest magnitudes over ``targets``."""
    if k == 0:
        return
    key, below, equal = kth_key([t.param for t in targets], k)
    if key == 0:  # the cut falls among weights that are zero already
        return
    ties = k - below
    if ties == equal:  # the cut falls after the last weight with this magnitude
        for target in targets:
            _zero_below(target, key + 1, records)
        return
    for target in targets:
        _zero_below(target, key, records)
    _zero_first_equal(targets, key, ties, records)


def _zero_below(target: Target, key: int, records: list[TensorRecord] | None) -> None:
    """Zero the elements whose magnitude key is below ``key``."""
    param = target.param
    lambd = shrink_value(key, param.dtype)
    if lambd is None:
        return
    bits = int_view(param)
    flat = param.detach().view(-1)
    if records is None:  # one fused pass, no scratch memory
        torch.hardshrink(flat, lambd, out=flat)
        return
    size = min(CHUNK, flat.numel())
    kept = torch.empty(size, dtype=param.dtype, device=param.device)
    changed = torch.zeros(-(-size // 8) * 8, dtype=torch.bool, device=param.device)
    record = TensorRecord(target.name)
    for offset, chunk in chunks(flat):
        n = chunk.numel()
        torch.hardshrink(chunk, lambd, out=kept[:n])
        changed[n:] = False
        torch.ne(bits[offset : offset + n], kept[:n].view(bits.dtype), out=changed[:n])
        if changed.any():
            record.add(offset, bits[offset : offset + n], changed[: -(-n // 8) * 8])
            chunk.copy_(kept[:n])
    if record.parts:
        records.append(record)


def _zero_first_equal(
    targets: Sequence[Target], key: int, count: int, records: list[TensorRecord] | None
) -> None:
    """Zero the first ``count`` elements whose magnitude key equals ``key``."""
    mask = (1 << key_bits(targets[0].param.dtype)) - 1
    for target in targets:
        record = TensorRecord(target.name)
        for offset, chunk in chunks(int_view(target.param)):
            hits = ((chunk & mask) == key).nonzero().view(-1)[:count]
            if not hits.numel():
                continue
            if records is not None:
                changed = torch.zeros(-(-chunk.numel() // 8) * 8, dtype=torch.bool, device=chunk.device)
                changed[hits] = True
                record.add(offset, chunk, changed)
            chunk[hits] = 0
            count -= hits.numel()
            if not count:
                break
        if records is not None and record.parts:
            records.append(record)
        if not count:
            return
