"""Checks for classroom exercises: a friendly verdict and a hint, never a wall of traceback.

A right answer prints one line starting with ``✓``. A wrong or missing one raises
:class:`WrongAnswer`, whose message is the hint: the cell fails, which is how nbgrader (and any
grader that runs the notebook) counts it, and IPython shows the student that one line, ``✗`` and
the hint, instead of a traceback.

>>> import torch
>>> def by_hand(w, t):
...     return torch.where(w.abs() < t, torch.zeros_like(w), w)
>>> check_clip_by_hand(by_hand)
✓ your clipping matches prune_magic's on every test tensor
>>> check_clip_by_hand(lambda w, t: torch.where(w < t, torch.zeros_like(w), w))
Traceback (most recent call last):
...
prune_magic.checks.WrongAnswer: large negative weights were zeroed: compare the magnitude |w|, not w, to the threshold
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from . import engine


class WrongAnswer(AssertionError):
    """A wrong or missing answer; the message is the hint.

    An AssertionError, so graders and test runners count it as a failed check. In IPython (a
    notebook, nbgrader) it shows as one line, ``✗`` and the hint: IPython asks an exception for
    ``_render_traceback_`` before it formats a traceback.
    """

    def _render_traceback_(self) -> list[str]:
        return [f"✗ {self}"]


def _right(text: str) -> None:
    print(f"✓ {text}")


def check_clip_by_hand(clip: Callable[[torch.Tensor, float], torch.Tensor]) -> None:
    """Your ``clip(weights, threshold)`` must zero exactly the weights with |w| < threshold."""
    torch.manual_seed(0)
    cases = [
        (torch.randn(64, 32), 0.5),
        (torch.randn(10) * 0.01, 0.005),
        (-torch.rand(8), 0.3),
        (torch.tensor([0.25, -0.25, 0.2499, -3.0, 0.0]), 0.25),  # the boundary: |w| == threshold stays
    ]
    for weights, threshold in cases:
        expected = nn.Linear(1, 1, bias=False)
        expected.weight = nn.Parameter(weights.clone())
        engine.prune(expected, f"clip threshold={threshold}", undo=False, report=False)
        try:
            got = clip(weights.clone(), threshold)
        except Exception as exc:
            raise WrongAnswer(f"your function raised {type(exc).__name__}: {exc}") from exc
        if not isinstance(got, torch.Tensor) or got.shape != weights.shape:
            raise WrongAnswer("return a tensor of the same shape as the weights you were given")
        if torch.equal(got, expected.weight.detach()):
            continue
        negatives_zeroed = bool(((got == 0) & (weights < -threshold)).any())
        if negatives_zeroed:
            raise WrongAnswer(
                "large negative weights were zeroed: compare the magnitude |w|, not w, to the threshold"
            )
        if bool(((got == 0) & (weights.abs() >= threshold)).any()):
            raise WrongAnswer(
                "a weight with |w| equal to or above the threshold was zeroed: keep |w| >= threshold"
            )
        raise WrongAnswer("some weights with |w| < threshold were kept: zero all of them")
    _right("your clipping matches prune_magic's on every test tensor")


def check_largest_amount(
    model: nn.Module,
    evaluate: Callable[[nn.Module], float],
    answer: float,
    within: float = 0.01,
    slack: float = 0.05,
) -> None:
    """``answer``: the largest global clip amount that keeps the metric within ``within`` of dense."""
    baseline = float(evaluate(model))

    def ok(amount: float) -> bool:
        result = engine.prune(
            model, f"clip amount={amount} scope=global", evaluate=evaluate, dry_run=True, report=False
        )
        return float(result.metric_after) >= baseline - within  # type: ignore[arg-type]

    if isinstance(answer, bool) or not isinstance(answer, (int, float)) or not 0 <= answer < 1:
        raise WrongAnswer("give the amount as a fraction between 0 and 1, e.g. 0.7")
    if not ok(answer):
        raise WrongAnswer(
            f"at amount={answer:g} the metric falls more than {within:g} below the dense model: try less"
        )
    higher = round(min(answer + slack, 0.99), 4)
    if higher > answer and ok(higher):
        raise WrongAnswer(f"amount={higher:g} still keeps the metric within {within:g}: you can go higher")
    _right(
        f"amount={answer:g} is within {slack:g} of the largest amount that keeps the metric within {within:g}"
    )


def check_protected(
    sensitivity: engine.Sensitivity, protected: Iterable[str], tolerance: float = 0.01
) -> None:
    """``protected``: the layers to exclude, i.e. those whose budget is lowest in the sweep."""
    chosen = set(protected)
    budget = sensitivity.budget(tolerance)
    unknown = chosen - budget.keys()
    if unknown:
        raise WrongAnswer(
            f"{', '.join(sorted(unknown))} is not a layer of the sweep; choose from {', '.join(budget)}"
        )
    most_sensitive = min(budget, key=lambda layer: budget[layer])
    if most_sensitive not in chosen:
        raise WrongAnswer(
            f"look at the curves again: one layer loses accuracy earliest (its budget is {budget[most_sensitive]:g})"
        )
    if len(chosen) > len(budget) // 2 + 1:
        raise WrongAnswer("protecting most layers leaves little to prune: keep only the sensitive ones")
    _right(f"you protect {', '.join(sorted(chosen))}, including the most sensitive layer")


def check_mac_budget(model: nn.Module, example_input: object, dense_macs: int, share: float) -> None:
    """The model must run and need at most ``share`` of ``dense_macs`` per forward."""
    try:
        macs, _ = engine.count_macs(model, example_input)
    except Exception as exc:
        raise WrongAnswer(
            f"the model does not run on the example input any more ({type(exc).__name__}: {exc})"
        ) from exc
    if macs > share * dense_macs:
        raise WrongAnswer(
            f"{macs:,} MACs is {macs / dense_macs:.0%} of the dense model; the budget is {share:.0%}: remove more channels"
            " (clipping does not lower MACs)"
        )
    _right(f"{macs:,} MACs, {macs / dense_macs:.0%} of the dense model, within the {share:.0%} budget")
