"""prune_magic: see, in a notebook, what pruning does to a PyTorch model.

``import prune_magic as pm`` is cheap: torch is imported on first use of the engine
(``pm.prune``, ``pm.undo``, ...), so ``%load_ext prune_magic`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .engine import *  # noqa: F403

_SUBMODULES = frozenset({"checks", "engine", "magics", "plots", "widgets"})


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext prune_magic``: register ``%%prune`` and ``%prune`` (torch is not imported yet)."""
    from .magics import load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext prune_magic``."""
    from .magics import unload

    unload(ipython)


def __getattr__(name: str) -> Any:
    if name.startswith("__"):  # module machinery probes these: never import torch for them
        raise AttributeError(f"module 'prune_magic' has no attribute {name!r}")
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    from . import engine

    if name in engine.__all__:
        return getattr(engine, name)
    raise AttributeError(f"module 'prune_magic' has no attribute {name!r}")


def __dir__() -> list[str]:
    from . import engine

    return sorted([*globals(), *engine.__all__])
