"""Applying one parsed step: the one place that branches on a step's kind.

:func:`~prune_magic.engine.prune.prune` applies every step through :func:`apply_step`, and the
sensitivity sweep prunes its points through :func:`cut`; what a step needs before it starts
(training data, calibration data, an undo record) is asked here too, so a new step kind is
added in this module and the recipe schema, nowhere else.

>>> from .recipe import parse_step
>>> gradual(parse_step("clip amount=0.9 steps=4")), needs_training_data(parse_step("finetune epochs=1"))
(True, True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from .clip import apply_clip
from .errors import PruneError
from .nm import apply_nm
from .quantize import Quantized, apply_quantize
from .recipe import Step
from .reparam import check_directions, sync_masks, zero_masked
from .selection import Target, select
from .sparsegpt import apply_sparsegpt
from .structured import Removal, apply_structured
from .train import Point, Training, clip_gradually, distill, finetune, full_records
from .wanda import apply_wanda


@dataclass(frozen=True)
class Applied:
    """What applying one step gave, besides the changed model."""

    zeros: int | None = None  # zeros among the targets, when known without a pass (clip amount=)
    removals: tuple[Removal, ...] = ()  # structured: the channels removed per layer
    curve: tuple[Point, ...] = ()  # training: metric and sparsity after each epoch / gradual step
    quantized: Quantized | None = None  # quantize: how, and the size before and after


def gradual(step: Step) -> bool:
    """A clip step on Zhu & Gupta's schedule (``steps=`` or ``finetune=`` given)."""
    return step.kind == "clip" and ("steps" in step.options or "finetune" in step.options)


def trains(step: Step) -> bool:
    """Whether the step trains (or clips in a loop): it changes every tensor of the model."""
    return step.kind in ("finetune", "distill") or gradual(step)


def needs_training_data(step: Step) -> bool:
    return step.kind in ("finetune", "distill") or (
        step.kind in ("clip", "quantize") and "finetune" in step.options
    )


def needs_calibration_data(step: Step) -> bool:
    return step.options.get("by") in ("wanda", "sparsegpt")


def needs_record(step: Step) -> bool:
    """Only a plain clip may go without an undo record: a failed forward check, a long training
    run or a quantization must be able to roll back."""
    return step.kind != "clip" or gradual(step)


def needs_teacher(step: Step) -> bool:
    """Whether the step learns from the model before pruning, rebuilt from the undo records."""
    return step.kind == "distill"


def prunes(step: Step) -> bool:
    """Whether the step removes or zeroes weights (what distillation recovers from)."""
    return step.kind in ("clip", "structured")


def selects_weights(step: Step) -> bool:
    """Whether the step works on the weights its ``layers=``/``exclude=`` select, one by one."""
    return step.kind in ("clip", "quantize")


def clips(step: Step) -> bool:
    """Whether the step zeroes weights in place (and so keeps torch-pruned masks in step)."""
    return step.kind == "clip"


def select_targets(model: nn.Module, step: Step) -> list[Target]:
    """The tensors the step's ``layers=``/``exclude=`` select; errors name the step's line."""
    try:
        return select(model, step.patterns("layers"), step.patterns("exclude"), blocks_only=clips(step))
    except PruneError as exc:
        raise type(exc)(f"line {step.line}: {exc}") from None


def apply_step(
    model: nn.Module,
    step: Step,
    targets: list[Target],
    records: list[Any] | None,
    example_input: object = None,
    data: object = None,
    training: Training | None = None,
) -> Applied:
    """Apply one parsed step to ``targets``, recording what changes in ``records``.

    ``records`` may be None only for a step that :func:`needs_record` says may go without.
    """
    if clips(step):
        zero_masked(model, targets, records)  # layers under torch.nn.utils.prune (see reparam)
    if trains(step) or step.kind == "quantize":
        if records is None or training is None:
            raise ValueError(f"{step.kind} steps need an undo record and the training inputs")
        if trains(step):
            records.extend(full_records(model))
        applied = _train_or_quantize(model, step, targets, records, training)
    else:
        zeros, removals = cut(model, step, targets, records, example_input, data)
        applied = Applied(zeros, removals)
    if clips(step):
        sync_masks(model, targets, records)
        check_directions(model, targets)
    return applied


def _train_or_quantize(
    model: nn.Module, step: Step, targets: list[Target], records: list[Any], training: Training
) -> Applied:
    if step.kind == "finetune":
        return Applied(curve=finetune(model, step, training))
    if step.kind == "distill":
        return Applied(curve=distill(model, step, training))
    if step.kind == "quantize":
        return Applied(quantized=apply_quantize(model, step, targets, records, training))
    zeros, curve = clip_gradually(model, step, targets, training)
    return Applied(zeros, curve=curve)


def cut(
    model: nn.Module,
    step: Step,
    targets: Sequence[Target],
    records: list[Any] | None,
    example_input: object = None,
    data: object = None,
) -> tuple[int | None, tuple[Removal, ...]]:
    """Prune ``targets`` once as a clip or structured step says (no training, no masks kept in step).

    Returns the zeros among the targets when known without a pass (clip amount steps) and
    the channels removed (structured steps).
    """
    if step.kind == "structured":
        return None, tuple(apply_structured(model, step, targets, example_input, records, data))
    if step.options.get("by") == "sparsegpt":  # (it changes kept weights: its record holds them whole)
        return apply_sparsegpt(model, step, targets, records, data), ()
    if step.options.get("by") == "wanda":
        return apply_wanda(model, step, targets, records, data), ()
    if "nm" in step.options:
        return apply_nm(model, step, targets, records), ()
    return apply_clip(step, targets, records), ()
