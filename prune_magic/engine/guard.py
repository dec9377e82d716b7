"""What the engine checks before it touches a model, and around the user's code it calls.

- **One call at a time.** ``pm.prune``, ``pm.undo``, ``pm.reset``, ``pm.forget``,
  ``pm.sensitivity`` and ``pm.keep_masks`` hold the model (and every module in it) while
  they run: an eval function that calls ``pm.prune`` on the model it is measuring, or a
  second thread, is refused with a clear error instead of rewriting the history under
  the call that is running. ``pm.report`` and ``pm.history`` only read and are allowed.
- **User code only reads the weights.** Around every call of an eval function, progress
  callback or loss, the parameters' version counters (torch bumps them on every in-place
  change) and identities are compared; a change is refused, naming the function.
- **Models that cannot be pruned in place** are refused up front with what they are and
  what to do: ``torch.compile``'d (prune ``model._orig_mod``), TorchScript, the meta device,
  lazy layers not yet run.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from .errors import PruneError

_RUNNING: dict[int, str] = {}  # id(module) -> the call that holds it
_LOCK = threading.Lock()

Versions = dict[str, tuple[object, ...]]


class WeightsChanged(PruneError):
    """User code (an eval function, a callback) changed the model's weights."""

    def __init__(self, message: object = "", names: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.names = tuple(names)  # the parameters it changed


@contextmanager
def exclusive(model: nn.Module, call: str) -> Iterator[None]:
    """Hold ``model`` and its modules for ``call`` (``"pm.prune"``, ...), or refuse if held."""
    modules = list(model.modules())
    with _LOCK:
        for module in modules:
            running = _RUNNING.get(id(module))
            if running is not None:
                raise PruneError(
                    f"{call} refused: {running} is still running on this model (was {call} called from its"
                    " eval function, a callback or another thread?); prune_magic changes a model one call"
                    f" at a time: call {call} after {running} has returned"
                )
        for module in modules:
            _RUNNING[id(module)] = call
    try:
        yield
    finally:
        with _LOCK:
            for module in modules:
                _RUNNING.pop(id(module), None)


def versions(model: nn.Module) -> Versions:
    """Each parameter's identity, version counter, dtype, device and shape, by name (``model.double()``
    swaps ``.data`` without a version bump; the dtype shows it)."""
    return {
        name: (id(p), p._version, p.dtype, p.device, tuple(p.shape))
        for name, p in model.named_parameters(remove_duplicate=False)
    }


def changed_since(model: nn.Module, before: Versions) -> list[str]:
    """Names of the parameters changed (in place or replaced) since ``before`` was taken."""
    now = versions(model)
    return sorted(name for name in now.keys() | before.keys() if now.get(name) != before.get(name))


def check_untouched(
    model: nn.Module, before: Versions, who: str, then: str = "it must only read the model"
) -> None:
    """Refuse if ``who`` (user code, e.g. ``"evaluate(model)"``) changed the weights; ``then``
    ends the message."""
    changed = changed_since(model, before)
    if changed:
        shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
        raise WeightsChanged(
            f"{who} changed the model's weights ({shown}; an optimizer step, or a pm.* call?); {then}",
            changed,
        )


def who(fn: object, role: str = "evaluate") -> str:
    """``accuracy(model)``: how an error names the user's function."""
    name = getattr(fn, "__name__", "")
    return f"{name if name.isidentifier() else role}(model)"


def check_model(model: nn.Module, call: str = "pm.prune") -> None:
    """Refuse models the engine cannot prune in place, saying what they are and what to do."""
    if not isinstance(model, nn.Module):
        raise PruneError(f"{call}: the model must be an nn.Module, not {type(model).__name__}")
    for name, module in model.named_modules():
        where = f"model.{name}" if name else "model"
        inner = getattr(module, "_orig_mod", None)
        if type(module).__name__ == "OptimizedModule" and isinstance(inner, nn.Module):
            raise PruneError(
                f"{where} is compiled with torch.compile (an OptimizedModule around {type(inner).__name__}):"
                f" prune the module inside it, {where}._orig_mod (the compiled model shares its weights"
                " and sees a clip; compile again after a structured step)"
            )
        if isinstance(module, torch.jit.ScriptModule):
            raise PruneError(
                f"{where} is a TorchScript module ({type(module).__name__}, from torch.jit.script or trace):"
                " prune the nn.Module before scripting it, then script the pruned model"
            )
    for name, tensor in (*model.named_parameters(), *model.named_buffers()):
        if isinstance(tensor, nn.parameter.UninitializedParameter | nn.parameter.UninitializedBuffer):
            raise PruneError(
                f"{name} is not initialized yet (a lazy layer has no weights before its first forward):"
                " run the model on one batch first"
            )
        if tensor.device.type == "meta":
            raise PruneError(
                f"the model is on the meta device ({name} has a shape but no data): load real weights"
                " first, e.g. model.to_empty(device='cpu') then model.load_state_dict(...)"
            )
