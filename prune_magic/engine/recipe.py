"""The recipe language: one step a line, ``key=value`` options, ``#`` comments.

>>> recipe = parse_recipe('''
... # keep the classifier dense
... clip amount=80% scope=global exclude=classifier
... ''')
>>> recipe.steps[0].options["amount"]
0.8
>>> str(recipe)
'clip amount=0.8 scope=global exclude=classifier'

The whole recipe is validated before any model is touched; every error names
the line and, where it can, the nearest valid word.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .errors import RecipeError, did_you_mean, shorten
from .schema import SCHEMAS, Option, OptionKind

Value = float | int | str | tuple[str, ...]


@dataclass(frozen=True)
class Step:
    """One parsed line of a recipe."""

    kind: str
    options: Mapping[str, Value]
    line: int = 1

    def __str__(self) -> str:
        schema = SCHEMAS.get(self.kind)
        bare = {option: word for word, option in schema.words.items()} if schema else {}
        words = [bare.get((k, v)) if isinstance(v, str) else None for k, v in self.options.items()]
        return " ".join(
            [self.kind, *(w or f"{k}={_render(v)}" for w, (k, v) in zip(words, self.options.items()))]
        )

    def number(self, key: str, default: float | None = None) -> float:
        """A numeric option (``amount``, ``threshold``, ``lr``...) as a float, else ``default``.

        >>> parse_step("clip amount=80%").number("amount")
        0.8
        """
        value = self._option(key, ("fraction", "nonnegative", "positive", "count"), default)
        assert isinstance(value, float | int)
        return float(value)

    def count(self, key: str, default: int | None = None) -> int:
        """A whole-number option (``epochs``, ``steps``, ``bits``...), else ``default``."""
        value = self._option(key, ("count",), default)
        assert isinstance(value, int)
        return value

    def word(self, key: str, default: str | None = None) -> str:
        """A choice option (``scope``, ``by``, ``importance``...), else ``default``."""
        value = self._option(key, ("choice",), default)
        assert isinstance(value, str)
        return value

    def ratio(self, key: str) -> tuple[int, int] | None:
        """An N:M option (``nm=2:4``) as (N, M), or None when it is not given.

        >>> parse_step("clip nm=2:4").ratio("nm")
        (2, 4)
        """
        if key not in self.options:
            return None
        n, _, m = str(self._option(key, ("ratio",), None)).partition(":")
        return int(n), int(m)

    def patterns(self, key: str) -> tuple[str, ...] | None:
        """A ``layers=``/``exclude=`` option's patterns, or None when it is not given (or the step
        takes none: a finetune step works on the whole model)."""
        if key not in self.options:
            return None
        value = self._option(key, ("patterns",), None)
        assert isinstance(value, tuple)
        return value

    def _option(self, key: str, kinds: tuple[OptionKind, ...], default: Value | None) -> Value:
        """The option's value; the schema must declare ``key`` of one of ``kinds`` (else it is a bug)."""
        schema = SCHEMAS.get(self.kind)
        option = schema.options.get(key) if schema is not None else None
        if option is None or option.kind not in kinds:
            raise KeyError(f"{self.kind} has no {' or '.join(kinds)} option {key!r}")
        value = self.options.get(key, default)
        if value is None:
            raise KeyError(f"{self.kind} step has no {key}= and no default")
        return value

    def replace(self, **options: Value) -> Step:
        """Return a copy with some options changed (validated like parsed text)."""
        return parse_step(str(Step(self.kind, {**self.options, **options})), self.line)


@dataclass(frozen=True)
class Recipe:
    """An ordered list of steps. ``str(recipe)`` gives back text that parses to it."""

    steps: tuple[Step, ...]

    def __str__(self) -> str:
        return "\n".join(str(s) for s in self.steps)

    @property
    def removes_channels(self) -> bool:
        """Whether a step removes channels (the model may get faster: worth timing)."""
        return any(step.kind == "structured" for step in self.steps)


def parse_recipe(text: str | Recipe | Step | Iterable[str]) -> Recipe:
    """Parse recipe text (or pass a :class:`Recipe` through) and validate every line."""
    if isinstance(text, Recipe):
        return text
    if isinstance(text, Step):
        return Recipe((text,))
    if isinstance(text, str):
        lines = text.splitlines()
    elif isinstance(text, Iterable) and not isinstance(text, bytes | Mapping):
        lines = list(text)
    else:
        lines = []
    if not isinstance(text, str) and (not lines or not all(isinstance(line, str) for line in lines)):
        raise RecipeError(
            f"the recipe must be text (one step a line, e.g. 'clip amount=0.5'), a list of such lines or a"
            f" Recipe, not {_kind(text)}"
        )
    steps = tuple(
        parse_step(line, number) for number, line in enumerate(lines, start=1) if _tokens(line, number)
    )
    if not steps:
        raise RecipeError("the recipe is empty; write one step a line, e.g. 'clip amount=0.5'")
    return Recipe(steps)


def _kind(value: object) -> str:
    if value is None:
        return "None"
    if isinstance(value, list | tuple):
        inside = sorted({type(v).__name__ for v in value if not isinstance(v, str)})
        return (
            f"a {type(value).__name__} of {', '.join(inside)}"
            if inside
            else f"an empty {type(value).__name__}"
        )
    return type(value).__name__


def parse_step(line: str, number: int = 1) -> Step:
    """Parse one line such as ``clip amount=0.5 scope=global``."""
    tokens = _tokens(line, number)
    if not tokens:
        raise RecipeError(f"line {number}: no step on this line")
    kind, *words = tokens
    schema = SCHEMAS.get(kind)
    if schema is None:
        raise RecipeError(
            f"line {number}: unknown step {shorten(kind)!r}{did_you_mean(kind, SCHEMAS)} (steps: {', '.join(SCHEMAS)})"
        )
    options: dict[str, Value] = {}
    for word in words:
        key, sep, raw = word.partition("=")
        if not sep and word in schema.words:
            key, raw = schema.words[word]
        elif not sep and schema.words:
            raise RecipeError(
                f"line {number}: {kind} takes {' or '.join(schema.words)} or key=value options,"
                f" not {shorten(word)!r}{did_you_mean(word, schema.words)}"
            )
        elif not sep or not key:
            raise RecipeError(
                f"line {number}: expected key=value, got {shorten(word)!r}"
                f" (e.g. {kind} {next(iter(schema.options))}=...)"
            )
        option = schema.options.get(key)
        if option is None and ":" in key and "nm" in schema.options:  # the papers' n:m=2:4
            raise RecipeError(f"line {number}: write N:M sparsity as nm={shorten(raw)}, not {shorten(key)}=")
        if option is None:
            raise RecipeError(
                f"line {number}: {kind} has no option {shorten(key)!r}{did_you_mean(key, schema.options)}"
                f" (options: {', '.join(schema.options)})"
            )
        if key in options:
            raise RecipeError(f"line {number}: {key}= is given twice")
        options[key] = _value(option, key, raw, number)
    given = [k for k in schema.one_of if k in options]
    if schema.one_of and len(given) != 1:
        choices = ", ".join(f"{k}=" for k in schema.one_of)
        what = "needs one of" if not given else "takes only one of"
        if len(schema.one_of) == 1:
            what = "needs"
        raise RecipeError(f"line {number}: {kind} {what} {choices}")
    for key, needed in schema.requires.items():
        if key not in options:
            continue
        other, _, value = needed.partition("=")
        if value and options.get(other) != value:
            raise RecipeError(f"line {number}: {key}= only applies with {needed}")
        if not value and not any(n in options for n in other.split("|")):
            raise RecipeError(f"line {number}: {key}= only applies with {'= or '.join(other.split('|'))}=")
    for key, value, other in schema.conflicts:
        if options.get(key) == value and other in options:
            raise RecipeError(f"line {number}: {key}={value} can't be combined with {other}=; drop {other}=")
    return Step(kind, options, number)


#: A word as shlex splits them (its whitespace is these four characters only).
_WORDS = re.compile(r"[^ \t\r\n]+")


def _tokens(line: str, number: int) -> list[str]:
    if not any(c in line for c in "\"'\\\n"):  # nothing quoted, escaped or after a newline: as shlex
        return _WORDS.findall(line.partition("#")[0])
    try:
        return shlex.split(line, comments=True)
    except ValueError as exc:  # unbalanced quotes
        raise RecipeError(f"line {number}: {exc} in {shorten(line.strip())!r}") from None


def _value(option: Option, key: str, text: str, number: int) -> Value:
    raw = shorten(text)  # (as the messages echo it)
    if option.kind == "choice":
        if text not in option.choices:
            raise RecipeError(
                f"line {number}: {key}={raw} is not valid{did_you_mean(text, option.choices)}"
                f" (choose {' or '.join(option.choices)})"
            )
        return raw
    if option.kind == "ratio":
        n, sep, m = text.partition(":")
        if not (sep and n.isascii() and n.isdigit() and m.isascii() and m.isdigit() and 0 < int(n) < int(m)):
            raise RecipeError(
                f"line {number}: {key}={raw} must be N:M with 0 < N < M, e.g. {key}=2:4 ({option.help})"
            )
        return f"{int(n)}:{int(m)}"
    if option.kind == "patterns":
        patterns = tuple(p.strip() for p in text.split(","))
        if not text or any(not p for p in patterns):
            raise RecipeError(f"line {number}: {key}= needs comma-separated names, e.g. {key}=fc1,fc2")
        return patterns
    if option.kind == "count":
        # ASCII digits only: str.isdigit() takes '²', which int() refuses
        if not (text.isascii() and text.isdigit()) or not option.low <= int(text) <= (
            option.high or int(text)
        ):
            bounds = f">= {option.low}" if option.high is None else f"from {option.low} to {option.high}"
            raise RecipeError(f"line {number}: {key}={raw} must be a whole number {bounds} ({option.help})")
        return int(text)
    percent = text.endswith("%") and option.kind == "fraction"
    try:
        if (
            not text.isascii()
        ):  # float() reads Arabic-Indic digits, int() not superscripts: numbers are ASCII, as counts are
            raise ValueError(text)
        value = float(text[:-1]) / 100 if percent else float(text)
    except ValueError:
        raise RecipeError(f"line {number}: {key}={raw} is not a number ({option.help})") from None
    too_small = value <= 0 if option.kind == "positive" else value < 0
    if not math.isfinite(value) or too_small or (option.kind == "fraction" and value >= 1):
        raise RecipeError(f"line {number}: {key}={raw} is out of range ({option.help})")
    return value


def _render(value: Value) -> str:
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if value != int(value) or abs(value) >= 1e16 else str(int(value))
    return value
