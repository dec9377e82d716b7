"""Which tensors a step works on: the one layer selector of the engine.

A pattern in ``layers=`` or ``exclude=`` is one of

- a module type name (``Linear``, ``Conv2d``, ``LSTM``, ``BatchNorm2d``): the weights of
  every module of that type (an RNN's ``weight_ih_l0``, ``weight_hh_l0``, ... too);
- a module name (``fc1``, ``features.0``) or a glob over names (``features.*``): the
  weights of the Linear and ConvNd layers it names, or of the layer itself when named
  exactly (so ``bn1`` or ``embed`` selects a norm layer or an embedding);
- a parameter name (``fc1.bias``, ``*.bias``, or ``scale`` on the model itself): that parameter.

With no ``layers=``, every Linear (transformers' ``Conv1D`` included) and ConvNd weight is
selected, except in a language model: there only the projections inside its blocks are
(:mod:`.language`; a note says what was left out). Biases, norm layers, embeddings and RNNs
are only selected when named.

A weight stored in another form is selected through the tensor that holds its values:

- a layer under ``torch.nn.utils.prune`` through its ``weight_orig`` (the step keeps
  ``weight_mask`` in agreement: see :mod:`.reparam`);
- ``parametrizations.weight_norm`` through the direction ``original1`` (and the old
  ``weight_norm`` through ``weight_v``); spectral norm through ``original`` /
  ``weight_orig``: a zero there is a zero in the weight.

Any other parametrization (``orthogonal``, your own) computes the weight from its
``original``, so zeros there are not zeros in the weight: such a layer is skipped and
named with the reason, as are torch.ao's quantized layers and weights that are tensor
subclasses (torchao's int8 after ``quantize int8``).

Tied weights: a tensor shared by several layers (an ``Embedding`` and an output
``Linear``, say) is selected by default only if every layer that shares it is a Linear
or ConvNd, whatever order ``__init__`` assigned them in; naming any of the layers
selects it, excluding any of them excludes it. It is selected once, under its first name.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from .errors import SelectionError, did_you_mean, shorten
from .language import block_prefixes, in_blocks, is_conv1d, left_out_note

#: Layer types whose weights are selected when no ``layers=`` is given.
DEFAULT_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.modules.conv._ConvNd)

#: The dtypes a clip can work on (their bit patterns order like their magnitudes).
FLOAT_TYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

_RNN_WEIGHT = re.compile(r"weight_(ih|hh|hr)_l\d+(_reverse)?")


@dataclass(frozen=True)
class Target:
    """A parameter chosen by a step, under its name in ``model.named_parameters()``."""

    name: str
    module_type: str
    param: nn.Parameter

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.param.shape)


@dataclass
class _Scan:
    """Every parameter of a model, and what the selector knows about each."""

    candidates: dict[int, Target] = field(default_factory=dict)  # named_parameters order
    owners: dict[int, list[tuple[str, str, bool]]] = field(default_factory=dict)  # (layer, type, default)
    skipped: dict[str, tuple[str, str]] = field(default_factory=dict)  # layer -> (type, why not clipped)

    def skipped_by(self, patterns: Sequence[str] | None) -> dict[str, tuple[str, str]]:
        """The skipped layers that ``patterns`` name (all of them for no patterns)."""
        return {
            layer: (kind, why)
            for layer, (kind, why) in self.skipped.items()
            if not patterns or any(kind == p or fnmatchcase(layer, p) for p in patterns)
        }

    @property
    def defaults(self) -> dict[int, str]:
        return {
            key: self.candidates[key].name
            for key, owners in self.owners.items()
            if key in self.candidates and all(default for _, _, default in owners)
        }

    def language_defaults(self, blocks: tuple[str, ...]) -> tuple[dict[int, str], list[str]]:
        """The defaults inside a language model's blocks, and the default layers left out."""
        kept, left = {}, []
        for key, name in self.defaults.items():
            layers = [layer for layer, _, _ in self.owners[key]]
            if all(in_blocks(layer, blocks) for layer in layers):
                kept[key] = name
            else:
                left.append(layers[-1])
        return kept, left


def select(
    model: nn.Module,
    layers: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    blocks_only: bool = True,
) -> list[Target]:
    """Return the targets named by ``layers`` minus those named by ``exclude``.

    ``blocks_only``: a language model's default is its blocks' projections (a clip's); False
    gives every Linear and ConvNd weight, as for any model (a structured step's).

    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> [t.name for t in select(model, exclude=["2"])]
    ['0.weight']
    """
    scan = _scan(model)
    chosen = _match_all(model, scan, layers, "layers") if layers else _defaults(model, scan, blocks_only)
    if exclude:
        for key in _match_all(model, scan, exclude, "exclude"):
            chosen.pop(key, None)
    if not chosen:
        if layers or exclude:
            raise SelectionError("the selection is empty: no weights left after layers=/exclude=")
        if scan.skipped:
            raise SelectionError(f"nothing to clip by default: {_skipped_text(scan.skipped)}")
        raise SelectionError("the model has no Linear or Conv layers; name the layers to prune with layers=")
    targets = [scan.candidates[key] for key in scan.candidates if key in chosen]
    for target in targets:
        check_target(target)
    return targets


def _defaults(model: nn.Module, scan: _Scan, blocks_only: bool) -> dict[int, str]:
    blocks = block_prefixes(model) if blocks_only else ()
    return scan.language_defaults(blocks)[0] if blocks else scan.defaults


def check_target(target: Target) -> None:
    """Refuse a tensor a clip cannot change in place, naming it and the fix."""
    param = target.param
    if type(param) not in (nn.Parameter, torch.Tensor):
        raise SelectionError(f"{target.name} {_odd(param)}")
    if param.device.type == "meta":
        raise SelectionError(
            f"{target.name} is on the meta device (a shape without data); load the weights first"
        )
    if param.dtype not in FLOAT_TYPES:
        raise SelectionError(f"{target.name} is {param.dtype}; only float weights can be clipped")
    if not param.is_contiguous() and not _dense(param):
        raise SelectionError(
            f"{target.name} is a view with strides {param.stride()} that does not cover its memory densely"
            " (a slice?); give the layer a dense copy first, e.g. layer.weight ="
            " nn.Parameter(layer.weight.detach().contiguous())"
        )


def notes(
    model: nn.Module, targets: Sequence[Target], layers: Sequence[str] | None = None, blocks_only: bool = True
) -> list[str]:
    """What a careful user should know about a selection: layers skipped and why, tied weights.

    >>> from torch import nn
    >>> model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10))
    >>> model[1].weight = model[0].weight
    >>> notes(model, select(model, ["1"]))
    ['0.weight is shared by 0 (Embedding) and 1 (Linear) (tied weights): clipping it changes all of them']
    """
    scan = _scan(model)
    chosen = {id(t.param) for t in targets}
    out = []
    skipped = scan.skipped_by(layers)
    if skipped:
        out.append(f"skipped {_skipped_text(skipped)}")
    blocks = () if layers or not blocks_only else block_prefixes(model)
    if blocks:
        left = scan.language_defaults(blocks)[1]
        embeddings = [n for n, m in model.named_modules() if isinstance(m, nn.Embedding)]
        out.append(left_out_note(model, blocks, [*dict.fromkeys([*embeddings, *left])]))
    for key, owners in scan.owners.items():
        if len(owners) < 2 or key not in scan.candidates:
            continue
        name = scan.candidates[key].name
        shared = " and ".join(f"{layer} ({kind})" for layer, kind, _ in owners)
        if key in chosen:
            out.append(f"{name} is shared by {shared} (tied weights): clipping it changes all of them")
        elif not layers:
            out.append(
                f"{name} is shared by {shared} (tied weights): not clipped by default, as not every layer"
                f" sharing it is Linear/Conv; name one (layers={owners[-1][0]}) to clip it"
            )
    return out


def _odd(param: torch.Tensor) -> str:
    """Why a parameter that is not a plain tensor can't be clipped (after "its weight ...")."""
    return (
        f"is a {type(param).__name__}, a tensor subclass (torchao's int8 after `quantize int8`, say), not a"
        " plain float tensor; clip before quantizing (pm.undo the quantize step first)"
    )


def _skipped_text(skipped: dict[str, tuple[str, str]]) -> str:
    items = [f"{layer} ({why})" for layer, (_, why) in skipped.items()]
    return "; ".join(items[:4]) + (f"; and {len(items) - 4} more" if len(items) > 4 else "")


def _dense(tensor: torch.Tensor) -> bool:
    from .bits import is_dense  # (bits imports numpy: only where a view needs it)

    return is_dense(tensor)


def weight_names(module: nn.Module) -> list[str]:
    """The weights a module has, however stored: ``weight``, and an RNN's ``weight_ih_l0``, ...

    >>> from torch import nn
    >>> weight_names(nn.LSTM(2, 3))
    ['weight_ih_l0', 'weight_hh_l0']
    """
    names = [*module._parameters, *getattr(module, "parametrizations", {})]
    found: dict[str, None] = {}
    for name in names:
        for suffix in ("_orig", "_v", "_g"):  # torch.nn.utils.prune, spectral_norm, weight_norm
            if name.endswith(suffix):
                name = name.removesuffix(suffix)
                break
        if name == "weight" or _RNN_WEIGHT.fullmatch(name):
            found[name] = None
    return list(found)


def stored(module: nn.Module, weight: str) -> tuple[str, nn.Parameter] | str:
    """Where the values of ``module``'s ``weight`` live, as (attribute path, parameter), or
    why no tensor holds them so that a zero there is a zero in the weight."""
    params = module._parameters
    if parametrize.is_parametrized(module, weight):
        chain: Any = module.parametrizations[weight]  # type: ignore[index]
        kinds = [type(p).__name__ for p in chain]
        if kinds == ["_WeightNorm"]:  # weight = g * v / |v|: a zero in the direction v is a zero
            return f"parametrizations.{weight}.original1", chain.original1
        if kinds == ["_SpectralNorm"]:  # weight = original / sigma
            return f"parametrizations.{weight}.original", chain.original
        how = " and ".join(k.strip("_") for k in kinds)
        return (
            f"its {weight} is computed by its {how} parametrization, so zeros in its original are not zeros"
            " in the weight"
        )
    for attr in (weight, f"{weight}_orig", f"{weight}_v"):
        param = params.get(attr)
        if param is not None and (attr != f"{weight}_v" or f"{weight}_g" in params):
            if type(param) not in (nn.Parameter, torch.Tensor):
                return f"its {weight} {_odd(param)}"
            return attr, param
    return f"no {weight} parameter"


def _quantized(module: nn.Module) -> bool:
    """torch.ao's quantized layers: packed int8 weights, not parameters."""
    return type(module).__module__.startswith(("torch.ao.nn.quantized", "torch.nn.quantized")) and callable(
        getattr(module, "weight", None)
    )


def _scan(model: nn.Module) -> _Scan:
    scan = _Scan()
    for owner, module in model.named_modules():
        kind = type(module).__name__
        name = owner or kind
        if _quantized(module):
            scan.skipped[name] = (
                kind,
                "a torch.ao quantized layer: packed int8 weights, not parameters; prune the float model"
                " before quantizing",
            )
            continue
        for weight in weight_names(module):
            where = stored(module, weight)
            if isinstance(where, str):
                scan.skipped[name if weight == "weight" else f"{name}.{weight}"] = (kind, where)
                continue
            default = (isinstance(module, DEFAULT_TYPES) or is_conv1d(module)) and weight == "weight"
            scan.owners.setdefault(id(where[1]), []).append((name, kind, default))
    for name, param in model.named_parameters():
        owners = scan.owners.get(id(param))
        kind = owners[0][1] if owners else type(model.get_submodule(name.rpartition(".")[0])).__name__
        scan.candidates[id(param)] = Target(name, kind, param)
    return scan


def _match_all(model: nn.Module, scan: _Scan, patterns: Sequence[str], option: str) -> dict[int, str]:
    matched: dict[int, str] = {}
    for pattern in patterns:
        found = _match(model, pattern)
        if not found:
            raise SelectionError(_no_match_message(model, scan, pattern, option))
        matched.update(found)
    return matched


def _match(model: nn.Module, pattern: str) -> dict[int, str]:
    """Parameters one pattern names, as {id(param): name}."""
    params = dict(model.named_parameters(remove_duplicate=False))
    attr = pattern.rpartition(".")[2]
    param_attrs = {n.rpartition(".")[2] for n in params}
    if pattern in params or ("." in pattern and attr in param_attrs):  # fc1.bias, *.bias, scale
        return {id(p): n for n, p in params.items() if fnmatchcase(n, pattern)}
    found: dict[int, str] = {}
    exact = not any(c in pattern for c in "*?[")
    for mname, module in model.named_modules():
        by_type = type(module).__name__ == pattern or (pattern == "Linear" and is_conv1d(module))
        by_name = mname == pattern if exact else bool(mname) and fnmatchcase(mname, pattern)
        if not (by_type or by_name):
            continue
        named = by_type or exact
        for dname, inner in module.named_modules(prefix=mname):
            if named and dname == mname:
                weights = weight_names(inner)  # the layer itself: every weight it has
            elif isinstance(inner, DEFAULT_TYPES) or is_conv1d(inner):
                weights = ["weight"]
            else:
                continue
            for weight in weights:
                where = stored(inner, weight)
                if not isinstance(where, str):
                    found[id(where[1])] = f"{dname}.{where[0]}" if dname else where[0]
    return found


def _no_match_message(model: nn.Module, scan: _Scan, pattern: str, option: str) -> str:
    names = [n for n, _ in model.named_modules() if n]
    types = sorted({type(m).__name__ for m in model.modules()})
    params = [n for n, _ in model.named_parameters()]
    weighted = list(dict.fromkeys(layer for owners in scan.owners.values() for layer, _, _ in owners))
    hint = did_you_mean(pattern, [*names, *types, *params])
    shown = ", ".join(weighted[:8]) + (", ..." if len(weighted) > 8 else "")
    echoed = shorten(pattern)
    skipped = scan.skipped_by([pattern])
    if skipped:
        return f"{option}={echoed}: cannot clip {_skipped_text(skipped)}"
    if pattern in names or pattern in types:
        return f"{option}={echoed} names a module with no weights to prune (layers with weights: {shown})"
    return f"{option}={echoed} matches no layer{hint} (layers with weights: {shown})"
