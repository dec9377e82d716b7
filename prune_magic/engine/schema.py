"""What each recipe step takes: its options, their kinds and ranges, and how they combine.

The table the recipe parser (:mod:`.recipe`) checks every line against, and the help text of
each option (``%%prune?`` lists it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

OptionKind = Literal["fraction", "nonnegative", "positive", "count", "choice", "patterns", "ratio"]


@dataclass(frozen=True)
class Option:
    """How one ``key=value`` option of a step is read and checked."""

    kind: OptionKind
    help: str
    choices: tuple[str, ...] = ()
    low: int = 1  # counts: the smallest and largest whole numbers allowed
    high: int | None = None


@dataclass(frozen=True)
class StepSchema:
    """The options a step takes; ``one_of`` lists options of which exactly one is required."""

    help: str
    options: Mapping[str, Option]
    one_of: tuple[str, ...] = ()
    # option -> the option it only makes sense with (or "option=value": with that value)
    requires: Mapping[str, str] = field(default_factory=dict)
    # a bare word -> the option it stands for: ``quantize int8`` is ``quantize dtype=int8``
    words: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    # (option, value, other option): the two can't be combined
    conflicts: tuple[tuple[str, str, str], ...] = ()


_SELECT = {
    "layers": Option(
        "patterns",
        "comma-separated module names, globs (features.*) or types (Linear, Conv2d)",
    ),
    "exclude": Option("patterns", "the same kind of patterns, removed from the selection"),
}

_TRAIN = {
    "lr": Option("positive", "learning rate (default 0.001)"),
    "optimizer": Option("choice", "the torch optimizer (default adam)", ("adam", "sgd")),
    "seed": Option(
        "count", "seed of the shuffling and dropout, so a re-run trains the same (default 0)", low=0
    ),
}

SCHEMAS: Mapping[str, StepSchema] = {
    "clip": StepSchema(
        help="zero the weights of smallest magnitude |w|",
        options={
            "amount": Option("fraction", "fraction of weights to zero, 0 <= amount < 1 (0.8 or 80%)"),
            "nm": Option(
                "ratio",
                "N:M sparsity: exactly N zeros in every M consecutive input weights of each output (nm=2:4)",
            ),
            "threshold": Option("nonnegative", "zero every weight with |w| < threshold"),
            "sigma": Option("nonnegative", "per layer, threshold = sigma x std of the layer"),
            "scope": Option(
                "choice", "amount per layer, or one threshold over all layers", ("layer", "global")
            ),
            "by": Option(
                "choice",
                "rank by |w| (magnitude), by |w| x the input's activation norm per output row (wanda,"
                " Sun et al. 2023), or prune and update the kept weights layer by layer (sparsegpt, Frantar &"
                " Alistarh 2023); wanda and sparsegpt need data",
                ("magnitude", "wanda", "sparsegpt"),
            ),
            "blocksize": Option("count", "by=sparsegpt: columns pruned and updated together (default 128)"),
            "dampening": Option(
                "fraction", "by=sparsegpt: added to the Hessian's diagonal, x its mean (default 0.01)"
            ),
            "steps": Option("count", "reach amount gradually, over this many steps of a cubic schedule"),
            "finetune": Option("count", "epochs of training after each step, clipped weights kept at zero"),
            **_TRAIN,
            **_SELECT,
        },
        one_of=("amount", "threshold", "sigma", "nm"),
        requires={
            "scope": "amount",
            "by": "amount|nm",
            "blocksize": "by=sparsegpt",
            "dampening": "by=sparsegpt",
            "steps": "amount",
            "finetune": "amount",
            "lr": "finetune",
            "optimizer": "finetune",
            "seed": "finetune",
        },
        conflicts=(
            ("by", "wanda", "scope"),
            ("by", "wanda", "steps"),
            ("by", "sparsegpt", "scope"),
            ("by", "sparsegpt", "steps"),
            ("by", "sparsegpt", "finetune"),
        ),
    ),
    "finetune": StepSchema(
        help="train on the --train data with every clipped weight kept at zero",
        options={"epochs": Option("count", "passes over the training data"), **_TRAIN},
        one_of=("epochs",),
    ),
    "distill": StepSchema(
        help="train the pruned model to match its unpruned self (knowledge distillation, Hinton et al. 2015)",
        options={
            "epochs": Option("count", "passes over the training data"),
            "temperature": Option("positive", "softens both models' logits (default 2)"),
            "alpha": Option(
                "nonnegative", "weight of the hard-label loss beside the distillation loss (default 1)"
            ),
            **_TRAIN,
        },
        one_of=("epochs",),
    ),
    "quantize": StepSchema(
        help="int8: dynamic int8 Linear layers; bits=N: round weights to N bits per channel (fake"
        " quantization); codebook=K: K shared values per layer by k-means (Han et al. 2016)",
        options={
            "dtype": Option("choice", "int8: dynamic int8 quantization of Linear layers", ("int8",)),
            "bits": Option(
                "count", "round each weight to one of 2^N levels per output channel", low=2, high=16
            ),
            "codebook": Option(
                "count",
                "share K values per layer (k-means over its nonzero weights; a compressed save stores"
                " ceil(log2 K)-bit indices)",
                low=2,
                high=65536,
            ),
            "finetune": Option(
                "count", "epochs of training the shared values (codes and zeros kept), with codebook="
            ),
            **_TRAIN,
            "backend": Option(
                "choice",
                "int8 through torchao (auto: when installed) or torch.ao",
                ("auto", "torchao", "torch"),
            ),
            **_SELECT,
        },
        one_of=("dtype", "bits", "codebook"),
        requires={
            "backend": "dtype",
            "finetune": "codebook",
            "lr": "finetune",
            "optimizer": "finetune",
            "seed": "finetune",
        },
        words={"int8": ("dtype", "int8")},
    ),
    "structured": StepSchema(
        help="remove whole output channels (Conv) / neurons (Linear) and shrink the layers that use them",
        options={
            "amount": Option(
                "fraction", "fraction of each layer's output channels to remove, 0 <= amount < 1"
            ),
            "scope": Option(
                "choice", "the same share in every layer, or rank channels across layers", ("layer", "global")
            ),
            "importance": Option(
                "choice", "how channels are ranked", ("l1", "l2", "random", "taylor", "bn", "lamp")
            ),
            "round_to": Option("count", "keep channel counts a multiple of this (e.g. 8)"),
            "heads": Option(
                "fraction",
                "fraction of each transformer block's attention heads to remove, whole (Hugging Face"
                " self-attention; 0 by default: amount= prunes the MLPs)",
            ),
            **_SELECT,
        },
        one_of=("amount",),
    ),
}
