"""LLaVA-OneVision with alternating attention.

The package itself is light (the command line's help needs nothing heavy). Its model classes and configs load on
first use: `from crossgraft.llava import MODEL_CLASSES` (or any class below) loads `crossgraft.llava.modeling`, which
registers the three model types with transformers' `AutoConfig` and `AutoModelForCausalLM`.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "MODEL_CLASSES": "crossgraft.llava.modeling",
    "LlavaQwenForCausalLM": "crossgraft.llava.modeling",
    "LlavaQwenWithAlternatingAttnForCausalLM": "crossgraft.llava.modeling",
    "LlavaQwenWithAlternatingCrossAttnForCausalLM": "crossgraft.llava.modeling",
    "LlavaQwenConfig": "crossgraft.llava.configuration",
    "LlavaQwenAlternatingConfig": "crossgraft.llava.configuration",
    "LlavaQwenAlternatingCrossConfig": "crossgraft.llava.configuration",
}
__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'crossgraft.llava' has no attribute {name!r}")
    importlib.import_module("crossgraft.llava.modeling")  # registers the model types whatever is asked for
    return getattr(importlib.import_module(_LAZY[name]), name)
