"""Weights as bit patterns, and the packed masks of the undo records.

A clip compares weights and puts them back bit for bit, so it works on each float tensor
through an integer view of the same memory (:func:`int_view`): no rounding, and -0.0 is
not +0.0. An undo record keeps which positions a step changed as a packed mask, one bit
per weight (:func:`pack_bits`, :func:`unpack_bits`), and the old values at those positions
(:func:`compact`).
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import PruneError

_INT_OF = {
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
    torch.float32: torch.int32,
    torch.float64: torch.int64,
}


def int_dtype(dtype: torch.dtype) -> torch.dtype:
    """The integer dtype of the same width as a float ``dtype``."""
    kind = _INT_OF.get(dtype)
    if kind is None:
        raise PruneError(f"weights of dtype {dtype} are not supported")
    return kind


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
    """The flat bit pattern of a float tensor (in memory order), as an integer view (no copy).

    >>> int_view(torch.tensor([1.0, -0.0])).tolist()
    [1065353216, -2147483648]
    """
    return flat_view(tensor).view(int_dtype(tensor.dtype))


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """Pack a bool tensor whose length is a multiple of 8 into uint8, bit i = element i.

    >>> pack_bits(torch.tensor([True, False, True, False, False, False, False, False])).tolist()
    [5]
    """
    words = mask.view(torch.int64)
    # multiplying by this constant gathers the low bit of each of the 8 bytes into the top byte
    return ((words * 0x0102040810204080 >> 56) & 0xFF).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, length: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`, cut to ``length`` elements.

    >>> unpack_bits(torch.tensor([5], dtype=torch.uint8), 3).tolist()
    [True, False, True]
    """
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    return ((packed.unsqueeze(-1) >> shifts) & 1).view(-1)[:length].bool()


def compact(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``values[mask]`` on the CPU, as a new tensor.

    ``torch.masked_select`` mispredicts a branch per element on a random mask; numpy's
    ``compress`` does the same job several times faster.
    """
    if values.device.type == "cpu":
        return torch.from_numpy(np.compress(mask.numpy(), values.numpy()))
    return values[mask].cpu()
