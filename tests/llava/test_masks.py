"""The attention rules, checked by hand on a 6-token example."""

import pytest
import torch

from crossgraft.llava.masks import additive, allowed_keys, layer_masks

# 6 positions: text, image, image, text, text, pad (right padding) and the same content left-padded.
RIGHT_REAL = torch.tensor([[1, 1, 1, 1, 1, 0]])
RIGHT_IMAGE = torch.tensor([[0, 1, 1, 0, 0, 0]]).bool()
LEFT_REAL = torch.tensor([[0, 1, 1, 1, 1, 1]])
LEFT_IMAGE = torch.tensor([[0, 0, 1, 1, 0, 0]]).bool()


def as_matrix(rows: str) -> torch.Tensor:
    return torch.tensor([[c == "1" for c in row] for row in rows.split()])


def test_right_padding_rules_by_hand():
    causal = as_matrix("100000 110000 111000 111100 111110 111110")
    within = as_matrix("100000 010000 011000 100100 100110 100110")
    cross = as_matrix("100000 110000 101000 011100 011010 011000")
    for rule, expected in (("causal", causal), ("within_modality", within), ("cross_modality", cross)):
        got = allowed_keys(RIGHT_REAL, RIGHT_IMAGE, rule)[0, 0]
        assert torch.equal(got, expected), rule


def test_left_padding_rules_by_hand():
    # The pad at position 0 may attend to nothing, so it attends to itself (no empty softmax row).
    causal = as_matrix("100000 010000 011000 011100 011110 011111")
    within = as_matrix("100000 010000 001000 001100 010010 010011")
    cross = as_matrix("100000 010000 011000 010100 001110 001101")
    for rule, expected in (("causal", causal), ("within_modality", within), ("cross_modality", cross)):
        got = allowed_keys(LEFT_REAL, LEFT_IMAGE, rule)[0, 0]
        assert torch.equal(got, expected), rule


def test_masks_never_make_nan_in_eager_sdpa_or_bfloat16():
    for rule in ("causal", "within_modality", "cross_modality"):
        allowed = allowed_keys(LEFT_REAL, LEFT_IMAGE, rule)
        assert allowed.any(dim=-1).all()  # every row attends somewhere
        q, k, v = torch.randn(3, 1, 2, 6, 4).unbind(0)
        for dtype in (torch.float32, torch.bfloat16):
            eager = ((q @ k.transpose(-1, -2)).to(dtype) + additive(allowed, dtype)).float().softmax(-1)
            assert torch.isfinite(eager).all()
            sdpa = torch.nn.functional.scaled_dot_product_attention(
                q.to(dtype), k.to(dtype), v.to(dtype), attn_mask=allowed
            )
            assert torch.isfinite(sdpa).all()


def test_unpadded_causal_sdpa_layers_need_no_mask():
    real = torch.ones(2, 5, dtype=torch.long)
    image = torch.zeros(2, 5, dtype=torch.bool)
    masks = layer_masks(real, image, {"causal", "within_modality"}, torch.float32, "sdpa")
    assert masks["causal"] is None and masks["within_modality"] is None  # text only: within is causal
    image[0, 1:3] = True
    masks = layer_masks(real, image, {"causal", "within_modality", "cross_modality"}, torch.float32, "sdpa")
    assert masks["causal"] is None and masks["within_modality"] is not None and masks["cross_modality"] is not None
    assert layer_masks(real, image, {"causal"}, torch.float32, "eager")["causal"] is not None
    padded = layer_masks(RIGHT_REAL, RIGHT_IMAGE, {"causal"}, torch.float32, "sdpa")["causal"]
    assert padded.dtype == torch.bool
    assert layer_masks(RIGHT_REAL, RIGHT_IMAGE, {"causal"}, torch.float32, "eager")["causal"].dtype == torch.float32


@pytest.mark.parametrize("queries", [None, 3, 1])
@pytest.mark.parametrize("rule", ["causal", "within_modality", "cross_modality"])
def test_flex_block_masks_attend_like_the_dense_masks(rule, queries):
    """flex_attention (eager, uncompiled) with the block mask gives what sdpa gives with the dense boolean mask,
    for right and left padding, text-only rows, and the last Q queries of a cached step."""
    import warnings

    import torch.nn.functional as F
    from torch.nn.attention.flex_attention import flex_attention

    from crossgraft.llava.masks import flex_block_masks

    real = torch.cat([RIGHT_REAL, LEFT_REAL, torch.ones_like(LEFT_REAL)])  # (3, 6)
    image = torch.cat([RIGHT_IMAGE, LEFT_IMAGE, torch.zeros_like(LEFT_IMAGE)])  # the third row: text only
    generator = torch.Generator().manual_seed(0)
    count = 6 if queries is None else queries
    q = torch.randn(3, 2, count, 8, generator=generator)
    k, v = torch.randn(3, 2, 6, 8, generator=generator), torch.randn(3, 2, 6, 8, generator=generator)
    dense = allowed_keys(real, image, rule, queries)  # (3, 1, Q, 6)
    block_mask = flex_block_masks(real, image, {rule}, queries)[rule]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "flex_attention called without torch.compile": the reference path
        got = flex_attention(q, k, v, block_mask=block_mask)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=dense)
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


def test_each_rule_is_one_composition_of_parts_and_the_fallback_composes_with_any_rule():
    from crossgraft.llava.masks import Segments, and_masks, attend_to_self_when_alone, causal, render, rule_function

    segments = Segments.of(LEFT_REAL, LEFT_IMAGE)
    assert torch.equal(render(rule_function("causal", segments), segments), render(causal(segments), segments))
    nothing = and_masks(causal(segments), lambda b, q, k: k < 0)  # a rule that allows no key at all
    alone = render(attend_to_self_when_alone(nothing, segments), segments)[0]
    assert torch.equal(alone, torch.eye(6, dtype=torch.bool))  # every query falls back to itself, and only that
    with pytest.raises(ValueError, match="unknown attention rule 'sideways'"):
        rule_function("sideways", segments)
