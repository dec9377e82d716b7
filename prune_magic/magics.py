"""The IPython layer: ``%%prune`` and ``%prune``. Parse, resolve names, call the engine, map errors.

Everything heavy (torch, matplotlib) is imported on the first use of a magic, not when
the extension loads.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NoReturn

from IPython.core.error import UsageError
from IPython.core.getipython import get_ipython
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import display
from IPython.utils.process import arg_split
from traitlets import Bool, Integer

if TYPE_CHECKING:
    from IPython.core.interactiveshell import ExecutionInfo, InteractiveShell

SUBCOMMANDS = {
    "undo": "undo the last step applied to MODEL (%prune undo MODEL N: the last N)",
    "reset": "undo every step: MODEL's weights as they were before prune_magic",
    "report": "per-layer table of MODEL (params, nonzero, sparsity, size, on disk compressed)",
    "history": "the steps applied to MODEL, with their sparsity and undo memory",
    "sensitivity": "prune one layer at a time at several levels; curves, and a per-layer budget",
    "explore": "one overall-sparsity slider spread over the layers by their sensitivity; Apply",
}

USAGE = "\n".join(
    [
        "%%prune MODEL [--eval FN] [--data DATA] [--train DATA] [--example-input EXPR] [-o NAME] [--dry-run]"
        " [--quiet]",
        "    (then the recipe, one step a line, e.g. `clip amount=0.8 scope=global`)",
        *(f"%prune {name} MODEL".ljust(24) + f"  {text}" for name, text in SUBCOMMANDS.items()),
        "%%prune? shows every option with examples.",
    ]
)

_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_EXPAND = re.compile(r"\{([^{}]+)\}")


@magics_class
class PruneMagics(Magics):
    """``%%prune``: prune a model of the namespace with a recipe, see what changed, undo."""

    eval_samples = Integer(
        10_000, help="At most this many samples are used by --data's built-in accuracy (0: all)."
    ).tag(config=True)
    short_errors = Bool(
        True, help="Show errors as one red line (UsageError); False shows the full traceback."
    ).tag(config=True)
    charts = Bool(True, help="Draw the per-layer sparsity chart in a %%prune cell's output.").tag(config=True)
    widgets = Bool(
        True, help="In a notebook kernel, show a live dashboard (sliders, undo) instead of a static output."
    ).tag(config=True)

    def __init__(self, shell: InteractiveShell | None = None, **kwargs: Any) -> None:
        super().__init__(shell=shell, **kwargs)
        self._cell_id: str | None = None
        self._matcher: Any = None
        if shell is not None:
            shell.events.register("pre_run_cell", self._pre_run_cell)
            shell.events.register("post_run_cell", self._post_run_cell)

    def _pre_run_cell(self, info: ExecutionInfo) -> None:
        self._cell_id = getattr(info, "cell_id", None)
        widgets = sys.modules.get("prune_magic.widgets")
        if widgets is not None:  # a dashboard may be re-pruning a model: let it finish first
            widgets.wait_for_updates()

    def _post_run_cell(self, result: Any) -> None:
        self._cell_id = None

    @magic_arguments()
    @argument(
        "model", help="the nn.Module to prune: a name in the namespace (dotted access allowed: trainer.model)"
    )
    @argument(
        "--eval",
        dest="eval_fn",
        metavar="FN",
        help="a callable FN(model) -> float or dict of floats, run before and after",
    )
    @argument(
        "--data",
        metavar="DATA",
        help="a DataLoader or an (X, y) pair: built-in top-1 accuracy before and after (unless --eval"
        " is given), and the calibration data of steps that need it (by=wanda, importance=taylor)",
    )
    @argument(
        "--train",
        metavar="DATA",
        help="a DataLoader or an (X, y) pair to train on (finetune, distill, clip ... finetune=)",
    )
    @argument("--loss", metavar="FN", help="the training loss FN(output, target) (default: cross-entropy)")
    @argument(
        "--example-input",
        metavar="EXPR",
        help="an input for the model (an expression): counts MACs, and traces the model for structured steps",
    )
    @argument("-o", "--output", metavar="NAME", help="store the result object in the namespace under NAME")
    @argument("--dry-run", action="store_true", help="show what the recipe would change, and change nothing")
    @argument("--quiet", action="store_true", help="show nothing (the result still goes to -o NAME)")
    @line_cell_magic
    def prune(self, line: str, cell: str | None = None) -> None:
        """Prune a model in place with a recipe, and show what changed.

        The cell body is the recipe, one step a line, ``#`` comments, ``{expr}``
        expanded from the namespace::

            %%prune model --data test_data
            clip amount=0.8 scope=global exclude=classifier

            %%prune net --eval evaluate --example-input x[:1]
            clip threshold={t}          # t from the namespace
            clip sigma=0.5 layers=features.*

            %%prune net --example-input x[:1] --data "(X_test, y_test)"
            structured amount=0.5 importance=l2 exclude=classifier

            %%prune model --data "(X_test, y_test)" --train "(X_train, y_train)"
            clip amount=0.9 scope=global
            distill epochs=2            # or: finetune epochs=2
            quantize int8

        Steps: ``clip`` (``threshold=``, ``amount=`` with ``scope=layer|global``, or
        ``sigma=``) zeroes the weights of smallest |w|; ``structured amount=`` removes
        whole channels/neurons (needs ``--example-input``). Both take ``layers=`` and
        ``exclude=`` (names, globs like ``features.*``, or types like ``Conv2d``).
        After pruning: ``finetune epochs=N``, ``distill epochs=N`` (the model before the
        cell teaches the pruned one) and ``clip amount=A steps=K finetune=E`` (gradual)
        train on ``--train``; ``quantize int8`` or ``quantize bits=N`` round the weights;
        ``quantize codebook=K finetune=E`` shares K values per layer (Deep Compression);
        ``clip amount=A by=wanda`` weighs |w| by the ``--data`` activations.

        Running the same cell again does not compound: it starts from the state the model
        had before that cell's previous run (as long as nothing else changed the model).

        As a line magic::

            %prune undo MODEL [N]  undo the last step (or the last N)
            %prune reset MODEL     back to the weights before any step
            %prune report MODEL    per-layer table
            %prune history MODEL   the steps applied so far
            %prune sensitivity MODEL --eval FN [--levels 0.1,0.3,0.5,0.7,0.9] [--step clip|structured]
                                   one layer at a time: curves and a per-layer budget recipe
            %prune explore MODEL --eval FN
                                   an overall-sparsity slider spread by sensitivity; Apply
        """
        with self._errors():
            if cell is None:
                self._line(line)
            else:
                self._cell(line, cell)

    def _cell(self, line: str, cell: str) -> None:
        try:
            args = parse_argstring(self.prune, line)
        except UsageError as exc:
            raise UsageError(_quote_hint(str(exc), line)) from None
        from . import engine
        from .engine.guard import check_model, check_untouched, versions

        model = self._model(args.model)
        check_model(model)  # (before the dashboard reads its weights)
        # the namespace's code ({expr}, --data ...) runs before the engine: it must not change the model
        before = versions(model)
        recipe = self._expand(cell)
        stopped = "the cell stopped before pruning, and what it changed stays"
        check_untouched(model, before, "expanding the recipe's {expr}", stopped)
        parsed = engine.parse_recipe(recipe)  # recipe errors first: before the namespace is searched further
        evaluate, data = self._evaluate(args)
        example = self._expression(args.example_input, "--example-input") if args.example_input else None
        train = self._expression(args.train, "--train") if args.train else None
        loss = self._name(args.loss, "--loss") if args.loss else None
        check_untouched(model, before, "an option's expression (--data, --example-input, --train)", stopped)
        tag = (
            f"cell:{self._cell_id}"
            if self._cell_id
            else "source:" + hashlib.sha1((line + "\n" + cell).encode()).hexdigest()
        )
        live = (
            self.widgets
            and not args.quiet
            and not args.dry_run
            and getattr(self.shell, "kernel", None) is not None
        )
        start = (
            _histograms(model) if live and self.charts else None
        )  # the weights before the cell, for the dashboard
        progress = _TrainingProgress()
        try:
            result = engine.prune(
                model, parsed, evaluate=evaluate, example_input=example, dry_run=args.dry_run, tag=tag,
                data=data, train=train, loss=loss, progress=None if args.quiet else progress,
                latency=parsed.removes_channels,
            )  # fmt: skip
        finally:
            progress.close()
        if args.output:
            self.shell.user_ns[args.output] = result
        if args.quiet:
            return
        from .widgets import PruneDashboard, PruneView, Rerun

        if live:
            rerun = Rerun(model, evaluate, example, data, tag, train, loss)
            display(PruneDashboard(result, args.model, rerun, charts=self.charts, start=start))
        else:
            display(PruneView(result, args.model, charts=self.charts))

    def _line(self, line: str) -> None:
        words = line.split()
        if not words:
            print(USAGE)
            return
        command, *rest = words
        if command not in SUBCOMMANDS:
            from .engine.errors import did_you_mean

            raise UsageError(
                f"unknown subcommand {command!r}{did_you_mean(command, SUBCOMMANDS)}"
                f" (subcommands: {', '.join(SUBCOMMANDS)}; a %%prune cell prunes)"
            )
        if command in ("sensitivity", "explore"):
            self._sensitivity(" ".join(rest), explore=command == "explore")
            return
        count = 1
        if command == "undo" and len(rest) == 2 and rest[1].isdigit() and int(rest[1]) >= 1:
            rest, count = rest[:1], int(rest[1])
        if len(rest) != 1:
            raise UsageError(f"usage: %prune {command} MODEL" + (" [N]" if command == "undo" else ""))
        from . import engine

        model = self._model(rest[0])
        if command == "undo":
            if count > len(engine.history(model)) > 0:
                raise UsageError(
                    f"only {len(engine.history(model))} step(s) to undo; %prune reset {rest[0]} undoes all"
                )
            for _ in range(count):
                entry = engine.undo(model)
                print(f"undid {entry.step!r}; {len(engine.history(model))} step(s) left")
        elif command == "reset":
            undone = engine.reset(model)
            print(f"reset {rest[0]}: undid {len(undone)} step(s)")
        elif command == "report":
            display(engine.report(model, disk=True))
        else:
            display(engine.history(model))

    def _sensitivity(self, line: str, explore: bool = False) -> None:
        args = _SWEEP.parse_args(arg_split(line, posix=True))
        from .engine.sensitivity import sensitivity
        from .widgets import SweepView

        model = self._model(args.model)
        evaluate, data = self._evaluate(args)
        if evaluate is None:
            raise UsageError("the sweep needs a metric: --eval FN or --data DATA")
        try:
            levels = [float(v) for v in args.levels.split(",")]
        except ValueError:
            raise UsageError(f"--levels {args.levels}: give amounts such as 0.1,0.3,0.5,0.7,0.9") from None
        example = self._expression(args.example_input, "--example-input") if args.example_input else None
        view = SweepView(None, args.model, args.tolerance, self.charts)  # type: ignore[arg-type]
        live = _LiveDisplay()
        result = sensitivity(
            model, evaluate, levels=levels, step=args.step, layers=_patterns(args.layers),
            exclude=_patterns(args.exclude), example_input=example, data=data,
            progress=lambda partial: live.show(view, partial),
        )  # fmt: skip
        view.result = result
        if args.output:
            self.shell.user_ns[args.output] = result
        if explore and getattr(self.shell, "kernel", None) is not None and result.complete:
            from .widgets import ExploreView, Rerun

            live.done(
                ExploreView(
                    result, args.model, Rerun(model, evaluate, example, data, f"explore:{args.model}")
                )
            )
            return
        live.done(view)

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Errors a user can fix become one line (unless short_errors is off)."""
        from .engine.errors import MESSAGE_LIMIT, PruneError, shorten

        try:
            yield
        except UsageError as exc:
            message = str(exc)
            if "\n" in message or len(message) > MESSAGE_LIMIT:  # one readable line, whatever it echoes
                raise UsageError(shorten(" ".join(message.split()), MESSAGE_LIMIT)) from None
            raise
        except Exception as exc:
            if not self.short_errors or not isinstance(exc, PruneError):
                raise
            raise UsageError(str(exc)) from None

    def _model(self, text: str) -> Any:
        import torch

        value = self._name(text, "MODEL")
        if not isinstance(value, torch.nn.Module):
            raise UsageError(
                f"{text} is a {type(value).__name__}, not an nn.Module{self._suggest(text, modules_only=True)}"
            )
        return value

    def _name(self, text: str, role: str) -> Any:
        """Resolve ``name`` or ``name.attr.attr`` in the user namespace, without eval."""
        if not _NAME.fullmatch(text):
            raise UsageError(f"{role} must be a name such as model or trainer.model, not {text!r}")
        head, *attrs = text.split(".")
        if head not in self.shell.user_ns:
            raise UsageError(
                f"name {head!r} is not defined{self._suggest(head, modules_only=role == 'MODEL')}"
            )
        value = self.shell.user_ns[head]
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

        candidates = model_names(self.shell.user_ns) if modules_only else list(self.shell.user_ns)
        hint = did_you_mean(name, candidates)
        if hint or not modules_only:
            return hint
        return (
            f" (nn.Modules here: {', '.join(candidates[:8])})"
            if candidates
            else " (no nn.Module is defined yet)"
        )

    def _evaluate(self, args: Any) -> tuple[Any, Any]:
        """The eval function and the data (for steps that need data) the options name.

        ``--data`` alone also gives the metric (built-in accuracy); beside ``--eval`` it is
        only the steps' data.
        """
        if args.eval_fn:
            fn = self._name(args.eval_fn, "--eval")
            if not callable(fn):
                raise UsageError(
                    f"--eval {args.eval_fn} is a {type(fn).__name__}; give a function FN(model) -> float"
                )
            return fn, self._expression(args.data, "--data") if args.data else None
        if args.data:
            from .engine.evaluate import accuracy

            data = self._expression(args.data, "--data")
            return accuracy(data, self.eval_samples or None), data
        return None, None

    def _expression(self, text: str, option: str) -> Any:
        if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":  # magic_arguments keeps quotes
            text = text[1:-1]
        try:
            return eval(text, self.shell.user_global_ns, self.shell.user_ns)
        except Exception as exc:
            raise UsageError(f"{option} {text}: {type(exc).__name__}: {exc}") from None

    def _expand(self, cell: str) -> str:
        """Replace ``{expr}`` in the recipe by its value in the namespace."""
        lines = cell.splitlines()
        for number, text in enumerate(lines, start=1):
            code = text.split("#", 1)[0]

            def value(match: re.Match[str], number: int = number) -> str:
                expr = match.group(1)
                try:
                    return str(eval(expr, self.shell.user_global_ns, self.shell.user_ns))
                except Exception as exc:
                    raise UsageError(
                        f"line {number}: cannot expand {{{expr}}}: {type(exc).__name__}: {exc}"
                    ) from None

            lines[number - 1] = _EXPAND.sub(value, code) + text[len(code) :]
        return "\n".join(lines)


class _SweepParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        from .engine.errors import did_you_mean

        options = [o for action in self._actions for o in action.option_strings]
        unknown = re.findall(r"(--?[\w-]+)", message.partition("unrecognized arguments:")[2])
        hint = did_you_mean(unknown[0], options) if unknown else ""
        message = _quote_hint(message, message)
        raise UsageError(f"%prune sensitivity: {message}{hint} (options: {' '.join(options)})")


_SWEEP = _SweepParser(prog="%prune sensitivity", add_help=False)
_SWEEP.add_argument("model")
_SWEEP.add_argument("--eval", dest="eval_fn", metavar="FN")
_SWEEP.add_argument("--data", metavar="DATA")
_SWEEP.add_argument("--levels", default="0.1,0.3,0.5,0.7,0.9")
_SWEEP.add_argument("--step", choices=("clip", "structured"), default="clip")
_SWEEP.add_argument("--layers")
_SWEEP.add_argument("--exclude")
_SWEEP.add_argument("--example-input", metavar="EXPR")
_SWEEP.add_argument("--tolerance", type=float, default=0.01)
_SWEEP.add_argument("-o", "--output", metavar="NAME")


def _quote_hint(message: str, line: str) -> str:
    """An argparse error, with a hint when an unquoted expression was split at its spaces."""
    extra = message.partition("unrecognized arguments:")[2]
    if extra and any(c in extra or c in line for c in "()[]{},"):
        return (
            f'{message}: an option\'s value with spaces must be quoted, e.g. --data "(X_test, y_test)"'
            ' or --example-input "x[:1]"'
        )
    return message


def _patterns(text: str | None) -> list[str] | None:
    return [p.strip() for p in text.split(",") if p.strip()] if text else None


class _Live:
    """An output that updates in place while work runs: a display in a notebook, a ``\\r`` line elsewhere."""

    def __init__(self, every: float) -> None:
        self.handle: Any = None
        self.every, self.last, self.printed = every, 0.0, False
        self.kernel = "ipykernel" in sys.modules and getattr(get_ipython(), "kernel", None) is not None

    def due(self, now: bool = False) -> bool:
        """Whether to redraw: at most once every ``every`` seconds, unless ``now``."""
        tick = time.monotonic()
        if not now and tick - self.last < self.every:
            return False
        self.last = tick
        return True

    def line(self, text: str) -> None:
        print(f"\r{text}".ljust(100), end="", flush=True)
        self.printed = True

    def put(self, obj: Any, raw: bool = False) -> None:
        if self.handle is None:
            self.handle = display(obj, raw=raw, display_id=True)
        else:
            self.handle.update(obj, raw=raw)

    def end_line(self) -> None:
        if self.printed:
            print()
            self.printed = False


class _LiveDisplay(_Live):
    """Shows a sweep while it runs: its chart filling in (notebook) or a progress line."""

    def __init__(self) -> None:
        super().__init__(every=1.0)  # the chart fills in about once a second

    def show(self, view: Any, partial: Any) -> None:
        view.result, view.running = partial, True
        points = sum(m is not None for ms in partial.curves.values() for m in ms)
        total = len(partial.curves) * len(partial.levels)
        if not self.kernel:
            self.line(f"sensitivity [{'#' * (20 * points // total):<20}] {points}/{total} points")
        elif self.due():
            self.put(view)

    def done(self, view: Any) -> None:
        view.running = False
        self.end_line()
        if self.handle is None:
            display(view)
        else:
            self.handle.update(view)


class _TrainingProgress(_Live):
    """While a step trains: a progress bar that updates in place (notebook) or a progress line."""

    def __init__(self) -> None:
        super().__init__(every=0.5)

    def __call__(self, progress: Any) -> None:
        if not self.due(now=progress.point is not None):
            return
        from .widgets import _progress_text

        text = _progress_text(progress)
        if not self.kernel:
            self.line(text)
            return
        total = progress.total or progress.done
        bar = f"<progress value='{progress.done}' max='{total}'></progress> <code>{html.escape(text)}</code>"
        self.put({"text/html": bar, "text/plain": text}, raw=True)

    def close(self) -> None:
        """Take the bar away: the result shows the whole curve."""
        self.end_line()
        if self.handle is not None:
            self.handle.update({"text/plain": "", "text/html": ""}, raw=True)


def _histograms(model: Any) -> dict[str, Any]:
    """Magnitude histograms of the model's weights, by parameter name (int8 ones dequantized)."""
    from .engine.report import histogram
    from .widgets import _weight

    names = [name for name, _ in model.named_parameters() if name.endswith("weight")]
    return {name: histogram(_weight(model, name)) for name in names}


def model_names(namespace: dict[str, Any]) -> list[str]:
    """Names of the nn.Module instances in ``namespace`` (none before torch is imported)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return []
    return sorted(k for k, v in namespace.items() if not k.startswith("_") and isinstance(v, torch.nn.Module))


def completer(shell: InteractiveShell) -> Any:
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
            names, kind = list(SUBCOMMANDS), "subcommand"
        elif position == 1 or (words[0] == "%prune" and position == 2):
            names, kind = model_names(shell.user_ns), "model"
        else:
            return {"completions": []}
        matches = [SimpleCompletion(n, type=kind) for n in names if n.startswith(context.token)]
        return {"completions": matches, "suppress": True}

    return prune_matcher


def load(shell: InteractiveShell) -> None:
    """Register the magics, their options (``%config PruneMagics``) and tab completion."""
    magics = PruneMagics(shell=shell)
    shell.register_magics(magics)
    magics._matcher = completer(shell)
    shell.Completer.custom_matchers.append(magics._matcher)


def unload(shell: InteractiveShell) -> None:
    """Undo :func:`load`: ``%unload_ext`` and ``%reload_ext`` leave no trace behind."""
    magics = shell.magics_manager.registry.pop(PruneMagics.__name__, None)
    if isinstance(magics, PruneMagics):
        shell.events.unregister("pre_run_cell", magics._pre_run_cell)
        shell.events.unregister("post_run_cell", magics._post_run_cell)
        if magics._matcher in shell.Completer.custom_matchers:
            shell.Completer.custom_matchers.remove(magics._matcher)
    for kind in ("line", "cell"):
        shell.magics_manager.magics[kind].pop("prune", None)
