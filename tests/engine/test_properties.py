"""Properties over random shapes, values and amounts (hypothesis)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import prune_magic as pm
from prune_magic.engine import magnitude
from prune_magic.engine.bits import pack_bits, unpack_bits
from tests.conftest import same_bits, state

#: The record kernels: numpy (the CPU's) and torch ops (other devices', here on the CPU).
ENGINES = [pytest.param(True, id="numpy"), pytest.param(False, id="torch")]


@contextmanager
def kernels(use_numpy: bool) -> Iterator[None]:
    """Switch the record kernels (not a monkeypatch fixture: hypothesis reruns the body)."""
    saved, magnitude.use_numpy = magnitude.use_numpy, use_numpy
    try:
        yield
    finally:
        magnitude.use_numpy = saved


shapes = st.lists(st.tuples(st.integers(1, 40), st.integers(1, 40)), min_size=1, max_size=4)


def build(dims: list[tuple[int, int]], seed: int, duplicates: bool) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(*(nn.Linear(i, o, bias=False) for i, o in dims))
    if duplicates:  # many exact ties, zeros and negative zeros
        with torch.no_grad():
            for layer in model:
                layer.weight.copy_(torch.randint(-3, 4, layer.weight.shape).float() / 4)
                layer.weight.view(-1)[0] = -0.0
    return model


@pytest.mark.parametrize("use_numpy", ENGINES)
@settings(max_examples=60, deadline=None)
@given(
    dims=shapes,
    seed=st.integers(0, 10_000),
    amount=st.floats(0, 0.999),
    scope=st.sampled_from(["layer", "global"]),
    duplicates=st.booleans(),
)
def test_amount_gives_the_exact_count_and_undo_is_bit_exact(
    use_numpy, dims, seed, amount, scope, duplicates
) -> None:
    with kernels(use_numpy):
        check_amount(dims, seed, amount, scope, duplicates)


def check_amount(dims, seed, amount, scope, duplicates) -> None:
    model = build(dims, seed, duplicates)
    before = state(model)
    weights = [m.weight for m in model]
    zero_before = [int((w == 0).sum()) for w in weights]
    pm.prune(model, f"clip amount={amount!r} scope={scope}")
    zeros = [int((w == 0).sum()) for w in weights]
    if scope == "layer":
        assert zeros == [max(z, round(amount * w.numel())) for z, w in zip(zero_before, weights)]
    else:
        total = sum(w.numel() for w in weights)
        assert sum(zeros) == max(sum(zero_before), round(amount * total))
    pruned = state(model)
    twin = build(dims, seed, duplicates)
    pm.prune(twin, f"clip amount={amount!r} scope={scope}", undo=False)  # the fused path: same result
    assert same_bits(twin, pruned)
    pm.undo(model)
    assert same_bits(model, before)
    pm.prune(model, f"clip amount={amount!r} scope={scope}")  # the same step again: the same result
    assert same_bits(model, pruned)


@pytest.mark.parametrize("use_numpy", ENGINES)
@settings(max_examples=40, deadline=None)
@given(dims=shapes, seed=st.integers(0, 10_000), threshold=st.floats(0, 2), duplicates=st.booleans())
def test_threshold_zeroes_exactly_the_small_magnitudes(use_numpy, dims, seed, threshold, duplicates) -> None:
    model = build(dims, seed, duplicates)
    before = [m.weight.detach().clone() for m in model]
    with kernels(use_numpy):
        pm.prune(model, f"clip threshold={threshold!r}")
    for old, layer in zip(before, model):
        small = old.abs() < threshold
        assert (layer.weight[small] == 0).all()
        assert torch.equal(layer.weight[~small], old[~small])


@given(st.lists(st.booleans(), min_size=1, max_size=200))
def test_bit_packing_round_trips(bits) -> None:
    mask = torch.tensor(bits + [False] * (-len(bits) % 8))
    assert unpack_bits(pack_bits(mask), len(bits)).tolist() == bits
