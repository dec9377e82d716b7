"""Exact magnitude arithmetic on weights, in bounded memory.

The magnitude |w| of an IEEE float orders exactly like its bit pattern with the sign
bit cleared (its *key*), so "the k-th smallest |w| over a whole model" is a select over
integer keys, done without a float ``abs()`` temporary.

:func:`select_cut` finds it in one pass over the weights: a strided sample of the keys
brackets the k-th key (a few standard deviations of the sample's rank either side); the
pass counts the keys below the bracket and gathers the few inside it, with their
positions; the k-th is picked among those. Should the bracket miss the k-th (weights
arranged against the sample) or hold too many keys (heavy ties), an exact radix select by
histograms (:func:`_radix_select`) answers instead. Every pass reads the weights chunk by
chunk into preallocated buffers, so nothing concatenates the model or allocates a
whole-model temporary; a chunk is at most 1/16 of the weights.

On the CPU the pass runs in a compiled kernel when numba is installed (``_kernels``; it
can mark a clip's undo record as it goes), else in numpy chunk kernels (numpy's
comparisons and counts are 3-5x faster than torch's at one thread); on other devices in
torch ops, on the device.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import _kernels
from .errors import PruneError

#: Most elements a chunked pass handles at once (256 KiB of float32: the chunk and its
#: scratch stay in the L2 cache).
CHUNK = 1 << 16
#: A select over at most this many weights takes every key as a candidate (no sample).
SMALL = 1 << 16
#: Standard deviations of the sample rank either side of the k-th: the bracket's margin.
SIGMAS = 5.0

_INT_OF = {
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
    torch.float32: torch.int32,
    torch.float64: torch.int64,
}

#: Force the torch kernels on the CPU too (tests of the device path); None: numpy on the CPU.
use_numpy: bool | None = None


def is_dense(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` covers one block of memory exactly, in some order of its dims:
    contiguous, ``channels_last``, a transposed weight. A slice such as ``w[:, ::2]`` is not."""
    expected = 1
    for stride, size in sorted((s, n) for s, n in zip(tensor.stride(), tensor.shape) if n != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def flat_view(tensor: torch.Tensor) -> torch.Tensor:
    """A 1-D view of a dense tensor's elements in memory order (no copy).

    Clipping and its undo records work element by element on this view, so a
    ``channels_last`` Conv weight or a transposed view keeps its layout; a position in a
    record is a position in memory.
    """
    if tensor.is_contiguous():
        return tensor.detach().view(-1)
    if not is_dense(tensor):
        raise PruneError(
            f"a tensor of shape {tuple(tensor.shape)} and strides {tensor.stride()} does not cover its"
            " memory densely (a slice?); make it contiguous first"
        )
    return tensor.detach().as_strided((tensor.numel(),), (1,), tensor.storage_offset())


def int_view(tensor: torch.Tensor) -> torch.Tensor:
    """The flat bit pattern of a float tensor (in memory order), as an integer view (no copy)."""
    kind = _INT_OF.get(tensor.dtype)
    if kind is None:
        raise PruneError(f"weights of dtype {tensor.dtype} are not supported")
    return flat_view(tensor).view(kind)


_NUMPY_INT_OF = {torch.float16: np.int16, torch.float32: np.int32, torch.float64: np.int64}


def int_array(tensor: torch.Tensor) -> np.ndarray[Any, Any]:
    """:func:`int_view` of a CPU tensor as a numpy array (no copy)."""
    kind = _NUMPY_INT_OF.get(tensor.dtype)
    if kind is None or not tensor.is_contiguous():  # bfloat16 has no numpy dtype
        return int_view(tensor).numpy()
    return tensor.detach().numpy().reshape(-1).view(kind)


def key_bits(dtype: torch.dtype) -> int:
    """Bits in a magnitude key (the sign bit dropped)."""
    return torch.finfo(dtype).bits - 1


def _abs_mask(dtype: torch.dtype) -> int:
    return (1 << key_bits(dtype)) - 1


def key_of(value: float, dtype: torch.dtype) -> int:
    """The key of ``|value|`` rounded to ``dtype``."""
    bits = torch.tensor([abs(value)], dtype=torch.float64).to(dtype).view(_INT_OF[dtype])
    return int(bits.item()) & _abs_mask(dtype)


def value_of(key: int, dtype: torch.dtype) -> float:
    """The non-negative float whose key is ``key``."""
    return float(torch.tensor([key], dtype=_INT_OF[dtype]).view(dtype).item())


def threshold_key(threshold: float, dtype: torch.dtype) -> int:
    """The smallest key whose value is >= ``threshold``: keys below it are |w| < threshold."""
    key = key_of(threshold, dtype)
    return key + 1 if value_of(key, dtype) < threshold else key


def chunk_size(total: int) -> int:
    """Elements per chunk for a pass over ``total`` weights: at most CHUNK and total/16.

    A multiple of 64, so every chunk but a tensor's last packs into whole bytes.
    """
    return max(1024, min(CHUNK, total // 16) // 64 * 64)


def chunks(flat: torch.Tensor, size: int = CHUNK) -> Iterator[tuple[int, torch.Tensor]]:
    """(offset, slice) pairs that cover a flat tensor."""
    for start in range(0, flat.numel(), size):
        yield start, flat[start : start + size]


def on_numpy(tensor: torch.Tensor) -> bool:
    """Whether the chunk kernels for ``tensor`` run in numpy (CPU tensors)."""
    return tensor.device.type == "cpu" if use_numpy is None else use_numpy and tensor.device.type == "cpu"


@dataclass(frozen=True)
class Cut:
    """The k-th smallest magnitude over some tensors, and where its ties are.

    ``key``: the k-th smallest key; ``below``: elements with a smaller key; ``equal``:
    elements with that key. ``ties``: per tensor, the positions (sorted, int64, on the
    tensor's device) of the first ``k - below`` elements equal to ``key`` in selection
    order, then flat order: those go with the cut. None when the select did not keep
    positions (the radix fallback); then the first ``k - below`` in that order are meant.
    ``marked``: per tensor, the bits :func:`select_cut` set in the ``marks`` it was given
    (one per element the cut zeroes that is not +0.0 already); None when it set none.
    """

    key: int
    below: int
    equal: int
    ties: tuple[torch.Tensor, ...] | None = None
    marked: tuple[int, ...] | None = None


def kth_key(tensors: Sequence[torch.Tensor], k: int) -> tuple[int, int, int]:
    """Select the k-th smallest magnitude (1-based) over several tensors, exactly.

    Returns ``(key, below, equal)``: the key of the k-th smallest |w|, how many
    elements have a smaller key and how many share it, whatever the ties.
    """
    cut = select_cut(tensors, k)
    return cut.key, cut.below, cut.equal


def select_cut(
    tensors: Sequence[torch.Tensor],
    k: int,
    *,
    sample: bool = True,
    marks: Sequence[np.ndarray[Any, Any]] | None = None,
    weights: int | None = None,
) -> Cut:
    """The k-th smallest magnitude (1-based) over ``tensors``, exactly (see :class:`Cut`).

    ``sample=False`` skips the sampled bracket and runs the exact radix select.

    The compiled CPU kernels (numba, :mod:`._kernels`) run the select when a step over
    ``weights`` weights (default: these tensors') is worth them (see
    :func:`._kernels.kernels`), or when ``marks`` are given: one uint8 array per tensor of
    ``ceil(numel / 8)`` bytes, from a caller that holds the kernels. Then the select's pass
    also sets bit i of a tensor's array for each element i the cut zeroes that is not +0.0
    already (packed as :func:`pack_bits` packs), and ``Cut.marked`` counts them: the mask
    of a clip's undo record comes with the select, no second pass. Else (``Cut.marked``
    None) the arrays hold nothing meaningful.
    """
    dtype = tensors[0].dtype
    if any(t.dtype != dtype for t in tensors):
        found = sorted({str(t.dtype) for t in tensors})
        raise PruneError(
            f"scope=global needs the selected weights in one dtype, found {', '.join(found)};"
            " use scope=layer or select layers of one dtype"
        )
    total = sum(t.numel() for t in tensors)
    if not 1 <= k <= total:
        raise ValueError(f"k={k} is outside 1..{total}")
    views = [int_view(t) for t in tensors]
    if sample:
        most = _abs_mask(dtype)
        lo, hi = (0, most) if total <= SMALL else _bracket(views, k, total, most)
        cap = max(SMALL, total // 32)  # candidates kept: 8-16 bytes each, <= 0.5 B/w
        # given marks, the caller chose the compiled kernels already, whatever the size
        size = None if marks is not None else weights or total
        compiled = _kernels.kernels(size) if all(map(on_numpy, views)) else None
        if compiled is not None:
            cut = _select_compiled(compiled, [int_array(t) for t in tensors], k, lo, hi, most, cap, marks)
            if cut is not None:
                return cut
        else:
            gathered = _gather(views, lo, hi, cap, chunk_size(total))
            if gathered is not None and gathered[0] < k <= gathered[0] + sum(len(c) for c in gathered[1]):
                return _pick(k, *gathered)
    key, below, equal = _radix_select(views, k, chunk_size(total))
    return Cut(key, below, equal)


def _bracket(views: list[torch.Tensor], k: int, total: int, most: int) -> tuple[int, int]:
    """Keys ``lo <= hi`` that likely hold the k-th between them, from a strided sample."""
    stride = max(1, total // min(1 << 16, max(1024, total // 64)))
    parts, offset = [], 0
    for bits in views:
        first = -offset % stride
        if on_numpy(bits):
            parts.append(bits.numpy()[first::stride])  # a small sample; none of the weights
        else:
            parts.append(bits[first::stride].cpu().numpy())
        offset += bits.numel()
    keys = np.concatenate(parts) & most
    s = keys.size
    q = k / total
    margin = SIGMAS * math.sqrt(s * q * (1 - q)) + 2
    lo_rank, hi_rank = math.floor(q * s - margin), math.ceil(q * s + margin)
    ranks = [r for r in (lo_rank, hi_rank) if 0 <= r < s]
    ordered = np.partition(keys, ranks) if ranks else keys
    lo = int(ordered[lo_rank]) if lo_rank >= 0 else 0
    hi = int(ordered[hi_rank]) if hi_rank < s else most
    return lo, hi


#: Elements per block of the compiled select's flags (see ``_kernels._gather``).
_FLAGS = 4096


def _select_compiled(
    compiled: _kernels.Kernels,
    arrays: list[np.ndarray[Any, Any]],
    k: int,
    lo: int,
    hi: int,
    most: int,
    cap: int,
    marks: Sequence[np.ndarray[Any, Any]] | None,
) -> Cut | None:
    """The bracket's pass and the pick with the compiled kernels (one shared candidate
    buffer, in selection order, then flat order); None when the bracket missed or held
    more than ``cap`` keys. ``most``: the key mask (every bit but the sign)."""
    patterns = np.empty(cap + 1, arrays[0].dtype)  # one slot of slack: see _kernels._gather
    # positions within one tensor: 4 bytes do unless a tensor is that large
    positions = np.empty(cap + 1, np.int64 if max(a.size for a in arrays) >= 1 << 31 else np.int32)
    no_marks = np.empty(0, np.uint8)
    scratch = np.empty(2 * _FLAGS, np.uint8)
    below, used = 0, 0
    starts, marked = [], []
    for i, bits in enumerate(arrays):
        starts.append(used)
        under, set_bits, used = compiled.gather(
            bits, lo, hi, most, patterns, positions, used, no_marks if marks is None else marks[i], scratch
        )
        if used > cap:
            return None
        below += under
        marked.append(set_bits)
    starts.append(used)
    if not below < k <= below + used:
        return None
    found = patterns[:used] & most  # their keys
    rank = k - below  # 1-based, among the candidates
    key = int(np.partition(found, rank - 1)[rank - 1])
    going = found < key
    smaller = int(np.count_nonzero(going))
    same = np.flatnonzero(found == key)
    tied = same[: rank - smaller]  # the first ties in selection order go too
    going[tied] = True
    ties = []
    for i in range(len(arrays)):
        start, end = starts[i], starts[i + 1]
        inside = tied[(tied >= start) & (tied < end)] if tied.size else tied
        ties.append(torch.from_numpy(positions[inside].astype(np.int64)))
        if marks is not None and end > start:
            segment = slice(start, end)
            marked[i] += compiled.mark_at(marks[i], positions[segment], patterns[segment], going[segment])
    return Cut(key, below + smaller, same.size, tuple(ties), tuple(marked) if marks is not None else None)


Found = tuple[int, list[torch.Tensor], list[torch.Tensor]]


def _gather(views: list[torch.Tensor], lo: int, hi: int, cap: int, size: int) -> Found | None:
    """One pass: how many keys are below ``lo``, and the keys in ``lo..hi`` with positions.

    Returns ``(below, keys, positions)`` with one keys/positions tensor per view (CPU int
    keys and int64 positions for numpy views; on the device otherwise), or None when more
    than ``cap`` keys fall in the bracket.
    """
    below = 0
    keys: list[torch.Tensor] = []
    positions: list[torch.Tensor] = []
    most = _abs_mask_of(views[0])
    for bits in views:
        room = cap - sum(len(k) for k in keys)
        kernel = _gather_numpy if on_numpy(bits) else _gather_torch
        found = kernel(bits, lo, hi, most, min(size, bits.numel()), room)
        if found is None:
            return None
        below += found[0]
        keys.append(found[1])
        positions.append(found[2])
    return below, keys, positions


def _abs_mask_of(bits: torch.Tensor) -> int:
    return (1 << (8 * bits.element_size() - 1)) - 1


def _gather_numpy(
    view: torch.Tensor, lo: int, hi: int, most: int, size: int, room: int
) -> tuple[int, torch.Tensor, torch.Tensor] | None:
    bits = view.numpy()
    key = np.empty(size, bits.dtype)
    small = np.empty(size, np.bool_)
    inside = np.empty(size, np.bool_)
    below = 0
    keys, positions = [], []
    for start in range(0, bits.size, size):
        chunk = bits[start : start + size]
        n = chunk.size
        k, s, i = key[:n], small[:n], inside[:n]
        np.bitwise_and(chunk, most, out=k)
        if hi < most:
            np.less_equal(k, hi, out=i)
        else:
            i.fill(True)
        if lo > 0:
            np.less(k, lo, out=s)
            below += int(np.count_nonzero(s))
            np.logical_xor(i, s, out=i)  # keys <= hi and not below lo
        where = np.flatnonzero(i)
        room -= where.size
        if room < 0:
            return None
        if where.size:
            keys.append(k[where])
            positions.append(where + start)
    if not keys:
        return below, torch.empty(0, dtype=_torch_of(bits)), torch.empty(0, dtype=torch.int64)
    return below, torch.from_numpy(np.concatenate(keys)), torch.from_numpy(np.concatenate(positions))


def _torch_of(array: np.ndarray[Any, Any]) -> torch.dtype:
    return {2: torch.int16, 4: torch.int32, 8: torch.int64}[array.itemsize]


def _gather_torch(
    bits: torch.Tensor, lo: int, hi: int, most: int, size: int, room: int
) -> tuple[int, torch.Tensor, torch.Tensor] | None:
    key = torch.empty(size, dtype=bits.dtype, device=bits.device)
    small = torch.empty(size, dtype=torch.bool, device=bits.device)
    inside = torch.empty(size, dtype=torch.bool, device=bits.device)
    below = torch.zeros((), dtype=torch.int64, device=bits.device)
    keys, positions = [], []
    for start, chunk in chunks(bits, size):
        n = chunk.numel()
        k, s, i = key[:n], small[:n], inside[:n]
        torch.bitwise_and(chunk, most, out=k)
        torch.le(k, hi, out=i)
        torch.lt(k, lo, out=s)
        below += torch.count_nonzero(s)
        i.logical_xor_(s)
        where = i.nonzero().view(-1)
        room -= where.numel()
        if room < 0:
            return None
        keys.append(k[where])
        positions.append(where + start)
    return int(below), torch.cat(keys), torch.cat(positions)


def _pick(k: int, below: int, keys: list[torch.Tensor], positions: list[torch.Tensor]) -> Cut:
    """The cut from the keys gathered in the bracket (in selection order, then flat order)."""
    every = torch.cat(keys)
    rank = k - below  # 1-based, among the candidates
    if every.device.type == "cpu":
        array = every.numpy()
        key = int(np.partition(array, rank - 1)[rank - 1])
        smaller, equal = int(np.count_nonzero(array < key)), int(np.count_nonzero(array == key))
    else:
        key = int(every.kthvalue(rank).values)
        smaller, equal = int((every < key).sum()), int((every == key).sum())
    left = rank - smaller  # ties at the cut that go too: the first ones
    ties = []
    for part, where in zip(keys, positions):
        hit = where[part == key][:left] if left else where[:0]
        left -= hit.numel()
        ties.append(hit)
    return Cut(key, below + smaller, equal, tuple(ties))


def _radix_select(views: list[torch.Tensor], k: int, size: int) -> tuple[int, int, int]:
    """The exact (key, below, equal) of the k-th key by histograms of 15-16 bit digits.

    The first pass histograms the top 15 bits of every key (for float16/bfloat16 that is
    the whole key); each next pass the next 16 bits of the keys that share the digits
    found so far. Memory: one chunk of scratch and a 2^16-bin histogram, whatever the ties.
    """
    width = 8 * views[0].element_size() - 1
    most = (1 << width) - 1
    device = views[0].device
    prefix = below = equal = 0
    done = 0  # key bits fixed so far, from the top
    while done < width:
        digit = 15 if done == 0 else 16
        shift = width - done - digit
        hist = torch.zeros(1 << digit, dtype=torch.int64, device=device)
        for bits in views:
            for _, chunk in chunks(bits, size):
                key = chunk & most
                if done:
                    key = key[(key >> (shift + digit)) == prefix]
                hist += torch.bincount(((key >> shift) & ((1 << digit) - 1)).long(), minlength=1 << digit)
        cumulative = hist.cpu().cumsum(0)
        top = int(torch.searchsorted(cumulative, torch.tensor(k - below)))
        below += int(cumulative[top - 1]) if top else 0
        equal = int(cumulative[top]) - (int(cumulative[top - 1]) if top else 0)
        prefix = (prefix << digit) | top
        done += digit
    return prefix, below, equal


def shrink_value(key: int, dtype: torch.dtype) -> float | None:
    """The ``lambd`` for ``torch.hardshrink`` that zeroes exactly the keys below ``key``.

    ``None`` when nothing is below it (key 0).
    """
    return value_of(key - 1, dtype) if key > 0 else None


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """Pack a bool tensor whose length is a multiple of 8 into uint8, bit i = element i."""
    words = mask.view(torch.int64)
    # multiplying by this constant gathers the low bit of each of the 8 bytes into the top byte
    return ((words * 0x0102040810204080 >> 56) & 0xFF).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, length: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`, cut to ``length`` elements."""
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    return ((packed.unsqueeze(-1) >> shifts) & 1).view(-1)[:length].bool()


def compact(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``values[mask]`` on the CPU, as a new tensor.

    ``torch.masked_select`` mispredicts a branch per element on a random mask (~30x a
    read of the chunk, measured); numpy's ``compress`` does the same job 3-5x faster.
    """
    if values.device.type == "cpu":
        return torch.from_numpy(np.compress(mask.numpy(), values.numpy()))
    return values[mask].cpu()
