"""Tab completion for ``%%prune`` and ``%prune <subcommand>``: subcommands, then model names."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .namespace import model_names

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell


def completer(shell: InteractiveShell, subcommands: list[str]) -> Any:
    """A completion matcher for ``%%prune`` and ``%prune <subcommand>``: model names."""
    from IPython.core.completer import CompletionContext, SimpleCompletion, context_matcher

    @context_matcher()  # type: ignore[untyped-decorator]
    def prune_matcher(context: CompletionContext) -> dict[str, Any]:
        words = context.line_with_cursor[: context.cursor_position].split()
        if not words or words[0] not in ("%%prune", "%prune") or context.token.startswith("-"):
            return {"completions": []}
        ends_with_space = context.line_with_cursor[: context.cursor_position].endswith(" ")
        position = len(words) - (0 if ends_with_space else 1)  # which word the cursor is on
        if words[0] == "%prune" and position == 1:
            names, kind = subcommands, "subcommand"
        elif position == 1 or (words[0] == "%prune" and position == 2):
            names, kind = model_names(shell.user_ns), "model"
        else:
            return {"completions": []}
        matches = [SimpleCompletion(n, type=kind) for n in names if n.startswith(context.token)]
        return {"completions": matches, "suppress": True}

    return prune_matcher
