"""prune_magic: see, in a notebook, what pruning does to a PyTorch model.

``import prune_magic as pm`` is cheap: torch is imported on first use of the engine
(``pm.prune``, ``pm.undo``, ...), so ``%load_ext prune_magic`` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .engine import *  # noqa: F403

_ENGINE_NAMES = frozenset(
    {
        "SPARSE_FORMAT",
        "Entry",
        "EvaluationError",
        "History",
        "HistoryError",
        "Masks",
        "PruneError",
        "PruneResult",
        "Recipe",
        "RecipeError",
        "Report",
        "Row",
        "SelectionError",
        "Step",
        "StepResult",
        "Target",
        "count_macs",
        "forget",
        "history",
        "keep_masks",
        "changed_outside",
        "sensitivity",
        "Sensitivity",
        "load",
        "save",
        "Removal",
        "parse_recipe",
        "prune",
        "report",
        "reset",
        "select",
        "undo",
    }
)


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext prune_magic``: register ``%%prune`` and ``%prune`` (torch is not imported yet)."""
    from .magics import load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext prune_magic``."""
    from .magics import unload

    unload(ipython)


def __getattr__(name: str) -> Any:
    if name in _ENGINE_NAMES:
        from . import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'prune_magic' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_ENGINE_NAMES])
