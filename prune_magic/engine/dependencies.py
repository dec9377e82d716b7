"""What depends on what: the model traced into Torch-Pruning's dependency graph, and the
groups of layers whose channels must go together.

Torch-Pruning (DepGraph) does the tracing and the coupling; around it, this module

- records what its trace cannot see: the sizes of concatenations its shape inference gives
  up on, and channel shuffles (a view that splits the channels into groups, to transpose
  them), which it would map as a flatten and divide by zero on;
- finds the layers to leave whole: the model's output layers, attention (heads and width
  are kept: ``nn.MultiheadAttention`` and the hand-written attention of timm, torchvision
  and Hugging Face, a module that counts its heads and reshapes its projections by head, so
  the MLPs between them shrink), groups that pass a channel shuffle, groups it cannot map;
- bounds the search: a group whose search does not end within :data:`GROUP_SECONDS` stops
  the step with a one-line refusal instead of a hang.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.metadata
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .conv1d import is_layer, pruners
from .errors import PruneError
from .evaluate import eval_mode

#: Seconds the search for one group's coupled layers may take (the largest torchvision and
#: timm models need well under one; a search that runs on is caught in a loop).
GROUP_SECONDS = 10.0


@dataclass(frozen=True)
class Kept:
    """A selected layer left whole, and why."""

    layer: str
    width: int
    why: str


class _Trace(TorchFunctionMode):
    """What the dependency graph's trace cannot see, by the output's grad_fn: the sizes of
    every ``torch.cat`` along its dim, and every channel shuffle (a view that splits the
    channels of an NCHW tensor into groups, to transpose them)."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: dict[Any, list[int]] = {}
        self.shuffles: set[Any] = set()

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if not isinstance(out, torch.Tensor) or out.grad_fn is None:
            return out
        if func in (torch.cat, torch.concat, torch.concatenate):
            tensors = args[0] if args else kwargs["tensors"]
            dim = args[1] if len(args) > 1 else (kwargs or {}).get("dim", 0)
            # an empty start tensor (a key-value cache) has fewer dims: it adds nothing
            if all(isinstance(t, torch.Tensor) for t in tensors):
                self.sizes[out.grad_fn] = [
                    int(t.shape[dim]) if -t.dim() <= dim < t.dim() else 0 for t in tensors
                ]
        elif func in _VIEWS and isinstance(args[0], torch.Tensor) and _regroups(args[0].shape, out.shape):
            # the same values through as_strided, which Torch-Pruning takes for an element-wise
            # op (it maps every view as a flatten, and divides by zero on this one); the groups
            # that pass here are left out of the plan
            x = args[0].contiguous()
            out = x.as_strided(out.shape, torch.empty(out.shape, device="meta").stride())
            self.shuffles.add(out.grad_fn)
        return out


def _regroups(before: torch.Size, after: torch.Size) -> bool:
    """Whether a view splits the channels of an NCHW tensor into groups, or merges them back
    (the two ends of a channel shuffle)."""
    if len(before) == 5 and len(after) == 4:
        before, after = after, before
    return len(before) == 4 and len(after) == 5 and after[1] * after[2] == before[1] > after[1] > 1


_VIEWS = (torch.Tensor.view, torch.Tensor.reshape, torch.reshape)


def trace(tp: Any, model: nn.Module, args: tuple[Any, ...]) -> tuple[Any, list[tuple[int, ...]]]:
    """Build the dependency graph; return it and the shapes of the outputs its trace saw (so
    no extra forward pass is needed for them)."""
    shapes: list[tuple[int, ...]] = []

    def forward(module: nn.Module, inputs: list[Any]) -> Any:
        # the output's tensors as a flat list: a ModelOutput, a tuple with a key-value cache
        # object in it or a dict are all the same to the trace
        out = outputs_of(module(*inputs))
        shapes[:] = [tuple(t.shape) for t in out]
        return out

    concat = tp.ops.OPTYPE.CONCAT
    hooks = {m: set(m._forward_hooks) for m in model.modules()}
    try:
        with eval_mode(model), torch.enable_grad(), _Trace() as recorded:
            graph = _graph_with_sizes(tp, recorded).build_dependency(
                model,
                example_inputs=list(args),
                forward_fn=forward,
                verbose=False,
                customized_pruners=pruners(tp, model),  # (transformers' Conv1D)
            )
    except BaseException:  # Torch-Pruning leaves its tracing hooks on the modules when a pass fails
        for module, kept in hooks.items():
            for key in set(module._forward_hooks) - kept:
                del module._forward_hooks[key]
        raise
    graph.shuffles = {n.module for n in graph.module2node.values() if n.grad_fn in recorded.shuffles}
    for node in graph.module2node.values():
        if node.type == concat and node.module.offsets is None and node.grad_fn in recorded.sizes:
            # Torch-Pruning's shape inference gave up on this cat: its sizes are known from
            # the trace, so map indices through it (its check against the consumer's width
            # fails when a flatten follows, which is what skipped it)
            _map_concat(node, recorded.sizes[node.grad_fn])
    return graph, shapes


#: The Torch-Pruning versions whose ``update_concat_index_mapping`` :func:`_map_concat` follows
#: (read again before the pin moves on; a test checks that the installed version is one of them).
CONCAT_MAPPING_VERSIONS = ((1, 6),)


@functools.cache
def torch_pruning_version() -> tuple[int, int]:
    """(major, minor) of the installed Torch-Pruning, from its metadata (its ``__version__``
    lags behind: 1.6.1 says 1.6.0)."""
    major, minor, *_ = importlib.metadata.version("torch-pruning").split(".")
    return int(major), int(minor)


def _map_concat(node: Any, sizes: list[int]) -> None:
    """Map channel indices through a cat whose input sizes the trace recorded.

    What Torch-Pruning's ``update_concat_index_mapping`` does once a cat's sizes are known,
    less its check of their sum against the width its shape inference finds downstream
    (a flatten after the cat fails that check, which is what left the cat unmapped). On a
    Torch-Pruning this does not follow, the cat stays unmapped: its layers are kept whole.
    """
    from torch_pruning.dependency import MAX_VALID_DIM, index_mapping

    node.module.concat_sizes = sizes
    if torch_pruning_version() not in CONCAT_MAPPING_VERSIONS:
        return
    dim = getattr(node.grad_fn, "_saved_dim", 1)
    if dim != 1 and dim < MAX_VALID_DIM:  # (a cat along another dimension than the channels)
        return
    offsets = [0]
    for size in sizes:
        offsets.append(offsets[-1] + size)
    node.module.offsets = offsets
    if not node.enable_index_mapping:
        return
    # the cat's dependencies on its inputs map back (reverse), each input's on the cat forward;
    # an input that comes twice (cat([x, x])) takes the next unaddressed dependency each time
    for reverse in (True, False):
        addressed: set[int] = set()
        for i, source in enumerate(node.inputs):
            deps, target = (node.dependencies, source) if reverse else (source.dependencies, node)
            for dep in deps:
                if id(dep) not in addressed and dep.target == target:
                    mapping = index_mapping._ConcatIndexMapping(offset=offsets[i : i + 2], reverse=reverse)
                    dep.index_mapping[1] = mapping
                    addressed.add(id(dep))
                    break


def _graph_with_sizes(tp: Any, recorded: _Trace) -> Any:
    """A dependency graph that knows every concatenation's input sizes from the trace before
    Torch-Pruning maps indices through it: where its shape inference cannot size an input (the
    strided slices of Swin-S/B's patch merging), it would otherwise add None to an int."""
    concat = tp.ops.OPTYPE.CONCAT

    class Graph(tp.DependencyGraph):  # type: ignore[misc]
        def _build_dependency(self, module2node: dict[Any, Any]) -> None:
            super()._build_dependency(module2node)  # (the nodes, before index mapping)
            for node in module2node.values():
                if node.type == concat and node.grad_fn in recorded.sizes:
                    node.module.concat_sizes = recorded.sizes[node.grad_fn]

    return Graph()


def output_layers(graph: Any) -> set[nn.Module]:
    """Layers whose outputs reach the model's output without passing another layer."""
    outputs = set()
    for module, node in graph.module2node.items():
        if not is_layer(module):
            continue
        stack, seen = list(node.outputs), set()
        while stack:
            nxt = stack.pop()
            if id(nxt) in seen:
                continue
            seen.add(id(nxt))
            if is_layer(nxt.module) or isinstance(nxt.module, nn.MultiheadAttention | nn.RNNBase):
                break
            stack.extend(nxt.outputs)
        else:
            outputs.add(module)
    return outputs


#: Attributes by which hand-written attention modules say how many heads they have.
_HEADS = ("num_heads", "num_attention_heads", "n_head", "n_heads", "num_key_value_groups", "head_dim")


def attention_modules(model: nn.Module) -> set[nn.Module | nn.Parameter]:
    """Multi-head attention, its projections and its own parameters (a Swin block's relative
    position bias table): heads and the embedding width are kept.

    Besides ``nn.MultiheadAttention``, any module that counts its heads in an attribute
    (timm's and torchvision's ``Attention``, Hugging Face's self-attention) reshapes its
    projections by head, so removing a channel there would break the reshape.
    """
    found: set[nn.Module | nn.Parameter] = set()
    for m in model.modules():
        if isinstance(m, nn.MultiheadAttention):
            found.update(m.modules())
        elif any(isinstance(getattr(m, a, None), int) for a in _HEADS):
            # the projections are its own children (a block that counts heads too, like
            # torchvision's EncoderBlock, holds attention and an MLP: the MLP may shrink)
            projections = [c for c in m.children() if is_layer(c)]
            found.update(sub for c in projections for sub in c.modules())
            found.update(p for p in m._parameters.values() if p is not None)
    return found


def _reaches(graph: Any, module: nn.Module, fn: Any, attention: set[nn.Module | nn.Parameter]) -> bool:
    """Whether removing ``module``'s output channels reaches attention, following the graph's
    dependencies without their index mappings (a bounded walk, where Torch-Pruning's own search
    through a Swin block's window reshapes does not end)."""
    start = graph.module2node[module]
    seen = {(start, fn)}
    stack = [(start, fn)]
    while stack:
        node, handler = stack.pop()
        for dep in node.dependencies:
            if dep.is_triggered_by(handler) and (dep.target, dep.handler) not in seen:
                if dep.target.module in attention:
                    return True
                seen.add((dep.target, dep.handler))
                stack.append((dep.target, dep.handler))
    return False


def groups(
    graph: Any,
    ignored: list[nn.Module],
    attention: set[nn.Module | nn.Parameter],
    names: dict[nn.Module, str],
) -> tuple[list[Any], list[Kept], list[Exception]]:
    """The dependency groups rooted at layers not ``ignored`` (as Torch-Pruning's
    ``get_all_groups``, which skips a group that would shrink an ignored layer's outputs), and
    the selected layers left whole: those whose channels pass a channel shuffle (reordered on
    the way) and those whose group Torch-Pruning cannot map. A group that reaches attention is
    left whole before Torch-Pruning searches it."""
    skip = {id(m) for m in ignored}
    seen: set[int] = set()
    groups, kept, errors = [], [], []
    with _Watchdog() as watchdog:
        for module in list(graph.module2node):
            pruner = graph.get_pruner_of_module(module) if is_layer(module) else None
            if (
                pruner is None
                or id(module) in skip
                or id(module) in seen
                or pruner.get_out_channels(module) is None
            ):
                continue
            width = pruner.get_out_channels(module)
            if attention and _reaches(graph, module, pruner.prune_out_channels, attention):
                continue
            try:
                with watchdog.limit(GROUP_SECONDS):
                    group = graph.get_pruning_group(module, pruner.prune_out_channels, list(range(width)))
            except _Overtime:
                raise PruneError(
                    f"structured pruning gave up: the search for the layers coupled to {names[module]} did not end"
                    f" within {GROUP_SECONDS:g} s (Torch-Pruning's index mapping loops through a reshape in this"
                    " model); select the layers to prune with layers= (e.g. the hidden layer of each MLP)"
                ) from None
            except Exception as exc:  # Torch-Pruning cannot map indices along the way
                seen.add(id(module))
                errors.append(exc)
                kept.append(
                    Kept(
                        names[module], width, f"Torch-Pruning cannot map their channels: {type(exc).__name__}"
                    )
                )
                continue
            outputs = [dep.target.module for dep, _ in group if graph.is_out_channel_pruning_fn(dep.handler)]
            seen.update(id(m) for m in outputs)
            if any(id(m) in skip for m in outputs) or any(dep.target.module in attention for dep, _ in group):
                continue
            if any(dep.target.module in graph.shuffles for dep, _ in group):
                kept.append(Kept(names[module], width, "channel shuffle"))
                continue
            groups.append(group)
    return groups, kept, errors


def channel_groups(graph: Any, group: Any) -> int:
    """The channel groups a dependency group must keep equal (a grouped convolution's, a
    GroupNorm's); a depthwise convolution follows its input channel by channel."""
    found = [1]
    for dep, _ in group:
        module = dep.target.module
        pruner = graph.get_pruner_of_module(module) if isinstance(module, nn.Module) else None
        if pruner is None or (
            isinstance(module, nn.modules.conv._ConvNd) and module.groups == module.out_channels
        ):
            continue
        out = graph.is_out_channel_pruning_fn(dep.handler)
        found.append((pruner.get_out_channel_groups if out else pruner.get_in_channel_groups)(module) or 1)
    return max(found)


def outputs_of(out: object) -> list[torch.Tensor]:
    """The tensors of a model's output: a tensor, or a tuple, list or dict (a ModelOutput) of them."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in outputs_of(v)]
    if isinstance(out, tuple | list):
        return [t for v in out for t in outputs_of(v)]
    return []


class _Overtime(BaseException):
    """Raised into a thread whose time is up (a BaseException: no ``except Exception`` in the
    code it interrupts swallows it)."""


class _Watchdog:
    """Raises :class:`_Overtime` into the thread that made it when a block runs past its limit.

    One watcher thread per search (not a timer per group: a model has hundreds of groups) sets
    the exception on the searching thread with ``PyThreadState_SetAsyncExc``, which Python
    raises at its next bytecode: unlike SIGALRM, this works off the main thread (the
    dashboard's worker) and leaves the user's signal handlers alone. Only for code that changes
    nothing, so stopping it anywhere is safe.
    """

    def __init__(self) -> None:
        self._target = threading.get_ident()
        self._lock = threading.Lock()
        self._deadline: float | None = None
        self._stopped = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="prune_magic-watchdog", daemon=True)

    def __enter__(self) -> _Watchdog:
        self._watcher.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._deadline = None
        self._stopped.set()

    @contextmanager
    def limit(self, seconds: float) -> Iterator[None]:
        """Raise :class:`_Overtime` if the block takes longer than ``seconds``."""
        with self._lock:
            self._deadline = time.monotonic() + seconds
        try:
            yield
        finally:
            with self._lock:  # disarmed under the lock: no exception can be set after this
                self._deadline = None

    def _watch(self) -> None:
        while not self._stopped.wait(0.05):
            with self._lock:
                if self._deadline is not None and time.monotonic() > self._deadline:
                    self._deadline = None
                    ctypes.pythonapi.PyThreadState_SetAsyncExc(
                        ctypes.c_ulong(self._target), ctypes.py_object(_Overtime)
                    )
