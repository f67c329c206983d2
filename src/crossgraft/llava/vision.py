"""The image side of LLaVA-OneVision: the SigLIP tower as LLaVA-NeXT runs it, the mlp2x_gelu projector, and
fixed-resolution square preprocessing. (anyres tiling is not implemented yet: every image becomes one square.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn
from transformers import SiglipVisionModel

from crossgraft.images import to_rgb
from crossgraft.llava.configuration import SUPPORTED_ASPECT_RATIOS, LlavaConfigError, LlavaQwenConfig


class _SiglipHolder(nn.Module):
    """Keeps the `vision_model.` level of the parameter names, as LLaVA-NeXT checkpoints spell them:
    `model.vision_tower.vision_tower.vision_model.encoder.layers.0.…`."""

    def __init__(self, vision_model: SiglipVisionModel):
        super().__init__()
        self.vision_model = vision_model


class SigLipVisionTower(nn.Module):
    """SigLIP as LLaVA-NeXT uses it: the layers after `mm_vision_select_layer` are dropped (with -2, the last
    one), there is no pooling head, and the selected layer's output is used before the post-layernorm."""

    def __init__(self, config: LlavaQwenConfig):
        super().__init__()
        vision_config = config.vision_tower_config()
        total_layers = vision_config.num_hidden_layers
        select = config.mm_vision_select_layer
        kept_layers = total_layers + select + 1 if select < 0 else select
        if not 1 <= kept_layers <= total_layers:
            raise LlavaConfigError(
                f"mm_vision_select_layer {select} selects no layer of a {total_layers}-layer vision tower"
            )
        vision_config.num_hidden_layers = kept_layers
        vision_config.vision_use_head = False
        image_size, patch_size = vision_config.image_size, vision_config.patch_size
        if not (isinstance(image_size, int) and isinstance(patch_size, int)):
            raise LlavaConfigError(f"the vision tower's images and patches must be square: {image_size}, {patch_size}")
        self.image_size = image_size
        self.num_patches = (image_size // patch_size) ** 2
        self.vision_tower = _SiglipHolder(SiglipVisionModel(vision_config))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        vision_model = self.vision_tower.vision_model
        hidden = vision_model.embeddings(images.to(vision_model.embeddings.patch_embedding.weight.dtype))  # (N, P, W)
        hidden = vision_model.encoder(inputs_embeds=hidden).last_hidden_state  # (N, P, W)
        return hidden


def build_projector(config: LlavaQwenConfig) -> nn.Sequential:
    """mlp2x_gelu: Linear(tower width → LM width), GELU, Linear(LM width → LM width); keys `0.*` and `2.*`."""
    tower_width = config.mm_hidden_size or config.vision_tower_config().hidden_size
    return nn.Sequential(
        nn.Linear(tower_width, config.hidden_size),
        nn.GELU(),
        nn.Linear(config.hidden_size, config.hidden_size),
    )


@dataclass
class SquareImageProcessor:
    """Image → (3, size, size) float tensor, normalised with the tower's statistics.

    `pad`: pasted centred on a square of the mean colour first (LLaVA's expand2square), so nothing is cut or
    stretched. `square`: resized straight to the square.
    """

    size: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    aspect_ratio: str = "pad"

    def __post_init__(self) -> None:
        if self.aspect_ratio not in SUPPORTED_ASPECT_RATIOS:
            raise LlavaConfigError(
                f"image_aspect_ratio {self.aspect_ratio!r} is not supported; use one of "
                f"{', '.join(SUPPORTED_ASPECT_RATIOS)} (anyres tiling is not implemented yet)"
            )

    @classmethod
    def from_config(cls, config: LlavaQwenConfig, aspect_ratio: str = "pad") -> SquareImageProcessor:
        size = config.vision_tower_config().image_size
        if not isinstance(size, int):
            raise LlavaConfigError(f"the vision tower's images must be square, got image_size {size}")
        mean, std = (float(v) for v in config.image_mean), (float(v) for v in config.image_std)
        return cls(size, tuple(mean), tuple(std), aspect_ratio)  # type: ignore[arg-type]

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = to_rgb(image)  # 16-bit grey scaled, not clipped
        if self.aspect_ratio == "pad":
            image = self._expand_to_square(image)
        image = image.resize((self.size, self.size), Image.Resampling.BICUBIC)
        pixels = np.asarray(image, dtype=np.float32) / 255.0  # (H, W, 3)
        mean, std = np.asarray(self.image_mean, dtype=np.float32), np.asarray(self.image_std, dtype=np.float32)
        normalised = (pixels - mean) / std
        return torch.from_numpy(normalised.transpose(2, 0, 1).copy())  # (3, S, S)

    def _expand_to_square(self, image: Image.Image) -> Image.Image:
        width, height = image.size
        if width == height:
            return image
        side = max(width, height)
        background = tuple(int(value * 255) for value in self.image_mean)
        canvas = Image.new("RGB", (side, side), background)
        canvas.paste(image, ((side - width) // 2, (side - height) // 2))
        return canvas
