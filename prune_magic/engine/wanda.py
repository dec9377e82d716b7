"""``clip amount=A by=wanda``: pruning by weights and activations (Sun et al. 2023).

Wanda scores each weight of a Linear layer by ``|W_ij| * ||X_j||_2``, the magnitude
times the L2 norm of its input feature over a few calibration batches, and zeroes the
fraction A of lowest scores in every output row. A weight fed by a feature that is
large in the data is kept even when it is small, which matters in language-model-style
layers whose inputs have a few very large features. No retraining, no weight update.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .errors import PruneError
from .evaluate import eval_mode
from .language import inputs, is_linear, rows, run
from .nm import check_groups, nm_mask, zero_where
from .recipe import Step
from .selection import Target
from .snapshot import TensorRecord

SAMPLES = 256  # calibration samples (rows of the data) read from data=


@torch.no_grad()
def input_norms(
    model: nn.Module, names: Sequence[str], data: object, max_samples: int = SAMPLES
) -> dict[str, torch.Tensor]:
    """L2 norm of each input feature of the named Linear layers over ``max_samples`` samples of ``data``
    (rows of token ids, or the inputs of ``(X, y)`` batches)."""
    squares: dict[str, torch.Tensor] = {}

    def hook(name: str):  # type: ignore[no-untyped-def]
        def collect(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].detach()
            x = x.reshape(-1, x.shape[-1]).float()
            squares[name] = squares.get(name, 0) + (x * x).sum(dim=0)

        return collect

    handles = [model.get_submodule(name).register_forward_pre_hook(hook(name)) for name in names]
    seen = 0
    try:
        with eval_mode(model):
            for x in inputs(data, 128):
                if seen >= max_samples:
                    break
                x = x[: max_samples - seen]
                run(model, x)
                seen += len(x)
    finally:
        for handle in handles:
            handle.remove()
    missing = [name for name in names if name not in squares]
    if not seen or missing:
        raise PruneError(
            f"by=wanda saw no input reach {', '.join(missing) or 'any layer'}: the data= batches"
            " must run through the model"
        )
    return {name: squares[name].sqrt() for name in names}


@torch.no_grad()
def wanda_mask(weight: torch.Tensor, norms: torch.Tensor, amount: float) -> torch.Tensor:
    """True where Wanda zeroes: the ``round(amount * in_features)`` lowest scores of each row.

    Ties are broken by position (the first in the row goes first).
    """
    score = weight.detach().abs().float() * norms.to(weight.device).float()[None, :]
    k = round(amount * weight.shape[1])
    mask = torch.zeros(weight.shape, dtype=torch.bool, device=weight.device)
    if k:
        lowest = score.argsort(dim=1, stable=True)[:, :k]
        mask.scatter_(1, lowest, True)
    return mask


@torch.no_grad()
def apply_wanda(
    model: nn.Module, step: Step, targets: Sequence[Target], records: list[TensorRecord] | None, data: object
) -> int:
    """Zero the fraction ``amount`` of each output row of every target by Wanda's score (or, with
    ``nm=N:M``, the N lowest scores of every M consecutive inputs)."""
    layers = linear_layers(model, step, targets)
    if data is None:
        raise PruneError(f"line {step.line}: by=wanda needs calibration data: pass data= (--data in %%prune)")
    ratio = check_groups(step, model, targets) if "nm" in step.options else None
    norms = input_norms(model, list(dict.fromkeys(layers.values())), data)
    zeros = 0
    for target in targets:
        module = model.get_submodule(layers[target.name])
        weight = rows(module, target.param)
        if ratio is None:
            where = wanda_mask(weight, norms[layers[target.name]], step.number("amount"))
        else:
            score = weight.abs().float() * norms[layers[target.name]].to(weight.device).float()[None, :]
            where = nm_mask(score, *ratio)
        zero_where(target, where.t() if weight is not target.param else where, records)
        zeros += int(torch.count_nonzero(target.param == 0))
    return zeros


def linear_layers(model: nn.Module, step: Step, targets: Sequence[Target]) -> dict[str, str]:
    """Each target's layer name, refused unless every target is a Linear (or Conv1D) weight."""
    layers = {t.name: t.name.rpartition(".")[0] for t in targets}
    wrong = [
        name
        for name, owner in layers.items()
        if not name.endswith("weight") or not is_linear(model.get_submodule(owner))
    ]
    if wrong:
        raise PruneError(
            f"line {step.line}: by={step.word('by')} prunes Linear weights only, not {', '.join(wrong[:3])}"
            f" (select Linear layers with layers=Linear, or drop by={step.word('by')})"
        )
    return layers
