"""Per-model history of steps: undo, reset, and knowing when someone else changed the model.

The history lives beside the model (in a weak map), never on it: the model stays a
plain ``nn.Module`` whose ``state_dict``, ``deepcopy`` and pickling are untouched. A copy
of a model starts with no history.

Every parameter and buffer carries a version counter that torch bumps on each in-place
change (an optimizer step, ``load_state_dict``, ...). After each step the history notes
them (with each tensor's dtype, device and shape: ``model.double()`` swaps ``.data``
without a bump); when they differ later, the model was changed outside prune_magic, and
undoing would mix old and new weights. Other edits through ``tensor.data`` bypass the
counter and are not seen.
"""

from __future__ import annotations

import itertools
import weakref
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .errors import HistoryError
from .guard import exclusive
from .reparam import refresh
from .report import format_bytes
from .snapshot import Record, Signature, redo_all, restore_all, tensors_by_name

#: What the history's sparsity column counts (a report's sparsity counts every parameter).
SPARSITY_NOTE = "sparsity: of the weights each step selected (the pruned layers' weights; biases not counted)"


@dataclass
class Entry:
    """One step applied to a model."""

    step: str
    records: list[Record]
    sparsity: float
    seconds: float
    undoable: bool = True
    before: Signature | None = None  # the model's tensors before the step: undo checks it gets them back
    tag: str | None = None  # who applied it, e.g. a notebook cell
    start_metric: Any = None  # (weakref to the eval function, its metric before the call), for re-runs
    clipped: tuple[str, ...] = ()  # parameters a clip step zeroed weights of: held at zero while training

    @property
    def undo_bytes(self) -> int:
        """Memory this entry keeps for its undo (on the CPU)."""
        return sum(r.nbytes for r in self.records)


@dataclass(repr=False)
class History:
    """The undoable steps of one model, oldest first."""

    entries: list[Entry] = field(default_factory=list)
    note: str = ""
    versions: dict[str, tuple[object, ...]] = field(default_factory=dict)
    version: int = 0  # bumped by every change to the entries (see :func:`version`)

    @property
    def undo_bytes(self) -> int:
        return sum(e.undo_bytes for e in self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __repr__(self) -> str:
        return f"<History: {len(self.entries)} steps, {format_bytes(self.undo_bytes)} kept for undo>"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))

    def __str__(self) -> str:
        lines = [f"{'#':>2}  {'step':<48} {'sparsity':>8} {'undo memory':>12}"]
        for i, entry in enumerate(self.entries, start=1):
            memory = format_bytes(entry.undo_bytes) if entry.undoable else "not kept"
            lines.append(f"{i:>2}  {entry.step:<48} {entry.sparsity:>8.1%} {memory:>12}")
        if not self.entries:
            lines.append("    (no steps)")
        else:
            lines.append(SPARSITY_NOTE)
        if self.note:
            lines.append(self.note)
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{i}</td><td><code>{e.step}</code></td><td>{e.sparsity:.1%}</td>"
            f"<td>{format_bytes(e.undo_bytes) if e.undoable else 'not kept'}</td></tr>"
            for i, e in enumerate(self.entries, start=1)
        )
        note = (f"<p>{SPARSITY_NOTE}</p>" if self.entries else "") + (
            f"<p>{self.note}</p>" if self.note else ""
        )
        return (
            "<table><thead><tr><th>#</th><th>step</th><th>sparsity</th><th>undo memory</th></tr>"
            f"</thead><tbody>{rows}</tbody></table>{note}"
        )


_HISTORIES: weakref.WeakKeyDictionary[nn.Module, History] = weakref.WeakKeyDictionary()


def history(model: nn.Module) -> History:
    """The steps applied to ``model`` that can be undone, oldest first.

    >>> from torch import nn
    >>> len(history(nn.Linear(2, 2)))
    0
    """
    past = _HISTORIES.get(model)  # (not `or`: a History with no steps is falsy, and may carry a note)
    return past if past is not None else History()


_CHANGES = itertools.count(1)  # one sequence for every model: a version is never reused


def _changed(past: History) -> None:
    past.version = next(_CHANGES)


def version(model: nn.Module) -> tuple[object, ...]:
    """What a view of ``model`` drew from: equal values mean nothing has changed since.

    It changes with every step applied, undone, rewound or forgotten, and when a tensor
    is changed outside prune_magic (an optimizer step, say).

    >>> from torch import nn
    >>> layer = nn.Linear(2, 2)
    >>> version(layer) == version(layer)
    True
    """
    past = _HISTORIES.get(model)
    return (past.version if past is not None else 0, tuple(sorted(changed_outside(model))))


def _versions(model: nn.Module) -> dict[str, tuple[object, ...]]:
    # dtype, device and shape too: model.double() swaps .data without bumping the version
    return {
        name: (id(t), t._version, t.dtype, t.device, tuple(t.shape))
        for name, t in tensors_by_name(model).items()
    }


def changed_outside(model: nn.Module) -> list[str]:
    """Names of tensors changed since the last step recorded on ``model``."""
    known = _HISTORIES.get(model)
    if known is None or not known.entries:
        return []
    now = _versions(model)
    return [name for name in now.keys() | known.versions.keys() if now.get(name) != known.versions.get(name)]


def begin(model: nn.Module) -> str:
    """Get ready for a new step; returns a note if earlier steps had to be dropped."""
    changed = changed_outside(model)
    if not changed:
        return ""
    old = _HISTORIES[model]
    note = (
        f"{_names(changed)} changed outside prune_magic after step {len(old)} ({old.entries[-1].step});"
        " history starts again from the current weights"
    )
    _HISTORIES[model] = History(note=note, version=next(_CHANGES))
    return note


def commit(model: nn.Module, entry: Entry) -> None:
    """Record a step that has been applied to ``model``."""
    past = _HISTORIES.setdefault(model, History())
    if not entry.undoable:  # the steps before it can no longer be reached bit-exactly
        past.entries.clear()
        past.note = f"step {entry.step!r} kept no undo record; reset returns to the weights after it"
    else:
        past.entries.append(entry)
    past.versions = _versions(model)
    _changed(past)


def sync_versions(model: nn.Module) -> None:
    """Note the current versions after prune_magic itself put the weights back."""
    past = _HISTORIES.get(model)
    if past is not None:
        past.versions = _versions(model)


def taint(model: nn.Module, names: tuple[str, ...]) -> None:
    """Note that ``names`` were changed by user code during a call (an eval function that
    trains, say): undo and reset then refuse, as for any change outside prune_magic."""
    past = _HISTORIES.get(model)
    if past is not None:
        for name in names:
            past.versions[name] = ("changed by user code",)


def rewind(model: nn.Module, tag: str) -> list[Entry]:
    """Undo the trailing steps tagged ``tag`` (a re-run cell's previous run); oldest first.

    Nothing is undone if the model changed outside prune_magic since. The entries can be
    put back exactly with :func:`redo`.
    """
    past = _HISTORIES.get(model)
    if past is None or changed_outside(model):
        return []
    undone: list[Entry] = []
    while past.entries and past.entries[-1].tag == tag:
        entry = past.entries.pop()
        restore_all(model, entry.records, swap=True, expect=entry.before)
        undone.insert(0, entry)
    past.versions = _versions(model)
    if undone:
        _changed(past)
    return undone


def redo(model: nn.Module, entries: list[Entry]) -> None:
    """Put back entries taken off by :func:`rewind`."""
    past = _HISTORIES.setdefault(model, History())
    for entry in entries:
        redo_all(model, entry.records)
        past.entries.append(entry)
    past.versions = _versions(model)
    _changed(past)


def undo(model: nn.Module) -> Entry:
    """Restore ``model`` to its state before the last step, bit for bit; return that step.

    Raises :class:`HistoryError` when there is nothing to undo or the model was changed
    outside prune_magic since the last step.
    """
    with exclusive(model, "pm.undo"):
        past = _checked(model, "undo")
        entry = past.entries[-1]
        restore_all(model, entry.records, expect=entry.before)
        refresh(model)
        past.entries.pop()
        past.versions = _versions(model)
        _changed(past)
    return entry


def reset(model: nn.Module) -> list[Entry]:
    """Undo every step, back to the weights the history started from; return the steps."""
    with exclusive(model, "pm.reset"):
        past = _checked(model, "reset")
        undone = []
        while past.entries:
            undone.append(past.entries[-1])
            restore_all(model, past.entries[-1].records, expect=past.entries[-1].before)
            past.entries.pop()
        refresh(model)
        past.versions = _versions(model)
        _changed(past)
    return undone


def forget(model: nn.Module) -> int:
    """Drop the history of ``model`` (its weights stay as they are); return the bytes freed."""
    with exclusive(model, "pm.forget"):
        past = _HISTORIES.pop(model, None)
        if past is not None:  # (an empty history, not none: views see the version change)
            _HISTORIES[model] = History(version=next(_CHANGES))
    return past.undo_bytes if past else 0


def _checked(model: nn.Module, verb: str) -> History:
    past = _HISTORIES.get(model)
    if past is None or not past.entries:
        note = f" ({past.note})" if past and past.note else ""
        raise HistoryError(f"nothing to {verb}: no prune_magic step has been applied to this model{note}")
    changed = changed_outside(model)
    if changed:
        raise HistoryError(
            f"cannot {verb}: {_names(changed)} changed outside prune_magic since the last step"
            f" ({past.entries[-1].step}), e.g. by training; {verb} would mix old and new weights."
            " Keep the current weights with pm.forget(model), or train inside pm.keep_masks(...)"
        )
    return past


def _names(names: list[str]) -> str:
    names = sorted(names)
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
