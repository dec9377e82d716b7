"""The compressed form of a state dict: each tensor in the smallest exact form it allows.

Deep Compression (Han, Mao & Dally 2016) stores a pruned, weight-shared layer as
relative indices of its nonzeros, the codebook indices of their values and the codebook,
all entropy-coded. :func:`encode` does the same for any state dict, choosing per tensor:

- the positions of the nonzeros: none (dense), a bitmask, or relative gaps (a byte per
  gap, a 0 byte meaning "255 further, no value here");
- the values: raw bit patterns split into byte planes (the sign-and-exponent byte of a
  float compresses, the low mantissa bytes do not), or, when the tensor holds few distinct
  values (a ``quantize codebook=K`` layer), the codebook and each value's index packed at
  ``ceil(log2 K)`` bits;
- then each section stored raw, with ``zlib`` or with ``lzma``, whichever is smallest
  (sections over :data:`THOROUGH` bytes try ``zlib`` level 1 only: big models save in seconds).

Zeros are found on bit patterns, so every tensor comes back bit for bit: ``-0.0`` is
kept (as a list of its positions) and NaNs are values like any other.

>>> import torch
>>> w = torch.zeros(200, 200)
>>> w[::5, ::7] = torch.randint(1, 5, (40, 29), generator=torch.Generator().manual_seed(0)) / 4
>>> header, blob = encode({"w": w})
>>> header[0]["positions"], header[0]["values"], header[0]["bits"]
('gaps', 'codebook', 2)
>>> torch.equal(decode(header, blob)["w"], w)
True
"""

from __future__ import annotations

import lzma
import math
import zlib
from typing import Any

import numpy as np
import torch

from .errors import PruneError

#: Sections larger than this (bytes) are coded with zlib level 1 only, to keep saves fast.
THOROUGH = 1 << 20
#: A tensor with at most this many distinct nonzero values is stored with a codebook.
MAX_CODEBOOK = 1 << 16

_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_NUMPY = {1: np.uint8, 2: np.int16, 4: np.int32, 8: np.int64}

Header = list[dict[str, Any]]


def encode(state: dict[str, torch.Tensor]) -> tuple[Header, bytes]:
    """Every tensor of ``state`` in its smallest exact form: a JSON-able header and one blob."""
    header: Header = []
    parts: list[bytes] = []
    offset = 0
    seen: dict[tuple[Any, ...], str] = {}  # tied weights: the same memory under two names
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise PruneError(f"{name} is a {type(tensor).__name__}, not a tensor; pm.save stores tensors")
        odd = (
            f"a {str(tensor.layout).removeprefix('torch.')} tensor"
            if tensor.layout != torch.strided
            else "quantized"
            if tensor.is_quantized
            else f"a {type(tensor).__name__}"
            if type(tensor) not in (torch.Tensor, torch.nn.Parameter)
            else ""
        )
        if odd:
            raise PruneError(
                f"{name} is {odd}; compress=True stores plain dense tensors: save without compress=True"
                " (or make it dense first)"
            )
        key = (tensor.device, tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tensor.stride())
        if tensor.numel() and key in seen:
            header.append({"name": name, "same_as": seen[key]})
            continue
        seen[key] = name
        entry, sections = _encode_tensor(tensor.detach().cpu())
        entry["name"] = name
        entry["sections"] = []
        for codec, coded in sections:
            entry["sections"].append([codec, offset, len(coded)])
            parts.append(coded)
            offset += len(coded)
        header.append(entry)
    return header, b"".join(parts)


def stored_bytes(state: dict[str, torch.Tensor]) -> dict[str, int]:
    """Bytes each tensor of ``state`` takes compressed (a tied tensor counts once, under its first name).

    >>> stored_bytes({"w": torch.zeros(1000)})
    {'w': 0}
    """
    header, _ = encode(state)
    return {e["name"]: sum(n for _, _, n in e.get("sections", [])) for e in header}


def decode(header: Header, blob: bytes | memoryview) -> dict[str, torch.Tensor]:
    """The state dict :func:`encode` was given, every tensor bit for bit."""
    state: dict[str, torch.Tensor] = {}
    for entry in header:
        if "same_as" in entry:
            state[entry["name"]] = state[entry["same_as"]]
            continue
        sections = [
            _entropy_decode(codec, bytes(blob[start : start + n])) for codec, start, n in entry["sections"]
        ]
        state[entry["name"]] = _decode_tensor(entry, sections)
    return state


Sections = list[tuple[str, bytes]]  # (codec, coded bytes)


def dense_bytes(state: dict[str, torch.Tensor]) -> int:
    """What the tensors of ``state`` take stored densely, each memory block once (tied weights)."""
    blocks = {
        (t.device, t.untyped_storage().data_ptr()): t.untyped_storage().nbytes() for t in state.values()
    }
    return sum(blocks.values())


def _encode_tensor(tensor: torch.Tensor) -> tuple[dict[str, Any], Sections]:
    dtype = str(tensor.dtype).removeprefix("torch.")
    entry: dict[str, Any] = {
        "dtype": dtype,
        "shape": list(tensor.shape),
        "positions": "none",
        "values": "raw",
    }
    size = tensor.element_size()
    if tensor.numel() == 0 or size not in _INT or tensor.dim() == 0:
        return entry, [_entropy_code(_raw_bytes(tensor))]
    bits = tensor.contiguous().reshape(-1).view(_INT[size]).numpy()
    nonzero = bits != 0
    negative_zero = _negative_zeros(tensor, bits, nonzero)
    count = int(np.count_nonzero(nonzero))
    thorough = bits.size * size <= THOROUGH
    candidates: list[tuple[dict[str, Any], Sections, np.ndarray[Any, Any]]] = []
    if count >= bits.size * 0.5 and negative_zero is None:  # dense: no positions
        candidates.append(({"positions": "none"}, [], bits))
    if count < bits.size * 0.9 or negative_zero is not None:  # sparse enough to list positions
        kept = np.flatnonzero(nonzero)
        values = bits[kept]
        if thorough or count < bits.size / 4:
            candidates.append(({"positions": "gaps", "count": count}, [_entropy_code(_gaps(kept))], values))
        if thorough or count >= bits.size / 4:
            mask = _entropy_code(_bitmask(nonzero))
            candidates.append(({"positions": "bitmask", "count": count}, [mask], values))
    best: tuple[dict[str, Any], Sections] | None = None
    for positions, sections, values in candidates:
        if best is not None and _length(sections) >= _length(best[1]):
            continue
        values_entry, value_sections = _encode_values(values, size, thorough)
        whole = sections + value_sections
        if best is None or _length(whole) < _length(best[1]):
            best = ({**positions, **values_entry}, whole)
    assert best is not None
    entry.update(best[0])
    sections = best[1]
    if negative_zero is not None:
        entry["negative_zeros"] = len(negative_zero)
        sections.append(_entropy_code(_gaps(negative_zero)))
    return entry, sections


def _length(sections: Sections) -> int:
    return sum(len(coded) for _, coded in sections)


def _negative_zeros(tensor: torch.Tensor, bits: np.ndarray[Any, Any], nonzero: np.ndarray[Any, Any]) -> Any:
    """Positions of ``-0.0`` in a float tensor (zeros, but not bit for bit), taken out of
    ``nonzero``; None when there are none."""
    if not tensor.is_floating_point():
        return None
    sign = np.array(1, dtype=bits.dtype) << (bits.dtype.itemsize * 8 - 1)
    found = np.flatnonzero(bits == sign)
    if not len(found):
        return None
    nonzero[found] = False
    return found


def _encode_values(
    values: np.ndarray[Any, Any], size: int, thorough: bool
) -> tuple[dict[str, Any], Sections]:
    """Values as byte planes, or as a codebook and codes when there are few distinct ones."""
    raw: tuple[dict[str, Any], Sections] = ({"values": "raw"}, [_entropy_code(_planes(values, size))])
    head = values[: 1 << 17]
    if len(values) <= 16 or len(np.unique(head)) > min(MAX_CODEBOOK, len(head) / 2):
        return raw  # (most values distinct: a codebook can't pay)
    codebook, codes = np.unique(values, return_inverse=True)
    if len(codebook) > MAX_CODEBOOK:
        return raw
    bits = max(1, math.ceil(math.log2(len(codebook))))
    book = _entropy_code(_planes(codebook, size))
    best = raw
    for packing in ("bits", "bytes") if thorough else ("bits",):
        coded = _entropy_code(_pack(codes.reshape(-1), bits if packing == "bits" else -(-bits // 8) * 8))
        found = (
            {"values": "codebook", "bits": bits, "codebook": len(codebook), "packing": packing},
            [book, coded],
        )
        if _length(found[1]) < _length(best[1]):
            best = found
    return best


def _decode_tensor(entry: dict[str, Any], sections: list[bytes]) -> torch.Tensor:
    dtype = getattr(torch, entry["dtype"], None)
    if not isinstance(dtype, torch.dtype):
        raise PruneError(f"the file stores {entry['name']} as {entry['dtype']}, which this torch lacks")
    shape = entry["shape"]
    numel = math.prod(shape)
    size = torch.empty((), dtype=dtype).element_size()
    if (
        entry["values"] == "raw"
        and entry["positions"] == "none"
        and (numel == 0 or size not in _INT or not shape)
    ):
        if numel == 0:
            return torch.empty(shape, dtype=dtype)
        raw = torch.tensor(np.frombuffer(sections[0], dtype=np.uint8).copy())
        return raw.view(dtype).reshape(shape)
    kind = _NUMPY[size]
    out = np.zeros(numel, dtype=kind)
    index = None
    if entry["positions"] != "none":
        positions = sections.pop(0)
        index = _ungaps(positions) if entry["positions"] == "gaps" else _unbitmask(positions, numel)
    count = numel if index is None else len(index)
    if entry["values"] == "codebook":
        codebook = _unplanes(sections.pop(0), size, kind)
        width = entry["bits"] if entry["packing"] == "bits" else -(-entry["bits"] // 8) * 8
        values = codebook[_unpack(sections.pop(0), width, count)]
    else:
        values = _unplanes(sections.pop(0), size, kind)
    if index is None:
        out[:] = values
    else:
        out[index] = values
    if entry.get("negative_zeros"):
        out[_ungaps(sections.pop(0))] = np.array(1, dtype=kind) << (size * 8 - 1)
    return torch.from_numpy(out).view(dtype).reshape(shape)


def _raw_bytes(tensor: torch.Tensor) -> bytes:
    return bytes(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def _planes(values: np.ndarray[Any, Any], size: int) -> bytes:
    """The values' bytes, byte 0 of every value first, then byte 1, ...: alike bytes side by side."""
    return values.view(np.uint8).reshape(-1, size).T.tobytes()


def _unplanes(data: bytes, size: int, kind: Any) -> np.ndarray[Any, Any]:
    planes = np.frombuffer(data, dtype=np.uint8).reshape(size, -1)
    values: np.ndarray[Any, Any] = np.ascontiguousarray(planes.T).view(kind).reshape(-1)
    return values


def _bitmask(nonzero: np.ndarray[Any, Any]) -> bytes:
    return bytes(np.packbits(nonzero, bitorder="little").tobytes())


def _unbitmask(data: bytes, numel: int) -> np.ndarray[Any, Any]:
    mask = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=numel, bitorder="little")
    return np.flatnonzero(mask)


def _gaps(positions: np.ndarray[Any, Any]) -> bytes:
    """Relative indices, a byte each: gap g >= 1 is (g - 1) // 255 zero bytes, then the rest."""
    if not len(positions):
        return b""
    gaps = np.diff(positions, prepend=-1)
    skips = (gaps - 1) // 255
    ends = np.cumsum(skips + 1) - 1
    out = np.zeros(int(ends[-1]) + 1, dtype=np.uint8)
    out[ends] = gaps - 255 * skips
    return bytes(out.tobytes())


def _ungaps(data: bytes) -> np.ndarray[Any, Any]:
    steps = np.frombuffer(data, dtype=np.uint8)
    positions: np.ndarray[Any, Any] = np.cumsum(np.where(steps == 0, 255, steps).astype(np.int64)) - 1
    kept: np.ndarray[Any, Any] = positions[steps != 0]
    return kept


def _pack(codes: np.ndarray[Any, Any], bits: int) -> bytes:
    """Each code in ``bits`` bits (least significant first), one after another."""
    if bits in (8, 16):
        return bytes(codes.astype(np.uint8 if bits == 8 else np.uint16).tobytes())
    spread = (codes.astype(np.uint32)[:, None] >> np.arange(bits, dtype=np.uint32)) & 1
    return bytes(np.packbits(spread.astype(np.uint8).reshape(-1), bitorder="little").tobytes())


def _unpack(data: bytes, bits: int, count: int) -> np.ndarray[Any, Any]:
    if bits in (8, 16):
        return np.frombuffer(data, dtype=np.uint8 if bits == 8 else np.uint16)[:count].astype(np.int64)
    flat = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=count * bits, bitorder="little")
    weights = (1 << np.arange(bits, dtype=np.int64)).astype(np.int64)
    return flat.reshape(count, bits).astype(np.int64) @ weights


def _entropy_code(data: bytes) -> tuple[str, bytes]:
    """``data`` raw, zlib- or lzma-coded: whichever is smallest."""
    if len(data) > THOROUGH:  # fast: zlib level 1, and only if a sample of the data shrinks
        if len(zlib.compress(data[:65536], 1)) > 0.97 * 65536:
            return ("raw", data)
        coded = zlib.compress(data, 1)
        return ("zlib", coded) if len(coded) < len(data) else ("raw", data)
    best = ("raw", data)
    for codec, coded in (
        ("zlib", zlib.compress(data, 9)),
        ("lzma", lzma.compress(data, format=lzma.FORMAT_RAW, filters=_LZMA)),
    ):
        if len(coded) < len(best[1]):
            best = (codec, coded)
    return best


# raw LZMA2 (no container: its headers would cost more than small sections hold)
_LZMA = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "dict_size": THOROUGH}]


def _entropy_decode(codec: str, data: bytes) -> bytes:
    if codec == "zlib":
        return zlib.decompress(data)
    if codec == "lzma":
        return lzma.decompress(data, format=lzma.FORMAT_RAW, filters=_LZMA)
    if codec == "raw":
        return data
    raise PruneError(f"the file uses a codec this prune_magic does not know ({codec!r}); upgrade prune_magic")
