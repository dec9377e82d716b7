"""The ``clip`` step: zero the weights of smallest magnitude |w|, in place.

The seed's code compares ``w``, not ``|w|``, with the threshold (``w < threshold``), so it
zeroes every negative weight however large. Here it is always the magnitude: a weight of
-3.0 is kept by ``threshold=0.1``.

- ``threshold=T``: zero every selected weight with |w| < T.
- ``sigma=S``: per layer, T = S x the layer's standard deviation (Han et al. 2015).
- ``amount=A``: zero exactly ``round(A x n)`` weights of smallest |w|, per layer
  (``scope=layer``) or over all selected layers at once (``scope=global``). Ties at the
  cut are broken in selection order, then by position in the tensor.

``amount=`` finds its cut with :func:`.magnitude.select_cut`. Without an undo record,
zeroing is ``torch.hardshrink`` in place, one fused pass. With one, each chunk of a
tensor has its changed positions and old values taken (numpy on the CPU, torch ops on
other devices) just before it is zeroed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .bits import flat_view, int_view
from .magnitude import (
    chunk_size,
    chunks,
    key_bits,
    on_numpy,
    select_cut,
    shrink_value,
    threshold_key,
)
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
    total = sum(t.param.numel() for t in targets)
    if "amount" in options:
        amount = step.number("amount")
        if step.word("scope", "layer") == "global":
            return _clip_count(targets, round(amount * total), records)
        zeros = [_clip_count([t], round(amount * t.param.numel()), records) for t in targets]
        return None if None in zeros else sum(z for z in zeros if z is not None)
    for target in targets:
        if "threshold" in options:
            threshold = step.number("threshold")
        else:
            threshold = step.number("sigma") * layer_std(target.param)
        size = chunk_size(target.param.numel())
        _zero_below(target, threshold_key(threshold, target.param.dtype), records, size)
    return None


def layer_std(param: torch.Tensor) -> float:
    """Standard deviation of a layer's weights (Bessel-corrected, as ``torch.std``); 0 for a
    single weight (no spread: ``sigma=`` clips nothing there, instead of comparing with NaN)."""
    values = param.detach()
    if values.numel() < 2:
        return 0.0
    return float(values.std() if values.dtype in (torch.float32, torch.float64) else values.float().std())


def _clip_count(targets: Sequence[Target], k: int, records: list[TensorRecord] | None) -> int | None:
    """Zero exactly the ``k`` smallest magnitudes over ``targets``; return the zeros after."""
    if k == 0:
        return None
    cut = select_cut([t.param for t in targets], k)
    if cut.key == 0:  # the cut falls among weights that are zero already
        return cut.equal
    key, ties, positions = cut.key, k - cut.below, cut.ties  # ties: weights at the cut that go too
    if ties == cut.equal:  # all of them: the cut falls after the last one
        key, ties, positions = key + 1, 0, None
    size = chunk_size(sum(t.param.numel() for t in targets))
    for i, target in enumerate(targets):
        where = None if positions is None else positions[i]
        ties = _zero_below(target, key, records, size, ties, where)
    return k


def _zero_below(
    target: Target,
    key: int,
    records: list[TensorRecord] | None,
    size: int,
    ties: int = 0,
    where: torch.Tensor | None = None,
) -> int:
    """Zero the elements whose magnitude key is below ``key``, and ``ties`` equal to it.

    The ties zeroed here are the elements at positions ``where`` when given, else the
    first ``ties`` elements equal to ``key`` in this tensor. Returns how many of the
    ``ties`` are still to be zeroed (in the next tensors).
    """
    param = target.param
    lambd = shrink_value(key, param.dtype)
    if lambd is None or not param.numel():  # (an empty layer: nothing to zero)
        return ties
    bits = int_view(param)
    flat = flat_view(param)
    size = min(size, flat.numel())
    mask = (1 << key_bits(param.dtype)) - 1
    if where is not None:
        ties -= where.numel()
    if records is None:  # one fused pass, no scratch memory
        torch.hardshrink(flat, lambd, out=flat)
        if where is not None:
            bits[where] = 0
            return ties
        for _, chunk in chunks(bits, size):
            if not ties:
                break
            hits = _first_equal(chunk, mask, key, ties)
            chunk[hits] = 0
            ties -= hits.numel()
        return ties
    record = TensorRecord(target.name)
    if on_numpy(param):
        ties = _record_numpy(flat, bits.numpy(), key, lambd, mask, size, record, ties, where)
    else:
        ties = _record_torch(flat, bits, key, lambd, mask, size, record, ties, where)
    if record.parts:
        records.append(record)
    return ties


def _record_numpy(
    flat: torch.Tensor,
    bits: np.ndarray[Any, Any],
    key: int,
    lambd: float,
    mask: int,
    size: int,
    record: TensorRecord,
    ties: int,
    where: torch.Tensor | None,
) -> int:
    """Zero a CPU tensor chunk by chunk, recording each chunk's changes first.

    The old values of the whole tensor go to one array, reserved for every element and cut
    to the values written at the end: only the pages written are ever backed by memory (the
    large array's in huge pages), and no chunk allocates or copies its values twice.
    """
    keys = np.empty(size, bits.dtype)
    changed = np.empty(size, np.bool_)
    values = np.empty(bits.size, bits.dtype)
    tied = None if where is None else where.numpy()
    bounds = None if tied is None else np.searchsorted(tied, np.arange(0, bits.size + size, size))
    parts = []
    done = 0
    for c_index, start in enumerate(range(0, bits.size, size)):
        chunk = bits[start : start + size]
        n = chunk.size
        k, c = keys[:n], changed[:n]
        np.bitwise_and(chunk, mask, out=k)
        np.less(k, key, out=c)
        if bounds is not None and tied is not None:
            hits = tied[bounds[c_index] : bounds[c_index + 1]] - start
        elif ties:
            hits = np.flatnonzero(k == key)[:ties]
            ties -= hits.size
        else:
            hits = None
        if hits is not None and hits.size:
            c[hits] = True
        count = int(np.count_nonzero(c))
        if not count:
            continue
        # ("wrap": no bounds check, so take writes straight into ``values``; "raise" buffers)
        out = np.take(chunk, np.flatnonzero(c), out=values[done : done + count], mode="wrap")
        if np.count_nonzero(out) < count:  # weights that are +0.0 already: not changes
            np.logical_and(c, chunk != 0, out=c)
            count = int(np.count_nonzero(c))
            np.take(chunk, np.flatnonzero(c), out=values[done : done + count], mode="wrap")
        if count:
            parts.append((start, n, np.packbits(c, bitorder="little"), done, done + count))
            done += count
        part = flat[start : start + n]
        torch.hardshrink(part, lambd, out=part)
        if hits is not None and hits.size:
            chunk[hits] = 0
    values.resize(done, refcheck=False)  # realloc: in place, no copy (the parts are views after it)
    for start, n, packed, first, end in parts:
        record.add_packed(start, n, torch.from_numpy(packed), torch.from_numpy(values[first:end]))
    return ties


def _record_torch(
    flat: torch.Tensor,
    bits: torch.Tensor,
    key: int,
    lambd: float,
    mask: int,
    size: int,
    record: TensorRecord,
    ties: int,
    where: torch.Tensor | None,
) -> int:
    """The same with torch ops, on the tensor's device; the record goes to the CPU."""
    kept = torch.empty(size, dtype=flat.dtype, device=flat.device)
    changed = torch.zeros(-(-size // 8) * 8, dtype=torch.bool, device=flat.device)
    for offset, chunk in chunks(flat, size):
        n = chunk.numel()
        torch.hardshrink(chunk, lambd, out=kept[:n])
        chunk_bits, kept_bits = bits[offset : offset + n], kept[:n].view(bits.dtype)
        if where is not None:
            inside = where[(where >= offset) & (where < offset + n)]
            kept_bits[inside - offset] = 0
        elif ties:
            hits = _first_equal(chunk_bits, mask, key, ties)
            kept_bits[hits] = 0
            ties -= hits.numel()
        changed[n:] = False
        torch.ne(chunk_bits, kept_bits, out=changed[:n])
        if changed.any():
            record.add(offset, chunk_bits, changed[: -(-n // 8) * 8])
            chunk.copy_(kept[:n])
    return ties


def _first_equal(chunk_bits: torch.Tensor, mask: int, key: int, limit: int) -> torch.Tensor:
    """Positions of the first ``limit`` elements whose magnitude key is ``key``."""
    return ((chunk_bits & mask) == key).nonzero().view(-1)[:limit]
