"""structured: channels removed for real, on every architecture in the matrix."""

from __future__ import annotations

import copy
import importlib
import io

import pytest
import torch
from torch import nn

import prune_magic as pm
from tests.conftest import same_bits, state
from tests.engine.architectures import ARCHITECTURES, DenseNet, ResNet, Transformer


def build(name: str) -> tuple[nn.Module, torch.Tensor]:
    factory, shape = ARCHITECTURES[name]
    torch.manual_seed(0)
    model = factory().eval()
    return model, torch.randn(shape)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_every_architecture_shrinks_runs_trains_undoes_and_round_trips(name: str) -> None:
    model, x = build(name)
    original, modules = state(model), dict(model.named_modules())
    out_shape, params = model(x).shape, n_params(model)
    result = pm.prune(model, "structured amount=0.5", example_input=x)
    assert result.steps[0].removals
    assert model(x).shape == out_shape
    assert n_params(model) < 0.85 * params
    nn.functional.cross_entropy(model(x), torch.zeros(len(x), dtype=torch.long)).backward()  # backward works
    assert all(p.grad is not None and p.grad.shape == p.shape for p in model.parameters())

    buffer = io.BytesIO()
    pm.save(model, buffer)
    buffer.seek(0)
    loaded = pm.load(buffer, ARCHITECTURES[name][0]).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)

    pm.undo(model)
    assert same_bits(model, original)
    assert dict(model.named_modules()) == modules  # the very same module objects
    assert n_params(model) == params


def test_an_mlp_loses_the_expected_parameters() -> None:
    model, x = build("mlp")
    pm.prune(model, "structured amount=0.5", example_input=x)
    assert (model.fc1.out_features, model.fc2.in_features, model.fc2.out_features) == (128, 128, 64)
    assert (model.out.in_features, model.out.out_features) == (64, 10)  # the output layer is protected
    assert n_params(model) == 64 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10


def test_the_report_says_the_parameter_ratio_in_words() -> None:
    model, x = build("cnn_bn")
    result = pm.prune(model, "structured amount=0.5", example_input=x, latency=True)
    text = str(result)
    assert "half the channels is about three quarters of the parameters" in text
    assert "MACs" in text and "latency" in text
    assert result.latency_before is not None and result.latency_after is not None
    assert result.after.macs < 0.5 * result.before.macs


def test_latency_is_timed_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    # timing takes a warm-up and three passes before and after: more than the pruning itself
    # on a small model, so a script that did not ask does not wait for it
    orchestrator = importlib.import_module("prune_magic.engine.prune")
    passes: list[object] = []
    from prune_magic.engine.report import Timing

    timed = Timing(0.001, 0.001, 0.001, 3)
    monkeypatch.setattr(orchestrator, "timing", lambda model, x, budget: passes.append(model) or timed)
    model, x = build("cnn_bn")
    result = pm.prune(model, "structured amount=0.5", example_input=x)
    assert passes == [] and result.latency_before is None and "latency" not in str(result)
    assert result.after.macs < 0.5 * result.before.macs  # the MACs are still counted
    pm.prune(model, "structured amount=0.5", example_input=x, latency=True)
    assert len(passes) == 2


def test_a_latency_within_the_noise_is_called_too_small_to_time() -> None:
    from dataclasses import replace

    from prune_magic.engine.report import Timing

    model, x = build("cnn_bn")
    result = pm.prune(model, "structured amount=0.5", example_input=x, latency=True)
    assert result.timings is not None and min(t.runs for t in result.timings) >= 3
    noisy = replace(
        result, latency_before=0.06398, latency_after=0.06359,
        timings=(Timing(0.06398, 0.0630, 0.0650, 12), Timing(0.06359, 0.0628, 0.0645, 12)),
    )  # fmt: skip
    line = noisy.latency_line()
    assert line is not None and "too small to time reliably" in line and "faster" not in line
    clear = replace(
        noisy, latency_after=0.02, timings=(noisy.timings[0], Timing(0.02, 0.019, 0.021, 30))
    )  # fmt: skip
    assert "3.20x faster; measured" in (clear.latency_line() or "") and "too small" not in str(clear)
    within = replace(
        clear, latency_after=0.0625, timings=(noisy.timings[0], Timing(0.0625, 0.0623, 0.0627, 12))
    )
    assert "too small to time reliably" in (within.latency_line() or "")  # apart, but by under 5%
    short = replace(
        clear, latency_before=4e-4, latency_after=2e-4,
        timings=(Timing(4e-4, 3.9e-4, 4.1e-4, 600), Timing(2e-4, 1.9e-4, 2.1e-4, 900)),
    )  # fmt: skip
    assert "2.00x faster; a pass under 1 ms is mostly overhead" in (short.latency_line() or "")


def test_transformer_prunes_mlp_hidden_units_and_keeps_heads() -> None:
    model, x = build("transformer")
    pm.prune(model, "structured amount=0.5", example_input=x)
    assert model.encoder.linear1.out_features == 32
    assert model.encoder.self_attn.embed_dim == 32 and model.encoder.self_attn.num_heads == 4
    assert model.embed.out_features == 32


def test_removing_channels_that_are_already_zero_changes_no_output() -> None:
    torch.manual_seed(0)
    model = DenseNet().eval()
    with torch.no_grad():  # dead channels: zero weights and biases, BN passing zero through
        for conv, dead in ((model.c1, slice(0, 4)), (model.c2, slice(2, 6)), (model.c3, slice(4, 8))):
            conv.weight[dead] = 0
            conv.bias[dead] = 0
        model.bn1.bias[:4] = 0
        model.bn1.running_mean[:4] = 0
    x = torch.randn(2, 1, 8, 8)
    before = model(x)
    pm.prune(model, "structured amount=0.5 importance=l1", example_input=x)
    assert model.c3.in_channels == 8 and model.fc.in_features == 12 * 4 * 4
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-6)


def test_layer_selection_round_to_and_global_scope() -> None:
    model, x = build("cnn_bn")
    pm.prune(model, "structured amount=0.3 round_to=8 layers=features.0", example_input=x)
    assert model.features[0].out_channels == 16 - 0  # 30% of 16 is 5; 11 rounds up to 16
    pm.undo(model)
    pm.prune(model, "structured amount=0.5 round_to=4 layers=features.3", example_input=x)
    assert model.features[0].out_channels == 16 and model.features[3].out_channels == 16
    pm.undo(model)
    result = pm.prune(model, "structured amount=0.5 scope=global", example_input=x)
    removed = sum(len(r.removed) for r in result.steps[0].removals)
    assert removed == 24  # half of 16 + 32 channels, spread by importance


def test_clip_and_structured_mix_in_one_recipe() -> None:
    model, x = build("mlp")
    original = state(model)
    pm.prune(
        model,
        "clip amount=0.5\nstructured amount=0.25 layers=fc1\nclip amount=0.8 layers=fc2",
        example_input=x,
    )
    assert model.fc1.out_features == 192
    assert float((model.fc2.weight == 0).float().mean()) == pytest.approx(0.8, abs=1e-3)
    pm.reset(model)
    assert same_bits(model, original)


def test_a_dry_run_previews_without_changing() -> None:
    model, x = build("resnet")
    before = state(model)
    result = pm.prune(model, "structured amount=0.5", example_input=x, dry_run=True)
    assert result.after.params < result.before.params
    assert same_bits(model, before)


def test_taylor_needs_data_and_uses_it() -> None:
    model, x = build("mlp")
    with pytest.raises(pm.PruneError, match="importance=taylor needs data"):
        pm.prune(model, "structured amount=0.5 importance=taylor", example_input=x)
    y = torch.tensor([1, 2])
    pm.prune(model, "structured amount=0.5 importance=taylor", example_input=x, data=(x, y))
    assert model.fc1.out_features == 128
    assert all(p.grad is None for p in model.parameters())  # the gradients it needed are gone


def test_structured_needs_an_example_input() -> None:
    model, _ = build("mlp")
    before = state(model)
    with pytest.raises(pm.PruneError, match="structured pruning needs an example input"):
        pm.prune(model, "structured amount=0.5")
    assert same_bits(model, before)


def test_a_layer_that_cannot_follow_is_named_and_the_model_restored() -> None:
    class WithGRU(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 16)
            self.rnn = nn.GRU(16, 16, batch_first=True)
            self.head = nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.rnn(self.fc(x))[0][:, -1])

    torch.manual_seed(0)
    model = WithGRU()
    before = state(model)
    x = torch.randn(2, 3, 8)
    with pytest.raises(
        pm.PruneError, match=r"cannot follow this model's graph \(it has no rule for rnn \(GRU\)\).*exclude="
    ):
        pm.prune(model, "structured amount=0.5", example_input=x)
    assert same_bits(model, before)
    assert model.fc.out_features == 16


def test_requires_grad_survives_removal() -> None:
    model, x = build("mlp")
    model.fc1.weight.requires_grad_(False)
    pm.prune(model, "structured amount=0.5", example_input=x)
    assert not model.fc1.weight.requires_grad and model.fc2.weight.requires_grad


def test_weights_only_load_refuses_other_files(tmp_path) -> None:
    model, _ = build("mlp")
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    with pytest.raises(pm.PruneError, match=r"not written by prune_magic\.save"):
        pm.load(tmp_path / "plain.pt", Transformer)


@pytest.mark.parametrize("importance", ["l1", "l2", "random", "bn", "lamp"])
def test_every_importance_ranks_channels(importance: str) -> None:
    model, x = build("cnn_bn")
    pm.prune(model, f"structured amount=0.5 importance={importance}", example_input=x)
    assert (model.features[0].out_channels, model.features[3].out_channels) == (8, 16)


def test_bn_importance_needs_batchnorm() -> None:
    model, x = build("mlp")
    with pytest.raises(pm.PruneError, match="importance=bn cannot score every selected layer"):
        pm.prune(model, "structured amount=0.5 importance=bn", example_input=x)


def test_a_pruned_model_deepcopies_and_pickles() -> None:
    import copy
    import pickle

    model, x = build("resnet")
    pm.prune(model, "structured amount=0.5", example_input=x)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(copy.deepcopy(model)(x), expected, rtol=0, atol=0)
        torch.testing.assert_close(pickle.loads(pickle.dumps(model))(x), expected, rtol=0, atol=0)


@pytest.mark.parametrize("importance", ["l2", "taylor"])
def test_a_model_in_training_mode_keeps_its_statistics_and_modes(importance: str) -> None:
    model, x = build("resnet")
    model.train()
    model.layer1.eval()  # a user's mixed modes come back as they were
    original = state(model)
    modes = {n: m.training for n, m in model.named_modules()}
    pm.prune(
        model,
        f"structured amount=0.5 importance={importance}",
        example_input=x,
        data=(x, torch.tensor([0, 1])),
    )
    assert {n: m.training for n, m in model.named_modules()} == modes
    pm.undo(model)  # BatchNorm running statistics never moved, so undo is bit-exact
    assert same_bits(model, original)
    assert {n: m.training for n, m in model.named_modules()} == modes


def test_layers_whose_channels_are_shuffled_are_kept_whole_and_named() -> None:
    model, x = build("channel_shuffle")
    result = pm.prune(model, "structured amount=0.5", example_input=x)
    kept = {r.layer for r in result.steps[0].removals if r.why_kept}
    assert kept == {"blocks.0.3", "blocks.1.3", "stem"}  # their outputs reach the shuffle
    assert model.blocks[0][0].out_channels == 6  # inside a branch, channels go
    assert "kept whole (channel shuffle): stem, blocks.0.3, blocks.1.3" in str(result)


def test_a_grouped_convolution_loses_the_same_positions_from_every_group() -> None:
    model, x = build("grouped_conv")
    result = pm.prune(model, "structured amount=0.5 layers=conv2", example_input=x)
    (removal,) = [r for r in result.steps[0].removals if r.layer == "conv2"]
    per_group = [sorted(i % 8 for i in removal.removed if i // 8 == g) for g in range(4)]
    assert per_group[0] and all(p == per_group[0] for p in per_group)
    assert model.conv2.out_channels == 16 and model.conv2.weight.shape[1] == 8


def test_a_bare_parameter_the_surgery_cuts_is_put_back() -> None:
    model, x = build("layer_scale")
    gamma = model.gamma
    pm.prune(model, "structured amount=0.5", example_input=x)
    assert model.gamma.shape == (8,)
    pm.undo(model)
    assert model.gamma is gamma and model.gamma.shape == (16,)


def test_undo_checks_every_tensor_is_back_before_saying_it_succeeded() -> None:
    model, x = build("cnn_bn")
    pm.prune(model, "structured amount=0.5", example_input=x)
    entry = pm.history(model).entries[-1]
    entry.records[:] = entry.records[1:]  # an undo record that misses a layer
    with pytest.raises(pm.HistoryError, match=r"the undo record missed \d+ tensors.*features\.0\.weight"):
        pm.undo(model)


@pytest.mark.parametrize("wrap", ["torch_prune", "weight_norm"])
def test_a_reparametrized_layer_is_refused_by_name_with_the_fix(wrap: str) -> None:
    model, x = build("mlp")
    if wrap == "torch_prune":
        torch.nn.utils.prune.l1_unstructured(model.fc1, "weight", 0.3)
        fix = r"torch\.nn\.utils\.prune\.remove\(layer, 'weight'\)"
    else:
        torch.nn.utils.parametrizations.weight_norm(model.fc1)
        fix = r"remove_parametrizations\(layer, 'weight'\)"
    before = state(model)
    with pytest.raises(pm.PruneError, match=rf"cannot remove channels of fc1: .*{fix}, or exclude= it$"):
        pm.prune(model, "structured amount=0.5", example_input=x)
    assert same_bits(model, before)
    pm.prune(model, "structured amount=0.5 exclude=fc1", example_input=x)  # the way out it names
    assert model.fc2.out_features == 64


@pytest.mark.parametrize("importance", ["l2", "taylor"])  # taylor runs calibration batches too
def test_a_structured_steps_report_counts_macs_on_its_own_passes_as_a_count_would(importance) -> None:
    from prune_magic.engine.report import count_macs

    torch.manual_seed(0)
    model, x = ResNet().eval(), torch.randn(2, 1, 8, 8)
    data = (torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,)))
    dense = count_macs(model, x)
    twin = copy.deepcopy(model)
    recipe = f"structured amount=0.5 importance={importance}"
    result = pm.prune(model, recipe, example_input=x, data=data)
    pm.prune(twin, recipe, example_input=x, data=data, report=False)
    pruned = count_macs(twin, x)
    assert result.before.macs == dense[0] and result.after.macs == pruned[0] < dense[0]
    for report, (_, per_layer) in ((result.before, dense), (result.after, pruned)):
        for row in report.rows:
            owner, _, attr = row.name.rpartition(".")
            assert row.macs == (per_layer.get(owner) if attr == "weight" else None), row.name
    assert not model._forward_hooks and not any(m._forward_pre_hooks for m in model.modules())
