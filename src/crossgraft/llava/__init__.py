"""LLaVA-OneVision with alternating attention (seed 004, DESIGN §7).

Importing this package registers the three model types with `AutoConfig` and `AutoModelForCausalLM`.
"""

from transformers import AutoConfig, AutoModelForCausalLM

from crossgraft.llava.configuration import (
    ALTERNATING_CROSS_MODEL_TYPE,
    ALTERNATING_MODEL_TYPE,
    BASE_MODEL_TYPE,
    LlavaQwenAlternatingConfig,
    LlavaQwenAlternatingCrossConfig,
    LlavaQwenConfig,
)
from crossgraft.llava.modeling import (
    LlavaQwenForCausalLM,
    LlavaQwenWithAlternatingAttnForCausalLM,
    LlavaQwenWithAlternatingCrossAttnForCausalLM,
)

MODEL_CLASSES = {
    BASE_MODEL_TYPE: LlavaQwenForCausalLM,
    ALTERNATING_MODEL_TYPE: LlavaQwenWithAlternatingAttnForCausalLM,
    ALTERNATING_CROSS_MODEL_TYPE: LlavaQwenWithAlternatingCrossAttnForCausalLM,
}

for _config_class, _model_class in (
    (LlavaQwenConfig, LlavaQwenForCausalLM),
    (LlavaQwenAlternatingConfig, LlavaQwenWithAlternatingAttnForCausalLM),
    (LlavaQwenAlternatingCrossConfig, LlavaQwenWithAlternatingCrossAttnForCausalLM),
):
    AutoConfig.register(_config_class.model_type, _config_class, exist_ok=True)
    AutoModelForCausalLM.register(_config_class, _model_class, exist_ok=True)

__all__ = [
    "MODEL_CLASSES",
    "LlavaQwenConfig",
    "LlavaQwenAlternatingConfig",
    "LlavaQwenAlternatingCrossConfig",
    "LlavaQwenForCausalLM",
    "LlavaQwenWithAlternatingAttnForCausalLM",
    "LlavaQwenWithAlternatingCrossAttnForCausalLM",
]
