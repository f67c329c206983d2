"""Where a command runs: `auto` picks the GPU when one is there."""

from __future__ import annotations

import torch


def resolve_device(name: str) -> str:
    """`auto` becomes cuda when a GPU is there, else cpu; any other name is kept."""
    if name != "auto":
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"
