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

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save
from torch import nn

from crossgraft.files import atomic_folder, atomic_write, read_json_object
from crossgraft.graft import CheckpointError, file_problem
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
LLAVA_NEXT_MULTIMODAL = ("mm_projector", "vision_tower", "vision_resampler", "xattn")  # where suffixes are not read
LLAVA_NEXT_MULTIMODAL_TRAINED = ("mm_projector", "vision_resampler", "xattn")  # trained in full: never adapted
ADAPTER_KEY = re.compile(r"^(?:base_model\.model\.)?(.+)\.(lora_A|lora_B)(?:\.[^.]+)?\.weight$")  # peft's names
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


def llava_next_target_pattern(model: nn.Module) -> str:
    """LLaVA-NeXT's targets (its find_all_linear_names): the last name part of every linear layer outside the
    multimodal parts (lm_head excepted), matched as a suffix anywhere, so the vision tower's q_proj / k_proj / v_proj
    are adapted too. Gated blocks and the projector train in full, so they are left out."""
    lora_target_pattern(model)  # the same refusal when the language model has no linear layer
    suffixes = sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in model.named_modules()
            if type(module) is nn.Linear
            and not any(part in name for part in LLAVA_NEXT_MULTIMODAL)
            and name != "lm_head"
        }
    )
    excluded = "|".join(re.escape(part) for part in (*LLAVA_NEXT_MULTIMODAL_TRAINED, "lm_head"))
    return rf"(?!.*(?:{excluded})).*\.(?:" + "|".join(re.escape(s) for s in suffixes) + ")"


def add_lora(
    model: LlavaQwenForCausalLM, r: int, alpha: int, dropout: float, base: str, targets: str = "language_model"
) -> Any:
    """Wrap `model` in a peft LoRA model. What trained before (the parts of --mm_tunable_parts outside the
    language model, the gated blocks) still trains in full; the language model trains through its adapters.
    `targets`: language_model (the decoder's linear layers) or llava_next (LLaVA-NeXT's suffix rule)."""
    peft = import_peft()
    pattern = llava_next_target_pattern(model) if targets == "llava_next" else lora_target_pattern(model)
    full = {name for name, p in model.named_parameters() if p.requires_grad and not name.startswith(LANGUAGE_LAYERS)}
    # the language model's own, image_newline included (LLaVA-NeXT counts it with the language model: under LoRA
    # only the adapters of that part train)
    full -= {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight", "model.image_newline"}
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


def read_adapter_config(folder: str | Path) -> dict[str, Any]:
    """A LoRA run folder's adapter_config.json, checked, after every file the folder must hold is checked too: each
    problem is one CheckpointError naming the file, before anything is loaded."""
    folder = Path(folder)
    path = folder / ADAPTER_CONFIG
    config = read_json_object(path, ADAPTER_CONFIG, CheckpointError)
    if config.get("peft_type", "LORA") != "LORA":
        raise CheckpointError(f"{path}: a {str(config.get('peft_type'))[:40]} adapter; crossgraft loads LoRA adapters")
    rank = config.get("r")
    if not (isinstance(rank, int) and not isinstance(rank, bool) and rank > 0):
        raise CheckpointError(f"{path}: 'r' (the LoRA rank) must be a whole number > 0, not {repr(rank)[:40]}")
    base = config.get("base_model_name_or_path")
    if not (isinstance(base, str) and base):
        raise CheckpointError(f"{path} does not name its base model (base_model_name_or_path)")
    weights = folder / ADAPTER_WEIGHTS
    if not weights.is_file() and (folder / "adapter_model.bin").is_file():
        raise CheckpointError(
            f"{folder} holds its adapter as adapter_model.bin, a pickle, which crossgraft does not load (unpickling "
            'can run code from the file). Convert it once, if you trust it: python -c "import torch; from '
            "safetensors.torch import save_file; save_file(torch.load('adapter_model.bin', weights_only=True), "
            "'adapter_model.safetensors')\" in that folder"
        )
    for file in (weights, folder / NON_LORA_FILE):
        problem = file_problem(file)
        if problem:
            raise CheckpointError(f"{file} is {problem}: this LoRA run folder is incomplete or damaged")
    return config


def lora_base(folder: str | Path) -> str:
    """The base checkpoint a LoRA run folder adapts: adapter_config.json's base_model_name_or_path, or, when that
    folder is gone (the run was moved), the `base` folder the run wrote beside its checkpoints. A base that is itself
    a LoRA run folder (the run's own folder, say) is refused: the base must be a full checkpoint."""
    folder = Path(folder)
    base = read_adapter_config(folder)["base_model_name_or_path"]
    if Path(base).name == BASE_FOLDER and not Path(base).is_dir():
        for moved in (folder / BASE_FOLDER, folder.parent / BASE_FOLDER):
            if moved.is_dir():
                return str(moved)
    if is_lora_folder(base):
        itself = " (this folder itself)" if Path(base).resolve() == folder.resolve() else ""
        raise CheckpointError(
            f"{folder / ADAPTER_CONFIG} names {base}{itself} as its base model, which is a LoRA run folder: "
            "base_model_name_or_path must name the full checkpoint the run started from"
        )
    return base


def check_adapter_shapes(base_model: nn.Module, folder: Path, config: dict[str, Any]) -> None:
    """Every lora_A / lora_B of the adapter fits the base model's linear layer it adapts: A (r, in), B (out, r)."""
    path = folder / ADAPTER_WEIGHTS
    fixed_rank = not config.get("rank_pattern")  # a rank pattern sets ranks per module
    with safe_open(str(path), "pt") as handle:
        shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    for key, shape in shapes.items():
        match = ADAPTER_KEY.match(key)
        if match is None:
            continue
        module_name, part = match.groups()
        try:
            module = base_model.get_submodule(module_name)
        except AttributeError:
            raise CheckpointError(f"{path}: {key} adapts {module_name}, which the base model does not have") from None
        if not isinstance(module, nn.Linear) or len(shape) != 2:
            continue
        rank = config["r"] if fixed_rank else (shape[0] if part == "lora_A" else shape[1])
        expected = (rank, module.in_features) if part == "lora_A" else (module.out_features, rank)
        if shape != expected:
            raise CheckpointError(
                f"{path}: {key} has shape {shape} but {module_name} (a {module.in_features} -> {module.out_features} "
                f"linear layer) needs {expected}: the adapter was trained on another base model "
                "or another --lora_r"
            )


def apply_lora_folder(base_model: LlavaQwenForCausalLM, folder: str | Path, run_config: dict[str, Any]) -> Any:
    """`base_model` with the run's settings, its fully trained parameters and its adapters (a peft model)."""
    peft = import_peft()
    folder = Path(folder)
    adapter_config = read_adapter_config(folder)
    if run_config.get("model_type") != base_model.config.model_type:
        raise CheckpointError(
            f"{folder} is a {run_config.get('model_type')} run but its base {lora_base(folder)} loads as "
            f"{base_model.config.model_type}"
        )
    for name in RUN_SETTINGS:
        if name in run_config:
            setattr(base_model.config, name, run_config[name])
    load_non_lora_trainables(base_model, folder)
    check_adapter_shapes(base_model, folder, adapter_config)
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
