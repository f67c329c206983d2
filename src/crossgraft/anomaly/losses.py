"""AA-CLIP's losses and patch-text similarity maps (docs/aa-clip.md), written to match the public code's numbers."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from crossgraft.anomaly.config import Quirks
from crossgraft.anomaly.model import AdaptedCLIP, TextSide, stage1_features

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


# ------------------------------------------------------------------------------------- the stage losses
def stage1_loss(
    model: AdaptedCLIP,
    images: torch.Tensor,
    masks: torch.Tensor,
    labels: torch.Tensor,
    class_texts: list[str],
    *,
    quirks: Quirks,
    text_norm_weight: float,
    adapted_features: bool = False,
    frozen: tuple[list[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Stage 1: segmentation loss of the anchors against the visual features, plus the orthogonality term.

    images (B, 3, S, S), masks (B, S, S), labels (B,), one class text per image. Round 1 (and base AA-CLIP)
    uses the frozen V-V features, whose first level is also the text cross-attention's context. Later feedback
    rounds (`adapted_features`) take the visual features from the adapted image encoder (no gradient); the
    context stays the frozen one, as at test time. `frozen`: those frozen features when already computed
    (`--cache_stage1_features`).
    """
    patch_features, image_feature = frozen or stage1_features(model.backbone, images, model.surgery_from, model.vv_mode)
    context = patch_features[0] if model.text_cross_attn is not None else None
    text = model.text_side(class_texts, context)  # one pass per class without context
    anchors = text.anchors  # (B, E, 2)
    if adapted_features:
        with torch.no_grad():
            output = model(images, text_context=text.sentences.detach() if model.image_cross_attn else None)
        patch_features, image_feature = output.seg_tokens, F.normalize(output.det_token, dim=-1)
    image_size = images.shape[-1]
    if quirks.stage1_last_level_only:  # the public loop overwrites the loss: only the last level counts
        loss = segmentation_loss(similarity_map(patch_features[-1], anchors, image_size), masks)
    else:
        level_losses = [segmentation_loss(similarity_map(f, anchors, image_size), masks) for f in patch_features]
        loss = level_losses[0]
        for level_loss in level_losses[1:]:  # summed in level order, as sum() over the levels
            loss = loss + level_loss
    if quirks.stage1_image_loss:
        loss = loss + image_loss(image_feature, anchors, labels)
    return loss + text_norm_weight * orthogonality_loss(anchors)


def stage2_loss(
    model: AdaptedCLIP, images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor, text: TextSide
) -> torch.Tensor:
    """Stage 2: CE of the detection token against the anchors plus the segmentation loss of every level.
    `text` holds each image's anchors (B, E, 2) and sentence embeddings (B, S, E), frozen."""
    output = model(images, text_context=text.sentences if model.image_cross_attn is not None else None)
    loss = image_loss(output.det_token, text.anchors, labels)
    for seg_tokens in output.seg_tokens:
        loss = loss + segmentation_loss(similarity_map(seg_tokens, text.anchors, images.shape[-1]), masks)
    return loss
