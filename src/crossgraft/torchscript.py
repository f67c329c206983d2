"""Reading the weights of a TorchScript archive (OpenAI ships CLIP as one, e.g. `ViT-L-14-336px.pt`) as data.

`torch.jit.load` runs code from the archive: a scripted class's `__setstate__` runs while it loads, before anything
can be checked, and one that loops never returns. This reader runs nothing from the file. It opens the zip, unpickles
`data.pkl` with an unpickler that builds only tensors (from the archive's `data/` records), plain containers and
inert records of the archive's scripted objects (their state kept, their code never called), and names a module's
parameters and buffers from the `__parameters__` / `__buffers__` lines of the archive's class definitions, which it
reads as text. The result equals `torch.jit.load(path).state_dict()` bit for bit.
"""

from __future__ import annotations

import io
import pickle
import re
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from crossgraft.errors import CrossgraftError

MAX_PICKLE_BYTES = 256 * 2**20  # data.pkl of ViT-L/14@336px is ~60 kB; a larger one is not a checkpoint
MAX_MODULE_DEPTH = 200  # CLIP nests ~6 deep
STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}
_CLASS_LINE = re.compile(r"^class (\w+)\(Module\):\s*$")
_NAMES_LINE = re.compile(r"^\s+(__parameters__|__buffers__) = \[(.*)\]\s*$")


class TorchScriptError(CrossgraftError, ValueError):
    """A TorchScript archive that cannot be read as weights; the message names the file and what is wrong."""


class ScriptedObject:
    """An object of one of the archive's scripted classes (`__torch__.*`): its class name and pickled state.
    Each class name gets its own subclass (pickle's NEWOBJ needs a class), made by `_scripted_class`."""

    qualified_name = ""
    state: Any = None

    def __setstate__(self, state: Any) -> None:  # pickle's BUILD: keep the state, run nothing
        self.state = state


def is_torchscript_archive(path: Path) -> bool:
    """Whether `path` is a zip holding a TorchScript archive (its `constants.pkl` or `code/` records)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") or "/code/" in name for name in archive.namelist())


def read_torchscript_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of the module a TorchScript archive holds, on the CPU, without running the archive's code."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            prefix = _archive_prefix(archive, path)
            declared = _declared_tensor_names(archive, prefix)
            root = _ArchiveUnpickler(archive, prefix, path).load_root()
    except TorchScriptError:
        raise
    except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError) as error:
        raise TorchScriptError(f"{path}: not a readable TorchScript archive ({error})") from error
    if not isinstance(root, ScriptedObject):
        raise TorchScriptError(f"{path}: the archive holds {type(root).__name__}, not a scripted module")
    state_dict: dict[str, torch.Tensor] = {}
    _collect(root, "", declared, state_dict, path, depth=0)
    return state_dict


def _archive_prefix(archive: zipfile.ZipFile, path: Path) -> str:
    pickles = [name for name in archive.namelist() if name.count("/") == 1 and name.endswith("/data.pkl")]
    if len(pickles) != 1:
        raise TorchScriptError(f"{path}: expected one <name>/data.pkl record in the archive, found {len(pickles)}")
    return pickles[0].removesuffix("data.pkl")


def _declared_tensor_names(archive: zipfile.ZipFile, prefix: str) -> dict[str, list[str]]:
    """{qualified class name: its parameter and buffer names}, from the class definitions under `code/`."""
    declared: dict[str, list[str]] = {}
    code = prefix + "code/"
    for name in archive.namelist():
        if not (name.startswith(code) and name.endswith(".py")):
            continue
        module = name[len(code) : -len(".py")].replace("/", ".")
        current: str | None = None
        for line in archive.read(name).decode("utf-8", errors="replace").splitlines():
            if match := _CLASS_LINE.match(line):
                current = f"{module}.{match.group(1)}"
                declared[current] = []
            elif current is not None and (match := _NAMES_LINE.match(line)):
                declared[current] += re.findall(r'"([^"]*)"', match.group(2))
    return declared


class _ArchiveUnpickler(pickle.Unpickler):
    """Builds tensors, plain containers and `ScriptedObject` records; refuses every other global."""

    def __init__(self, archive: zipfile.ZipFile, prefix: str, path: Path) -> None:
        info = archive.getinfo(prefix + "data.pkl")
        if info.file_size > MAX_PICKLE_BYTES:
            raise TorchScriptError(f"{path}: data.pkl is {info.file_size} bytes, more than a checkpoint's")
        self._archive, self._prefix, self._path = archive, prefix, path
        self._storages: dict[str, torch.Tensor] = {}
        self._classes: dict[str, type[ScriptedObject]] = {}
        super().__init__(io.BytesIO(archive.read(info)))

    def load_root(self) -> Any:
        byteorder = self._prefix + "byteorder"
        if byteorder in self._archive.namelist() and self._archive.read(byteorder).strip() != b"little":
            raise TorchScriptError(f"{self._path}: big-endian archives are not supported")
        return self.load()

    def find_class(self, module: str, name: str) -> Any:
        if module == "__torch__" or module.startswith("__torch__."):
            return self._scripted_class(f"{module}.{name}")
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return self._rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module == "torch" and name in STORAGE_DTYPES:
            return STORAGE_DTYPES[name]
        if module == "torch.jit._pickle" and name == "restore_type_tag":
            return lambda value, type_name: value
        if module == "torch.jit._pickle" and name.startswith("build_") and name.endswith("list"):
            return list
        raise TorchScriptError(
            f"{self._path}: the archive refers to {module}.{name}, which a checkpoint of weights does not need; "
            "it is not read, because building it could run code from the file"
        )

    def _scripted_class(self, qualified_name: str) -> type[ScriptedObject]:
        if qualified_name not in self._classes:
            self._classes[qualified_name] = type(
                "ScriptedObject", (ScriptedObject,), {"qualified_name": qualified_name}
            )
        return self._classes[qualified_name]

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise TorchScriptError(f"{self._path}: unexpected persistent record {pid!r:.80}")
        _, dtype, key, _location, numel = pid
        if not (isinstance(dtype, torch.dtype) and isinstance(key, str) and isinstance(numel, int) and numel >= 0):
            raise TorchScriptError(f"{self._path}: malformed storage record {pid!r:.80}")
        if key not in self._storages:
            self._storages[key] = self._read_storage(key, dtype, numel)
        return self._storages[key]

    def _read_storage(self, key: str, dtype: torch.dtype, numel: int) -> torch.Tensor:
        record = f"{self._prefix}data/{key}"
        try:
            info = self._archive.getinfo(record)
        except KeyError:
            raise TorchScriptError(f"{self._path}: the tensor data record {record} is missing") from None
        expected = numel * torch.empty((), dtype=dtype).element_size()
        if info.file_size != expected:
            raise TorchScriptError(
                f"{self._path}: {record} holds {info.file_size} bytes where its {numel} {dtype} values need {expected}"
            )
        data = bytearray(self._archive.read(info))
        return torch.frombuffer(data, dtype=dtype) if numel else torch.empty(0, dtype=dtype)  # (numel,)

    def _rebuild_tensor(
        self, storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any, hooks: Any, *metadata: Any
    ) -> torch.Tensor:
        if not (
            isinstance(storage, torch.Tensor)
            and isinstance(offset, int)
            and isinstance(size, tuple | list)
            and isinstance(stride, tuple | list)
            and len(size) == len(stride)
            and all(isinstance(n, int) and n >= 0 for n in (offset, *size, *stride))
        ):
            raise TorchScriptError(f"{self._path}: malformed tensor record")
        if 0 not in size:
            last = offset + sum((n - 1) * s for n, s in zip(size, stride))
            if last >= storage.numel():
                raise TorchScriptError(
                    f"{self._path}: a tensor of size {tuple(size)} reaches element {last} of a storage of "
                    f"{storage.numel()}"
                )
        return torch.as_strided(storage, tuple(size), tuple(stride), offset)


def _collect(
    obj: ScriptedObject,
    prefix: str,
    declared: dict[str, list[str]],
    out: dict[str, torch.Tensor],
    path: Path,
    depth: int,
) -> None:
    """Add the parameters and buffers of `obj` and its submodules to `out`, in `state_dict` order."""
    if depth > MAX_MODULE_DEPTH:
        raise TorchScriptError(f"{path}: modules nest more than {MAX_MODULE_DEPTH} deep")
    if not isinstance(obj.state, dict):  # a class with its own __setstate__: its state is not named attributes
        raise TorchScriptError(
            f"{path}: {obj.qualified_name} at {prefix.rstrip('.') or 'the root'} keeps custom state "
            "(a scripted __setstate__), which this reader does not run; a checkpoint of weights never needs one"
        )
    if obj.qualified_name not in declared:
        raise TorchScriptError(f"{path}: the archive does not define the class {obj.qualified_name}")
    for name in declared[obj.qualified_name]:
        value = obj.state.get(name)
        if value is None:  # an optional parameter such as a missing bias
            continue
        if not isinstance(value, torch.Tensor):
            raise TorchScriptError(f"{path}: {prefix}{name} is declared a parameter but holds {type(value).__name__}")
        out[prefix + name] = value
    for name, value in obj.state.items():
        if isinstance(value, ScriptedObject) and value.qualified_name in declared:
            _collect(value, f"{prefix}{name}.", declared, out, path, depth + 1)
