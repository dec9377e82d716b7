"""Recovery after pruning: ``finetune``, ``distill`` and gradual ``clip ... steps=K``.

Every weight an earlier clip zeroed stays zero while the model trains: the zeros are
put back right after each optimizer step (:class:`~prune_magic.engine.masks.Masks`), so
the forward pass has no hooks and the state_dict keeps its keys.

Training runs under :func:`torch.random.fork_rng` seeded by the step's ``seed=`` (default
0): re-running a cell, or moving a dashboard slider, trains the same way, and the
user's own random state is left as it was.

Distillation (Hinton et al. 2015) trains the pruned model (the student) to match the
model as it was before pruning (the teacher): ``T² · KL(softmax(t/T) ‖ softmax(s/T))``
plus ``alpha`` times the hard-label loss. The teacher is rebuilt from the undo records
the history keeps (a copy of the pruned model with the records played back onto it)
and dropped when the step ends.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .clip import apply_clip
from .errors import PruneError
from .evaluate import _device, _pair, _to_model, check_targets, is_pair, pair, train_mode
from .masks import Masks
from .recipe import Step
from .selection import Target, select
from .snapshot import ModuleRecord, Record, TensorRecord, tensors_by_name

Metric = float | dict[str, float]
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

LR = 1e-3
TEMPERATURE = 2.0
ALPHA = 1.0
BATCH_SIZE = 64  # for (X, y) pairs; a DataLoader brings its own batches


@dataclass(frozen=True)
class Point:
    """A point of a training curve: after an epoch, or after a step of a gradual schedule."""

    label: str  # "before training", "epoch 2/3", "step 1/4"
    sparsity: float  # of the step's weights (clip steps) or of every Linear/Conv weight
    metric: Metric | None  # the eval function's value, when one was given
    loss: float | None  # mean training loss of the last epoch
    seconds: float  # since the step started


@dataclass(frozen=True)
class Progress:
    """What a progress callback receives: after every batch, and with ``point`` after every epoch."""

    step: str
    done: int  # batches done in this step (or in this step of a gradual schedule)
    total: int | None  # batches it will take, when the data has a length
    point: Point | None = None
    stage: str = ""  # "step 2/4" of a gradual schedule


@dataclass
class Training:
    """What the training steps of one :func:`~prune_magic.prune` call share."""

    data: object  # a DataLoader or an (X, y) pair
    loss: Loss | None = None  # loss(output, target); cross-entropy by default
    evaluate: Callable[[nn.Module], Metric | None] | None = None
    progress: Callable[[Progress], None] | None = None
    clipped: Sequence[str] = ()  # parameters that earlier clip steps zeroed: held at zero
    teacher: Callable[[], nn.Module] | None = None  # builds the unpruned model, for distill


def needs_training_data(step: Step) -> bool:
    return step.kind in ("finetune", "distill") or (
        step.kind in ("clip", "quantize") and "finetune" in step.options
    )


def gradual(step: Step) -> bool:
    """A clip step on Zhu & Gupta's schedule (``steps=`` or ``finetune=`` given)."""
    return step.kind == "clip" and ("steps" in step.options or "finetune" in step.options)


def cubic_schedule(initial: float, final: float, steps: int) -> list[float]:
    """Zhu & Gupta (2017): sparsity after step t of K is s_f + (s_i - s_f)(1 - t/K)^3.

    >>> [round(s, 4) for s in cubic_schedule(0.0, 0.9, 4)]
    [0.5203, 0.7875, 0.8859, 0.9]
    """
    return [final + (initial - final) * (1 - t / steps) ** 3 for t in range(1, steps + 1)]


def full_records(model: nn.Module) -> list[Record]:
    """A copy of every parameter and buffer (on the CPU): training changes them all."""
    return [TensorRecord.copy_of(name, t) for name, t in tensors_by_name(model).items()]


def finetune(model: nn.Module, step: Step, training: Training) -> tuple[Point, ...]:
    """Train ``epochs`` passes with every clipped weight held at zero."""
    masks = _masks(model, training.clipped)
    return _epochs(model, step, training, masks, int(step.options["epochs"]))  # type: ignore[arg-type]


def distill(model: nn.Module, step: Step, training: Training) -> tuple[Point, ...]:
    """Train the pruned model to match its unpruned self; the teacher is freed at the end."""
    if training.teacher is None:
        raise PruneError(f"line {step.line}: distill has no teacher: nothing was pruned before it")
    teacher = training.teacher()
    try:
        masks = _masks(model, training.clipped)
        return _epochs(model, step, training, masks, int(step.options["epochs"]), teacher)  # type: ignore[arg-type]
    finally:
        del teacher


def clip_gradually(
    model: nn.Module, step: Step, targets: list[Target], training: Training
) -> tuple[int | None, tuple[Point, ...]]:
    """Clip to ``amount`` over ``steps`` steps of the cubic schedule, training ``finetune`` epochs after each."""
    options = step.options
    final = float(options["amount"])  # type: ignore[arg-type]
    count = int(options.get("steps", 1))  # type: ignore[arg-type]
    epochs = int(options.get("finetune", 0))  # type: ignore[arg-type]
    initial = min(_zeros(targets) / max(1, _numel(targets)), final)
    single = {k: v for k, v in options.items() if k in ("scope", "layers", "exclude")}
    names = [t.name for t in targets]
    started = time.perf_counter()
    points: list[Point] = []
    zeros: int | None = None
    for t, amount in enumerate(cubic_schedule(initial, final, count), start=1):
        zeros = apply_clip(Step("clip", {"amount": amount, **single}, step.line), targets, None)
        label = f"step {t}/{count}"
        if epochs:
            masks = _masks(model, [*training.clipped, *names])
            last = _epochs(model, step, training, masks, epochs, label=label)[-1]
            points.append(
                Point(label, _sparsity(targets), last.metric, last.loss, time.perf_counter() - started)
            )
        else:
            metric = training.evaluate(model) if training.evaluate else None
            points.append(Point(label, _sparsity(targets), metric, None, time.perf_counter() - started))
    return (None if epochs else zeros), tuple(points)


def _epochs(
    model: nn.Module,
    step: Step,
    training: Training,
    masks: Masks,
    epochs: int,
    teacher: nn.Module | None = None,
    label: str = "",
) -> tuple[Point, ...]:
    options = step.options
    lr = float(options.get("lr", LR))  # type: ignore[arg-type]
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise PruneError(f"line {step.line}: the model has no parameters that require grad; nothing to train")
    if options.get("optimizer", "adam") == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9)
    else:
        optimizer = torch.optim.Adam(params, lr=lr)
    handle = optimizer.register_step_post_hook(lambda *_: masks.apply())
    loss_fn = training.loss or F.cross_entropy
    temperature = float(options.get("temperature", TEMPERATURE))  # type: ignore[arg-type]
    alpha = float(options.get("alpha", ALPHA))  # type: ignore[arg-type]
    total = _length(training.data)
    started = time.perf_counter()
    points = []
    if training.evaluate is not None and not label:  # where training starts from: the cut's cost
        points.append(Point("before training", masks.sparsity, training.evaluate(model), None, 0.0))
    done = 0
    device = _device(model)
    forked = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=forked):
            torch.manual_seed(int(options.get("seed", 0)))  # type: ignore[arg-type]
            for epoch in range(1, epochs + 1):
                losses = []
                with train_mode(model):
                    for inputs, targets in _shuffled(training.data):
                        inputs, targets = _to_model(inputs, model), targets.to(device)
                        optimizer.zero_grad(set_to_none=True)
                        output = model(inputs)
                        if training.loss is None:
                            check_targets(output, targets, "the default loss (cross-entropy)", strict=False)
                        loss = loss_fn(output, targets)
                        if teacher is not None:
                            with torch.no_grad():
                                soft = F.softmax(teacher(inputs) / temperature, dim=-1)
                            kl = F.kl_div(
                                F.log_softmax(output / temperature, dim=-1), soft, reduction="batchmean"
                            )
                            loss = kl * temperature**2 + alpha * loss
                        loss.backward()  # type: ignore[no-untyped-call]
                        optimizer.step()
                        losses.append(loss.item())
                        done += 1
                        if training.progress is not None:
                            training.progress(
                                Progress(str(step), done, total and total * epochs, None, label)
                            )
                if not losses:
                    raise PruneError(f"line {step.line}: the training data is empty")
                if not all(math.isfinite(x) for x in losses):
                    raise PruneError(
                        f"line {step.line}: the training loss became {losses[-1]}; try a smaller lr= (now {lr:g})"
                    )
                metric = training.evaluate(model) if training.evaluate is not None else None
                name = f"{label}, epoch {epoch}/{epochs}" if label else f"epoch {epoch}/{epochs}"
                point = Point(
                    name, masks.sparsity, metric, sum(losses) / len(losses), time.perf_counter() - started
                )
                points.append(point)
                if training.progress is not None:
                    training.progress(Progress(str(step), done, total and total * epochs, point, label))
    finally:
        handle.remove()
        masks.apply()
    return tuple(points)


def _masks(model: nn.Module, clipped: Sequence[str]) -> Masks:
    """Masks of the zeros of the clipped parameters (all Linear/Conv weights when none are known)."""
    params = dict(model.named_parameters())
    names = [n for n in dict.fromkeys(clipped) if n in params] or [t.name for t in select(model)]
    with torch.no_grad():
        return Masks({n: params[n].detach() == 0 for n in names}, params)


def _shuffled(data: object) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of an epoch: an (X, y) pair is shuffled (seeded) and cut into batches of 64."""
    if is_pair(data):
        X, y = pair(data)
        for batch in torch.split(torch.randperm(len(X)), BATCH_SIZE):
            yield X[batch], y[batch]
        return
    if isinstance(data, torch.Tensor | str) or not hasattr(data, "__iter__"):
        raise PruneError(f"training data must be a DataLoader or an (X, y) pair, not {type(data).__name__}")
    for batch in data:
        yield _pair(batch)


def _length(data: object) -> int | None:
    if is_pair(data):
        return -(-len(data[0]) // BATCH_SIZE)  # type: ignore[index]
    try:
        return len(data)  # type: ignore[arg-type]
    except TypeError:
        return None


def _numel(targets: Sequence[Target]) -> int:
    return sum(t.param.numel() for t in targets)


@torch.no_grad()
def _zeros(targets: Sequence[Target]) -> int:
    return _numel(targets) - sum(int(torch.count_nonzero(t.param)) for t in targets)


def _sparsity(targets: Sequence[Target]) -> float:
    return _zeros(targets) / max(1, _numel(targets))


def rebuild(model: nn.Module, records: Sequence[Record]) -> nn.Module:
    """A copy of ``model`` with ``records`` played back onto it (newest first): its earlier self.

    The records are only read; the copy shares no tensor with ``model`` or the records.
    """
    try:
        earlier = copy.deepcopy(model)
    except Exception as exc:
        raise PruneError(
            f"distill needs a copy of the model to rebuild the teacher, and copy.deepcopy failed: {exc}"
        ) from exc
    tensors = tensors_by_name(earlier)
    for record in reversed(records):
        if isinstance(record, TensorRecord):
            if record.name not in tensors:  # a structured record put it back already
                tensors = tensors_by_name(earlier)
            record.restore(tensors[record.name])
        elif isinstance(record, ModuleRecord):
            _put_back(earlier.get_submodule(record.name), record)
            tensors = tensors_by_name(earlier)
        else:
            record.restore_copy(earlier)
            tensors = tensors_by_name(earlier)
    return earlier.eval().requires_grad_(False)


def _put_back(module: nn.Module, record: ModuleRecord) -> None:
    for key, tensor in record.tensors.items():
        device = record.devices.get(key, tensor.device if tensor is not None else None)
        copied: Any = None
        if tensor is not None:
            copied = tensor.detach().to(device, copy=True)
            if isinstance(tensor, nn.Parameter):
                copied = nn.Parameter(copied, requires_grad=False)
        (module._parameters if key in module._parameters else module._buffers)[key] = copied
    for key, value in record.attrs.items():
        setattr(module, key, value)
