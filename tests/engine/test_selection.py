"""layers= and exclude=: what a pattern names, and what happens when it names nothing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import prune_magic as pm
from tests.conftest import same_bits, state


def names(model: nn.Module, layers=None, exclude=None) -> list[str]:
    return [t.name for t in pm.select(model, layers, exclude)]


def test_default_is_every_linear_and_conv_weight(cnn) -> None:
    assert names(cnn) == ["features.0.weight", "features.3.weight", "classifier.weight"]


def test_type_names_and_globs(cnn) -> None:
    assert names(cnn, ["Conv2d"]) == ["features.0.weight", "features.3.weight"]
    assert names(cnn, ["features.*"]) == ["features.0.weight", "features.3.weight"]
    assert names(cnn, ["features"]) == ["features.0.weight", "features.3.weight"]
    assert names(cnn, exclude=["classifier"]) == ["features.0.weight", "features.3.weight"]


def test_norm_layers_and_biases_only_when_named(cnn) -> None:
    assert names(cnn, ["features.1"]) == ["features.1.weight"]
    assert names(cnn, ["BatchNorm2d"]) == ["features.1.weight", "features.4.weight"]
    assert names(cnn, ["*.bias"], exclude=["features.1.bias", "features.4.bias"]) == [
        "features.0.bias",
        "features.3.bias",
        "classifier.bias",
    ]
    assert names(cnn, ["classifier.bias"]) == ["classifier.bias"]


def test_embeddings_only_when_named() -> None:
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2))
    assert names(model) == ["1.weight"]
    assert names(model, ["Embedding"]) == ["0.weight"]


def test_tied_weights_are_selected_once() -> None:
    embed = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = embed.weight
    model = nn.ModuleDict({"embed": embed, "head": head})
    assert names(model, ["embed", "head"]) == ["embed.weight"]
    result = pm.prune(model, "clip amount=0.5 layers=embed,head")
    assert result.after.params == 40  # counted once
    assert int((embed.weight == 0).sum()) == 20


def test_targets_come_in_named_parameters_order_under_the_same_names() -> None:
    """A tied weight under its first name; modules nested, reused and without parameters."""
    shared = nn.Linear(3, 3)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 1),
        nn.Sequential(nn.ReLU(), nn.Linear(4, 5), shared),
        nn.BatchNorm1d(5),
        shared,
        nn.Embedding(6, 3),
    )
    model.add_module("head", nn.Linear(3, 6, bias=False))
    model.head.weight = model[4].weight  # tied: named once, as 4.weight
    every = [t.name for t in pm.select(model, ["*.weight", "*.bias"])]
    assert every == [n for n, _ in model.named_parameters()]
    assert names(model) == ["0.weight", "1.1.weight", "1.2.weight"]


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        (
            "clip amount=0.5 layers=fc3",
            "line 1: layers=fc3 matches no layer; did you mean 'fc2' or 'fc1'? (layers with weights: fc1, fc2, out)",
        ),
        ("clip amount=0.5 layers=linear", "line 1: layers=linear matches no layer; did you mean 'Linear'?"),
        ("clip amount=0.5 exclude=outt", "line 1: exclude=outt matches no layer; did you mean 'out'"),
        (
            "clip amount=0.5 layers=fc1 exclude=fc1",
            "line 1: the selection is empty: no weights left after layers=/exclude=",
        ),
        ("clip amount=0.5 layers=conv*", "line 1: layers=conv* matches no layer"),
    ],
)
def test_selection_errors_suggest_names_and_leave_the_model(mlp, recipe: str, message: str) -> None:
    before = state(mlp)
    with pytest.raises(pm.SelectionError) as info:
        pm.prune(mlp, recipe)
    assert str(info.value).startswith(message)
    assert same_bits(mlp, before)


def test_a_module_without_weights_is_named_as_such() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    with pytest.raises(pm.SelectionError, match="layers=ReLU names a module with no weights to prune"):
        pm.select(model, ["ReLU"])


def test_a_model_without_linear_or_conv_needs_layers() -> None:
    with pytest.raises(pm.SelectionError, match="no Linear or Conv layers; name the layers"):
        pm.select(nn.Sequential(nn.LayerNorm(4)))


def test_integer_parameters_are_refused() -> None:
    model = nn.Linear(2, 2)
    model.weight = nn.Parameter(torch.ones(2, 2, dtype=torch.int64), requires_grad=False)
    with pytest.raises(
        pm.SelectionError, match=r"0?weight is torch.int64; only float weights can be clipped"
    ):
        pm.select(model)
