"""The LLaVA family's names and constants, without transformers: the command line's help and argument checks read
them before anything heavy is imported (`configuration.py` builds the model configs on them)."""

from __future__ import annotations

import re
from typing import Any

from crossgraft.errors import CrossgraftError

IMAGE_TOKEN_INDEX = -200  # LLaVA's placeholder id for `<image>` in input_ids; never a real token
IGNORE_INDEX = -100  # label of every position that is not learned

BASE_MODEL_TYPE = "llava_qwen"
ALTERNATING_MODEL_TYPE = "llava_qwen_with_alternating_attn"
ALTERNATING_CROSS_MODEL_TYPE = "llava_qwen_with_alternating_cross_attn"

XATTN_MODES = ("gated", "mask")
ATTENTION_RULES = ("causal", "within_modality", "cross_modality")  # what a decoder layer's self-attention may see
SUPPORTED_ATTENTION = ("eager", "sdpa", "flex_attention")  # attn_implementation values every variant runs
DTYPE_NAMES = ("float32", "bfloat16", "float16")  # weight dtypes by name (loading maps them to torch dtypes)
TINY_TYPES = ("qwen2", "siglip", BASE_MODEL_TYPE, ALTERNATING_MODEL_TYPE, ALTERNATING_CROSS_MODEL_TYPE)
# A LLaVA backbone's projector is kept (the seed's list also skipped mm_projector, which re-randomised OneVision's
# trained projector; --init_skip_prefixes mm_projector,vision_resampler does that)
DEFAULT_SKIP_PREFIXES = ("vision_resampler",)
SQUARE_ASPECT_RATIOS = ("pad", "square")  # one tile per image
ANYRES_PATTERN = re.compile(r"anyres(?:_max_(\d+))?")
ASPECT_RATIO_HELP = "pad, square, anyres or anyres_max_N (N ≥ 1 tiles, OneVision: anyres_max_9)"
# The towers LLaVA-OneVision ships with; their sizes are public, so a config that names one needs no download.
KNOWN_VISION_TOWERS: dict[str, dict[str, Any]] = {
    "google/siglip-so400m-patch14-384": {
        "hidden_size": 1152,
        "intermediate_size": 4304,
        "num_hidden_layers": 27,
        "num_attention_heads": 16,
        "image_size": 384,
        "patch_size": 14,
        "hidden_act": "gelu_pytorch_tanh",
        "layer_norm_eps": 1e-6,
    },
}


class LlavaConfigError(CrossgraftError, ValueError):
    """A LLaVA config that contradicts itself or that this package cannot build. The message says why."""


def check_aspect_ratio(value: str) -> None:
    """Refuse an image_aspect_ratio this package cannot process, naming the ones it can."""
    match = ANYRES_PATTERN.fullmatch(value)
    if value in SQUARE_ASPECT_RATIOS or (match and (match.group(1) is None or int(match.group(1)) >= 1)):
        return
    raise LlavaConfigError(f"image_aspect_ratio {value!r} is not supported; use {ASPECT_RATIO_HELP}")


LLAVA_NEXT_GROUP = "LLaVA-NeXT's script flags (checked against the checkpoint, or accepted with no effect)"
