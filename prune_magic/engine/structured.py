"""The ``structured`` step: remove whole output channels and neurons, for real.

Clipping leaves zeros in dense tensors, so nothing gets smaller or faster. Structured
pruning deletes whole output channels (Conv) or neurons (Linear), and with them every
slice that depends on them: the BatchNorm entries, the next layer's inputs, the other
branch of a residual addition, the channels of a concatenation, the columns of a
flattened Linear. Torch-Pruning's dependency graph (DepGraph) finds those couplings;
this module chooses what to remove, records how to put it back, and checks the result.

What depends on what, and which layers stay whole (outputs, attention, channel shuffles,
groups Torch-Pruning cannot map), is :mod:`.dependencies`' job. Here: the channels each
group loses (a grouped convolution loses the same positions from every group, as
Torch-Pruning's own ``MetaPruner`` does), the undo record (every module that holds tensors,
by reference, kept where the surgery replaced something) and the forward check after.

A channel ``amount`` of 0.5 removes about 75% of a conv stack's parameters: each layer
loses half its outputs and the next half its inputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import heads as attention_heads
from .conv1d import has_conv1d, is_layer, magnitude
from .dependencies import Kept, attention_modules, channel_groups, groups, output_layers, outputs_of, trace
from .errors import PruneError, shorten
from .evaluate import eval_mode, first_batch
from .language import is_conv1d
from .model_config import config_of, fixed_by_config, heads_note, layer_widths, unsaid_widths, update_config
from .recipe import Step
from .report import fits
from .selection import Target
from .snapshot import ModuleRecord, Record, restore_all

#: Importances of a channel, by recipe name; "taylor" needs data for one backward pass.
IMPORTANCES = ("l1", "l2", "random", "taylor", "bn", "lamp")


@dataclass(frozen=True)
class Removal:
    """The output channels removed from one layer (the root of a dependency group)."""

    layer: str
    width: int
    removed: tuple[int, ...]
    why_kept: str = ""  # a selected layer left whole: why (e.g. "channel shuffle")
    unit: str = "channels"  # or "heads": an attention block's heads (``layer`` counts them)
    note: str = ""  # what to know about the result (e.g. what from_pretrained cannot rebuild)

    @property
    def kept(self) -> int:
        return self.width - len(self.removed)


def apply_structured(
    model: nn.Module,
    step: Step,
    targets: Sequence[Target],
    example_input: object,
    records: list[Any] | None,
    data: object = None,
) -> list[Removal]:
    """Remove channels from the layers of ``targets`` as ``step`` says; return what went.

    Every module the step changes is captured in ``records`` before it changes.
    """
    if example_input is None:
        raise PruneError(
            "structured pruning needs an example input to trace the model: "
            "pass example_input= (or --example-input in a %%prune cell)"
        )
    tp = _torch_pruning()
    args = _inputs(example_input)
    try:
        plan = _plan(tp, model, step, targets, args, data)
    except PruneError:
        raise
    except Exception as exc:  # Torch-Pruning could not follow the graph: nothing has changed yet
        fits(model, example_input)  # or the input does not fit the model: say where it is rejected
        raise PruneError(_unsupported(tp, model, exc)) from exc
    # The undo record: every module that holds tensors, by reference (no copies). Torch-Pruning
    # replaces tensors it cuts, including bare Parameters a block owns (a ConvNeXt layer scale,
    # a ViT class token), so whatever it touches is in here; untouched modules are dropped after.
    # The attention blocks that lose heads change their counts, and a Hugging Face config its fields.
    counting = {cut.attention.name for cut in plan.heads}
    captured: list[Record] = [
        ModuleRecord.capture(n, m)
        for n, m in model.named_modules()
        if m._parameters or m._buffers or n in counting
    ]
    start = len(records) if records is not None else 0
    if records is not None:
        records.extend(captured)
    try:
        widths = layer_widths(model)
        _remove(plan, model)
        for cut in plan.heads:
            attention_heads.remove(model, cut)
        fields = update_config(model, plan.heads, plan.blocks, widths)
        if fields is not None:
            captured.append(fields)
            if records is not None:
                records.append(fields)
        check_forward(model, example_input, plan.shapes)
    except BaseException:
        if records is None:  # no caller to roll back: put the model back here
            restore_all(model, captured)
        raise
    changed = [
        r for r in captured if not isinstance(r, ModuleRecord) or r.differs_from(model.get_submodule(r.name))
    ]
    if records is not None:
        records[start:] = changed
    for record in changed:  # Torch-Pruning makes new Parameters: keep requires_grad
        if isinstance(record, ModuleRecord):
            module = model.get_submodule(record.name)
            for key, old in record.tensors.items():
                new = module._parameters.get(key)
                if new is not None and old is not None and new is not old:
                    new.requires_grad_(old.requires_grad)
            record.park(module)
    unsaid = unsaid_widths(model, widths)
    removed = [Removal(root, width, idxs, note=unsaid) for root, _, idxs, width in plan.removals]
    for c in plan.heads:
        note = heads_note(config_of(model), c.attention)
        removed.append(Removal(c.attention.name, c.attention.heads, c.heads, unit="heads", note=note))
    return removed + [Removal(k.layer, k.width, (), k.why) for k in plan.kept]


def _remove(plan: _Plan, model: nn.Module) -> None:
    """Prune the planned groups one after another (Torch-Pruning keeps the index mappings of
    concatenations and splits up to date as channels go, so the graph is traced once)."""
    for root, handler, idxs, _ in plan.removals:
        try:
            plan.graph.get_pruning_group(model.get_submodule(root), handler, list(idxs)).prune()
        except Exception as exc:
            raise PruneError(
                f"Torch-Pruning failed to remove channels of {root} ({type(exc).__name__}: {_first_line(exc)});"
                f" exclude={root} or select other layers with layers="
            ) from exc


@dataclass
class _Plan:
    graph: Any
    shapes: list[tuple[int, ...]]  # of the model's outputs, seen while tracing
    removals: list[tuple[str, Any, tuple[int, ...], int]]  # (root layer, handler, channels, width)
    kept: list[Kept]  # selected layers left whole, and why
    heads: list[attention_heads.HeadCut]  # the attention heads removed
    blocks: int  # self-attention blocks whose heads could go (all of them: the config follows)


def _plan(
    tp: Any, model: nn.Module, step: Step, targets: Sequence[Target], args: tuple[Any, ...], data: object
) -> _Plan:
    """Trace the model, find the groups of the selected layers and the channels each loses."""
    names = {m: n for n, m in model.named_modules()}
    roots = {t.name.rpartition(".")[0] for t in targets if t.name.endswith(".weight")}
    _refuse_reparametrized(targets)
    graph, shapes = trace(tp, model, args)
    attention = attention_modules(model)
    protected = output_layers(graph) | attention
    ignored = [m for n, m in model.named_modules() if is_layer(m) and (n not in roots or m in protected)]
    found, kept, errors = groups(graph, ignored, attention, names)
    blocks, cuts = attention_heads.choose(
        model, step.number("heads", 0.0), step.word("importance", "l2"), roots, kept
    )
    scores: list[torch.Tensor] = []
    if found:  # a group Torch-Pruning mapped wrong shows when scored (indices past a layer's end)
        scored = _scores(tp, step.word("importance", "l2"), found, model, data, graph)
        for g, score in zip(found, scored, strict=True):
            if isinstance(score, Exception):
                errors.append(score)
                root = g[0].dep.target.module
                why = f"Torch-Pruning cannot map their channels: {type(score).__name__}"
                kept.append(Kept(names[root], len(g[0].idxs), why))
        found = [g for g, score in zip(found, scored, strict=True) if not isinstance(score, Exception)]
        scores = [score for score in scored if not isinstance(score, Exception)]
    found, scores = fixed_by_config(model, found, scores, kept, names)
    order = {name: i for i, name in enumerate(names.values())}
    kept.sort(key=lambda r: order[r.layer])
    if not found and not cuts and errors:  # no group could be mapped: say why
        raise PruneError(_unsupported(tp, model, errors[0]))
    if not found and not cuts:
        raise PruneError(
            "nothing to prune structurally: the selected layers are the model's output layer,"
            " attention, or coupled to them; select hidden layers with layers="
        )
    # a grouped convolution keeps equal groups: one score per position within a group, averaged
    # over the groups, and the same positions go from every group (as Torch-Pruning's MetaPruner)
    split = [channel_groups(graph, g) for g in found]
    per_group = [s.view(n, -1).mean(0) for s, n in zip(scores, split, strict=True)]
    counts = _counts(
        per_group,
        step.number("amount"),
        step.word("scope", "layer"),
        step.count("round_to", 1),
    )
    removals = []
    for g, s, n, c in zip(found, per_group, split, counts, strict=True):
        if c:
            chosen = s.argsort()[:c]
            idxs = torch.cat([chosen + i * len(s) for i in range(n)])
            removals.append(
                (names[g[0].dep.target.module], g[0].dep.handler, tuple(sorted(idxs.tolist())), len(s) * n)
            )
    return _Plan(graph, shapes, removals, kept, cuts, blocks)


def _refuse_reparametrized(targets: Sequence[Target]) -> None:
    """Layers whose weight is computed from other tensors (torch.nn.utils.prune's mask, a
    parametrization) cannot lose channels: the computation would still make the old shape."""
    masked = [t.name.removesuffix(".weight_orig") for t in targets if t.name.endswith(".weight_orig")]
    parametrized = [
        t.name.partition(".parametrizations.")[0] for t in targets if ".parametrizations." in t.name
    ]
    if masked:
        raise PruneError(
            f"structured pruning cannot remove channels of {', '.join(masked[:3])}: its weight is"
            " torch.nn.utils.prune's weight_orig * weight_mask; make it plain first with"
            " torch.nn.utils.prune.remove(layer, 'weight'), or exclude= it"
        )
    if parametrized:
        raise PruneError(
            f"structured pruning cannot remove channels of {', '.join(sorted(set(parametrized))[:3])}: its"
            " weight is computed by a parametrization (weight_norm, spectral_norm, ...); make it plain first"
            " with torch.nn.utils.parametrize.remove_parametrizations(layer, 'weight'), or exclude= it"
        )


def _unsupported(tp: Any, model: nn.Module, exc: Exception) -> str:
    """A one-line message for a graph Torch-Pruning cannot handle, naming the layers it has no rule for."""
    strange = [  # layers with weights that Torch-Pruning takes for parameter-free element-wise ops
        f"{name} ({type(m).__name__})"
        for name, m in model.named_modules()
        if name
        and any(True for _ in m.parameters(recurse=False))
        and tp.ops.module2type(m) == tp.ops.OPTYPE.ELEMENTWISE
        and not is_conv1d(m)
    ]
    said = f"Torch-Pruning raised {type(exc).__name__}: {_first_line(exc)}"
    more = f" and {len(strange) - 3} more" if len(strange) > 3 else ""
    where = f" (it has no rule for {', '.join(strange[:3])}{more})" if strange else ""
    return (
        f"structured pruning cannot follow this model's graph{where}: {said}; "
        "exclude= the layers that feed those, or select others with layers="
    )


def _torch_pruning() -> Any:
    try:
        import torch_pruning
    except ImportError:  # pragma: no cover - a declared dependency
        raise PruneError("structured pruning needs torch-pruning: pip install torch-pruning") from None
    return torch_pruning


def _scores(
    tp: Any, name: str, groups: list[Any], model: nn.Module, data: object, graph: Any
) -> list[torch.Tensor | Exception]:
    """Each group's channel importances, or the error Torch-Pruning raised scoring it."""
    imp = tp.importance
    importance: Callable[[Any], torch.Tensor | None] = {
        "l1": lambda: imp.GroupMagnitudeImportance(p=1),
        "l2": lambda: imp.GroupMagnitudeImportance(p=2),
        "random": lambda: imp.RandomImportance(),
        "taylor": lambda: imp.GroupTaylorImportance(),
        "bn": lambda: imp.BNScaleImportance(),
        "lamp": lambda: imp.LAMPImportance(p=2),
    }[name]()
    saved = {p: p.grad for p in model.parameters()}
    try:
        if name == "taylor":
            _loss_gradients(model, data)
        with torch.no_grad():
            scores = [
                _score(importance, g) if not has_conv1d(g) else _conv1d_score(name, graph, g) for g in groups
            ]
    finally:
        for p, grad in saved.items():
            p.grad = grad
    if any(s is None for s in scores):
        raise PruneError(
            f"importance={name} cannot score every selected layer"
            + (" (it needs a BatchNorm after each pruned layer)" if name == "bn" else "")
            + "; use importance=l2"
        )
    return [s.detach().float().cpu() if isinstance(s, torch.Tensor) else s for s in scores if s is not None]


def _conv1d_score(name: str, graph: Any, group: Any) -> torch.Tensor:
    """Torch-Pruning's importances skip layers it has no rule for: Conv1D groups are scored here."""
    if name == "random":
        return torch.rand(len(group[0].idxs))
    if name not in ("l1", "l2"):
        raise PruneError(
            f"importance={name} cannot score transformers' Conv1D layers (GPT-2); use importance=l2"
        )
    return magnitude(graph, group, 1 if name == "l1" else 2)


def _score(importance: Callable[[Any], torch.Tensor | None], group: Any) -> torch.Tensor | Exception | None:
    try:
        return importance(group)
    except (IndexError, RuntimeError) as exc:  # the group's indices run past a layer's channels
        return exc


def _loss_gradients(model: nn.Module, data: object) -> None:
    """One backward pass of the cross-entropy on the first batch of ``data`` (for Taylor)."""
    if data is None:
        raise PruneError(
            "importance=taylor needs data for one backward pass: pass data= (or --data in a cell)"
        )
    inputs, targets = first_batch(data, model)
    model.zero_grad(set_to_none=True)
    with eval_mode(model), torch.enable_grad():  # no BatchNorm statistics change
        logits = _logits(model(inputs))
        if logits.dim() == 3 and targets.dim() == 2:  # a language model: one class per token
            logits, targets = logits.flatten(0, 1), targets.flatten()
        torch.autograd.backward(nn.functional.cross_entropy(logits, targets))


def _logits(out: object) -> torch.Tensor:
    """The logits of a model's output: a tensor, a ModelOutput's ``logits``, or its first tensor."""
    logits = out.get("logits") if isinstance(out, dict) else None
    if isinstance(logits, torch.Tensor):
        return logits
    tensors = outputs_of(out)
    if not tensors:
        raise PruneError("importance=taylor needs a model that returns a tensor of logits; use importance=l2")
    return tensors[0]


def _counts(scores: list[torch.Tensor], amount: float, scope: str, round_to: int) -> list[int]:
    """How many channels each group loses: a share of its own, or by a global ranking."""
    widths = [len(s) for s in scores]
    if scope == "global":
        everything = torch.cat(scores)
        k = round(amount * len(everything))
        cut = float(everything.kthvalue(k).values) if k else -math.inf
        wanted = [int((s <= cut).sum()) for s in scores]
    else:
        wanted = [round(amount * w) for w in widths]
    counts = []
    for width, want in zip(widths, wanted, strict=True):
        keep = max(width - want, 1)
        keep = min(width, -(-keep // round_to) * round_to)  # a multiple of round_to, rounded up
        counts.append(width - keep)
    return counts


def _inputs(example_input: object) -> tuple[Any, ...]:
    return example_input if isinstance(example_input, tuple) else (example_input,)


def check_forward(model: nn.Module, example_input: object, expected: list[tuple[int, ...]]) -> None:
    """Run the example input; raise a PruneError naming the layer that fails, or a changed output."""
    names = {m: n for n, m in model.named_modules()}
    entered: list[nn.Module] = []

    def leave(module: nn.Module, args: Any, out: Any) -> None:  # a hook that returns None keeps the output
        entered.pop()

    handles = [
        h
        for m in model.modules()
        for h in (
            m.register_forward_pre_hook(lambda mod, args: entered.append(mod)),
            m.register_forward_hook(leave),
        )
    ]
    try:
        with eval_mode(model), torch.no_grad():
            out = model(*_inputs(example_input))
    except Exception as exc:
        where = entered[-1] if entered else model
        first = _first_line(exc)
        raise PruneError(
            f"after removing channels the model fails in {names.get(where) or 'the model'} ({type(where).__name__}):"
            f" {first}; this layer cannot follow pruned channels: exclude= the layers that feed it"
        ) from exc
    finally:
        for h in handles:
            h.remove()
    shapes = [tuple(t.shape) for t in outputs_of(out)]
    if shapes != expected:
        raise PruneError(
            f"removing channels changed the model's output from {expected} to {shapes};"
            " exclude= the output layer"
        )


def _first_line(exc: BaseException, limit: int = 150) -> str:
    """The first line of an exception's message (or its type), shortened for a one-line error."""
    lines = str(exc).strip().splitlines()
    return shorten(lines[0], limit) if lines else type(exc).__name__
