"""The argparse options of ``%%prune`` and ``%prune sensitivity``/``explore``: IPython's
``magic_arguments`` decorators, typed (a decorated function keeps its signature), and the help
``%%prune?`` prints."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from IPython.core import magic_arguments as _magic_arguments
from IPython.core.magic import line_cell_magic

_Function = TypeVar("_Function", bound=Callable[..., Any])


def options() -> Callable[[_Function], _Function]:
    """IPython's ``@magic_arguments()``, typed: the function keeps its signature, and its help
    (``%%prune?``) reads as text, not reST (IPython starts it with ``::``)."""
    build: Callable[[_Function], _Function] = _magic_arguments.magic_arguments()

    def decorate(function: _Function) -> _Function:
        function = build(function)
        function.__doc__ = (function.__doc__ or "").removeprefix("::\n\n  ")
        return function

    return decorate


def line_cell_magic_(method: _Function) -> _Function:
    """IPython's ``@line_cell_magic``, typed (it records the method and returns it as it is)."""
    line_cell_magic(method)
    return method


def option(*names: str, **settings: Any) -> Callable[[_Function], _Function]:
    """IPython's ``@argument(...)``, typed: the function keeps its signature."""
    decorator: Callable[[_Function], _Function] = _magic_arguments.argument(*names, **settings)
    return decorator


def usage(text: str) -> Callable[[_Function], _Function]:
    """The usage line of ``%%prune?`` (argparse's would read ``%prune [--eval FN] … model``)."""
    decorator: Callable[[_Function], _Function] = _magic_arguments.kwds(usage=text)
    return decorator


# the options %%prune and %prune sensitivity/explore share
EVAL = option(
    "--eval",
    dest="eval_fn",
    metavar="FN",
    help="a callable FN(model) -> float or dict of floats, run before and after",
)
DATA = option(
    "--data",
    metavar="DATA",
    help="a DataLoader or an (X, y) pair: built-in top-1 accuracy before and after (unless --eval"
    " is given), and the calibration data of steps that need it (by=wanda, importance=taylor)",
)
EXAMPLE_INPUT = option(
    "--example-input",
    metavar="EXPR",
    help="an input for the model (an expression): counts MACs, and traces the model for structured steps",
)
OUTPUT = option("-o", "--output", metavar="NAME", help="store the result object in the namespace under NAME")


@options()
@option("model", help="the nn.Module to sweep: a name in the namespace")
@EVAL
@DATA
@option("--levels", default="0.1,0.3,0.5,0.7,0.9", help="the amounts to try, comma-separated")
@option("--step", choices=("clip", "structured"), default="clip", help="how each layer is pruned")
@option("--layers", help="the layers to sweep (comma-separated names, globs or types)")
@option("--exclude", help="layers left out of the sweep")
@EXAMPLE_INPUT
@option("--tolerance", type=float, default=0.01, help="the budget: the metric lost per layer at most")
@option(
    "--executor",
    metavar="CLIENT",
    help="a dask.distributed.Client in the namespace (e.g. Client(LocalCluster(n_workers=4))): the"
    " points run on its workers, the model sent to each once; or a concurrent.futures executor",
)
@OUTPUT
def sweep_options(line: str) -> None:
    """%prune sensitivity MODEL / %prune explore MODEL: sweep each layer alone at several levels."""
