"""Odd models: other layouts, reparametrized and tied weights, RNNs, and models that cannot be pruned."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations
from torch.nn.utils import prune as torch_prune

import prune_magic as pm
from prune_magic.engine import magnitude
from tests.hostile.conftest import Snapshot, refused


@pytest.fixture(params=["numpy", "torch"])
def kernels(request, monkeypatch):
    """Clip with the CPU's kernels (numpy) and with the device's (torch ops, here on the CPU)."""
    monkeypatch.setattr(magnitude, "use_numpy", request.param == "numpy")


def zeros(t: torch.Tensor) -> int:
    return int((t == 0).sum())


# -- layouts: supported, element-wise, layout kept, undo bit for bit ---------------------------


@pytest.mark.parametrize("recipe", ["clip amount=0.5", "clip threshold=0.05", "clip amount=0.4 scope=global"])
def test_channels_last_convs_are_clipped_in_their_layout_and_undone_bit_for_bit(kernels, recipe):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)).to(
        memory_format=torch.channels_last
    )
    x = torch.randn(2, 3, 8, 8).to(memory_format=torch.channels_last)
    strides = [m.weight.stride() for m in (model[0], model[2])]
    assert not model[0].weight.is_contiguous()
    before = Snapshot.of(model)
    result = pm.prune(model, recipe, example_input=x)
    assert [m.weight.stride() for m in (model[0], model[2])] == strides
    if "amount=0.5" in recipe:
        assert [zeros(m.weight) for m in (model[0], model[2])] == [108, 144]
        # the smallest magnitudes went, wherever they sit in memory
        w = model[0].weight
        original = before.tensors["param:0.weight"][-1].view(torch.float32).view(w.shape)  # logical order
        assert float(original[w == 0].abs().max()) <= float(original[w != 0].abs().min())
    assert result.steps[0].sparsity > 0
    pm.undo(model)
    before.assert_same(model)


def test_a_transposed_weight_view_is_clipped_in_place_and_undone(kernels):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 3))
    model[0].weight = nn.Parameter(torch.randn(6, 10).t())  # a (10, 6) view of a (6, 10) tensor
    before = Snapshot.of(model)
    pm.prune(model, "clip amount=0.5")
    assert model[0].weight.stride() == (1, 10) and zeros(model[0].weight) == 30
    pm.reset(model)
    before.assert_same(model)


def test_a_weight_that_is_a_slice_is_refused_by_name():
    model = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 2))
    model[1].weight = nn.Parameter(torch.randn(2, 12)[:, ::2])
    refused(
        model, lambda: pm.prune(model, "clip amount=0.5"), "1.weight", "does not cover its memory densely"
    )


# -- reparametrized weights ----------------------------------------------------------------------


def test_a_layer_under_torch_prune_is_clipped_through_weight_orig_with_its_mask_in_agreement():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    torch_prune.l1_unstructured(model[0], "weight", amount=0.25)  # 32 of 128 masked by torch
    before = Snapshot.of(model)
    result = pm.prune(model, "clip amount=0.5")
    layer = model[0]
    assert "0.weight_orig" in result.steps[0].targets
    # the masked weights count as the zeros they are: exactly half of the layer is zero
    assert zeros(layer.weight) == 64 and zeros(layer.weight_orig) == 64
    assert torch.equal(layer.weight_mask == 0, layer.weight_orig == 0)  # mask and weight agree
    assert torch.equal(layer.weight, layer.weight_orig * layer.weight_mask)  # refreshed at once
    pm.undo(model)
    before.assert_same(model)
    assert torch.equal(layer.weight, layer.weight_orig * layer.weight_mask)


def test_weight_norm_is_clipped_through_its_direction_and_spectral_norm_through_original():
    torch.manual_seed(0)
    model = nn.Sequential(
        parametrizations.weight_norm(nn.Linear(8, 16)),
        nn.ReLU(),
        parametrizations.spectral_norm(nn.Linear(16, 4)),
    )
    before = Snapshot.of(model)
    result = pm.prune(model, "clip amount=0.5")
    assert result.steps[0].targets == (
        "0.parametrizations.weight.original1",
        "2.parametrizations.weight.original",
    )
    assert zeros(model[0].weight) == 64  # zeros in the direction are zeros in the weight
    model.eval()
    assert zeros(model[2].weight) == 32
    model.train()
    pm.undo(model)
    before.assert_same(model)


def test_an_orthogonal_layer_is_skipped_and_named_with_why():
    torch.manual_seed(0)
    model = nn.Sequential(parametrizations.orthogonal(nn.Linear(6, 6)), nn.ReLU(), nn.Linear(6, 2))
    result = pm.prune(model, "clip amount=0.5")
    assert result.steps[0].targets == ("2.weight",)
    assert any(
        "skipped 0 (its weight is computed by its Orthogonal parametrization" in n for n in result.notes
    )
    assert "note: skipped 0" in str(result)
    only = nn.Sequential(parametrizations.orthogonal(nn.Linear(6, 6)))
    message = refused(
        only, lambda: pm.prune(only, "clip amount=0.5"), "nothing to clip by default", "0 (its weight"
    )
    assert "no Linear or Conv" not in message
    refused(only, lambda: pm.prune(only, "clip amount=0.5 layers=0"), "layers=0: cannot clip 0", "Orthogonal")


# -- tied weights ------------------------------------------------------------------------------


class Tied(nn.Module):
    def __init__(self, head_first: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        if head_first:
            self.head = nn.Linear(4, 10, bias=False)
            self.embed = nn.Embedding(10, 4)
            self.embed.weight = self.head.weight
        else:
            self.embed = nn.Embedding(10, 4)
            self.head = nn.Linear(4, 10, bias=False)
            self.head.weight = self.embed.weight
        self.mid = nn.Linear(4, 4)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.mid(self.embed(tokens)))


@pytest.mark.parametrize("head_first", [True, False])
def test_tied_weights_follow_one_rule_whatever_order_init_assigned_them(head_first):
    model = Tied(head_first)
    shared = model.head.weight
    before = shared.detach().clone()
    result = pm.prune(model, "clip amount=0.5")
    assert result.steps[0].targets == ("mid.weight",)
    assert torch.equal(shared, before)
    assert any("tied weights): not clipped by default" in n for n in result.notes)
    result = pm.prune(model, "clip amount=0.5 layers=head")
    assert zeros(model.embed.weight) == 20 and model.embed.weight is model.head.weight
    assert any("clipping it changes all of them" in n for n in result.notes)
    pm.prune(model, "clip amount=0.5 layers=Linear exclude=embed")  # excluding either excludes it
    assert zeros(model.embed.weight) == 20


# -- RNNs and parameters on the model itself -------------------------------------------------------


@pytest.mark.parametrize("kind", [nn.LSTM, nn.GRU, nn.RNN])
def test_rnn_weights_are_clip_targets_when_named_by_type_not_by_default(kind):
    torch.manual_seed(0)
    model = nn.Sequential(kind(4, 8, num_layers=2, bidirectional=True))
    with pytest.raises(pm.SelectionError, match="no Linear or Conv"):
        pm.prune(model, "clip amount=0.5")
    result = pm.prune(model, f"clip amount=0.5 layers={kind.__name__}")
    assert len(result.steps[0].targets) == 8  # weight_ih and weight_hh, 2 layers, both directions
    assert all(".weight_" in name for name in result.steps[0].targets)
    assert all(zeros(p) == p.numel() // 2 for n, p in model.named_parameters() if ".weight_" in n)
    assert all(zeros(p) == 0 for n, p in model.named_parameters() if ".bias_" in n)


def test_a_parameter_on_the_model_itself_is_named_plainly():
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.linspace(-1, 1, 10))
            self.fc = nn.Linear(10, 2)

    model = Scaled()
    result = pm.prune(model, "clip amount=0.5 layers=scale")
    assert result.steps[0].targets == ("scale",) and zeros(model.scale) == 5


# -- models that can't be pruned in place: refused, saying what they are and what to do ----------------


def test_a_meta_device_model_is_refused():
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(4, 4))
    refused(model, lambda: pm.prune(model, "clip amount=0.5"), "meta device", "0.weight", "load_state_dict")


def test_a_compiled_model_points_at_orig_mod():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # (torch's own, on importing dynamo)
        compiled = torch.compile(model)
    for recipe in ("clip amount=0.5", "structured amount=0.5"):
        refused(
            compiled,
            lambda r=recipe: pm.prune(compiled, r, example_input=torch.randn(1, 4)),
            "torch.compile",
            "model._orig_mod",
        )
    pm.prune(compiled._orig_mod, "clip amount=0.5")  # what it says works
    assert zeros(model[0].weight) == 8


def test_a_scripted_model_is_refused():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch deprecates TorchScript
        model = torch.jit.script(nn.Sequential(nn.Linear(4, 4)))
    refused(model, lambda: pm.prune(model, "clip amount=0.5"), "TorchScript", "before scripting")


def test_a_torch_ao_quantized_model_names_its_quantized_layers():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    message = refused(
        quantized,
        lambda: pm.prune(quantized, "clip amount=0.5"),
        "0 (a torch.ao quantized layer",
        "before quantizing",
    )
    assert "no Linear or Conv" not in message


@pytest.mark.parametrize("backend", ["torchao", "torch"])
def test_clipping_after_quantize_int8_is_refused_with_the_fix(backend):
    pytest.importorskip("torchao") if backend == "torchao" else None
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
    pm.prune(model, f"quantize int8 backend={backend}")
    message = refused(model, lambda: pm.prune(model, "clip amount=0.5"), "before quantiz")
    assert "NotImplementedError" not in message


def test_a_lazy_layer_says_to_run_the_model_first():
    model = nn.Sequential(nn.LazyLinear(4), nn.ReLU(), nn.Linear(4, 2))
    refused(model, lambda: pm.prune(model, "clip amount=0.5 layers=2"), "0.weight is not initialized yet")
    model(torch.randn(1, 3))
    assert pm.prune(model, "clip amount=0.5").steps[0].targets == ("0.weight", "2.weight")


def test_quantize_int8_says_larger_when_the_checkpoint_grew():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    line = str(pm.prune(model, "quantize int8 backend=torch"))
    assert "x larger" in line and "smaller" not in line.split("larger")[0].rsplit("(", 1)[-1]


# -- example inputs --------------------------------------------------------------------------------


@pytest.mark.parametrize("recipe", ["clip amount=0.5", "structured amount=0.5"])
@pytest.mark.parametrize("report", [True, False])
def test_a_wrong_shape_example_input_names_the_first_layer_that_rejects_it(recipe, report):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    message = refused(
        model,
        lambda: pm.prune(model, recipe, example_input=torch.randn(1, 3), report=report),
        "example input (shape (1, 3)) does not fit the model",
        "0 (Linear) rejects it",
    )
    assert "graph" not in message


def test_a_wrong_shape_input_inside_a_nested_block_names_the_innermost_layer():
    model = nn.Sequential(nn.Linear(8, 8), nn.Sequential(nn.ReLU(), nn.Linear(5, 2)))
    refused(
        model,
        lambda: pm.prune(model, "clip amount=0.5", example_input=torch.randn(1, 8)),
        "1.1 (Linear) rejects it",
    )


def test_a_clip_that_would_make_weight_norm_divide_zero_by_zero_is_refused_and_rolled_back():
    torch.manual_seed(0)
    model = nn.Sequential(parametrizations.weight_norm(nn.Linear(8, 16)), nn.ReLU(), nn.Linear(16, 4))
    with torch.no_grad():
        model[0].parametrizations.weight.original1[3] = 1e-6  # one row of tiny directions
    refused(
        model,
        lambda: pm.prune(model, "clip threshold=0.001"),
        "0.parametrizations.weight.original1",
        "zeroed 1 whole slice(s)",
        "NaN",
    )
    pm.prune(model, "clip threshold=0.001 exclude=0")  # the rest of the model still clips
