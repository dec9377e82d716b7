"""``quantize codebook=K``: K shared values per layer, zeros kept, centroids trained, undo exact."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import prune_magic as pm
from prune_magic.engine.codebook import kmeans
from prune_magic.engine.errors import PruneError, RecipeError
from tests.conftest import MLP, same_bits, state


@pytest.fixture
def data() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    return torch.randn(256, 64), torch.randint(0, 10, (256,))


def distinct(t: torch.Tensor) -> int:
    return len(torch.unique(t[t != 0]))


def test_each_layer_holds_at_most_k_values_and_its_zeros_stay(mlp: MLP) -> None:
    pm.prune(mlp, "clip amount=0.8")
    zeros = {n: p == 0 for n, p in mlp.named_parameters() if n.endswith("weight")}
    result = pm.prune(mlp, "quantize codebook=16")
    for name, param in mlp.named_parameters():
        if name.endswith("weight"):
            assert 2 <= distinct(param) <= 16
            assert torch.equal(param == 0, zeros[name])  # no kept weight became zero, no zero came back
    quantized = result.steps[0].quantized
    assert quantized is not None and "codebook of 16 shared values (4-bit indices" in quantized.how
    assert "on disk:" in quantized.line() and "compressed (" in quantized.line()


def test_undo_gives_back_the_weights_bit_for_bit(mlp: MLP, data) -> None:  # type: ignore[no-untyped-def]
    pm.prune(mlp, "clip amount=0.7")
    before = state(mlp)
    pm.prune(mlp, "quantize codebook=8 finetune=1", train=data)
    assert not same_bits(mlp, before)
    pm.undo(mlp)
    assert same_bits(mlp, before)


def test_finetuning_moves_the_centroids_and_keeps_codes_and_zeros(mlp: MLP, data) -> None:  # type: ignore[no-untyped-def]
    pm.prune(mlp, "clip amount=0.7")
    pm.prune(mlp, "quantize codebook=8")
    shared = state(mlp)
    pm.undo(mlp)
    pm.prune(mlp, "quantize codebook=8 finetune=2 lr=0.01", train=data)
    for name, param in mlp.named_parameters():
        if not name.endswith("weight"):
            continue
        before = shared[name]
        assert torch.equal(param == 0, before == 0)
        assert distinct(param) <= 8 and not torch.equal(param, before)
        # same code, same new value: the members of a cluster still share one value
        for value in torch.unique(before[before != 0]):
            assert len(torch.unique(param[before == value])) == 1


def test_kmeans_starts_linear_and_converges_on_obvious_clusters() -> None:
    values = torch.cat([torch.full((50,), -1.0), torch.full((30,), 0.5), torch.full((20,), 2.0)])
    centroids, codes = kmeans(values + torch.linspace(-0.01, 0.01, 100), 3)
    assert torch.allclose(centroids, torch.tensor([-1.0, 0.5, 2.0]), atol=0.02)
    assert codes.bincount().tolist() == [50, 30, 20]


def test_codebook_finetune_needs_training_data_and_changes_nothing(mlp: MLP) -> None:
    before = state(mlp)
    with pytest.raises(PruneError, match="needs training data: pass train="):
        pm.prune(mlp, "quantize codebook=16 finetune=1")
    assert same_bits(mlp, before)


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        ("quantize codebook=1", "codebook=1 must be a whole number from 2 to 65536"),
        ("quantize bits=4 finetune=1", "finetune= only applies with codebook="),
        ("quantize codebook=16 bits=4", "takes only one of dtype=, bits=, codebook="),
        ("quantize codebook=16 lr=0.1", "lr= only applies with finetune="),
    ],
)
def test_bad_codebook_recipes_are_one_line(recipe: str, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        pm.parse_recipe(recipe)


def test_a_codebook_of_an_integer_tensor_is_refused_and_nothing_changes() -> None:
    class Counts(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.steps = nn.Parameter(torch.arange(4), requires_grad=False)

    model = Counts()
    before = state(model)
    with pytest.raises(PruneError, match=r"steps is torch\.int64"):
        pm.prune(model, "quantize codebook=4 layers=fc.weight,steps")
    assert same_bits(model, before)
