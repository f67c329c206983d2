"""The image side of LLaVA-OneVision's model: the SigLIP tower as LLaVA-NeXT runs it and the mlp2x_gelu projector
(the image processor is in `processing`)."""

from __future__ import annotations

import torch
from torch import nn
from transformers import SiglipVisionModel

from crossgraft.llava.configuration import LlavaConfigError, LlavaQwenConfig


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
        """Tiles (N, 3, S, S) -> patch features (N, P, W) of the selected layer."""
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
