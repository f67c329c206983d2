"""AA-CLIP checkpoints in the public code's format (docs/aa-clip.md), and the
cross-attention variants' (docs/cross-attention.md).

text_adapter.pth:  {"epoch", "text_adapter": ModuleList state (0.fc.0.weight … K.fc.0.weight), "text_optimizer"}
image_adapter.pth, image_adapter_{epoch}.pth:
                   {"epoch", "image_adapter": ModuleDict state (layer_adapters.i.fc.0.weight, seg_proj.i.fc[.0].weight,
                    det_proj.fc[.0].weight), "image_optimizer"[, "image_scheduler"]}
Cross-attention variants write text_adapter_cross_attn.pth (adds "text_cross_attn" where the variant has it),
image_adapter_cross_attn.pth and image_adapter_cross_attn_{epoch}.pth (add "image_cross_attn").
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from crossgraft.anomaly.model import AdaptedCLIP
from crossgraft.graft import CheckpointError, Explain, Mismatch, load_strict, read_checkpoint, save_atomic

TEXT_FILE = "text_adapter.pth"
CROSS_SUFFIX = "_cross_attn"


def text_file(variant: str = "base") -> str:
    return TEXT_FILE if variant == "base" else f"text_adapter{CROSS_SUFFIX}.pth"


def image_file(variant: str = "base", epoch: int | None = None) -> str:
    stem = "image_adapter" if variant == "base" else f"image_adapter{CROSS_SUFFIX}"
    return f"{stem}.pth" if epoch is None else f"{stem}_{epoch}.pth"


def _count(keys: list[str], pattern: str) -> int:
    indices = {int(m.group(1)) for key in keys if (m := re.match(pattern, key))}
    return max(indices) + 1 if indices else 0


def _explain_text(model: AdaptedCLIP, state: dict[str, torch.Tensor]) -> Explain:
    def explain(missing: list[str], unexpected: list[str], mismatched: list[Mismatch]) -> str:
        causes = []
        saved = _count(list(state), r"(\d+)\.fc\.") - 1
        if saved != model.adapter_config.text_adapt_until:
            causes.append(
                f"the checkpoint has {saved} text adapters: it was trained with --text_adapt_until {saved}, "
                f"this model uses {model.adapter_config.text_adapt_until}"
            )
        if mismatched:
            causes.append(
                f"different backbone widths (this text encoder is {model.backbone.text_width} wide, "
                f"embedding {model.backbone.embed_dim}): was it trained with another --clip?"
            )
        return "; ".join(causes)

    return explain


def _explain_image(model: AdaptedCLIP, state: dict[str, torch.Tensor]) -> Explain:
    def explain(missing: list[str], unexpected: list[str], mismatched: list[Mismatch]) -> str:
        causes = []
        keys = list(state)
        saved_relu = any(re.match(r"(seg|det)_proj\.(\d+\.)?fc\.0\.weight", k) for k in keys)
        if saved_relu != model.adapter_config.relu:
            causes.append(f"--relu differs: the checkpoint was trained {'with' if saved_relu else 'without'} --relu")
        saved = _count(keys, r"layer_adapters\.(\d+)\.")
        if saved != model.adapter_config.image_adapt_until:
            causes.append(
                f"the checkpoint has {saved} image layer adapters: it was trained with "
                f"--image_adapt_until {saved}, this model uses {model.adapter_config.image_adapt_until}"
            )
        levels = _count(keys, r"seg_proj\.(\d+)\.")
        if levels != len(model.backbone.levels):
            causes.append(
                f"the checkpoint has {levels} feature levels, this backbone uses {len(model.backbone.levels)}"
            )
        if mismatched:
            causes.append(
                f"different backbone widths (this ViT is {model.backbone.vision_width} wide, embedding "
                f"{model.backbone.embed_dim}): was it trained with another --clip?"
            )
        return "; ".join(causes)

    return explain


def _load_entry(
    module: nn.Module,
    checkpoint: dict[str, Any],
    path: Path,
    key: str,
    other: str,
    what: str,
    explain: Callable[[dict[str, torch.Tensor]], Explain],
    check_only: bool,
) -> None:
    if key not in checkpoint:
        hint = f" (this is a {other.replace('_', ' ')} checkpoint)" if other in checkpoint else ""
        raise CheckpointError(f"{path}: no {key!r} entry{hint}; keys: {sorted(checkpoint)}")
    state = checkpoint[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: the {key!r} entry is not a state dict of tensors")
    load_strict(module, state, what=what, source=path, explain=explain(state), check_only=check_only)


def _load_cross(
    module: nn.Module | None,
    checkpoint: dict[str, Any],
    key: str,
    path: Path,
    adapters_only: bool,
    check_only: bool = False,
) -> None:
    """The cross-attention entry must be there exactly when the model has the module."""
    if module is None or adapters_only:
        if key in checkpoint:
            raise CheckpointError(
                f"{path} holds {key!r} weights: it comes from a cross-attention run, but this model "
                f"{'is loading base adapters' if adapters_only else 'has no ' + key + ' module'}; use "
                "--variant of that run (test/predict read it from run_config.json), or a base-model checkpoint"
            )
        return
    if key not in checkpoint:
        raise CheckpointError(f"{path}: no {key!r} entry, but this variant has {key}; keys: {sorted(checkpoint)}")
    load_strict(module, checkpoint[key], what=key, source=path, check_only=check_only)


def _load_side(model: AdaptedCLIP, path: Path, side: str, adapters_only: bool, check_only: bool) -> dict[str, Any]:
    """Load the `side` ("text" or "image") of a checkpoint strictly: every check passes before any weight
    changes; `check_only` changes nothing. Returns the checkpoint dict."""
    other = "image" if side == "text" else "text"
    explain = _explain_text if side == "text" else _explain_image
    checkpoint = read_checkpoint(path)
    for check in (True,) if check_only else (True, False):
        _load_entry(
            getattr(model, f"{side}_adapter"),
            checkpoint,
            path,
            f"{side}_adapter",
            f"{other}_adapter",
            f"the {side} adapter",
            lambda state: explain(model, state),
            check,
        )
        _load_cross(getattr(model, f"{side}_cross_attn"), checkpoint, f"{side}_cross_attn", path, adapters_only, check)
    return checkpoint


def load_text_adapter(
    model: AdaptedCLIP, path: Path, adapters_only: bool = False, check_only: bool = False
) -> dict[str, Any]:
    """Load a text checkpoint (ours or the public code's) strictly; returns the checkpoint dict.
    `adapters_only`: load just the adapters (a base model's, for fair comparison); `check_only`: load nothing,
    only check that it would load."""
    return _load_side(model, path, "text", adapters_only, check_only)


def load_image_adapter(
    model: AdaptedCLIP, path: Path, adapters_only: bool = False, check_only: bool = False
) -> dict[str, Any]:
    """Load an image checkpoint (ours or the public code's) strictly; returns the checkpoint dict."""
    return _load_side(model, path, "image", adapters_only, check_only)


def check_text_adapter(model: AdaptedCLIP, path: Path) -> None:
    """A checkpoint to resume stage 1 from: it loads into `model`, and has the optimizer state."""
    if "text_optimizer" not in load_text_adapter(model, path, check_only=True):
        raise CheckpointError(f"{path}: no 'text_optimizer' entry, so training cannot resume from it")


def check_image_adapter(model: AdaptedCLIP, path: Path) -> None:
    """A checkpoint to resume stage 2 from: it loads into `model`, and has the optimizer state."""
    if "image_optimizer" not in load_image_adapter(model, path, check_only=True):
        raise CheckpointError(f"{path}: no 'image_optimizer' entry, so training cannot resume from it")


def save_text_adapter(model: AdaptedCLIP, optimizer: Optimizer, epoch: int, save_path: Path) -> Path:
    checkpoint = {
        "epoch": epoch,
        "text_adapter": model.text_adapter.state_dict(),
        "text_optimizer": optimizer.state_dict(),
    }
    if model.text_cross_attn is not None:
        checkpoint["text_cross_attn"] = model.text_cross_attn.state_dict()
    return save_atomic(checkpoint, Path(save_path) / text_file(model.cross.variant))


def save_image_adapter(
    model: AdaptedCLIP, optimizer: Optimizer, scheduler: LRScheduler, epoch: int, save_path: Path
) -> Path:
    """Write the latest image checkpoint and the one of this epoch."""
    checkpoint = {
        "epoch": epoch,
        "image_adapter": model.image_adapter.state_dict(),
        "image_optimizer": optimizer.state_dict(),
        "image_scheduler": scheduler.state_dict(),
    }
    if model.image_cross_attn is not None:
        checkpoint["image_cross_attn"] = model.image_cross_attn.state_dict()
    save_atomic(checkpoint, Path(save_path) / image_file(model.cross.variant, epoch))
    return save_atomic(checkpoint, Path(save_path) / image_file(model.cross.variant))
