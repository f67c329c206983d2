"""AA-CLIP's loss terms worked out by hand, and the stage losses: each quirk flag changes exactly its part."""

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from crossgraft.anomaly.backbone import load_clip
from crossgraft.anomaly.config import PRESETS, QuirkConfig, Quirks
from crossgraft.anomaly.losses import (
    dice_loss,
    focal_loss,
    image_loss,
    orthogonality_loss,
    segmentation_loss,
    similarity_map,
    stage1_loss,
)
from crossgraft.anomaly.model import AdaptedCLIP, stage1_features


def test_focal_loss_by_hand():
    # one image, 1x2 pixels: probabilities of (normal, anomalous)
    probs = torch.tensor([[0.8, 0.3], [0.2, 0.7]]).reshape(1, 2, 1, 2)  # (B, C, H, W)
    mask = torch.tensor([[[0.0, 1.0]]])
    # pixel 1 is normal: one-hot (1, 0) clamped to (1-1e-5, 1e-5); pt = 0.8(1-1e-5) + 0.2e-5 + 1e-5
    pt1 = 0.8 * (1 - 1e-5) + 0.2 * 1e-5 + 1e-5
    pt2 = 0.3 * 1e-5 + 0.7 * (1 - 1e-5) + 1e-5
    expected = (-((1 - pt1) ** 2) * math.log(pt1) - (1 - pt2) ** 2 * math.log(pt2)) / 2
    assert focal_loss(probs, mask).item() == pytest.approx(expected, rel=1e-6)


def test_dice_loss_by_hand_per_sample_mean():
    probs = torch.tensor([[[0.5, 1.0]], [[0.0, 0.0]]])  # (B=2, 1, 2)
    target = torch.tensor([[[1.0, 1.0]], [[0.0, 1.0]]])
    first = (2 * 1.5 + 1) / (1.5 + 2 + 1)
    second = (0 + 1) / (0 + 1 + 1)
    assert dice_loss(probs, target).item() == pytest.approx(1 - (first + second) / 2, rel=1e-6)


def test_segmentation_loss_by_hand():
    # the focal example's 1x2 image: p_N = (0.8, 0.3), p_A = (0.2, 0.7), mask (0, 1)
    probs = torch.tensor([[0.8, 0.3], [0.2, 0.7]]).reshape(1, 2, 1, 2)
    mask = torch.tensor([[[0.0, 1.0]]])
    pt1 = 0.8 * (1 - 1e-5) + 0.2 * 1e-5 + 1e-5
    pt2 = 0.3 * 1e-5 + 0.7 * (1 - 1e-5) + 1e-5
    focal = (-((1 - pt1) ** 2) * math.log(pt1) - (1 - pt2) ** 2 * math.log(pt2)) / 2
    dice_anomalous = 1 - (2 * 0.7 + 1) / (0.9 + 1 + 1)  # p_A against the mask
    dice_normal = 1 - (2 * 0.8 + 1) / (1.1 + 1 + 1)  # p_N against 1 - mask
    assert segmentation_loss(probs, mask).item() == pytest.approx(focal + dice_anomalous + dice_normal, rel=1e-6)


def test_orthogonality_and_image_loss_by_hand():
    anchors = torch.tensor([[[1.0, 0.6], [0.0, 0.8]], [[1.0, 0.0], [0.0, 1.0]]])  # (B=2, E=2, 2)
    # <T_N, T_A> = 0.6 and 0.0 -> mean 0.3 -> squared 0.09
    assert orthogonality_loss(anchors).item() == pytest.approx(0.09)
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1])
    logits = torch.tensor([[1.0, 0.6], [0.0, 1.0]])  # unscaled <feature, anchor>
    assert image_loss(features, anchors, labels).item() == pytest.approx(F.cross_entropy(logits, labels).item())


def test_similarity_map_scale_upsampling_and_softmax():
    seg = F.normalize(torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, -1.0]]]), dim=-1)  # 2x2 grid
    anchors = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # T_N = e1, T_A = e2
    probs = similarity_map(seg, anchors, image_size=3)
    assert probs.shape == (1, 2, 3, 3)
    torch.testing.assert_close(probs.sum(1), torch.ones(1, 3, 3))
    # corners keep their patch's logits (align_corners=True): patch 0 is e1 -> softmax(100, 0)
    assert probs[0, 0, 0, 0].item() == pytest.approx(torch.tensor([100.0, 0.0]).softmax(0)[0].item())
    assert probs[0, 1, 0, 2].item() == pytest.approx(torch.tensor([0.0, 100.0]).softmax(0)[1].item())
    # the centre is the mean of the four logits: (100*(1+0+.707+.707)/4, 100*(0+1+.707-.707)/4)
    s = 1 / math.sqrt(2)
    centre = torch.tensor([100 * (1 + s + s) / 4, 100 * (1 + s - s) / 4]).softmax(0)
    assert probs[0, 1, 1, 1].item() == pytest.approx(centre[1].item(), rel=1e-5)


def _batch(synthetic_root, size=2):
    from torch.utils.data import DataLoader

    from crossgraft.anomaly.data import AnomalyDataset, EvalTransform, load_samples

    samples = [s for s in load_samples("synthetic", synthetic_root) if s.class_name == "stripes"]
    return next(iter(DataLoader(AnomalyDataset(samples[-size:], EvalTransform(64)), batch_size=size)))


def test_quirk_flags_change_exactly_their_part(synthetic_root):
    batch = _batch(synthetic_root)
    images, masks, labels = batch["image"], batch["mask"], batch["label"]
    torch.manual_seed(0)
    model = AdaptedCLIP(load_clip("tiny", image_size=64, gelu="exact"), vv_mode="batch")
    reference = PRESETS["reference"]

    patches, image_feature = stage1_features(model.backbone, images, 2, "batch")
    anchors = model.class_anchors(["stripes"]).expand(2, -1, -1)
    ortho = 0.1 * orthogonality_loss(anchors)
    seg = [segmentation_loss(similarity_map(p, anchors, 64), masks) for p in patches]
    texts = ["stripes"] * 2
    with torch.no_grad():
        last_only = stage1_loss(model, images, masks, labels, texts, quirks=reference, text_norm_weight=0.1)
        all_levels = stage1_loss(
            model,
            images,
            masks,
            labels,
            texts,
            quirks=replace(reference, stage1_last_level_only=False),
            text_norm_weight=0.1,
        )
        with_image = stage1_loss(
            model, images, masks, labels, texts, quirks=replace(reference, stage1_image_loss=True), text_norm_weight=0.1
        )
    assert last_only.item() == pytest.approx((seg[-1] + ortho).item(), rel=1e-5)  # quirk 2: the last level only
    assert all_levels.item() == pytest.approx((sum(seg) + ortho).item(), rel=1e-5)
    assert with_image.item() == pytest.approx((last_only + image_loss(image_feature, anchors, labels)).item(), rel=1e-5)

    tokens_patches, tokens_image = stage1_features(model.backbone, images, 2, "tokens")  # quirk 1
    assert not torch.allclose(tokens_patches[-1], patches[-1], atol=1e-4)
    torch.testing.assert_close(tokens_image, image_feature)  # the plain path is untouched
    quick = load_clip("tiny", image_size=64, gelu="quick")  # quirk 4
    assert quick.clip.config.vision_config.hidden_act == "quick_gelu"
    assert model.backbone.clip.config.vision_config.hidden_act == "gelu"


def test_the_preset_drives_every_quirk_and_each_flag_overrides_its_own():
    assert PRESETS["reference"] == Quirks(
        vv_mode="batch", stage1_last_level_only=True, stage1_image_loss=False, gelu="exact", stage1_augment=True
    )
    assert QuirkConfig().resolve() == PRESETS["reference"]
    assert QuirkConfig(preset="fixed").resolve() == Quirks("tokens", False, True, "quick", False)
    assert QuirkConfig(preset="fixed", vv_attention="batch").resolve() == Quirks("batch", False, True, "quick", False)
    assert QuirkConfig(stage1_levels="all", stage1_image_loss="on", gelu="quick").resolve() == Quirks(
        "batch", False, True, "quick", True
    )
    assert QuirkConfig(preset="fixed", stage1_augment="on").resolve().stage1_augment is True
