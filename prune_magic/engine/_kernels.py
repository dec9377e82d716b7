"""Optional compiled CPU kernels (numba) for the undo record of a clip.

numpy has no branch-free way to compact the values under a random mask (``np.compress``
mispredicts a branch per element: 24-68x a read of the data at 90% density, measured on
25M floats), so recording what a clip changes cost more than the clip. The two kernels
here each run one loop over the integer bit patterns of a tensor: :func:`_mark` sets the
record's packed mask and counts, :func:`_compact` copies the old values out and zeroes.
They are an accelerator only: without numba (``pip install prune-magic[fast]``), or with
``PRUNE_MAGIC_NUMBA=0`` in the environment, the numpy chunk kernels in ``clip.py`` do the
same work with the same result, bit for bit.

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


def _mark(bits: Array, key: int, mask: int, ties: int, tied: Array, packed: Array) -> tuple[int, int]:
    """Set bit i of ``packed`` for each element i to zero: a key below ``key`` and not +0.0
    already, or a tie at the cut (key ``key``): those at the positions ``tied`` (sorted)
    when any are given, else the first ``ties`` in flat order. Returns (bits set, ties left)."""
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
    if tied.shape[0]:
        for p in range(tied.shape[0]):
            i = tied[p]
            packed[i // 8] |= np.uint8(1) << (i % 8)
        count += tied.shape[0]
    else:
        i = 0
        while ties > 0 and i < n:
            if bits[i] & mask == key:
                packed[i // 8] |= np.uint8(1) << (i % 8)
                count += 1
                ties -= 1
            i += 1
    return count, ties


def _compact(bits: Array, packed: Array, values: Array) -> int:
    """Write the old bit pattern of each element marked in ``packed`` to ``values``, in
    order, and zero it in place. ``values`` needs one element of slack past the marked
    count. Returns the values written."""
    last = values.shape[0] - 1
    j = 0
    for i in range(bits.shape[0]):  # one flat loop: 2-3x faster than one loop per chunk here
        v = bits[i]
        m = (int(packed[i >> 3]) >> (i & 7)) & 1
        values[min(j, last)] = v  # min: never past the buffer, even on a miscount
        j += m
        bits[i] = v & (m - 1)  # 0 where marked, branch-free
    return j


class Kernels:
    """The compiled kernels, typed."""

    def __init__(self, numba: Any) -> None:
        jit = numba.njit(cache=True, nogil=True)
        self._mark = jit(_mark)
        self._compact = jit(_compact)

    def mark(
        self, bits: Array, key: int, mask: int, ties: int, tied: Array, packed: Array
    ) -> tuple[int, int]:
        count, left = self._mark(bits, key, mask, ties, tied, packed)
        return int(count), int(left)

    def compact(self, bits: Array, packed: Array, values: Array) -> int:
        return int(self._compact(bits, packed, values))


_loaded: Kernels | None = None


def kernels() -> Kernels | None:
    """The compiled kernels, or None when numba is off or not installed."""
    global _loaded
    if use_numba is False or (use_numba is None and os.environ.get(ENV, "").strip() == "0"):
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
