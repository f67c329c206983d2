"""Moving weights between models safely (both families): checkpoint reads that never run code, strict loads that
explain a mismatch, selective copies that report every key, atomic checkpoint writes, and weight-magnitude
summaries."""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from crossgraft.errors import CrossgraftError
from crossgraft.files import atomic_write


class CheckpointError(CrossgraftError, ValueError):
    """A checkpoint that cannot be loaded into the model as configured. The message says why."""


def save_atomic(obj: object, path: Path) -> Path:
    """torch.save through the atomic writer: an interrupted write never leaves half a checkpoint."""
    with atomic_write(path, binary=True) as handle:
        torch.save(obj, handle)
    return Path(path)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint dict on the CPU, tensors and plain containers only: a file that holds other Python
    objects is refused, since unpickling them could run code from the file. Clear errors for a missing or
    unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        objects = re.findall(r"GLOBAL ([\w.]+)", str(error))  # what weights-only unpickling refused
        if not objects:
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (corrupt or not one)") from error
        raise CheckpointError(
            f"{path} holds Python objects beyond tensors, numbers and plain containers (first: {objects[0]}), and "
            "loading those could run code from the file, so it is refused. AA-CLIP checkpoints (ours and the public "
            "code's) never need them. If you trust the file, convert it once: python -c \"import torch; c = "
            "torch.load('IN', weights_only=False); torch.save({k: c[k] for k in ('epoch', 'text_adapter', "
            "'image_adapter', 'text_cross_attn', 'image_cross_attn') if k in c}, 'OUT')\""
        ) from error
    except Exception as error:  # zip, pickle and torch errors mean the same thing here
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({error})") from error
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, found {type(checkpoint).__name__}")
    return checkpoint


Mismatch = tuple[str, tuple[int, ...], tuple[int, ...]]  # key, checkpoint shape, model shape
Explain = Callable[[list[str], list[str], list[Mismatch]], str]  # (missing, unexpected, mismatched) -> likely cause


def load_strict(
    module: nn.Module,
    state: dict[str, torch.Tensor],
    *,
    what: str,
    source: Path | str,
    explain: Explain | None = None,
    check_only: bool = False,
) -> None:
    """Load `state` into `module` only if every key and shape matches; else raise naming key, both shapes and
    the likely cause (from `explain`). Nothing is changed when it fails, nor with `check_only`."""
    expected = module.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    mismatched = [
        (key, tuple(state[key].shape), tuple(expected[key].shape))
        for key in expected
        if key in state and tuple(state[key].shape) != tuple(expected[key].shape)
    ]
    if missing or unexpected or mismatched:
        lines = [f"cannot load {what} from {source}:"]
        for key, got, want in mismatched[:6]:
            lines.append(f"  {key}: checkpoint has shape {got}, the model expects {want}")
        if missing:
            lines.append(f"  missing in the checkpoint: {', '.join(missing[:6])}{' …' if len(missing) > 6 else ''}")
        if unexpected:
            lines.append(f"  not in the model: {', '.join(unexpected[:6])}{' …' if len(unexpected) > 6 else ''}")
        cause = explain(missing, unexpected, mismatched) if explain else ""
        if cause:
            lines.append(f"  likely cause: {cause}")
        raise CheckpointError("\n".join(lines))
    if not check_only:
        module.load_state_dict(state, strict=True)


def mean_abs_weight(module: nn.Module) -> float:
    """Mean |w| over every weight matrix of a module (biases and norms left out): a quick 'was it trained' look."""
    values = [p.detach().abs().mean().item() for name, p in module.named_parameters() if p.dim() > 1]
    return float(sum(values) / len(values)) if values else 0.0


# ------------------------------------------------------------------------------------- selective copy
@dataclass
class CopyReport:
    """What a selective copy did, key by key."""

    copied: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # key, source shape, target shape
    skipped: list[str] = field(default_factory=list)  # in the source, left out on purpose (skip prefixes)
    unexpected: list[str] = field(default_factory=list)  # in the source, not in the target
    missing: list[str] = field(default_factory=list)  # in the target, not filled: created from config
    tied: list[str] = field(default_factory=list)  # in the target, filled by weight tying

    def format(self, samples: int = 5) -> str:
        """Counts and a few sample keys of each kind, as --inspect_weights prints them."""
        lines = []
        kinds = [
            ("copied", self.copied),
            ("shape-mismatched", [f"{k}: source {tuple(a)} vs target {tuple(b)}" for k, a, b in self.mismatched]),
            ("skipped", self.skipped),
            ("unexpected", self.unexpected),
            ("missing", self.missing),
            ("tied", self.tied),
        ]
        for label, keys in kinds:
            lines.append(f"{label:>17}: {len(keys)}")
            lines.extend(f"{'':>19}{key}" for key in keys[:samples])
            if len(keys) > samples:
                lines.append(f"{'':>19}… and {len(keys) - samples} more")
        return "\n".join(lines)


def _has_prefix(key: str, prefixes: Sequence[str]) -> bool:
    # The component name may follow a wrapper prefix ('model.mm_projector.0.weight' for 'mm_projector').
    parts = key.split(".")
    return any(".".join(parts[i:]).startswith(prefix) for prefix in prefixes for i in range(min(2, len(parts))))


def selective_copy(
    source: dict[str, torch.Tensor],
    target_shapes: dict[str, torch.Size | tuple],
    skip_prefixes: Sequence[str] = (),
    tied: dict[str, str] | None = None,
) -> tuple[dict[str, torch.Tensor], CopyReport]:
    """The source tensors whose key exists in the target with an equal shape, minus the skipped prefixes.

    `tied` maps target keys filled by weight tying to their source key ({'lm_head.weight':
    'model.embed_tokens.weight'}); they count as tied, not missing, when their source key is copied.
    """
    tied = tied or {}
    report = CopyReport()
    matched: dict[str, torch.Tensor] = {}
    for key, tensor in source.items():
        if _has_prefix(key, skip_prefixes):
            report.skipped.append(key)
        elif key not in target_shapes:
            report.unexpected.append(key)
        elif tuple(tensor.shape) != tuple(target_shapes[key]):
            report.mismatched.append((key, tuple(tensor.shape), tuple(target_shapes[key])))
        else:
            matched[key] = tensor
            report.copied.append(key)
    for key in target_shapes:
        if key in matched:
            continue
        if key in tied and tied[key] in matched:
            report.tied.append(key)
        else:
            report.missing.append(key)
    return matched, report


# ----------------------------------------------------------------------------------------- file integrity
def file_problem(path: Path) -> str | None:
    """What is wrong with a saved file, judged by its kind (json, safetensors, torch.save zip), or None when it
    reads as complete: a write cut short (an empty, truncated or half-renamed file) is found here."""
    path = Path(path)
    if not path.is_file():
        return "missing"
    if path.stat().st_size == 0:
        return "empty"
    try:
        if path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        elif path.suffix == ".safetensors":
            with safe_open(str(path), "pt") as handle:
                handle.keys()
        elif path.suffix in (".pt", ".pth", ".bin"):
            with zipfile.ZipFile(path) as archive:  # torch.save writes a zip; its directory is at the end
                archive.namelist()
    except (OSError, ValueError, zipfile.BadZipFile, SafetensorError) as error:
        return f"incomplete or corrupt ({str(error).splitlines()[0][:120]})"
    return None
