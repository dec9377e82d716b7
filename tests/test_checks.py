"""prune_magic.checks: a verdict and a hint for each exercise, right and wrong answers alike."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import prune_magic as pm
from prune_magic import checks
from tests.engine.architectures import CNN


def right(w: torch.Tensor, t: float) -> torch.Tensor:
    return torch.where(w.abs() < t, torch.zeros_like(w), w)


@pytest.mark.parametrize(
    ("clip", "hint"),
    [
        (right, "✓ your clipping matches"),
        (
            lambda w, t: torch.where(w < t, torch.zeros_like(w), w),
            "✗ large negative weights were zeroed: compare the magnitude |w|",
        ),
        (lambda w, t: torch.where(w.abs() <= t, torch.zeros_like(w), w), "✗"),
        (lambda w, t: w, "✗ some weights with |w| < threshold were kept"),
        (lambda w, t: w[:1], "✗ return a tensor of the same shape"),
    ],
)
def test_clip_by_hand(capsys, clip, hint: str) -> None:
    ok = checks.check_clip_by_hand(clip)
    assert ok == hint.startswith("✓")
    assert capsys.readouterr().out.startswith(hint)


def test_largest_amount(capsys, mlp) -> None:
    x = torch.randn(256, 64)
    y = mlp(x).argmax(1)

    def agreement(m):
        return float((m(x).argmax(1) == y).float().mean())

    answers = {}
    for amount in (0.05, 0.3, 0.6, 0.9):
        answers[amount] = checks.check_largest_amount(mlp, agreement, amount, within=0.05)
        answers[amount, "out"] = capsys.readouterr().out
    assert answers[0.9] is False and "try less" in answers[0.9, "out"]
    assert answers[0.05] is False and "you can go higher" in answers[0.05, "out"]
    assert len(pm.history(mlp)) == 0  # checking changes nothing


def test_protected_layers(capsys) -> None:
    sweep = pm.Sensitivity("clip", (0.5, 0.9), 1.0, {"a": [1.0, 0.99], "b": [0.5, 0.1], "c": [1.0, 0.95]})
    assert checks.check_protected(sweep, ["b"])
    assert not checks.check_protected(sweep, ["a"])
    assert not checks.check_protected(sweep, ["zz"])
    out = capsys.readouterr().out
    assert (
        "including the most sensitive layer" in out
        and "loses accuracy earliest" in out
        and "zz is not a layer" in out
    )


def test_mac_budget(capsys) -> None:
    torch.manual_seed(0)
    model = CNN().eval()
    x = torch.randn(1, 1, 8, 8)
    dense, _ = pm.count_macs(model, x)
    assert not checks.check_mac_budget(model, x, dense, 0.4)
    pm.prune(model, "structured amount=0.6", example_input=x)
    assert checks.check_mac_budget(model, x, dense, 0.4)
    out = capsys.readouterr().out
    assert "remove more channels" in out and out.splitlines()[-1].startswith("✓")
    broken = nn.Sequential(nn.Linear(3, 3))
    assert not checks.check_mac_budget(broken, x, dense, 0.4)
