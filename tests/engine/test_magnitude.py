"""The exact select behind global clipping: sampled bracket, its fallback, every kernel."""

from __future__ import annotations

import pytest
import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

import prune_magic as pm
from prune_magic.engine import magnitude
from prune_magic.engine.magnitude import int_view, key_bits, select_cut
from tests.conftest import same_bits, state

BIG = 3 * magnitude.SMALL  # above SMALL: the sampled bracket is used


@pytest.fixture(params=["numpy", "torch"])
def kernels(request, monkeypatch) -> str:
    """Run the select (and the clip's record) with the numpy chunk kernels (the CPU default)
    and with the device (torch) ones."""
    monkeypatch.setattr(magnitude, "use_numpy", request.param != "torch")
    return str(request.param)


@pytest.fixture
def fallbacks(monkeypatch) -> list[int]:
    """Counts the calls of the exact radix select (the bracket's fallback)."""
    calls: list[int] = []
    radix = magnitude._radix_select

    def spy(*args, **kwargs):
        calls.append(1)
        return radix(*args, **kwargs)

    monkeypatch.setattr(magnitude, "_radix_select", spy)
    return calls


def brute(tensors: list[torch.Tensor], k: int) -> tuple[int, int, int, list[list[int]]]:
    """(key, below, equal, tie positions per tensor) by a full sort."""
    mask = (1 << key_bits(tensors[0].dtype)) - 1
    keys = [(int_view(t).long() & mask) for t in tensors]
    every = torch.cat(keys)
    key = int(every.sort().values[k - 1])
    below, equal = int((every < key).sum()), int((every == key).sum())
    left, ties = k - below, []
    for part in keys:
        hit = (part == key).nonzero().view(-1)[:left].tolist()
        left -= len(hit)
        ties.append(hit)
    return key, below, equal, ties


def check(tensors: list[torch.Tensor], k: int, sample: bool = True) -> magnitude.Cut:
    cut = select_cut(tensors, k, sample=sample)
    key, below, equal, ties = brute(tensors, k)
    assert (cut.key, cut.below, cut.equal) == (key, below, equal)
    if cut.ties is not None:
        assert [t.tolist() for t in cut.ties] == ties
    return cut


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("n", [50, BIG])
def test_select_is_exact_in_every_dtype(kernels, fallbacks, dtype: torch.dtype, n: int) -> None:
    gen = torch.Generator().manual_seed(n)
    tensors = [
        torch.randn(n // 3, generator=gen).to(dtype),
        (torch.randn(n - n // 3, generator=gen) * 0.1).to(dtype),
    ]
    tensors[0][:7] = 0.0
    tensors[0][7:9] = -0.0
    for k in (1, 5, n // 2, round(0.9 * n), n - 1, n):
        cut = check(tensors, k)
        assert cut.ties is not None  # found by the bracket, positions kept
        check(tensors, k, sample=False)  # and the radix select alone agrees
    assert len(fallbacks) == 6  # only the sample=False calls


def test_a_bracket_that_misses_falls_back_to_the_exact_select(kernels, fallbacks) -> None:
    """Weights arranged against the strided sample: every sampled weight is tiny."""
    n = BIG
    stride = max(1, n // min(1 << 16, max(1024, n // 64)))
    weights = torch.linspace(1.0, 2.0, n)
    weights[::stride] = 1e-6
    cut = check([weights], round(0.5 * n))
    assert cut.ties is None and len(fallbacks) == 1


def test_too_many_ties_in_the_bracket_fall_back_to_the_exact_select(kernels, fallbacks) -> None:
    tensors = [torch.full((BIG,), 0.5), torch.full((1000,), 0.25)]
    check(tensors, BIG // 2)
    assert len(fallbacks) == 1


@pytest.mark.parametrize("undo", [True, False])
def test_global_clip_of_a_large_model_matches_torch(kernels, undo: bool) -> None:
    torch.manual_seed(3)
    ours = nn.Sequential(nn.Linear(300, 400), nn.Linear(400, 300), nn.Linear(300, 10))
    with torch.no_grad():  # ties at the cut, and weights that are zero already
        ours[1].weight[:2].fill_(ours[1].weight[5, 5].item())
        ours[0].weight[:, :3] = 0.0
        ours[0].weight[0, 3:6] = -0.0
    before = state(ours)
    theirs = nn.Sequential(nn.Linear(300, 400), nn.Linear(400, 300), nn.Linear(300, 10))
    theirs.load_state_dict(before)
    pairs = [(m, "weight") for m in theirs]
    for amount in (0.5, 0.9):
        torch_prune.global_unstructured(pairs, pruning_method=torch_prune.L1Unstructured, amount=amount)
        for module, name in pairs:
            torch_prune.remove(module, name)
        result = pm.prune(ours, f"clip amount={amount} scope=global", undo=undo, report=False)
        for a, b in zip(ours, theirs):
            assert torch.equal(a.weight, b.weight)
        total = sum(m.weight.numel() for m in ours)
        assert sum(int((m.weight == 0).sum()) for m in ours) == round(amount * total)
        if undo:  # +0.0 is no change (1,200 of them at first); -0.0 -> +0.0 is one
            assert result.steps[0].changed == round(amount * total) - (
                round(0.5 * total) if amount == 0.9 else 1200
            )
    if undo:
        pm.reset(ours)
        assert same_bits(ours, before)


@pytest.mark.parametrize("undo", [True, False])
def test_ties_across_layers_go_in_selection_order_then_position(kernels, undo: bool) -> None:
    model = nn.Sequential(nn.Linear(300, 300, bias=False), nn.Linear(300, 300, bias=False))
    with torch.no_grad():
        model[0].weight.fill_(-0.5)
        model[1].weight.fill_(0.5)
        model[1].weight[-1, -1] = 0.75
    pm.prune(model, "clip amount=0.7 scope=global", undo=undo)
    first, second = model[0].weight.view(-1), model[1].weight.view(-1)
    zeroed = round(0.7 * 180_000) - 90_000
    assert (first == 0).all()
    assert (second[:zeroed] == 0).all() and (second[zeroed:] != 0).all()
    if undo:
        pm.undo(model)
        assert (model[0].weight == -0.5).all() and int((model[1].weight == 0.5).sum()) == 89_999


def test_chunks_and_scratch_scale_with_the_model() -> None:
    assert magnitude.chunk_size(1_000_000) <= 1_000_000 // 32
    assert magnitude.chunk_size(100_000_000) == magnitude.CHUNK
    assert magnitude.chunk_size(10) == 1024  # tiny models: one small chunk
