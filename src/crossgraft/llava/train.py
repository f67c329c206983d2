"""LLaVA training (seed 004's `train_alternating`) on the Hugging Face Trainer: `train(model_args, data_args,
training_args)` loads the model (or builds it from a backbone), makes the data module and runs the Trainer; an
output folder with checkpoints resumes from its last complete one. The inspections the command line offers
before training are here too: `dry_run` (what a checkpoint is), `inspect_data` (the records, validated),
`backbone_plan` (what a selective copy from a backbone would fill).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from PIL import Image
from transformers import (
    AutoTokenizer,
    PreTrainedModel,
    ProgressCallback,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
    set_seed,
)
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from crossgraft.errors import TrainingError
from crossgraft.files import with_umask_modes, write_text_atomic
from crossgraft.graft import CheckpointError, file_problem
from crossgraft.llava.config import DataArguments, ModelArguments
from crossgraft.llava.configuration import LlavaConfigError
from crossgraft.llava.data import (
    LazySupervisedDataset,
    LengthLimit,
    LlavaDataError,
    ModalityGroupedSampler,
    Record,
    make_supervised_data_module,
    modality_lengths,
    read_records,
    validate_record,
)
from crossgraft.llava.loading import (
    BackboneInit,
    CheckpointKind,
    build_config,
    build_from_plan,
    inspect_checkpoint,
    load_model,
    plan_init_from_backbone,
    read_raw_config,
    target_model_type,
    variant_mismatch,
)
from crossgraft.llava.lora import (
    BASE_FOLDER,
    MERGED_FOLDER,
    add_lora,
    import_peft,
    is_lora_model,
    load_non_lora_trainables,
    lora_target_pattern,
    save_lora_extras,
    write_checkpoint,
)
from crossgraft.llava.modeling import LlavaQwenForCausalLM
from crossgraft.llava.processing import ImageProcessor
from crossgraft.llava.training_args import AlternatingTrainingArguments
from crossgraft.lock import RunLock
from crossgraft.runlog import console_logging, setup_run_logging

LOG_FILE = "train_alternating.log"
LOGGER_NAME = "crossgraft.llava"
GATE_SUFFIXES = ("attn_gate", "ff_gate")


class ThroughputCallback(TrainerCallback):
    """Every `every` optimizer steps: samples/s, seconds per step and (on CUDA) peak memory since the last
    report, merged into the log record that carries the loss at that step."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.pending: dict[str, float] | None = None
        self._window_start = time.perf_counter()
        self._window_steps = 0

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._window_start, self._window_steps = time.perf_counter(), 0
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self._window_steps += 1
        if state.global_step % self.every:
            return
        elapsed = time.perf_counter() - self._window_start
        samples = (
            self._window_steps * args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
        )
        self.pending = {
            "samples_per_second": round(samples / elapsed, 3),
            "step_time_s": round(elapsed / self._window_steps, 4),
        }
        if torch.cuda.is_available():
            self.pending["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
            torch.cuda.reset_peak_memory_stats()
        control.should_log = True  # the loss is logged at this step too, so both land in one record
        self._window_start, self._window_steps = time.perf_counter(), 0

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if self.pending is None or logs is None or "loss" not in logs:
            return
        logs.update(self.pending)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(self.pending)
        self.pending = None


class RunLogCallback(TrainerCallback):
    """Every log record (loss, learning rate, throughput) as one line of the run's log file."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if logs and state.is_world_process_zero:
            self.logger.info("step %d: %s", state.global_step, json.dumps(logs, sort_keys=True))

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        optimizer = kwargs.get("optimizer")
        if optimizer is not None:
            stepping = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper around the one that steps
            self.logger.info("%s", describe_optimizer_groups(optimizer_groups(stepping), type(stepping).__name__))


@dataclass
class OptimizerGroup:
    """One parameter group as the optimizer that steps holds it."""

    part: str  # mm_language_model, mm_mlp_adapter, mm_vision_tower, xattn or gates
    learning_rate: float
    weight_decay: float
    parameters: int  # elements of the model parameters in the group (whole tensors, not one process's shard)


def optimizer_groups(stepping: Any) -> list[OptimizerGroup]:
    """The groups of the optimizer that steps (inside accelerate's wrapper). Under DeepSpeed ZeRO that is the
    engine's optimizer, whose groups hold flat shards: the model parameters of group i are its fp16_groups[i]
    (ZeRO-3) or bit16_groups[i] (ZeRO-1/2). The learning rate is the group's own, before a schedule scales it."""
    members = getattr(stepping, "fp16_groups", None) or getattr(stepping, "bit16_groups", None)
    return [
        OptimizerGroup(
            part=group.get("part", "?"),
            learning_rate=group.get("initial_lr", group["lr"]),
            weight_decay=group["weight_decay"],
            parameters=sum(full_numel(p) for p in (members[index] if members is not None else group["params"])),
        )
        for index, group in enumerate(stepping.param_groups)
    ]


def describe_optimizer_groups(groups: list[OptimizerGroup], optimizer_name: str) -> str:
    lines = [f"optimizer groups, as the {optimizer_name} that steps holds them:"]
    for group in groups:
        lines.append(
            f"  {group.part:<18} lr {group.learning_rate:<8g} weight decay {group.weight_decay:<6g} "
            f"{group.parameters:>14,} parameters"
        )
    return "\n".join(lines)


class QuietProgressCallback(ProgressCallback):
    """The Trainer's progress bar without its own copy of every log record (the run log prints it once)."""

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        return None


class ModalityGroupingTrainer(Trainer):
    """--group_by_modality_length: the training order comes from ModalityGroupedSampler."""

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if getattr(self.args, "group_by_modality_length", False) and isinstance(dataset, LazySupervisedDataset):
            args = self.args
            world = args.world_size * args.gradient_accumulation_steps  # as LLaVA-NeXT counts a megabatch
            return ModalityGroupedSampler(modality_lengths(dataset.records), args.train_batch_size, world, args.seed)
        return super()._get_train_sampler(train_dataset)


class AlternatingTrainer(ModalityGroupingTrainer):
    """The Trainer with one more optimizer group (the tanh gates, at --xattn_gate_lr, without weight decay), and a
    guard: a non-finite loss stops training before its backward pass, a non-finite gradient before the optimizer
    step that would apply it (under DeepSpeed the engine steps inside the backward pass and holds the gradients
    itself: there only the loss is checked, and fp16 loss scaling skips overflowing steps as DeepSpeed does)."""

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> Any:
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss = result[0] if isinstance(result, tuple) else result
        if model.training and not torch.isfinite(loss).all():
            raise TrainingError(
                f"the training loss became {loss.item()} at step {self.state.global_step + 1}; training stopped "
                "before applying it, the last checkpoint is kept (try a lower --learning_rate)"
            )
        return result

    def training_step(
        self, model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        loss = super().training_step(model, inputs, num_items_in_batch)
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if grads and not torch.isfinite(torch.stack([g.norm() for g in grads])).all():  # one sync per step
            raise TrainingError(
                f"the gradients became non-finite at step {self.state.global_step + 1}; training stopped before "
                "applying them, the last checkpoint is kept (try a lower --learning_rate, or --max_grad_norm)"
            )
        return loss

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """peft saves only the adapter: a LoRA model's fully trained parameters and its config go beside it."""
        if state_dict is not None:
            state_dict = without_tied_copies(cast(torch.nn.Module, self.model), state_dict)
        super()._save(output_dir, state_dict)
        folder = Path(output_dir or str(self.args.output_dir))
        if is_lora_model(cast(torch.nn.Module, self.model)) and self.args.should_save:
            save_lora_extras(self.model, folder)
        if self.args.should_save:  # weights and adapters as the user's umask says (safetensors writes 0600)
            with_umask_modes(folder)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        target = cast(torch.nn.Module, model if model is not None else self.model)
        if is_lora_model(target):
            load_non_lora_trainables(target, Path(resume_from_checkpoint))

    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        """LLaVA-NeXT's groups: weight decay or none, times the part's learning rate (--mm_projector_lr,
        --mm_vision_tower_lr, else --learning_rate); the gates in their own group at --xattn_gate_lr."""
        model = cast(PreTrainedModel, self.model if model is None else model)
        if self.optimizer is not None:
            return self.optimizer
        args = cast(AlternatingTrainingArguments, self.args)
        decay_names = set(self.get_decay_parameter_names(model))
        part_lr = part_learning_rates(args)
        grouped: dict[tuple[str, bool], list[torch.nn.Parameter]] = {}
        for name, parameter in model.named_parameters():
            if parameter.requires_grad:
                part = "gates" if name.endswith(GATE_SUFFIXES) else tunable_part(name)
                grouped.setdefault((part, name in decay_names and part != "gates"), []).append(parameter)
        groups = []
        for (part, decay), parameters in grouped.items():
            group: dict[str, Any] = {"params": parameters, "weight_decay": args.weight_decay if decay else 0.0}
            lr = args.xattn_gate_lr if part == "gates" else part_lr.get(part)
            if lr is not None:
                group["lr"] = lr
            group["part"] = part  # for the log and the tests; optimizers ignore unknown keys
            groups.append(group)
        optimizer_class, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        self.optimizer = optimizer_class(groups, **optimizer_kwargs)
        return self.optimizer


def without_tied_copies(model: torch.nn.Module, state_dict: dict) -> dict:
    """The state dict without the second name of a tied parameter (lm_head.weight when it is embed_tokens.weight).
    DeepSpeed ZeRO-1/2 hands the Trainer cloned tensors, so transformers no longer sees the tie and would save both."""
    first_names: dict[int, str] = {}
    copies = set()
    for name, parameter in model.named_parameters(remove_duplicate=False):
        if first_names.setdefault(id(parameter), name) != name:
            copies.add(name)
    return {key: value for key, value in state_dict.items() if key not in copies}


def part_learning_rates(args: AlternatingTrainingArguments) -> dict[str, float | None]:
    """The learning rate of each part that has its own flag (None: --learning_rate)."""
    return {"mm_mlp_adapter": args.mm_projector_lr, "mm_vision_tower": args.mm_vision_tower_lr}


def tunable_part(name: str) -> str:
    """LLaVA-NeXT's mm_tunable_parts name of a parameter (`xattn` for the gated blocks, which always train)."""
    if ".vision_tower." in name:
        return "mm_vision_tower"
    if ".mm_projector." in name:  # image_newline is not: LLaVA-NeXT unfreezes it with the language model
        return "mm_mlp_adapter"
    if ".xattn." in name:
        return "xattn"
    return "mm_language_model"


def set_trainable_parts(model: LlavaQwenForCausalLM, parts: list[str]) -> dict[str, tuple[int, int]]:
    """requires_grad per LLaVA-NeXT's mm_tunable_parts; returns (trainable, frozen) parameter counts per part."""
    counts = {part: [0, 0] for part in ("mm_vision_tower", "mm_mlp_adapter", "mm_language_model", "xattn")}
    for name, parameter in model.named_parameters():
        part = tunable_part(name)
        parameter.requires_grad_(part == "xattn" or part in parts)
        counts[part][0 if parameter.requires_grad else 1] += full_numel(parameter)
    return {part: (trained, frozen) for part, (trained, frozen) in counts.items() if trained or frozen}


def full_numel(parameter: torch.nn.Parameter) -> int:
    """A parameter's size; under DeepSpeed ZeRO-3 the tensor a process holds is empty and `ds_numel` is the size."""
    return int(getattr(parameter, "ds_numel", parameter.numel()))


def describe_freeze_state(counts: dict[str, tuple[int, int]], args: AlternatingTrainingArguments) -> str:
    lr = part_learning_rates(args)
    lines = ["what trains (--mm_tunable_parts; gated cross-attention blocks always train):"]
    for part, (trained, frozen) in counts.items():
        if trained and part == "mm_language_model" and args.lora_enable:
            rate = args.learning_rate
            lines.append(f"  {part:<18} LoRA     {trained:>14,} parameters frozen, adapters at lr {rate:g}")
        elif trained:
            rate = lr.get(part) or args.learning_rate
            lines.append(f"  {part:<18} trained  {trained:>14,} parameters at lr {rate:g}")
        else:
            lines.append(f"  {part:<18} frozen   {frozen:>14,} parameters")
    return "\n".join(lines)


RUN_ARGS_FILE = "run_args.json"  # the model and data arguments of the run, as given
DEFAULT_MODEL_MAX_LENGTH = 2048  # LLaVA-NeXT's --model_max_length default, for a source that records none
CHECKPOINT_FILE_SUFFIXES = (".json", ".safetensors", ".pt", ".pth", ".bin")


def checkpoint_problem(folder: Path) -> str | None:
    """What keeps a Trainer checkpoint folder from being resumed, or None: the trainer state, the config and the
    weights must be there, and every file must read as complete (a save cut short by a kill leaves a file that
    does not)."""
    if not folder.is_dir():
        return "no such folder"
    required = [TRAINER_STATE_NAME, "config.json"]
    if not any(folder.glob("*.safetensors")) and not (folder / "pytorch_model.bin").exists():
        return "no model weights (*.safetensors)"
    for name in required:
        if not (folder / name).is_file():
            return f"no {name}"
    for path in sorted(folder.iterdir()):
        if path.suffix in CHECKPOINT_FILE_SUFFIXES:
            problem = file_problem(path)
            if problem:
                return f"{path.name} is {problem}"
    return deepspeed_checkpoint_problem(folder)


def deepspeed_checkpoint_problem(folder: Path) -> str | None:
    """What is missing or cut in the DeepSpeed part of a checkpoint (`latest` names the `global_stepN` folder that
    holds one model and one optimizer shard per process), or None; a checkpoint without that part passes."""
    step_folders = sorted(folder.glob("global_step*"))
    if not step_folders and not (folder / "latest").exists():
        return None
    tag = deepspeed_tag(folder)
    if tag is None:
        return "its DeepSpeed state has no `latest` file"
    shards = folder / tag
    if not tag or "/" in tag or not shards.is_dir():
        return f"its DeepSpeed `latest` names {tag!r}, which is not a folder there"
    for path in sorted(shards.iterdir()):
        if path.suffix == ".pt" and (problem := file_problem(path)):
            return f"{tag}/{path.name} is {problem}"
    processes = len(list(folder.glob("rng_state_*.pth"))) or 1
    models, optimizers = len(list(shards.glob("*model_states.pt"))), len(list(shards.glob("*optim_states.pt")))
    if optimizers not in (0, processes) or models not in (1, processes):
        return f"{tag} holds {models} model and {optimizers} optimizer shards for {processes} processes"
    return None


def checkpoint_folders(output_dir: Path) -> list[Path]:
    """The Trainer's `checkpoint-N` folders of a run, newest (highest N) first."""
    return sorted(
        (p for p in output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if p.is_dir() and p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
        reverse=True,
    )


def last_complete_checkpoint(output_dir: Path, logger: logging.Logger) -> str | None:
    """The newest `checkpoint-N` that can be resumed; a newer one that a kill left incomplete is skipped with a
    warning that says what is wrong with it, instead of crashing every rerun."""
    for folder in checkpoint_folders(output_dir):
        problem = checkpoint_problem(folder)
        if problem is None:
            return str(folder)
        logger.warning("skipping %s: %s (its save was interrupted?)", folder, problem)
    return None


def deepspeed_tag(folder: Path) -> str | None:
    """The `global_stepN` folder a checkpoint's DeepSpeed `latest` file names, or None: there is no such file."""
    latest = folder / "latest"
    return latest.read_text(encoding="utf-8", errors="replace").strip() if latest.is_file() else None


def deepspeed_processes(folder: Path) -> int | None:
    """How many processes wrote a checkpoint's DeepSpeed ZeRO state (one optimizer shard each), or None: it has none."""
    tag = deepspeed_tag(folder)
    if not tag:
        return None
    return len(list((folder / tag).glob("*optim_states.pt"))) or None


def resume_problem(folder: Path, args: TrainingArguments) -> str | None:
    """Why this run cannot continue a complete checkpoint, or None: ZeRO shards load only into as many processes
    as wrote them, and only under DeepSpeed."""
    processes = deepspeed_processes(folder)
    weights = f"start a new --output_dir from its weights (--model_name_or_path {folder})"
    if processes is None and args.deepspeed and (folder / "optimizer.pt").exists():
        return f"it was written without DeepSpeed; resume it without --deepspeed, or {weights}"
    if processes is not None and not args.deepspeed:
        return f"it holds DeepSpeed ZeRO shards; resume it with --deepspeed, or {weights}"
    if processes is not None and processes != args.world_size:
        return (
            f"its DeepSpeed ZeRO state is split over {processes} processes and this run has {args.world_size}; "
            f"launch {processes} processes (torchrun --nproc_per_node {processes}), or {weights}"
        )
    return None


# ----------------------------------------------------------------------------------------- the inspections
@dataclass
class DryRun:
    """What a checkpoint is, and whether it is the variant asked for."""

    kind: CheckpointKind
    problem: str | None  # the variant mismatch, if any
    notes: list[str] = field(default_factory=list)  # what LLaVA-NeXT's script flags do here


def dry_run(model_args: ModelArguments, data_args: DataArguments | None = None) -> DryRun:
    source = model_args.model_name_or_path or model_args.backbone_model
    if not source:
        raise LlavaConfigError("--dry_run needs --model_name_or_path (or --backbone_model)")
    kind = inspect_checkpoint(source)
    notes = script_flag_notes(model_args, data_args, read_raw_config(source) if kind.variant is not None else {})
    return DryRun(kind, variant_mismatch(kind, model_args.variant), notes)


def script_flag_notes(model_args: ModelArguments, data_args: DataArguments | None, config: Any) -> list[str]:
    """LLaVA-NeXT's script flags against the checkpoint's config (a dict or a config object): a value that
    contradicts it is refused; the flags that have no effect here get a line saying so."""

    def checkpoint(name: str) -> Any:
        return config.get(name) if isinstance(config, dict) else getattr(config, name, None)

    for flag in ("mm_projector_type", "mm_vision_select_layer", "mm_patch_merge_type"):
        given, saved = getattr(model_args, flag), checkpoint(flag)
        if given is not None and saved is not None and given != saved:
            raise LlavaConfigError(
                f"--{flag} {given} contradicts the checkpoint, whose config.json says {saved}: the model is built "
                "from its config, so drop the flag or give the checkpoint's value"
            )
    notes = []
    if model_args.version is not None:
        notes.append(f"--version {model_args.version}: conversations use Qwen's chat template (ChatML), as it names")
    if data_args is not None:
        if data_args.video_folder is not None or data_args.frames_upbound is not None:
            notes.append("--video_folder / --frames_upbound: no effect (video records are refused by id)")
        notes.append("--lazy_preprocess: no effect (samples are always tokenised when they are used)")
    return notes


def length_limit(config: Any, training_args: Any, processor: ImageProcessor) -> LengthLimit:
    """The positions a sample keeps: --model_max_length, else the checkpoint's tokenizer_model_max_length (OneVision
    records 32768), else DEFAULT_MODEL_MAX_LENGTH text positions plus the largest image of the configured grid."""
    tower = config.vision_tower_config()
    unpad = "unpad" in config.mm_patch_merge_type
    limit = LengthLimit(0, int(tower.patch_size), unpad)
    given = getattr(training_args, "model_max_length", None) or config.tokenizer_model_max_length
    if given:
        return LengthLimit(int(given), limit.patch_size, unpad)
    largest = max(limit.image_tokens(processor, [size])[0] for size in [*processor.grid_pinpoints, (1, 1)])
    return LengthLimit(DEFAULT_MODEL_MAX_LENGTH + largest, limit.patch_size, unpad)


def limit_source(config: Any, training_args: Any) -> str:
    """Where the length limit came from, for the log."""
    if getattr(training_args, "model_max_length", None):
        return "--model_max_length"
    if config.tokenizer_model_max_length:
        return "the checkpoint's tokenizer_model_max_length"
    return f"default: {DEFAULT_MODEL_MAX_LENGTH} text positions plus the largest image of the configured grid"


@dataclass
class DataInspection:
    records: list[Record]
    problems: list[str]  # one message per invalid record, naming it
    limit: LengthLimit | None = None  # the length limit training would use (with a checkpoint to read it from)
    cut: list[tuple[str, int]] = field(default_factory=list)  # (record, positions it needs) cut before any answer


def inspect_data(
    data_args: DataArguments,
    model_args: ModelArguments | None = None,
    training_args: AlternatingTrainingArguments | None = None,
) -> DataInspection:
    """Read every record and validate each; with a LLaVA checkpoint (--model_name_or_path), also count each valid
    record's positions after its images are spliced in, and list the records the length limit would cut before
    their first answer token (they would train on nothing)."""
    if not data_args.data_path:
        raise LlavaDataError("--inspect_data needs --data_path")
    records = read_records(data_args.data_path, data_args.data_sampling_seed)
    problems, valid = [], []
    for record in records:
        try:
            validate_record(record)
            valid.append(record)
        except LlavaDataError as error:
            problems.append(str(error))
    inspection = DataInspection(records, problems)
    source = model_args.model_name_or_path if model_args is not None else None
    if source and valid:
        kind = inspect_checkpoint(source)
        if kind.variant is not None:
            config = build_config(read_raw_config(source), target_model_type(kind, "auto"))
            processor = ImageProcessor.from_config(config, data_args.image_aspect_ratio, data_args.image_grid_pinpoints)
            inspection.limit = length_limit(config, training_args, processor)
            tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name_or_path or source)  # type: ignore[union-attr]
            dataset = LazySupervisedDataset(
                valid, tokenizer, processor, data_args.image_folder, data_args.system_prompt, data_args.label_mode,
                data_args.keep_image_position, inspection.limit,
            )  # fmt: skip
            for record in valid:
                needed, first = dataset.needed_length(
                    record, [image_header(dataset, record, n) for n in record.image_paths]
                )
                if first is None or first >= inspection.limit.max_length:
                    inspection.cut.append((record.where, needed))
    return inspection


def image_header(dataset: LazySupervisedDataset, record: Record, name: str) -> Any:
    """An image opened for its size only (the pixels are not decoded): what the length count needs."""
    path = dataset.image_path(record, name)
    if not path.is_file():
        raise LlavaDataError(f"{record.where}: image not found: {path}")
    try:
        return Image.open(path)
    except (OSError, ValueError) as error:
        raise LlavaDataError(f"{record.where}: cannot read the image {path} ({error})") from error


def backbone_plan(model_args: ModelArguments) -> BackboneInit:
    """What --init_from_backbone would copy from --backbone_model into the --variant model."""
    backbone = model_args.backbone_model or model_args.model_name_or_path
    if not backbone:
        raise LlavaConfigError("--init_from_backbone needs --backbone_model")
    skip = tuple(p.strip() for p in model_args.init_skip_prefixes.split(",") if p.strip())
    return plan_init_from_backbone(
        backbone,
        model_args.variant,
        skip,
        model_args.vision_tower,
        model_args.xattn_mode,
        model_args.xattn_every_n_layers,
    )


def describe_plan(plan: BackboneInit) -> str:
    header = f"init from backbone {plan.source.source} ({plan.source.raw_model_type}) into {plan.config.model_type}"
    if hasattr(plan.config, "xattn_mode"):
        header += f", xattn_mode {plan.config.xattn_mode}"
    return f"{header}\n{plan.tower}\n{plan.report.format()}"


def prepare_model(model_args: ModelArguments, logger: logging.Logger) -> LlavaQwenForCausalLM:
    """Load the checkpoint, or build the --variant model from a backbone by selective copy."""
    if model_args.init_from_backbone:
        plan = backbone_plan(model_args)
        logger.info("%s", describe_plan(plan))
        if "RANDOM" in plan.tower:
            logger.warning("%s", plan.tower)  # never silent: a random tower makes every image noise
        return build_from_plan(plan, model_args.attn_implementation)
    if not model_args.model_name_or_path:
        raise LlavaConfigError("--model_name_or_path is required (or --init_from_backbone --backbone_model …)")
    model = load_model(
        model_args.model_name_or_path, model_args.variant, model_args.force, model_args.attn_implementation
    )
    logger.info("loaded %s as %s", model_args.model_name_or_path, type(model).__name__)
    return model


# ---------------------------------------------------------------------------------------------- training
@dataclass
class TrainResult:
    output_dir: Path
    global_step: int
    training_loss: float


def train(
    model_args: ModelArguments, data_args: DataArguments, training_args: AlternatingTrainingArguments
) -> TrainResult:
    """Train one LLaVA variant with the Hugging Face Trainer; a folder holding checkpoints resumes from its last
    complete one. The model, tokenizer and trainer state are written to --output_dir, which has one writer (an OS
    lock the main process holds). Nothing is written there until the model, the image processor and the data are
    ready, so settings that cannot work leave no trace. A non-finite loss or gradient stops the run before the step
    that would apply it: the last checkpoint stays as it was, and the reason goes to stderr and to the run's log."""
    if not data_args.data_path:
        raise LlavaDataError("--data_path is required to train")
    if not training_args.output_dir or training_args.output_dir == "trainer_output":
        raise LlavaConfigError("--output_dir is required to train")
    output_dir = Path(training_args.output_dir)
    resume = training_args.resume_from_checkpoint
    if resume is not None and (problem := checkpoint_problem(Path(resume))):
        raise CheckpointError(f"--resume_from_checkpoint {resume} cannot be resumed: {problem}")
    if training_args.deepspeed:  # torch's deprecation notes about the collectives DeepSpeed calls, at every step
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")
    run = prepare_run(model_args, data_args, training_args, quiet_replicas(console_logging(LOGGER_NAME), training_args))
    lock = RunLock(output_dir)
    try:
        if training_args.process_index == 0:
            lock.acquire()
        return _train(run, model_args, data_args, training_args, output_dir, resume)
    finally:
        lock.release()


def quiet_replicas(logger: logging.Logger, args: TrainingArguments) -> logging.Logger:
    """One process reports (the first); in a multi-process run the others add only errors (their warnings would
    repeat the first's: every process reads the same records and checkpoints)."""
    if args.process_index != 0:
        logger.setLevel(logging.ERROR)
    return logger


@dataclass
class PreparedRun:
    """Everything a run needs before it writes anything."""

    model: LlavaQwenForCausalLM
    tokenizer: Any
    data_module: dict[str, Any]
    lora_base: str | None = None  # with --lora_enable: the base_model_name_or_path its adapters record


def prepare_run(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: AlternatingTrainingArguments,
    logger: logging.Logger,
) -> PreparedRun:
    """The model (trainable parts set), tokenizer, image processor and data, checked; nothing is written. New
    weights (gated blocks, a projector or tower built from config, LoRA adapters) are drawn after --seed is set, so
    a run repeats."""
    set_seed(training_args.seed)
    if training_args.lora_enable and "mm_language_model" not in model_args.tunable_parts:
        raise LlavaConfigError(
            "--lora_enable trains the language model through adapters, but --mm_tunable_parts leaves it frozen: "
            "add mm_language_model to --mm_tunable_parts, or drop --lora_enable"
        )
    lora_base_folder = Path(str(training_args.output_dir)) / BASE_FOLDER
    if training_args.lora_enable and lora_base_folder.is_dir():  # a resumed run: the frozen start it wrote
        logger.info("LoRA base: %s (written when this run started)", lora_base_folder)
        model = load_model(str(lora_base_folder), attn_implementation=model_args.attn_implementation)
    else:
        model = prepare_model(model_args, logger)
    tokenizer_source = model_args.tokenizer_name_or_path or model_args.model_name_or_path or model_args.backbone_model
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    for note in script_flag_notes(model_args, data_args, model.config):
        logger.info("%s", note)
    model.config.tokenizer_padding_side = "right"
    counts = set_trainable_parts(model, model_args.tunable_parts)
    logger.info("%s", describe_freeze_state(counts, training_args))

    image_processor = ImageProcessor.from_config(
        model.config, data_args.image_aspect_ratio, data_args.image_grid_pinpoints
    )
    limit = length_limit(model.config, training_args, image_processor)
    logger.info("sequences are cut to %d positions (%s)", limit.max_length, limit_source(model.config, training_args))
    model.config.tokenizer_model_max_length = limit.max_length
    # the model merges anyres tiles by its config's settings, and the saved config.json says how the run saw images
    model.config.update(image_processor.config_settings())
    logger.info("%s", image_processor.describe())
    data_module = make_supervised_data_module(tokenizer, data_args, image_processor, limit)
    logger.info("%d training records from %s", len(data_module["train_dataset"]), data_args.data_path)
    lora_base_source = None
    if training_args.lora_enable:  # refused here, before anything is written: no peft, or nothing to adapt
        import_peft()
        lora_target_pattern(model)
        if is_deepspeed_zero3_enabled():
            raise LlavaConfigError(
                "--lora_enable with DeepSpeed ZeRO-3 is not supported: ZeRO-3 partitions the fully trained "
                "parameters this trainer saves beside the adapter. Use ZeRO-2 (configs/deepspeed/zero2.json) for "
                "LoRA runs; a 0.5B-7B OneVision with LoRA fits it"
            )
        lora_base_source = lora_base_of(model_args, lora_base_folder)
    return PreparedRun(model, tokenizer, data_module, lora_base_source)


def lora_base_of(model_args: ModelArguments, base_folder: Path) -> str:
    """Where a LoRA run's frozen weights come from: the checkpoint it loads as it is, or else (a model built from a
    backbone, or loaded into another variant) the copy the run writes to OUTPUT_DIR/base."""
    source = model_args.model_name_or_path
    if base_folder.is_dir() or model_args.init_from_backbone or not source:
        return str(base_folder.resolve())
    kind = inspect_checkpoint(source)
    if variant_mismatch(kind, model_args.variant):  # loaded with --force into another class
        return str(base_folder.resolve())
    return str(Path(source).resolve()) if Path(source).exists() else source


def wrap_in_lora(run: PreparedRun, args: AlternatingTrainingArguments, logger: logging.Logger) -> Any:
    """Write the frozen start when the run is its own base, then add the adapters."""
    assert run.lora_base is not None
    base_folder = (Path(str(args.output_dir)) / BASE_FOLDER).resolve()
    if run.lora_base == str(base_folder) and not base_folder.is_dir() and args.process_index == 0:
        write_checkpoint(run.model, run.tokenizer, base_folder)
        logger.info("LoRA base written to %s (the model as built, before training)", base_folder)
    model = add_lora(run.model, args.lora_r, args.lora_alpha, args.lora_dropout, run.lora_base, args.lora_targets)
    adapters = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    layers = sum(1 for n, _ in model.named_modules() if n.endswith(".lora_A"))
    logger.info(
        "LoRA r=%d alpha=%d dropout=%g, targets %s: %s adapter parameters on %d linear layers (the adapted "
        "weights frozen); base %s",
        args.lora_r, args.lora_alpha, args.lora_dropout, args.lora_targets, f"{adapters:,}", layers, run.lora_base,
    )  # fmt: skip
    return model


def _train(
    run: PreparedRun,
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: AlternatingTrainingArguments,
    output_dir: Path,
    resume: str | None,
) -> TrainResult:
    logger = quiet_replicas(setup_run_logging(output_dir, LOG_FILE, LOGGER_NAME), training_args)
    if training_args.dataloader_pin_memory and not torch.cuda.is_available():
        training_args.dataloader_pin_memory = False  # pinning needs a GPU; without one torch warns at every epoch
    if training_args.process_index == 0:  # the Trainer keeps its own arguments in training_args.bin
        settings = {"model": asdict(model_args), "data": asdict(data_args)}
        write_text_atomic(output_dir / RUN_ARGS_FILE, json.dumps(settings, indent=2, default=str) + "\n")
    model = wrap_in_lora(run, training_args, logger) if run.lora_base else run.model
    tokenizer = run.tokenizer
    trainer = AlternatingTrainer(
        model=model,
        args=training_args,
        processing_class=tokenizer,
        callbacks=[RunLogCallback(logger)],
        **run.data_module,
    )
    # the run log prints each record once (RunLogCallback); the Trainer's bar would print it a second time
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(QuietProgressCallback)
    if training_args.throughput_log_steps > 0:
        # First in line, so every reporter (console, log file, integrations) sees the merged record.
        trainer.callback_handler.callbacks.insert(0, ThroughputCallback(training_args.throughput_log_steps))

    if resume is None:
        resume = last_complete_checkpoint(output_dir, logger)
    if resume:
        if problem := resume_problem(Path(resume), training_args):
            raise CheckpointError(f"cannot resume from {resume}: {problem}")
        logger.info("resuming from %s", resume)
    try:
        result = trainer.train(resume_from_checkpoint=resume)
    except TrainingError as error:
        logger.error("%s", error)
        raise
    trainer.save_model(str(output_dir))
    trainer.save_state()
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(output_dir))
        if training_args.merge_lora:
            merged = output_dir / MERGED_FOLDER
            if merged.exists():  # a rerun of a finished run: the merge of this training replaces the old one
                shutil.rmtree(merged)
            write_checkpoint(trainer.model, tokenizer, merged)
            logger.info("LoRA adapters merged into %s, an ordinary checkpoint", merged)
    # the Trainer's final training loss is each process's own; the run's is their mean
    training_loss = float(trainer.accelerator.reduce(torch.tensor(result.training_loss), "mean"))
    logger.info(
        "done: %d steps, training loss %.4f; model written to %s", result.global_step, training_loss, output_dir
    )
    return TrainResult(output_dir, result.global_step, training_loss)
