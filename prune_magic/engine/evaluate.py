"""Metrics: what an eval function may return, and the built-in top-1 accuracy on a DataLoader
or an ``(X, y)`` pair.

>>> metric_changes({"acc": 0.9, "loss": 0.3}, {"acc": 0.8})
[('acc', 0.9, 0.8)]

>>> import torch
>>> from torch import nn
>>> X, y = torch.randn(10, 4), torch.zeros(10, dtype=torch.long)
>>> model = nn.Linear(4, 2)
>>> with torch.no_grad():
...     _ = model.bias.copy_(torch.tensor([10.0, -10.0]))
>>> accuracy((X, y))(model)
1.0
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

from .errors import PruneError

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
Metric = float | dict[str, float]
Evaluate = Callable[[nn.Module], object]


def as_metric(value: object) -> Metric | None:
    """A float or a {name: float} dict from what an eval function returned, else None."""
    if isinstance(value, Mapping):
        metrics = {str(k): as_metric(v) for k, v in value.items()}
        if not metrics or any(not isinstance(v, float) for v in metrics.values()):
            return None
        return metrics  # type: ignore[return-value]
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.dtype != torch.bool:
        return float(value)
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    return None


def metric_changes(before: Metric, after: Metric, name: str = "metric") -> list[tuple[str, float, float]]:
    """(name, before, after) for each metric measured both times."""
    if isinstance(before, dict) and isinstance(after, dict):
        return [(k, before[k], after[k]) for k in before if k in after]
    if isinstance(before, float) and isinstance(after, float):
        return [(name, before, after)]
    return []


_NOT_A_FRACTION = ("loss", "error", "mse", "mae", "nll", "perplexity", "ppl", "distance")


def is_fraction(name: str, *values: float) -> bool:
    """Whether a metric reads as a percentage: values in [0, 1], and a name that is not a loss's."""
    return all(0.0 <= v <= 1.0 for v in values) and not any(w in name.lower() for w in _NOT_A_FRACTION)


def lower_is_better(name: str) -> bool:
    """Whether a metric improves downwards, by its name: a loss, an error, a perplexity.

    >>> lower_is_better("perplexity"), lower_is_better("accuracy")
    (True, False)
    """
    return any(w in name.lower() for w in _NOT_A_FRACTION)


def format_metric(name: str, value: float, percent: bool | None = None) -> str:
    """One metric value: a percentage for accuracy-like ones, else 4 significant digits.

    >>> format_metric("accuracy", 0.9622), format_metric("loss", 0.31416)
    ('96.2%', '0.3142')
    """
    if percent if percent is not None else is_fraction(name, value):
        return f"{value:.1%}"
    return f"{value:.4g}"


def format_change(name: str, before: float, after: float, arrow: str = "→") -> str:
    """``96.2% → 90.4% (-5.8 points)`` for accuracy-like metrics, ``0.3142 → 0.4 (+0.0858)`` else.

    >>> format_change("accuracy", 0.9622, 0.9044)
    '96.2% → 90.4% (-5.8 points)'
    >>> format_change("agreement", 1.0, 0.5273, "->")
    '100.0% -> 52.7% (-47.3 points)'
    """
    if is_fraction(name, before, after):
        delta = f"{(after - before) * 100:+.1f} points"
        return f"{before:.1%} {arrow} {after:.1%} ({delta})"
    return f"{before:.4g} {arrow} {after:.4g} ({after - before:+.3g})"


def metric_name(evaluate: Evaluate | None) -> str:
    name = getattr(evaluate, "__name__", "")
    return name if name.isidentifier() else "metric"  # a lambda is called "<lambda>"


def accuracy(
    data: object, max_samples: int | None = None, batch_size: int = 512
) -> Callable[[nn.Module], float]:
    """An eval function: top-1 accuracy of ``model`` on ``data``, at most ``max_samples`` samples.

    ``data`` is a DataLoader (or any iterable of ``(inputs, targets)`` batches) or an
    ``(X, y)`` pair of tensors or arrays. The model is put in eval mode while it is
    measured and back in its previous mode afterwards. With a shuffling loader and a
    sample cap, before and after are measured on different samples: pass a loader that
    does not shuffle.
    """
    batches = _batches(data, batch_size)

    def accuracy(model: nn.Module) -> float:
        correct = seen = 0
        with eval_mode(model), torch.no_grad():
            for inputs, targets in batches():
                if max_samples is not None and seen >= max_samples:
                    break
                room = None if max_samples is None else max_samples - seen
                inputs, targets = _to_model(inputs[:room], model), targets[:room].to(_device(model))
                output = model(inputs)
                check_targets(output, targets, "accuracy")
                correct += int((output.argmax(-1) == targets).sum())
                seen += len(targets)
        if not seen:
            raise PruneError("the evaluation data is empty")
        return correct / seen

    return accuracy


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode inside the block, then give every module its own mode back.

    Forward passes the engine makes (tracing, MACs, latency, metrics) must not update
    BatchNorm statistics or change which modules train.
    """
    with _mode(model, training=False):
        yield model


@contextmanager
def train_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in train mode inside the block (the training steps), then restore every module's mode."""
    with _mode(model, training=True):
        yield model


@contextmanager
def _mode(model: nn.Module, training: bool) -> Iterator[None]:
    modes = {m: m.training for m in model.modules()}
    model.train(training)
    try:
        yield
    finally:
        for module, mode in modes.items():
            module.training = mode


def check_targets(output: object, targets: torch.Tensor, use: str, strict: bool = True) -> None:
    """Refuse targets that are not one class index per output row, before broadcasting hides it.

    ``use``: what needs them ("accuracy", or "the default loss (cross-entropy)"). Not
    ``strict`` (training with cross-entropy, which also takes soft labels and per-pixel
    targets), only targets of shape (N, 1) beside (N, classes) scores are refused.
    """
    shape = tuple(targets.shape)
    if targets.dim() == 2 and shape[1] == 1:
        raise PruneError(
            f"{use} needs one class index per sample, shape (N,), and the targets have shape {shape}:"
            " pass y.squeeze(1) (or y.view(-1))"
        )
    if not strict:
        return
    if targets.dim() != 1:
        raise PruneError(
            f"{use} needs one class index per sample, shape (N,), and the targets have shape {shape}"
            + (" (one-hot? pass y.argmax(1))" if targets.dim() == 2 else "")
        )
    if not isinstance(output, torch.Tensor) or output.dim() != 2 or output.shape[0] != shape[0]:
        got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise PruneError(
            f"{use} needs the model to return class scores of shape (N, classes) for N = {shape[0]}"
            f" targets, and it returned {got}; pass an eval function (--eval) for other outputs"
        )


def first_batch(data: object, model: nn.Module, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``(inputs, targets)`` batch of ``data``, on the model's device and dtype."""
    for inputs, targets in _batches(data, batch_size)():
        return _to_model(inputs, model), targets.to(_device(model))
    raise PruneError("the data is empty")


def _device(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def _to_model(inputs: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """Inputs on the model's device, floats in its dtype (numpy gives float64, say)."""
    first = next(model.parameters(), None)
    inputs = inputs.to(_device(model))
    if first is not None and first.is_floating_point() and inputs.is_floating_point():
        inputs = inputs.to(first.dtype)
    return inputs


def is_pair(data: object) -> bool:
    """Whether ``data`` is an ``(X, y)`` pair of tensors or arrays (not a list of batches)."""
    return isinstance(data, tuple | list) and len(data) == 2 and not isinstance(data[0], tuple | list)


def pair(data: object) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``(X, y)`` pair as tensors, checked to be of one length."""
    X, y = (torch.as_tensor(d) for d in data)  # type: ignore[attr-defined]
    if X.dim() == 0 or y.dim() == 0:
        raise PruneError(
            f"the (X, y) pair needs a batch dimension; got shapes {tuple(X.shape)} and {tuple(y.shape)}"
        )
    if len(X) != len(y):
        raise PruneError(f"the (X, y) pair has {len(X)} inputs but {len(y)} targets")
    return X, y


def check_reusable(data: object, role: str) -> None:
    """Refuse a one-shot iterator (a generator, ``iter(loader)``): it is read before and after."""
    if isinstance(data, Iterator):
        raise PruneError(
            f"the {role} data is a {type(data).__name__}, which can be read only once, and it is read"
            " more than once (before and after, each epoch); pass a DataLoader, a list of batches or an"
            " (X, y) pair"
        )


def _batches(data: object, batch_size: int) -> Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]:
    check_reusable(data, "evaluation")
    if is_pair(data):
        X, y = pair(data)
        return lambda: zip(torch.split(X, batch_size), torch.split(y, batch_size), strict=True)
    if isinstance(data, Iterable) and not isinstance(data, torch.Tensor | str):
        return lambda: (_pair(batch) for batch in data)
    raise PruneError(f"evaluation data must be a DataLoader or an (X, y) pair, not {type(data).__name__}")


def _pair(batch: object) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, tuple | list) and len(batch) >= 2:
        inputs, targets = torch.as_tensor(batch[0]), torch.as_tensor(batch[1])
        if inputs.dim() == 0 or targets.dim() == 0 or len(inputs) != len(targets):
            raise PruneError(
                f"a batch has inputs of shape {tuple(inputs.shape)} and targets of shape"
                f" {tuple(targets.shape)}: each batch must be (inputs, targets) of one length"
            )
        return inputs, targets
    raise PruneError(f"each batch must be (inputs, targets), got {type(batch).__name__}")
