"""AdaptedCLIP: AA-CLIP's text and image adapters on a frozen CLIP (DESIGN §3).

Text side: adapters after text blocks 1..`text_adapt_until` (all positions), then the EOT feature after
`ln_final` goes through a SimpleProj + LeakyReLU that replaces CLIP's text projection.
Image side: adapters after vision blocks 1..`image_adapt_until` (all tokens, CLS included); at each level
the patch tokens go through `ln_post`, the level's `seg_proj` and an L2 norm; the detection token is
`det_proj` of the last level's post-LN patches, normalised per patch and averaged.
Each adapter's output is rescaled to the norm of the tokens it adapts and mixed in with weight λ.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from crossgraft.anomaly.backbone import FrozenCLIP, VVMode
from crossgraft.anomaly.modules import SimpleAdapter, SimpleProj, xavier_init
from crossgraft.anomaly.prompts import NORMAL_STATES, TEMPLATES, class_sentences


@dataclass
class AdapterConfig:
    text_adapt_weight: float = 0.1
    image_adapt_weight: float = 0.1
    text_adapt_until: int = 3
    image_adapt_until: int = 6
    relu: bool = False  # LeakyReLU after seg_proj / det_proj

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class ImageOutput:
    seg_tokens: list[torch.Tensor]  # per level (B, N, E), L2-normalised
    det_token: torch.Tensor  # (B, E): mean of L2-normalised projected patches


def mix_adapter(x: torch.Tensor, adapted: torch.Tensor, weight: float) -> torch.Tensor:
    """x ← λ·a·‖x‖/‖a‖ + (1−λ)·x, norms per token."""
    adapted = adapted * x.norm(dim=-1, keepdim=True) / adapted.norm(dim=-1, keepdim=True)
    return weight * adapted + (1 - weight) * x


class AdaptedCLIP(nn.Module):
    def __init__(self, backbone: FrozenCLIP, config: AdapterConfig | None = None) -> None:
        super().__init__()
        config = config or AdapterConfig()
        if not 0 <= config.text_adapt_until <= backbone.num_text_layers:
            raise ValueError(
                f"text_adapt_until={config.text_adapt_until} but the text encoder has {backbone.num_text_layers} blocks"
            )
        if not 0 <= config.image_adapt_until <= backbone.num_vision_layers:
            raise ValueError(
                f"image_adapt_until={config.image_adapt_until} but the ViT has {backbone.num_vision_layers} blocks"
            )
        self.backbone = backbone
        self.config = config
        text_width, vision_width, embed = backbone.text_width, backbone.vision_width, backbone.embed_dim
        self.text_adapter = nn.ModuleList(
            [SimpleAdapter(text_width, text_width) for _ in range(config.text_adapt_until)]
            + [SimpleProj(text_width, embed, relu=True)]
        )
        self.image_adapter = nn.ModuleDict(
            {
                "layer_adapters": nn.ModuleList(
                    [SimpleAdapter(vision_width, vision_width) for _ in range(config.image_adapt_until)]
                ),
                "seg_proj": nn.ModuleList([SimpleProj(vision_width, embed, config.relu) for _ in backbone.levels]),
                "det_proj": SimpleProj(vision_width, embed, config.relu),
            }
        )
        xavier_init(self.text_adapter)
        xavier_init(self.image_adapter)

    # ------------------------------------------------------------------------------------------ text
    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Adapted text embedding of token ids (B, T) -> (B, E)."""
        backbone = self.backbone
        x = backbone.embed_text(input_ids).to(backbone.dtype)  # (B, T, Wt)
        for index in range(backbone.num_text_layers):
            x = backbone.text_block(index, x)
            if index < self.config.text_adapt_until:
                x = mix_adapter(x, self.text_adapter[index](x), self.config.text_adapt_weight)
        return self.text_adapter[-1](backbone.eot_features(x, input_ids))

    def class_anchors(self, class_texts: list[str]) -> torch.Tensor:
        """Text anchors [T_N, T_A] per class: (C, E, 2). All C x 16 sentences go through in one pass."""
        sentences = []
        for text in class_texts:
            normal, abnormal = class_sentences(text)
            sentences += normal + abnormal
        embeddings = F.normalize(self.encode_text(self.backbone.tokenize(sentences)), dim=-1)
        per_class = embeddings.reshape(len(class_texts), -1, embeddings.shape[-1])  # (C, 16, E)
        num_normal = len(NORMAL_STATES) * len(TEMPLATES)
        normal = F.normalize(per_class[:, :num_normal].mean(1), dim=-1)
        abnormal = F.normalize(per_class[:, num_normal:].mean(1), dim=-1)
        return torch.stack([normal, abnormal], dim=-1)

    # ----------------------------------------------------------------------------------------- image
    def forward(self, images: torch.Tensor) -> ImageOutput:
        """Adapted image pass: per-level segmentation tokens and the detection token."""
        backbone = self.backbone
        adapters = self.image_adapter["layer_adapters"]
        x = backbone.embed_image(images)  # (B, 1+N, Wv)
        level_tokens = []
        for index in range(backbone.num_vision_layers):
            x = backbone.vision_block(index, x)
            if index < self.config.image_adapt_until:
                x = mix_adapter(x, adapters[index](x), self.config.image_adapt_weight)
            if index + 1 in backbone.levels:
                level_tokens.append(backbone.ln_post(x[:, 1:]))  # (B, N, Wv)
        seg_tokens = [
            F.normalize(projection(tokens), dim=-1)
            for projection, tokens in zip(self.image_adapter["seg_proj"], level_tokens)
        ]
        det_token = F.normalize(self.image_adapter["det_proj"](level_tokens[-1]), dim=-1).mean(1)
        return ImageOutput(seg_tokens=seg_tokens, det_token=det_token)


@torch.no_grad()
def stage1_features(
    backbone: FrozenCLIP, images: torch.Tensor, surgery_from: int, vv_mode: VVMode
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Frozen stage-1 visual features: per level normalize(visual_proj(ln_post(V-V patches))) + normalize(CLS
    embedding) (B, N, E) (the sum is not re-normalised), and the normalised plain image embedding (B, E)."""
    features = backbone.encode_image_vv(images, surgery_from=surgery_from, vv_mode=vv_mode)
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
        raise ValueError(
            f"--surgery_until_layer {surgery_until_layer} does not fit a {num_layers}-block ViT "
            f"(use 2..{num_layers + 1})"
        )
    return start
