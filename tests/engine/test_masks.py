"""keep_masks: clipped weights stay zero through real optimizer steps."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import prune_magic as pm
from tests.conftest import same_bits, state


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: int = 5) -> None:
    torch.manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(16, 64), torch.randint(0, 10, (16,))
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3),
        lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-3),
        lambda p: torch.optim.AdamW(p, lr=1e-2),
    ],
)
def test_masked_weights_stay_zero_while_training(mlp, make_opt) -> None:
    pm.prune(mlp, "clip amount=0.8 scope=global")
    zeros = {n: (p == 0).clone() for n, p in mlp.named_parameters() if n.endswith("weight")}
    keys = list(mlp.state_dict())
    opt = make_opt(mlp.parameters())
    before = state(mlp)
    with pm.keep_masks(mlp, opt) as masks:
        train(mlp, opt)
        assert masks.nbytes == sum(z.numel() for z in zeros.values())
    for name, param in mlp.named_parameters():
        if name in zeros:
            assert (param[zeros[name]] == 0).all()
            assert (param[~zeros[name]] != before[name][~zeros[name]]).any()  # it did train
    assert list(mlp.state_dict()) == keys
    train(mlp, opt, 1)  # after the block, the optimizer is plain again
    assert any(int((p[zeros[n]] != 0).sum()) for n, p in mlp.named_parameters() if n in zeros)


def test_training_inside_keep_masks_is_one_undoable_step(mlp) -> None:
    pm.prune(mlp, "clip amount=0.5")
    pruned = state(mlp)
    opt = torch.optim.SGD(mlp.parameters(), lr=0.1)
    with pm.keep_masks(mlp, opt):
        train(mlp, opt)
    assert pm.history(mlp).entries[-1].step == "train (keep_masks)"
    pm.undo(mlp)
    assert same_bits(mlp, pruned)


def test_keep_masks_needs_clipped_weights_and_an_optimizer(mlp) -> None:
    opt = torch.optim.SGD(mlp.parameters(), lr=0.1)
    with pytest.raises(pm.HistoryError, match="no clipped weights"), pm.keep_masks(mlp, opt):
        pass
    with pytest.raises(TypeError, match="needs the optimizer"), pm.keep_masks(mlp):
        pass
