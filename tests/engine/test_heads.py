"""structured on Hugging Face transformers: MLP hidden units and whole attention heads go, the
config follows (generate, save_pretrained / from_pretrained, pm.save / pm.load), and undo
gives back every tensor, every head count and every config field."""

from __future__ import annotations

import contextlib
import copy
import io
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from torch import nn

import prune_magic as pm
from tests import zoo
from tests.conftest import same_bits, state
from tests.engine import language_models as lm

with contextlib.suppress(ImportError):  # transformers' image models import torchvision: its ops first
    zoo.torchvision()
transformers = pytest.importorskip("transformers")


@contextmanager
def quiet() -> Iterator[None]:
    """transformers' own deprecation notes are not ours (pytest turns warnings into errors)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# the language models' tiny builders (tests/engine/language_models.py), wider: four heads to halve
def gpt2() -> nn.Module:
    return lm.gpt2(vocab_size=100, n_embd=64, n_head=4, n_positions=64)


def llama() -> nn.Module:  # grouped-query attention: 4 query heads read 2 key-value heads
    return lm.llama(**LLAMA)


def llama_mqa(heads: int = 4) -> nn.Module:  # multi-query attention: one key-value head
    return lm.llama(
        **LLAMA, head_dim=16, num_attention_heads=heads, num_key_value_heads=1 if heads == 4 else 2
    )


def bert() -> nn.Module:
    return lm.bert(
        "BertForSequenceClassification", vocab_size=100, hidden_size=64, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=512, num_labels=3,
    )  # fmt: skip


def vit() -> nn.Module:
    t = transformers
    config = t.ViTConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        image_size=32, patch_size=8, num_labels=10,
    )  # fmt: skip
    return t.ViTForImageClassification(config)


def t5() -> nn.Module:
    return lm.t5(vocab_size=100, d_model=64, d_ff=128, num_heads=4)


LLAMA = dict(
    vocab_size=100, hidden_size=64, intermediate_size=128, max_position_embeddings=64, pad_token_id=0
)


MODELS: dict[str, tuple[Callable[[], nn.Module], Callable[[], Any]]] = {
    "gpt2": (gpt2, lambda: torch.randint(0, 100, (2, 12))),
    "llama": (llama, lambda: torch.randint(0, 100, (2, 12))),
    "llama_mqa": (llama_mqa, lambda: torch.randint(0, 100, (2, 12))),
    "bert": (bert, lambda: torch.randint(0, 100, (2, 12))),
    "vit": (vit, lambda: torch.randn(2, 3, 32, 32)),
}
RECIPE = "structured amount=0.5 heads=0.5"


def build(name: str) -> tuple[nn.Module, Any]:
    factory, example = MODELS[name]
    torch.manual_seed(0)
    with quiet():
        model = factory().eval()
    return model, example()


def logits(model: nn.Module, x: Any) -> torch.Tensor:
    with torch.no_grad(), quiet():
        return model(x).logits


def fields(model: nn.Module) -> dict[str, Any]:
    config: Any = model.config
    return dict(config.to_dict())


def counts(model: nn.Module) -> dict[str, tuple[object, ...]]:
    """Every module's head counts and widths (the attributes its forward reads)."""
    keys = ("num_heads", "num_attention_heads", "num_key_value_heads", "split_size", "all_head_size", "nf")
    return {n: tuple(getattr(m, k, None) for k in keys) for n, m in model.named_modules()}


@pytest.mark.parametrize("name", MODELS)
def test_heads_and_mlp_units_go_and_the_model_still_runs_trains_and_undoes(name: str) -> None:
    model, x = build(name)
    original, config, heads, params = state(model), fields(model), counts(model), zoo.tensors(model)
    shape = logits(model, x).shape
    result = pm.prune(model, RECIPE, example_input=x, report=False)

    cut = [r for r in result.steps[0].removals if r.unit == "heads"]
    assert [(r.width, r.kept) for r in cut] == [(4, 2), (4, 2)]  # half the heads of every block
    assert model.config.num_attention_heads == 2
    assert logits(model, x).shape == shape
    with quiet():
        model(x).logits.sum().backward()
    assert all(p.grad is not None and p.grad.shape == p.shape for p in model.parameters())
    model.zero_grad(set_to_none=True)

    pm.undo(model)
    assert same_bits(model, original)
    assert fields(model) == config and counts(model) == heads
    assert all(t is zoo.tensors(model)[n] for n, t in params.items())  # the very same tensors


def test_gpt2_conv1d_mlp_and_fused_heads_shrink_and_its_config_says_so() -> None:
    model, x = build("gpt2")
    pm.prune(model, RECIPE, example_input=x, report=False)
    attn, mlp = model.transformer.h[0].attn, model.transformer.h[0].mlp
    assert (attn.c_attn.weight.shape, attn.c_proj.weight.shape) == ((64, 3 * 32), (32, 64))
    assert (attn.num_heads, attn.head_dim, attn.split_size) == (2, 16, 32)
    assert (mlp.c_fc.weight.shape, mlp.c_proj.weight.shape, mlp.c_fc.nf) == ((64, 128), (128, 64), 128)
    assert (model.config.n_head, model.config.n_inner, model.config.n_embd) == (2, 128, 64)


def test_llama_grouped_query_attention_loses_key_value_heads_with_their_query_groups() -> None:
    model, x = build("llama")
    pm.prune(model, RECIPE, example_input=x, report=False)
    attn = model.model.layers[0].self_attn
    assert (attn.q_proj.out_features, attn.k_proj.out_features, attn.v_proj.out_features) == (32, 16, 16)
    assert (attn.o_proj.in_features, attn.head_dim, attn.num_key_value_groups) == (32, 16, 2)
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (2, 1)
    assert (model.config.head_dim, model.config.intermediate_size) == (16, 64)


@pytest.mark.parametrize("name", MODELS)
def test_removing_heads_is_silencing_them(name: str) -> None:
    # a head adds to the output only through its columns of the output projection: the pruned
    # model computes what the original does with those columns zeroed (MLP kept: heads only)
    model, x = build(name)
    silenced = copy.deepcopy(model)
    result = pm.prune(model, "structured amount=0 heads=0.5", example_input=x, report=False)
    for r in result.steps[0].removals:
        if r.unit == "heads" and r.removed:
            out = _output_projection(silenced, r.layer)
            hd = out.weight.shape[0 if type(out).__name__ == "Conv1D" else 1] // r.width
            cols = [h * hd + i for h in r.removed for i in range(hd)]
            with torch.no_grad():
                if type(out).__name__ == "Conv1D":
                    out.weight[cols, :] = 0
                else:
                    out.weight[:, cols] = 0
    torch.testing.assert_close(logits(model, x), logits(silenced, x), rtol=1e-5, atol=1e-5)


def _output_projection(model: nn.Module, attention: str) -> nn.Module:
    module = model.get_submodule(attention)
    for child in ("o_proj", "c_proj"):
        if hasattr(module, child):
            return getattr(module, child)  # type: ignore[no-any-return]
    return model.get_submodule(attention.rpartition(".")[0] + ".output.dense")


def test_with_one_key_value_head_query_heads_go_and_the_key_value_head_stays() -> None:
    model, x = build("llama_mqa")
    pm.prune(model, RECIPE, example_input=x, report=False)
    attn = model.model.layers[0].self_attn
    assert (attn.q_proj.out_features, attn.k_proj.out_features, attn.num_key_value_groups) == (32, 16, 2)
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (2, 1)


def test_a_share_too_small_for_a_key_value_head_takes_query_heads_from_each_group() -> None:
    torch.manual_seed(0)
    with quiet():
        model = llama_mqa(heads=8).eval()  # 8 query heads, 2 key-value heads
    x = torch.randint(0, 100, (1, 12))
    result = pm.prune(model, "structured amount=0 heads=0.25", example_input=x, report=False)
    removed = [r.removed for r in result.steps[0].removals if r.unit == "heads"]
    assert len(removed) == 2 and all(
        len(r) == 2 and sum(h < 4 for h in r) == 1 for r in removed
    )  # 1 per group
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (6, 2)
    assert model.model.layers[0].self_attn.num_key_value_groups == 3


@pytest.mark.parametrize("name", ["gpt2", "llama", "llama_mqa"])
def test_a_pruned_causal_lm_generates_with_its_key_value_cache(name: str) -> None:
    model, x = build(name)
    pm.prune(model, RECIPE, example_input=x, report=False)
    with torch.no_grad(), quiet():
        cached = model.generate(x, max_new_tokens=6, do_sample=False, use_cache=True)
        uncached = model.generate(x, max_new_tokens=6, do_sample=False, use_cache=False)
    assert cached.shape == (2, 18)
    assert torch.equal(cached, uncached)  # the cache holds the pruned heads' keys and values


@pytest.mark.parametrize(("name", "recipe"), [
    ("llama", RECIPE),  # its config gives head_dim: heads and MLP round-trip
    ("llama_mqa", RECIPE),
    ("gpt2", "structured amount=0.5"),  # the others derive head_dim from the width: MLPs only
    ("bert", "structured amount=0.5"),
    ("vit", "structured amount=0.5"),
])  # fmt: skip
def test_save_pretrained_and_from_pretrained_round_trip(name: str, recipe: str, tmp_path: Any) -> None:
    model, x = build(name)
    pm.prune(model, recipe, example_input=x, report=False)
    with quiet():
        model.save_pretrained(tmp_path)
        loaded = type(model).from_pretrained(tmp_path).eval()
    assert same_bits(loaded, state(model))
    torch.testing.assert_close(logits(loaded, x), logits(model, x), rtol=1e-6, atol=1e-6)


def test_heads_that_from_pretrained_cannot_rebuild_are_said_in_the_result() -> None:
    model, x = build("bert")
    text = str(pm.prune(model, RECIPE, example_input=x, report=False))
    assert "from_pretrained will not load it, pm.save/pm.load will" in text


@pytest.mark.parametrize("name", MODELS)
def test_pm_save_and_load_rebuild_heads_counts_and_config(name: str) -> None:
    model, x = build(name)
    pm.prune(model, RECIPE, example_input=x, report=False)
    buffer = io.BytesIO()
    pm.save(model, buffer)
    buffer.seek(0)
    with quiet():
        loaded = pm.load(buffer, MODELS[name][0]).eval()
    assert torch.equal(logits(loaded, x), logits(model, x))
    assert counts(loaded) == counts(model) and fields(loaded) == fields(model)


def test_a_dry_run_and_a_failed_evaluation_leave_config_and_counts_as_they_were() -> None:
    model, x = build("llama")
    original, config, heads = state(model), fields(model), counts(model)
    pm.prune(model, RECIPE, example_input=x, dry_run=True, report=False)
    assert same_bits(model, original) and fields(model) == config and counts(model) == heads

    def fails(m: nn.Module) -> float:
        if m.config.num_attention_heads != 4:  # (the pruned model)
            raise RuntimeError("eval failed on purpose")
        return 0.0

    with pytest.raises(pm.PruneError):
        pm.prune(model, RECIPE, example_input=x, evaluate=fails, report=False)
    assert same_bits(model, original) and fields(model) == config and counts(model) == heads


def test_reset_after_two_steps_gives_back_the_config() -> None:
    model, x = build("gpt2")
    original, config = state(model), fields(model)
    pm.prune(model, "structured amount=0.25 heads=0.25", example_input=x, report=False)
    pm.prune(model, RECIPE, example_input=x, report=False)
    assert model.config.n_head == 1  # round(0.25 * 4) = 1 head goes, then round(0.5 * 3) = 2 of the 3
    pm.reset(model)
    assert same_bits(model, original) and fields(model) == config


def test_heads_are_kept_by_default_and_the_result_says_how_to_remove_them() -> None:
    model, x = build("bert")
    text = str(pm.prune(model, "structured amount=0.5", example_input=x, report=False))
    assert "kept whole (attention heads: heads= removes them)" in text
    assert model.config.num_attention_heads == 4 and model.config.intermediate_size == 64
    assert model.bert.pooler.dense.out_features == 64  # the config fixes the pooler's width


def test_t5_loses_mlp_units_and_says_its_attention_keeps_its_heads() -> None:
    torch.manual_seed(0)
    with quiet():
        model = t5().eval()
    ids = torch.randint(0, 100, (1, 12))
    x = (ids, torch.ones_like(ids), ids)
    config = fields(model)
    text = str(pm.prune(model, RECIPE, example_input=x, report=False))
    assert "heads not removed: only Llama-, GPT-2- and BERT-style self-attention loses heads" in text
    assert model.config.d_ff == 64 and model.config.num_heads == 4
    with torch.no_grad(), quiet():
        assert model.generate(ids, max_new_tokens=4, do_sample=False).shape[1] <= 5
    pm.undo(model)
    assert fields(model) == config


def test_importance_taylor_is_refused_on_conv1d_in_one_line() -> None:
    model, x = build("gpt2")
    original = state(model)
    with pytest.raises(pm.PruneError, match=r"importance=taylor cannot score transformers' Conv1D layers"):
        pm.prune(
            model, "structured amount=0.5 importance=taylor", example_input=x, data=[(x, x)], report=False
        )
    assert same_bits(model, original)


def test_taylor_importance_reads_a_language_models_logits() -> None:
    model, x = build("llama")
    result = pm.prune(
        model, "structured amount=0.5 importance=taylor", example_input=x, data=[(x, x)], report=False
    )
    assert model.config.intermediate_size == 64 and result.steps[0].removals


def test_heads_from_some_blocks_leave_the_config_count_and_pm_load_rebuilds_them() -> None:
    model, x = build("llama")
    pm.prune(model, "structured amount=0 heads=0.5 layers=model.layers.0.*", example_input=x, report=False)
    assert (
        model.model.layers[0].self_attn.q_proj.out_features,
        model.model.layers[1].self_attn.q_proj.out_features,
    ) == (32, 64)
    assert model.config.num_attention_heads == 4  # one count for every block: it keeps the old one
    with torch.no_grad(), quiet():
        assert model.generate(x, max_new_tokens=3, do_sample=False).shape == (2, 15)
    buffer = io.BytesIO()
    pm.save(model, buffer)
    buffer.seek(0)
    with quiet():
        loaded = pm.load(buffer, llama).eval()
    assert torch.equal(logits(loaded, x), logits(model, x))


def test_a_config_without_mlp_widths_leaves_every_layer_free_to_shrink() -> None:
    # a Hugging Face CNN: its config gives no MLP width, so the config rule keeps nothing whole
    torch.manual_seed(0)
    with quiet():
        config = transformers.ResNetConfig(
            embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3
        )
        model = transformers.ResNetForImageClassification(config).eval()
    x = torch.randn(1, 3, 32, 32)
    result = pm.prune(model, "structured amount=0.5", example_input=x, report=False)
    assert len([r for r in result.steps[0].removals if r.removed]) >= 4
    assert logits(model, x).shape == (1, 3)


def test_mlps_ranked_globally_differ_in_width_and_the_result_says_the_config_cannot_tell() -> None:
    model, x = build("gpt2")
    with torch.no_grad():  # 3/4 of the second block's units near zero: a global ranking takes them
        model.transformer.h[1].mlp.c_fc.weight[:, :192] *= 0.01
        model.transformer.h[1].mlp.c_proj.weight[:192] *= 0.01
    text = str(pm.prune(model, "structured amount=0.5 scope=global", example_input=x, report=False))
    widths = {model.transformer.h[i].mlp.c_fc.nf for i in (0, 1)}
    assert len(widths) == 2 and model.config.n_inner is None  # the config keeps what it said
    assert "which config.n_inner cannot say: from_pretrained will not load it, pm.save/pm.load will" in text


class SelfAttention(nn.Module):
    """Attention written by hand as Llama writes it (no Hugging Face class, no config)."""

    def __init__(self, width: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, width // heads
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(width, width) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (
            p(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
            for p in (self.q_proj, self.k_proj, self.v_proj)
        )
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim))


def test_hand_written_attention_loses_whole_heads_and_no_config_is_talked_of() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(SelfAttention(), nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 8)).eval()
    x = torch.randn(2, 6, 32)
    before = state(model)
    result = pm.prune(model, "structured amount=0.5 heads=0.5", example_input=x)
    attention = model[0]
    assert (attention.num_heads, attention.q_proj.out_features, attention.o_proj.in_features) == (2, 16, 16)
    assert model(x).shape == (2, 6, 8) and model[1].out_features == 32
    text = str(result)
    assert "0 4->2" in text.replace("→", "->") and "from_pretrained" not in text and "config" not in text
    pm.undo(model)
    assert same_bits(model, before) and attention.num_heads == 4
