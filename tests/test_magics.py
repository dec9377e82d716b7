"""%%prune and %prune, driven through a real IPython shell, as a notebook would."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from IPython.core.completer import provisionalcompleter
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

import prune_magic as pm
from tests.conftest import same_bits, state

SETUP = """
import torch
from torch import nn
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))
X = torch.randn(200, 64)
y = model(X).argmax(1)
def agreement(m):
    return (m(X).argmax(1) == y).float().mean().item()
class Trainer:
    pass
trainer = Trainer()
trainer.model = model
not_a_model = X
"""


@pytest.fixture
def ip():
    shell = InteractiveShell.instance()
    shell.reset(new_session=False)
    shell.config.pop("PruneMagics", None)  # %config from an earlier test must not leak
    shell.run_line_magic("load_ext", "prune_magic")
    run(shell, SETUP)
    yield shell
    shell.run_line_magic("unload_ext", "prune_magic")


def run(shell, source: str, cell_id: str | None = None):
    """Run a cell; fail the test on any error; return what it displayed."""
    with capture_output() as captured:
        result = shell.run_cell(source, cell_id=cell_id)
    result.raise_error()
    return captured


def fails(shell, source: str) -> str:
    """Run a cell that must fail with a one-line UsageError; return its message."""
    with capture_output():
        result = shell.run_cell(source)
    assert isinstance(result.error_in_exec, UsageError), result.error_in_exec
    message = str(result.error_in_exec)
    assert "\n" not in message
    return message


def test_a_cell_clips_the_model_in_place(ip) -> None:
    model = ip.user_ns["model"]
    out = run(ip, "%%prune model -o res\nclip amount=0.8 scope=global\n")
    result = ip.user_ns["res"]
    assert isinstance(result, pm.PruneResult)
    assert result.steps[0].sparsity == pytest.approx(0.8, abs=1e-4)
    assert (
        sum(int((m.weight == 0).sum()) for m in model if hasattr(m, "weight"))
        == result.after.params - result.after.nonzero
    )
    bundle = out.outputs[0].data
    assert {"text/plain", "text/html", "image/png"} <= set(bundle)
    assert "sparsity  0.0% → 79." in bundle["text/plain"] and "% of all parameters" in bundle["text/plain"]
    # the other count, labelled as such, is the one %prune history shows
    assert "pruned layers  0.0% → 80.0% of their weights zero" in bundle["text/plain"]
    history = str(run(ip, "%prune history model").outputs[0].data["text/plain"])
    assert "80.0%" in history and "of the weights each step selected" in history


def test_dotted_names_and_expanded_values(ip) -> None:
    run(ip, "a = 0.5")
    run(
        ip,
        "%%prune trainer.model -o res\nclip amount={a}   # a from the namespace\nclip threshold={a / 100} layers=4\n",
    )
    steps = [str(s.step) for s in ip.user_ns["res"].steps]
    assert steps == ["clip amount=0.5", "clip threshold=0.005 layers=4"]


def test_a_dry_run_changes_nothing(ip) -> None:
    before = state(ip.user_ns["model"])
    out = run(ip, "%%prune model --dry-run\nclip amount=0.9\n")
    assert "dry run: the model was not changed" in out.outputs[0].data["text/plain"]
    assert same_bits(ip.user_ns["model"], before)


def test_eval_and_data_measure_before_and_after(ip) -> None:
    out = run(ip, "%%prune model --eval agreement -o res\nclip amount=0.9\n")
    res = ip.user_ns["res"]
    assert res.metric_before == 1.0 and res.metric_after < 1.0
    text = out.outputs[0].data["text/plain"]
    after = f"{res.metric_after:.1%}"
    assert f"agreement  100.0% → {after} ({(res.metric_after - 1) * 100:+.1f} points)" in text
    run(ip, "%prune reset model")
    out = run(ip, '%%prune model --data "(X, y)" --example-input X[:1] -o res\nclip amount=0.9\n')
    res = ip.user_ns["res"]
    assert res.metric_name == "accuracy" and res.metric_before == 1.0
    assert res.after.macs == 64 * 256 + 256 * 128 + 128 * 10
    assert "MACs" in out.outputs[0].data["text/plain"]


@pytest.mark.parametrize("cell_id", ["3f2a-cell", None])
def test_rerunning_a_cell_does_not_compound(ip, cell_id) -> None:
    model = ip.user_ns["model"]
    original = state(model)
    run(ip, "%%prune model\nclip amount=0.5\n", cell_id)
    once = state(model)
    run(ip, "%%prune model\nclip amount=0.5\n", cell_id)
    assert same_bits(model, once)
    assert len(pm.history(model)) == 1
    if cell_id:  # with a cell id, an edited cell also starts from the model before its last run
        run(ip, "%%prune model\nclip amount=0.3\n", cell_id)
        assert len(pm.history(model)) == 1
    run(ip, "%prune reset model")
    assert same_bits(model, original)


def test_two_different_cells_compound_and_undo_goes_back_one_step(ip) -> None:
    model = ip.user_ns["model"]
    run(ip, "%%prune model\nclip amount=0.5\n", "cell-a")
    after_a = state(model)
    run(ip, "%%prune model\nclip amount=0.5 layers=4\nclip threshold=0.02\n", "cell-b")
    assert len(pm.history(model)) == 3
    out = run(ip, "%prune undo model")
    assert "undid 'clip threshold=0.02'" in out.stdout
    run(ip, "%prune undo model")
    assert same_bits(model, after_a)
    history = run(ip, "%prune history model").outputs[0].data["text/plain"]
    assert "clip amount=0.5" in history


def test_report_and_usage(ip) -> None:
    run(ip, "%%prune model --quiet\nclip amount=0.5\n")
    table = run(ip, "%prune report model").outputs[0].data["text/plain"]
    assert "0.weight" in table and "50.0%" in table
    assert "on disk: " in table and " KiB dense \u2192 " in table and " KiB compressed (" in table


def test_a_codebook_cell_says_what_the_model_takes_on_disk(ip) -> None:
    out = run(ip, "%%prune model\nclip amount=0.9\nquantize codebook=16\n")
    text = out.outputs[0].data["text/plain"]
    assert "codebook of 16 shared values (4-bit indices, k-means)" in text
    assert "on disk: " in text and " KiB compressed (" in text
    usage = run(ip, "%prune").stdout
    assert "%prune undo MODEL" in usage and "%%prune MODEL" in usage


def test_a_structured_cell_shows_widths_params_macs_and_latency(ip) -> None:
    out = run(ip, "%%prune model --example-input X[:1] -o res\nstructured amount=0.5\n")
    text = out.outputs[0].data["text/plain"]
    assert "params  50,826 → 17,226 (-66.1%)" in text
    assert "latency" in text and "three quarters" in text
    assert "alt='width per layer'" in out.outputs[0].data["text/html"]
    assert ip.user_ns["model"][0].out_features == 128
    run(ip, "%prune undo model")
    assert ip.user_ns["model"][0].out_features == 256


ERRORS = [
    ("%%prune modle\nclip amount=0.5\n", "name 'modle' is not defined; did you mean 'model'?"),
    (
        "%%prune not_a_model\nclip amount=0.5\n",
        "not_a_model is a Tensor, not an nn.Module; did you mean 'model'?",
    ),
    ("%%prune trainer.modle\nclip amount=0.5\n", "trainer has no attribute 'modle'; did you mean 'model'?"),
    (
        "%%prune model[0]\nclip amount=0.5\n",
        "MODEL must be a name such as model or trainer.model, not 'model[0]'",
    ),
    ("%%prune model\nclip amout=0.5\n", "line 1: clip has no option 'amout'; did you mean 'amount'?"),
    ("%%prune model\nclip amount=0.5 layers=fc9\n", "line 1: layers=fc9 matches no layer"),
    (
        "%%prune model\nclip amount={nope}\n",
        "line 1: cannot expand {nope}: NameError: name 'nope' is not defined",
    ),
    (
        "%%prune model --eval agreemnt\nclip amount=0.5\n",
        "name 'agreemnt' is not defined; did you mean 'agreement'?",
    ),
    ("%%prune model --eval X\nclip amount=0.5\n", "--eval X is a Tensor; give a function FN(model) -> float"),
    (
        "%%prune model --eval broken\nclip amount=0.5\n",
        "broken(model) raised ZeroDivisionError: division by zero",
    ),
    (
        "%%prune model --eval words\nclip amount=0.5\n",
        "words(model) returned str 'good'; return a number (e.g. accuracy) or a dict of numbers",
    ),
    (
        "%%prune model --example-input Z[:1]\nclip amount=0.5\n",
        "--example-input Z[:1]: NameError: name 'Z' is not defined",
    ),
    (
        "%%prune model --data X\nclip amount=0.5\n",
        "evaluation data must be a DataLoader or an (X, y) pair, not Tensor",
    ),
    (
        "%%prune model --data (X,y)\nclip amount=0.5\nfinetune epochs=1\n",
        "line 2: finetune trains the model and needs training data: pass train=(X, y) or a DataLoader"
        " (in %%prune: --train NAME)",
    ),
    ("%%prune model --train (X,y) --loss nope\nfinetune epochs=1\n", "name 'nope' is not defined"),
    ("%%prune model --train Z\nfinetune epochs=1\n", "--train Z: NameError: name 'Z' is not defined"),
    (
        "%%prune model\nquantize int9\n",
        "line 1: quantize takes int8 or key=value options, not 'int9'; did you mean 'int8'?",
    ),
    (
        "%%prune model\nstructured amount=0.5\n",
        "structured pruning needs an example input to trace the model",
    ),
    ("%prune undo model", "nothing to undo: no prune_magic step has been applied to this model"),
    ("%prune und model", "unknown subcommand 'und'; did you mean 'undo'?"),
    ("%prune undo", "usage: %prune undo MODEL [N]"),
]


@pytest.mark.parametrize(("source", "message"), ERRORS, ids=[m[:40] for _, m in ERRORS])
def test_errors_are_one_line_and_leave_model_and_namespace_alone(ip, source: str, message: str) -> None:
    run(ip, "def broken(m):\n    return 1 / 0\ndef words(m):\n    return 'good'\n")
    model = ip.user_ns["model"]
    before = state(model)
    names = set(ip.user_ns)
    assert fails(ip, source).startswith(message)
    assert same_bits(model, before)
    assert set(ip.user_ns) - names <= {"_", "__", "___"} | {k for k in ip.user_ns if k.startswith("_i")}
    assert len(pm.history(model)) == 0


def test_long_errors_can_be_switched_on(ip) -> None:
    run(ip, "%config PruneMagics.short_errors = False")
    with capture_output():
        result = ip.run_cell("%%prune model\nclip amout=0.5\n")
    assert isinstance(result.error_in_exec, pm.RecipeError)


def completions(shell, line: str) -> list[str]:
    with provisionalcompleter():
        return sorted({c.text for c in shell.Completer.completions(line, len(line))})


def test_tab_completion_offers_models_and_subcommands(ip) -> None:
    run(ip, "net2 = torch.nn.Linear(2, 2)\nmodest = 3")
    assert completions(ip, "%%prune mo") == ["model"]
    assert completions(ip, "%%prune ") == ["model", "net2"]
    assert completions(ip, "%prune un") == ["undo"]
    assert completions(ip, "%prune ") == ["explore", "history", "report", "reset", "sensitivity", "undo"]
    assert completions(ip, "%prune undo ") == ["model", "net2"]
    assert "modest" in completions(ip, "print(mo")  # elsewhere IPython completes as usual


def test_unload_and_reload(ip) -> None:
    ip.run_line_magic("reload_ext", "prune_magic")
    run(ip, "%%prune model --quiet\nclip amount=0.5\n")
    ip.run_line_magic("unload_ext", "prune_magic")
    assert "prune" not in ip.magics_manager.magics["cell"]
    with capture_output():
        result = ip.run_cell("%prune report model")
    assert result.error_in_exec is not None
    ip.run_line_magic("load_ext", "prune_magic")


def test_load_ext_imports_neither_torch_nor_matplotlib() -> None:
    code = (
        "import sys; from IPython.core.interactiveshell import InteractiveShell;"
        "InteractiveShell.instance().run_line_magic('load_ext', 'prune_magic');"
        "print('torch' in sys.modules, 'matplotlib' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_without_torch_imported_nothing_is_a_model() -> None:
    from prune_magic.namespace import model_names

    assert model_names({"x": torch.nn.Linear(1, 1)}) == ["x"]


def test_a_sensitivity_sweep_shows_curves_and_a_budget_recipe(ip) -> None:
    model = ip.user_ns["model"]
    before = state(model)
    out = run(ip, "%prune sensitivity model --eval agreement --levels 0.2,0.5,0.9 --tolerance 0.5 -o sens")
    sens = ip.user_ns["sens"]
    assert sens.complete and list(sens.curves) == ["0", "2", "4"]
    bundle = out.outputs[-1].data
    assert {"text/plain", "text/html", "image/png"} <= set(bundle)
    assert "as a recipe to paste into a %%prune model cell" in bundle["text/plain"]
    assert sens.recipe(0.5).splitlines()[0].startswith("clip amount=")
    assert same_bits(model, before)
    assert len(pm.history(model)) == 0  # a sweep is not a step


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("%prune sensitivity model", "the sweep needs a metric: --eval FN or --data DATA"),
        (
            "%prune sensitivity model --eval agreement --levls 0.3",
            "%prune sensitivity: unrecognized arguments: --levls 0.3; did you mean '--levels'",
        ),
        (
            "%prune sensitivity model --eval agreement --levels 0.3,x",
            "--levels 0.3,x: give amounts such as 0.1,0.3,0.5,0.7,0.9",
        ),
        ("%prune sensitivity model --eval agreement --levels 1.5", "levels must be amounts 0 <= level < 1"),
        (
            "%prune sensitivity model --eval agreement --executor X",
            "--executor X: give a dask.distributed.Client (or an executor)",
        ),
    ],
)
def test_sweep_errors_are_one_line(ip, line: str, message: str) -> None:
    assert fails(ip, line).startswith(message)


def test_undo_takes_a_count(ip) -> None:
    model = ip.user_ns["model"]
    before = state(model)
    run(ip, "%%prune model --quiet\nclip amount=0.5\nclip amount=0.7 layers=0\n")
    out = run(ip, "%prune undo model 2")
    assert out.stdout.count("undid") == 2 and same_bits(model, before)
    run(ip, "%%prune model --quiet\nclip amount=0.5\n")
    assert fails(ip, "%prune undo model 3") == "only 1 step(s) to undo; %prune reset model undoes all"


def test_explore_outside_a_notebook_shows_the_sweep(ip) -> None:
    out = run(ip, "%prune explore model --eval agreement --levels 0.5")
    assert "as a recipe to paste" in out.outputs[-1].data["text/plain"]


def test_train_finetune_distill_and_quantize_from_a_cell(ip) -> None:
    model = ip.user_ns["model"]
    before = state(model)
    out = run(
        ip,
        "%%prune model --eval agreement --train (X,y) -o res\n"
        "clip amount=0.9 scope=global\ndistill epochs=2\nquantize bits=8\n",
    )
    result = ip.user_ns["res"]
    assert [len(s.curve) for s in result.steps] == [0, 3, 0]  # before training, 2 epochs
    assert result.steps[2].quantized is not None
    text = out.outputs[-1].data["text/plain"]
    assert "trained  distill epochs=2: 2 epochs; metric " in text and "quantized  fake 8-bit" in text
    assert "alt='recovery curve'" in out.outputs[-1].data["text/html"]
    run(ip, "%prune reset model")
    assert same_bits(model, before)


def test_a_custom_loss_and_eval_with_calibration_data(ip) -> None:
    run(
        ip,
        "calls = []\ndef loss(out, target):\n    calls.append(1)\n    return nn.functional.cross_entropy(out, target)",
    )
    run(
        ip,
        "%%prune model --eval agreement --data (X,y) --train (X,y) --loss loss -o res\nclip amount=0.5 by=wanda\nfinetune epochs=1\n",
    )
    assert len(ip.user_ns["calls"]) == 4  # 200 samples in batches of 64
    result = ip.user_ns["res"]
    assert result.metric_name == "agreement" and result.steps[0].sparsity == pytest.approx(0.5, abs=1e-3)


def test_training_shows_progress_in_a_terminal(ip) -> None:
    out = run(ip, "%%prune model --train (X,y)\nclip amount=0.5\nfinetune epochs=2\n")
    assert "finetune epochs=2: 8/8 batches" in out.stdout


def test_the_cell_magics_help_reads_as_text_and_starts_with_the_cell_form(ip) -> None:
    text = ip.find_cell_magic("prune").__doc__
    assert text.startswith("%%prune MODEL [--data DATA]")  # the form a notebook reader types first
    assert "``" not in text and "::" not in text  # no raw reST
    assert "%prune [" not in text and "--example-input EXPR" in text  # argparse's options, still listed
    for line in (
        "clip amount=0.8 scope=global",
        "%prune undo MODEL [N]",
        "structured  remove whole channels",
    ):
        assert line in text


def test_a_structured_cell_on_a_language_model_reruns_and_undoes_its_heads_and_config(ip) -> None:
    import warnings

    transformers = pytest.importorskip("transformers")
    from tests import zoo

    zoo.torchvision()  # (transformers imports it: its compiled ops declared first)
    torch.manual_seed(0)
    with warnings.catch_warnings():  # transformers' own notes are not ours
        warnings.simplefilter("ignore")
        config = transformers.GPT2Config(vocab_size=100, n_embd=64, n_layer=2, n_head=4, n_positions=64)
        ip.user_ns["lm"] = lm = transformers.GPT2LMHeadModel(config).eval()
        ip.user_ns["ids"] = torch.randint(0, 100, (1, 12))
        original = state(lm)
        cell = "%%prune lm --example-input ids\nstructured amount=0.5 heads={}\n"
        run(ip, cell.format(0.5), "gpt2-cell")
        run(ip, cell.format(0.5), "gpt2-cell")  # re-run: undone first, not compounded
        assert (lm.config.n_head, lm.transformer.h[0].attn.split_size, len(pm.history(lm))) == (2, 32, 1)
        run(ip, cell.format(0.25), "gpt2-cell")  # edited: from the model before its last run
        assert (lm.config.n_head, lm.config.n_inner, len(pm.history(lm))) == (3, 128, 1)
        run(ip, "%prune undo lm")
    assert same_bits(lm, original)
    assert (lm.config.n_head, lm.config.n_inner, lm.transformer.h[0].attn.split_size) == (4, None, 64)


def test_token_ids_for_a_language_model_give_perplexity_and_calibrate_sparsegpt(ip) -> None:
    from tests.engine.language_models import bert, gpt2, token_ids

    ip.user_ns.update(gpt=gpt2(), ids=token_ids(), bert=bert())
    before = state(ip.user_ns["gpt"])
    run(ip, "%%prune gpt --data ids -o res\nclip nm=2:4 by=sparsegpt\n")
    result = ip.user_ns["res"]
    assert result.metric_name == "perplexity" and result.metric_before > 1
    assert "2:4 pattern" in result.lines()[0]
    run(ip, "%prune undo gpt")
    assert same_bits(ip.user_ns["gpt"], before)
    message = fails(ip, "%%prune bert --data ids\nclip amount=0.5\n")
    assert "BertForMaskedLM is not a causal language model" in message and "--eval FN" in message
