"""Tiny transformers language models built from configs (no weights are downloaded), and a tiny
GPT-2 trained for a few seconds on text every Python ships (``pydoc_data``)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from tests.zoo import torchvision

VOCAB = 64


def transformers() -> Any:
    with contextlib.suppress(ImportError):  # (none installed: transformers does without)
        torchvision()  # (this box's torchvision wheel needs its ops declared before transformers imports it)
    import transformers as t

    t.logging.set_verbosity_error()  # (tiny vocabularies: its warnings about bos/eos ids are not ours)
    return t


def gpt2(**config: Any) -> nn.Module:
    """``config``: GPT2Config fields over these tiny ones (test_heads asks for more heads)."""
    t = transformers()
    tiny = dict(
        n_layer=2, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=32, bos_token_id=0, eos_token_id=0
    )
    return t.GPT2LMHeadModel(t.GPT2Config(**{**tiny, **config}))


def llama(**config: Any) -> nn.Module:
    """Grouped-query attention: 4 query heads read 2 key-value heads (unless ``config`` says otherwise)."""
    t = transformers()
    tiny = dict(
        num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=32, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    return t.LlamaForCausalLM(t.LlamaConfig(**{**tiny, **config}))


def bert(head: str = "BertForMaskedLM", **config: Any) -> nn.Module:
    t = transformers()
    tiny = dict(
        num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=2, vocab_size=VOCAB,
        max_position_embeddings=32,
    )  # fmt: skip
    return getattr(t, head)(t.BertConfig(**{**tiny, **config}))


def t5(**config: Any) -> nn.Module:
    t = transformers()
    tiny = dict(
        num_layers=2, num_decoder_layers=2, d_model=32, d_ff=64, num_heads=2, d_kv=16, vocab_size=VOCAB,
        decoder_start_token_id=0,
    )  # fmt: skip
    return t.T5ForConditionalGeneration(t.T5Config(**{**tiny, **config}))


MODELS: dict[str, Callable[[], nn.Module]] = {"gpt2": gpt2, "llama": llama, "bert": bert, "t5": t5}


def token_ids(rows: int = 8, seq: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (rows, seq), generator=torch.Generator().manual_seed(seed))


def text_ids() -> torch.Tensor:
    """pydoc's help topics as bytes: a few hundred kB of English and Python."""
    from pydoc_data.topics import topics

    return torch.tensor(list("\n".join(topics.values()).encode()), dtype=torch.long)


def rows_of(ids: torch.Tensor, start: int, n: int, seq: int, generator: torch.Generator) -> torch.Tensor:
    at = torch.randint(start, start + 90_000 - seq, (n,), generator=generator)
    return torch.stack([ids[i : i + seq] for i in at.tolist()])


def trained_gpt2(steps: int = 200, seq: int = 32) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A byte-level GPT-2 (2 blocks, width 32) trained ``steps`` steps; calibration and held-out rows."""
    t = transformers()
    torch.manual_seed(0)
    config = t.GPT2Config(
        n_layer=2, n_embd=32, n_head=4, vocab_size=256, n_positions=seq, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    model = t.GPT2LMHeadModel(config)
    ids, generator = text_ids(), torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        x = rows_of(ids, 0, 16, seq, generator)
        loss = model(input_ids=x, labels=x).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return model, rows_of(ids, 100_000, 32, seq, generator), rows_of(ids, 100_000, 32, seq, generator)
