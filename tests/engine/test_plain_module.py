"""After clipping, the model is a plain nn.Module: same keys, copies, saves, no hooks."""

from __future__ import annotations

import copy
import io
import pickle

import torch

import prune_magic as pm
from tests.conftest import MLP, same_bits, state


def test_state_dict_keys_and_shapes_are_unchanged(mlp) -> None:
    keys = {k: v.shape for k, v in mlp.state_dict().items()}
    pm.prune(mlp, "clip amount=0.8 scope=global")
    assert {k: v.shape for k, v in mlp.state_dict().items()} == keys


def test_no_hooks_and_forward_is_a_plain_forward(mlp) -> None:
    pm.prune(mlp, "clip amount=0.8")
    for module in mlp.modules():
        assert not module._forward_pre_hooks and not module._forward_hooks
    x = torch.randn(3, 64)
    expected = torch.relu(torch.relu(x @ mlp.fc1.weight.T + mlp.fc1.bias) @ mlp.fc2.weight.T + mlp.fc2.bias)
    torch.testing.assert_close(mlp(x), expected @ mlp.out.weight.T + mlp.out.bias)


def test_deepcopy_pickle_and_weights_only_load(mlp, tmp_path) -> None:
    pm.prune(mlp, "clip amount=0.7 scope=global")
    saved = state(mlp)
    assert same_bits(copy.deepcopy(mlp), saved)
    assert same_bits(pickle.loads(pickle.dumps(mlp)), saved)
    path = tmp_path / "pruned.pt"
    torch.save(mlp.state_dict(), path)
    fresh = MLP()
    fresh.load_state_dict(torch.load(path, weights_only=True))
    assert same_bits(fresh, saved)
    buffer = io.BytesIO()
    torch.save(mlp, buffer)
    buffer.seek(0)
    assert same_bits(torch.load(buffer, weights_only=False), saved)


def test_a_copy_starts_with_no_history(mlp) -> None:
    pm.prune(mlp, "clip amount=0.5")
    twin = copy.deepcopy(mlp)
    assert len(pm.history(twin)) == 0 and len(pm.history(mlp)) == 1
