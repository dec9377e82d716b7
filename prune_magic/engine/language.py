"""Language models: which layers a clip takes by default, token-id data, and perplexity.

Transformers are first-class models for clipping without importing ``transformers``: its
``Conv1D`` (GPT-2's projections, a Linear whose weight is stored transposed, shape
``(in, out)``) is recognised by its class, and a model counts as a language model when it
is a ``transformers.PreTrainedModel`` or has embeddings and a list of repeated blocks.
Its default selection is the linear projections inside those blocks (attention and MLP):
not the embeddings, the norms, nor the output head (often tied to the token embedding),
whose clipping costs far more than its share of weights.

>>> import torch
>>> from torch import nn
>>> class Tiny(nn.Module):
...     def __init__(self) -> None:
...         super().__init__()
...         self.embed = nn.Embedding(10, 4)
...         self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(4, 4)) for _ in range(2))
...         self.head = nn.Linear(4, 10)
>>> block_prefixes(Tiny())
('blocks',)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import nn

from .errors import PruneError


def is_conv1d(module: nn.Module) -> bool:
    """``transformers.pytorch_utils.Conv1D``: a Linear with its weight stored as (in, out)."""
    kind = type(module)
    return kind.__name__ == "Conv1D" and kind.__module__.startswith("transformers")


def is_linear(module: nn.Module) -> bool:
    """A Linear layer, however its weight is stored (``nn.Linear`` or transformers' ``Conv1D``)."""
    return isinstance(module, nn.Linear) or is_conv1d(module)


def rows(module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """``weight`` as (out, in): one row per output, its inputs in order (a view, no copy).

    A Conv1D's weight transposed; a ConvNd's flattened over its input channels and kernel.
    """
    if is_conv1d(module):
        return weight.t()
    return weight if weight.dim() == 2 else weight.flatten(1)


def _pretrained(model: nn.Module) -> bool:
    return any(
        c.__name__ == "PreTrainedModel" and c.__module__.startswith("transformers")
        for c in type(model).__mro__
    )


def block_prefixes(model: nn.Module) -> tuple[str, ...]:
    """The module lists of repeated blocks of a language model (``transformer.h``,
    ``model.layers``, T5's ``encoder.block`` and ``decoder.block``); () if it is not one.

    A block list holds modules of one type with Linear layers inside; the outermost lists
    count (a block's own list of sublayers does not).
    """
    found: list[str] = []
    has_embedding = False
    for name, module in model.named_modules():
        has_embedding = has_embedding or isinstance(module, nn.Embedding)
        if any(name.startswith(f"{p}.") for p in found) or not isinstance(module, nn.ModuleList):
            continue
        kinds = {type(block) for block in module}
        if len(module) and len(kinds) == 1 and any(is_linear(m) for m in module.modules()):
            found.append(name)
    return tuple(found) if found and (has_embedding or _pretrained(model)) else ()


def in_blocks(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name.startswith(f"{p}.") for p in prefixes)


def left_out_note(model: nn.Module, prefixes: tuple[str, ...], left_out: list[str]) -> str:
    """One line: what a language model's default clip leaves out, and why."""
    blocks = sum(len(list(model.get_submodule(p).children())) for p in prefixes)
    shown = ", ".join(left_out[:4]) + (f" and {len(left_out) - 4} more" if len(left_out) > 4 else "")
    return (
        f"language model: clipping the Linear projections of its {blocks} blocks ({', '.join(prefixes)});"
        f" left out {shown} (embeddings, norms and the output head cost more than their share of"
        " weights); name them with layers= to clip them"
    )


def is_causal_lm(model: nn.Module) -> bool:
    """A transformers model that predicts the next token (``...LMHeadModel``, ``...ForCausalLM``)."""
    name = type(model).__name__
    return _pretrained(model) and (name.endswith("LMHeadModel") or name.endswith("ForCausalLM"))


def is_token_ids(data: object) -> bool:
    """Whether ``data`` is token ids: a LongTensor (batch, seq), a list of them, or an iterable
    (a DataLoader) whose first batch is one."""
    if isinstance(data, torch.Tensor):
        return data.dim() == 2 and data.dtype == torch.long
    if isinstance(data, tuple | list):  # a list of batches, each of them ids (not an (X, y) pair)
        return bool(data) and all(is_token_ids(batch) for batch in data)
    if not hasattr(data, "__iter__") or isinstance(data, str):
        return False
    first = next(iter(data), None)
    return isinstance(first, torch.Tensor) and first.dim() == 2 and first.dtype == torch.long


def inputs(data: object, batch_size: int = 32) -> Iterator[torch.Tensor]:
    """The model inputs in ``data``: token-id rows, batches of them, or the X of (X, y) batches."""
    from .evaluate import _batches

    if isinstance(data, torch.Tensor):
        yield from torch.split(data, batch_size)
    elif is_token_ids(data):
        yield from data  # type: ignore[misc]
    else:
        for x, _ in _batches(data, batch_size)():
            yield x


def run(model: nn.Module, x: torch.Tensor) -> object:
    """One forward pass on inputs ``x``, as the model takes them (an encoder-decoder gets ``x`` as
    the decoder's input too)."""
    from .evaluate import _to_model

    x = _to_model(x, model)
    config = getattr(model, "config", None)
    if config is None or not _pretrained(model):
        return model(x)
    # no cache: a pass for calibration must not keep keys and values, nor hand a cache to a block
    if getattr(config, "is_encoder_decoder", False) and x.dtype == torch.long:
        return model(input_ids=x, decoder_input_ids=x, use_cache=False)
    return model(x, use_cache=False) if hasattr(config, "use_cache") else model(x)


def perplexity(data: object, max_tokens: int | None = None) -> Callable[[nn.Module], float]:
    """An eval function: perplexity of a causal language model on token ids ``data`` (lower is better).

    ``data`` is a LongTensor (batch, seq) or a DataLoader of them. A transformers model is
    measured with its own loss (``labels=input_ids``); any other model must map ids to
    next-token logits (batch, seq, vocab). At most ``max_tokens`` predicted tokens are read.

    >>> import torch
    >>> from torch import nn
    >>> uniform = nn.Sequential(nn.Embedding(8, 4), nn.Linear(4, 8, bias=False))
    >>> with torch.no_grad():
    ...     _ = uniform[1].weight.zero_()
    >>> round(perplexity(torch.randint(0, 8, (2, 5)))(uniform), 4)  # a uniform guess over 8 tokens
    8.0
    """
    if not is_token_ids(data):
        raise PruneError(
            "perplexity needs token ids: a LongTensor of shape (batch, seq) or a DataLoader of them"
        )

    def perplexity(model: nn.Module) -> float:
        total, count = 0.0, 0
        from .evaluate import eval_mode

        device = next(model.parameters()).device
        with torch.no_grad(), eval_mode(model):  # (no dropout, also when called by hand)
            for x in inputs(data, 8):
                room = None if max_tokens is None else max_tokens - count
                if room is not None and room <= 0:
                    break
                if room is not None:  # whole rows, the last one cut: exactly max_tokens predictions
                    x = x[: -(-room // (x.shape[1] - 1))]
                    x = x if len(x) * (x.shape[1] - 1) <= room else x[:, : 1 + room // len(x)]
                x = x.to(device)
                total += next_token_loss(model, x) * x.shape[0] * (x.shape[1] - 1)
                count += x.shape[0] * (x.shape[1] - 1)
        if not count:
            raise PruneError("the evaluation data is empty (or its sequences have one token)")
        return math.exp(total / count)

    return perplexity


def next_token_loss(model: nn.Module, x: torch.Tensor) -> float:
    """Mean cross-entropy of predicting each token of ``x`` from those before it."""
    if _pretrained(model):
        return float(model(input_ids=x, labels=x).loss)
    out = model(x)
    logits = getattr(out, "logits", out)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3 or logits.shape[:2] != x.shape:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(out).__name__
        raise PruneError(
            f"perplexity needs next-token logits of shape (batch, seq, vocab) = ({x.shape[0]}, {x.shape[1]}, V)"
            f" from the model, and it returned {got}; pass an eval function (--eval) instead"
        )
    return float(nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), x[:, 1:].flatten()))


def wants_perplexity(model: nn.Module, data: object) -> bool:
    """Whether the built-in metric for ``data`` is perplexity: token ids for a causal language model
    (a transformers one, or any model of ours given ids). A transformers model that does not
    predict the next token (BERT, T5) is refused: its metric must be given."""
    if not is_token_ids(data):
        return False
    if _pretrained(model) and not is_causal_lm(model):
        raise PruneError(
            f"the data is token ids and {type(model).__name__} is not a causal language model, so there is"
            " no built-in metric for it (perplexity needs next-token predictions); pass an eval function"
        )
    return True
