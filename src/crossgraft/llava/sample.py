"""Tiny, offline stand-ins for the real thing: a byte-level Qwen2 tokenizer, tiny random Qwen2 / SigLIP /
LLaVA models saved like real checkpoints, and a LAION-style image–caption sample in LLaVA format."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from transformers import (
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2Tokenizer,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from crossgraft.bpe import byte_symbols
from crossgraft.errors import ConfigError
from crossgraft.files import ensure_folder, with_umask_modes, write_text_atomic
from crossgraft.images import save_image
from crossgraft.llava.configuration import (
    BASE_MODEL_TYPE,
    CONFIG_CLASSES,
    TINY_TYPES,
    LlavaQwenConfig,
)
from crossgraft.llava.modeling import MODEL_CLASSES

IM_START, IM_END, END_OF_TEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"

TINY_QWEN2 = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    tie_word_embeddings=True,
    rms_norm_eps=1e-6,
)
TINY_SIGLIP = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,  # LLaVA-NeXT drops the last one: 2 run
    num_attention_heads=2,
    image_size=32,
    patch_size=8,  # 16 patches per image
    hidden_act="gelu_pytorch_tanh",
    layer_norm_eps=1e-6,
)


def build_tiny_tokenizer() -> Qwen2Tokenizer:
    """A real Qwen2Tokenizer (byte-level BPE, Qwen's specials) with one token per byte: nothing is unknown."""
    vocab = {symbol: index for index, symbol in enumerate(byte_symbols())}
    for token in (END_OF_TEXT, IM_START, IM_END):
        vocab[token] = len(vocab)
    # As Qwen2-Instruct: answers end with <|im_end|> (eos), padding is <|endoftext|>.
    return Qwen2Tokenizer(
        vocab=vocab,
        merges=[],
        eos_token=IM_END,
        pad_token=END_OF_TEXT,
        unk_token=END_OF_TEXT,
        extra_special_tokens=[IM_START, IM_END],
        model_max_length=2048,
    )


def tiny_qwen2_config(tokenizer: Qwen2Tokenizer, **overrides: Any) -> Qwen2Config:
    vocab_size = (len(tokenizer) + 63) // 64 * 64
    fields = dict(
        TINY_QWEN2,
        vocab_size=vocab_size,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    return Qwen2Config(**{**fields, **overrides})


def tiny_llava_config(model_type: str, tokenizer: Qwen2Tokenizer, **overrides: Any) -> LlavaQwenConfig:
    """A tiny config of one LLaVA variant; `overrides` may set any field (e.g. xattn_every_n_layers)."""
    language = tiny_qwen2_config(tokenizer).to_dict()
    for key in ("model_type", "architectures", "transformers_version", "layer_types"):
        language.pop(key, None)
    fields = dict(language, mm_vision_tower="tiny-siglip", vision_config=dict(TINY_SIGLIP))
    return CONFIG_CLASSES[model_type](**{**fields, **overrides})


def make_tiny_model(out: Path | str, model_type: str = BASE_MODEL_TYPE, seed: int = 0, **overrides: Any) -> Path:
    """Save a tiny random model of `model_type` plus its tokenizer to `out`: a LLaVA variant, a bare Qwen2 LM
    ('qwen2', a backbone for --init_from_backbone) or a SigLIP tower ('siglip', for --vision_tower)."""
    if model_type not in TINY_TYPES:
        raise ConfigError(f"unknown tiny model type {model_type!r}; choose one of {', '.join(TINY_TYPES)}")
    out = ensure_folder(out)
    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(seed)
    if model_type == "siglip":
        SiglipVisionModel(SiglipVisionConfig(**{**TINY_SIGLIP, **overrides})).save_pretrained(out)
        return with_umask_modes(out)
    model: PreTrainedModel
    if model_type == "qwen2":
        model = Qwen2ForCausalLM(tiny_qwen2_config(tokenizer, **overrides))
    else:
        model = MODEL_CLASSES[model_type](tiny_llava_config(model_type, tokenizer, **overrides))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return with_umask_modes(out)


# --------------------------------------------------------------------------------------- sample data
COLOURS = {"red": (200, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 200), "yellow": (230, 200, 40)}
BACKGROUNDS = {"white": (245, 245, 245), "black": (15, 15, 15), "grey": (128, 128, 128)}
SHAPES = ("circle", "square", "triangle")
QUESTIONS = (
    "Describe this image briefly.",
    "What is in the picture?",
    "Write a short caption for this image.",
)


def _draw(shape: str, colour: tuple, background: tuple, size: tuple[int, int], rng: random.Random) -> Image.Image:
    width, height = size
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    radius = rng.randint(min(size) // 5, min(size) // 3)
    cx, cy = rng.randint(radius, width - radius), rng.randint(radius, height - radius)
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=colour)
    noise = np.random.default_rng(rng.randint(0, 2**31)).normal(0, 6, (height, width, 3))
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255).astype(np.uint8))


def caption_attributes(caption: str) -> tuple[str | None, str | None, str | None]:
    """(colour, shape, background) named in a sample caption; None where a part is missing."""
    words = caption.lower().replace(".", " ").split()
    colour = next((w for w in words if w in COLOURS), None)
    shape = next((w for w in words if w in SHAPES), None)
    after_on = words[words.index("on") + 1 :] if "on" in words else []
    background = next((w for w in after_on if w in BACKGROUNDS), None)
    return colour, shape, background


HELD_OUT_FILE = "held_out.json"


def make_sample(out: Path, count: int = 12, seed: int = 0, heldout: int = 0) -> Path:
    """Write `count` generated images and their captions as a LLaVA-format json; returns the json path.

    Layout: OUT/images/NNNN.png and OUT/sample.json (records with `id`, `image`, `conversations` and the
    `attributes` the caption names, which `evaluate` checks the generated captions against); with `heldout`, that
    many more records in OUT/held_out.json, whose ids and images the training file does not hold.
    """
    out = Path(out)
    ensure_folder(out / "images")
    rng = random.Random(seed)
    records = []
    for index in range(count + heldout):
        shape, colour, background = rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(list(BACKGROUNDS))
        size = rng.choice([(64, 64), (64, 48), (48, 64)])
        name = f"images/{index:04d}.png"
        save_image(_draw(shape, COLOURS[colour], BACKGROUNDS[background], size, rng), out / name)
        caption = f"A {colour} {shape} on a {background} background."
        records.append(
            {
                "id": f"sample-{index:04d}",
                "image": name,
                "conversations": [
                    {"from": "human", "value": f"<image>\n{rng.choice(QUESTIONS)}"},
                    {"from": "gpt", "value": caption},
                ],
                "attributes": {"colour": colour, "shape": shape, "background": background},
            }
        )
    path = out / "sample.json"
    write_text_atomic(path, json.dumps(records[:count], indent=1))
    if heldout:
        write_text_atomic(out / HELD_OUT_FILE, json.dumps(records[count:], indent=1))
    return path
