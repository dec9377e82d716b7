"""The user namespace, as the magics read it: names (``model``, ``trainer.model``) resolved
without eval, option expressions (``--data "(X, y)"``) and a recipe's ``{expr}`` evaluated,
and errors that name the nearest defined name.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import Any

from IPython.core.error import UsageError

_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_EXPAND = re.compile(r"\{([^{}]+)\}")


@dataclass
class Namespace:
    """A shell's ``user_ns`` (and its globals), and how many samples ``--data``'s accuracy reads."""

    names: dict[str, Any]
    globals: dict[str, Any]
    eval_samples: int | None = None

    def model(self, text: str) -> Any:
        import torch

        value = self.name(text, "MODEL")
        if not isinstance(value, torch.nn.Module):
            raise UsageError(
                f"{text} is a {type(value).__name__}, not an nn.Module{self._suggest(text, modules_only=True)}"
            )
        return value

    def name(self, text: str, role: str) -> Any:
        """Resolve ``name`` or ``name.attr.attr`` in the user namespace, without eval."""
        if not _NAME.fullmatch(text):
            raise UsageError(f"{role} must be a name such as model or trainer.model, not {text!r}")
        head, *attrs = text.split(".")
        if head not in self.names:
            raise UsageError(
                f"name {head!r} is not defined{self._suggest(head, modules_only=role == 'MODEL')}"
            )
        value = self.names[head]
        for i, attr in enumerate(attrs):
            if not hasattr(value, attr):
                from .engine.errors import did_you_mean

                owner = ".".join([head, *attrs[:i]])
                hint = did_you_mean(attr, [a for a in dir(value) if not a.startswith("_")])
                raise UsageError(f"{owner} has no attribute {attr!r}{hint}")
            value = getattr(value, attr)
        return value

    def _suggest(self, name: str, modules_only: bool) -> str:
        from .engine.errors import did_you_mean

        candidates = model_names(self.names) if modules_only else list(self.names)
        hint = did_you_mean(name, candidates)
        if hint or not modules_only:
            return hint
        return (
            f" (nn.Modules here: {', '.join(candidates[:8])})"
            if candidates
            else " (no nn.Module is defined yet)"
        )

    def evaluate(self, eval_fn: str | None, data_text: str | None, model: Any = None) -> tuple[Any, Any]:
        """The eval function and the data (for steps that need data) the options name.

        ``--data`` alone also gives the metric: built-in accuracy, or perplexity when the data
        is token ids for a causal language model; beside ``--eval`` it is only the steps' data.
        """
        if eval_fn:
            fn = self.name(eval_fn, "--eval")
            if not callable(fn):
                raise UsageError(
                    f"--eval {eval_fn} is a {type(fn).__name__}; give a function FN(model) -> float"
                )
            return fn, self.expression(data_text, "--data") if data_text else None
        if data_text:
            from .engine.errors import PruneError
            from .engine.evaluate import accuracy
            from .engine.language import perplexity, wants_perplexity

            data = self.expression(data_text, "--data")
            try:
                if model is not None and wants_perplexity(model, data):
                    return perplexity(data, self.eval_samples), data
            except PruneError as exc:
                raise UsageError(f"--data {data_text}: {exc} (--eval FN)") from None
            return accuracy(data, self.eval_samples), data
        return None, None

    def expression(self, text: str, option: str) -> Any:
        text = unquoted(text)
        try:
            return eval(text, self.globals, self.names)
        except Exception as exc:
            raise UsageError(f"{option} {text}: {type(exc).__name__}: {exc}") from None

    def expand(self, cell: str) -> str:
        """Replace ``{expr}`` in the recipe by its value in the namespace."""
        lines = cell.splitlines()
        for number, text in enumerate(lines, start=1):
            code = text.split("#", 1)[0]

            def value(match: re.Match[str], number: int = number) -> str:
                expr = match.group(1)
                try:
                    return str(eval(expr, self.globals, self.names))
                except Exception as exc:
                    raise UsageError(
                        f"line {number}: cannot expand {{{expr}}}: {type(exc).__name__}: {exc}"
                    ) from None

            lines[number - 1] = _EXPAND.sub(value, code) + text[len(code) :]
        return "\n".join(lines)


def model_names(namespace: dict[str, Any]) -> list[str]:
    """Names of the nn.Module instances in ``namespace`` (none before torch is imported)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return []
    return sorted(k for k, v in namespace.items() if not k.startswith("_") and isinstance(v, torch.nn.Module))


def unquoted(text: str) -> str:
    """An option's value without the quotes around it (magic_arguments keeps them)."""
    return text[1:-1] if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"" else text
