"""AA-CLIP's losses and patch-text similarity maps (DESIGN §3), written to match the public code's numbers."""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOGIT_SCALE = 100.0  # CLIP's trained temperature, fixed in AA-CLIP's similarity maps
FOCAL_GAMMA = 2.0
FOCAL_SMOOTH = 1e-5
DICE_SMOOTH = 1.0


def similarity_map(seg_tokens: torch.Tensor, anchors: torch.Tensor, image_size: int) -> torch.Tensor:
    """Softmax over (normal, anomalous) of 100·⟨patch, anchor⟩, upsampled to the image: (B, 2, H, W).

    seg_tokens (B, N, E) L2-normalised patch features on a square grid; anchors (B, E, 2) per image.
    The logits are upsampled bilinearly (align_corners=True) before the softmax, as the public code does.
    """
    batch, patches, _ = seg_tokens.shape
    grid = int(round(patches**0.5))
    logits = LOGIT_SCALE * torch.bmm(seg_tokens, anchors)  # (B, N, 2)
    logits = logits.permute(0, 2, 1).reshape(batch, 2, grid, grid)
    logits = F.interpolate(logits, size=(image_size, image_size), mode="bilinear", align_corners=True)
    return logits.softmax(dim=1)


def focal_loss(probs: torch.Tensor, mask: torch.Tensor, gamma: float = FOCAL_GAMMA) -> torch.Tensor:
    """Focal loss on class probabilities (B, C, H, W) against an integer mask (B, H, W).

    One-hot targets are clamped to [smooth, 1 - smooth] and `smooth` is added inside the log, as in the
    AnomalyCLIP/AA-CLIP FocalLoss with its defaults (alpha = 1).
    """
    classes = probs.shape[1]
    flat = probs.permute(0, 2, 3, 1).reshape(-1, classes)  # (BHW, C)
    target = mask.reshape(-1, 1).long()
    one_hot = torch.zeros_like(flat).scatter_(1, target, 1.0)
    one_hot = one_hot.clamp(FOCAL_SMOOTH / (classes - 1), 1.0 - FOCAL_SMOOTH)
    pt = (one_hot * flat).sum(1) + FOCAL_SMOOTH
    return (-((1 - pt) ** gamma) * pt.log()).mean()


def dice_loss(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - mean over samples of (2|P∩T| + 1) / (|P| + |T| + 1); probs and target (B, H, W)."""
    batch = probs.shape[0]
    probs, target = probs.reshape(batch, -1), target.reshape(batch, -1)
    dice = (2 * (probs * target).sum(1) + DICE_SMOOTH) / (probs.sum(1) + target.sum(1) + DICE_SMOOTH)
    return 1 - dice.sum() / batch


def segmentation_loss(probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """focal + dice(anomalous prob, mask) + dice(normal prob, 1 - mask); probs (B, 2, H, W), mask (B, H, W)."""
    return focal_loss(probs, mask) + dice_loss(probs[:, 1], mask) + dice_loss(probs[:, 0], 1 - mask)


def orthogonality_loss(anchors: torch.Tensor) -> torch.Tensor:
    """(mean over the batch of ⟨T_N, T_A⟩)²; anchors (B, E, 2)."""
    return (anchors[:, :, 0] * anchors[:, :, 1]).sum(1).mean() ** 2


def image_loss(image_features: torch.Tensor, anchors: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the unscaled logits ⟨feature, [T_N, T_A]⟩; features (B, E), anchors (B, E, 2)."""
    logits = torch.bmm(image_features.unsqueeze(1), anchors)[:, 0]  # (B, 2)
    return F.cross_entropy(logits, labels.long())
