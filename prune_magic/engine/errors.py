"""The engine's exceptions: every failure a user can cause has its own class.

The magic layer turns any :class:`PruneError` into a one-line ``UsageError``;
from Python they are ordinary exceptions with tracebacks.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

#: The longest message an error carries: longer ones (a whole input echoed back) are cut.
MESSAGE_LIMIT = 600


class PruneError(Exception):
    """Base class of the errors a user can fix (bad recipe, bad selection, ...).

    The message is one line (newlines in wrapped exception texts become spaces) of at
    most :data:`MESSAGE_LIMIT` characters.
    """

    def __init__(self, message: object = "") -> None:
        super().__init__(shorten(" ".join(str(message).split()), MESSAGE_LIMIT))


class RecipeError(PruneError, ValueError):
    """The recipe text is not valid: unknown step or option, bad value."""


class SelectionError(PruneError, ValueError):
    """``layers=`` or ``exclude=`` names something the model does not have."""


class HistoryError(PruneError, RuntimeError):
    """Undo or reset cannot restore the weights bit-exactly."""


def shorten(text: str, limit: int = 60) -> str:
    """``text`` cut to about ``limit`` characters, saying how much was left out.

    >>> shorten("x" * 100, 20)
    'xxxxxxxxxxxxxxxxxxxx… (80 more characters)'
    """
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more characters)"


def did_you_mean(word: str, candidates: Iterable[str], n: int = 3) -> str:
    """Return ``"; did you mean 'x'?"`` for the closest candidates, or ``""``."""
    matches = difflib.get_close_matches(word, list(candidates), n=n, cutoff=0.6)
    if not matches:
        return ""
    if len(matches) == 1:
        return f"; did you mean {matches[0]!r}?"
    return "; did you mean " + " or ".join(repr(m) for m in matches) + "?"
