"""Whole attention heads, removed from Hugging Face transformers' self-attention.

A head is ``head_dim`` consecutive outputs of the query, key and value projections and the same
inputs of the output projection; removing one keeps ``head_dim`` and shrinks the rest, and the
attention module's own counts (``num_heads``, ``all_head_size``, GPT-2's ``split_size``) follow.
With grouped-query attention (Llama: ``num_key_value_heads < num_attention_heads``) a key-value
head goes together with the query heads that read it, so every key-value head keeps the same
number of queries; where the share rounds to no key-value head (multi-query attention has one),
the same number of query heads goes from every key-value head's group instead (Torch-Pruning's
LLM example prunes query heads within the groups).

Three layouts, recognised by their parts rather than their class, so models built the same way
(Mistral, Qwen2, RoBERTa...) are recognised too (the suite tests Llama, GPT-2, BERT and ViT):

- ``qkvo``: ``q_proj``, ``k_proj``, ``v_proj``, ``o_proj`` Linears and a ``head_dim`` (Llama,
  and transformers 5's ViT);
- ``fused``: one ``c_attn`` Conv1D making query, key and value side by side, ``c_proj`` (GPT-2);
- ``split``: ``query``, ``key``, ``value`` Linears, the output projection in the parent's
  ``output.dense`` (BERT).

Heads are ranked by the magnitude of their weights (all four projections' slices), the same
number go from every layer, so the model's config can still describe it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .dependencies import Kept
from .language import is_conv1d


@dataclass(frozen=True)
class Attention:
    """One self-attention block: its projections (layer names) and how its heads are laid out."""

    name: str  # the module that counts the heads
    layout: str  # qkvo, fused, split
    q: str
    k: str
    v: str
    o: str
    heads: int
    kv_heads: int
    head_dim: int

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.q, self.k, self.v, self.o)))

    @property
    def per_kv(self) -> int:
        """Query heads per key-value head."""
        return self.heads // self.kv_heads


@dataclass(frozen=True)
class HeadCut:
    """The query heads and key-value heads one attention block loses."""

    attention: Attention
    heads: tuple[int, ...]  # query heads
    groups: tuple[int, ...]  # key-value heads (each goes with all its query heads)


def choose(
    model: nn.Module, share: float, importance: str, selected: set[str], kept: list[Kept]
) -> tuple[int, list[HeadCut]]:
    """The heads a step removes: ``share`` of each block's, from the blocks whose projections are
    all ``selected``; and the number of blocks that could lose heads. The blocks that keep theirs
    go into ``kept``, with why."""
    found, other = find(model)
    chosen = [a for a in found if set(a.layers) <= selected]
    if share <= 0:
        kept.extend(Kept(a.name, a.heads, "attention heads: heads= removes them") for a in chosen)
        return len(found), []
    why = "heads not removed: only Llama-, GPT-2- and BERT-style self-attention loses heads"
    kept.extend(Kept(name, 0, why) for name in other)
    cuts = plan(model, chosen, share, importance)
    cut = {c.attention.name for c in cuts}
    few = f"heads={share:g} rounds to no key-value head, and to no query head of each"
    kept.extend(Kept(a.name, a.heads, few) for a in chosen if a.name not in cut)
    return len(found), cuts


def find(model: nn.Module) -> tuple[list[Attention], list[str]]:
    """The self-attention blocks whose heads can go, and the other modules that count heads
    (cross-attention, T5's, timm's...: their heads stay)."""
    named = dict(model.named_modules())
    found, other = [], []
    for name, m in named.items():
        attention = _layout(name, m, named)
        if attention is not None:
            found.append(attention)
        elif any(
            isinstance(getattr(m, a, None), int) for a in ("num_heads", "num_attention_heads", "n_heads")
        ):
            other.append(name)
    return found, other


def _layout(name: str, m: nn.Module, named: dict[str, nn.Module]) -> Attention | None:
    prefix = f"{name}." if name else ""
    children: dict[str, Any] = dict(m.named_children())
    qkvo = ("q_proj", "k_proj", "v_proj", "o_proj")
    if all(isinstance(children.get(c), nn.Linear) for c in qkvo):
        q, k, v, o = (children[c] for c in qkvo)
        hd = getattr(m, "head_dim", None)
        if not isinstance(hd, int) or hd <= 0 or q.out_features % hd or k.out_features % hd:
            return None
        heads, kv = q.out_features // hd, k.out_features // hd
        if v.out_features != k.out_features or o.in_features != q.out_features or heads % kv:
            return None
        q_name, k_name, v_name, o_name = (f"{prefix}{c}" for c in qkvo)
        return Attention(name, "qkvo", q_name, k_name, v_name, o_name, heads, kv, hd)
    cross = bool(getattr(m, "is_cross_attention", False))
    fused: Any = children.get("c_attn")
    out: Any = children.get("c_proj")
    if is_conv1d(fused) and is_conv1d(out) and not cross:
        heads, hd, split = (getattr(m, a, None) for a in ("num_heads", "head_dim", "split_size"))
        if (
            isinstance(heads, int)
            and isinstance(hd, int)
            and split == heads * hd
            and fused.nf == 3 * split
            and out.weight.shape[0] == split
        ):
            qkv_name = f"{prefix}c_attn"
            return Attention(name, "fused", qkv_name, qkv_name, qkv_name, f"{prefix}c_proj", heads, heads, hd)
    qkv = ("query", "key", "value")
    if all(isinstance(children.get(c), nn.Linear) for c in qkv) and not cross:
        heads, hd, width = (
            getattr(m, a, None) for a in ("num_attention_heads", "attention_head_size", "all_head_size")
        )
        parent = name.rpartition(".")[0]
        o_name = f"{parent}.output.dense" if parent else "output.dense"
        dense = named.get(o_name)
        if (
            isinstance(heads, int)
            and isinstance(hd, int)
            and width == heads * hd
            and isinstance(dense, nn.Linear)
            and dense.in_features == width
            and all(children[c].out_features == width for c in qkv)
        ):
            q_name, k_name, v_name = (f"{prefix}{c}" for c in qkv)
            return Attention(name, "split", q_name, k_name, v_name, o_name, heads, heads, hd)
    return None


def plan(model: nn.Module, attentions: Sequence[Attention], share: float, importance: str) -> list[HeadCut]:
    """The heads each block loses, the weakest by ``importance`` (``l1``, ``random``, else the L2
    norm): ``share`` of its key-value heads, each with its query heads (rounded, one kept); where
    that rounds to none (few key-value heads: one, with multi-query attention), ``share`` of the
    query heads of every key-value head, the same number from each, the key-value heads kept."""
    cuts = []
    p = 1 if importance == "l1" else 2
    for att in attentions:
        n = min(round(share * att.kv_heads), att.kv_heads - 1)
        if n > 0:
            scores = torch.rand(att.kv_heads) if importance == "random" else _scores(model, att, p)
            groups = sorted(scores.argsort()[:n].tolist())
            per = att.per_kv
            cuts.append(
                HeadCut(att, tuple(h for g in groups for h in range(g * per, (g + 1) * per)), tuple(groups))
            )
            continue
        m = min(round(share * att.per_kv), att.per_kv - 1)
        if m > 0:
            scores = torch.rand(att.heads) if importance == "random" else _query_scores(model, att, p)
            chosen = scores.view(att.kv_heads, att.per_kv).argsort(1)[:, :m]
            heads = chosen + torch.arange(att.kv_heads)[:, None] * att.per_kv
            cuts.append(HeadCut(att, tuple(sorted(heads.flatten().tolist())), ()))
    return cuts


def _scores(model: nn.Module, att: Attention, p: int) -> torch.Tensor:
    """Each key-value group's weight magnitude: its key and value rows, its query heads' rows and
    the output projection's columns they feed."""
    rows = {part: _rows(model, att, part) for part in "qkvo"}
    score = torch.zeros(att.kv_heads)
    hd, n = att.head_dim, att.per_kv
    with torch.no_grad():
        for g in range(att.kv_heads):
            q = slice(g * n * hd, (g + 1) * n * hd)
            kv = slice(g * hd, (g + 1) * hd)
            parts = (rows["q"][q], rows["k"][kv], rows["v"][kv], rows["o"][q])
            score[g] = sum(float(t.abs().float().pow(p).sum()) for t in parts)
    return score


def _query_scores(model: nn.Module, att: Attention, p: int) -> torch.Tensor:
    """Each query head's weight magnitude: its query rows and the output columns it feeds."""
    q, o, hd = _rows(model, att, "q"), _rows(model, att, "o"), att.head_dim
    with torch.no_grad():
        return torch.tensor(
            [
                sum(float(t[h * hd : (h + 1) * hd].abs().float().pow(p).sum()) for t in (q, o))
                for h in range(att.heads)
            ]
        )


def _rows(model: nn.Module, att: Attention, part: str) -> torch.Tensor:
    """The weight of one projection as (head channels, other side): outputs for q, k, v, inputs for o."""
    layer: Any = model.get_submodule(getattr(att, part))
    weight: torch.Tensor = layer.weight.detach()
    if part == "o":
        return weight if is_conv1d(layer) else weight.t()
    rows = weight.t() if is_conv1d(layer) else weight
    if att.layout == "fused":  # query, key and value side by side
        width = att.heads * att.head_dim
        rows = rows["qkv".index(part) * width : ("qkv".index(part) + 1) * width]
    return rows


def remove(model: nn.Module, cut: HeadCut) -> None:
    """Remove the heads of ``cut`` and update the block's counts."""
    att, hd = cut.attention, cut.attention.head_dim
    keep_q = _channels([h for h in range(att.heads) if h not in set(cut.heads)], hd)
    keep_kv = _channels([g for g in range(att.kv_heads) if g not in set(cut.groups)], hd)
    heads, kv_heads = len(keep_q) // hd, len(keep_kv) // hd
    if att.layout == "fused":
        width = att.heads * hd
        _cut(model.get_submodule(att.q), [i + part * width for part in range(3) for i in keep_q], out=True)
    else:
        _cut(model.get_submodule(att.q), keep_q, out=True)
        _cut(model.get_submodule(att.k), keep_kv, out=True)
        _cut(model.get_submodule(att.v), keep_kv, out=True)
    _cut(model.get_submodule(att.o), keep_q, out=False)
    module = model.get_submodule(att.name)
    counts = {
        "num_heads": heads,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "num_key_value_groups": heads // kv_heads,
        "split_size": heads * hd,
        "all_head_size": heads * hd,
    }
    for key, value in counts.items():
        if isinstance(getattr(module, key, None), int) and not isinstance(getattr(module, key), bool):
            setattr(module, key, value)


def _channels(heads: list[int], hd: int) -> list[int]:
    return [h * hd + i for h in heads for i in range(hd)]


def _cut(layer: Any, keep: list[int], out: bool) -> None:
    """Keep the ``keep`` outputs (or inputs) of a Linear or Conv1D: new Parameters, the old ones untouched."""
    index = torch.tensor(keep, device=layer.weight.device)
    dim = (1 if out else 0) if is_conv1d(layer) else (0 if out else 1)
    layer.weight = _sliced(layer.weight, dim, index)
    if out and getattr(layer, "bias", None) is not None:
        layer.bias = _sliced(layer.bias, 0, index)
    if is_conv1d(layer):
        if out:
            layer.nf = len(keep)
    elif out:
        layer.out_features = len(keep)
    else:
        layer.in_features = len(keep)


def _sliced(param: nn.Parameter, dim: int, index: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(param.detach().index_select(dim, index), requires_grad=param.requires_grad)
