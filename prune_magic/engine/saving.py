"""Save a pruned model so that ``torch.load(weights_only=True)`` can read it back.

A structurally pruned model no longer fits its class's constructor: its layers are
narrower. Pickling the whole model works (``torch.save(model)``) but needs
``weights_only=False``, which runs arbitrary code. :func:`save` writes the state dict
plus a small JSON plan (every module's plain attributes and tensor shapes);
:func:`load` builds a fresh model, reshapes it by the plan, then loads the weights.

>>> import io, torch
>>> from torch import nn
>>> buffer = io.BytesIO()
>>> _ = save(nn.Linear(4, 2), buffer)  # (returns what it wrote: see Saved)
>>> _ = buffer.seek(0)
>>> load(buffer, lambda: nn.Linear(4, 2)).out_features
2

``save(model, path, compress=True)`` stores each tensor in the smallest exact form it
allows (see :mod:`.compress`): a pruned, weight-shared model takes a fraction of the
space, and :func:`load` gives back every tensor bit for bit.
"""

from __future__ import annotations

import json
import lzma
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

import torch
from torch import nn

from .compress import decode, dense_bytes, encode
from .errors import PruneError
from .model_config import STRUCTURE_FIELDS, config_of

FORMAT = "prune_magic/1"
_JSON = (int, float, bool, str, type(None))


@dataclass(frozen=True)
class Saved:
    """What :func:`save` wrote: its size, and the size of the tensors stored densely."""

    bytes: int
    dense_bytes: int
    compressed: bool

    def line(self) -> str:
        from .report import format_bytes

        if not self.compressed:
            return f"on disk: {format_bytes(self.bytes)} (dense; compress=True stores the zeros sparsely)"
        ratio = self.dense_bytes / max(1, self.bytes)
        return f"on disk: {_kib(self.dense_bytes)} dense \u2192 {_kib(self.bytes)} compressed ({ratio:.1f}\u00d7)"

    def __repr__(self) -> str:
        return f"<Saved: {self.line()}>"


def _kib(n: int) -> str:
    return f"{n / 1024:,.1f} KiB"


def save(model: nn.Module, path: str | IO[bytes], compress: bool = False) -> Saved:
    """Write ``model``'s state dict and the shapes of its layers (see :func:`load`).

    With ``compress=True`` each tensor is stored in the smallest exact form it allows:
    sparse positions, codebook indices, entropy-coded (see :mod:`prune_magic.engine.compress`).
    """
    quantized = [
        name or type(model).__name__
        for name, module in model.named_modules()
        if (hasattr(module, "_packed_params") and callable(getattr(module, "weight", None)))
        or any(hasattr(p, "qdata") for p in module._parameters.values())
    ]
    if quantized:
        raise PruneError(
            f"pm.save writes float models and {', '.join(quantized[:3])} is int8-quantized: save before the"
            " quantize step (pm.undo(model) takes it back), or torch.save(model) the quantized model whole"
        )
    plan = {}
    for name, module in model.named_modules():
        tensors = {**module._parameters, **module._buffers}
        attrs = {k: v for k, v in vars(module).items() if k != "training" and _jsonable(v)}
        if tensors or attrs:  # (an attention block's head counts: a module with no tensors of its own)
            plan[name] = {
                "attrs": attrs,
                "shapes": {k: list(t.shape) for k, t in tensors.items() if t is not None},
            }
    config = _config_fields(model)
    if config:  # a Hugging Face config's counts and widths (heads, MLP width), which its code reads
        plan.setdefault("", {"attrs": {}, "shapes": {}})["config"] = config
    state = model.state_dict()
    saved: dict[str, Any] = {"format": FORMAT}
    if compress:  # one byte tensor: the plan and the tensors' header (lzma-coded JSON), then the tensors
        header, blob = encode(state)
        text = lzma.compress(json.dumps({"plan": plan, "tensors": header}, separators=(",", ":")).encode())
        payload = bytearray(len(text).to_bytes(4, "little") + text + blob)
        saved["compressed"] = torch.frombuffer(payload, dtype=torch.uint8)
    else:
        saved["plan"], saved["state_dict"] = json.dumps(plan), state
    start = _position(path)
    torch.save(saved, path)
    end = os.path.getsize(path) if isinstance(path, str | os.PathLike) else _position(path)
    written = end - start if start is not None and end is not None else -1
    return Saved(written, dense_bytes(state), compress)


def _position(path: str | IO[bytes]) -> int | None:
    """Where a file object stands (0 for a path: it is written anew); None if it can't say."""
    if isinstance(path, str | os.PathLike):
        return 0
    try:
        return path.tell()
    except (OSError, AttributeError):
        return None


def load(
    path: str | IO[bytes], model_factory: Callable[[], nn.Module], map_location: Any = None
) -> nn.Module:
    """Rebuild a model written by :func:`save`: ``model_factory()`` reshaped, then its weights.

    ``model_factory`` makes the original (unpruned) model, e.g. ``lambda: ResNet18()``.
    Reading uses ``torch.load(weights_only=True)``: no code from the file runs.
    """
    saved = torch.load(path, weights_only=True, map_location=map_location)
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise PruneError("this file was not written by prune_magic.save; use torch.load for it")
    if "compressed" in saved:
        payload = saved["compressed"].cpu().numpy().tobytes()
        length = int.from_bytes(payload[:4], "little")
        meta = json.loads(lzma.decompress(payload[4 : 4 + length]))
        plan = meta["plan"]
        # (decoded on the CPU; load_state_dict copies each tensor to where the model's is)
        state = decode(meta["tensors"], memoryview(payload)[4 + length :])
    else:
        plan, state = json.loads(saved["plan"]), saved["state_dict"]
    model = model_factory()
    for name, spec in plan.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise PruneError(
                f"the saved model has a layer {name!r} that model_factory() does not make"
            ) from None
        for key, value in spec["attrs"].items():
            current = getattr(module, key, None)
            setattr(module, key, tuple(value) if isinstance(current, tuple) else value)
        for key, shape in spec["shapes"].items():
            _reshape(module, key, shape)
        for key, value in spec.get("config", {}).items():
            setattr(module.config, key, value)
    model.load_state_dict(state)
    return model


def _reshape(module: nn.Module, key: str, shape: list[int]) -> None:
    """Give ``module.<key>`` the saved shape (its values come from the state dict)."""
    current = module._parameters.get(key)
    if current is not None:
        if list(current.shape) != shape:
            fresh = torch.empty(shape, dtype=current.dtype, device=current.device)
            module._parameters[key] = nn.Parameter(fresh, requires_grad=current.requires_grad)
        return
    buffer = module._buffers.get(key)
    if buffer is not None and list(buffer.shape) != shape:
        module._buffers[key] = torch.empty(shape, dtype=buffer.dtype, device=buffer.device)


def _config_fields(model: nn.Module) -> dict[str, int | None]:
    """The fields of a Hugging Face ``model.config`` that a structured step sets (head counts,
    MLP widths), as the config has them (no others: ``model_factory()`` gives the rest)."""
    config = config_of(model)
    if config is None:
        return {}
    return {
        k: v
        for k, v in config.to_dict().items()
        if k in STRUCTURE_FIELDS and (v is None or isinstance(v, int))
    }


def _jsonable(value: object) -> bool:
    if isinstance(value, tuple):
        return all(isinstance(v, _JSON) for v in value)
    return isinstance(value, _JSON)
