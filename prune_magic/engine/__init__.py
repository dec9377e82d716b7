"""The pure engine of prune_magic: imports torch only, never IPython, ipywidgets or matplotlib.

Everything a ``%%prune`` cell does, a script can do with these functions.
"""

from __future__ import annotations

from .errors import HistoryError, PruneError, RecipeError, SelectionError
from .history import Entry, History, changed_outside, forget, history, reset, undo
from .language import perplexity
from .masks import Masks, keep_masks
from .prune import EvaluationError, prune
from .recipe import Recipe, Step, parse_recipe
from .report import SPARSE_FORMAT, Report, Row, count_macs, report
from .result import PruneResult, StepResult
from .saving import Saved, load, save
from .selection import Target, select
from .sensitivity import Sensitivity, sensitivity
from .sparse import SparseLinear, sparse
from .structured import Removal

__all__ = [
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
    "Removal",
    "Report",
    "Row",
    "Saved",
    "SelectionError",
    "Sensitivity",
    "SparseLinear",
    "Step",
    "StepResult",
    "Target",
    "changed_outside",
    "count_macs",
    "forget",
    "history",
    "keep_masks",
    "load",
    "parse_recipe",
    "perplexity",
    "prune",
    "report",
    "reset",
    "save",
    "select",
    "sensitivity",
    "sparse",
    "undo",
]
