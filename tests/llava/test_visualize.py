"""The attention-rule picture draws each rule's allowed pairs in the key's colour."""

import torch
from PIL import Image

from crossgraft.llava.visualize import (
    IMAGE_COLOUR,
    LEGEND,
    LEGEND_ROW,
    LEGEND_WIDTH,
    MASKED,
    SWATCH,
    TEXT_COLOUR,
    draw_attention_rules,
)


def test_rule_panels_show_allowed_and_masked_pairs(tmp_path):
    real = torch.tensor([1, 1, 1, 1, 1, 0])
    image = torch.tensor([0, 1, 1, 0, 0, 0]).bool()
    cell, strip, title, gap, side = 4, 8, 14, 10, 24
    picture = Image.open(draw_attention_rules(real, image, tmp_path / "rules.png", cell=cell)).convert("RGB")
    panels_bottom = side + strip + title + gap
    assert picture.size == (max(3 * (side + strip + gap) + gap, LEGEND_WIDTH), panels_bottom + 2 * LEGEND_ROW)

    def pixel(panel: int, query: int, key: int) -> tuple:
        left = gap + panel * (side + strip + gap)
        return picture.getpixel((left + strip + key * cell + 1, title + strip + query * cell + 1))

    causal, within, cross = 0, 1, 2
    assert pixel(causal, 3, 1) == IMAGE_COLOUR and pixel(within, 3, 1) == MASKED and pixel(cross, 3, 1) == IMAGE_COLOUR
    assert pixel(causal, 3, 0) == TEXT_COLOUR and pixel(within, 3, 0) == TEXT_COLOUR and pixel(cross, 3, 0) == MASKED
    assert pixel(cross, 3, 3) == TEXT_COLOUR  # itself
    assert pixel(causal, 0, 1) == MASKED  # the future


def test_the_legend_names_each_colour_and_the_axes(tmp_path):
    real, image = torch.ones(8, dtype=torch.long), torch.tensor([0, 1, 1, 1, 0, 0, 0, 0]).bool()
    picture = Image.open(draw_attention_rules(real, image, tmp_path / "rules.png", cell=4)).convert("RGB")
    top = 8 * 4 + 8 + 14 + 10  # below the panels
    swatches = [picture.getpixel((x, top + 2 + SWATCH // 2)) for x in range(picture.width)]
    for _, colour in LEGEND:
        assert colour in swatches, colour
