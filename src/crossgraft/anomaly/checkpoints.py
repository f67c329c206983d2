"""AA-CLIP checkpoints in the public code's format (DESIGN §3).

text_adapter.pth:  {"epoch", "text_adapter": ModuleList state (0.fc.0.weight … K.fc.0.weight), "text_optimizer"}
image_adapter.pth, image_adapter_{epoch}.pth:
                   {"epoch", "image_adapter": ModuleDict state (layer_adapters.i.fc.0.weight, seg_proj.i.fc[.0].weight,
                    det_proj.fc[.0].weight), "image_optimizer"[, "image_scheduler"]}
"""

from __future__ import annotations

import re
from pathlib import Path

from crossgraft.anomaly.model import AdaptedCLIP
from crossgraft.graft import CheckpointError, load_strict, read_checkpoint, save_atomic

TEXT_FILE = "text_adapter.pth"
IMAGE_FILE = "image_adapter.pth"


def image_epoch_file(epoch: int) -> str:
    return f"image_adapter_{epoch}.pth"


def _count(keys: list[str], pattern: str) -> int:
    indices = {int(m.group(1)) for key in keys if (m := re.match(pattern, key))}
    return max(indices) + 1 if indices else 0


def _explain_text(model: AdaptedCLIP, state: dict):
    def explain(missing, unexpected, mismatched) -> str:
        causes = []
        saved = _count(list(state), r"(\d+)\.fc\.") - 1
        if saved != model.config.text_adapt_until:
            causes.append(
                f"the checkpoint has {saved} text adapters: it was trained with --text_adapt_until {saved}, "
                f"this model uses {model.config.text_adapt_until}"
            )
        if mismatched:
            causes.append(
                f"different backbone widths (this text encoder is {model.backbone.text_width} wide, "
                f"embedding {model.backbone.embed_dim}): was it trained with another --clip?"
            )
        return "; ".join(causes)

    return explain


def _explain_image(model: AdaptedCLIP, state: dict):
    def explain(missing, unexpected, mismatched) -> str:
        causes = []
        keys = list(state)
        saved_relu = any(re.match(r"(seg|det)_proj\.(\d+\.)?fc\.0\.weight", k) for k in keys)
        if saved_relu != model.config.relu:
            causes.append(f"--relu differs: the checkpoint was trained {'with' if saved_relu else 'without'} --relu")
        saved = _count(keys, r"layer_adapters\.(\d+)\.")
        if saved != model.config.image_adapt_until:
            causes.append(
                f"the checkpoint has {saved} image layer adapters: it was trained with "
                f"--image_adapt_until {saved}, this model uses {model.config.image_adapt_until}"
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


def _load_entry(module, path: Path, key: str, other: str, what: str, explain) -> dict:
    checkpoint = read_checkpoint(path)
    if key not in checkpoint:
        hint = f" (this is a {other.replace('_', ' ')} checkpoint)" if other in checkpoint else ""
        raise CheckpointError(f"{path}: no {key!r} entry{hint}; keys: {sorted(checkpoint)}")
    load_strict(module, checkpoint[key], what=what, source=path, explain=explain(checkpoint[key]))
    return checkpoint


def load_text_adapter(model: AdaptedCLIP, path: Path) -> dict:
    """Load a text_adapter.pth (ours or the public code's) strictly; returns the checkpoint dict."""
    return _load_entry(
        model.text_adapter,
        path,
        "text_adapter",
        "image_adapter",
        "the text adapter",
        lambda state: _explain_text(model, state),
    )


def load_image_adapter(model: AdaptedCLIP, path: Path) -> dict:
    """Load an image_adapter[_N].pth (ours or the public code's) strictly; returns the checkpoint dict."""
    return _load_entry(
        model.image_adapter,
        path,
        "image_adapter",
        "text_adapter",
        "the image adapter",
        lambda state: _explain_image(model, state),
    )


def save_text_adapter(model: AdaptedCLIP, optimizer, epoch: int, save_path: Path) -> Path:
    return save_atomic(
        {"epoch": epoch, "text_adapter": model.text_adapter.state_dict(), "text_optimizer": optimizer.state_dict()},
        Path(save_path) / TEXT_FILE,
    )


def save_image_adapter(model: AdaptedCLIP, optimizer, scheduler, epoch: int, save_path: Path) -> Path:
    """Write image_adapter.pth (the latest) and image_adapter_{epoch}.pth."""
    checkpoint = {
        "epoch": epoch,
        "image_adapter": model.image_adapter.state_dict(),
        "image_optimizer": optimizer.state_dict(),
        "image_scheduler": scheduler.state_dict(),
    }
    save_atomic(checkpoint, Path(save_path) / image_epoch_file(epoch))
    return save_atomic(checkpoint, Path(save_path) / IMAGE_FILE)
