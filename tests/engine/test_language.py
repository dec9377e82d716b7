"""Transformers language models, clipped: GPT-2 (Conv1D), Llama (grouped-query attention), BERT and
T5 from tiny configs. Their blocks' projections are what a clip takes by default; every method
(magnitude, Wanda, SparseGPT, N:M) undoes bit for bit; perplexity is their built-in metric."""

from __future__ import annotations

import io

import pytest
import torch

import prune_magic as pm
from prune_magic.engine.errors import PruneError
from prune_magic.engine.language import perplexity, wants_perplexity
from prune_magic.engine.selection import notes
from tests.conftest import same_bits, state
from tests.engine.language_models import MODELS, VOCAB, gpt2, token_ids

RECIPES = [
    "clip amount=0.5",
    "clip amount=0.5 by=wanda",
    "clip amount=0.5 by=sparsegpt",
    "clip nm=2:4",
    "clip nm=2:4 by=wanda",
    "clip nm=2:4 by=sparsegpt",
]


def test_gpt2s_conv1d_projections_are_clipped_and_its_embeddings_and_head_left_out() -> None:
    model = gpt2()
    targets = pm.select(model)
    assert [t.name for t in targets] == [
        f"transformer.h.{i}.{layer}.weight"
        for i in range(2)
        for layer in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    ]
    assert {t.module_type for t in targets} == {"Conv1D"}
    note = notes(model, targets)[0]
    assert "2 blocks (transformer.h)" in note and "left out transformer.wte, transformer.wpe" in note
    result = pm.prune(model, "clip amount=0.5")
    assert result.steps[0].sparsity == 0.5 and any("left out" in n for n in result.notes)


@pytest.mark.parametrize("name", MODELS)
def test_the_default_clip_of_a_language_model_covers_its_blocks_projections(name: str) -> None:
    model = MODELS[name]()
    targets = pm.select(model)
    inside = sum(t.param.numel() for t in targets)
    projections = sum(
        m.weight.numel()
        for n, m in model.named_modules()
        if ".block." in f".{n}." or ".h." in f".{n}." or ".layers." in f".{n}." or ".layer." in f".{n}."
        if type(m).__name__ in ("Linear", "Conv1D")
    )
    assert inside == projections and targets
    assert not any("embed" in t.name or "wte" in t.name or "lm_head" in t.name for t in targets)


def test_layers_still_overrides_the_language_model_default() -> None:
    model = gpt2()
    assert [t.name for t in pm.select(model, ["lm_head"])] == ["transformer.wte.weight"]
    assert len(pm.select(model, ["Linear"])) == 9  # 8 Conv1D (the type name Linear takes them) and lm_head


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("recipe", RECIPES)
def test_every_method_prunes_and_undoes_bit_for_bit(name: str, recipe: str) -> None:
    torch.manual_seed(0)
    model = MODELS[name]()
    saved = state(model)
    result = pm.prune(model, recipe, data=token_ids())
    assert result.steps[0].sparsity == pytest.approx(0.5, abs=0.01)
    pm.undo(model)
    assert same_bits(model, saved)


def test_n_m_leaves_exactly_n_zeros_in_every_group_of_m_inputs() -> None:
    for by in ("magnitude", "wanda", "sparsegpt"):
        model = gpt2()
        pm.prune(model, f"clip nm=2:4 by={by}", data=token_ids())
        for target in pm.select(model):
            inputs_last = target.param.detach().t()  # Conv1D: (in, out) stored; groups run along the inputs
            zeros = (inputs_last.reshape(inputs_last.shape[0], -1, 4) == 0).sum(-1)
            assert bool((zeros == 2).all()), (by, target.name)


def test_sparsegpt_keeps_the_whole_weight_in_its_record_and_reset_restores_it() -> None:
    model = gpt2()
    saved = state(model)
    pm.prune(model, "clip amount=0.3 by=sparsegpt", data=token_ids())
    pm.prune(model, "clip amount=0.6 by=sparsegpt blocksize=16 dampening=0.05", data=token_ids())
    entries = pm.history(model).entries
    assert all(r.full is not None for e in entries for r in e.records)  # (kept weights change too)
    assert len(pm.reset(model)) == 2 and same_bits(model, saved)


def test_rerunning_a_cell_does_not_compound() -> None:
    model = gpt2()
    for _ in range(2):
        result = pm.prune(model, "clip amount=0.5 by=sparsegpt", data=token_ids(), tag="cell-1")
    assert len(pm.history(model)) == 1 and result.steps[0].sparsity == 0.5


def test_a_pruned_language_model_saves_and_loads_bit_for_bit() -> None:
    model = gpt2()
    pm.prune(model, "clip nm=2:4 by=wanda", data=token_ids())
    buffer = io.BytesIO()
    pm.save(model, buffer, compress=True)
    buffer.seek(0)
    assert same_bits(pm.load(buffer, gpt2), state(model))


@torch.no_grad()
def test_perplexity_is_the_built_in_metric_of_a_causal_lm_on_token_ids() -> None:
    model, ids = gpt2(), token_ids()
    assert wants_perplexity(model, ids) and not wants_perplexity(model, (ids.float(), ids[:, 0]))
    with pytest.raises(PruneError, match="BertForMaskedLM is not a causal language model"):
        wants_perplexity(MODELS["bert"](), ids)
    expected = float(torch.exp(model.eval()(input_ids=ids, labels=ids).loss))
    assert perplexity(ids)(model.train()) == pytest.approx(expected, rel=1e-5)
    assert perplexity(ids)(model) == pytest.approx(VOCAB, rel=0.2)  # (untrained: about uniform)
    assert perplexity([ids[:3], ids[3:]], max_tokens=15)(model) == pytest.approx(
        float(torch.exp(model.eval()(input_ids=ids[:1], labels=ids[:1]).loss)), rel=1e-5
    )  # (15 tokens predicted: the first row only)


def test_a_perplexity_sweep_reads_lower_as_better() -> None:
    model, ids = gpt2(), token_ids()
    sweep = pm.sensitivity(model, perplexity(ids), levels=(0.3, 0.9), layers=["transformer.h.0.mlp.c_fc"])
    assert sweep.lower_is_better and sweep.metric_name == "perplexity"
    worse = sweep.curves["transformer.h.0.mlp.c_fc"]
    assert sweep.budget(tolerance=1e9) == {"transformer.h.0.mlp.c_fc": 0.9}
    assert sweep.budget(tolerance=-1) == {"transformer.h.0.mlp.c_fc": 0.0}
    assert sweep.drop("transformer.h.0.mlp.c_fc", 0.9) == pytest.approx(
        max(0.0, *(m - sweep.baseline for m in worse if m))
    )


def test_wanda_and_sparsegpt_say_they_need_data() -> None:
    for by in ("wanda", "sparsegpt"):
        with pytest.raises(PruneError, match=f"clip by={by} needs calibration data"):
            pm.prune(gpt2(), f"clip amount=0.5 by={by}")
