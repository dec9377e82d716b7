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
def apply_clip(step: Step, targets: Sequence[Target], records: list[TensorRecord] | None) -> int | None:
    """Clip ``targets`` as ``step`` says; append what changed to ``records`` (unless None).

    Returns how many of the targets' weights are zero afterwards when that is known
    without another pass over them (amount steps), else None.
    """
    options = step.options
    if "amount" in options:
        amount = float(options["amount"])  # type: ignore[arg-type]
        if options.get("scope") == "global":
            total = sum(t.param.numel() for t in targets)
            return _clip_count(targets, round(amount * total), records)
        zeros = [_clip_count([t], round(amount * t.param.numel()), records) for t in targets]
        return None if None in zeros else sum(z for z in zeros if z is not None)
    for target in targets:
        if "threshold" in options:
            threshold = float(options["threshold"])  # type: ignore[arg-type]
        else:
            threshold = float(options["sigma"]) * layer_std(target.param)  # type: ignore[arg-type]
        _zero_below(target, threshold_key(threshold, target.param.dtype), records)
    return None


def layer_std(param: torch.Tensor) -> float:
    """Standard deviation of a layer's weights (Bessel-corrected, as ``torch.std``)."""
    values = param.detach()
    return float(values.std() if values.dtype in (torch.float32, torch.float64) else values.float().std())


def _clip_count(targets: Sequence[Target], k: int, records: list[TensorRecord] | None) -> int | None:
    """Zero exactly the ``k`` smallest magnitudes over ``targets``; return the zeros after."""
    if k == 0:
        return None
    key, below, equal = kth_key([t.param for t in targets], k)
    if key == 0:  # the cut falls among weights that are zero already
        return equal
    ties = k - below  # weights with exactly the cut's magnitude that must go too
    if ties == equal:  # all of them: the cut falls after the last one
        key, ties = key + 1, 0
    for target in targets:
        ties = _zero_below(target, key, records, ties)
    return k


def _zero_below(target: Target, key: int, records: list[TensorRecord] | None, ties: int = 0) -> int:
    """Zero the elements whose magnitude key is below ``key``, and the first ``ties`` equal to it.

    Returns how many of the ``ties`` are still to be zeroed (in the next tensors).
    """
    param = target.param
    lambd = shrink_value(key, param.dtype)
    if lambd is None:
        return ties
    bits = int_view(param)
    flat = param.detach().view(-1)
    mask = (1 << key_bits(param.dtype)) - 1
    if records is None:  # one fused pass, no scratch memory
        torch.hardshrink(flat, lambd, out=flat)
        for _, chunk in chunks(bits):
            if not ties:
                break
            hits = _first_equal(chunk, mask, key, ties)
            chunk[hits] = 0
            ties -= hits.numel()
        return ties
    size = min(CHUNK, flat.numel())
    kept = torch.empty(size, dtype=param.dtype, device=param.device)
    changed = torch.zeros(-(-size // 8) * 8, dtype=torch.bool, device=param.device)
    record = TensorRecord(target.name)
    for offset, chunk in chunks(flat):
        n = chunk.numel()
        torch.hardshrink(chunk, lambd, out=kept[:n])
        chunk_bits, kept_bits = bits[offset : offset + n], kept[:n].view(bits.dtype)
        if ties:
            hits = _first_equal(chunk_bits, mask, key, ties)
            kept_bits[hits] = 0
            ties -= hits.numel()
        changed[n:] = False
        torch.ne(chunk_bits, kept_bits, out=changed[:n])
        if changed.any():
            record.add(offset, chunk_bits, changed[: -(-n // 8) * 8])
            chunk.copy_(kept[:n])
    if record.parts:
        records.append(record)
    return ties


def _first_equal(chunk_bits: torch.Tensor, mask: int, key: int, limit: int) -> torch.Tensor:
    """Positions of the first ``limit`` elements whose magnitude key is ``key``."""
    return ((chunk_bits & mask) == key).nonzero().view(-1)[:limit]
