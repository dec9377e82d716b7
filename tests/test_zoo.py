"""Structured pruning on the architectures users bring: one or two of each family of the zoo
(``benchmarks/zoo.py`` runs all 99), each through everything a user meets: a dry run, a rollback
after a failing eval function, the step itself, forward, output shapes, backward, ``pm.save`` /
``pm.load``, undo, the same recipe again, reset; every parameter and buffer compared bit for bit."""

from __future__ import annotations

import warnings

import pytest

from tests import zoo

try:  # test dependencies; torchvision first (timm imports it), with its compiled ops declared
    zoo.torchvision()
except ImportError:
    pytest.skip("the zoo needs torchvision, timm and transformers", allow_module_level=True)
pytest.importorskip("timm")
pytest.importorskip("transformers")

SAMPLE = {
    # torchvision: a residual net, grouped convolutions, a layer scale, concatenations,
    # a channel shuffle, squeeze-excitation, attention written with nn.MultiheadAttention
    "resnet18": "ok",
    "resnext50_32x4d": "ok",
    "regnet_y_400mf": "ok",
    "convnext_tiny": "ok",
    "googlenet": "ok",
    "shufflenet_v2_x0_5": "ok",
    "mobilenet_v3_small": "ok",
    "lraspp_mobilenet_v3_large": "ok",
    # timm: hand-written attention (a qkv Linear reshaped by head), windows, grouped convs
    "timm/vit_tiny_patch16_224": "ok",
    "timm/swin_tiny_patch4_window7_224": "ok",
    "timm/regnety_002": "ok",
    "timm/mixer_s16_224": "ok",  # Torch-Pruning mis-maps its token-mixing groups: those are kept whole
    "timm/levit_128s": "refused",  # its attention reshapes channels Torch-Pruning cannot follow
    # Hugging Face, from small configs, losing attention heads too (heads=0.5)
    "hf/bert": "ok",
    "hf/vit": "ok",
    "hf/llama": "ok",  # grouped-query attention: key-value heads go with their query heads
    "hf/t5": "ok",  # its MLPs; its attention keeps its heads (the result says so)
    "hf/gpt2": "ok",  # transformers' Conv1D projections, heads removed from its fused c_attn
}


@pytest.mark.slow
@pytest.mark.parametrize("name", SAMPLE)
def test_structured_on_a_zoo_model(name: str) -> None:
    with warnings.catch_warnings():  # the libraries' own deprecation notes are not ours
        warnings.simplefilter("ignore")
        outcome = zoo.check(zoo.catalogue()[name])
    assert (outcome.status, outcome.why if outcome.status != SAMPLE[name] else "") == (SAMPLE[name], "")
    if outcome.status == "ok":
        before, after = outcome.params
        assert after < 0.9 * before


@pytest.mark.slow
@pytest.mark.parametrize("version", [1, 2])
def test_torchvision_swin_prunes_its_mlps_and_keeps_the_attention_width(version: int) -> None:
    # Torch-Pruning's search through the shifted windows never ends on the residual stream;
    # it reaches the attention's relative position bias table, so it is kept whole unsearched
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outcome = zoo.check(zoo.small_swin(version))
    assert (outcome.status, outcome.why) == ("ok", "")
    before, after = outcome.params
    assert after < 0.8 * before


@pytest.mark.slow
def test_swin_s_patch_merging_concatenations_are_sized_from_the_trace() -> None:
    # deep in Swin-S, Torch-Pruning's shape inference cannot size the strided slices its patch
    # merging concatenates, and its index mapping added None to an int: a refusal of the model
    from prune_magic.engine.dependencies import trace
    from prune_magic.engine.structured import _torch_pruning

    tp = _torch_pruning()
    z = zoo.catalogue()["swin_s"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph, _ = trace(tp, z.model(), (z.example_input(),))
    cats = [n.module.concat_sizes for n in graph.module2node.values() if n.type == tp.ops.OPTYPE.CONCAT]
    assert sorted(cats) == [[96] * 4, [192] * 4, [384] * 4]
