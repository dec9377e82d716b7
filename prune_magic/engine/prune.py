"""``prune(model, recipe)``: everything a ``%%prune`` cell does, in one call.

>>> import torch
>>> from torch import nn
>>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
>>> result = prune(model, "clip amount=0.5")
>>> round(result.steps[0].sparsity, 2)
0.5
>>> _ = undo(model)  # back to the dense weights, bit for bit
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from .errors import PruneError
from .evaluate import Evaluate, Metric, as_metric, check_reusable, eval_mode, metric_name
from .guard import WeightsChanged, check_model, check_untouched, exclusive, versions, who
from .history import Entry, begin, commit, history, redo, rewind, sync_versions, taint, undo
from .macs import MacTap
from .recipe import Recipe, Step, parse_recipe
from .reparam import refresh
from .report import fits, timing
from .report import report as _measure
from .result import PruneResult, StepResult
from .selection import Target, notes, select
from .snapshot import Record, deferred_interrupt, restore_all, signature
from .steps import (
    apply_step,
    clips,
    needs_calibration_data,
    needs_record,
    needs_teacher,
    needs_training_data,
    prunes,
    select_targets,
    selects_weights,
)
from .train import Loss, Progress, Training, rebuild

__all__ = ["EvaluationError", "PruneResult", "StepResult", "prune", "undo"]


class EvaluationError(PruneError):
    """The ``evaluate`` function raised, or returned something that is not a metric."""


def prune(
    model: nn.Module,
    recipe: str | Recipe | Step | Iterable[str],
    *,
    evaluate: Evaluate | None = None,
    example_input: object = None,
    dry_run: bool = False,
    undo: bool = True,
    report: bool = True,
    latency: bool = False,
    tag: str | None = None,
    data: object = None,
    train: object = None,
    loss: Loss | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> PruneResult:
    """Apply ``recipe`` to ``model`` in place and say what changed.

    The whole recipe and every ``layers=``/``exclude=`` pattern are checked before the
    model is touched. If anything fails later (a step, ``evaluate``, Ctrl-C), every
    step of this call is rolled back and the error is raised.

    Args:
        model: the ``nn.Module`` to prune, in place.
        recipe: recipe text (one step a line) or a parsed :class:`Recipe`.
        evaluate: ``evaluate(model) -> float | dict[str, float]``, called before and after
            (and after each training epoch), with the model in eval mode: an eval function
            that forgets ``model.eval()`` does not update BatchNorm statistics behind undo.
        example_input: a tensor (or tuple of inputs) to count MACs with.
        dry_run: report what the recipe would do, then restore the model exactly.
        undo: keep an undo record (on the CPU, the changed values plus one bit per
            weight). ``False`` saves that memory for very large models; a clip step cannot
            be undone then, nor rolled back if something fails after it: the rollback stops
            at the last such step and the error says so.
        report: measure per-tensor sparsity, size and MACs before and after (``False`` skips
            the MAC-counting passes).
        latency: also time forward passes of ``example_input`` before and after (a warm-up and
            at least three passes each: on a small model that is more than the pruning itself,
            so it is asked for; a ``%%prune`` cell with a structured step asks for it).
        data: a DataLoader or ``(X, y)`` pair for steps that need data (``importance=taylor``,
            ``by=wanda``, ``by=sparsegpt``): a DataLoader, an ``(X, y)`` pair, or token ids (a
            LongTensor (batch, seq) or a DataLoader of them) for a language model.
        train: a DataLoader or ``(X, y)`` pair to train on (``finetune``, ``distill``,
            ``clip ... finetune=``); an ``(X, y)`` pair is shuffled and cut into batches of 64.
        loss: ``loss(output, target)`` for training (default: cross-entropy).
        progress: called with a :class:`~prune_magic.engine.train.Progress` after every
            training batch and epoch.
        tag: label the steps (a notebook cell's id, say). If the model's last steps carry
            the same tag and nothing else changed it since, they are undone first, so
            running the same cell twice does not compound.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, not {type(model).__name__}")
    for name, fn in (("evaluate", evaluate), ("loss", loss), ("progress", progress)):
        if fn is not None and not callable(fn):
            raise PruneError(f"{name}= must be a function, not {type(fn).__name__}")
    check_model(model)
    parsed = parse_recipe(recipe)
    # every pattern and every input is checked before anything changes
    selected = [select_targets(model, step) for step in parsed.steps]
    _check_inputs(model, parsed, train, data, undo or dry_run)
    step_notes = _notes(model, parsed)  # (on the model as it is: later steps may replace layers)
    if example_input is not None and not report:  # (the report's MAC count checks it otherwise)
        fits(model, example_input)
    with exclusive(model, "pm.prune"):
        return _prune(
            model, parsed, selected, evaluate, example_input, dry_run, undo, report, latency, tag, data, train,
            loss, progress, step_notes,
        )  # fmt: skip


def _prune(
    model: nn.Module,
    parsed: Recipe,
    selected: list[list[Target]],
    evaluate: Evaluate | None,
    example_input: object,
    dry_run: bool,
    undo: bool,
    report: bool,
    timed: bool,
    tag: str | None,
    data: object,
    train: object,
    loss: Loss | None,
    progress: Callable[[Progress], None] | None,
    step_notes: tuple[str, ...],
) -> PruneResult:
    started = time.perf_counter()
    note = begin(model)
    rewound = rewind(model, tag) if tag is not None else []
    keep = undo or dry_run
    done: list[Entry] = []
    results = []
    try:
        # a re-run starts from the state its previous run started from: reuse that metric
        metric_before = _known_start(rewound, evaluate) or _evaluate(evaluate, model)
        # one structured step runs the example input before it changes anything (its trace) and
        # after (its check): the MACs are counted on those passes rather than on two of our own
        tap = (
            MacTap(model, example_input)
            if report and example_input is not None and _one_structured(parsed)
            else None
        )
        before = _measure(model, None if tap is not None else example_input) if report else None
        # a quarter second each side: enough runs that noise shows as noise (the spread is kept)
        latency_before = timing(model, example_input, 0.25) if timed and example_input is not None else None
        training = Training(
            train,
            _watched(model, loss, "loss"),
            (lambda m: _evaluate(evaluate, m)) if evaluate is not None else None,
            _watched(model, progress, "progress"),
        )
        with tap if tap is not None else nullcontext():
            for i, step in enumerate(parsed.steps):
                # the first step's selection still holds unless a rewind put other tensors back
                known = selected[0] if i == 0 and not rewound else None
                results.append(_apply(model, step, keep, done, example_input, data, training, known))
        after = _measure(model, example_input if tap is None else None) if report else None
        if tap is not None and before is not None and after is not None and len(tap.counts) >= 2:
            # (a step that ran the model fewer than twice left counts that say nothing: no MACs)
            before, after = before.with_macs(tap.counts[0]), after.with_macs(tap.counts[-1])
        latency_after = timing(model, example_input, 0.25) if latency_before is not None else None
        # a last step that trained measured the final model already (after its last epoch or step)
        last = results[-1].curve[-1] if results and results[-1].curve else None
        trained = last is not None and last.metric is not None and last.label != "before training"
        metric_after = last.metric if trained else _evaluate(evaluate, model)  # type: ignore[union-attr]
    except BaseException as exc:
        kept = _rollback(model, done, rewound)
        if isinstance(exc, WeightsChanged):
            taint(model, exc.names)  # undo and reset must not pass over what the user's code changed
            text = (
                f"{exc}. pm.prune rolled back its own steps; what your code changed stays, and undo/reset"
                " refuse to mix it with older weights (pm.forget(model) keeps the current ones)"
            )
            raise WeightsChanged(f"{text}; {_unrolled(kept)}" if kept else text, exc.names) from None
        if kept and isinstance(exc, PruneError):
            raise type(exc)(f"{exc}; {_unrolled(kept)}") from exc
        if kept and hasattr(exc, "add_note"):  # Python 3.11+
            exc.add_note(_unrolled(kept))
        raise
    if dry_run:
        _rollback(model, done, rewound)
    else:
        start = _remember(evaluate, metric_before)
        for entry in done:
            if not keep:  # (a step kept its record until the call succeeded, to roll back a failure)
                entry.records, entry.undoable = [], False
            entry.tag, entry.start_metric = tag, start
            commit(model, entry)
    return PruneResult(
        parsed,
        tuple(results),
        before,
        after,
        metric_before,
        metric_after,
        dry_run,
        time.perf_counter() - started,
        note,
        len(rewound),
        metric_name(evaluate),
        latency_before.median if latency_before is not None else None,
        latency_after.median if latency_after is not None else None,
        step_notes,
        (latency_before, latency_after) if latency_before is not None and latency_after is not None else None,
    )


def _one_structured(recipe: Recipe) -> bool:
    return len(recipe.steps) == 1 and recipe.steps[0].kind == "structured"


def _notes(model: nn.Module, recipe: Recipe) -> tuple[str, ...]:
    """What each clip-like step's selection skipped or shares (tied weights), once each."""
    found: dict[str, None] = {}
    for step in recipe.steps:
        if selects_weights(step):
            layers = step.patterns("layers")
            targets = select(model, layers, step.patterns("exclude"), blocks_only=clips(step))
            found.update(dict.fromkeys(notes(model, targets, layers, blocks_only=clips(step))))
    return tuple(found)


def _watched(model: nn.Module, fn: Callable[..., Any] | None, role: str) -> Any:
    """``fn`` called as before, refused if it changed the model's weights."""
    if fn is None:
        return None

    def watched(*args: Any) -> Any:
        before = versions(model)
        value = fn(*args)
        check_untouched(model, before, who(fn, role))
        return value

    return watched


def _unrolled(kept: list[Entry]) -> str:
    """What a failed call's rollback could not undo: the steps that kept no record (undo=False)."""
    return (
        f"undo=False: {kept[-1].step!r} kept no undo record, so the model stays as it was after that"
        f" step ({len(kept)} step(s) of this call applied); the steps after it were rolled back"
    )


def _remember(evaluate: Evaluate | None, metric: Metric | None) -> tuple[Any, Metric] | None:
    """(a weak reference to ``evaluate``, the metric it gave before the steps), or None."""
    if evaluate is None or metric is None:
        return None
    try:
        return weakref.ref(evaluate), metric
    except TypeError:  # an object that takes no weak references: nothing is remembered
        return None


def _known_start(rewound: list[Entry], evaluate: Evaluate | None) -> Metric | None:
    start = rewound[0].start_metric if rewound else None
    return start[1] if start is not None and evaluate is not None and start[0]() is evaluate else None


def _check_inputs(model: nn.Module, recipe: Recipe, train: object, data: object, keep: bool) -> None:
    """Steps that need data, a teacher or an undo record say so before anything changes."""
    if train is not None:
        check_reusable(train, "training")
    if data is not None:
        check_reusable(data, "calibration")
    for i, step in enumerate(recipe.steps):
        if needs_training_data(step) and train is None:
            raise PruneError(
                f"line {step.line}: {step.kind} trains the model and needs training data:"
                " pass train=(X, y) or a DataLoader (in %%prune: --train NAME)"
            )
        if needs_calibration_data(step) and data is None:
            raise PruneError(
                f"line {step.line}: clip by={step.options['by']} needs calibration data: pass data= (X, y),"
                " token ids or a DataLoader (in %%prune: --data NAME)"
            )
        if needs_teacher(step):
            if not keep:
                raise PruneError(
                    f"line {step.line}: distill rebuilds its teacher from the undo records; drop undo=False"
                )
            pruned_before = any(prunes(s) for s in recipe.steps[:i])
            if not pruned_before and not history(model).entries:
                raise PruneError(
                    f"line {step.line}: distill trains the pruned model to match the unpruned one, and"
                    " nothing has been pruned yet; put a clip or structured step before it"
                )


def _apply(
    model: nn.Module,
    step: Step,
    keep: bool,
    done: list[Entry],
    example_input: object,
    data: object,
    training: Training,
    targets: list[Target] | None = None,
) -> StepResult:
    """Apply one step; its entry joins ``done`` before it starts, so a failure half-way rolls back.

    ``targets``: the step's selection when it is known to hold still (else it is made again:
    an earlier structured or quantize step may have replaced tensors).
    """
    started = time.perf_counter()
    if targets is None:
        targets = select_targets(model, step)
    recorded = keep or needs_record(step)
    entry = Entry(str(step), [], math.nan, 0.0, undoable=recorded, before=signature(model))
    done.append(entry)
    if clips(step):
        entry.clipped = tuple(t.name for t in targets)
    training.clipped = [n for e in (*history(model).entries, *done) for n in e.clipped]
    training.teacher = lambda: rebuild(model, _records_before(model, done[:-1]))  # (for distill)
    # without a record, a step must not stop half-way
    with nullcontext() if recorded else deferred_interrupt():
        applied = apply_step(
            model, step, targets, entry.records if recorded else None, example_input, data, training
        )
    if applied.removals:  # (a quantize step's targets are the float weights it kept in its record)
        targets = select_targets(model, step)
    entry.sparsity = _sparsity(targets, applied.zeros)
    entry.seconds = time.perf_counter() - started
    changed = sum(r.changed for r in entry.records) if entry.undoable and keep else None
    names = tuple(t.name for t in targets)
    return StepResult(
        step,
        names,
        entry.sparsity,
        entry.seconds,
        changed,
        applied.removals,
        applied.curve,
        applied.quantized,
    )


def _records_before(model: nn.Module, done: list[Entry]) -> list[Record]:
    """What undoes this call's steps so far, or, when there are none, every step in the history."""
    entries = [e for e in done if e.records] or history(model).entries
    return [r for e in entries for r in e.records]


def _rollback(model: nn.Module, done: list[Entry], rewound: list[Entry]) -> list[Entry]:
    """Undo this call's steps, then redo the steps it rewound: the model as it was.

    A step without a record (a clip with undo=False) cannot be undone: the rollback stops
    there, the model stays as it was after that step, and the steps up to it are
    committed (without undo) and returned.
    """
    unrecorded = [i for i, entry in enumerate(done) if not entry.undoable]
    stop = unrecorded[-1] + 1 if unrecorded else 0
    for entry in reversed(done[stop:]):
        restore_all(model, entry.records, expect=entry.before)
    refresh(model)
    sync_versions(model)
    if stop:
        for entry in done[:stop]:
            entry.records, entry.undoable = [], False
            commit(model, entry)
        return done[:stop]
    if rewound:
        redo(model, rewound)
    return []


@torch.no_grad()
def _sparsity(targets: list[Target], zeros: int | None) -> float:
    total = sum(t.param.numel() for t in targets)
    if zeros is None:  # not known from the step: count
        zeros = total - sum(int(torch.count_nonzero(t.param)) for t in targets)
    return zeros / total if total else 0.0


def measure_metric(model: nn.Module, evaluate: Evaluate | None) -> Metric | None:
    """The metric of ``model`` as it is now, measured as :func:`prune` measures it (in eval mode,
    and refused if ``evaluate`` changed the weights); None without ``evaluate``."""
    return _evaluate(evaluate, model)


def _evaluate(evaluate: Evaluate | None, model: nn.Module) -> Metric | None:
    if evaluate is None:
        return None
    name = getattr(evaluate, "__name__", "evaluate")
    before = versions(model)
    try:
        with eval_mode(model):  # no BatchNorm statistics change, no dropout: undo stays exact
            value = evaluate(model)
    except Exception as exc:
        check_untouched(model, before, who(evaluate))
        raise EvaluationError(f"{name}(model) raised {type(exc).__name__}: {exc}") from exc
    check_untouched(model, before, who(evaluate))
    metric = as_metric(value)
    if metric is None:
        raise EvaluationError(
            f"{name}(model) returned {type(value).__name__} {value!r:.60}; "
            "return a number (e.g. accuracy) or a dict of numbers"
        )
    return metric
