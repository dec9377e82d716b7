"""Exact magnitude arithmetic on weights, in bounded memory.

The magnitude |w| of an IEEE float orders exactly like its bit pattern with the sign
bit cleared (its *key*). That turns "the k-th smallest |w| over a whole model" into a
radix select over 16-bit digits of the keys: one histogram pass for float16/bfloat16,
two for float32, four for float64. Each pass reads the weights chunk by chunk, so no
pass concatenates the model or allocates a whole-model temporary; the largest scratch
is one chunk. Zeroing is ``torch.hardshrink`` in place (one fused pass).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from .errors import PruneError

#: Elements a chunked pass handles at once (1 MiB of float32): small enough to stay in
#: cache and to keep scratch memory far below one byte per weight.
CHUNK = 1 << 18

_INT_OF = {
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
    torch.float32: torch.int32,
    torch.float64: torch.int64,
}


def int_view(tensor: torch.Tensor) -> torch.Tensor:
    """The flat bit pattern of a float tensor, as an integer view (no copy)."""
    if not tensor.is_contiguous():
        raise PruneError(f"a tensor of shape {tuple(tensor.shape)} is not contiguous; make it so first")
    try:
        return tensor.detach().view(-1).view(_INT_OF[tensor.dtype])
    except KeyError:
        raise PruneError(f"weights of dtype {tensor.dtype} are not supported") from None


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


def chunks(flat: torch.Tensor, size: int = CHUNK) -> Iterator[tuple[int, torch.Tensor]]:
    """(offset, slice) pairs that cover a flat tensor."""
    for start in range(0, flat.numel(), size):
        yield start, flat[start : start + size]


def kth_key(tensors: Sequence[torch.Tensor], k: int) -> tuple[int, int, int]:
    """Select the k-th smallest magnitude (1-based) over several tensors, exactly.

    Returns ``(key, below, equal)``: the key of the k-th smallest |w|, how many
    elements have a smaller key and how many share it, whatever the ties.

    Pass 1 histograms the top 15 bits of every key (for float16/bfloat16 that is the
    whole key, and the answer); pass 2 gathers the few keys in the bin that holds the
    k-th and sorts them.
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
    shift = key_bits(dtype) - 15
    hist = sum((_top_histogram(int_view(t), shift) for t in tensors), torch.zeros(1 << 15, dtype=torch.int64))
    cumulative = hist.cumsum(0)
    top = int(torch.searchsorted(cumulative, k))
    below = int(cumulative[top - 1]) if top else 0
    if shift == 0:
        return top, below, int(hist[top])
    keys = torch.cat([_keys_in_bin(int_view(t), shift, top) for t in tensors])
    key = int(keys.kthvalue(k - below).values)
    return key, below + int((keys < key).sum()), int((keys == key).sum())


def _top_histogram(bits: torch.Tensor, shift: int) -> torch.Tensor:
    """Histogram of the top 15 bits of the magnitude keys of ``bits``."""
    size = min(CHUNK, bits.numel())
    top = torch.empty(size, dtype=bits.dtype, device=bits.device)  # scratch, reused per chunk
    hist = torch.zeros(1 << 15, dtype=torch.int64, device=bits.device)
    for _, chunk in chunks(bits):
        digits = top[: chunk.numel()]
        torch.bitwise_right_shift(chunk, shift, out=digits)
        hist += torch.bincount(digits.bitwise_and_(0x7FFF), minlength=1 << 15)
    return hist.cpu()


def _keys_in_bin(bits: torch.Tensor, shift: int, top: int) -> torch.Tensor:
    """The magnitude keys (on the CPU) whose top 15 bits are ``top``."""
    size = min(CHUNK, bits.numel())
    digits = torch.empty(size, dtype=bits.dtype, device=bits.device)
    hit = torch.empty(size, dtype=torch.bool, device=bits.device)
    mask = (1 << (8 * bits.element_size() - 1)) - 1  # drop the sign bit
    found = []
    for _, chunk in chunks(bits):
        n = chunk.numel()
        torch.bitwise_right_shift(chunk, shift, out=digits[:n])
        torch.eq(digits[:n].bitwise_and_(0x7FFF), top, out=hit[:n])
        found.append((chunk[hit[:n].nonzero().view(-1)] & mask).cpu())
    return torch.cat(found)


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
    read of the chunk, measured); numpy's ``compress`` does the same job 3-5x faster, and
    torch has already imported numpy whenever it is installed.
    """
    if values.device.type == "cpu":
        try:
            import numpy as np
        except ImportError:  # pragma: no cover - torch without numpy
            pass
        else:
            return torch.from_numpy(np.compress(mask.numpy(), values.numpy()))
    return values[mask].cpu()
