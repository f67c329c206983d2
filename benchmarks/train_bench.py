"""One stage-1 step, one stage-2 step and one test batch at ViT-L/14-336 size: crossgraft vs a naive baseline.

Random weights with the sizes of openai/clip-vit-large-patch14-336 (ViT 24 x 1024, text 12 x 768, embedding
768). The baseline does what the public AA-CLIP code does: a separate plain ViT pass and a separate V-V
ViT pass in stage 1, text padded to 77 tokens, and CLIP's weights left with requires_grad=True (so backward
computes their gradients). Both sides run in this process on the same inputs; the script prints ratios.
The test-batch row compares our full test-time pass (adapted ViT + maps) with a bare CLIP vision forward.
The last rows time the cross_attn variant's steps and test batch next to the base model's (ours both).

The floors: every step is also printed as a multiple of a bare CLIP vision forward of the same batch (stage 1,
stage 2 and a test batch, for base and for cross_attn). `--profile` adds torch.profiler tables of one stage-1
and one stage-2 step, by module (vision blocks, text blocks, adapters, cross-attention, losses) and by operator.
`--cache_epochs N` times stage 1 of an N-text-epoch run on --cache_images images with and without
--cache_stage1_features (fixed preset: no augmentation, V-V over tokens).

    python benchmarks/train_bench.py [--img_size 336] [--batch 2] [--repeats 2] [--device cpu]
                                     [--profile] [--cache_epochs 5 --cache_images 16]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPModel

from crossgraft.anomaly.backbone import FrozenCLIP
from crossgraft.anomaly.config import PRESETS, CrossAttentionConfig
from crossgraft.anomaly.feature_cache import Stage1FeatureCache
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
    stage1_loss(
        model, images, masks, labels, CLASS_TEXTS * len(images), quirks=PRESETS["reference"], text_norm_weight=0.1
    ).backward()


def stage1_epochs(model: AdaptedCLIP, images, masks, labels, epochs: int, batch: int, cache) -> None:
    """Stage 1 of a run: `epochs` passes over the images (text adapter steps), frozen features from `cache`
    (a Stage1FeatureCache) when given."""
    indices = torch.arange(len(images))
    for _ in range(epochs):
        for start in range(0, len(images), batch):
            part = slice(start, start + batch)
            frozen = (
                cache.features(model.backbone, images[part], indices[part], model.surgery_from, model.vv_mode)
                if cache is not None
                else None
            )
            model.zero_grad(set_to_none=True)
            texts = CLASS_TEXTS * len(images[part])
            stage1_loss(
                model, images[part], masks[part], labels[part], texts, PRESETS["fixed"], 0.1, frozen=frozen
            ).backward()


def module_kind(name: str) -> str | None:
    """The profile's label of a module the forward passes call (FrozenCLIP runs its blocks' parts directly, so the
    hooks sit on those parts), or None for a module not timed on its own."""
    tower = (
        "vision"
        if ".vision_model.encoder.layers." in name
        else "text"
        if ".text_model.encoder.layers." in name
        else None
    )
    if tower and name.endswith(".mlp"):
        return f"{tower} blocks: MLP"
    if tower and name.rsplit(".", 1)[-1] in ("q_proj", "k_proj", "v_proj", "out_proj"):
        return f"{tower} blocks: attention projections"
    parts = name.split(".")
    if parts[0] == "text_adapter" and len(parts) == 2:  # each adapter of the ModuleList
        return "text adapters"
    if name.startswith("image_adapter.layer_adapters.") and len(parts) == 3:
        return "image adapters"
    if (name.startswith("image_adapter.seg_proj.") and len(parts) == 3) or name == "image_adapter.det_proj":
        return "image projections"
    if name in ("text_cross_attn", "image_cross_attn"):
        return "cross-attention"
    return None


def profile_steps(model: AdaptedCLIP, steps: dict) -> None:
    """torch.profiler tables of each step: time by module (forward hooks open a named range per module kind) and
    the top operators."""
    from torch.profiler import ProfilerActivity, profile, record_function

    handles, open_ranges = [], []
    for name, module in model.named_modules():
        kind = module_kind(name)
        if kind is None:
            continue
        handles.append(
            module.register_forward_pre_hook(
                lambda *_, kind=kind: open_ranges.append(record_function(f"module: {kind}").__enter__())
            )
        )
        handles.append(module.register_forward_hook(lambda *_: open_ranges.pop().__exit__(None, None, None)))
    try:
        for name, step in steps.items():
            step()  # warm-up
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                step()
            averages = prof.key_averages()
            modules = [a for a in averages if a.key.startswith("module: ")]
            print(f"\nprofile of one {name} (forward time by module; the backward runs outside the hooks):")
            for a in sorted(modules, key=lambda a: -a.cpu_time_total):
                print(f"  {a.key[8:]:<40}{a.cpu_time_total / 1e6:>8.3f} s  ({a.count} calls)")
            print(averages.table(sort_by="self_cpu_time_total", row_limit=12))
    finally:
        for handle in handles:
            handle.remove()


def test_batch(model: AdaptedCLIP, images, cache: dict) -> None:
    """What `crossgraft anomaly test` does per batch (class text cached unless it attends to the image)."""
    anomaly_maps(model, images, batch_text(model, True, CLASS_TEXTS[0], images, cache), "industrial")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--img_size", type=int, default=336, help="input side (518 is AA-CLIP's; slower on CPU)")
    parser.add_argument("--batch", type=int, default=2, help="images per step")
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats after one warm-up (median)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--profile", action="store_true", help="torch.profiler tables of a stage-1 and a stage-2 step")
    parser.add_argument("--skip_naive", action="store_true", help="leave out the naive-baseline rows")
    parser.add_argument("--skip_floors", action="store_true", help="leave out the bare-forward multiples")
    parser.add_argument("--cache_epochs", type=int, default=0, help="time stage 1 of an N-epoch run, cache vs none")
    parser.add_argument("--cache_images", type=int, default=16, help="training images of that stage-1 timing")
    args = parser.parse_args()

    model = build(args.img_size, args.device)
    backbone = model.backbone
    images = torch.randn(args.batch, 3, args.img_size, args.img_size, device=args.device)
    masks = (torch.rand(args.batch, args.img_size, args.img_size, device=args.device) > 0.95).float()
    labels = torch.ones(args.batch, dtype=torch.long, device=args.device)

    with torch.no_grad():
        bare = timed(
            lambda: backbone.clip.vision_model(pixel_values=images, interpolate_pos_encoding=True), args.repeats
        )
    rows = []
    if not args.skip_naive:
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

    torch.manual_seed(0)
    cross = AdaptedCLIP(backbone, cross=CrossAttentionConfig(variant="cross_attn")).to(args.device)  # reference
    floors = []  # (row, seconds): each step as a multiple of the bare forward
    for label, adapted in () if args.skip_floors else (("base", model), ("cross_attn", cross)):
        adapted.train()
        for name, step in (("stage-1 step", variant_stage1_step), ("stage-2 step", stage2_step)):
            floors.append(
                (f"{name} {label}", timed(lambda s=step, m=adapted: s(m, images, masks, labels), args.repeats))
            )
        adapted.eval()
        test_s = timed(lambda m=adapted, c={}: test_batch(m, images, c), args.repeats)
        floors.append((f"test batch {label}", test_s))

    print(
        f"ViT-L/14-336 sizes, random weights, {args.img_size} px ({backbone.grid_size}x{backbone.grid_size} "
        f"patches), batch {args.batch}, device {args.device}, median of {args.repeats}"
    )
    if rows:
        print(f"{'':<22}{'crossgraft s':>14}{'baseline s':>12}   ratio")
        for name, ours_s, base_s, label in rows:
            print(f"{name:<22}{ours_s:>14.2f}{base_s:>12.2f}   {base_s / ours_s:.2f}x ({label})")
    print(f"\n{'each step':<24}{'s':>8}   x a bare vision forward ({bare:.2f} s)")
    for name, seconds in floors:
        print(f"{name:<24}{seconds:>8.2f}   {seconds / bare:.2f}x")

    if args.profile:
        model.train()
        profile_steps(
            model,
            {
                "stage-1 step": lambda: variant_stage1_step(model, images, masks, labels),
                "stage-2 step": lambda: stage2_step(model, images, masks, labels),
            },
        )
    if args.cache_epochs:
        cache_timing(model, args)


def cache_timing(model: AdaptedCLIP, args: argparse.Namespace) -> None:
    """Stage 1 of a run on --cache_images images: every epoch computing the frozen features, or the first only."""
    model.train()
    model.vv_mode = "tokens"  # the cache's condition (fixed preset)
    count, size = args.cache_images, args.img_size
    images = torch.randn(count, 3, size, size, device=args.device)
    masks = (torch.rand(count, size, size, device=args.device) > 0.95).float()
    labels = torch.ones(count, dtype=torch.long, device=args.device)
    batch = 16  # the public --text_batch_size
    start = time.perf_counter()
    stage1_epochs(model, images, masks, labels, args.cache_epochs, batch, None)
    computed = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as folder:
        cache = Stage1FeatureCache(Path(folder), count, "float16")
        start = time.perf_counter()
        stage1_epochs(model, images, masks, labels, args.cache_epochs, batch, cache)
        cached = time.perf_counter() - start
        cache.close()
    print(
        f"\nstage 1, {args.cache_epochs} text epochs, {count} images at {size} px, batch {batch}: features computed "
        f"every epoch {computed:.1f} s, cached (fp16 memmap) {cached:.1f} s: {computed / cached:.2f}x"
    )


if __name__ == "__main__":
    main()
