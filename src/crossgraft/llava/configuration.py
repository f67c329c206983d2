"""Configs of the LLaVA-OneVision family (Qwen2 language model + SigLIP tower), one per variant.

Field names follow LLaVA-NeXT's `config.json` (`mm_vision_tower`, `mm_projector_type`, `mm_hidden_size`,
`mm_vision_select_layer`, `mm_patch_merge_type`, `image_aspect_ratio`, …) so published lmms-lab configs load
as they are. What LLaVA-NeXT keeps outside the config — the SigLIP tower's sizes and its image statistics —
is stored here too (`vision_config`, `image_mean`, `image_std`), so a model is fully described by its
config.json and builds offline.
"""

from __future__ import annotations

import json
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import Qwen2Config, SiglipVisionConfig

from crossgraft.llava.constants import (  # noqa: F401 - the model configs' names, re-exported
    ALTERNATING_CROSS_MODEL_TYPE,
    ALTERNATING_MODEL_TYPE,
    ANYRES_PATTERN,
    ASPECT_RATIO_HELP,
    ATTENTION_RULES,
    BASE_MODEL_TYPE,
    DEFAULT_SKIP_PREFIXES,
    DTYPE_NAMES,
    IGNORE_INDEX,
    IMAGE_TOKEN_INDEX,
    KNOWN_VISION_TOWERS,
    SQUARE_ASPECT_RATIOS,
    SUPPORTED_ATTENTION,
    TINY_TYPES,
    XATTN_MODES,
    LlavaConfigError,
    check_aspect_ratio,
)


@strict
class LlavaQwenConfig(Qwen2Config):
    """Base LLaVA-OneVision config: every Qwen2 field plus the multimodal ones."""

    model_type = BASE_MODEL_TYPE

    mm_vision_tower: str = "google/siglip-so400m-patch14-384"
    vision_config: dict | None = None  # SiglipVisionConfig fields of the full tower; None: looked up by name
    mm_hidden_size: int | None = None  # the tower's width; must agree with vision_config
    mm_projector_type: str = "mlp2x_gelu"
    mm_vision_select_layer: int = -2  # LLaVA-NeXT drops SigLIP's last layer and uses the one before
    mm_vision_select_feature: str = "patch"
    mm_patch_merge_type: str = "spatial_unpad"  # "unpad" in the name: one image_newline after each image
    image_aspect_ratio: str = "pad"  # pad | square | anyres | anyres_max_N (OneVision: anyres_max_9)
    image_grid_pinpoints: list | str | None = None  # anyres resolutions: [[w, h], …] or "(1x1),...,(6x6)"
    image_token_index: int = IMAGE_TOKEN_INDEX
    image_mean: list | tuple = (0.5, 0.5, 0.5)  # SigLIP's preprocessing statistics
    image_std: list | tuple = (0.5, 0.5, 0.5)
    tokenizer_model_max_length: int | None = None  # spliced sequences are cut to this length
    tokenizer_padding_side: str = "right"
    # One attention rule per decoder layer (ATTENTION_RULES), which the forward pass reads. A config.json without
    # it (LLaVA-NeXT's, or crossgraft's before the field) gets its variant's pattern: the same model either way.
    # (Qwen2's own `layer_types` says full or sliding-window attention, and transformers checks it for those.)
    layer_attention_rules: list | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        if self.layer_attention_rules is None:
            self.layer_attention_rules = self.variant_attention_rules()
        rules = list(self.layer_attention_rules)
        if len(rules) != self.num_hidden_layers or any(rule not in ATTENTION_RULES for rule in rules):
            raise LlavaConfigError(
                f"layer_attention_rules must name one of {', '.join(ATTENTION_RULES)} for each of the "
                f"{self.num_hidden_layers} decoder layers, got {rules}"
            )
        if self.vision_config is None and self.mm_vision_tower in KNOWN_VISION_TOWERS:
            self.vision_config = dict(KNOWN_VISION_TOWERS[self.mm_vision_tower])
        if self.vision_config is not None:
            width = int(self.vision_config["hidden_size"])
            if self.mm_hidden_size is None:
                self.mm_hidden_size = width
            elif self.mm_hidden_size != width:
                raise LlavaConfigError(
                    f"config contradicts itself: mm_hidden_size is {self.mm_hidden_size} but the vision tower "
                    f"({self.mm_vision_tower}) is {width} wide"
                )
        if self.mm_projector_type != "mlp2x_gelu":
            raise LlavaConfigError(
                f"mm_projector_type {self.mm_projector_type!r} is not supported; this package builds 'mlp2x_gelu' "
                "(the projector of every LLaVA-OneVision checkpoint)"
            )
        if self.mm_vision_select_feature not in ("patch", "cls_patch"):
            raise LlavaConfigError(
                f"mm_vision_select_feature must be 'patch' or 'cls_patch', not {self.mm_vision_select_feature!r}"
            )
        if self.tokenizer_padding_side not in ("left", "right"):
            raise LlavaConfigError(
                f"tokenizer_padding_side must be 'left' or 'right', not {self.tokenizer_padding_side!r}"
            )

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> Any:
        config_dict = dict(config_dict)
        if "dtype" in config_dict:  # torch_dtype is written beside it for older loaders only
            config_dict.pop("torch_dtype", None)
        return super().from_dict(config_dict, **kwargs)

    def to_json_string(self, use_diff: bool = True) -> str:
        """config.json also carries the names LLaVA-NeXT-era loaders (transformers 4.x) read: `rope_theta` at the
        top level (without it they use 10000 where Qwen2 has 1e6) and `torch_dtype`."""
        output = json.loads(super().to_json_string(use_diff))
        rope_parameters = output.get("rope_parameters") or dict(self.rope_parameters or {})
        if "rope_theta" in rope_parameters:
            output["rope_theta"] = rope_parameters["rope_theta"]
        output["torch_dtype"] = output.get("dtype") or str(self.dtype or "float32").removeprefix("torch.")
        return json.dumps(output, indent=2, sort_keys=True) + "\n"

    def vision_tower_config(self) -> SiglipVisionConfig:
        """The SigLIP config of the full tower (before LLaVA-NeXT drops its last layers)."""
        if self.vision_config is not None:
            fields = {k: v for k, v in self.vision_config.items() if k not in ("model_type", "transformers_version")}
            return SiglipVisionConfig(**fields)
        # A tower this package does not know by name: read its config (a local folder or a Hub id).
        return SiglipVisionConfig.from_pretrained(self.mm_vision_tower)

    @property
    def attention_pattern(self) -> str:
        """The attention rule of the alternating layers: 'causal' (none), 'within_modality' or 'cross_modality'."""
        return "causal"

    def variant_attention_rules(self) -> list[str]:
        """The variant's per-layer rules: its attention pattern on odd layers (0-based), never the last one, and
        causal attention everywhere else."""
        last = self.num_hidden_layers - 1
        return [self.attention_pattern if i % 2 == 1 and i != last else "causal" for i in range(self.num_hidden_layers)]

    @property
    def alternating_layers(self) -> list[int]:
        """Decoder layers whose rule is not plain causal attention."""
        return [i for i, rule in enumerate(self.layer_attention_rules or []) if rule != "causal"]


@strict
class LlavaQwenAlternatingConfig(LlavaQwenConfig):
    """`alternating`: odd layers attend within their own modality (text↔text, image↔image). No new weights."""

    model_type = ALTERNATING_MODEL_TYPE

    @property
    def attention_pattern(self) -> str:
        return "within_modality"


@strict
class LlavaQwenAlternatingCrossConfig(LlavaQwenConfig):
    """`alternating_cross`: cross-modal layers, in one of two modes stored as `xattn_mode`.

    `gated` (default for new models): gated cross-attention blocks from the text tokens to the projected image
    features in `model.xattn.{i}`, before every `xattn_every_n_layers`-th decoder layer, tanh gates at 0.
    `mask`: no new weights; odd layers attend to the other modality plus themselves only. A config.json
    without the field (as the published checkpoints are) means `mask`.
    """

    model_type = ALTERNATING_CROSS_MODEL_TYPE
    xattn_mode: str = "gated"
    xattn_every_n_layers: int = 4

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> Any:
        config_dict = dict(config_dict)
        config_dict.setdefault("xattn_mode", "mask")
        return super().from_dict(config_dict, **kwargs)

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        if self.xattn_mode not in XATTN_MODES:
            raise LlavaConfigError(f"xattn_mode must be one of {', '.join(XATTN_MODES)}, not {self.xattn_mode!r}")
        if self.xattn_every_n_layers < 1:
            raise LlavaConfigError(f"xattn_every_n_layers must be at least 1, not {self.xattn_every_n_layers}")

    @property
    def attention_pattern(self) -> str:
        return "cross_modality" if self.xattn_mode == "mask" else "causal"

    @property
    def xattn_layers(self) -> list[int]:
        """Decoder layers preceded by a gated cross-attention block (open_flamingo's every-n convention)."""
        if self.xattn_mode != "gated":
            return []
        every = self.xattn_every_n_layers
        return [i for i in range(self.num_hidden_layers) if (i + 1) % every == 0]


CONFIG_CLASSES: dict[str, type[LlavaQwenConfig]] = {
    BASE_MODEL_TYPE: LlavaQwenConfig,
    ALTERNATING_MODEL_TYPE: LlavaQwenAlternatingConfig,
    ALTERNATING_CROSS_MODEL_TYPE: LlavaQwenAlternatingCrossConfig,
}
