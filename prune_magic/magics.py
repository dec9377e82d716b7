"""The IPython layer: ``%%prune`` and ``%prune``. Parse, resolve names, call the engine, map errors.

Everything heavy (torch, matplotlib) is imported on the first use of a magic, not when
the extension loads.
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, magics_class
from IPython.core.magic_arguments import parse_argstring
from IPython.display import display
from traitlets import Bool, Integer

from .arguments import (
    DATA,
    EVAL,
    EXAMPLE_INPUT,
    OUTPUT,
    line_cell_magic_,
    option,
    options,
    sweep_options,
    usage,
)
from .completion import completer
from .namespace import unquoted

if TYPE_CHECKING:
    from IPython.core.interactiveshell import ExecutionInfo, InteractiveShell

    from .namespace import Namespace

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


@magics_class
class PruneMagics(Magics):
    """``%%prune``: prune a model of the namespace with a recipe, see what changed, undo."""

    eval_samples = Integer(
        10_000,
        help="At most this many samples (tokens, for perplexity) are used by --data's built-in metric (0: all).",
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
        worker = sys.modules.get("prune_magic.worker")
        if worker is not None:  # a dashboard may be re-pruning a model: let it finish first
            worker.wait_for_updates()

    def _post_run_cell(self, result: Any) -> None:
        self._cell_id = None
        widgets = sys.modules.get("prune_magic.widgets")
        if widgets is not None:  # the cell may have changed a model a dashboard shows (%prune undo, ...)
            widgets.sync_dashboards()
        explorer = sys.modules.get("prune_magic.explorer")
        if explorer is not None:  # ... or a model an explorer measured
            explorer.sync_explorers()

    @options()
    @option(
        "model", help="the nn.Module to prune: a name in the namespace (dotted access allowed: trainer.model)"
    )
    @EVAL
    @DATA
    @option(
        "--train",
        metavar="DATA",
        help="a DataLoader or an (X, y) pair to train on (finetune, distill, clip ... finetune=)",
    )
    @option("--loss", metavar="FN", help="the training loss FN(output, target) (default: cross-entropy)")
    @EXAMPLE_INPUT
    @OUTPUT
    @option("--dry-run", action="store_true", help="show what the recipe would change, and change nothing")
    @option("--quiet", action="store_true", help="show nothing (the result still goes to -o NAME)")
    @usage(
        "%%prune MODEL [--data DATA] [--eval FN] [--example-input EXPR] [--train DATA] [--loss FN]"
        " [-o NAME] [--dry-run] [--quiet]\n"
        "        (then the recipe, one step a line)"
    )
    @line_cell_magic_
    def prune(self, line: str, cell: str | None = None) -> None:
        """Prune a model in place with a recipe, and show what changed.

        Write the model's name after %%prune and the recipe below it, one step a line:

            %%prune model --data test_data
            clip amount=0.8 scope=global

        The cell shows what changed (parameters, sparsity, size, the metric before and
        after) and, in a notebook, sliders that re-apply the recipe with new values and
        Undo/Reset buttons. Running the cell again starts from the model as it was before
        the cell, so it does not prune twice.

        More recipes:

            %%prune net --eval evaluate --example-input x[:1]
            clip threshold={t}                  # {t}: a value from the notebook
            clip sigma=0.5 layers=features.*

            %%prune net --example-input x[:1] --data "(X_test, y_test)"
            structured amount=0.5 exclude=classifier

            %%prune model --data "(X_test, y_test)" --train "(X_train, y_train)"
            clip amount=0.9 scope=global
            finetune epochs=2                   # or: distill epochs=2
            quantize int8

        Steps:
          clip        zero the weights of smallest |w|: amount=0.8 (a share, per layer
                      or scope=global), threshold=0.01 or sigma=0.5; by=wanda weighs |w|
                      by the activations of --data; steps=K finetune=E prunes gradually
          structured  remove whole channels or neurons: amount=0.5 (needs --example-input)
          finetune    train for epochs=N on --train
          distill     train for epochs=N with the model before the cell as the teacher
          quantize    int8, bits=N, or codebook=K (K shared values per layer)
        Every step takes layers= and exclude= (names, globs like features.*, or types
        like Conv2d).

        Line magics:
          %prune undo MODEL [N]       undo the last step (or the last N)
          %prune reset MODEL          the weights before any step
          %prune report MODEL         a per-layer table
          %prune history MODEL        the steps applied so far
          %prune sensitivity MODEL --eval FN
                                      prune one layer at a time: curves and a budget
          %prune explore MODEL --eval FN
                                      one overall-sparsity slider; Apply
          %prune sensitivity MODEL --eval FN --executor CLIENT
                                      the points on a Dask cluster (CLIENT = Client(LocalCluster()))

        Options of %%prune:
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
        from .progress import TrainingProgress
        from .views import PruneView, weight_histograms

        model = self._namespace.model(args.model)
        check_model(model)  # (before the dashboard reads its weights)
        # the namespace's code ({expr}, --data ...) runs before the engine: it must not change the model
        before = versions(model)
        text = self._namespace.expand(cell)
        stopped = "the cell stopped before pruning, and what it changed stays"
        check_untouched(model, before, "expanding the recipe's {expr}", stopped)
        recipe = engine.parse_recipe(text)  # recipe errors first: before the namespace is searched further
        evaluate, data = self._namespace.evaluate(args.eval_fn, args.data, model)
        example = (
            self._namespace.expression(args.example_input, "--example-input") if args.example_input else None
        )
        train = self._namespace.expression(args.train, "--train") if args.train else None
        loss = self._namespace.name(args.loss, "--loss") if args.loss else None
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
            weight_histograms(model) if live and self.charts else None
        )  # the weights before the cell, for the dashboard
        progress = TrainingProgress()
        try:
            result = engine.prune(
                model, recipe, evaluate=evaluate, example_input=example, dry_run=args.dry_run, tag=tag,
                data=data, train=train, loss=loss, progress=None if args.quiet else progress,
                latency=recipe.removes_channels,
            )  # fmt: skip
        finally:
            progress.close()
        if args.output:
            self._user_ns[args.output] = result
        if args.quiet:
            return
        from .rerun import PruneCall
        from .widgets import PruneDashboard

        if live:
            rerun = PruneCall(model, evaluate, example, data, tag, train, loss)
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

        model = self._namespace.model(rest[0])
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
        args = _sweep_arguments(line)
        from .engine.sensitivity import sensitivity
        from .progress import SweepProgress
        from .views import SweepView

        model = self._namespace.model(args.model)
        evaluate, data = self._namespace.evaluate(args.eval_fn, args.data, model)
        if evaluate is None:
            raise UsageError("the sweep needs a metric: --eval FN or --data DATA")
        try:
            levels = [float(v) for v in unquoted(args.levels).split(",")]
        except ValueError:
            raise UsageError(f"--levels {args.levels}: give amounts such as 0.1,0.3,0.5,0.7,0.9") from None
        example = (
            self._namespace.expression(args.example_input, "--example-input") if args.example_input else None
        )
        executor = self._namespace.name(args.executor, "--executor") if args.executor else None
        if executor is not None and not callable(getattr(executor, "submit", None)):
            raise UsageError(f"--executor {args.executor}: give a dask.distributed.Client (or an executor)")
        live = SweepProgress(args.model, args.tolerance, self.charts)
        result = sensitivity(
            model, evaluate, levels=levels, step=args.step, layers=_patterns(args.layers),
            exclude=_patterns(args.exclude), example_input=example, data=data, executor=executor,
            progress=live.show,
        )  # fmt: skip
        if args.output:
            self._user_ns[args.output] = result
        if explore and getattr(self.shell, "kernel", None) is not None and result.complete:
            from .explorer import ExploreView
            from .rerun import PruneCall

            call = PruneCall(model, evaluate, example, data, f"explore:{args.model}")
            live.done(ExploreView(result, args.model, call))
            return
        live.done(SweepView(result, args.model, args.tolerance, self.charts))

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

    @property
    def _user_ns(self) -> dict[str, Any]:
        assert self.shell is not None  # (magics run in a shell)
        names: dict[str, Any] = self.shell.user_ns
        return names

    @property
    def _namespace(self) -> Namespace:
        """The user namespace, where the options' names and expressions are resolved."""
        from .namespace import Namespace

        assert self.shell is not None
        return Namespace(self.shell.user_ns, self.shell.user_global_ns, self.eval_samples or None)


def _sweep_arguments(line: str) -> Any:
    """The options of ``%prune sensitivity``/``explore``; an error names the nearest option."""
    try:
        return parse_argstring(sweep_options, line)
    except UsageError as exc:
        from .engine.errors import did_you_mean

        message = str(exc)
        parser = vars(sweep_options)["parser"]  # (what magic_arguments built)
        options = [o for action in parser._actions for o in action.option_strings]
        unknown = re.findall(r"(--?[\w-]+)", message.partition("unrecognized arguments:")[2])
        hint = did_you_mean(unknown[0], options) if unknown else ""
        message = _quote_hint(message, message)
        raise UsageError(f"%prune sensitivity: {message}{hint} (options: {' '.join(options)})") from None


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
    text = unquoted(text) if text else text
    return [p.strip() for p in text.split(",") if p.strip()] if text else None


def load(shell: InteractiveShell) -> None:
    """Register the magics, their options (``%config PruneMagics``) and tab completion."""
    magics = PruneMagics(shell=shell)
    shell.register_magics(magics)
    magics._matcher = completer(shell, list(SUBCOMMANDS))
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
