"""AdaptedCLIP and its cross-attention modules (docs/aa-clip.md, docs/cross-attention.md): shapes, per-image anchors,
test-time use, weight 0 = base, gradients, the frozen stage-1 path as constructor settings, and shape errors that
name both shapes."""

import pytest
import torch

from crossgraft.anomaly.config import PRESETS, AdapterConfig, CrossAttentionConfig
from crossgraft.anomaly.infer import anomaly_maps
from crossgraft.anomaly.losses import stage1_loss, stage2_loss
from crossgraft.anomaly.model import AdaptedCLIP, stage1_features, surgery_start
from crossgraft.anomaly.modules import CrossAttention
from crossgraft.errors import ConfigError, ShapeError

VARIANTS = ["text_cross_attn", "image_cross_attn", "cross_attn"]


def build(backbone, variant="cross_attn", seed=0, **changes):
    """A model as the default (reference) preset builds it: V-V attention across the batch axis."""
    torch.manual_seed(seed)
    return AdaptedCLIP(backbone, cross=CrossAttentionConfig(variant=variant, **changes))


def test_the_frozen_stage1_path_is_constructor_config(tiny_backbone):
    model = AdaptedCLIP(tiny_backbone)
    assert model.vv_mode == "batch" and model.surgery_from == tiny_backbone.levels[0] == 2
    fixed = AdaptedCLIP(tiny_backbone, AdapterConfig(surgery_until_layer=5), vv_mode="tokens")
    assert fixed.vv_mode == "tokens" and fixed.surgery_from == 8 - 5 + 2  # the last K-1 = 4 blocks are V-V
    assert surgery_start(24, 20, [6, 12, 18, 24]) == 6  # the public default: blocks 6..24 of ViT-L
    with pytest.raises(ConfigError, match=r"--surgery_until_layer 12 does not fit a 8-block ViT \(use 2..9\)"):
        AdaptedCLIP(tiny_backbone, AdapterConfig(surgery_until_layer=12))
    with pytest.raises(ConfigError, match="text_adapt_until=9 but the text encoder has 4 blocks"):
        AdaptedCLIP(tiny_backbone, AdapterConfig(text_adapt_until=9))


def test_surgery_until_layer_moves_where_the_vv_path_starts(tiny_backbone):
    images = torch.randn(2, 3, 64, 64)
    late = AdaptedCLIP(tiny_backbone, AdapterConfig(surgery_until_layer=3), vv_mode="tokens")  # blocks 7, 8
    early = AdaptedCLIP(tiny_backbone, vv_mode="tokens")  # blocks 2..8
    late_features, _ = stage1_features(tiny_backbone, images, late.surgery_from, "tokens")
    early_features, _ = stage1_features(tiny_backbone, images, early.surgery_from, "tokens")
    plain = tiny_backbone.encode_image(images)
    image_feature = torch.nn.functional.normalize(plain.image_embed, dim=-1)
    projected = [
        torch.nn.functional.normalize(tiny_backbone.visual_projection(tiny_backbone.ln_post(t[:, 1:])), dim=-1)
        + image_feature[:, None]
        for t in plain.level_tokens
    ]
    # levels 2, 4, 6 lie before block 7: with the late start they are the plain path's, with the early one not
    for level in range(3):
        torch.testing.assert_close(late_features[level], projected[level], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(early_features[level + 1], projected[level + 1], atol=1e-4)
    assert not torch.allclose(late_features[3], projected[3], atol=1e-4)


@pytest.mark.parametrize("batch", [1, 3, 16])
def test_shapes_through_both_modules(tiny_backbone, batch):
    model = build(tiny_backbone).eval()
    images = torch.randn(batch, 3, 64, 64)
    context = model.image_context(images)
    assert context.shape == (batch, 64, 64)  # (B, N, E): 8x8 patches, embedding 64
    texts = ["bottle", "screw", "bottle"] * 6
    with torch.no_grad():
        side = model.text_side(texts[:batch], context)
        output = model(images, text_context=side.sentences)
    assert side.anchors.shape == (batch, 64, 2) and side.sentences.shape == (batch, 16, 64)
    assert [t.shape for t in output.seg_tokens] == [(batch, 64, 64)] * 4 and output.det_token.shape == (batch, 64)
    module = CrossAttention(96, 64, heads=8)
    queries, context = torch.randn(batch, 65, 96), torch.randn(batch, 16, 64)
    out, weights = module.eval().forward_with_attention(queries, context)
    assert out.shape == (batch, 65, 96) and weights.shape == (batch, 8, 65, 16)
    torch.testing.assert_close(weights.sum(-1), torch.ones(batch, 8, 65))
    torch.testing.assert_close(module(queries, context), out, atol=1e-5, rtol=1e-5)  # the fused kernel agrees


def test_anchors_depend_on_the_image_only_with_text_cross_attention(tiny_backbone):
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        crossed = build(tiny_backbone, "text_cross_attn").eval().image_text(["bottle"] * 3, images).anchors
        plain = build(tiny_backbone, "base").eval().image_text(["bottle"] * 3, images).anchors
    assert not torch.allclose(crossed[0], crossed[1], atol=1e-6) and not torch.allclose(crossed[1], crossed[2])
    assert torch.equal(plain[0], plain[1]) and torch.equal(plain[1], plain[2])


@pytest.mark.parametrize("variant", ["text_cross_attn", "cross_attn"])
def test_test_time_maps_do_not_depend_on_the_batch_under_the_reference_preset(tiny_backbone, variant):
    """The batch-axis V-V quirk belongs to stage-1 training: at test time an image's map is the same alone
    or in any batch."""
    model = build(tiny_backbone, variant).eval()
    assert model.vv_mode == "batch"
    images = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        together = anomaly_maps(model, images, model.image_text(["pill"] * 4, images), "industrial")
        for i in range(4):
            alone = anomaly_maps(model, images[i : i + 1], model.image_text(["pill"], images[i : i + 1]), "industrial")
            torch.testing.assert_close(alone.maps[0], together.maps[i], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(alone.det_scores[0], together.det_scores[i], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_weight_zero_equals_the_base_model_exactly(tiny_backbone, variant):
    images = torch.randn(2, 3, 64, 64)
    base = build(tiny_backbone, "base").eval()
    zero = build(tiny_backbone, variant, text_cross_attn_weight=0.0, image_cross_attn_weight=0.0)
    zero.text_adapter.load_state_dict(base.text_adapter.state_dict())
    zero.image_adapter.load_state_dict(base.image_adapter.state_dict())
    zero.train()  # dropout active: still exactly zero contribution
    with torch.no_grad():
        side, base_side = zero.image_text(["pill"] * 2, images), base.image_text(["pill"] * 2, images)
        maps = anomaly_maps(zero, images, side, "industrial")
        base_maps = anomaly_maps(base, images, base_side, "industrial")
    torch.testing.assert_close(side.anchors, base_side.anchors, atol=1e-6, rtol=0)
    torch.testing.assert_close(maps.maps, base_maps.maps, atol=1e-4, rtol=0)
    torch.testing.assert_close(maps.det_scores, base_maps.det_scores, atol=1e-6, rtol=0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_test_time_path_uses_the_modules(tiny_backbone, variant):
    model = build(tiny_backbone, variant).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = anomaly_maps(model, images, model.image_text(["pill"] * 2, images), "industrial").maps
        for module in (model.text_cross_attn, model.image_cross_attn):
            if module is not None:
                module.out_proj.weight.copy_(torch.randn_like(module.out_proj.weight))  # not a mere rescale
        after = anomaly_maps(model, images, model.image_text(["pill"] * 2, images), "industrial").maps
    assert not torch.allclose(before, after, atol=1e-4)


def test_every_cross_attention_parameter_gets_a_gradient(tiny_backbone):
    model = build(tiny_backbone).train()
    images, masks = torch.randn(3, 3, 64, 64), (torch.rand(3, 64, 64) > 0.9).float()
    labels = torch.tensor([0, 1, 1])
    stage1_loss(
        model, images, masks, labels, ["pill"] * 3, quirks=PRESETS["reference"], text_norm_weight=0.1
    ).backward()
    with torch.no_grad():
        side = model.image_text(["pill"] * 3, images)
    stage2_loss(model, images, masks, labels, side).backward()
    for name, parameter in [*model.text_cross_attn.named_parameters(), *model.image_cross_attn.named_parameters()]:
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_learnable_weight_is_a_parameter_and_saved(tiny_backbone):
    fixed = build(tiny_backbone)
    learnable = build(tiny_backbone, learnable_cross_attn_weight=True)
    assert "residual_weight" not in fixed.text_cross_attn.state_dict()
    assert isinstance(learnable.image_cross_attn.residual_weight, torch.nn.Parameter)
    assert "residual_weight" in learnable.image_cross_attn.state_dict()


def test_shape_errors_name_both_shapes_and_the_flag_that_sets_each(tiny_backbone):
    module = CrossAttention(96, 64, heads=8, name="image_cross_attn")
    with pytest.raises(ShapeError, match=r"image_cross_attn: queries \(2, 65, 64\).* width 96\).*--clip"):
        module(torch.randn(2, 65, 64), torch.randn(2, 16, 64))
    with pytest.raises(ShapeError, match=r"image_cross_attn: context \(2, 16, 32\).* width 64\).*--clip"):
        module(torch.randn(2, 65, 96), torch.randn(2, 16, 32))
    with pytest.raises(ShapeError, match=r"queries \(2, 65, 96\) and context \(3, 16, 64\).* one context per image"):
        module(torch.randn(2, 65, 96), torch.randn(3, 16, 64))
    with pytest.raises(ShapeError, match=r"width 60 is not divisible by 8 heads .*--cross_attn_heads"):
        CrossAttention(96, 60, heads=8)
    model = build(tiny_backbone, "text_cross_attn")
    with pytest.raises(ShapeError, match=r"2 texts but image context \(3, 64, 64\)"):
        model.text_side(["pill", "pill"], torch.randn(3, 64, 64))
