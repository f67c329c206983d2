"""Limits on what a user's files may hold, as settings (no reader here: `crossgraft.images` applies them)."""

from __future__ import annotations

# PIL warns above Image.MAX_IMAGE_PIXELS (89,478,485 by default) and refuses above twice it; the refusal is what the
# flag sets
DEFAULT_MAX_PIXELS = 2 * 89_478_485  # 178,956,970 pixels, e.g. 13,377 x 13,377
MAX_PIXELS_FLAG = "--max_image_pixels"
MAX_PIXELS_HELP = (
    f"decompression-bomb guard: images with more pixels are refused (default {DEFAULT_MAX_PIXELS:,}); raise it "
    "for large images you trust"
)
