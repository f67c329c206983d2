"""One stage-1 step, one stage-2 step and one test batch at ViT-L/14-336 size: crossgraft vs a naive baseline.

Random weights with the sizes of openai/clip-vit-large-patch14-336 (ViT 24 x 1024, text 12 x 768, embedding
768). The baseline does what the public AA-CLIP code does: a separate plain ViT pass and a separate V-V
ViT pass in stage 1, text padded to 77 tokens, and CLIP's weights left with requires_grad=True (so backward
computes their gradients). Both sides run in this process on the same inputs; the script prints ratios.
The test-batch row compares our full test-time pass (adapted ViT + maps) with a bare CLIP vision forward.
The last rows time the cross_attn variant's steps and test batch next to the base model's (ours both).

    python benchmarks/train_bench.py [--img_size 336] [--batch 2] [--repeats 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import CLIPConfig, CLIPModel

from crossgraft.anomaly.backbone import FrozenCLIP
from crossgraft.anomaly.config import PRESETS, CrossAttentionConfig
from crossgraft.anomaly.infer import anomaly_maps, batch_text
from crossgraft.anomaly.losses import (
    orthogonality_loss,
    segmentation_loss,
    similarity_map,
    stage1_loss,
    stage2_loss,
)
from crossgraft.anomaly.model import AdaptedCLIP, stage1_features
from crossgraft.anomaly.tiny_tokenizer import build_tiny_tokenizer

VIT_L14_336 = {
    "text_config": {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "max_position_embeddings": 77,
    },
    "vision_config": {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "image_size": 336,
        "patch_size": 14,
    },
    "projection_dim": 768,
}
CLASS_TEXTS = ["metal nut"]


def build(img_size: int, device: str) -> AdaptedCLIP:
    tokenizer = build_tiny_tokenizer()
    config = CLIPConfig(**VIT_L14_336)
    config.text_config.vocab_size = len(tokenizer)
    config.text_config.eos_token_id = tokenizer.eos_token_id
    torch.manual_seed(0)
    backbone = FrozenCLIP(CLIPModel(config), tokenizer, image_size=img_size, gelu="exact").to(device)
    return AdaptedCLIP(backbone).to(device)


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def naive_stage1_features(backbone: FrozenCLIP, images, surgery_from: int):
    """Two full ViT passes, as the public code runs its plain CLIP and its V-V copy separately."""
    with torch.no_grad():
        image_embed = backbone.encode_image(images).image_embed
        x = backbone.embed_image(images)
        tokens = []
        for index in range(backbone.num_vision_layers):
            x = backbone.vision_block(index, x, vv_mode="batch" if index + 1 >= surgery_from else None)
            if index + 1 in backbone.levels:
                tokens.append(x)
    image_feature = torch.nn.functional.normalize(image_embed, dim=-1)
    return [
        torch.nn.functional.normalize(backbone.visual_projection(backbone.ln_post(t[:, 1:])), dim=-1)
        + image_feature[:, None]
        for t in tokens
    ]


def stage1_step(model: AdaptedCLIP, images, masks, naive: bool) -> None:
    backbone = model.backbone
    surgery_from = backbone.levels[0]
    if naive:
        patches = naive_stage1_features(backbone, images, surgery_from)
        backbone.tokenizer.padding_side = "right"
        original = backbone.tokenize
        backbone.tokenize = lambda texts: backbone.tokenizer(  # full 77-token text
            list(texts), padding="max_length", max_length=77, truncation=True, return_tensors="pt"
        )["input_ids"].to(backbone.device)
        anchors = model.class_anchors(CLASS_TEXTS)
        backbone.tokenize = original
    else:
        patches, _ = stage1_features(backbone, images, surgery_from, "batch")
        anchors = model.class_anchors(CLASS_TEXTS)
    anchors = anchors.expand(len(images), -1, -1)
    loss = segmentation_loss(similarity_map(patches[-1], anchors, images.shape[-1]), masks)
    loss = loss + 0.1 * orthogonality_loss(anchors)
    model.zero_grad(set_to_none=True)
    backbone.zero_grad(set_to_none=True)
    loss.backward()


def stage2_step(model: AdaptedCLIP, images, masks, labels) -> None:
    model.zero_grad(set_to_none=True)
    model.backbone.zero_grad(set_to_none=True)
    with torch.no_grad():
        text = model.image_text(CLASS_TEXTS * len(images), images)
    stage2_loss(model, images, masks, labels, text).backward()


def variant_stage1_step(model: AdaptedCLIP, images, masks, labels) -> None:
    model.zero_grad(set_to_none=True)
    stage1_loss(model, images, masks, labels, CLASS_TEXTS * len(images), PRESETS["reference"], 0.1).backward()


def test_batch(model: AdaptedCLIP, images, cache: dict) -> None:
    """What `crossgraft anomaly test` does per batch (class text cached unless it attends to the image)."""
    anomaly_maps(model, images, batch_text(model, True, CLASS_TEXTS[0], images, cache), "industrial")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--img_size", type=int, default=336, help="input side (518 is AA-CLIP's; slower on CPU)")
    parser.add_argument("--batch", type=int, default=2, help="images per step")
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats after one warm-up (median)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    model = build(args.img_size, args.device)
    backbone = model.backbone
    images = torch.randn(args.batch, 3, args.img_size, args.img_size, device=args.device)
    masks = (torch.rand(args.batch, args.img_size, args.img_size, device=args.device) > 0.95).float()
    labels = torch.ones(args.batch, dtype=torch.long, device=args.device)

    rows = []
    ours = timed(lambda: stage1_step(model, images, masks, naive=False), args.repeats)
    backbone.requires_grad_(True)
    naive = timed(lambda: stage1_step(model, images, masks, naive=True), args.repeats)
    backbone.requires_grad_(False)
    rows.append(("stage-1 step", ours, naive, "naive / ours"))

    ours = timed(lambda: stage2_step(model, images, masks, labels), args.repeats)
    backbone.requires_grad_(True)
    naive = timed(lambda: stage2_step(model, images, masks, labels), args.repeats)
    backbone.requires_grad_(False)
    rows.append(("stage-2 step", ours, naive, "naive / ours"))

    model.eval()
    cache: dict = {}  # the class text is encoded once per class in an evaluation, not per batch
    ours = timed(lambda: test_batch(model, images, cache), args.repeats)
    with torch.no_grad():
        bare = timed(
            lambda: backbone.clip.vision_model(pixel_values=images, interpolate_pos_encoding=True), args.repeats
        )
    rows.append(("test batch", ours, bare, "ours / bare CLIP"))

    torch.manual_seed(0)
    cross = AdaptedCLIP(backbone, cross=CrossAttentionConfig(variant="cross_attn")).to(args.device)  # reference
    model.train()
    cross.train()
    for name, step in (("stage-1 step", variant_stage1_step), ("stage-2 step", stage2_step)):
        base_s = timed(lambda step=step: step(model, images, masks, labels), args.repeats)
        cross_s = timed(lambda step=step: step(cross, images, masks, labels), args.repeats)
        rows.append((f"{name} x-attn", cross_s, base_s, "x-attn / base"))
    cross.eval()
    model.eval()
    base_s = timed(lambda: test_batch(model, images, cache), args.repeats)
    cross_s = timed(lambda: test_batch(cross, images, {}), args.repeats)
    rows.append(("test x-attn", cross_s, base_s, "x-attn / base"))

    print(
        f"ViT-L/14-336 sizes, random weights, {args.img_size} px ({backbone.grid_size}x{backbone.grid_size} "
        f"patches), batch {args.batch}, device {args.device}, median of {args.repeats}"
    )
    print(f"{'':<20}{'crossgraft s':>14}{'baseline s':>12}   ratio")
    for name, ours_s, base_s, label in rows:
        ratio = base_s / ours_s if label == "naive / ours" else ours_s / base_s  # x-attn rows: cost over base
        print(f"{name:<20}{ours_s:>14.2f}{base_s:>12.2f}   {ratio:.2f}x ({label})")


if __name__ == "__main__":
    main()
