"""prune_magic.checks: a right answer prints ✓; a wrong or missing one fails the cell with the hint
as its one-line message, so that graders count it and students read it."""

from __future__ import annotations

import pytest
import torch
from IPython.core.interactiveshell import InteractiveShell
from torch import nn

import prune_magic as pm
from prune_magic import checks
from prune_magic.checks import WrongAnswer
from tests.engine.architectures import CNN


def right(w: torch.Tensor, t: float) -> torch.Tensor:
    return torch.where(w.abs() < t, torch.zeros_like(w), w)


def test_a_right_clip_prints_a_tick_and_returns_nothing(capsys) -> None:
    assert checks.check_clip_by_hand(right) is None  # nbgrader reads a returned value as a score
    assert capsys.readouterr().out == "✓ your clipping matches prune_magic's on every test tensor\n"


def not_implemented(w: torch.Tensor, t: float) -> torch.Tensor:
    raise NotImplementedError()


@pytest.mark.parametrize(
    ("clip", "hint"),
    [
        (
            lambda w, t: torch.where(w < t, torch.zeros_like(w), w),
            "large negative weights were zeroed: compare the magnitude |w|",
        ),
        (
            lambda w, t: torch.where(w.abs() <= t, torch.zeros_like(w), w),
            "a weight with |w| equal to or above the threshold",
        ),
        (lambda w, t: w, "some weights with |w| < threshold were kept"),
        (lambda w, t: w[:1], "return a tensor of the same shape"),
        (not_implemented, "your function raised NotImplementedError"),  # the unanswered cell
    ],
)
def test_a_wrong_clip_raises_its_hint(capsys, clip, hint: str) -> None:
    with pytest.raises(WrongAnswer) as raised:
        checks.check_clip_by_hand(clip)
    assert str(raised.value).startswith(hint)
    assert capsys.readouterr().out == ""  # no ✓ above the failure


def test_ipython_shows_a_wrong_answer_as_one_line(capsys) -> None:
    shell = InteractiveShell()
    shell.user_ns.update(checks=checks, torch=torch)
    result = shell.run_cell("checks.check_clip_by_hand(lambda w, t: w)")
    assert isinstance(result.error_in_exec, WrongAnswer)
    out = capsys.readouterr()
    shown = (out.out + out.err).strip()
    assert shown == "✗ some weights with |w| < threshold were kept: zero all of them", shown


def test_largest_amount(capsys, mlp) -> None:
    x = torch.randn(256, 64)
    y = mlp(x).argmax(1)

    def agreement(m):
        return float((m(x).argmax(1) == y).float().mean())

    with pytest.raises(WrongAnswer, match="try less"):
        checks.check_largest_amount(mlp, agreement, 0.9, within=0.05)
    with pytest.raises(WrongAnswer, match="you can go higher"):
        checks.check_largest_amount(mlp, agreement, 0.05, within=0.05)
    for nonsense in (1.5, "0.5", None, True):
        with pytest.raises(WrongAnswer, match="a fraction between 0 and 1"):
            checks.check_largest_amount(mlp, agreement, nonsense, within=0.05)  # type: ignore[arg-type]
    largest = max(
        a / 100
        for a in range(0, 100, 5)
        if pm.prune(mlp, f"clip amount={a / 100} scope=global", evaluate=agreement, dry_run=True).metric_after
        >= agreement(mlp) - 0.05
    )
    capsys.readouterr()
    checks.check_largest_amount(mlp, agreement, largest, within=0.05)
    assert capsys.readouterr().out.startswith(f"✓ amount={largest:g} is within 0.05 of the largest")
    assert len(pm.history(mlp)) == 0  # checking changes nothing


def test_protected_layers(capsys) -> None:
    sweep = pm.Sensitivity("clip", (0.5, 0.9), 1.0, {"a": [1.0, 0.99], "b": [0.5, 0.1], "c": [1.0, 0.95]})
    checks.check_protected(sweep, ["b"])
    assert capsys.readouterr().out.startswith("✓ you protect b, including the most sensitive layer")
    with pytest.raises(WrongAnswer, match="one layer loses accuracy earliest"):
        checks.check_protected(sweep, ["a"])
    with pytest.raises(WrongAnswer, match="zz is not a layer of the sweep"):
        checks.check_protected(sweep, ["zz"])
    with pytest.raises(WrongAnswer, match="protecting most layers"):
        checks.check_protected(sweep, ["a", "b", "c"])


def test_mac_budget(capsys) -> None:
    torch.manual_seed(0)
    model = CNN().eval()
    x = torch.randn(1, 1, 8, 8)
    dense, _ = pm.count_macs(model, x)
    with pytest.raises(WrongAnswer, match="remove more channels"):
        checks.check_mac_budget(model, x, dense, 0.4)
    pm.prune(model, "clip amount=0.9", example_input=x)
    with pytest.raises(WrongAnswer, match="clipping does not lower MACs"):
        checks.check_mac_budget(model, x, dense, 0.4)
    pm.prune(model, "structured amount=0.6", example_input=x)
    checks.check_mac_budget(model, x, dense, 0.4)
    assert capsys.readouterr().out.startswith("✓")
    with pytest.raises(WrongAnswer, match="does not run on the example input"):
        checks.check_mac_budget(nn.Sequential(nn.Linear(3, 3)), x, dense, 0.4)
