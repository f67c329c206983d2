"""Moving weights between models safely (both families): strict loads that explain a mismatch, atomic
checkpoint writes, and weight-magnitude summaries."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into the model as configured. The message says why."""


def save_atomic(obj: object, path: Path) -> Path:
    """torch.save to a temporary file beside `path`, then rename: an interrupted write never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    """Write a text file through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_checkpoint(path: Path) -> dict:
    """Load a checkpoint dict on the CPU with a clear error for a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # zip, pickle and torch errors mean the same thing here
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({error})") from error
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, found {type(checkpoint).__name__}")
    return checkpoint


def load_strict(
    module: nn.Module,
    state: dict[str, torch.Tensor],
    *,
    what: str,
    source: Path | str,
    explain: Callable[[list[str], list[str], list[tuple[str, tuple, tuple]]], str] | None = None,
) -> None:
    """Load `state` into `module` only if every key and shape matches; else raise naming key, both shapes and
    the likely cause (from `explain`). Nothing is changed when it fails."""
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
    module.load_state_dict(state, strict=True)


def mean_abs_weight(module: nn.Module) -> float:
    """Mean |w| over every weight matrix of a module (biases and norms left out): a quick 'was it trained' look."""
    values = [p.detach().abs().mean().item() for name, p in module.named_parameters() if p.dim() > 1]
    return float(sum(values) / len(values)) if values else 0.0
