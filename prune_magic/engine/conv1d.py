"""Hugging Face's ``Conv1D`` (GPT-2's projections) as a layer that structured pruning can cut.

``transformers.pytorch_utils.Conv1D`` is a Linear with its weight stored transposed,
``(in_features, out_features)``, and ``nf`` output features. Torch-Pruning has no rule for
it (it takes it for a parameter-free element-wise op), so :func:`pruners` gives its
dependency graph one, and :func:`magnitude` scores the groups that pass one (Torch-Pruning's
magnitude importance skips layers it does not know). The class is found by name, so the
engine never imports transformers.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .language import is_conv1d
from .selection import DEFAULT_TYPES


def is_layer(module: object) -> bool:
    """A Linear, a Conv or a ``Conv1D``: the layers structured pruning removes outputs of."""
    return isinstance(module, DEFAULT_TYPES) or (isinstance(module, nn.Module) and is_conv1d(module))


def pruners(tp: Any, model: nn.Module) -> dict[type, Any]:
    """Torch-Pruning's ``customized_pruners`` for the Conv1D classes in ``model`` (none if it has none)."""
    return {type(m): _pruner(tp)() for m in model.modules() if is_conv1d(m)}


@functools.cache
def _pruner(tp: Any) -> type:
    base = tp.pruner.function.BasePruningFunc

    class Conv1DPruner(base):  # type: ignore[misc, valid-type]
        """Output features are the weight's columns, input features its rows."""

        def prune_out_channels(self, layer: Any, idxs: Sequence[int]) -> Any:
            keep = _keep(layer.weight.shape[1], idxs)
            layer.weight = self._prune_parameter_and_grad(layer.weight, keep, 1)
            if layer.bias is not None:
                layer.bias = self._prune_parameter_and_grad(layer.bias, keep, 0)
            layer.nf = len(keep)
            return layer

        def prune_in_channels(self, layer: Any, idxs: Sequence[int]) -> Any:
            layer.weight = self._prune_parameter_and_grad(layer.weight, _keep(layer.weight.shape[0], idxs), 0)
            return layer

        def get_out_channels(self, layer: Any) -> int:
            return int(layer.weight.shape[1])

        def get_in_channels(self, layer: Any) -> int:
            return int(layer.weight.shape[0])

    return Conv1DPruner


def _keep(width: int, idxs: Sequence[int]) -> list[int]:
    return sorted(set(range(width)) - set(idxs))


def has_conv1d(group: Any) -> bool:
    """Whether a dependency group passes a Conv1D."""
    return any(is_conv1d(dep.target.module) for dep, _ in group)


def magnitude(graph: Any, group: Any, p: int) -> torch.Tensor:
    """A group's channel importances as Torch-Pruning's ``GroupMagnitudeImportance(p)`` (its
    defaults: the mean over the group's layers, then divided by its mean), Conv1D included."""
    score = torch.zeros(len(group[0].idxs))
    parts = 0
    for i, (dep, idxs) in enumerate(group):
        layer: Any = dep.target.module
        if not is_layer(layer):
            continue
        weight = layer.weight.detach()
        out = graph.is_out_channel_pruning_fn(dep.handler)
        if is_conv1d(layer):  # (in, out): outputs are columns
            rows = weight.t() if out else weight
        else:
            rows = weight.flatten(1) if out else weight.transpose(0, 1).flatten(1)
        local = rows[list(idxs)].abs().pow(p).sum(1).float().cpu()
        score.index_add_(0, torch.tensor(group[i].root_idxs), local)  # (by the root's channel)
        parts += 1
    score /= max(parts, 1)
    return score / score.mean().clamp_min(1e-12)
