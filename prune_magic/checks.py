"""Checks for classroom exercises: a friendly verdict and a hint, never a bare AssertionError.

Each check prints one line starting with ``✓`` or ``✗`` and returns whether the answer is
right, so a notebook cell can call it and a grader (nbgrader or a script) can use the result.

>>> import torch
>>> def by_hand(w, t):
...     return torch.where(w.abs() < t, torch.zeros_like(w), w)
>>> check_clip_by_hand(by_hand)
✓ your clipping matches prune_magic's on every test tensor
True
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from . import engine


def _say(ok: bool, text: str) -> bool:
    print(("✓ " if ok else "✗ ") + text)
    return ok


def check_clip_by_hand(clip: Callable[[torch.Tensor, float], torch.Tensor]) -> bool:
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
            return _say(False, f"your function raised {type(exc).__name__}: {exc}")
        if not isinstance(got, torch.Tensor) or got.shape != weights.shape:
            return _say(False, "return a tensor of the same shape as the weights you were given")
        if torch.equal(got, expected.weight.detach()):
            continue
        negatives_zeroed = bool(((got == 0) & (weights < -threshold)).any())
        if negatives_zeroed:
            return _say(
                False,
                "large negative weights were zeroed: compare the magnitude |w|, not w, to the threshold",
            )
        if bool(((got == 0) & (weights.abs() >= threshold)).any()):
            return _say(
                False, "a weight with |w| equal to or above the threshold was zeroed: keep |w| >= threshold"
            )
        return _say(False, "some weights with |w| < threshold were kept: zero all of them")
    return _say(True, "your clipping matches prune_magic's on every test tensor")


def check_largest_amount(
    model: nn.Module,
    evaluate: Callable[[nn.Module], float],
    answer: float,
    within: float = 0.01,
    slack: float = 0.05,
) -> bool:
    """``answer``: the largest global clip amount that keeps the metric within ``within`` of dense."""
    baseline = float(evaluate(model))

    def ok(amount: float) -> bool:
        result = engine.prune(
            model, f"clip amount={amount} scope=global", evaluate=evaluate, dry_run=True, report=False
        )
        return float(result.metric_after) >= baseline - within  # type: ignore[arg-type]

    if not 0 <= answer < 1:
        return _say(False, "give the amount as a fraction between 0 and 1, e.g. 0.7")
    if not ok(answer):
        return _say(
            False,
            f"at amount={answer:g} the metric falls more than {within:g} below the dense model: try less",
        )
    higher = round(min(answer + slack, 0.99), 4)
    if higher > answer and ok(higher):
        return _say(False, f"amount={higher:g} still keeps the metric within {within:g}: you can go higher")
    return _say(
        True,
        f"amount={answer:g} is within {slack:g} of the largest amount that keeps the metric within {within:g}",
    )


def check_protected(
    sensitivity: engine.Sensitivity, protected: Iterable[str], tolerance: float = 0.01
) -> bool:
    """``protected``: the layers to exclude, i.e. those whose budget is lowest in the sweep."""
    chosen = set(protected)
    budget = sensitivity.budget(tolerance)
    unknown = chosen - budget.keys()
    if unknown:
        return _say(
            False,
            f"{', '.join(sorted(unknown))} is not a layer of the sweep; choose from {', '.join(budget)}",
        )
    most_sensitive = min(budget, key=lambda layer: budget[layer])
    if most_sensitive not in chosen:
        return _say(
            False,
            f"look at the curves again: one layer loses accuracy earliest (its budget is {budget[most_sensitive]:g})",
        )
    if len(chosen) > len(budget) // 2 + 1:
        return _say(False, "protecting most layers leaves little to prune: keep only the sensitive ones")
    return _say(True, f"you protect {', '.join(sorted(chosen))}, including the most sensitive layer")


def check_mac_budget(model: nn.Module, example_input: object, dense_macs: int, share: float) -> bool:
    """The model must run and need at most ``share`` of ``dense_macs`` per forward."""
    try:
        macs, _ = engine.count_macs(model, example_input)
    except Exception as exc:
        return _say(
            False, f"the model does not run on the example input any more ({type(exc).__name__}: {exc})"
        )
    if macs > share * dense_macs:
        return _say(
            False,
            f"{macs:,} MACs is {macs / dense_macs:.0%} of the dense model; the budget is {share:.0%}: remove more channels"
            " (clipping does not lower MACs)",
        )
    return _say(
        True, f"{macs:,} MACs, {macs / dense_macs:.0%} of the dense model, within the {share:.0%} budget"
    )
