"""Every loss term and the test-time map/score formulas against values worked out by hand."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from crossgraft.anomaly.infer import fuse_image_scores, gaussian_blur, level_logit_gap
from crossgraft.anomaly.losses import (
    dice_loss,
    focal_loss,
    image_loss,
    orthogonality_loss,
    segmentation_loss,
    similarity_map,
)


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


def test_segmentation_loss_is_focal_plus_both_dice_terms():
    torch.manual_seed(0)
    probs = torch.rand(2, 2, 4, 4).softmax(1)
    mask = (torch.rand(2, 4, 4) > 0.7).float()
    expected = focal_loss(probs, mask) + dice_loss(probs[:, 1], mask) + dice_loss(probs[:, 0], 1 - mask)
    assert segmentation_loss(probs, mask).item() == pytest.approx(expected.item())


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


def test_level_map_formula():
    seg = torch.tensor([[[0.6, 0.8], [1.0, 0.0], [0.0, 1.0], [0.8, 0.6]]])
    anchors = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    gap = level_logit_gap(seg, anchors)
    assert gap.shape == (1, 2, 2)
    assert gap[0, 0, 0].item() == pytest.approx((100 * 0.8 + 1 - 100 * 0.6) / 2)
    assert gap[0, 0, 1].item() == pytest.approx((0 + 1 - 100) / 2)


@pytest.mark.parametrize("kernel_size,sigma", [(7, 1.0), (9, 1.5)])
def test_gaussian_blur_kernel_and_reflect_border(kernel_size, sigma):
    x = torch.zeros(1, 11, 11)
    x[0, 5, 5] = 1.0
    blurred = gaussian_blur(x, kernel_size, sigma)
    half = (kernel_size - 1) / 2
    k = np.exp(-0.5 * (np.linspace(-half, half, kernel_size) / sigma) ** 2)
    k /= k.sum()
    expected = np.outer(k, k)
    r = kernel_size // 2
    np.testing.assert_allclose(blurred[0, 5 - r : 5 + r + 1, 5 - r : 5 + r + 1].numpy(), expected, atol=1e-7)
    assert blurred.sum().item() == pytest.approx(1.0, abs=1e-6)  # nothing reaches the border
    edge = torch.zeros(1, 11, 11)
    edge[0, 1, 5] = 1.0  # reflect padding mirrors row 1 to row -1 (the edge row itself is not repeated)
    assert gaussian_blur(edge, kernel_size, sigma)[0, 0, 5].item() == pytest.approx(
        float(expected[r + 1, r] + expected[r - 1, r])
    )


def test_image_score_fusion_industrial_and_medical():
    map_max = np.array([2.0, 4.0, 6.0])
    det = np.array([0.5, 0.7, 0.6])
    # class-wide map range [0, 8]: max parts 0.25, 0.5, 0.75; det min-max 0, 1, 0.5
    np.testing.assert_allclose(fuse_image_scores(map_max, det, 0.0, 8.0, "industrial"), [0.125, 0.75, 0.625])
    np.testing.assert_allclose(fuse_image_scores(map_max, det, 0.0, 8.0, "medical"), [0.25, 0.5, 0.75])
