"""The recipe language: what parses, and every error a typo can cause."""

from __future__ import annotations

import shlex

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import prune_magic as pm
from prune_magic.engine.recipe import _tokens, parse_recipe
from tests.conftest import same_bits, state


def test_a_recipe_is_lines_of_steps_with_comments() -> None:
    recipe = parse_recipe(
        """
        # clip the whole model, then the classifier a bit harder
        clip amount=0.8 scope=global   # one threshold for all layers
        clip threshold=0.01 layers=classifier,fc*
        """
    )
    assert [s.kind for s in recipe.steps] == ["clip", "clip"]
    assert recipe.steps[0].options == {"amount": 0.8, "scope": "global"}
    assert recipe.steps[1].options["layers"] == ("classifier", "fc*")
    assert recipe.steps[1].line == 4
    assert parse_recipe(str(recipe)).steps[1].options == recipe.steps[1].options


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab=1 .#\t,*-_\xa0\x0b\x0c\r\n'\"\\", max_size=24))
def test_lines_split_into_words_as_shlex_splits_them(line: str) -> None:
    """The fast path for lines with nothing quoted gives what shlex gives (or the same error)."""
    try:
        expected: list[str] | str = shlex.split(line, comments=True)
    except ValueError:
        expected = "error"
    try:
        got: list[str] | str = _tokens(line, 1)
    except pm.RecipeError:
        got = "error"
    assert got == expected


def test_amount_takes_a_percentage() -> None:
    assert parse_recipe("clip amount=80%").steps[0].options["amount"] == pytest.approx(0.8)


def test_step_replace_revalidates() -> None:
    step = parse_recipe("clip amount=0.5").steps[0]
    assert step.replace(amount=0.9).options["amount"] == 0.9
    with pytest.raises(pm.RecipeError, match="out of range"):
        step.replace(amount=1.5)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("clp amount=0.5", "line 1: unknown step 'clp'; did you mean 'clip'?"),
        ("clip amout=0.5", "line 1: clip has no option 'amout'; did you mean 'amount'?"),
        ("clip amount=lots", "line 1: amount=lots is not a number (fraction of weights to zero"),
        ("clip amount=1", "line 1: amount=1 is out of range (fraction of weights to zero, 0 <= amount < 1"),
        ("clip amount=150%", "line 1: amount=150% is out of range"),
        ("clip amount=-0.1", "line 1: amount=-0.1 is out of range"),
        ("clip threshold=nan", "line 1: threshold=nan is out of range"),
        ("clip", "line 1: clip needs one of amount=, threshold=, sigma="),
        ("clip amount=0.5 sigma=1", "line 1: clip takes only one of amount=, threshold=, sigma="),
        ("clip threshold=0.1 scope=global", "line 1: scope= only applies with amount="),
        ("clip amount=0.5 amount=0.6", "line 1: amount= is given twice"),
        ("clip 0.5", "line 1: expected key=value, got '0.5' (e.g. clip amount=...)"),
        (
            "clip amount=0.5 scope=globl",
            "line 1: scope=globl is not valid; did you mean 'global'? (choose layer or global)",
        ),
        ("clip amount=0.5 layers=fc1,", "line 1: layers= needs comma-separated names"),
        ("clip amount=0.5 layers='fc1", "line 1: No closing quotation"),
        ("# only a comment\n\n", "the recipe is empty; write one step a line, e.g. 'clip amount=0.5'"),
        (
            "clip amount=0.5\nclip amount=0.5 sope=global",
            "line 2: clip has no option 'sope'; did you mean 'scope'?",
        ),
    ],
)
def test_every_recipe_error_names_the_line_and_leaves_the_model(mlp, text: str, message: str) -> None:
    before = state(mlp)
    with pytest.raises(pm.RecipeError) as info:
        pm.prune(mlp, text)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)
    assert same_bits(mlp, before)
    assert len(pm.history(mlp)) == 0


def test_a_bad_second_line_stops_the_first_from_running(mlp) -> None:
    before = state(mlp)
    with pytest.raises(pm.RecipeError, match="line 2"):
        pm.prune(mlp, "clip amount=0.5\nclip amount=2")
    assert same_bits(mlp, before)
