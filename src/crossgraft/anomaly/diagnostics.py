"""Diagnostics of the cross-attention variants (docs/cross-attention.md): gradient flow and text→patch attention
maps."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from crossgraft.anomaly.backbone import load_backbone
from crossgraft.anomaly.config import (
    AttentionMapsConfig,
    CrossAttentionConfig,
    FeaturesConfig,
    GradFlowConfig,
    Variant,
)
from crossgraft.anomaly.data import AnomalyDataset, EvalTransform, load_data
from crossgraft.anomaly.data.formats import output_stem, read_folder
from crossgraft.anomaly.infer import load_trained
from crossgraft.anomaly.losses import stage2_loss
from crossgraft.anomaly.model import AdaptedCLIP, TextSide
from crossgraft.anomaly.prompts import class_sentences, class_text
from crossgraft.anomaly.visualize import PanelText, load_rgb, save_panel
from crossgraft.devices import resolve_device
from crossgraft.errors import ConfigError
from crossgraft.images import set_max_pixels

GRADIENT_OK_RATIO = 0.8


@dataclass
class GradientFlow:
    without_cross_attn: float  # image-adapter gradient norm of the base model
    with_cross_attn: float  # the same adapters with image cross-attention in the path
    norm_match: bool

    @property
    def ratio(self) -> float:
        return self.with_cross_attn / max(self.without_cross_attn, 1e-12)

    @property
    def ok(self) -> bool:
        return self.ratio >= GRADIENT_OK_RATIO

    def report(self) -> str:
        verdict = (
            "[OK] Cross-attention doesn't harm gradient flow significantly"
            if self.ok
            else "[CAUTION] Cross-attention reduces image adapter gradients significantly"
        )
        matched = "norm-matched" if self.norm_match else "not norm-matched"
        return "\n".join(
            [
                f"Image adapter gradient norm (image cross-attention output {matched}):",
                f"  Without cross-attention: {self.without_cross_attn:.6f}",
                f"  With cross-attention:    {self.with_cross_attn:.6f}",
                f"  Ratio: {self.ratio:.4f}x",
                "",
                verdict,
            ]
        )


def _adapter_grad_norm(
    model: AdaptedCLIP, images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor, text: TextSide
) -> float:
    model.zero_grad(set_to_none=True)
    stage2_loss(model, images, masks, labels, text).backward()
    grads = [p.grad.norm() ** 2 for p in model.image_adapter.parameters() if p.grad is not None]
    return float(torch.stack(grads).sum().sqrt())


def gradient_flow(
    model: AdaptedCLIP,
    images: torch.Tensor,
    masks: torch.Tensor,
    labels: torch.Tensor,
    class_texts: list[str],
    norm_match: bool = True,
    seed: int = 0,
) -> GradientFlow:
    """Seed 001's stage-2 gradient test on one batch: the image adapters' gradient norm without image
    cross-attention, and with it (Xavier-initialised, or the model's own when it has one)."""
    with torch.no_grad():
        text = model.image_text(class_texts, images)
    base = AdaptedCLIP(model.backbone, model.adapter_config, replace(model.cross, variant="base"), model.vv_mode)
    base.image_adapter.load_state_dict(model.image_adapter.state_dict())
    variant: Variant = "cross_attn" if model.text_cross_attn is not None else "image_cross_attn"
    torch.manual_seed(seed)
    crossed = AdaptedCLIP(
        model.backbone,
        model.adapter_config,
        replace(model.cross, variant=variant, image_norm_match=norm_match),
        model.vv_mode,
    )
    crossed.image_adapter.load_state_dict(model.image_adapter.state_dict())
    if model.image_cross_attn is not None and crossed.image_cross_attn is not None:
        crossed.image_cross_attn.load_state_dict(model.image_cross_attn.state_dict())
    base.eval(), crossed.eval()  # no dropout: the two passes differ only by the cross-attention
    return GradientFlow(
        without_cross_attn=_adapter_grad_norm(base, images, masks, labels, text),
        with_cross_attn=_adapter_grad_norm(crossed, images, masks, labels, text),
        norm_match=norm_match,
    )


@torch.no_grad()
def text_to_patch_attention(model: AdaptedCLIP, image: torch.Tensor, class_text: str, words: list[str]) -> dict:
    """Attention of the chosen prompt words to the image's patches, averaged over heads and over every
    occurrence in the class's 16 sentences: {word: (grid, grid) array}. `image` is (1, 3, H, W)."""
    if model.text_cross_attn is None:
        raise ConfigError("this run has no text cross-attention (train with --variant text_cross_attn or cross_attn)")
    backbone = model.backbone
    normal, abnormal = class_sentences(class_text)
    ids = backbone.tokenize(normal + abnormal)  # (S, T)
    x = backbone.text_block(0, backbone.embed_text(ids).to(backbone.dtype))  # (S, T, Wt)
    context = model.image_context(image)  # (1, N, E)
    model.text_cross_attn.eval()
    _, weights = model.text_cross_attn.forward_with_attention(x.reshape(1, -1, x.shape[-1]), context)
    weights = weights.mean(1)[0].reshape(ids.shape[0], ids.shape[1], -1)  # (S, T, N)
    tokens = [backbone.tokenizer.convert_ids_to_tokens(row) for row in ids.tolist()]
    maps = {}
    for word in words:
        positions = [
            (s, t) for s, row in enumerate(tokens) for t, token in enumerate(row) if token.replace("</w>", "") == word
        ]
        if positions:
            stacked = torch.stack([weights[s, t] for s, t in positions]).mean(0)
            maps[word] = stacked.reshape(backbone.grid_size, backbone.grid_size).float().cpu().numpy()
    return maps


ATTENTION_LAYER = "text cross-attention after text block 1"  # where AdaptedCLIP.text_side applies it


def save_attention_maps(maps: dict, image_path: Path, out_stem: Path, size: int, class_name: str) -> list[Path]:
    """One panel per word (the attention upsampled bilinearly to `size`): OUT_STEM_{word}.png."""
    written = []
    image = load_rgb(image_path)
    for word, grid in maps.items():
        up = F.interpolate(torch.from_numpy(grid)[None, None], size=(size, size), mode="bilinear", align_corners=True)
        attention = up[0, 0].numpy().astype(np.float32)
        text = PanelText(
            title=f"{image_path.name}  |  {class_name}  |  word '{word}', {ATTENTION_LAYER}",
            detail="attention of the word to the image's patches, mean over heads and the class's sentences",
            scale=f"colours: attention weight {attention.min():.4g} to {attention.max():.4g} (this image's min-max)",
            empty_mask="no ground truth",
        )
        written.append(save_panel(image, attention, out_stem.with_name(f"{out_stem.name}_{word}.png"), text))
    return written


def grad_flow(config: GradFlowConfig) -> list[GradientFlow]:
    """Seed 001's test_stage2_gradients on one batch of anomalous images of the config's data: with the output of
    the image cross-attention norm-matched to the tokens (the fix), then without."""
    device = resolve_device(config.device)
    if config.save_path is not None:
        model = load_trained(config.save_path, config.epoch, device=device).model
    else:
        torch.manual_seed(config.seed)
        backbone = load_backbone(config.backbone, "quick", device)
        cross = CrossAttentionConfig(variant="image_cross_attn", image_cross_attn_weight=config.image_cross_attn_weight)
        model = AdaptedCLIP(backbone, cross=cross).to(device)
    samples = [s for s in load_data(config.data, "test") if s.label == 1]
    generator = torch.Generator().manual_seed(config.seed)
    dataset = AnomalyDataset(samples, EvalTransform(model.backbone.image_size))
    batch = next(iter(DataLoader(dataset, batch_size=config.batch_size, shuffle=True, generator=generator)))
    images, masks, labels = (batch[k].to(device) for k in ("image", "mask", "label"))
    texts = [class_text(name) for name in batch["class_name"]]
    return [
        gradient_flow(model, images, masks, labels, texts, norm_match=norm_match, seed=config.seed)
        for norm_match in (True, False)
    ]


@dataclass
class AttentionMaps:
    written: list[Path]
    missing_words: list[str]  # chosen words that are not whole tokens of the prompts
    prompt_text: str


def write_attention_maps(config: AttentionMapsConfig) -> AttentionMaps:
    """Text->patch attention of the chosen words for every image under `config.inputs`, written as panels whose
    paths mirror the input tree."""
    run = load_trained(config.save_path, config.epoch, device=resolve_device(config.device))
    model = run.model
    set_max_pixels(config.max_image_pixels)
    text = class_text(config.class_name, run.descriptions(config.class_descriptions))
    samples = read_folder(config.inputs, config.class_name)
    dataset = AnomalyDataset(samples, EvalTransform(model.backbone.image_size))
    written: list[Path] = []
    missing: list[str] = []
    for index, sample in enumerate(samples):
        image = dataset[index]["image"][None].to(model.backbone.device)
        maps = text_to_patch_attention(model, image, text, config.words)
        missing = [w for w in config.words if w not in maps]
        stem = config.out_dir / output_stem(sample.image_path, config.inputs)
        written += save_attention_maps(maps, sample.image_path, stem, model.backbone.image_size, config.class_name)
    return AttentionMaps(written, missing, text)


def feature_report(config: FeaturesConfig) -> str:
    """Load a backbone, run random images through its plain and V-V paths and describe what comes out: a quick
    check that weights, tokenizer and image size fit together."""
    backbone = load_backbone(config.backbone, config.gelu, config.device)
    images = torch.randn(config.batch, 3, backbone.image_size, backbone.image_size, device=backbone.device)
    features = backbone.encode_image(images)
    vv = backbone.encode_image_vv(images, surgery_from=backbone.levels[0])
    text = backbone.encode_text(["a photo of a damaged object.", "object"])
    grid, trained = backbone.grid_size, backbone.vision_config.image_size
    lines = [
        f"CLIP {config.backbone.clip}: vision {backbone.num_vision_layers} blocks x {backbone.vision_width}, text "
        f"{backbone.num_text_layers} blocks x {backbone.text_width}, embedding {backbone.embed_dim}",
        f"input {backbone.image_size} px, patch {backbone.patch_size}, grid {grid}x{grid} (trained at {trained} px), "
        f"gelu {backbone.gelu}",
    ]
    for level, plain, surgery in zip(backbone.levels, features.level_tokens, vv.level_tokens):
        lines.append(
            f"  level {level:>2}: tokens {tuple(plain.shape)}; mean token norm plain {plain.norm(dim=-1).mean():.3f}"
            f", V-V {surgery.norm(dim=-1).mean():.3f}"
        )
    lines.append(f"image embedding {tuple(features.image_embed.shape)}, text embedding {tuple(text.shape)}")
    lines.append(f"trainable CLIP parameters: {sum(p.numel() for p in backbone.parameters() if p.requires_grad)}")
    return "\n".join(lines)
