"""Which variant a checkpoint is, loading it, and building a variant from a backbone by selective copy.

The variant is read from the raw config.json: lmms-lab's `llava-onevision-qwen2-*-ov` checkpoints say
`"model_type": "llava"` with `LlavaQwenForCausalLM`, which `AutoConfig` would read as transformers' own
(different) LLaVA.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from safetensors.torch import load_file
from transformers import SiglipConfig, SiglipVisionConfig
from transformers.utils import cached_file
from transformers.utils import logging as hf_logging

from crossgraft.files import read_json_object
from crossgraft.graft import CheckpointError, CopyReport, file_problem, selective_copy
from crossgraft.llava.configuration import (
    ALTERNATING_CROSS_MODEL_TYPE,
    ALTERNATING_MODEL_TYPE,
    BASE_MODEL_TYPE,
    CONFIG_CLASSES,
    DEFAULT_SKIP_PREFIXES,
    DTYPE_NAMES,
    KNOWN_VISION_TOWERS,
    LlavaConfigError,
    LlavaQwenConfig,
)
from crossgraft.llava.lora import apply_lora_folder, is_lora_folder, lora_base
from crossgraft.llava.modeling import MODEL_CLASSES, LlavaQwenForCausalLM, check_attention_implementation

VARIANTS = ("base", "alternating", "alternating_cross")
TORCH_DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}
MODEL_TYPE_OF_VARIANT = {
    "base": BASE_MODEL_TYPE,
    "alternating": ALTERNATING_MODEL_TYPE,
    "alternating_cross": ALTERNATING_CROSS_MODEL_TYPE,
}
VARIANT_OF_MODEL_TYPE = {model_type: variant for variant, model_type in MODEL_TYPE_OF_VARIANT.items()}
_NOT_CONFIG_FIELDS = ("model_type", "architectures", "transformers_version", "auto_map", "_name_or_path")


@dataclass
class CheckpointKind:
    """What a config.json says a checkpoint is."""

    source: str
    raw_model_type: str
    architectures: list[str]
    variant: str | None  # None: a bare Qwen2 language model (usable only as a backbone)

    def describe(self) -> str:
        arch = ", ".join(self.architectures) or "none listed"
        if self.variant is None:
            meaning = "a bare Qwen2 language model: usable as --backbone_model with --init_from_backbone"
        else:
            meaning = (
                f"{self.variant} (class {MODEL_CLASSES[MODEL_TYPE_OF_VARIANT[self.variant]].__name__}, "
                f"model_type {MODEL_TYPE_OF_VARIANT[self.variant]})"
            )
        return f"config.json model_type: {self.raw_model_type} (architectures: {arch})\nvariant: {meaning}"


def read_raw_config(name_or_path: str) -> dict[str, Any]:
    """config.json as written, from a local folder or a Hugging Face Hub id."""
    path = Path(name_or_path)
    if path.is_dir():
        path = path / "config.json"
        if not path.is_file():
            raise CheckpointError(f"{name_or_path}: no config.json in this folder")
    elif not path.is_file():
        try:
            cached = cached_file(name_or_path, "config.json")
            if cached is None:
                raise OSError("no config.json there")
            path = Path(cached)
        except Exception as error:  # OSError, network and repo errors all mean "cannot get it"
            raise CheckpointError(
                f"{name_or_path}: not a local folder, and its config.json could not be fetched "
                f"from the Hugging Face Hub ({error})"
            ) from error
    return read_json_object(path, "config.json", CheckpointError)


def classify(raw: dict[str, Any], source: str) -> CheckpointKind:
    model_type = raw.get("model_type")
    architectures = list(raw.get("architectures") or [])
    if model_type in VARIANT_OF_MODEL_TYPE:
        variant = VARIANT_OF_MODEL_TYPE[model_type]
    elif model_type == "llava" and any(name.startswith("LlavaQwen") for name in architectures):
        variant = "base"  # LLaVA-NeXT's own naming (lmms-lab llava-onevision-qwen2-*)
    elif model_type == "llava":
        raise CheckpointError(
            f"{source}: model_type 'llava' with architectures {architectures or 'unset'} is not a LLaVA-NeXT "
            "Qwen checkpoint (LlavaQwenForCausalLM); transformers-format LLaVA checkpoints (llava-hf/…) use other "
            "parameter names. Use the lmms-lab original."
        )
    elif model_type == "qwen2":
        variant = None
    else:
        known = ", ".join([*VARIANT_OF_MODEL_TYPE, "llava (LlavaQwenForCausalLM)", "qwen2"])
        raise CheckpointError(f"{source}: unknown model_type {model_type!r}; this package reads {known}")
    return CheckpointKind(source, str(model_type), architectures, variant)


def inspect_checkpoint(name_or_path: str) -> CheckpointKind:
    return classify(read_raw_config(name_or_path), name_or_path)


def variant_mismatch(kind: CheckpointKind, requested: str) -> str | None:
    """A message when `requested` (not 'auto') differs from what the checkpoint is, else None."""
    if requested == "auto" or kind.variant == requested:
        return None
    actual = "a bare Qwen2 language model" if kind.variant is None else f"a {kind.variant} checkpoint"
    return (
        f"--variant {requested} was asked for, but {kind.source} is {actual} (model_type {kind.raw_model_type}). "
        f"Use a checkpoint whose model_type is {MODEL_TYPE_OF_VARIANT.get(requested, requested)}, build one from this "
        "checkpoint with --init_from_backbone, or pass --force to load its weights into the requested class."
    )


def vision_tower_fields(vision_tower: str) -> dict[str, Any]:
    """mm_vision_tower and vision_config for a tower named by a known id, a local folder or a Hub id."""
    if vision_tower in KNOWN_VISION_TOWERS:
        return {"mm_vision_tower": vision_tower, "vision_config": dict(KNOWN_VISION_TOWERS[vision_tower])}
    try:
        raw = read_raw_config(vision_tower)
    except CheckpointError as error:
        raise LlavaConfigError(f"--vision_tower: {error}") from error
    config: SiglipVisionConfig
    if raw.get("model_type") == "siglip":
        config = cast(SiglipVisionConfig, SiglipConfig.from_dict(raw).vision_config)
    elif raw.get("model_type") == "siglip_vision_model":
        config = SiglipVisionConfig.from_dict(raw)
    else:
        raise LlavaConfigError(
            f"--vision_tower {vision_tower}: expected a SigLIP config, found {raw.get('model_type')!r}"
        )
    fields = {k: v for k, v in config.to_dict().items() if k not in _NOT_CONFIG_FIELDS}
    return {"mm_vision_tower": vision_tower, "vision_config": fields}


def build_config(raw: dict[str, Any], model_type: str, **overrides: Any) -> LlavaQwenConfig:
    """The config of `model_type` from a raw config.json (any supported type) plus overrides. Built as another
    variant than it was saved as, it takes that variant's attention rules, not the saved ones."""
    fields = {k: v for k, v in raw.items() if k not in _NOT_CONFIG_FIELDS}
    if raw.get("model_type") != model_type:
        fields.pop("layer_attention_rules", None)
    fields.update(overrides)
    return CONFIG_CLASSES[model_type].from_dict(fields)


def target_model_type(kind: CheckpointKind, variant: str) -> str:
    if variant == "auto":
        if kind.variant is None:
            raise LlavaConfigError(
                f"{kind.source} is a bare Qwen2 language model; say which model to build from it with "
                "--variant base|alternating|alternating_cross"
            )
        variant = kind.variant
    if variant not in MODEL_TYPE_OF_VARIANT:
        raise LlavaConfigError(f"unknown variant {variant!r}; choose auto, {', '.join(VARIANTS)}")
    return MODEL_TYPE_OF_VARIANT[variant]


def load_model(
    name_or_path: str,
    variant: str = "auto",
    force: bool = False,
    attn_implementation: str = "sdpa",
    dtype: torch.dtype | None = None,
) -> LlavaQwenForCausalLM:
    """Load a LLaVA checkpoint as its own variant; with `force`, into the class of `variant` instead (new
    weights of that class, e.g. gated blocks, are created from config). A LoRA run folder loads as its base with
    the run's adapters merged in (crossgraft.llava.lora)."""
    check_attention_implementation(attn_implementation)
    raw = read_raw_config(name_or_path)
    if is_lora_folder(name_or_path):  # a LoRA run: its base, its fully trained parameters, its adapters merged
        base = load_model(lora_base(name_or_path), variant, force, attn_implementation, dtype)
        return apply_lora_folder(base, name_or_path, raw).merge_and_unload()
    kind = classify(raw, name_or_path)
    problem = variant_mismatch(kind, variant)
    if problem and not force:
        raise LlavaConfigError(problem)
    if kind.variant is None:
        raise LlavaConfigError(
            f"{name_or_path} is a bare Qwen2 language model; start from it with "
            "--init_from_backbone --backbone_model " + name_or_path
        )
    model_type = target_model_type(kind, variant)
    config = build_config(raw, model_type)
    model_class = MODEL_CLASSES[model_type]
    check_weight_files(name_or_path)
    model = model_class.from_pretrained(
        name_or_path, config=config, attn_implementation=attn_implementation, dtype=dtype
    )
    return keep_used_conversions(model)


def keep_used_conversions(model: LlavaQwenForCausalLM) -> LlavaQwenForCausalLM:
    """Under DeepSpeed ZeRO-3 transformers keeps every key conversion it tried, used or not, and reverses them all
    on save: the SigLIP tower's unused prefix change would save its weights as `vision_model.vision_model.…`. Keep
    only the used ones, as transformers' ordinary loading path does."""
    conversions = getattr(model, "_weight_conversions", None)
    if conversions:
        used = [conversion for conversion in conversions if conversion.was_used()]
        setattr(model, "_weight_conversions", used)  # noqa: B010 (a transformers attribute nn.Module's typing lacks)
    return model


def check_weight_files(name_or_path: str) -> None:
    """In a local checkpoint folder every weight file must read as complete (a copy or save cut short names
    itself here, not deep inside the loader)."""
    folder = Path(name_or_path)
    if not folder.is_dir():
        return
    for path in sorted([*folder.glob("*.safetensors"), *folder.glob("*.bin"), *folder.glob("*.index.json")]):
        problem = file_problem(path)
        if problem:
            raise CheckpointError(f"{path} is {problem}: the checkpoint cannot be loaded")


def read_state_dict(name_or_path: str) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint (safetensors or .bin, single or sharded; local or Hub) on the CPU."""
    folder = Path(name_or_path)
    check_weight_files(name_or_path)

    def resolve(filename: str) -> Path | None:
        if folder.is_dir():
            return folder / filename if (folder / filename).is_file() else None
        found = cached_file(name_or_path, filename, _raise_exceptions_for_missing_entries=False)
        return Path(found) if found else None

    for index_name, single_name in (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        index = resolve(index_name)
        if index is not None:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            files = [resolve(shard) for shard in shards]
        elif (single := resolve(single_name)) is not None:
            files = [single]
        else:
            continue
        state: dict[str, torch.Tensor] = {}
        for file in files:
            if file is None:
                raise CheckpointError(f"{name_or_path}: a shard listed in {index_name} is missing")
            if file.suffix == ".safetensors":
                state.update(load_file(str(file)))
            else:
                state.update(torch.load(file, map_location="cpu", weights_only=True))
        return state
    raise CheckpointError(f"{name_or_path}: no model.safetensors or pytorch_model.bin (single or sharded) found")


@dataclass
class BackboneInit:
    """The result of planning an initialisation from a backbone: the target config, what to copy, the report."""

    config: LlavaQwenConfig
    state_dict: dict[str, torch.Tensor]
    report: CopyReport
    source: CheckpointKind
    tower: str = ""  # where the vision tower's weights come from, in words ("RANDOM …" when they stay random)


TOWER_PREFIX = "model.vision_tower.vision_tower."


def tower_state_dict(vision_tower: str, target_shapes: dict[str, tuple]) -> tuple[dict[str, torch.Tensor], int]:
    """A SigLIP checkpoint's vision weights under the LLaVA tower's names, without the layers LLaVA-NeXT drops
    (past mm_vision_select_layer) and the head; returns them and how many layers were dropped. A tensor whose
    shape does not fit the tower the config describes is an error naming the key and both shapes."""
    try:
        source = read_state_dict(vision_tower)
    except CheckpointError as error:
        raise LlavaConfigError(f"--vision_tower {vision_tower}: {error}") from error
    kept_layers = {key.split("encoder.layers.")[1].split(".")[0] for key in target_shapes if ".encoder.layers." in key}
    mapped, dropped = {}, set()
    for stored, value in source.items():
        # SiglipVisionModel files name the tensors "vision_model.…" or, as saved by transformers 5, without it; a
        # full SiglipModel also holds its text tower and scalars, which the tower does not use
        key = stored.removeprefix("vision_model.")
        if not key.startswith(("embeddings.", "encoder.", "post_layernorm.", "head.")):
            continue
        if key.startswith("encoder.layers.") and key.split(".")[2] not in kept_layers:
            dropped.add(key.split(".")[2])
            continue
        if key.startswith("head."):
            continue  # LLaVA-NeXT replaces the pooling head with an identity
        target_key = TOWER_PREFIX + "vision_model." + key
        if target_key in target_shapes and tuple(value.shape) != target_shapes[target_key]:
            raise LlavaConfigError(
                f"--vision_tower {vision_tower}: {stored} is {tuple(value.shape)} but the tower its config describes "
                f"needs {target_shapes[target_key]} (weights from another SigLIP size than its config.json?)"
            )
        mapped[target_key] = value
    if not mapped:
        raise LlavaConfigError(f"--vision_tower {vision_tower}: no SigLIP vision weights found")
    return mapped, len(dropped)


def plan_init_from_backbone(
    backbone: str,
    variant: str = "auto",
    skip_prefixes: tuple[str, ...] = DEFAULT_SKIP_PREFIXES,
    vision_tower: str | None = None,
    xattn_mode: str = "gated",
    xattn_every_n_layers: int = 4,
) -> BackboneInit:
    """Copy every backbone tensor whose key exists in the target with the same shape (skip prefixes aside).

    From a bare Qwen2 LM the projector and image_newline are created from config and reported missing; the vision
    tower's weights come from `vision_tower` (a SigLIP folder or Hub id, its layers past mm_vision_select_layer
    dropped as LLaVA-NeXT does), or it stays random, which the plan's `tower` line says in capitals. An
    alternating_cross model built from another type is new: it gets `xattn_mode` (gated by default) and
    `xattn_every_n_layers`; an alternating_cross backbone keeps its own.
    """
    raw = read_raw_config(backbone)
    kind = classify(raw, backbone)
    model_type = target_model_type(kind, variant)
    overrides: dict[str, Any] = {}
    if kind.variant is None or vision_tower:
        overrides.update(vision_tower_fields(vision_tower or "google/siglip-so400m-patch14-384"))
    if model_type == ALTERNATING_CROSS_MODEL_TYPE and kind.variant != "alternating_cross":
        overrides.update(xattn_mode=xattn_mode, xattn_every_n_layers=xattn_every_n_layers)
    config = build_config(raw, model_type, **overrides)

    with torch.device("meta"):
        target = MODEL_CLASSES[model_type](config)
    target_shapes = {key: tuple(value.shape) for key, value in target.state_dict().items()}
    tied = dict(target.all_tied_weights_keys) if config.tie_word_embeddings else {}
    source = read_state_dict(backbone)
    tower = ""
    if vision_tower:
        tower_weights, dropped = tower_state_dict(vision_tower, target_shapes)
        source = {k: v for k, v in source.items() if not k.startswith(TOWER_PREFIX)} | tower_weights
        tower = f"vision tower: {len(tower_weights)} tensors from {vision_tower} ({dropped} layer(s) past "
        tower += "mm_vision_select_layer dropped, as LLaVA-NeXT does)"
    matched, report = selective_copy(source, target_shapes, skip_prefixes, tied)
    tower_keys = [key for key in target_shapes if key.startswith(TOWER_PREFIX)]
    if not any(key in matched for key in tower_keys):
        tower = (
            f"vision tower: RANDOM ({len(tower_keys)} tensors created from config): nothing filled it. Pass "
            "--vision_tower with a SigLIP folder or Hub id that holds weights (google/siglip-so400m-patch14-384 "
            "for OneVision) before training on images"
        )
    elif not tower:
        tower = f"vision tower: from the backbone {backbone}"
    return BackboneInit(config, matched, report, kind, tower)


def build_from_plan(
    plan: BackboneInit, attn_implementation: str = "sdpa", dtype: torch.dtype | None = None
) -> LlavaQwenForCausalLM:
    """Create the model through `from_pretrained(None, config=…, state_dict=…)`: the copied tensors are loaded,
    everything else is initialised by transformers (gates at 0), and DeepSpeed ZeRO-3 partitions as usual."""
    check_attention_implementation(attn_implementation)
    model_class = MODEL_CLASSES[plan.config.model_type]
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # plan.report already lists every key; transformers' table would repeat it
    try:
        model = model_class.from_pretrained(
            None, config=plan.config, state_dict=plan.state_dict, attn_implementation=attn_implementation, dtype=dtype
        )
        return keep_used_conversions(model)
    finally:
        hf_logging.set_verbosity(verbosity)
