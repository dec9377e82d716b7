"""What a model holds: per-tensor sparsity, sizes and MACs, as text and HTML.

>>> from torch import nn
>>> r = report(nn.Linear(4, 2))
>>> r.params, r.nonzero <= r.params
(10, True)
"""

from __future__ import annotations

import html
import math
import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import torch
from torch import nn

from .errors import PruneError, shorten
from .evaluate import eval_mode
from .macs import MacCounter, enter, leave

#: How :attr:`Report.sparse_bytes` counts: the smallest lossless store of a sparse tensor.
SPARSE_FORMAT = "bitmask + nonzero values"


@dataclass(frozen=True)
class Row:
    """One parameter tensor of the model."""

    name: str
    module_type: str
    shape: tuple[int, ...]
    params: int
    nonzero: int
    dense_bytes: int
    sparse_bytes: int
    macs: int | None = None

    @property
    def sparsity(self) -> float:
        return 1 - self.nonzero / self.params if self.params else 0.0


@dataclass(frozen=True, repr=False)
class Report:
    """Per-tensor rows and model totals. ``str()`` is a table; notebooks show HTML."""

    rows: tuple[Row, ...]
    macs: int | None = None
    disk: str | None = None  # "on disk: X KiB dense → Y KiB compressed (Zx)" (report(..., disk=True))

    def with_macs(self, macs: tuple[int, dict[str, int]]) -> Report:
        """This report with MACs counted elsewhere (a :class:`~prune_magic.engine.macs.MacTap`'s),
        as :func:`report` would have put them: the total, and per weight its layer's."""
        total, per_layer = macs
        rows = tuple(
            replace(r, macs=per_layer.get(r.name.rpartition(".")[0]) if r.name.endswith(".weight") else None)
            for r in self.rows
        )
        return replace(self, rows=rows, macs=total)

    @property
    def params(self) -> int:
        return sum(r.params for r in self.rows)

    @property
    def nonzero(self) -> int:
        return sum(r.nonzero for r in self.rows)

    @property
    def sparsity(self) -> float:
        return 1 - self.nonzero / self.params if self.params else 0.0

    @property
    def dense_bytes(self) -> int:
        return sum(r.dense_bytes for r in self.rows)

    @property
    def sparse_bytes(self) -> int:
        """Bytes as a bitmask plus the nonzero values would store them (see SPARSE_FORMAT)."""
        return sum(r.sparse_bytes for r in self.rows)

    def row(self, name: str) -> Row:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(name)

    def summary(self) -> str:
        """One line with the totals."""
        text = (
            f"{self.params:,} params, {self.nonzero:,} nonzero ({self.sparsity:.1%} of all parameters zero); "
            f"{format_bytes(self.dense_bytes)} dense, {format_bytes(self.sparse_bytes)} as {SPARSE_FORMAT}"
        )
        if self.macs is not None:
            text += f"; {format_count(self.macs)} MACs per forward (zeros still cost MACs in dense kernels)"
        if self.disk is not None:
            text += f"; {self.disk}"
        return text

    def _table(self) -> list[tuple[str, ...]]:
        header: tuple[str, ...] = ("name", "type", "shape", "params", "nonzero", "sparsity")
        if self.macs is not None:
            header += ("MACs",)
        body = []
        for r in self.rows:
            cells: tuple[str, ...] = (
                r.name,
                r.module_type,
                "x".join(map(str, r.shape)) or "scalar",
                f"{r.params:,}",
                f"{r.nonzero:,}",
                f"{r.sparsity:.1%}",
            )
            if self.macs is not None:
                cells += (format_count(r.macs) if r.macs is not None else "",)
            body.append(cells)
        return [header, *body]

    def __repr__(self) -> str:
        return f"<Report: {self.summary()}>"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))

    def __str__(self) -> str:
        table = self._table()
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        right = {3, 4, 5, 6}
        lines = [
            "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
            for row in table
        ]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join([*lines, "", self.summary()])

    def _repr_html_(self) -> str:
        header, *body = self._table()
        head = "".join(f"<th>{html.escape(c)}</th>" for c in header)
        rows = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>" for cells in body
        )
        return (
            f"<table class='prune-magic-report'><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
            f"<p>{html.escape(self.summary())}</p>"
        )


def report(
    model: nn.Module,
    example_input: object = None,
    names: Sequence[str] | None = None,
    disk: bool = False,
    macs: tuple[int, dict[str, int]] | None = None,
) -> Report:
    """Measure ``model``: one row per parameter (or per name in ``names``), plus totals.

    With ``example_input`` (a tensor or a tuple of positional inputs), MACs per forward
    are counted with PyTorch's FLOP counter, in total and per layer. With ``disk=True``,
    the size of ``pm.save(model, path, compress=True)`` beside the dense tensors' (the
    model is compressed in memory to measure it). ``macs``: counts already made of this very
    model (a :class:`~prune_magic.engine.macs.MacTap`'s), used instead of counting again.
    """
    layer_macs: dict[str, int] = {}
    total_macs = None
    if macs is not None:
        total_macs, layer_macs = macs
    elif example_input is not None:
        total_macs, layer_macs = count_macs(model, example_input)
    modules = dict(model.named_modules())
    rows = []
    with torch.no_grad():
        for name, param in weights(model):
            if names is not None and name not in names:
                continue
            owner, _, attr = name.rpartition(".")
            codes = getattr(param, "qdata", param)  # torchao's int8 tensors keep their codes in qdata
            if codes.is_quantized:
                codes = codes.int_repr()
            numel = param.numel()
            nonzero = int(torch.count_nonzero(codes))
            size = codes.element_size()
            kind = type(modules[owner]).__name__
            rows.append(
                Row(
                    name=name,
                    module_type=kind if codes is param else f"{kind} ({codes.dtype})".replace("torch.", ""),
                    shape=tuple(param.shape),
                    params=numel,
                    nonzero=nonzero,
                    dense_bytes=numel * size,
                    sparse_bytes=math.ceil(numel / 8) + nonzero * size,
                    macs=layer_macs.get(owner) if attr == "weight" else None,
                )
            )
    return Report(tuple(rows), total_macs, disk_line(model) if disk else None)


def disk_line(model: nn.Module) -> str | None:
    """``on disk: X KiB dense → Y KiB compressed (Zx)``, from ``pm.save(compress=True)`` into
    memory; None for a model pm.save refuses (int8-quantized layers)."""
    import io

    from .saving import save

    try:
        return save(model, io.BytesIO(), compress=True).line()
    except PruneError:
        return None


def weights(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Parameters by name, and the weights and biases of torch.ao's quantized modules (not parameters).

    Quantized tensors come as they are (``tensor.dequantize()`` gives floats).
    """
    yield from model.named_parameters()  # each shared (tied) parameter once
    for owner, module in model.named_modules():
        prefix = f"{owner}." if owner else ""
        if hasattr(module, "_packed_params") and callable(getattr(module, "weight", None)):
            yield prefix + "weight", module.weight()
            bias = module.bias()
            if bias is not None:
                yield prefix + "bias", bias


def count_macs(model: nn.Module, example_input: object) -> tuple[int, dict[str, int]]:
    """Multiply-accumulates of one forward pass: the total and per module name (a module counts
    what its children do too).

    PyTorch's FLOP formulas (``torch.utils.flop_counter``) applied to every op of the pass, as
    its ``FlopCounterMode`` does, with lighter bookkeeping: a forward hook per module of this
    model instead of a module tracker that also follows backward (2-3x faster, same counts).
    """
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    counter = MacCounter()
    handles = []
    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_pre_hook(partial(enter, counter.inside, name)))
            handles.append(module.register_forward_hook(partial(leave, counter.inside)))
    try:
        with eval_mode(model), torch.no_grad(), _rejected(model, example_input, counter.inside), counter:
            model(*args)
    finally:
        for handle in handles:
            handle.remove()
    return counter.total // 2, {name: flops // 2 for name, flops in counter.per_module.items()}


def fits(model: nn.Module, example_input: object) -> None:
    """Run ``example_input`` through ``model`` once (no grad, eval mode); refuse an input that
    does not fit, naming the first layer that rejects it."""
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    with eval_mode(model), torch.no_grad(), _rejected(model, example_input):
        model(*args)


@contextmanager
def _rejected(model: nn.Module, example_input: object, running: list[str] | None = None) -> Iterator[None]:
    """Turn an error of the forward pass inside the block into a PruneError naming the
    innermost module that was running. ``running``: the names of the modules running now, kept
    by the caller's own hooks (the MAC counter has them); otherwise hooks here keep it."""
    handles = []
    if running is None:
        running = []
        for name, module in model.named_modules():
            if name:
                handles.append(module.register_forward_pre_hook(partial(enter, running, name)))
                handles.append(module.register_forward_hook(partial(leave, running)))
    try:
        yield
    except PruneError:
        raise
    except Exception as exc:
        inner = running[-1] if running else ""
        where = (
            f"{inner} ({type(model.get_submodule(inner)).__name__})"
            if inner
            else f"the model's own forward ({type(model).__name__})"
        )
        raise PruneError(
            f"the example input ({_shapes(example_input)}) does not fit the model: {where}"
            f" rejects it with {type(exc).__name__}: {shorten(str(exc), 200)};"
            " give one batch of what the model takes, e.g. x[:1]"
        ) from exc
    finally:
        for handle in handles:
            handle.remove()


def _shapes(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"shape {tuple(value.shape)}"
    if isinstance(value, tuple | list):
        return ", ".join(_shapes(v) for v in value[:4]) + (", ..." if len(value) > 4 else "")
    return type(value).__name__


@dataclass(frozen=True)
class Histogram:
    """Pre-binned magnitudes of one tensor: exact zeros apart, the rest on log-spaced bins."""

    zeros: int
    counts: tuple[int, ...]
    edges: tuple[float, ...]
    smallest_kept: float | None  # the smallest nonzero |w|: where a clip's cut now lies
    sampled: bool  # counts are from a 1/16 block sample of a large tensor


def histogram(tensor: torch.Tensor, bins: int = 50, exact_up_to: int = 1 << 20) -> Histogram:
    """Bin ``|tensor|`` for a plot (never hand plotting code the raw weights).

    Tensors larger than ``exact_up_to`` are sampled by blocks (every 16th block of 4096),
    which draws the same picture at a fraction of the cost.
    """
    flat = tensor.detach().reshape(-1)
    sampled = flat.numel() > exact_up_to
    if sampled:
        usable = flat[: flat.numel() // 4096 * 4096].view(-1, 4096)
        flat = usable[::16].reshape(-1)
    values = flat.abs().float().cpu()
    nonzero = values[values > 0]
    zeros = int(values.numel() - nonzero.numel())
    if not nonzero.numel():
        return Histogram(zeros, (), (), None, sampled)
    low, high = float(nonzero.min()), float(nonzero.max())
    edges = torch.logspace(math.log10(low * (1 - 1e-6)), math.log10(high * (1 + 1e-6)), bins + 1)
    counts = torch.histogram(nonzero, edges).hist
    return Histogram(zeros, tuple(int(c) for c in counts), tuple(float(e) for e in edges), low, sampled)


@dataclass(frozen=True)
class Timing:
    """Seconds per forward pass: the median and the middle half of the runs (quartiles)."""

    median: float
    low: float
    high: float
    runs: int

    def overlaps(self, other: Timing) -> bool:
        """Whether the two middle halves overlap: the difference is within the run-to-run noise."""
        return self.low <= other.high and other.low <= self.high


def timing(model: nn.Module, example_input: object, budget: float = 0.1, most: int = 1000) -> Timing:
    """Time forward passes of ``example_input`` (no grad): the median and quartiles.

    After one warm-up pass it times passes for about ``budget`` seconds, at least 3 and at most
    ``most``: a stable median for a model that runs in milliseconds. A model whose warm-up pass
    alone takes longer than ``budget`` is timed once more (a pass of seconds varies little;
    ViT-H/14 takes 3.5 s a pass on one CPU thread).
    """
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    times: list[float] = []
    with eval_mode(model), torch.no_grad():
        warm = time.perf_counter()
        model(*args)  # warm up
        least = 3 if time.perf_counter() - warm < budget else 1
        started = time.perf_counter()
        while len(times) < least or (time.perf_counter() - started < budget and len(times) < most):
            t = time.perf_counter()
            model(*args)
            times.append(time.perf_counter() - t)
    low, _, high = statistics.quantiles(times, n=4) if len(times) > 1 else (times[0],) * 3
    return Timing(statistics.median(times), low, high, len(times))


def latency(model: nn.Module, example_input: object, budget: float = 0.1) -> float:
    """Median seconds of one forward pass of ``example_input`` (no grad); see :func:`timing`."""
    return timing(model, example_input, budget).median


def format_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def format_count(n: float) -> str:
    """``1_234_567`` -> ``'1.23M'``."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.0f}"
