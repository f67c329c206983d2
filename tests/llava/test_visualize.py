"""The attention-rule picture draws each rule's allowed pairs in the key's colour."""

import torch
from PIL import Image

from crossgraft.llava.visualize import IMAGE_COLOUR, MASKED, TEXT_COLOUR, draw_attention_rules


def test_rule_panels_show_allowed_and_masked_pairs(tmp_path):
    real = torch.tensor([1, 1, 1, 1, 1, 0])
    image = torch.tensor([0, 1, 1, 0, 0, 0]).bool()
    cell, strip, title, gap, side = 4, 8, 14, 10, 24
    picture = Image.open(draw_attention_rules(real, image, tmp_path / "rules.png", cell=cell)).convert("RGB")
    assert picture.size == (3 * (side + strip + gap) + gap, side + strip + title + gap)

    def pixel(panel: int, query: int, key: int) -> tuple:
        left = gap + panel * (side + strip + gap)
        return picture.getpixel((left + strip + key * cell + 1, title + strip + query * cell + 1))

    causal, within, cross = 0, 1, 2
    assert pixel(causal, 3, 1) == IMAGE_COLOUR and pixel(within, 3, 1) == MASKED and pixel(cross, 3, 1) == IMAGE_COLOUR
    assert pixel(causal, 3, 0) == TEXT_COLOUR and pixel(within, 3, 0) == TEXT_COLOUR and pixel(cross, 3, 0) == MASKED
    assert pixel(cross, 3, 3) == TEXT_COLOUR  # itself
    assert pixel(causal, 0, 1) == MASKED  # the future
