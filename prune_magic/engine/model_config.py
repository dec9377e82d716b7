"""A Hugging Face model's ``config`` kept true to its layers after a structured step.

``generate()``, ``save_pretrained`` / ``from_pretrained`` and the model's own code read the
head counts and MLP widths from ``model.config``; after heads and hidden units are removed the
config says the new ones (when every layer has the same, which a config can describe).
The fields as they were go into the step's undo record (:class:`~.snapshot.ConfigRecord`).

Duck-typed: a config is an object with ``to_dict()`` on ``model.config``; transformers is
never imported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .conv1d import is_layer
from .dependencies import Kept
from .heads import Attention, HeadCut
from .language import is_conv1d
from .snapshot import ConfigRecord

#: The fields that give the width of every MLP's hidden layer, by family.
MLP_FIELDS = ("intermediate_size", "n_inner", "d_ff", "ffn_dim", "encoder_ffn_dim", "decoder_ffn_dim")
#: Every field a structured step may set (GPT-2 spells num_attention_heads n_head, T5 num_heads).
STRUCTURE_FIELDS = (
    *MLP_FIELDS,
    "num_attention_heads",
    "n_head",
    "num_heads",
    "num_key_value_heads",
    "head_dim",
)


def config_of(model: nn.Module) -> Any:
    """The model's Hugging Face config (an object with ``to_dict``), or None."""
    config = getattr(model, "config", None)
    return config if callable(getattr(config, "to_dict", None)) else None


def fixed_by_config(
    model: nn.Module,
    found: list[Any],
    scores: list[torch.Tensor],
    kept: list[Kept],
    names: dict[nn.Module, str],
) -> tuple[list[Any], list[torch.Tensor]]:
    """The dependency groups (and their scores) a config lets go: with a Hugging Face config that
    gives an MLP width, only layers of that width lose outputs (from_pretrained builds every
    other layer, a BERT pooler, at the width it says); the others are kept, and said so."""
    config = config_of(model)
    widths = mlp_widths(config) if config is not None else {}
    if not widths:  # (a config without MLP widths, a CNN's: it cannot describe any pruned layer)
        return found, scores
    left = []
    for group, score in zip(found, scores, strict=True):
        if len(score) in widths:
            left.append((group, score))
        else:
            kept.append(
                Kept(
                    names[group[0].dep.target.module], len(score), "the config fixes its width, not an MLP's"
                )
            )
    return [g for g, _ in left], [s for _, s in left]


def layer_widths(model: nn.Module) -> dict[str, int]:
    """Every layer's output width (Linear, Conv, Conv1D), by name."""
    return {
        name: int(m.weight.shape[1] if is_conv1d(m) else m.weight.shape[0])
        for name, m in model.named_modules()
        if is_layer(m)
    }


def update_config(
    model: nn.Module, cuts: Sequence[HeadCut], blocks: int, before: Mapping[str, int]
) -> ConfigRecord | None:
    """Set a Hugging Face config's head counts and MLP width to the pruned model's (``before``:
    the layer widths before the step); return the fields as they were (None: no config, or
    nothing it says changed)."""
    config = config_of(model)
    if config is None:
        return None
    fields = {**mlp_fields(config, before, layer_widths(model)), **head_fields(config, cuts, blocks)}
    record = ConfigRecord("", changed_fields(config, fields))
    for key, value in fields.items():
        setattr(config, key, value)
    return record if record.fields else None


def heads_note(config: Any, attention: Attention) -> str:
    """What to know about the heads removed from ``attention``: what from_pretrained cannot rebuild
    (nothing for a model without a Hugging Face config: pm.save/pm.load is its way back)."""
    if config is None or describes_heads(config, attention):
        return ""
    return (
        f"the config cannot say that heads keep {attention.head_dim} dims (this attention derives them"
        " from the width): from_pretrained will not load it, pm.save/pm.load will"
    )


def mlp_widths(config: Any) -> dict[int, str]:
    """The MLP widths the config gives, and the fields that give them."""
    widths: dict[int, str] = {}
    for field in MLP_FIELDS:
        width = getattr(config, field, None)
        if field == "n_inner" and width is None and _int(getattr(config, "n_embd", None)):
            width = 4 * config.n_embd  # GPT-2's default: four times the embedding
        if isinstance(width, int) and _int(width):
            widths[width] = field
    return widths


def head_fields(config: Any, cuts: Sequence[HeadCut], blocks: int) -> dict[str, int]:
    """The head counts for the config once ``cuts`` are made: only when every one of the model's
    ``blocks`` self-attention blocks loses the same number (the config has one count)."""
    if not cuts or len(cuts) != blocks or len({(len(c.heads), len(c.groups)) for c in cuts}) != 1:
        return {}
    att = cuts[0].attention
    fields: dict[str, int] = {}
    if _int(getattr(config, "num_attention_heads", None)):
        fields["num_attention_heads"] = att.heads - len(cuts[0].heads)
    if _int(getattr(config, "num_key_value_heads", None)):
        fields["num_key_value_heads"] = att.kv_heads - len(cuts[0].groups)
    if att.layout == "qkvo" and hasattr(config, "head_dim"):  # (Llama reads it; others derive it)
        fields["head_dim"] = att.head_dim
    return fields


def describes_heads(config: Any, attention: Attention) -> bool:
    """Whether the config can say how many heads of what size the block has (Llama's gives
    ``head_dim``; GPT-2's, BERT's and ViT's derive it from the width and the head count)."""
    return config is not None and attention.layout == "qkvo" and _int(getattr(config, "head_dim", None))


def mlp_fields(config: Any, before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
    """The MLP width for the config: a field whose value was the output width of layers that all
    now have one same new width (``before``/``after``: each layer's output width)."""
    fields = {}
    for width, field in mlp_widths(config).items():
        layers = [name for name, w in before.items() if w == width]
        now = {after[name] for name in layers if name in after}
        if len(now) == 1 and width not in now:
            fields[field] = now.pop()
    return fields


def unsaid_widths(model: nn.Module, before: Mapping[str, int]) -> str:
    """What to know when the MLPs now differ in width (``scope=global``): no config field says it."""
    config = config_of(model)
    if config is None:
        return ""
    after = layer_widths(model)
    for width, field in mlp_widths(config).items():
        now = {after[name] for name, w in before.items() if w == width and name in after}
        if len(now) > 1:
            return (
                f"the MLPs now differ in width ({min(now)}-{max(now)}), which config.{field} cannot say:"
                " from_pretrained will not load it, pm.save/pm.load will"
            )
    return ""


def changed_fields(config: Any, fields: Mapping[str, int]) -> dict[str, object]:
    """The fields' current values (for the undo record), for those that change."""
    return {k: getattr(config, k, None) for k, v in fields.items() if getattr(config, k, None) != v}


def _int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
