"""clip: by magnitude, exact counts, the same choices as torch.nn.utils.prune."""

from __future__ import annotations

import pytest
import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

import prune_magic as pm
from prune_magic.engine import magnitude
from tests.conftest import MLP


def weights(model: nn.Module) -> list[torch.Tensor]:
    return [t.param.detach() for t in pm.select(model)]


def test_threshold_keeps_every_weight_with_magnitude_at_least_t(mlp) -> None:
    before = [w.clone() for w in weights(mlp)]
    pm.prune(mlp, "clip threshold=0.05")
    for old, new in zip(before, weights(mlp)):
        keep = old.abs() >= 0.05
        assert torch.equal(new[keep], old[keep])
        assert (new[~keep] == 0).all()
        assert (old[keep] < 0).any()  # large negative weights are kept: |w|, not w


def test_threshold_is_exact_at_the_boundary() -> None:
    layer = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.25, -0.25, 0.2499999, -3.0]]))
    pm.prune(layer, "clip threshold=0.25")
    assert layer.weight.tolist() == [[0.25, -0.25, 0.0, -3.0]]


def test_the_seeds_mistake_would_zero_negative_weights(mlp) -> None:
    """The source text compares w < t; that zeroes about half the weights at any small t."""
    pm.prune(mlp, "clip threshold=0.001")
    negative = sum(int((w < 0).sum()) for w in weights(mlp))
    assert negative > 0.45 * sum(w.numel() for w in weights(mlp))


@pytest.mark.parametrize("amount", [0.0, 0.1, 0.5, 0.77, 0.999])
def test_layer_amount_zeroes_the_exact_count_in_every_layer(mlp, amount: float) -> None:
    pm.prune(mlp, f"clip amount={amount}")
    for w in weights(mlp):
        assert int((w == 0).sum()) == round(amount * w.numel())


def test_layer_amount_matches_torch_l1_unstructured(mlp) -> None:
    theirs = MLP()
    theirs.load_state_dict(mlp.state_dict())
    pm.prune(mlp, "clip amount=0.6")
    for name in ("fc1", "fc2", "out"):
        torch_prune.l1_unstructured(getattr(theirs, name), "weight", amount=0.6)
        torch_prune.remove(getattr(theirs, name), "weight")
        assert torch.equal(getattr(mlp, name).weight, getattr(theirs, name).weight)


@pytest.mark.parametrize("amount", [0.3, 0.9])
def test_global_amount_zeroes_the_same_weights_as_torch_global_unstructured(mlp, amount: float) -> None:
    theirs = MLP()
    theirs.load_state_dict(mlp.state_dict())
    pm.prune(mlp, f"clip amount={amount} scope=global")
    pairs = [(theirs.fc1, "weight"), (theirs.fc2, "weight"), (theirs.out, "weight")]
    torch_prune.global_unstructured(pairs, pruning_method=torch_prune.L1Unstructured, amount=amount)
    for module, _ in pairs:
        torch_prune.remove(module, "weight")
    for name in ("fc1", "fc2", "out"):
        assert torch.equal(getattr(mlp, name).weight, getattr(theirs, name).weight)
    total = sum(w.numel() for w in weights(mlp))
    assert sum(int((w == 0).sum()) for w in weights(mlp)) == round(amount * total)


def test_global_scope_spreads_sparsity_unevenly(mlp) -> None:
    with torch.no_grad():
        mlp.fc2.weight.mul_(0.1)  # a layer of small weights takes most of the cut
    result = pm.prune(mlp, "clip amount=0.5 scope=global")
    fc1, fc2 = (result.after.row(f"{n}.weight").sparsity for n in ("fc1", "fc2"))
    assert fc2 > 0.7 and fc1 < 0.1
    assert result.steps[0].sparsity == pytest.approx(0.5, abs=1e-4)


def test_sigma_threshold_is_sigma_times_the_layer_std(mlp) -> None:
    before = [w.clone() for w in weights(mlp)]
    pm.prune(mlp, "clip sigma=0.7")
    for old, new in zip(before, weights(mlp)):
        keep = old.abs() >= 0.7 * old.std()
        assert torch.equal(new[keep], old[keep]) and (new[~keep] == 0).all()


def test_ties_at_the_cut_are_broken_by_position() -> None:
    layer = nn.Linear(10, 1, bias=False)
    with torch.no_grad():
        layer.weight.fill_(0.5)
    pm.prune(layer, "clip amount=0.3")
    assert layer.weight.tolist() == [[0.0] * 3 + [0.5] * 7]
    model = nn.Sequential(nn.Linear(4, 1, bias=False), nn.Linear(4, 1, bias=False))
    with torch.no_grad():
        model[0].weight.fill_(-1.0)
        model[1].weight.fill_(1.0)
    pm.prune(model, "clip amount=0.75 scope=global")
    assert model[0].weight.tolist() == [[0.0] * 4] and model[1].weight.tolist() == [[0.0, 0.0, 1.0, 1.0]]


def test_an_amount_below_the_current_sparsity_changes_nothing(mlp) -> None:
    pm.prune(mlp, "clip amount=0.9")
    result = pm.prune(mlp, "clip amount=0.5")
    assert result.steps[0].changed == 0
    assert result.steps[0].sparsity == pytest.approx(0.9, abs=1e-3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("scope", ["layer", "global"])
def test_half_bfloat16_and_double_weights(mlp, dtype: torch.dtype, scope: str) -> None:
    mlp.to(dtype)
    before = [w.clone() for w in weights(mlp)]
    pm.prune(mlp, f"clip amount=0.7 scope={scope}")
    now = weights(mlp)
    if scope == "layer":
        assert all(int((w == 0).sum()) == round(0.7 * w.numel()) for w in now)
    zero = torch.cat([w.flatten() == 0 for w in now])
    old = torch.cat([w.flatten().abs().float() for w in before])
    assert old[zero].max() <= old[~zero].min() or scope == "layer"
    pm.undo(mlp)
    assert all(torch.equal(a, b) for a, b in zip(before, weights(mlp)))


def test_without_an_undo_record_the_result_is_the_same(mlp) -> None:
    twin = MLP()
    twin.load_state_dict(mlp.state_dict())
    pm.prune(mlp, "clip amount=0.8 scope=global")
    result = pm.prune(twin, "clip amount=0.8 scope=global", undo=False)
    assert result.steps[0].changed is None
    assert all(torch.equal(a, b) for a, b in zip(mlp.state_dict().values(), twin.state_dict().values()))
    with pytest.raises(pm.HistoryError, match="nothing to undo"):
        pm.undo(twin)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_weights(mlp) -> None:
    mlp.cuda()
    before = [w.clone() for w in weights(mlp)]
    pm.prune(mlp, "clip amount=0.8 scope=global\nclip threshold=0.01")
    assert all(w.is_cuda for w in weights(mlp))
    total = sum(w.numel() for w in weights(mlp))
    assert sum(int((w == 0).sum()) for w in weights(mlp)) >= round(0.8 * total)
    pm.reset(mlp)
    assert all(torch.equal(a, b) for a, b in zip(before, weights(mlp)))


def test_a_layer_clipped_to_nothing_is_called_out() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10)
    )  # the last layer's |w| are smaller
    result = pm.prune(model, "clip amount=0.8 scope=global")
    assert result.after.row("2.weight").sparsity == 1
    assert (
        "warning: 2.weight now entirely zero (the layer passes on only its bias); exclude it or use scope=layer"
        in str(result)
    )


def test_the_numpy_and_torch_record_kernels_agree_bit_for_bit(monkeypatch) -> None:
    """Many chunks; ties at the cut, +0.0 (no change) and -0.0 (a change) in the weights."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(500, 300, bias=False), nn.Linear(300, 301, bias=False))
    with torch.no_grad():
        model[0].weight[:3].fill_(model[0].weight[4, 4].item())
        model[1].weight[:, :2] = 0.0
        model[1].weight[0, 2:9] = -0.0
    before = bits(model)
    after = []
    for use_numpy in (True, False):  # the CPU's kernels, then the device's (torch ops)
        monkeypatch.setattr(magnitude, "use_numpy", use_numpy)
        result = pm.prune(model, "clip amount=0.9 scope=global\nclip threshold=0.05")
        after.append((bits(model), [s.changed for s in result.steps]))
        pm.reset(model)
        assert bits(model) == before
    assert after[0] == after[1]


def bits(model: nn.Module) -> list[list[int]]:
    return [w.detach().view(torch.int32).view(-1).tolist() for w in model.state_dict().values()]
