"""AdaptedCLIP: AA-CLIP's text and image adapters on a frozen CLIP (docs/aa-clip.md).

Text side: adapters after text blocks 1..`text_adapt_until` (all positions), then the EOT feature after
`ln_final` goes through a SimpleProj + LeakyReLU that replaces CLIP's text projection.
Image side: adapters after vision blocks 1..`image_adapt_until` (all tokens, CLS included); at each level
the patch tokens go through `ln_post`, the level's `seg_proj` and an L2 norm; the detection token is
`det_proj` of the last level's post-LN patches, normalised per patch and averaged.
Each adapter's output is rescaled to the norm of the tokens it adapts and mixed in with weight λ.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from crossgraft.anomaly.backbone import FrozenCLIP
from crossgraft.anomaly.config import AdapterConfig, CrossAttentionConfig, VVMode
from crossgraft.anomaly.modules import CrossAttention, SimpleAdapter, SimpleProj, xavier_init
from crossgraft.anomaly.prompts import NORMAL_STATES, TEMPLATES, class_sentences
from crossgraft.errors import ConfigError, ShapeError


@dataclass
class TextSide:
    """Per-image text: anchors [T_N, T_A] (B, E, 2) and the L2-normalised sentence embeddings (B, S, E)."""

    anchors: torch.Tensor
    sentences: torch.Tensor


@dataclass
class ImageOutput:
    seg_tokens: list[torch.Tensor]  # per level (B, N, E), L2-normalised
    det_token: torch.Tensor  # (B, E): mean of L2-normalised projected patches


def mix_adapter(x: torch.Tensor, adapted: torch.Tensor, weight: float) -> torch.Tensor:
    """x ← λ·a·‖x‖/‖a‖ + (1−λ)·x, norms per token."""
    adapted = adapted * x.norm(dim=-1, keepdim=True) / adapted.norm(dim=-1, keepdim=True)
    return weight * adapted + (1 - weight) * x


@contextmanager
def evaluation_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode for the block (no dropout: anchors and evaluations are deterministic), then every submodule back
    in the mode it was found in."""
    found = [(child, child.training) for child in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for child, training in found:
            child.training = training


class AdaptedCLIP(nn.Module):
    """AA-CLIP's adapters (and the cross-attention variants' modules) around a frozen CLIP.

    `vv_mode` and the adapter config's `surgery_until_layer` fix the frozen stage-1 path (V-V attention from block
    `surgery_from` on), which stage 1 trains against and which gives the text cross-attention its image context.
    """

    def __init__(
        self,
        backbone: FrozenCLIP,
        adapter: AdapterConfig | None = None,
        cross: CrossAttentionConfig | None = None,
        vv_mode: VVMode = "batch",
    ) -> None:
        super().__init__()
        adapter = adapter or AdapterConfig()
        cross = cross or CrossAttentionConfig()
        if adapter.text_adapt_until > backbone.num_text_layers:
            raise ConfigError(
                f"text_adapt_until={adapter.text_adapt_until} but the text encoder has "
                f"{backbone.num_text_layers} blocks"
            )
        if adapter.image_adapt_until > backbone.num_vision_layers:
            raise ConfigError(
                f"image_adapt_until={adapter.image_adapt_until} but the ViT has {backbone.num_vision_layers} blocks"
            )
        self.backbone = backbone
        self.adapter_config = adapter
        self.cross = cross
        self.vv_mode: VVMode = vv_mode
        # 1-based first V-V block of the frozen stage-1 path
        self.surgery_from = surgery_start(backbone.num_vision_layers, adapter.surgery_until_layer, backbone.levels)
        text_width, vision_width, embed = backbone.text_width, backbone.vision_width, backbone.embed_dim
        text_modules: list[nn.Module] = [SimpleAdapter(text_width, text_width) for _ in range(adapter.text_adapt_until)]
        text_modules.append(SimpleProj(text_width, embed, relu=True))  # replaces CLIP's text projection
        self.text_adapter = nn.ModuleList(text_modules)
        self.image_adapter = nn.ModuleDict(
            {
                "layer_adapters": nn.ModuleList(
                    [SimpleAdapter(vision_width, vision_width) for _ in range(adapter.image_adapt_until)]
                ),
                "seg_proj": nn.ModuleList([SimpleProj(vision_width, embed, adapter.relu) for _ in backbone.levels]),
                "det_proj": SimpleProj(vision_width, embed, adapter.relu),
            }
        )
        xavier_init(self.text_adapter)
        xavier_init(self.image_adapter)
        self.text_cross_attn = (
            CrossAttention(
                text_width,
                embed,
                cross.cross_attn_heads,
                cross.cross_attn_dropout,
                cross.text_cross_attn_weight,
                cross.learnable_cross_attn_weight,
                "text_cross_attn",
            )
            if cross.text
            else None
        )
        self.image_cross_attn = (
            CrossAttention(
                vision_width,
                embed,
                cross.cross_attn_heads,
                cross.cross_attn_dropout,
                cross.image_cross_attn_weight,
                cross.learnable_cross_attn_weight,
                "image_cross_attn",
            )
            if cross.image
            else None
        )
        # image tokens attend to text after this 1-based vision block (its adapter included)
        self.image_cross_attn_after = max(adapter.image_adapt_until, 1)

    # ------------------------------------------------------------------------------------------ text
    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Adapted text embedding of token ids (B, T) -> (B, E), without cross-attention."""
        x = self.backbone.embed_text(input_ids).to(self.backbone.dtype)  # (B, T, Wt)
        return self._text_after_block_one(self.backbone.text_block(0, x), input_ids)

    def _text_after_block_one(self, x: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """Adapter 1, text blocks 2.. with their adapters, then the EOT feature's projection: (B, E)."""
        for index in range(self.backbone.num_text_layers):
            if index > 0:
                x = self.backbone.text_block(index, x)
            if index < self.adapter_config.text_adapt_until:
                x = mix_adapter(x, self.text_adapter[index](x), self.adapter_config.text_adapt_weight)
        return self.text_adapter[-1](self.backbone.eot_features(x, input_ids))

    def train_only(self, modules: Iterable[nn.Module]) -> None:
        """Training mode for the modules a stage trains (their dropout acts), eval mode for every other one; the
        frozen CLIP stays in eval mode always."""
        self.eval()
        for module in modules:
            module.train()

    def text_side(self, texts: list[str], image_context: torch.Tensor | None = None) -> TextSide:
        """Anchors and sentence embeddings for each entry of `texts` (one class text per image, or per class).

        With text cross-attention every image's 16 sentences attend to that image's context (B, N, E); the
        frozen block-1 output of each class's sentences is computed once and shared by all its images, and
        the 16 sentences of an image go through the cross-attention as one query sequence.
        """
        unique = sorted(set(texts))
        index = torch.tensor([unique.index(t) for t in texts], device=self.backbone.device)
        if self.text_cross_attn is None:
            ids = self.class_sentence_ids(unique)  # (C, S, T)
            embeddings = self.encode_text(ids.flatten(0, 1)).reshape(*ids.shape[:2], -1)[index]  # (B, S, E)
            return text_side_of(embeddings)
        if image_context is None or len(image_context) != len(texts):
            got = "none" if image_context is None else tuple(image_context.shape)
            raise ShapeError(
                f"text cross-attention needs one image context (B, N, E) per text: {len(texts)} texts but "
                f"image context {got}"
            )
        block_one, ids = self.text_block_one(unique)
        return self.attend_text(block_one[index], ids[index], image_context)

    def class_sentence_ids(self, class_texts: list[str]) -> torch.Tensor:
        """Token ids of each class's normal then abnormal sentences: (C, S, T), cut to the longest sentence."""
        sentences = []
        for text in class_texts:
            normal, abnormal = class_sentences(text)
            sentences += normal + abnormal
        return self.backbone.tokenize(sentences).reshape(len(class_texts), len(sentences) // len(class_texts), -1)

    def text_block_one(self, class_texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The frozen first text block's output of each class's sentences as one query sequence (C, S*T, Wt)
        (what the text cross-attention attends from), and their token ids (C, S, T)."""
        backbone = self.backbone
        ids = self.class_sentence_ids(class_texts)
        x = backbone.text_block(0, backbone.embed_text(ids.flatten(0, 1)).to(backbone.dtype))  # (C*S, T, Wt)
        return x.reshape(len(class_texts), -1, x.shape[-1]), ids

    def attend_text(self, block_one: torch.Tensor, ids: torch.Tensor, image_context: torch.Tensor) -> TextSide:
        """With text cross-attention: each image's sentences (`block_one` (B, S*T, Wt), `ids` (B, S, T)) attend to
        that image's context (B, N, E), then run the rest of the adapted text encoder. The 16 sentences of an image
        go through the cross-attention as one query sequence."""
        if self.text_cross_attn is None:
            raise ShapeError("attend_text needs a model with text cross-attention")
        attended = self.text_cross_attn(block_one, image_context.to(block_one.dtype))
        x = block_one + self.text_cross_attn.residual_weight * attended
        batch, sentences, length = ids.shape
        x = x.reshape(batch * sentences, length, -1)  # (B*S, T, Wt)
        embeddings = self._text_after_block_one(x, ids.reshape(-1, length)).reshape(batch, sentences, -1)
        return text_side_of(embeddings)

    def shared_start(self, images: torch.Tensor) -> tuple[int, torch.Tensor] | None:
        """At test time a cross-attention variant runs two vision passes over the same images: the frozen stage-1
        context and the adapted pass. Both begin with the patch embedding and the blocks before the first image
        adapter (and before the V-V blocks): (blocks, tokens (B, 1+N, Wv)) computed once for both, or None when
        they share nothing."""
        if self.text_cross_attn is None:
            return None
        shared = 1 if self.adapter_config.image_adapt_until > 0 else self.backbone.num_vision_layers
        if self.image_cross_attn is not None:
            shared = min(shared, self.image_cross_attn_after)
        shared = min(shared, self.surgery_from - 1, min(self.backbone.levels))
        x = self.backbone.embed_image(images)
        for index in range(shared):
            x = self.backbone.vision_block(index, x)
        return shared, x

    def image_text(
        self, texts: list[str], images: torch.Tensor, start: tuple[int, torch.Tensor] | None = None
    ) -> TextSide:
        """The text side of a batch of images (one class text each), as the variant uses it at test time:
        per-image with text cross-attention (context from the frozen stage-1 path), else per class."""
        if self.text_cross_attn is None:
            return self.text_side(texts)
        return self.text_side(texts, self.image_context(images, start))

    def image_context(self, images: torch.Tensor, start: tuple[int, torch.Tensor] | None = None) -> torch.Tensor:
        """The text cross-attention's context of each image on its own (B, N, E): the first level's stage-1
        feature, with the batch-axis V-V quirk (a stage-1 training matter) applied to every image alone, so that an
        image's result never depends on the other images of its batch. (Stage 1 reuses the feature its loss
        computed instead.)"""
        vv_mode: VVMode = "alone" if self.vv_mode == "batch" else self.vv_mode
        first = [self.backbone.levels[0]]
        return stage1_features(self.backbone, images, self.surgery_from, vv_mode, levels=first, start=start)[0][0]

    def class_anchors(self, class_texts: list[str]) -> torch.Tensor:
        """Anchors [T_N, T_A] per class without image context: (C, E, 2)."""
        return self.text_side(class_texts).anchors

    # ----------------------------------------------------------------------------------------- image
    def forward(
        self,
        images: torch.Tensor,
        text_context: torch.Tensor | None = None,
        start: tuple[int, torch.Tensor] | None = None,
    ) -> ImageOutput:
        """Adapted image pass: per-level segmentation tokens and the detection token.

        With image cross-attention the tokens attend, after vision block `image_adapt_until`, to their image's
        L2-normalised sentence embeddings `text_context` (B, S, E). `start`: see `shared_start`."""
        backbone = self.backbone
        adapters = cast(nn.ModuleList, self.image_adapter["layer_adapters"])
        seg_projections = cast(nn.ModuleList, self.image_adapter["seg_proj"])
        done, x = start if start is not None else (0, backbone.embed_image(images))  # x: (B, 1+N, Wv)
        level_tokens = []
        for index in range(backbone.num_vision_layers):
            if index >= done:
                x = backbone.vision_block(index, x)
            if index < self.adapter_config.image_adapt_until:
                x = mix_adapter(x, adapters[index](x), self.adapter_config.image_adapt_weight)
            if self.image_cross_attn is not None and index + 1 == self.image_cross_attn_after:
                x = self._attend_to_text(self.image_cross_attn, x, text_context)
            if index + 1 in backbone.levels:
                level_tokens.append(backbone.ln_post(x[:, 1:]))  # (B, N, Wv)
        seg_tokens = [
            F.normalize(projection(tokens), dim=-1) for projection, tokens in zip(seg_projections, level_tokens)
        ]
        det_token = F.normalize(self.image_adapter["det_proj"](level_tokens[-1]), dim=-1).mean(1)
        return ImageOutput(seg_tokens=seg_tokens, det_token=det_token)

    def _attend_to_text(
        self, cross_attn: CrossAttention, x: torch.Tensor, text_context: torch.Tensor | None
    ) -> torch.Tensor:
        if text_context is None:
            raise ShapeError(f"image cross-attention needs the text context (B, S, E) of the {len(x)} images")
        out = cross_attn(x, text_context.to(x.dtype))  # (B, 1+N, Wv)
        if self.cross.image_norm_match:
            out = out * x.norm(dim=-1, keepdim=True) / (out.norm(dim=-1, keepdim=True) + 1e-6)
        return x + cross_attn.residual_weight * out


def text_side_of(embeddings: torch.Tensor) -> TextSide:
    """Anchors [T_N, T_A] from each image's sentence embeddings (B, S, E), normal sentences first."""
    embeddings = F.normalize(embeddings, dim=-1)
    num_normal = len(NORMAL_STATES) * len(TEMPLATES)
    normal_anchor = F.normalize(embeddings[:, :num_normal].mean(1), dim=-1)  # (B, E)
    abnormal_anchor = F.normalize(embeddings[:, num_normal:].mean(1), dim=-1)
    return TextSide(anchors=torch.stack([normal_anchor, abnormal_anchor], dim=-1), sentences=embeddings)


@torch.no_grad()
def stage1_features(
    backbone: FrozenCLIP,
    images: torch.Tensor,
    surgery_from: int,
    vv_mode: VVMode,
    levels: list[int] | None = None,
    start: tuple[int, torch.Tensor] | None = None,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Frozen stage-1 visual features at `levels` (default: all): per level normalize(visual_proj(ln_post(V-V
    patches))) + normalize(CLS embedding) (B, N, E) (the sum is not re-normalised), and the normalised plain image
    embedding (B, E). The V-V path runs only up to the deepest requested level."""
    features = backbone.encode_image_vv(images, surgery_from=surgery_from, vv_mode=vv_mode, levels=levels, start=start)
    image_feature = F.normalize(features.image_embed, dim=-1)
    patches = [
        F.normalize(backbone.visual_projection(backbone.ln_post(tokens[:, 1:])), dim=-1) + image_feature[:, None]
        for tokens in features.level_tokens
    ]
    return patches, image_feature


def surgery_start(num_layers: int, surgery_until_layer: int | None, levels: list[int]) -> int:
    """1-based first V-V block. The public flag `--surgery_until_layer K` replaces the last K-1 blocks
    (K=20 on a 24-block ViT: blocks 6..24); without it the V-V path starts at the first level."""
    if surgery_until_layer is None:
        return levels[0]
    start = num_layers - surgery_until_layer + 2
    if not 1 <= start <= num_layers:
        raise ConfigError(
            f"--surgery_until_layer {surgery_until_layer} does not fit a {num_layers}-block ViT "
            f"(use 2..{num_layers + 1})"
        )
    return start
