"""A picture of the attention rules on one real (spliced) sequence: who may attend to whom in each rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from crossgraft.images import save_image
from crossgraft.llava.configuration import ATTENTION_RULES
from crossgraft.llava.masks import allowed_keys

TEXT_COLOUR, IMAGE_COLOUR, PAD_COLOUR = (70, 110, 200), (230, 140, 40), (40, 40, 40)
MASKED = (25, 25, 30)
LEGEND = (("text token", TEXT_COLOUR), ("image token", IMAGE_COLOUR), ("padding", PAD_COLOUR), ("masked", MASKED))
LEGEND_ROW, LEGEND_WIDTH, SWATCH = 14, 430, 10
AXES_NOTE = "rows: queries (top to bottom); columns: keys (left to right); a cell is coloured by its key"


def draw_legend(draw: ImageDraw.ImageDraw, left: int, top: int) -> None:
    """A swatch and a name per colour, then a line naming the axes."""
    x = left
    for name, colour in LEGEND:
        draw.rectangle((x, top + 2, x + SWATCH, top + 2 + SWATCH), fill=colour, outline=(0, 0, 0))
        draw.text((x + SWATCH + 4, top), name, fill=(0, 0, 0))
        x += SWATCH + 12 + 7 * len(name)
    draw.text((left, top + LEGEND_ROW), AXES_NOTE, fill=(0, 0, 0))


def draw_attention_rules(key_is_real: torch.Tensor, key_is_image: torch.Tensor, path: Path, cell: int = 4) -> Path:
    """One panel per rule (causal, within_modality, cross_modality) for a single sequence of K positions.

    Rows are queries, columns keys. An allowed pair is drawn in its key's modality colour (blue text, orange
    image), a masked one dark; the strips along the top and left mark each position's modality (grey: padding).
    A legend under the panels names the colours and the axes.
    """
    real, image = key_is_real.bool().cpu(), key_is_image.bool().cpu()  # (K,)
    length = real.numel()
    key_colour = np.array([PAD_COLOUR if not r else IMAGE_COLOUR if i else TEXT_COLOUR for r, i in zip(real, image)])
    strip, title, gap, legend = 2 * cell, 14, 10, 2 * LEGEND_ROW
    side = length * cell
    width = max(len(ATTENTION_RULES) * (side + strip + gap) + gap, LEGEND_WIDTH)
    canvas = Image.new("RGB", (width, side + strip + title + gap + legend), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for panel, rule in enumerate(ATTENTION_RULES):
        allowed = allowed_keys(real[None].long(), image[None], rule)[0, 0].numpy()  # (L, L)
        pixels = np.where(allowed[..., None], key_colour[None, :, :], np.array(MASKED)).astype(np.uint8)
        block = Image.fromarray(pixels).resize((side, side), Image.Resampling.NEAREST)
        left, top = gap + panel * (side + strip + gap), title
        strip_pixels = key_colour.astype(np.uint8)[None]  # (1, K, 3)
        canvas.paste(Image.fromarray(strip_pixels).resize((side, strip), Image.Resampling.NEAREST), (left + strip, top))
        canvas.paste(
            Image.fromarray(strip_pixels.transpose(1, 0, 2)).resize((strip, side), Image.Resampling.NEAREST),
            (left, top + strip),
        )
        canvas.paste(block, (left + strip, top + strip))
        draw.text((left + strip, 1), rule, fill=(0, 0, 0))
    draw_legend(draw, gap, side + strip + title + gap)
    path = Path(path)
    save_image(canvas, path)
    return path
