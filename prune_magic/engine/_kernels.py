"""Optional compiled CPU kernels (numba) for the select and the undo record of a clip.

numpy has no branch-free way to compact the values under a random mask (``np.compress``
mispredicts a branch per element: 24-68x a read of the data at 90% density, measured on
25M floats), so recording what a clip changes cost more than the clip; and the select's
gather of the few keys inside its bracket takes six numpy passes over each chunk. Each
kernel here runs one loop over the integer bit patterns of a tensor:

- :func:`_gather`: the select's pass (count below the bracket, gather the keys inside it)
  that also marks, in the record's packed mask, what goes whatever the cut;
  :func:`_mark_at` then marks the gathered ones that go;
- :func:`_mark`: the mask and count for a known cut (``threshold=``, ``sigma=``);
- :func:`_compact`: copies the marked old values out and zeroes them;
- :func:`_popcounts`: the bits set in each chunk of a mask (the record's parts, and the
  check that the values array is large enough before :func:`_compact` writes to it).

They are an accelerator only: without numba (``pip install prune-magic[fast]``), or with
``PRUNE_MAGIC_NUMBA=0`` in the environment, the numpy chunk kernels in ``magnitude.py``
and ``clip.py`` do the same work with the same result, bit for bit.

numba is imported and the kernels compiled on first use (``cache=True``: later processes
load the machine code from ``__pycache__``); the first call in a process pays about
0.2 s for the import and 0.4-0.5 s to load or compile the kernels.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import numpy as np

#: The environment variable that turns the kernels off ("0").
ENV = "PRUNE_MAGIC_NUMBA"
#: True/False: force numba on (it must be installed) or off; None: on when importable and
#: PRUNE_MAGIC_NUMBA is not "0".
use_numba: bool | None = None

Array = np.ndarray[Any, Any]


def _mark(bits: Array, key: int, mask: int, ties: int, packed: Array) -> tuple[int, int]:
    """Set bit i of ``packed`` for each element i to zero: a key below ``key`` and not +0.0
    already, or one of the first ``ties`` ties at the cut (key ``key``) in flat order.
    Returns (bits set, ties left)."""
    n = bits.shape[0]
    count = 0
    for b in range(n // 8):  # branch-free
        first = b * 8
        byte = 0
        for s in range(8):
            v = bits[first + s]
            m = ((v & mask) < key) & (v != 0)
            count += m
            byte |= int(m) << s
        packed[b] = byte
    if n % 8:
        byte = 0
        for i in range(n - n % 8, n):
            v = bits[i]
            m = ((v & mask) < key) & (v != 0)
            count += m
            byte |= int(m) << (i % 8)
        packed[n // 8] = byte
    i = 0
    while ties > 0 and i < n:
        if bits[i] & mask == key:
            packed[i // 8] |= np.uint8(1) << (i % 8)
            count += 1
            ties -= 1
        i += 1
    return count, ties


#: ``x * _GATHER_BITS >> 56`` packs the low bits of the eight bytes of x into one byte (bit
#: s = byte s), as ``magnitude.pack_bits`` does.
_GATHER_BITS = np.uint64(0x0102040810204080)
#: ``(1 << 8 * b) * _BYTE_INDEX >> 56 == b``: which byte of a word holds its lowest set bit.
_BYTE_INDEX = np.uint64(0x0001020304050607)


def _gather(
    bits: Array,
    lo: int,
    hi: int,
    mask: int,
    patterns: Array,
    positions: Array,
    used: int,
    packed: Array,
    inside: Array,
    low: Array,
) -> tuple[int, int, int]:
    """The select's pass (``magnitude.select_cut``) over one tensor: count the keys below
    ``lo``; append the elements with a key in ``lo..hi`` (their bit patterns, sign and all)
    and their positions to ``patterns``/``positions`` from index ``used`` on; when ``packed`` is
    not empty, set its bit i for each element i with a key below ``lo`` that is not +0.0
    already (those go whatever the cut).

    Block by block: a branch-free loop (vectorized) writes a flag byte per element; then the
    flags are read eight at a time, and only the few in the bracket are visited. ``inside``
    and ``low`` are the flags' scratch: uint8, of one length, a multiple of 8. Returns
    (keys below ``lo``, bits set in ``packed``, ``used`` after); ``used`` past
    ``len(patterns) - 1`` means the buffers overflowed (what was found past the end is lost).
    """
    n = bits.shape[0]
    cap = patterns.shape[0] - 1
    block = inside.shape[0]  # a multiple of 8: each block packs into whole bytes of ``packed``
    inside_words = inside.view(np.uint64)
    low_words = low.view(np.uint64)
    marking = packed.shape[0] > 0
    below = 0
    marked = 0
    for start in range(0, n, block):
        m = min(block, n - start)
        chunk = bits[start : start + m]
        if marking:
            for i in range(m):  # branch-free
                v = chunk[i]
                k = v & mask
                lt = k < lo
                below += lt
                inside[i] = (k >= lo) & (k <= hi)
                low[i] = lt & (v != 0)
                marked += lt & (v != 0)
        else:
            for i in range(m):
                k = chunk[i] & mask
                below += k < lo
                inside[i] = (k >= lo) & (k <= hi)
        for i in range(m, block):
            inside[i] = 0
            low[i] = 0
        for w in range((m + 7) >> 3):
            word = inside_words[w]
            while word:  # the flags set in these eight: rare
                i = (w << 3) + int(((word & (~word + np.uint64(1))) * _BYTE_INDEX) >> np.uint64(56))
                j = min(used, cap)
                patterns[j] = chunk[i]  # the whole bit pattern: its key, and whether it is +0.0
                positions[j] = start + i
                used += 1
                word &= word - np.uint64(1)
            if marking:  # the low bit of each of the eight bytes, gathered into one byte
                packed[(start >> 3) + w] = ((low_words[w] * _GATHER_BITS) >> np.uint64(56)) & np.uint64(0xFF)
        if used > cap:
            break
    return below, marked, used


def _mark_at(packed: Array, positions: Array, found: Array, going: Array) -> int:
    """Set the bits of ``packed`` at ``positions[p]`` for each ``going[p]`` whose bit pattern
    ``found[p]`` is not +0.0 (no change); returns how many were set (none may be set before)."""
    count = 0
    for p in range(positions.shape[0]):
        if going[p] and found[p] != 0:
            i = positions[p]
            packed[i >> 3] |= np.uint8(1) << np.uint8(i & 7)
            count += 1
    return count


def _popcounts(packed: Array, step: int, counts: Array) -> None:
    """Add to ``counts[c]`` the bits set in ``packed[c * step : (c + 1) * step]``, for every
    chunk c (``step`` a multiple of 8: the bytes are read eight at a time)."""
    whole = packed.shape[0] >> 3
    words = packed[: whole << 3].view(np.uint64)
    per = step >> 3  # words per chunk
    for w in range(whole):
        x = words[w]
        x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
        x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
        x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
        counts[w // per] += int((x * np.uint64(0x0101010101010101)) >> np.uint64(56))
    for b in range(whole << 3, packed.shape[0]):
        x = int(packed[b])
        while x:
            counts[b // step] += 1
            x &= x - 1


def _compact(bits: Array, packed: Array, values: Array) -> int:
    """Write the old bit pattern of each element marked in ``packed`` to ``values``, in
    order, and zero it in place. Returns the values written.

    ``values`` must have one element of slack past the marked count (the loop writes one
    past the last marked value): :meth:`Kernels.compact` checks that with
    :func:`_popcounts` first, as the loop does not."""
    n = bits.shape[0]
    j = 0
    for b in range(n >> 3):  # one flat pass, a mask byte at a time; branch-free
        byte = int(packed[b])
        first = b << 3
        for s in range(8):
            v = bits[first + s]
            m = (byte >> s) & 1
            values[j] = v
            j += m
            bits[first + s] = v & (m - 1)  # 0 where marked
    for i in range(n - (n & 7), n):
        v = bits[i]
        m = (int(packed[i >> 3]) >> (i & 7)) & 1
        values[j] = v
        j += m
        bits[i] = v & (m - 1)
    return j


class Kernels:
    """The compiled kernels, typed."""

    def __init__(self, numba: Any) -> None:
        jit = numba.njit(cache=True, nogil=True)
        self._mark = jit(_mark)
        self._compact = jit(_compact)
        self._popcounts = jit(_popcounts)
        self._gather = jit(_gather)
        self._mark_at = jit(_mark_at)

    def mark(self, bits: Array, key: int, mask: int, ties: int, packed: Array) -> tuple[int, int]:
        count, left = self._mark(bits, key, mask, ties, packed)
        return int(count), int(left)

    def compact(self, bits: Array, packed: Array, values: Array, step: int) -> tuple[int, Array]:
        """:func:`_compact`, and the bits marked in each ``step`` bytes of ``packed`` (see
        :meth:`popcounts`). Returns (values written, those counts); the values written are
        -1, and nothing is touched, when ``values`` has no slack past the marked ones."""
        counts = self.popcounts(packed, step)
        if int(counts.sum()) >= values.shape[0]:
            return -1, counts
        return int(self._compact(bits, packed, values)), counts

    def popcounts(self, packed: Array, step: int) -> Array:
        """The bits set in each ``step`` bytes of ``packed`` (``step`` a multiple of 8), as
        int64 (``np.bitwise_count`` needs numpy 2)."""
        counts = np.zeros(max(1, -(-packed.shape[0] // step)), np.int64)
        self._popcounts(packed, step, counts)
        return counts

    def gather(
        self,
        bits: Array,
        lo: int,
        hi: int,
        mask: int,
        patterns: Array,
        positions: Array,
        used: int,
        packed: Array,
        scratch: Array,
    ) -> tuple[int, int, int]:
        """:func:`_gather`; ``scratch``: uint8 of twice a multiple of 8 bytes, for the flags."""
        kind = bits.dtype.type  # scalars of the array's type: the loops stay in that width
        half = scratch.shape[0] // 2
        below, marked, after = self._gather(
            bits,
            kind(lo),
            kind(hi),
            kind(mask),
            patterns,
            positions,
            used,
            packed,
            scratch[:half],
            scratch[half:],
        )
        return int(below), int(marked), int(after)

    def mark_at(self, packed: Array, positions: Array, found: Array, going: Array) -> int:
        return int(self._mark_at(packed, positions, found, going))


_loaded: Kernels | None = None

#: Steps over fewer weights run the numpy kernels: importing numba and loading the kernels
#: costs about 0.65 s once per process (2 s or more the first time on a machine, to
#: compile them), and on a small model the numpy kernels take a few milliseconds anyway.
MIN_WEIGHTS = 1 << 18


def kernels(weights: int | None = None) -> Kernels | None:
    """The compiled kernels, or None when numba is off or not installed, or when a step
    over ``weights`` weights is too small to be worth them (fewer than :data:`MIN_WEIGHTS`,
    unless ``use_numba`` is True)."""
    global _loaded
    if use_numba is False or (use_numba is None and os.environ.get(ENV, "").strip() == "0"):
        return None
    if use_numba is None and weights is not None and weights < MIN_WEIGHTS:
        return None
    if _loaded is None:
        try:
            numba = importlib.import_module("numba")
        except ImportError:
            if use_numba:
                raise
            return None
        _loaded = Kernels(numba)
    return _loaded


def installed() -> bool:
    """Whether numba can be imported here (whatever the switches say)."""
    try:
        importlib.import_module("numba")
    except ImportError:
        return False
    return True
