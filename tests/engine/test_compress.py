"""A compressed save: every tensor back bit for bit, read without pickled code, and small."""

from __future__ import annotations

import io
import zipfile

import pytest
import torch
from torch import nn

import prune_magic as pm
from prune_magic.engine.compress import decode, encode
from prune_magic.engine.errors import PruneError
from tests.conftest import MLP, state


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).view(torch.uint8) if t.numel() else t


KINDS = {
    "float32": torch.randn(40, 30),
    "float16": torch.randn(7, 3).half(),
    "bfloat16": (torch.randn(64) * (torch.rand(64) > 0.7)).bfloat16(),
    "float64": torch.randn(3, 3).double(),
    "int64": torch.arange(-5, 20),
    "int8": torch.randint(-5, 5, (40,), dtype=torch.int8),
    "bool": torch.rand(33) > 0.5,
    "scalar": torch.tensor(3.5),
    "int_scalar": torch.tensor(7),
    "empty": torch.empty(0, 4),
    "all_zero": torch.zeros(100, 10),
    "fully_dense": torch.rand(20, 20) + 1,
    "sparse": torch.randn(300, 200) * (torch.rand(300, 200) < 0.08),  # (x * 0 gives -0.0 too)
    "signed": torch.tensor([0.0, -0.0, 1.0, float("nan"), float("inf"), -float("inf")]),
    "complex": torch.randn(5, dtype=torch.complex64),
    "strided": torch.randn(10, 6).T,
}


def test_every_kind_of_tensor_comes_back_bit_for_bit() -> None:
    torch.manual_seed(0)
    header, blob = encode(KINDS)
    back = decode(header, blob)
    for name, tensor in KINDS.items():
        assert back[name].dtype == tensor.dtype and back[name].shape == tensor.shape, name
        assert torch.equal(bits(back[name].contiguous()), bits(tensor.contiguous())), name


def test_a_codebook_tensor_is_stored_as_indices_at_their_bit_width() -> None:
    torch.manual_seed(0)
    weight = torch.zeros(300, 784)
    kept = torch.rand(300, 784) < 0.08
    weight[kept] = torch.linspace(-1, 1, 32)[torch.randint(0, 32, (int(kept.sum()),))]
    header, blob = encode({"w": weight})
    assert header[0]["values"] == "codebook" and header[0]["bits"] == 5 and header[0]["codebook"] == 32
    assert torch.equal(decode(header, blob)["w"], weight)
    # 5-bit codes plus where they are: about 24 KB of a 940 KB tensor
    assert len(blob) < weight.numel() * 4 / 35


def test_save_compress_round_trips_a_module_of_every_kind(tmp_path) -> None:  # type: ignore[no-untyped-def]
    class Holder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(KINDS["sparse"].clone())
            for name, tensor in KINDS.items():
                self.register_buffer(f"t_{name}", tensor.clone())

    torch.manual_seed(0)
    model = Holder()
    saved = pm.save(model, tmp_path / "m.pt", compress=True)
    assert saved.compressed and saved.bytes == (tmp_path / "m.pt").stat().st_size
    back = pm.load(tmp_path / "m.pt", Holder)
    for name, tensor in model.state_dict().items():
        now = back.state_dict()[name]
        assert now.dtype == tensor.dtype and now.shape == tensor.shape, name
        assert torch.equal(bits(now.contiguous()), bits(tensor.contiguous())), name


def test_the_file_reads_with_weights_only_and_holds_no_pickled_code(tmp_path, mlp) -> None:  # type: ignore[no-untyped-def]
    pm.prune(mlp, "clip amount=0.9")
    pm.save(mlp, tmp_path / "m.pt", compress=True)
    raw = torch.load(tmp_path / "m.pt", weights_only=True)
    assert set(raw) == {"format", "compressed"} and raw["compressed"].dtype == torch.uint8
    with zipfile.ZipFile(tmp_path / "m.pt") as archive:
        pickle = next(archive.read(n) for n in archive.namelist() if n.endswith("data.pkl"))
    assert b"prune_magic" not in pickle.replace(b"prune_magic/1", b"")  # no class of ours is pickled


def test_a_pruned_and_shared_model_is_many_times_smaller_and_loads_exactly(mlp) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    big = nn.Sequential(nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10))
    pm.prune(big, "clip amount=0.92\nquantize codebook=32\nquantize codebook=32 layers=*.bias")
    before = state(big)
    buffer = io.BytesIO()
    saved = pm.save(big, buffer, compress=True)
    assert saved.dense_bytes / saved.bytes > 30
    assert saved.line().startswith("on disk: 1,041.4 KiB dense \u2192 ") and saved.line().endswith("\u00d7)")
    buffer.seek(0)
    back = pm.load(
        buffer,
        lambda: nn.Sequential(
            nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10)
        ),
    )
    assert all(torch.equal(bits(back.state_dict()[k]), bits(v)) for k, v in before.items())


def test_tied_weights_are_stored_once(tmp_path) -> None:  # type: ignore[no-untyped-def]
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(100, 32)
            self.out = nn.Linear(32, 100, bias=False)
            self.out.weight = self.embed.weight

    torch.manual_seed(0)
    once = pm.save(Tied(), tmp_path / "tied.pt", compress=True).bytes
    untied = Tied()
    untied.out.weight = nn.Parameter(untied.embed.weight.detach().clone())
    assert pm.save(untied, tmp_path / "untied.pt", compress=True).bytes > once * 1.7
    back = pm.load(tmp_path / "tied.pt", Tied)
    assert torch.equal(back.out.weight, back.embed.weight)


def test_a_plain_save_says_its_size_and_still_loads(tmp_path) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = MLP()
    saved = pm.save(model, tmp_path / "m.pt")
    assert not saved.compressed and saved.bytes == (tmp_path / "m.pt").stat().st_size
    assert "compress=True" in saved.line()
    assert torch.equal(pm.load(tmp_path / "m.pt", MLP).fc1.weight, model.fc1.weight)


def test_compress_refuses_a_sparse_tensor_in_the_state_dict() -> None:
    with pytest.raises(PruneError, match="save without compress=True"):
        encode({"w": torch.eye(3).to_sparse()})
