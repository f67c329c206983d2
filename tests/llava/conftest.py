"""Tiny LLaVA fixtures, written to disk once per session like real checkpoints."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from crossgraft.llava.sample import build_tiny_tokenizer

    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Saved tiny checkpoints: llava_qwen, both alternating types (cross: gated), a bare qwen2 LM, a SigLIP tower."""
    from crossgraft.llava.sample import make_tiny_model

    root = tmp_path_factory.mktemp("tiny_llava")
    kinds = [
        "llava_qwen",
        "llava_qwen_with_alternating_attn",
        "llava_qwen_with_alternating_cross_attn",
        "qwen2",
        "siglip",
    ]
    return {kind: make_tiny_model(root / kind, kind, seed=0) for kind in kinds}


@pytest.fixture(scope="session")
def llava_sample(tmp_path_factory) -> Path:
    from crossgraft.llava.sample import make_sample

    return make_sample(tmp_path_factory.mktemp("llava_sample"), count=8, seed=0)


@pytest.fixture(scope="session")
def speaking_models(tiny_models, llava_sample, tmp_path_factory) -> dict[str, Path]:
    """The tiny llava_qwen and gated alternating_cross models after 40 steps on the caption sample: their greedy
    answers are caption-like text (a random model repeats one token, often a newline)."""
    from helpers import short_llava_run

    from crossgraft.cli import main

    root = tmp_path_factory.mktemp("speaking")
    out = {}
    for kind in ("llava_qwen", "llava_qwen_with_alternating_cross_attn"):
        flags = short_llava_run(
            tiny_models[kind], llava_sample, root / kind, "--max_steps", "40", "--save_strategy", "no"
        )
        assert main(["llava", "train", *flags]) == 0
        out[kind] = root / kind
    return out
