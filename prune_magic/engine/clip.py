"""The ``clip`` step: zero the weights of smallest magnitude |w|, in place.

The seed text compares ``w < threshold``, which zeroes every negative weight however
large. Here it is always the magnitude: a weight of -3.0 is kept by ``threshold=0.1``.

- ``threshold=T``: zero every selected weight with |w| < T.
- ``sigma=S``: per layer, T = S x the layer's standard deviation (Han et al. 2015).
- ``amount=A``: zero exactly ``round(A x n)`` weights of smallest |w|, per layer
  (``scope=layer``) or over all selected layers at once (``scope=global``). Ties at the
  cut are broken in selection order, then by position in the tensor.

Without an undo record, zeroing is ``torch.hardshrink`` in place, one fused pass. With
one, on the CPU, when numba is installed and not turned off (``PRUNE_MAGIC_NUMBA=0``),
compiled kernels (``_kernels``) do it in two passes per tensor: an ``amount=`` step's
select marks the changes in the record's packed mask as it goes (a ``threshold=`` or
``sigma=`` step marks them in a pass of its own), then one pass copies the old values out
to an exact-size array (:func:`fresh`) and zeroes them. Else numpy kernels take each
chunk's changed positions and old values just before zeroing it. On other devices, torch
ops do the same on the device.
"""

from __future__ import annotations

import mmap
import sys
from collections.abc import Sequence
from contextlib import suppress
from typing import Any

import numpy as np
import torch

from . import _kernels
from .magnitude import (
    chunk_size,
    chunks,
    flat_view,
    int_array,
    int_view,
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
    # the compiled kernels build the record on the CPU, for a step large enough to be worth them
    on_cpu = records is not None and all(on_numpy(t.param) for t in targets)
    compiled = _kernels.kernels(total) if on_cpu else None
    if "amount" in options:
        amount = float(options["amount"])  # type: ignore[arg-type]
        if options.get("scope") == "global":
            return _clip_count(targets, round(amount * total), records, compiled, total)
        zeros = [_clip_count([t], round(amount * t.param.numel()), records, compiled, total) for t in targets]
        return None if None in zeros else sum(z for z in zeros if z is not None)
    for target in targets:
        if "threshold" in options:
            threshold = float(options["threshold"])  # type: ignore[arg-type]
        else:
            threshold = float(options["sigma"]) * layer_std(target.param)  # type: ignore[arg-type]
        size = chunk_size(target.param.numel())
        _zero_below(target, threshold_key(threshold, target.param.dtype), records, compiled, size)
    return None


def layer_std(param: torch.Tensor) -> float:
    """Standard deviation of a layer's weights (Bessel-corrected, as ``torch.std``); 0 for a
    single weight (no spread: ``sigma=`` clips nothing there, instead of comparing with NaN)."""
    values = param.detach()
    if values.numel() < 2:
        return 0.0
    return float(values.std() if values.dtype in (torch.float32, torch.float64) else values.float().std())


def _clip_count(
    targets: Sequence[Target],
    k: int,
    records: list[TensorRecord] | None,
    compiled: _kernels.Kernels | None,
    weights: int,
) -> int | None:
    """Zero exactly the ``k`` smallest magnitudes over ``targets``; return the zeros after.

    ``compiled``: the kernels that build the record (CPU targets, a record kept), or None.
    ``weights``: how many weights the whole step clips (it decides the select's kernels).
    """
    if k == 0:
        return None
    # the compiled select marks what the cut zeroes as it goes: the record's masks
    marks = [np.empty(-(-t.param.numel() // 8), np.uint8) for t in targets] if compiled is not None else None
    cut = select_cut([t.param for t in targets], k, marks=marks, weights=weights)
    if cut.key == 0:  # the cut falls among weights that are zero already
        return cut.equal
    if compiled is not None and marks is not None and cut.marked is not None and records is not None:
        size = chunk_size(sum(t.param.numel() for t in targets))
        # every tensor's old values in one exact-size array (one element of slack at the end)
        arrays = [int_array(t.param) for t in targets]
        values = fresh(sum(cut.marked) + 1, arrays[0].dtype)
        done = 0
        for target, bits, packed, count in zip(targets, arrays, marks, cut.marked):
            if count:
                record = TensorRecord(target.name)
                _store_compiled(compiled, bits, packed, values[done : done + count + 1], size, record)
                records.append(record)
                done += count
        return k
    key, ties, positions = cut.key, k - cut.below, cut.ties  # ties: weights at the cut that go too
    if ties == cut.equal:  # all of them: the cut falls after the last one
        key, ties, positions = key + 1, 0, None
    size = chunk_size(sum(t.param.numel() for t in targets))
    for i, target in enumerate(targets):
        where = None if positions is None else positions[i]
        ties = _zero_below(target, key, records, compiled, size, ties, where)
    return k


def _zero_below(
    target: Target,
    key: int,
    records: list[TensorRecord] | None,
    compiled: _kernels.Kernels | None,
    size: int,
    ties: int = 0,
    where: torch.Tensor | None = None,
) -> int:
    """Zero the elements whose magnitude key is below ``key``, and ``ties`` equal to it.

    The ties zeroed here are the elements at positions ``where`` when given, else the
    first ``ties`` elements equal to ``key`` in this tensor. Returns how many of the
    ``ties`` are still to be zeroed (in the next tensors). ``compiled``: the kernels that
    build the record on the CPU, or None.
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
    # (tie positions come only from a select that ran without the compiled kernels)
    if compiled is not None and where is None:
        ties = _record_compiled(compiled, bits.numpy(), key, mask, size, record, ties)
    elif on_numpy(param):
        ties = _record_numpy(flat, bits.numpy(), key, lambd, mask, size, record, ties, where)
    else:
        ties = _record_torch(flat, bits, key, lambd, mask, size, record, ties, where)
    if record.parts:
        records.append(record)
    return ties


def _record_compiled(
    compiled: _kernels.Kernels,
    bits: np.ndarray[Any, Any],
    key: int,
    mask: int,
    size: int,
    record: TensorRecord,
    ties: int,
) -> int:
    """Zero a CPU tensor and record its changes with the compiled kernels.

    One branch-free pass marks the changes in the packed mask (the record's, one array for
    the tensor) and counts them; a second writes the old values to one array of exactly
    that size (one element of slack) and zeroes them. The record's parts are views of the
    two arrays, one per chunk (so an undo unpacks a chunk at a time). The first ``ties``
    elements whose key is ``key`` go too; returns how many of them are left.
    """
    packed = np.empty(-(-bits.size // 8), np.uint8)
    count, left = compiled.mark(bits, key, mask, ties, packed)
    if count:
        values = fresh(count + 1, bits.dtype)
        _store_compiled(compiled, bits, packed, values, size, record)
    return left


def _store_compiled(
    compiled: _kernels.Kernels,
    bits: np.ndarray[Any, Any],
    packed: np.ndarray[Any, Any],
    values: np.ndarray[Any, Any],
    size: int,
    record: TensorRecord,
) -> None:
    """Move the values marked in ``packed`` (as many as ``values`` holds, less the one
    element of slack at its end) to the record, and zero them."""
    n = bits.size
    count = values.size - 1
    # with several chunks, ``size`` is a multiple of 64: each chunk packs into whole bytes
    step = size // 8 if n > size else -(-packed.size // 8) * 8
    written, per_chunk = compiled.compact(bits, packed, values, step)
    if written != count:  # cannot happen unless a kernel is broken
        raise RuntimeError(f"compiled clip kernels disagree: {written} values written, {count} counted")
    ends = np.cumsum(per_chunk).tolist()
    done = 0
    for c, end in enumerate(ends):
        start = c * size
        length = min(size, n - start)
        part = torch.from_numpy(packed[c * step : c * step + -(-length // 8)])
        record.add_packed(start, length, part, torch.from_numpy(values[done:end]))
        done = end


#: Arrays of at least this many bytes get their own memory map (see :func:`fresh`).
MAP_BYTES = 1 << 20
#: A transparent huge page (x86-64, most arm64 kernels).
HUGE_PAGE = 2 << 20
#: ``madvise`` advice (Linux >= 5.14) that faults a range in, writable, in one call.
MADV_POPULATE_WRITE = 23


def fresh(n: int, dtype: np.dtype[Any]) -> np.ndarray[Any, Any]:
    """An uninitialised array for ``n`` values about to be written (an undo record's).

    Fresh memory costs a page fault per 4 KiB page as it is first written: 1.7 ms for the
    3.6 MB record of a 1M-weight clip on this project's 2-core VM, more than the copy. On
    Linux a large array gets its own private map instead, and two hints: the whole 2 MiB
    blocks inside it may be transparent huge pages (what numpy asks for arrays of 4 MiB
    and more, but only for blocks the array fills, so no memory is wasted), and the range
    is faulted in with one ``MADV_POPULATE_WRITE`` call. 0.6 ms for that 3.6 MB here
    (1.7 with ``np.empty``, 1.2 with ``MAP_POPULATE``). A hint the kernel refuses is
    skipped. The map is unmapped when the array and every view of it are freed."""
    nbytes = n * np.dtype(dtype).itemsize
    if nbytes < MAP_BYTES or not sys.platform.startswith("linux"):
        return np.empty(n, dtype)
    try:
        region = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except OSError:  # no map to be had (strict overcommit, say): the allocator may still manage
        return np.empty(n, dtype)
    start = -np.frombuffer(region, np.uint8, 1).ctypes.data % HUGE_PAGE  # the first huge page boundary
    whole = nbytes // HUGE_PAGE * HUGE_PAGE
    length = -(-nbytes // mmap.PAGESIZE) * mmap.PAGESIZE
    for advice, size in ((getattr(mmap, "MADV_HUGEPAGE", None), whole), (MADV_POPULATE_WRITE, length)):
        if advice is not None and size:
            with suppress(OSError):  # an older kernel, or huge pages off
                region.madvise(advice, start, size)
    return np.frombuffer(region, dtype, n, start)


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
    """Zero a CPU tensor chunk by chunk, recording each chunk's changes first."""
    keys = np.empty(size, bits.dtype)
    changed = np.empty(size, np.bool_)
    tied = None if where is None else where.numpy()
    tied_none = np.empty(0, np.int64)
    for start in range(0, bits.size, size):
        chunk = bits[start : start + size]
        n = chunk.size
        k, c = keys[:n], changed[:n]
        np.bitwise_and(chunk, mask, out=k)
        np.less(k, key, out=c)
        if tied is not None:
            hits = tied[np.searchsorted(tied, start) : np.searchsorted(tied, start + n)] - start
        else:
            hits = np.flatnonzero(k == key)[:ties] if ties else tied_none
            ties -= hits.size
        if hits.size:
            c[hits] = True
        count = int(np.count_nonzero(c))
        if not count:
            continue
        values = np.compress(c, chunk)
        if np.count_nonzero(values) < count:  # weights that are +0.0 already: not changes
            np.logical_and(c, chunk != 0, out=c)
            values = np.compress(c, chunk)
        if values.size:
            record.add_packed(
                start, n, torch.from_numpy(np.packbits(c, bitorder="little")), torch.from_numpy(values)
            )
        part = flat[start : start + n]
        torch.hardshrink(part, lambd, out=part)
        if hits.size:
            chunk[hits] = 0
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
