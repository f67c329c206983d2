"""Fair comparison (seed 000, docs/cross-attention.md): a variant starts from a trained base model's adapters, and the
log says so in the seed's words: the loading banners, the mean weight magnitude of each loaded module (a warning when it
looks untrained), and the WEIGHT INITIALIZATION SUMMARY before each stage."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from crossgraft.anomaly.checkpoints import load_image_adapter, load_text_adapter
from crossgraft.anomaly.model import AdaptedCLIP
from crossgraft.graft import mean_abs_weight

RULE = "=" * 70
MAGNITUDE_WARNING = 0.05  # seed 000: "Weight magnitude too small (< 0.05) after loading"
MODULES = ("text_adapter", "text_cross_attn", "image_adapter", "image_cross_attn")


@dataclass
class BaseAdapters:
    """Which base-model checkpoints a run started from (None: that side starts from random init)."""

    text: Path | None = None
    image: Path | None = None


def load_base_adapters(model: AdaptedCLIP, text: Path | None, image: Path | None) -> BaseAdapters:
    """Load a base model's adapters strictly (cross-attention stays at its Xavier init); nothing is written, so a
    bad file stops the run before it starts."""
    if text is not None:
        load_text_adapter(model, text, adapters_only=True)
    if image is not None:
        load_image_adapter(model, image, adapters_only=True)
    return BaseAdapters(text, image)


def banner(logger: logging.Logger, title: str, lines: list[str]) -> None:
    logger.info("\n".join([RULE, title, RULE, *lines]))


def loaded_banner(logger: logging.Logger, model: AdaptedCLIP, side: str, path: Path) -> None:
    """LOADING PRE-TRAINED BASE {TEXT|IMAGE} ADAPTER, with the loaded module's mean weight magnitude."""
    module: nn.Module = getattr(model, f"{side}_adapter")
    magnitude = mean_abs_weight(module)
    lines = [
        f"  Path: {path}",
        f"  ✓ Base {side} adapter loaded successfully!",
        f"  Mean weight magnitude: {magnitude:.6f} (should be > 0.1 if trained)",
    ]
    if magnitude < MAGNITUDE_WARNING:
        lines.append(
            f"  [WARNING] mean weight magnitude {magnitude:.6f} < {MAGNITUDE_WARNING}: the checkpoint looks "
            "untrained; check the path"
        )
    banner(logger, f"LOADING PRE-TRAINED BASE {side.upper()} ADAPTER", lines)


def initialization_summary(
    logger: logging.Logger, model: AdaptedCLIP, stage: int, round_index: int, base: BaseAdapters, trained_text: bool
) -> None:
    """The WEIGHT INITIALIZATION SUMMARY: mean |w| of each trainable module and where its weights come from.

    `trained_text`: stage 1 of this round trained the text side (false with --text_epoch 0)."""
    states = {
        "text_adapter": "pre-trained" if base.text else "random init",
        "text_cross_attn": "random init - NEW",
        "image_adapter": "pre-trained" if base.image else "random init",
        "image_cross_attn": "random init - NEW",
    }
    if round_index > 1:
        states = {name: f"from loop {round_index - 1}" for name in states}
    if stage == 2 and trained_text:
        states["text_adapter"] = "updated from Stage 1"
        states["text_cross_attn"] = "trained in Stage 1"
    rows = []
    for name in MODULES:
        module = getattr(model, name)
        if module is not None:
            rows.append(f"  {name + ':':<20}{mean_abs_weight(module):.6f} ({states[name]})")
    banner(logger, "WEIGHT INITIALIZATION SUMMARY", [*rows, RULE])
