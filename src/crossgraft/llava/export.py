"""`crossgraft llava export --to llava-next OUT`: a checkpoint folder that LLaVA-NeXT's model builder (and the
public alternating fork's, mavleo96/LLaVA-Alternating-Attn) loads as the right class.

Those builders do not read `model_type`: `load_pretrained_model(path, None, model_name)` picks the class from
`model_name`, which `get_model_name_from_path` takes from the folder's name. Read from their builder.py:

- the name must contain `llava` (else the folder is loaded as a plain language model) and `qwen`;
- `with_alternating_attn` / `with_alternating_cross_attn` select the fork's alternating classes (upstream
  LLaVA-NeXT has none and would load an alternating model as the plain `LlavaQwenForCausalLM`);
- names containing `lora`, `moe`, `a14b`, or a string an earlier branch tests for (`mixtral`, `mistral`,
  `zephyr`, `gemma`, `llama`, `yi`, `nous-hermes`, `v1.5`, `mpt`) are routed elsewhere.

So OUT's name is checked before anything is written, and a name that would load the wrong class is refused
with one that works. The gated alternating_cross variant is refused: its `model.xattn.*` blocks exist in
neither codebase, which would drop them and run a different model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoTokenizer

from crossgraft.files import atomic_folder, write_text_atomic
from crossgraft.graft import CheckpointError
from crossgraft.llava.configuration import (
    ALTERNATING_CROSS_MODEL_TYPE,
    ALTERNATING_MODEL_TYPE,
    BASE_MODEL_TYPE,
    LlavaConfigError,
)
from crossgraft.llava.loading import MODEL_TYPE_OF_VARIANT, TORCH_DTYPES, classify, load_model, read_raw_config
from crossgraft.llava.lora import ADAPTER_CONFIG, is_lora_folder, write_checkpoint

EXPORT_TARGETS = ("llava-next",)
DTYPES = {"keep": None, **TORCH_DTYPES}
# Substrings LLaVA-NeXT's builder tests for before (or instead of) 'qwen', in its branch order.
OTHER_BRANCHES = (
    "lora",
    "mixtral",
    "mistral",
    "zephyr",
    "gemma",
    "llama",
    "yi",
    "nous-hermes",
    "v1.5",
    "mpt",
    "moe",
    "a14b",
)
# model_type → (the substring the fork's builder selects it by, its class there)
BUILDER_NAMES = {
    BASE_MODEL_TYPE: ("", "LlavaQwenForCausalLM"),
    ALTERNATING_MODEL_TYPE: ("with_alternating_attn", "LlavaQwenWithAlternatingAttnForCausalLM"),
    ALTERNATING_CROSS_MODEL_TYPE: ("with_alternating_cross_attn", "LlavaQwenWithAlternatingCrossAttnForCausalLM"),
}


@dataclass
class LlavaNextExport:
    folder: Path
    builder_class: str  # the class LLaVA-NeXT's (or the fork's) builder instantiates for this folder
    needs_fork: bool  # True for the alternating variants: upstream LLaVA-NeXT has no class for them


def builder_class_for(folder_name: str) -> str | None:
    """The LLaVA class the builders pick for a folder name (None: not a LLaVA-Qwen class)."""
    name = folder_name.lower()
    if "llava" not in name or "qwen" not in name or any(word in name for word in OTHER_BRANCHES):
        return None
    if "with_alternating_attn" in name:
        return BUILDER_NAMES[ALTERNATING_MODEL_TYPE][1]
    if "with_alternating_cross_attn" in name:
        return BUILDER_NAMES[ALTERNATING_CROSS_MODEL_TYPE][1]
    return BUILDER_NAMES[BASE_MODEL_TYPE][1]


def suggested_name(folder_name: str, model_type: str) -> str:
    stem = folder_name.lower()
    for word in (*OTHER_BRANCHES, "llava", "qwen", "with_alternating_attn", "with_alternating_cross_attn"):
        stem = stem.replace(word, "")
    stem = "-".join(part for part in stem.replace("_", "-").split("-") if part) or "export"
    marker = BUILDER_NAMES[model_type][0]
    return f"{stem}-llava-qwen" + (f"-{marker}" if marker else "")


def export_llava_next(run: str, out: Path, dtype: str = "keep") -> LlavaNextExport:
    """Write `run` (a crossgraft LLaVA checkpoint) to `out` for LLaVA-NeXT / the alternating fork."""
    raw = read_raw_config(run)
    kind = classify(raw, run)  # decided from config.json, before any weights are read
    if kind.variant is None:
        raise LlavaConfigError(f"{run} is a bare Qwen2 language model, not a LLaVA checkpoint")
    model_type = MODEL_TYPE_OF_VARIANT[kind.variant]
    if model_type == ALTERNATING_CROSS_MODEL_TYPE and raw.get("xattn_mode", "mask") == "gated":
        raise LlavaConfigError(
            f"{run} is alternating_cross with gated cross-attention blocks (model.xattn.*): neither LLaVA-NeXT nor "
            "the alternating fork has these blocks, so their loader would drop them and run a different model. "
            "Export a base, alternating or alternating_cross (mask) run, or evaluate this one with `crossgraft "
            "llava evaluate` or the lmms-eval adapter (crossgraft_llava)"
        )
    wanted = BUILDER_NAMES[model_type][1]
    picked = builder_class_for(out.name)
    if picked != wanted:
        better = out.with_name(suggested_name(out.name, model_type))
        what = f"the class {picked}" if picked else "no LLaVA-Qwen class"
        raise LlavaConfigError(
            f"LLaVA-NeXT's builder picks the class from the folder name, and {out.name!r} would give {what}; "
            f"this {model_type} model needs {wanted}. Export to a folder named like {better}"
        )
    with atomic_folder(out) as staging:  # a non-empty `out` is refused before the weights are read
        model = load_model(run, dtype=DTYPES[dtype])
        # LLaVA-NeXT's builder adds an <im_patch> token and resizes the embeddings unless told not to.
        model.config.mm_use_im_patch_token = False
        model.config.mm_use_im_start_end = False
        model.config.use_mm_proj = True
        model.save_pretrained(staging)
        AutoTokenizer.from_pretrained(run).save_pretrained(staging)
        tokenizer_for_older_loaders(staging)
        write_text_atomic(staging / "README.md", export_readme(out.name, model_type, wanted))
    return LlavaNextExport(out, wanted, model_type != BASE_MODEL_TYPE)


def tokenizer_for_older_loaders(folder: Path) -> None:
    """transformers 5 writes the special tokens as `extra_special_tokens`; transformers 4.40 (LLaVA-NeXT's pin)
    reads `additional_special_tokens` (tokenizer_config.json, special_tokens_map.json) and would lose them, and
    LLaVA-NeXT's preprocess_qwen needs them. Both spellings are written."""
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    extra = config.get("extra_special_tokens")
    tokens = list(extra) if isinstance(extra, list) else list(extra.values()) if isinstance(extra, dict) else []
    if not tokens:
        return
    config.setdefault("additional_special_tokens", tokens)
    write_text_atomic(config_path, json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    special = {key: config[key] for key in ("bos_token", "eos_token", "pad_token", "unk_token") if config.get(key)}
    special["additional_special_tokens"] = config["additional_special_tokens"]
    write_text_atomic(folder / "special_tokens_map.json", json.dumps(special, indent=2, ensure_ascii=False) + "\n")


def export_readme(name: str, model_type: str, class_name: str) -> str:
    where = (
        "LLaVA-NeXT (https://github.com/LLaVA-VL/LLaVA-NeXT) or the alternating fork"
        if model_type == BASE_MODEL_TYPE
        else "the alternating fork (https://github.com/mavleo96/LLaVA-Alternating-Attn); upstream LLaVA-NeXT has "
        "no class for this variant and would load it as the plain LlavaQwenForCausalLM"
    )
    return (
        f"# {name}\n\nExported by crossgraft (`crossgraft llava export --to llava-next`), "
        f"model_type `{model_type}`.\n\n"
        f"Load it with {where}:\n\n```python\nfrom llava.model.builder import load_pretrained_model\n"
        f'from llava.mm_utils import get_model_name_from_path\n\npath = "{name}"\n'
        "tokenizer, model, image_processor, context_len = load_pretrained_model(\n"
        '    path, None, get_model_name_from_path(path), attn_implementation="sdpa"\n)\n'
        f"# model is a {class_name}: the builder picks the class from the folder name; keep the name.\n```\n"
    )


def describe_export(export: LlavaNextExport) -> str:
    config = json.loads((export.folder / "config.json").read_text())
    lines = [
        f"wrote {export.folder}: LLaVA-NeXT's builder loads it as {export.builder_class} (chosen by the folder name)",
        f"config: model_type {config['model_type']}, rope_theta {config.get('rope_theta')}, "
        f"torch_dtype {config.get('torch_dtype')}",
    ]
    if export.needs_fork:
        lines.append("this variant needs the alternating fork (mavleo96/LLaVA-Alternating-Attn); upstream has no class")
    return "\n".join(lines)


def merge_lora(run: str | Path, out: str | Path) -> Path:
    """`crossgraft llava merge-lora`: the LoRA run folder `run` merged and written to `out` as an ordinary
    checkpoint."""
    if not is_lora_folder(run):
        raise CheckpointError(f"{run} is not a LoRA run folder (it has no {ADAPTER_CONFIG})")
    model = load_model(str(run))  # base + fully trained parameters + adapters, merged
    tokenizer = AutoTokenizer.from_pretrained(str(run))
    return write_checkpoint(model, tokenizer, Path(out))
