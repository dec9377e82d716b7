"""``pm.sparse``: CSR where it is faster, dense where not; same outputs, same state dict."""

from __future__ import annotations

import copy
import importlib
import io

import pytest
import torch
from torch import nn

import prune_magic as pm
from prune_magic.engine.errors import PruneError
from tests.conftest import MLP, same_bits, state

sparse_module = importlib.import_module("prune_magic.engine.sparse")  # (pm.engine.sparse is the function)


@pytest.fixture
def pruned(mlp: MLP) -> MLP:
    pm.prune(mlp, "clip amount=0.95 layers=fc1,fc2")
    return mlp


def test_the_sparse_model_computes_the_same_and_leaves_the_original_alone(pruned: MLP) -> None:
    before = state(pruned)
    fast = pm.sparse(pruned, measure=False)
    assert isinstance(fast.fc1, pm.SparseLinear) and isinstance(fast.fc2, pm.SparseLinear)
    assert type(fast.out) is nn.Linear  # 0% zeros: below min_sparsity
    assert type(pruned.fc1) is nn.Linear and same_bits(pruned, before)
    x = torch.randn(5, 64)
    with torch.no_grad():
        assert torch.allclose(fast(x), pruned(x), atol=1e-6)
        assert torch.allclose(fast(x[:1]), pruned(x[:1]), atol=1e-6)
        assert fast(x.reshape(5, 1, 64)).shape == (5, 1, 10)


def test_it_saves_and_loads_like_the_dense_model(pruned: MLP, tmp_path) -> None:  # type: ignore[no-untyped-def]
    fast = pm.sparse(pruned, measure=False)
    assert fast.state_dict().keys() == pruned.state_dict().keys()
    assert all(torch.equal(fast.state_dict()[k], v) for k, v in pruned.state_dict().items())
    buffer = io.BytesIO()
    torch.save(fast.state_dict(), buffer)
    buffer.seek(0)
    dense = MLP()
    dense.load_state_dict(torch.load(buffer, weights_only=True))
    assert same_bits(dense, state(pruned))
    pm.save(fast, tmp_path / "fast.pt", compress=True)
    assert same_bits(pm.load(tmp_path / "fast.pt", MLP), state(pruned))
    again = copy.deepcopy(fast)
    again.load_state_dict(pruned.state_dict())
    x = torch.randn(3, 64)
    with torch.no_grad():
        assert torch.allclose(again(x), pruned(x), atol=1e-6)


def test_a_layer_stays_dense_when_sparse_would_be_slower(pruned: MLP, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    calls: list[int] = []

    def timer(fn) -> float:  # type: ignore[no-untyped-def]
        calls.append(1)
        return 1.0 if len(calls) % 2 else 2.0  # dense 1 s, sparse 2 s: never worth it

    monkeypatch.setattr(sparse_module, "_timer", timer)
    decisions: list[sparse_module.Layer] = []
    fast = pm.sparse(pruned, decisions=decisions)
    assert not any(isinstance(m, pm.SparseLinear) for m in fast.modules())
    assert [d.converted for d in decisions] == [False, False, False]
    assert decisions[0].why == "dense faster at batch 1 (CSR takes 2.00x its time)"
    assert decisions[2].why.startswith("0.0% zeros < min_sparsity=0.8")


def test_a_layer_converts_when_timing_says_sparse_is_faster(pruned: MLP, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    calls: list[int] = []

    def timer(fn) -> float:  # type: ignore[no-untyped-def]
        calls.append(1)
        return 2.0 if len(calls) % 2 else 1.0

    monkeypatch.setattr(sparse_module, "_timer", timer)
    decisions: list[sparse_module.Layer] = []
    pm.sparse(pruned, batch=32, decisions=decisions)
    assert decisions[0].converted and decisions[0].why == "CSR 2.00x faster at batch 32"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"min_sparsity": 1.5}, "min_sparsity=1.5 must be between 0 and 1"), ({"batch": 0}, "batch=0 must be")],
)
def test_bad_arguments_are_one_line(pruned: MLP, kwargs, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PruneError, match=message):
        pm.sparse(pruned, **kwargs)
