"""The ``quantize`` step: after pruning, fewer bits per weight.

- ``quantize int8``: dynamic int8 quantization of the selected Linear layers (weights
  stored as int8, activations quantized on the fly). Through torchao's ``quantize_`` when
  torchao is installed, else PyTorch's ``torch.ao.quantization`` API (``backend=`` picks
  one); the step's result says which ran. CPU inference only.
- ``quantize bits=N``: fake quantization of any model: each weight is rounded to one of
  the ``2^N - 1`` symmetric levels of its output channel (scale = max |w| of the channel
  / (2^(N-1) - 1)) and kept as a float, to show what N bits cost in accuracy before
  committing to a real low-bit format. Zeros stay zero, so a clip's sparsity survives.
- ``quantize codebook=K``: weight sharing (Deep Compression): K shared values per tensor by
  k-means, optionally trained (``finetune=E``); see :mod:`.codebook`. A compressed save
  stores the indices at ``ceil(log2 K)`` bits.

All are undoable: undo gives back the float model, bit for bit.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import math
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .codebook import apply_codebook
from .errors import PruneError
from .recipe import Step
from .report import disk_line
from .selection import Target
from .snapshot import ChildRecord, ModuleRecord, Record, TensorRecord
from .train import Training


@dataclass(frozen=True)
class Quantized:
    """What a quantize step did: sizes before and after, and how."""

    how: str  # "torchao Int8DynamicActivationInt8WeightConfig", "torch.ao quantize_dynamic", "fake 4-bit"
    layers: tuple[str, ...]
    size_before: int  # bytes: the serialized state_dict (int8) or the selected weights (bits=N)
    size_after: int
    also: str = ""  # codebook=K: the fine-tuning and the model's size on disk, compressed

    def line(self) -> str:
        from .report import format_bytes

        what = "state_dict" if self.how.startswith(("torchao", "torch.ao")) else "selected weights"
        before, after = self.size_before, self.size_after
        change = (
            f"{before / max(1, after):.1f}x smaller"
            if after <= before
            else f"{after / max(1, before):.1f}x larger: the quantized layers' scales and metadata outweigh"
            " what int8 saves on a model this small"
        )
        also = f"; {self.also}" if self.also else ""
        return f"{self.how} on {len(self.layers)} layers: {what} {format_bytes(before)} -> {format_bytes(after)} ({change}){also}"


def apply_quantize(
    model: nn.Module,
    step: Step,
    targets: Sequence[Target],
    records: list[Record],
    training: Training | None = None,
) -> Quantized:
    """Quantize ``targets`` as ``step`` says; append what changed to ``records``."""
    if "codebook" in step.options:
        layers, before, after, tuned = apply_codebook(model, step, targets, records, training)
        k = step.count("codebook")
        how = f"codebook of {k} shared values ({max(1, math.ceil(math.log2(k)))}-bit indices, k-means)"
        return Quantized(how, layers, before, after, "; ".join(filter(None, (tuned, disk_line(model)))))
    if "bits" in step.options:
        return _fake(step, targets, records, step.count("bits"))
    names = tuple(t.name.rpartition(".")[0] for t in targets if t.name.endswith("weight"))
    modules = {name: model.get_submodule(name) for name in names}
    linear = tuple(name for name, m in modules.items() if type(m) is nn.Linear)
    if not linear:
        raise PruneError(
            f"line {step.line}: quantize int8 quantizes Linear layers and the selection has none"
            " (for any layer type, try quantize bits=8)"
        )
    if any(p.device.type != "cpu" for name in linear for p in modules[name].parameters()):
        raise PruneError(
            f"line {step.line}: quantize int8 runs on the CPU; move the model first (model.cpu())"
        )
    backend = step.word("backend", "auto")
    if backend == "auto":
        backend = "torchao" if importlib.util.find_spec("torchao") else "torch"
    before = state_dict_bytes(model)
    how = (_torchao if backend == "torchao" else _torch_ao)(model, linear, records)
    return Quantized(how, linear, before, state_dict_bytes(model))


def state_dict_bytes(model: nn.Module) -> int:
    """The size of ``torch.save(model.state_dict())``: what a checkpoint of it takes."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


@contextmanager
def _quiet() -> Any:
    """torch.ao warns that it is deprecated and torchao logs the kernels it could not load."""
    loggers = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _torchao(model: nn.Module, names: tuple[str, ...], records: list[Record]) -> str:
    with _quiet():
        try:
            import torchao  # type: ignore[import-not-found, import-untyped, unused-ignore]
            from torchao.quantization import (  # type: ignore[import-not-found, import-untyped, unused-ignore]
                Int8DynamicActivationInt8WeightConfig,
                quantize_,
            )
        except ImportError as exc:
            raise PruneError(
                f"backend=torchao needs torchao ({exc}); pip install torchao, or use backend=torch"
            ) from None
        for name in names:  # the Linear keeps its place; its weight becomes an int8 tensor
            records.append(ModuleRecord.capture(name, model.get_submodule(name)))
        chosen = set(names)
        quantize_(model, Int8DynamicActivationInt8WeightConfig(), filter_fn=lambda m, fqn: fqn in chosen)
    return f"torchao {torchao.__version__} Int8DynamicActivationInt8WeightConfig"


def _torch_ao(model: nn.Module, names: tuple[str, ...], records: list[Record]) -> str:
    with _quiet():
        try:
            from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
            from torch.ao.quantization import default_dynamic_qconfig
        except ImportError as exc:  # torch says torch.ao.quantization will go (torchao replaces it)
            raise PruneError(
                f"quantize int8 needs torchao (pip install torchao) or torch.ao.quantization ({exc})"
            ) from None

        for name in names:
            float_linear = model.get_submodule(name)
            float_linear.qconfig = default_dynamic_qconfig  # type: ignore[assignment]
            try:
                quantized = DynamicLinear.from_float(float_linear)  # type: ignore[no-untyped-call]
            finally:
                del float_linear.qconfig
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, quantized)
            records.append(ChildRecord(name, float_linear))
    return "torch.ao dynamic int8 (torch.ao.nn.quantized.dynamic.Linear)"


@torch.no_grad()
def fake_quantize(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """``weight`` rounded to ``2^bits - 1`` symmetric levels per output channel (dim 0).

    >>> w = torch.tensor([[0.1, -0.4, 1.0], [0.0, 0.26, -0.3]])
    >>> fake_quantize(w, 3)  # levels -3..3 times max|w| / 3 of each row
    tensor([[ 0.0000, -0.3333,  1.0000],
            [ 0.0000,  0.3000, -0.3000]])
    """
    levels = 2 ** (bits - 1) - 1
    flat = (
        weight.detach().reshape(weight.shape[0], -1) if weight.dim() > 1 else weight.detach().reshape(1, -1)
    )
    scale = flat.abs().amax(dim=1, keepdim=True).float() / levels
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    rounded = torch.round(flat.float() / scale).clamp_(-levels, levels) * scale
    return rounded.to(weight.dtype).reshape(weight.shape)


def _fake(step: Step, targets: Sequence[Target], records: list[Record], bits: int) -> Quantized:
    before = after = 0
    for target in targets:
        param = target.param
        records.append(TensorRecord.copy_of(target.name, param))
        with torch.no_grad():
            param.copy_(fake_quantize(param, bits))
        channels = param.shape[0] if param.dim() > 1 else 1
        before += param.numel() * param.element_size()
        after += -(-param.numel() * bits // 8) + channels * 4  # the codes, and a float32 scale per channel
    return Quantized(f"fake {bits}-bit per-channel rounding", tuple(t.name for t in targets), before, after)
