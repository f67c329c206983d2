"""TorchScript archives read as data: weights equal torch.jit.load's bit for bit, and nothing in the archive runs."""

from __future__ import annotations

import os
import pickle
import threading
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from crossgraft.torchscript import TorchScriptError, is_torchscript_archive, read_torchscript_state_dict

MARKER = "MARKER-SCRIPTED-CODE-RAN"


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2)
        self.ln = nn.LayerNorm(8)
        self.mlp = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8, bias=False))
        self.attn_mask = torch.ones(2, 2)  # a plain tensor attribute: not in the state dict
        self.register_buffer("steps", torch.arange(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x, x, x, need_weights=False)[0]
        return x + self.mlp(self.ln(x))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Block(), Block()])
        self.proj = nn.Parameter(torch.randn(4, 8).t())  # a transposed (non-contiguous) parameter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x @ self.proj


class Trap(nn.Module):
    """A module whose scripted __setstate__ prints a marker and, when `spin` starts at 0, never returns."""

    def __init__(self, spin: int) -> None:
        super().__init__()
        self.spin = spin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @torch.jit.export
    def __getstate__(self) -> tuple[int, bool]:
        return (self.spin, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[int, bool]) -> None:
        print("MARKER-SCRIPTED-CODE-RAN")
        self.spin = state[0]
        self.training = state[1]
        while self.spin >= 0:
            self.spin += 1


class Trapped(nn.Module):
    def __init__(self, loops: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(3))
        self.trap = Trap(0 if loops else -(10**9))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trap(x) * self.weight


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("torchscript") / "net.pt"
    torch.jit.save(torch.jit.script(Net().half()), str(path))  # OpenAI ships half-precision weights
    return path


def rewritten(archive: Path, target: Path, replace: dict[str, bytes | None]) -> Path:
    """A copy of `archive` with the records named in `replace` swapped for new bytes (or dropped when None)."""
    with zipfile.ZipFile(archive) as source, zipfile.ZipFile(target, "w") as copy:
        for info in source.infolist():
            suffix = info.filename.split("/", 1)[1]
            if suffix not in replace:
                copy.writestr(info, source.read(info))
            elif replace[suffix] is not None:
                copy.writestr(info.filename, replace[suffix])
    return target


def test_the_weights_equal_torch_jit_load_bit_for_bit(archive):
    ours = read_torchscript_state_dict(archive)
    with torch.no_grad():
        theirs = torch.jit.load(str(archive)).state_dict()
    assert list(ours) == list(theirs) and "blocks.0.attn_mask" not in ours
    for key, value in theirs.items():
        assert ours[key].dtype == value.dtype == torch.float16 or key.endswith("steps"), key
        assert ours[key].shape == value.shape and ours[key].stride() == value.stride(), key
        assert torch.equal(ours[key], value), key


def test_a_traced_module_reads_the_same(tmp_path):
    path = tmp_path / "traced.pt"
    torch.jit.save(torch.jit.trace(Net().eval(), (torch.randn(5, 1, 8),)), str(path))
    ours, theirs = read_torchscript_state_dict(path), torch.jit.load(str(path)).state_dict()
    assert list(ours) == list(theirs) and all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_a_scripted_setstate_is_never_run(tmp_path, capfd):
    path = tmp_path / "marker.pt"
    torch.jit.save(torch.jit.script(Trapped(loops=False)), str(path))
    torch.jit.load(str(path))  # the archive is hostile: loading it the usual way runs its code
    assert MARKER in capfd.readouterr().out
    with pytest.raises(TorchScriptError, match=r"marker\.pt: __torch__\..*Trap at trap keeps custom state"):
        read_torchscript_state_dict(path)
    assert MARKER not in capfd.readouterr().out


def test_an_archive_whose_setstate_loops_forever_is_refused_within_seconds(tmp_path, capfd):
    path = tmp_path / "loop.pt"
    torch.jit.save(torch.jit.script(Trapped(loops=True)), str(path))  # torch.jit.load on it never returns
    outcome: list[BaseException] = []

    def read() -> None:
        try:
            read_torchscript_state_dict(path)
        except BaseException as error:  # noqa: BLE001 - handed to the test thread
            outcome.append(error)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=60)
    assert not reader.is_alive(), "the reader ran the archive's endless __setstate__"
    assert len(outcome) == 1 and isinstance(outcome[0], TorchScriptError)
    assert MARKER not in capfd.readouterr().out


class RunsAShellCommand:
    def __reduce__(self):
        return (os.system, (f"echo {MARKER}",))


def test_a_pickle_that_calls_any_other_global_is_refused(archive, tmp_path, capfd):
    hostile = rewritten(archive, tmp_path / "hostile.pt", {"data.pkl": pickle.dumps(RunsAShellCommand(), protocol=2)})
    assert is_torchscript_archive(hostile)
    with pytest.raises(TorchScriptError, match=r"refers to (posix|os)\.system.*could run code"):
        read_torchscript_state_dict(hostile)
    assert MARKER not in capfd.readouterr().out


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"data/0": None}, r"tensor data record .*data/0 is missing"),
        ({"data/0": b"\0" * 6}, r"data/0 holds 6 bytes where its \d+ torch.float16 values need \d+"),
        ({"data.pkl": b"\x80\x02garbage"}, r"not a readable TorchScript archive"),
        ({"data.pkl": pickle.dumps([1, 2, 3], protocol=2)}, r"holds list, not a scripted module"),
        ({"byteorder": b"big"}, r"big-endian archives are not supported"),
    ],
)
def test_a_damaged_archive_is_one_clear_error(archive, tmp_path, change, message):
    with pytest.raises(TorchScriptError, match=message):
        read_torchscript_state_dict(rewritten(archive, tmp_path / "damaged.pt", change))


def test_a_tensor_that_reaches_past_its_storage_is_refused(archive, tmp_path):
    with zipfile.ZipFile(archive) as source:
        data = next(source.read(n) for n in source.namelist() if n.endswith("/data.pkl"))
    bent = data.replace(b"(K\x08K\x04t(K\x01K\x08t", b"(K\x08K\x05t(K\x01K\x08t", 1)  # proj (8, 4) grown to (8, 5)
    assert bent != data
    with pytest.raises(TorchScriptError, match=r"reaches element \d+ of a storage of 32"):
        read_torchscript_state_dict(rewritten(archive, tmp_path / "bent.pt", {"data.pkl": bent}))
