"""SparseGPT (by=sparsegpt), N:M sparsity (nm=) and how the three ways of choosing weights compare
on a small trained language model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import prune_magic as pm
from prune_magic.engine.errors import PruneError, RecipeError
from prune_magic.engine.recipe import parse_step
from prune_magic.engine.sparsegpt import prune_weights
from tests.engine.language_models import trained_gpt2


def test_the_obs_update_brings_the_layer_error_near_the_best_for_its_mask() -> None:
    torch.manual_seed(0)
    x = torch.randn(512, 32) @ torch.randn(32, 32)  # correlated inputs: where the update pays
    weight = torch.randn(16, 32)
    pruned = prune_weights(weight, x.T @ x, 0.5, blocksize=8)
    mask = pruned == 0
    assert int(mask.sum()) == 16 * 32 // 2
    best = torch.zeros_like(weight)  # least squares over the kept weights of each row: the floor
    for row in range(16):
        keep = ~mask[row]
        best[row, keep] = torch.linalg.lstsq(x[:, keep], (x @ weight[row])[:, None]).solution[:, 0]

    def error(w: torch.Tensor) -> float:
        return float((x @ (w - weight).T).norm())

    zeroed = weight.masked_fill(mask, 0)  # the same mask, without the update
    assert error(best) <= error(pruned) < min(1.25 * error(best), 0.75 * error(zeroed))


def test_n_m_in_sparsegpt_is_exact_per_group_and_blocksize_must_hold_whole_groups() -> None:
    x = torch.randn(256, 16)
    pruned = prune_weights(torch.randn(8, 16), x.T @ x, 0.5, ratio=(2, 4), blocksize=8)
    assert bool(((pruned.reshape(8, 4, 4) == 0).sum(-1) == 2).all())
    model = nn.Sequential(nn.Linear(16, 8))
    with pytest.raises(PruneError, match="blocksize=6 must be a multiple of M"):
        pm.prune(model, "clip nm=2:4 by=sparsegpt blocksize=6", data=(x, torch.zeros(256)))


def test_n_m_names_the_layer_whose_inputs_do_not_split_into_groups() -> None:
    model = nn.Sequential(nn.Linear(6, 8), nn.Linear(8, 2))
    saved = model[0].weight.detach().clone()
    with pytest.raises(PruneError, match=r"0.weight has 6; exclude it \(exclude=0\)"):
        pm.prune(model, "clip nm=2:4")
    assert torch.equal(model[0].weight, saved)


def test_the_recipe_reads_n_m_and_guides_the_papers_spelling_to_it() -> None:
    assert parse_step("clip nm=2:4 by=sparsegpt").ratio("nm") == (2, 4)
    with pytest.raises(RecipeError, match="write N:M sparsity as nm=2:4"):
        parse_step("clip n:m=2:4")
    with pytest.raises(RecipeError, match="must be N:M with 0 < N < M"):
        parse_step("clip nm=4:4")
    with pytest.raises(RecipeError, match="blocksize= only applies with by=sparsegpt"):
        parse_step("clip amount=0.5 by=wanda blocksize=64")
    with pytest.raises(RecipeError, match="did you mean 'sparsegpt'"):
        parse_step("clip amount=0.5 by=sparsgpt")


def test_a_hessian_that_is_not_positive_definite_asks_for_more_dampening() -> None:
    model = nn.Sequential(nn.Linear(4, 4))
    saved = model[0].weight.detach().clone()
    x = torch.full((8, 4), float("nan"))
    with pytest.raises(PruneError, match="raise dampening="):
        pm.prune(model, "clip amount=0.5 by=sparsegpt", data=(x, torch.zeros(8)))
    assert torch.equal(model[0].weight, saved)


def _layer_inputs_and_outputs(
    model: nn.Module, held: torch.Tensor
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Each pruned layer's inputs on held-out data (from the unpruned model) and its outputs there."""
    names = [t.name.rpartition(".")[0] for t in pm.select(model)]
    inputs: dict[str, torch.Tensor] = {}
    hooks = [
        model.get_submodule(n).register_forward_pre_hook(
            lambda m, a, n=n: inputs.__setitem__(n, a[0].detach().reshape(-1, a[0].shape[-1]))
        )
        for n in names
    ]
    with torch.no_grad():
        model(held)
        for hook in hooks:
            hook.remove()
        return inputs, {n: model.get_submodule(n)(inputs[n]) for n in names}


def test_sparsegpt_errs_least_on_held_out_data_and_wanda_beats_magnitude_at_2_4() -> None:
    model, calibration, held = trained_gpt2(steps=200)
    inputs, dense = _layer_inputs_and_outputs(model, held)

    @torch.no_grad()
    def error(recipe: str) -> float:
        """Relative output error of the pruned layers on held-out rows: sum |ΔW x|² / sum |W x|²."""
        pm.prune(model, recipe, data=calibration)
        diff = sum(float((model.get_submodule(n)(x) - dense[n]).pow(2).sum()) for n, x in inputs.items())
        pm.undo(model)
        return diff / sum(float(d.pow(2).sum()) for d in dense.values())

    for pattern in ("amount=0.5", "nm=2:4"):
        magnitude, wanda, sparsegpt = (
            error(f"clip {pattern} by={by}") for by in ("magnitude", "wanda", "sparsegpt")
        )
        assert sparsegpt < 0.5 * wanda and sparsegpt < 0.5 * magnitude, (pattern, magnitude, wanda, sparsegpt)
        if pattern == "nm=2:4":  # the same groups for both: Wanda's input norms pay
            assert wanda < magnitude, (magnitude, wanda)
