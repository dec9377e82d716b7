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
    """Radix-select the k-th smallest magnitude (1-based) over several tensors.

    Returns ``(key, below, equal)``: the key of the k-th smallest |w|, how many
    elements have a smaller key and how many share it. Exact, whatever the ties.
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
    nbits, mask = key_bits(dtype), _abs_mask(dtype)
    prefix, below, remaining = 0, 0, k
    hist = torch.zeros(0, dtype=torch.int64)
    for shift in range(((nbits - 1) // 16) * 16, -1, -16):
        hist = torch.zeros(1 << 16, dtype=torch.int64)
        for tensor in tensors:
            part = torch.zeros(1 << 16, dtype=torch.int64, device=tensor.device)
            for _, chunk in chunks(int_view(tensor)):
                key = chunk & mask
                if shift + 16 < nbits:  # only keys that share the digits chosen so far
                    key = key[(key >> (shift + 16)) == prefix]
                digit = key >> shift if shift + 16 >= nbits else (key >> shift) & 0xFFFF
                part += torch.bincount(digit.view(-1), minlength=1 << 16)
            hist += part.cpu()
        cumulative = hist.cumsum(0)
        digit_k = int(torch.searchsorted(cumulative, remaining))
        skipped = int(cumulative[digit_k - 1]) if digit_k else 0
        below += skipped
        remaining -= skipped
        prefix = (prefix << 16) | digit_k
    return prefix, below, int(hist[prefix & 0xFFFF])


def count_below(tensor: torch.Tensor, key: int) -> int:
    """How many elements have a magnitude key below ``key`` (nonzero ones only)."""
    mask = _abs_mask(tensor.dtype)
    count = 0
    for _, chunk in chunks(int_view(tensor)):
        k = chunk & mask
        count += int(((k < key) & (k != 0)).sum())
    return count


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
