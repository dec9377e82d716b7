"""Models users bring, built from their libraries' own code (random weights, nothing downloaded),
and the checks a ``structured`` step must pass on each.

Used by ``tests/test_zoo.py`` (a sample of every family) and ``benchmarks/zoo.py`` (all of them,
side by side with Torch-Pruning alone). torchvision, timm and transformers are test dependencies;
a model whose library is missing is skipped by the test.
"""

from __future__ import annotations

import hashlib
import io
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

import prune_magic as pm

RECIPE = "structured amount=0.5"
#: Transformers lose attention heads too (T5's stay whole: the step says so).
HF_RECIPE = "structured amount=0.5 heads=0.5"
Build = Callable[[], nn.Module]


@dataclass(frozen=True)
class Zoo:
    """One model of the zoo: how to build it and an input it takes."""

    name: str
    family: str  # torchvision, torchvision-seg, timm, transformers
    build: Build
    shape: tuple[int, ...]  # of the example input
    tokens: int = 0  # > 0: the input is token ids below this vocabulary size
    decoder: bool = False  # an encoder-decoder: (input_ids, attention_mask, decoder_input_ids)
    recipe: str = RECIPE

    def example_input(self) -> Any:
        torch.manual_seed(0)
        if not self.tokens:
            return torch.randn(self.shape)
        ids = torch.randint(0, self.tokens, self.shape)
        return (ids, torch.ones_like(ids), ids) if self.decoder else ids

    def model(self) -> nn.Module:
        torch.manual_seed(0)
        return self.build().eval()


# ----------------------------------------------------------------------------- the catalogue


def torchvision() -> Any:
    """torchvision, importable beside a CPU torch although its wheel here is CUDA-linked: its
    compiled ops (only detection models use them) are declared, never run."""
    import torch

    try:
        import torchvision as tv
    except RuntimeError:  # "operator torchvision::nms does not exist"
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]  # the half-imported package: import it again below
        lib = torch.library.Library("torchvision", "DEF")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _KEEP.append(lib)
        import torchvision as tv
    return tv


_KEEP: list[Any] = []

# small inputs where the architecture allows them (fixed-size position embeddings or windows do not)
_TV_SIZE = {"inception_v3": 96, "googlenet": 64}
_TV_224 = ("vit_", "swin_", "maxvit_")


def _tv(name: str) -> Zoo:
    size = 224 if name.startswith(_TV_224) else _TV_SIZE.get(name, 64)

    def build() -> nn.Module:
        kwargs: dict[str, Any] = {"aux_logits": False, "init_weights": False} if name in _TV_SIZE else {}
        return torchvision().models.get_model(name, weights=None, **kwargs)

    return Zoo(name, "torchvision", build, (1, 3, size, size))


def _tv_seg(name: str) -> Zoo:
    def build() -> nn.Module:
        return torchvision().models.get_model(name, weights=None, weights_backbone=None, num_classes=21)

    return Zoo(name, "torchvision-seg", build, (1, 3, 64, 64))


def small_swin(version: int) -> Zoo:
    """torchvision's Swin (V1 or V2) at a small size: the same window attention and shifted
    windows as ``swin_t`` (whose check takes a minute), two stages of two blocks, 32x32 input."""

    def build() -> nn.Module:
        swin = torchvision().models.swin_transformer
        v2 = (
            {"block": swin.SwinTransformerBlockV2, "downsample_layer": swin.PatchMergingV2}
            if version == 2
            else {}
        )
        return swin.SwinTransformer(
            patch_size=[4, 4],
            embed_dim=32,
            depths=[2, 2],
            num_heads=[2, 4],
            window_size=[4, 4],
            num_classes=10,
            **v2,
        )

    return Zoo(f"swin_v{version}_small", "torchvision", build, (1, 3, 32, 32))


TIMM = {
    "resnet18": 64,
    "convnext_atto": 64,
    "regnety_002": 64,
    "efficientnet_b0": 64,
    "mobilenetv3_small_050": 64,
    "densenet121": 64,
    "vit_tiny_patch16_224": 224,
    "deit_tiny_patch16_224": 224,
    "swin_tiny_patch4_window7_224": 224,
    "mixer_s16_224": 224,
    "levit_128s": 224,
}


def _timm(name: str, size: int) -> Zoo:
    def build() -> nn.Module:
        import timm

        return timm.create_model(name, pretrained=False)

    return Zoo(f"timm/{name}", "timm", build, (1, 3, size, size))


def _hf(
    name: str, make: Callable[[Any], nn.Module], shape: tuple[int, ...], vocab: int = 0, decoder: bool = False
) -> Zoo:
    def build() -> nn.Module:
        import transformers

        return make(transformers)

    return Zoo(f"hf/{name}", "transformers", build, shape, vocab, decoder, HF_RECIPE)


HF = [
    _hf(
        "vit",
        lambda t: t.ViTForImageClassification(
            t.ViTConfig(
                hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                image_size=32, patch_size=8, num_labels=10,
            )
        ),
        (1, 3, 32, 32),
    ),
    _hf(
        "bert",
        lambda t: t.BertForSequenceClassification(
            t.BertConfig(
                vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=128, num_labels=3,
            )
        ),
        (1, 12), 100,
    ),
    _hf(
        "gpt2",
        lambda t: t.GPT2LMHeadModel(t.GPT2Config(vocab_size=100, n_embd=64, n_layer=2, n_head=4, n_positions=64)),
        (1, 12), 100,
    ),
    _hf(
        "llama",
        lambda t: t.LlamaForCausalLM(
            t.LlamaConfig(
                vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
            )
        ),
        (1, 12), 100,
    ),
    _hf(
        "t5",
        lambda t: t.T5ForConditionalGeneration(
            t.T5Config(
                vocab_size=100, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                decoder_start_token_id=0,
            )
        ),
        (1, 12), 100, True,
    ),
]  # fmt: skip


def catalogue() -> dict[str, Zoo]:
    """Every model of the zoo, by name: 80 torchvision classifiers, 3 segmentation models, 11 timm
    models and 5 Hugging Face transformers."""
    models = [_tv(n) for n in torchvision().models.list_models(module=torchvision().models)]
    models += [
        _tv_seg(n) for n in ("fcn_resnet50", "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large")
    ]
    models += [_timm(n, s) for n, s in TIMM.items()]
    models += HF
    return {z.name: z for z in models}


# ----------------------------------------------------------------------------- the checks


def tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer, by name, including ones a module holds directly."""
    return {
        **dict(model.named_buffers(remove_duplicate=False)),
        **dict(model.named_parameters(remove_duplicate=False)),
    }


def snapshot(model: nn.Module) -> dict[str, tuple[Any, ...]]:
    """Every tensor's identity, shape, dtype, requires_grad and a digest of its bits: what undo
    must give back (a digest, not a copy: a copy of ViT-H/14 alone is 2.5 GB)."""
    return {
        name: (id(t), tuple(t.shape), t.dtype, t.requires_grad, _digest(t))
        for name, t in tensors(model).items()
    }


def same(model: nn.Module, snap: dict[str, tuple[Any, ...]], identity: bool = False) -> list[str]:
    """Names of tensors that differ from ``snap`` (bits, shape, dtype, requires_grad; object too)."""
    now = snapshot(model)
    bad = sorted(now.keys() ^ snap.keys())
    for name in now.keys() & snap.keys():
        a, b = now[name], snap[name]
        if a[1:] != b[1:] or (identity and a[0] != b[0]):
            bad.append(name)
    return bad


def _digest(t: torch.Tensor) -> str:
    """BLAKE2 of the tensor's bytes, read in place where they are contiguous on the CPU."""
    data = t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy()
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def outputs(out: object) -> list[torch.Tensor]:
    """The tensors of a model's output: a tensor, a tuple/list/dict of them, a ModelOutput."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):  # a ModelOutput is an OrderedDict
        return [t for v in out.values() for t in outputs(v)]
    if isinstance(out, tuple | list):
        return [t for v in out for t in outputs(v)]
    return []


def call(model: nn.Module, x: Any) -> Any:
    """``model(x)``, or ``model(*x)`` for a tuple of inputs (as ``pm.prune``'s example_input)."""
    return model(*x) if isinstance(x, tuple) else model(x)


def forward(model: nn.Module, x: Any) -> list[torch.Tensor]:
    with torch.no_grad():
        return outputs(call(model, x))


class Eval:
    """An eval function that raises on its ``fail_at``-th call (to test the rollback)."""

    def __init__(self, fail_at: int = 0) -> None:
        self.calls, self.fail_at = 0, fail_at

    def __call__(self, model: nn.Module) -> float:
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("eval failed on purpose")
        return 0.0


@dataclass
class Outcome:
    """What happened to one model: ``ok``, ``refused`` (a clear one-line PruneError, the model
    as it was) or ``failed`` (anything else), with why and how long the prune took."""

    status: str
    why: str = ""
    seconds: float = 0.0  # the call as a user makes it (with the MAC and latency report)
    params: tuple[int, int] = (0, 0)
    bare: float = 0.0  # the same recipe again with report=False: the step alone


def settings(model: nn.Module) -> dict[str, Any]:
    """Every module's plain attributes (an attention block's head counts) and a Hugging Face
    config's fields: what undo must give back besides the tensors."""
    found: dict[str, Any] = {
        name: {k: v for k, v in vars(m).items() if isinstance(v, int | float | str | tuple | type(None))}
        for name, m in model.named_modules()
    }
    config = getattr(model, "config", None)
    if callable(getattr(config, "to_dict", None)):
        found["<config>"] = config.to_dict()  # type: ignore[union-attr]
    return found


def _settings_differ(model: nn.Module, before: dict[str, Any]) -> str:
    now = settings(model)
    return next((name for name in before.keys() | now.keys() if before.get(name) != now.get(name)), "")


def check(zoo: Zoo, recipe: str | None = None) -> Outcome:
    """Everything a user expects of ``structured`` on this model, in the order they meet it."""
    recipe = recipe or zoo.recipe
    model, x = zoo.model(), zoo.example_input()
    params = sum(p.numel() for p in model.parameters())
    start = snapshot(model)
    attrs = settings(model)
    shapes = [t.shape for t in forward(model, x)]

    try:  # a dry run changes nothing
        pm.prune(model, recipe, example_input=x, dry_run=True, report=False)
    except pm.PruneError as exc:
        return _refusal(model, start, exc)
    if bad := same(model, start, identity=True):
        return Outcome("failed", f"dry run left {len(bad)} tensors changed, e.g. {bad[0]}")
    if where := _settings_differ(model, attrs):
        return Outcome("failed", f"dry run left the attributes of {where} changed")

    try:  # a failure after the step rolls everything back
        pm.prune(model, recipe, example_input=x, evaluate=Eval(fail_at=2), report=False)
    except pm.PruneError:
        pass
    else:
        return Outcome("failed", "an eval function that raised did not stop the call")
    if bad := same(model, start, identity=True):
        return Outcome("failed", f"rollback left {len(bad)} tensors changed, e.g. {bad[0]}")
    if where := _settings_differ(model, attrs):
        return Outcome("failed", f"rollback left the attributes of {where} changed")

    started = time.perf_counter()
    pm.prune(model, recipe, example_input=x)  # as a user calls it: with the report
    seconds = time.perf_counter() - started
    after = sum(p.numel() for p in model.parameters())
    if after >= params:
        return Outcome("failed", "nothing was removed", seconds)
    pruned, pruned_attrs = snapshot(model), settings(model)
    if (got := [t.shape for t in forward(model, x)]) != shapes:
        return Outcome("failed", f"output shapes changed: {shapes} -> {got}", seconds)
    sum(t.float().sum() for t in outputs(call(model, x))).backward()  # in eval mode: no statistics move
    if missing := [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]:
        return Outcome("failed", f"no gradient reached {len(missing)} parameters, e.g. {missing[0]}", seconds)
    model.zero_grad(set_to_none=True)

    buffer = io.BytesIO()
    pm.save(model, buffer)
    buffer.seek(0)
    loaded = pm.load(buffer, lambda: zoo.model()).eval()
    for a, b in zip(forward(loaded, x), forward(model, x), strict=True):
        if not torch.equal(a, b):
            return Outcome("failed", "pm.load gave a model whose output differs", seconds)

    pm.undo(model)
    if bad := same(model, start, identity=True):
        return Outcome("failed", f"undo left {len(bad)} tensors changed, e.g. {bad[0]}", seconds)
    if where := _settings_differ(model, attrs):
        return Outcome("failed", f"undo left the attributes of {where} changed", seconds)
    started = time.perf_counter()
    pm.prune(model, recipe, example_input=x, report=False)  # the same recipe again: the same model
    bare = time.perf_counter() - started
    if bad := same(model, pruned):
        return Outcome("failed", f"pruning again gave another model ({bad[0]} differs)", seconds)
    if where := _settings_differ(model, pruned_attrs):
        return Outcome("failed", f"pruning again gave {where} other attributes", seconds)
    pm.reset(model)
    if bad := same(model, start, identity=True):
        return Outcome("failed", f"reset left {len(bad)} tensors changed, e.g. {bad[0]}", seconds)
    if where := _settings_differ(model, attrs):
        return Outcome("failed", f"reset left the attributes of {where} changed", seconds)
    return Outcome("ok", seconds=seconds, params=(params, after), bare=bare)


def _refusal(model: nn.Module, start: dict[str, tuple[Any, ...]], exc: Exception) -> Outcome:
    message = str(exc)
    if bad := same(model, start, identity=True):
        return Outcome("failed", f"refused ({message[:80]}) but left {len(bad)} tensors changed")
    if "\n" in message or len(message) > 400:
        return Outcome("failed", f"refused, but not in one readable line: {message[:120]!r}")
    return Outcome("refused", message)


# ----------------------------------------------------------------------------- Torch-Pruning alone


def torch_pruning_alone(zoo: Zoo, ratio: float = 0.5, model: nn.Module | None = None) -> Outcome:
    """Torch-Pruning's own ``MetaPruner`` (L2 magnitude) on the same model (or ``model``, a copy
    of it), the final layer ignored."""
    import torch_pruning as tp

    model, x = model if model is not None else zoo.model(), zoo.example_input()
    params = sum(p.numel() for p in model.parameters())
    shapes = [t.shape for t in forward(model, x)]
    ignored = final_layers(model, shapes)
    started = time.perf_counter()
    pruner = tp.pruner.MetaPruner(
        model,
        x,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=ratio,
        ignored_layers=ignored,
        output_transform=lambda out: sum(t.float().sum() for t in outputs(out)),
    )
    pruner.step()
    seconds = time.perf_counter() - started
    after = sum(p.numel() for p in model.parameters())
    if after >= params:
        return Outcome("failed", "nothing was removed", seconds)
    if (got := [t.shape for t in forward(model, x)]) != shapes:
        return Outcome("failed", f"output shapes changed: {shapes} -> {got}", seconds)
    sum(t.float().sum() for t in outputs(call(model, x))).backward()
    return Outcome("ok", seconds=seconds, params=(params, after))


def final_layers(model: nn.Module, shapes: list[torch.Size]) -> list[nn.Module]:
    """Layers whose output width is one of the model's output widths (the classifier, the LM head)."""
    widths = {s[1] if len(s) == 4 else s[-1] for s in shapes if len(s) >= 2}
    return [
        m
        for m in model.modules()
        if (isinstance(m, nn.Linear) and m.out_features in widths)
        or (isinstance(m, nn.Conv2d) and m.out_channels in widths)
    ]
