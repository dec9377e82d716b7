"""Property: whatever the recipe, model shape and layout, and wherever the eval function fails,
the model ends exactly as it was (a failure) or reset brings it back exactly (a success)."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from torch import nn

import prune_magic as pm
from tests.hostile.conftest import Snapshot

amounts = st.floats(0, 0.99).map(lambda a: round(a, 3))
steps = st.one_of(
    st.builds(lambda a, g: f"clip amount={a}" + (" scope=global" if g else ""), amounts, st.booleans()),
    st.builds(lambda t: f"clip threshold={t}", st.floats(0, 0.5).map(lambda t: round(t, 3))),
    st.builds(lambda s: f"clip sigma={s}", st.floats(0, 2).map(lambda s: round(s, 2))),
    st.builds(lambda b: f"quantize bits={b}", st.integers(2, 16)),
    st.builds(lambda a: f"structured amount={a}", st.floats(0.1, 0.8).map(lambda a: round(a, 2))),
)
selections = st.sampled_from(["", " layers=Linear", " layers=Conv2d", " exclude=head", " layers=*.bias"])


class Net(nn.Module):
    def __init__(self, conv: bool, width: int, channels_last: bool) -> None:
        super().__init__()
        self.body = (
            nn.Sequential(nn.Conv2d(2, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.Flatten())
            if conv
            else nn.Sequential(nn.Flatten(), nn.Linear(32, width), nn.ReLU())
        )
        self.head = nn.Linear(width * 16 if conv else width, 3)
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    recipe=st.lists(st.tuples(steps, selections), min_size=1, max_size=3),
    conv=st.booleans(),
    width=st.integers(1, 12),
    channels_last=st.booleans(),
    fail_at=st.one_of(st.none(), st.integers(1, 3)),
    seed=st.integers(0, 2**16),
)
def test_nothing_is_ever_lost(recipe, conv, width, channels_last, fail_at, seed):
    torch.manual_seed(seed)
    model = Net(conv, width, channels_last and conv)
    x = torch.randn(2, 2, 4, 4)
    text = "\n".join(step + (select if not step.startswith("structured") else "") for step, select in recipe)
    calls = []

    def metric(m):
        calls.append(1)
        if fail_at is not None and len(calls) == fail_at:
            raise RuntimeError("the eval failed")
        with torch.no_grad():
            return float(m(x).sum())

    before = Snapshot.of(model)
    try:
        pm.prune(model, text, evaluate=metric, example_input=x)
    except pm.PruneError as exc:
        message = str(exc)
    else:
        message = ""
        pm.reset(model)
    event(f"refused: {message[:40]}" if message else "applied")
    assert "\n" not in message
    before.assert_same(model)


def test_a_dry_run_changes_nothing(mlp, x):
    before = Snapshot.of(mlp)
    pm.prune(mlp, "clip amount=0.5\nquantize bits=4\nclip threshold=0.1 layers=*.bias", dry_run=True)
    before.assert_same(mlp)
