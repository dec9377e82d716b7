"""Save a pruned model so that ``torch.load(weights_only=True)`` can read it back.

A structurally pruned model no longer fits its class's constructor: its layers are
narrower. Pickling the whole model works (``torch.save(model)``) but needs
``weights_only=False``, which runs arbitrary code. :func:`save` writes the state dict
plus a small JSON plan (every module's plain attributes and tensor shapes);
:func:`load` builds a fresh model, reshapes it by the plan, then loads the weights.

>>> import io, torch
>>> from torch import nn
>>> buffer = io.BytesIO()
>>> save(nn.Linear(4, 2), buffer)
>>> _ = buffer.seek(0)
>>> load(buffer, lambda: nn.Linear(4, 2)).out_features
2
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import IO, Any

import torch
from torch import nn

from .errors import PruneError

FORMAT = "prune_magic/1"
_JSON = (int, float, bool, str, type(None))


def save(model: nn.Module, path: str | IO[bytes]) -> None:
    """Write ``model``'s state dict and the shapes of its layers (see :func:`load`)."""
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
        if not tensors:
            continue
        plan[name] = {
            "attrs": {k: v for k, v in vars(module).items() if k != "training" and _jsonable(v)},
            "shapes": {k: list(t.shape) for k, t in tensors.items() if t is not None},
        }
    torch.save({"format": FORMAT, "plan": json.dumps(plan), "state_dict": model.state_dict()}, path)


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
    model = model_factory()
    for name, spec in json.loads(saved["plan"]).items():
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
    model.load_state_dict(saved["state_dict"])
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


def _jsonable(value: object) -> bool:
    if isinstance(value, tuple):
        return all(isinstance(v, _JSON) for v in value)
    return isinstance(value, _JSON)
