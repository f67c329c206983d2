"""Diagnostics (docs/cross-attention.md): seed 001's gradient-flow check, text->patch attention maps,
the backbone feature report."""

import pytest
import torch

from crossgraft.anomaly.config import (
    AttentionMapsConfig,
    BackboneConfig,
    CrossAttentionConfig,
    DataConfig,
    FeaturesConfig,
    GradFlowConfig,
)
from crossgraft.anomaly.diagnostics import (
    GradientFlow,
    feature_report,
    grad_flow,
    gradient_flow,
    text_to_patch_attention,
    write_attention_maps,
)
from crossgraft.anomaly.model import AdaptedCLIP
from crossgraft.errors import ConfigError


def build(backbone, variant, **changes):
    torch.manual_seed(0)
    return AdaptedCLIP(backbone, cross=CrossAttentionConfig(variant=variant, **changes))


def batch():
    torch.manual_seed(1)
    return torch.randn(2, 3, 64, 64), (torch.rand(2, 64, 64) > 0.9).float(), torch.tensor([1, 1])


def test_gradient_ratio_and_verdict_by_hand():
    assert GradientFlow(2.0, 1.5, True).ratio == 0.75 and "[CAUTION]" in GradientFlow(2.0, 1.5, True).report()
    assert GradientFlow(2.0, 1.6, True).ratio == pytest.approx(0.8) and "[OK]" in GradientFlow(2.0, 1.6, True).report()
    report = GradientFlow(0.455933, 0.438084, True).report()  # seed 001's "after" numbers
    assert "Without cross-attention: 0.455933" in report and "Ratio: 0.9609x" in report and "[OK]" in report


def test_a_cross_attention_weight_of_zero_leaves_the_gradient_exactly_alone(tiny_backbone):
    images, masks, labels = batch()
    for norm_match in (True, False):
        model = build(tiny_backbone, "image_cross_attn", image_cross_attn_weight=0.0)
        flow = gradient_flow(model, images, masks, labels, ["pill", "pill"], norm_match=norm_match)
        assert flow.with_cross_attn == flow.without_cross_attn and flow.ratio == 1.0


def test_norm_matching_changes_the_gradient_with_a_strong_cross_attention(tiny_backbone):
    images, masks, labels = batch()
    model = build(tiny_backbone, "image_cross_attn", image_cross_attn_weight=1.0)
    matched = gradient_flow(model, images, masks, labels, ["pill", "pill"], norm_match=True)
    unmatched = gradient_flow(model, images, masks, labels, ["pill", "pill"], norm_match=False)
    assert matched.without_cross_attn == pytest.approx(unmatched.without_cross_attn)
    assert matched.with_cross_attn != pytest.approx(unmatched.with_cross_attn)
    assert matched.ratio != 1.0 and unmatched.ratio != 1.0


def test_grad_flow_on_a_dataset_and_on_a_trained_run(synthetic_root, cross_run):
    data = DataConfig(dataset="synthetic", data_root=synthetic_root)
    fresh = grad_flow(GradFlowConfig(data=data, backbone=BackboneConfig(clip="tiny"), device="cpu"))
    assert [flow.norm_match for flow in fresh] == [True, False]
    assert all(flow.without_cross_attn > 0 and flow.with_cross_attn > 0 for flow in fresh)
    trained = grad_flow(GradFlowConfig(data=data, save_path=cross_run, device="cpu"))
    assert trained[0].with_cross_attn != fresh[0].with_cross_attn


def test_attention_maps_sum_to_one_over_patches(tiny_backbone):
    model = build(tiny_backbone, "text_cross_attn").eval()
    maps = text_to_patch_attention(model, torch.randn(1, 3, 64, 64), "bottle", ["damaged", "broken", "zzz"])
    assert set(maps) == {"damaged", "broken"}
    assert maps["damaged"].shape == (8, 8) and maps["damaged"].sum() == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ConfigError, match="no text cross-attention"):
        text_to_patch_attention(build(tiny_backbone, "base"), torch.randn(1, 3, 64, 64), "bottle", ["damaged"])


def test_attention_maps_of_a_folder_mirror_its_tree(cross_run, synthetic_root, tmp_path):
    result = write_attention_maps(
        AttentionMapsConfig(
            inputs=synthetic_root / "dots" / "test",  # good/000.png and spot/000.png share a stem
            save_path=cross_run,
            class_name="dots",
            words=["damaged", "zzz"],
            out=tmp_path,
            device="cpu",
        )
    )
    assert result.missing_words == ["zzz"]
    written = sorted(p.relative_to(tmp_path).as_posix() for p in result.written)
    assert written == [
        f"{folder}/{stem}_damaged.png"
        for folder, stem in (
            ("good", "000"),
            ("good", "001"),
            ("good", "002"),
            ("missing", "000"),
            ("scratch", "000"),
            ("spot", "000"),
        )
    ]
    assert all((tmp_path / path).is_file() for path in written)


def test_feature_report_of_the_tiny_preset():
    report = feature_report(FeaturesConfig(backbone=BackboneConfig(clip="tiny", img_size=128), device="cpu"))
    assert "grid 16x16 (trained at 64 px)" in report and "level  8: tokens (2, 257, 96)" in report
    assert "trainable CLIP parameters: 0" in report
