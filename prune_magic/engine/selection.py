"""Which tensors a step works on: the one layer selector of the engine.

A pattern in ``layers=`` or ``exclude=`` is one of

- a module type name (``Linear``, ``Conv2d``, ``BatchNorm2d``): the ``weight`` of every
  module of that type;
- a module name (``fc1``, ``features.0``) or a glob over names (``features.*``): the
  weights of the Linear and ConvNd layers it names, or of the layer itself when named
  exactly (so ``bn1`` or ``embed`` selects a norm layer or an embedding);
- a parameter name (``fc1.bias``, ``*.bias``): that parameter.

With no ``layers=``, every Linear and ConvNd weight is selected. Biases, norm layers and
embeddings are only selected when named. A tensor shared by several modules (tied
weights) is selected once, under its first name.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from torch import nn

from .errors import SelectionError, did_you_mean

#: Layer types whose weights are selected when no ``layers=`` is given.
DEFAULT_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.modules.conv._ConvNd)


@dataclass(frozen=True)
class Target:
    """A parameter chosen by a step, under its name in ``model.named_parameters()``."""

    name: str
    module_type: str
    param: nn.Parameter

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.param.shape)


def select(
    model: nn.Module,
    layers: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> list[Target]:
    """Return the targets named by ``layers`` minus those named by ``exclude``.

    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> [t.name for t in select(model, exclude=["2"])]
    ['0.weight']
    """
    candidates: dict[int, Target] = {}
    defaults: dict[int, str] = {}
    for target, default in _all_targets(model):
        candidates[id(target.param)] = target
        if default:
            defaults[id(target.param)] = target.name
    chosen = _match_all(model, layers, "layers") if layers else defaults
    if exclude:
        for key in _match_all(model, exclude, "exclude"):
            chosen.pop(key, None)
    if not chosen:
        raise SelectionError(
            "the selection is empty: no weights left after layers=/exclude="
            if layers or exclude
            else "the model has no Linear or Conv layers; name the layers to prune with layers="
        )
    targets = [candidates[key] for key in candidates if key in chosen]
    for target in targets:
        if not target.param.is_floating_point():
            raise SelectionError(f"{target.name} is {target.param.dtype}; only float weights can be clipped")
    return targets


def _all_targets(model: nn.Module) -> Iterator[tuple[Target, bool]]:
    """Every parameter, in ``model.named_parameters()`` order and under the same names
    (tied ones once), with whether it is selected by default (a Linear or ConvNd weight)."""
    seen: set[int] = set()
    for owner, module in model.named_modules():
        default = isinstance(module, DEFAULT_TYPES)
        kind = type(module).__name__
        for attr, param in module._parameters.items():
            if param is None or id(param) in seen:
                continue
            seen.add(id(param))
            name = f"{owner}.{attr}" if owner else attr
            yield Target(name, kind, param), default and attr == "weight"


def _match_all(model: nn.Module, patterns: Sequence[str], option: str) -> dict[int, str]:
    matched: dict[int, str] = {}
    for pattern in patterns:
        found = _match(model, pattern)
        if not found:
            raise SelectionError(_no_match_message(model, pattern, option))
        matched.update(found)
    return matched


def _match(model: nn.Module, pattern: str) -> dict[int, str]:
    """Parameters one pattern names, as {id(param): name}."""
    params = dict(model.named_parameters(remove_duplicate=False))
    attr = pattern.rpartition(".")[2]
    param_attrs = {n.rpartition(".")[2] for n in params}
    if "." in pattern and attr in param_attrs:  # a parameter pattern: fc1.bias, *.bias
        return {id(p): n for n, p in params.items() if fnmatchcase(n, pattern)}
    found: dict[int, str] = {}
    exact = not any(c in pattern for c in "*?[")
    for mname, module in model.named_modules():
        by_type = type(module).__name__ == pattern
        by_name = mname == pattern if exact else bool(mname) and fnmatchcase(mname, pattern)
        if not (by_type or by_name):
            continue
        named = by_type or exact
        for pname, param in module.named_parameters(prefix=mname, remove_duplicate=False):
            owner, _, pattr = pname.rpartition(".")
            if pattr != "weight":
                continue
            if (named and owner == mname) or isinstance(model.get_submodule(owner), DEFAULT_TYPES):
                found[id(param)] = pname
    return found


def _no_match_message(model: nn.Module, pattern: str, option: str) -> str:
    names = [n for n, _ in model.named_modules() if n]
    types = sorted({type(m).__name__ for m in model.modules()})
    params = [n for n, _ in model.named_parameters()]
    weighted = [n.rpartition(".")[0] for n in params if n.endswith(".weight")]
    hint = did_you_mean(pattern, [*names, *types, *params])
    shown = ", ".join(weighted[:8]) + (", ..." if len(weighted) > 8 else "")
    if pattern in names or pattern in types:
        return f"{option}={pattern} names a module with no weights to prune (layers with weights: {shown})"
    return f"{option}={pattern} matches no layer{hint} (layers with weights: {shown})"
