"""LoRA on the language model, as LLaVA-NeXT's `--lora_enable` trains it (through peft, `pip install crossgraft[lora]`).

Adapters go on every linear layer of the decoder (`model.layers.*`: attention and MLP projections). The vision
tower, projector and gated cross-attention blocks get none: the parts of `--mm_tunable_parts` among them train
in full, as do the gated blocks always; the language model's own weights stay frozen.

A LoRA run folder (the output and every `checkpoint-N`) holds:

    adapter_config.json, adapter_model.safetensors   peft's adapter; base_model_name_or_path says the base
    non_lora_trainables.safetensors                  every parameter trained in full (LLaVA-NeXT's name, as .bin)
    config.json                                      the run's model config (image path, lengths, …)

The base is the checkpoint the run started from, or, when the run built its model (from a backbone, or loaded
another variant with --force), the frozen start written once to `OUTPUT_DIR/base`. `load_model` reads such a
folder as the merged model; `merge_lora` (and `--merge_lora`, into `OUTPUT_DIR/merged`) writes it as an ordinary
checkpoint. The merged weights never go beside the adapter: transformers would apply an adapter it finds next to
a checkpoint's weights a second time.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save
from torch import nn

from crossgraft.files import atomic_folder, atomic_write
from crossgraft.graft import CheckpointError
from crossgraft.llava.configuration import LlavaConfigError

if TYPE_CHECKING:
    from crossgraft.llava.modeling import LlavaQwenForCausalLM

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
NON_LORA_FILE = "non_lora_trainables.safetensors"
BASE_FOLDER = "base"
MERGED_FOLDER = "merged"
LANGUAGE_LAYERS = "model.layers."
# Settings a run may change without changing the weights; a LoRA run's config.json carries them for its base.
RUN_SETTINGS = ("image_aspect_ratio", "image_grid_pinpoints", "tokenizer_model_max_length", "tokenizer_padding_side")


def import_peft() -> Any:
    try:
        import peft
    except ImportError as error:
        raise LlavaConfigError(
            "--lora_enable and LoRA run folders need peft: pip install 'crossgraft[lora]'"
        ) from error
    return peft


def lora_target_pattern(model: nn.Module) -> str:
    """A regular expression (peft matches it against whole module names) for the decoder's linear layers."""
    suffixes = sorted(
        {
            re.sub(r"^\d+\.", "", name.removeprefix(LANGUAGE_LAYERS))
            for name, module in model.named_modules()
            if name.startswith(LANGUAGE_LAYERS) and type(module) is nn.Linear
        }
    )
    if not suffixes:
        model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise LlavaConfigError(
            f"--lora_enable: the {model_type} model has no torch.nn.Linear layer under {LANGUAGE_LAYERS}* for LoRA "
            "to adapt (a quantised or converted language model?); train without --lora_enable or start from an "
            "unquantised LLaVA-Qwen checkpoint"
        )
    return re.escape(LANGUAGE_LAYERS) + r"\d+\.(?:" + "|".join(re.escape(s) for s in suffixes) + ")"


def add_lora(model: LlavaQwenForCausalLM, r: int, alpha: int, dropout: float, base: str) -> Any:
    """Wrap `model` in a peft LoRA model. What trained before (the parts of --mm_tunable_parts outside the
    language model, the gated blocks) still trains in full; the language model trains through its adapters."""
    peft = import_peft()
    pattern = lora_target_pattern(model)
    full = {name for name, p in model.named_parameters() if p.requires_grad and not name.startswith(LANGUAGE_LAYERS)}
    full -= {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}  # the language model's own
    config = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=pattern, bias="none")
    wrapped = peft.get_peft_model(model, config)
    wrapped.peft_config["default"].base_model_name_or_path = base  # peft would take the folder's name as given
    for name, parameter in wrapped.get_base_model().named_parameters():
        if name in full:
            parameter.requires_grad_(True)
    return wrapped


def is_lora_model(model: nn.Module) -> bool:
    try:
        import peft
    except ImportError:
        return False
    return isinstance(model, peft.PeftModel)


def non_lora_trainables(model: Any) -> dict[str, torch.Tensor]:
    """The fully trained parameters of a LoRA model, named as in the model without adapters."""
    return {
        name: parameter.detach().cpu().contiguous()
        for name, parameter in model.get_base_model().named_parameters()
        if parameter.requires_grad and "lora_" not in name
    }


def save_lora_extras(model: Any, folder: Path) -> None:
    """Beside peft's adapter files: the fully trained parameters and the run's model config."""
    with atomic_write(folder / NON_LORA_FILE, binary=True) as handle:
        handle.write(save(non_lora_trainables(model), metadata={"format": "pt"}))
    model.get_base_model().config.save_pretrained(folder)


def load_non_lora_trainables(model: Any, folder: Path) -> None:
    """Put a run's fully trained parameters into `model` (plain, or its peft wrapper's base), checking each."""
    path = folder / NON_LORA_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder}: no {NON_LORA_FILE}; this LoRA run folder is incomplete")
    tensors = load_file(str(path))
    target: nn.Module = model.get_base_model() if is_lora_model(model) else model
    parameters = dict(target.named_parameters())
    for name, tensor in tensors.items():
        if name not in parameters:
            raise CheckpointError(f"{path}: {name} is not a parameter of the {type(target).__name__} model")
        if parameters[name].shape != tensor.shape:
            raise CheckpointError(
                f"{path}: {name} has shape {tuple(tensor.shape)} but the model's is {tuple(parameters[name].shape)} "
                "(was the base model changed since the run?)"
            )
        with torch.no_grad():
            parameters[name].copy_(tensor)


def is_lora_folder(path: str | Path) -> bool:
    """A LoRA run folder (or one of its checkpoints)."""
    return Path(path).is_dir() and (Path(path) / ADAPTER_CONFIG).is_file()


def lora_base(folder: str | Path) -> str:
    """The base checkpoint a LoRA run folder adapts: adapter_config.json's base_model_name_or_path, or, when that
    folder is gone (the run was moved), the `base` folder the run wrote beside its checkpoints."""
    folder = Path(folder)
    config = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    base = config.get("base_model_name_or_path")
    if not base:
        raise CheckpointError(f"{folder}/{ADAPTER_CONFIG} does not name its base model (base_model_name_or_path)")
    if Path(base).name == BASE_FOLDER and not Path(base).is_dir():
        for moved in (folder / BASE_FOLDER, folder.parent / BASE_FOLDER):
            if moved.is_dir():
                return str(moved)
    return str(base)


def apply_lora_folder(base_model: LlavaQwenForCausalLM, folder: str | Path, run_config: dict[str, Any]) -> Any:
    """`base_model` with the run's settings, its fully trained parameters and its adapters (a peft model)."""
    peft = import_peft()
    folder = Path(folder)
    if run_config.get("model_type") != base_model.config.model_type:
        raise CheckpointError(
            f"{folder} is a {run_config.get('model_type')} run but its base {lora_base(folder)} loads as "
            f"{base_model.config.model_type}"
        )
    for name in RUN_SETTINGS:
        if name in run_config:
            setattr(base_model.config, name, run_config[name])
    load_non_lora_trainables(base_model, folder)
    return peft.PeftModel.from_pretrained(base_model, str(folder))


def write_checkpoint(model: Any, tokenizer: Any, out: Path) -> Path:
    """Write `model` as an ordinary checkpoint (config.json, model.safetensors, tokenizer) into the new folder `out`,
    all or nothing; a LoRA model's adapters are merged into its weights first."""
    merged = model.merge_and_unload() if is_lora_model(model) else model
    with atomic_folder(out) as staging:
        merged.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
    return out
