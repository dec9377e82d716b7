"""Bad recipes, bad data and misused magics: one clear line each, nothing changed."""

from __future__ import annotations

import warnings

import pytest
import torch
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output
from torch.utils.data import DataLoader, TensorDataset

import prune_magic as pm
from prune_magic.engine.errors import MESSAGE_LIMIT
from tests.hostile.conftest import Snapshot, refused

# -- recipes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("recipe", "words"),
    [
        (None, ("the recipe must be text", "not None")),
        (42, ("not int",)),
        ([1, 2], ("not a list of int",)),
        ([], ("an empty list",)),
        ("clip amount=0.5 steps=²", ("steps=² must be a whole number",)),
        ("quantize bits=¹⁶", ("bits=¹⁶ must be a whole number from 2 to 16",)),
        ("clip amount=\u0660.\u0665", ("is not a number",)),  # Arabic-Indic 0.5
        ("clip amount=0.5 layers=" + "x" * 200_000, ("layers=xxx", "more characters")),
        ("clip amount=" + "9" * 200_000, ("is out of range", "more characters")),
        ("x" * 200_000, ("unknown step", "more characters")),
        ("clip amount=0.5 'unbalanced" + "y" * 5000, ("No closing quotation", "more characters")),
    ],
)
def test_a_bad_recipe_is_one_readable_line_and_changes_nothing(mlp, recipe, words):
    message = refused(mlp, lambda: pm.prune(mlp, recipe), *words)
    assert len(message) < 400


def test_every_message_is_capped_even_when_an_eval_error_is_huge(mlp):
    def loud(m):
        raise ValueError("z" * 100_000 + "\nsecond line")

    message = refused(
        mlp, lambda: pm.prune(mlp, "clip amount=0.5", evaluate=loud), "loud(model) raised ValueError"
    )
    assert len(message) <= MESSAGE_LIMIT + 40 and "more characters" in message


# -- data: targets shaped (N, 1), batches that disagree -----------------------------------------------


@pytest.fixture
def labelled(mlp, x):
    with torch.no_grad():
        return x, mlp(x).argmax(1)


def test_targets_shaped_n_by_1_are_refused_with_the_fix(mlp, labelled):
    X, y = labelled
    accuracy = pm.engine.evaluate.accuracy((X, y[:, None]))
    refused(mlp, lambda: pm.prune(mlp, "clip amount=0.5", evaluate=accuracy), "shape (32, 1)", "y.squeeze(1)")
    # the built-in accuracy on the right shape agrees with itself: 1.0 before any cut
    assert pm.engine.evaluate.accuracy((X, y))(mlp) == 1.0


def test_one_hot_targets_and_outputs_that_are_not_scores_are_refused(mlp, labelled):
    X, y = labelled
    one_hot = torch.nn.functional.one_hot(y, 4)
    refused(
        mlp,
        lambda: pm.prune(mlp, "clip amount=0.5", evaluate=pm.engine.evaluate.accuracy((X, one_hot))),
        "y.argmax(1)",
    )
    flat = torch.nn.Sequential(mlp, torch.nn.Flatten(0))  # (N*4,) outputs
    refused(
        flat,
        lambda: pm.prune(flat, "clip amount=0.5", evaluate=pm.engine.evaluate.accuracy((X, y))),
        "class scores of shape (N, classes)",
    )


def test_a_dataloader_whose_batches_disagree_is_refused(mlp, labelled):
    X, y = labelled
    bad = [(X[:8], y[:5])]
    refused(
        mlp,
        lambda: pm.prune(mlp, "clip amount=0.5", evaluate=pm.engine.evaluate.accuracy(bad)),
        "(8, 8)",
        "(5,)",
    )
    loader = DataLoader(TensorDataset(X, y[:, None]), batch_size=8)
    refused(
        mlp,
        lambda: pm.prune(mlp, "clip amount=0.5", evaluate=pm.engine.evaluate.accuracy(loader)),
        "(8, 1)",
        "squeeze",
    )


def test_training_with_n_by_1_targets_and_the_default_loss_is_refused_and_rolled_back(mlp, labelled):
    X, y = labelled
    pm.prune(mlp, "clip amount=0.5")
    refused(
        mlp,
        lambda: pm.prune(mlp, "finetune epochs=1", train=(X, y[:, None])),
        "cross-entropy",
        "y.squeeze(1)",
    )


# -- the magic -----------------------------------------------------------------------------------------


SETUP = """
import torch
from torch import nn
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
X = torch.randn(32, 8)
y = model(X).argmax(1)
def bump():
    with torch.no_grad():
        model[0].bias.add_(1)
    return 0.5
"""


@pytest.fixture
def ip():
    shell = InteractiveShell.instance()
    shell.reset(new_session=False)
    shell.run_line_magic("load_ext", "prune_magic")
    shell.run_cell(SETUP).raise_error()
    yield shell
    shell.run_line_magic("unload_ext", "prune_magic")


def magic_fails(shell, source: str, *words: str) -> str:
    model = shell.user_ns["model"]
    before = Snapshot.of(model)
    with capture_output():
        result = shell.run_cell(source)
    assert isinstance(result.error_in_exec, UsageError), result.error_in_exec
    message = str(result.error_in_exec)
    assert "\n" not in message and len(message) <= MESSAGE_LIMIT + 60
    for word in words:
        assert word in message, message
    before.assert_same(model)
    return message


def test_an_unquoted_data_pair_hints_at_the_quotes(ip):
    magic_fails(
        ip,
        "%%prune model --data (X, y)\nclip amount=0.5",
        "unrecognized arguments",
        '--data "(X_test, y_test)"',
    )
    magic_fails(ip, "%prune sensitivity model --data (X, y)", "must be quoted")


def test_a_huge_echoed_input_is_capped(ip):
    magic_fails(
        ip, "%%prune model\nclip amount=0.5 layers=" + "q" * 200_000, "matches no layer", "more characters"
    )
    # (IPython's own $var expansion of a magic's line takes quadratic time: a long line, not a huge one)
    magic_fails(ip, "%%prune model --example-input " + "w" * 3000 + "\nclip amount=0.5", "more characters")


def test_an_expression_that_changes_the_model_stops_the_cell_and_says_so(ip):
    with capture_output():
        result = ip.run_cell("%%prune model\nclip amount={bump()}")
    message = str(result.error_in_exec)
    assert isinstance(result.error_in_exec, UsageError)
    assert "expanding the recipe's {expr} changed the model's weights (0.bias" in message
    assert "the cell stopped before pruning" in message
    assert not pm.history(ip.user_ns["model"]).entries


def test_unicode_digits_in_a_cell_are_one_line(ip):
    magic_fails(ip, "%%prune model\nclip amount=0.5 steps=² finetune=1", "steps=² must be a whole number")


def test_a_one_shot_iterator_as_data_is_refused_before_anything_changes(mlp, labelled):
    X, y = labelled
    batches = ((X[i : i + 8], y[i : i + 8]) for i in range(0, 32, 8))
    refused(mlp, lambda: pm.prune(mlp, "clip amount=0.5", train=batches), "generator", "read only once")
    refused(mlp, lambda: pm.engine.evaluate.accuracy(iter([(X, y)])), "list_iterator", "DataLoader")


def test_an_empty_layer_is_clipped_without_a_fuss():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch: initializing zero-element tensors is a no-op
        model = torch.nn.Sequential(torch.nn.Linear(4, 0), torch.nn.Linear(0, 2))
    for recipe in ("clip amount=0.5", "clip threshold=0.1", "clip sigma=1"):
        assert pm.prune(model, recipe).steps[0].sparsity == 0.0


def test_a_live_cell_after_quantize_int8_still_draws_its_histograms(ip):
    pytest.importorskip("torchao")
    from prune_magic.views import weight_histograms as _histograms

    ip.run_cell("%%prune model --quiet\nquantize int8 backend=torchao").raise_error()
    shown = _histograms(ip.user_ns["model"])
    assert set(shown) == {"0.weight", "2.weight"}


# -- Deep Compression: codebook, compressed save, pm.sparse ---------------------------------------------


def test_a_codebook_finetune_without_data_or_with_a_diverging_loss_changes_nothing(mlp, labelled):
    X, y = labelled
    pm.prune(mlp, "clip amount=0.5")
    refused(mlp, lambda: pm.prune(mlp, "quantize codebook=8 finetune=1"), "needs training data", "train=")
    refused(
        mlp,
        lambda: pm.prune(mlp, "quantize codebook=8 finetune=2 lr=1e30 optimizer=sgd", train=(X, y)),
        "the training loss became",
        "smaller lr=",
    )


def test_sparse_refuses_bad_arguments_and_models_it_cannot_copy(mlp):
    refused(mlp, lambda: pm.sparse(mlp, min_sparsity=-0.1), "min_sparsity=-0.1 must be between 0 and 1")
    refused(mlp, lambda: pm.sparse(mlp, batch=0), "batch=0 must be at least 1")

    class Uncopyable(torch.nn.Sequential):
        def __deepcopy__(self, memo):
            raise RuntimeError("holds a file handle")

    odd = Uncopyable(torch.nn.Linear(4, 4))
    refused(odd, lambda: pm.sparse(odd), "copy.deepcopy failed: holds a file handle")


def test_a_compressed_save_of_a_sparse_buffer_is_refused_and_writes_nothing(mlp, tmp_path):
    mlp.register_buffer("lookup", torch.eye(4).to_sparse())
    with pytest.raises(pm.PruneError, match=r"lookup is a sparse_coo tensor; .*: save without compress=True"):
        pm.save(mlp, tmp_path / "m.pt", compress=True)
    assert not (tmp_path / "m.pt").exists()


def test_a_compressed_file_with_an_unknown_codec_is_refused_by_name(mlp, tmp_path):
    import json
    import lzma

    pm.save(mlp, tmp_path / "m.pt", compress=True)
    saved = torch.load(tmp_path / "m.pt", weights_only=True)
    payload = saved["compressed"].numpy().tobytes()
    length = int.from_bytes(payload[:4], "little")
    meta = json.loads(lzma.decompress(payload[4 : 4 + length]))
    meta["tensors"][0]["sections"][0][0] = "zstd"
    text = lzma.compress(json.dumps(meta).encode())
    saved["compressed"] = torch.frombuffer(
        bytearray(len(text).to_bytes(4, "little") + text + payload[4 + length :]), dtype=torch.uint8
    )
    torch.save(saved, tmp_path / "m.pt")
    fresh = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    with pytest.raises(pm.PruneError, match="codec this prune_magic does not know \\('zstd'\\)"):
        pm.load(tmp_path / "m.pt", lambda: fresh)
