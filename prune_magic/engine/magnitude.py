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
whole-model temporary; a chunk is at most 1/32 of the weights.

On the CPU the pass runs in numpy chunk kernels (numpy's comparisons and counts are 3-5x
faster than torch's at one thread); on other devices in torch ops, on the device. The
integer views and the undo records' packed masks are in :mod:`.bits`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .bits import int_dtype, int_view
from .errors import PruneError

#: Most elements a chunked pass handles at once (256 KiB of float32: the chunk and its
#: scratch stay in the L2 cache).
CHUNK = 1 << 16
#: A select over at most this many weights takes every key as a candidate (no sample).
SMALL = 1 << 16
#: Standard deviations of the sample rank either side of the k-th: the bracket's margin.
SIGMAS = 5.0

#: Force the torch kernels on the CPU too (tests of the device path); None: numpy on the CPU.
use_numpy: bool | None = None


def key_bits(dtype: torch.dtype) -> int:
    """Bits in a magnitude key (the sign bit dropped)."""
    return torch.finfo(dtype).bits - 1


def _abs_mask(dtype: torch.dtype) -> int:
    return (1 << key_bits(dtype)) - 1


def key_of(value: float, dtype: torch.dtype) -> int:
    """The key of ``|value|`` rounded to ``dtype``."""
    bits = torch.tensor([abs(value)], dtype=torch.float64).to(dtype).view(int_dtype(dtype))
    return int(bits.item()) & _abs_mask(dtype)


def value_of(key: int, dtype: torch.dtype) -> float:
    """The non-negative float whose key is ``key``."""
    return float(torch.tensor([key], dtype=int_dtype(dtype)).view(dtype).item())


def threshold_key(threshold: float, dtype: torch.dtype) -> int:
    """The smallest key whose value is >= ``threshold``: keys below it are |w| < threshold."""
    key = key_of(threshold, dtype)
    return key + 1 if value_of(key, dtype) < threshold else key


def chunk_size(total: int) -> int:
    """Elements per chunk for a pass over ``total`` weights: at most CHUNK and total/32
    (the scratch of a pass stays well under a byte per weight).

    A multiple of 64, so every chunk but a tensor's last packs into whole bytes.
    """
    return max(1024, min(CHUNK, total // 32) // 64 * 64)


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
    """

    key: int
    below: int
    equal: int
    ties: tuple[torch.Tensor, ...] | None = None


def select_cut(
    tensors: Sequence[torch.Tensor],
    k: int,
    *,
    sample: bool = True,
) -> Cut:
    """The k-th smallest magnitude (1-based) over ``tensors``, exactly (see :class:`Cut`).

    ``sample=False`` skips the sampled bracket and runs the exact radix select.
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


Found = tuple[int, list[torch.Tensor], list[torch.Tensor]]


def _gather(views: list[torch.Tensor], lo: int, hi: int, cap: int, size: int) -> Found | None:
    """One pass: how many keys are below ``lo``, and the keys in ``lo..hi`` with positions.

    Returns ``(below, keys, positions)`` with one keys/positions tensor per view (for numpy
    views: CPU int keys, and int32 positions in a tensor under 2^31 elements, else int64;
    on the device otherwise), or None when more than ``cap`` keys fall in the bracket.
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
    kind = np.int32 if bits.size < 1 << 31 else np.int64  # positions: 4 bytes where they do
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
            positions.append((where + start).astype(kind))
    if not keys:
        return below, torch.empty(0, dtype=_torch_of(bits)), torch.from_numpy(np.empty(0, kind))
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
        hit = (where[part == key][:left] if left else where[:0]).long()
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
