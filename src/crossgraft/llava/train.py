"""`train_alternating` / `crossgraft llava train`: the seed-004 training wrapper on the Hugging Face Trainer.

Inspection modes exit before training: --dry_run (what a checkpoint is), --inspect_data (record count and the
first record), --init_from_backbone --inspect_weights (what a selective copy would fill). Otherwise the model
is loaded (or built from a backbone), the data module made, and the Trainer run; an output folder with
checkpoints resumes from its last one.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoTokenizer, HfArgumentParser, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from crossgraft.graft import CheckpointError
from crossgraft.llava.configuration import SUPPORTED_ASPECT_RATIOS, XATTN_MODES, LlavaConfigError
from crossgraft.llava.data import (
    DataArguments,
    LlavaDataError,
    make_supervised_data_module,
    read_records,
    validate_record,
)
from crossgraft.llava.loading import (
    DEFAULT_SKIP_PREFIXES,
    build_from_plan,
    inspect_checkpoint,
    load_model,
    plan_init_from_backbone,
    variant_mismatch,
)
from crossgraft.llava.modeling import SUPPORTED_ATTENTION, LlavaQwenForCausalLM
from crossgraft.llava.vision import SquareImageProcessor
from crossgraft.runlog import setup_run_logging

LOG_FILE = "train_alternating.log"
TUNABLE_PARTS = ("mm_vision_tower", "mm_mlp_adapter", "mm_language_model")
GATE_SUFFIXES = ("attn_gate", "ff_gate")


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "checkpoint to train: a local folder or a Hub id (lmms-lab/llava-onevision-qwen2-0.5b-ov, …)"
        },
    )
    variant: str = field(
        default="auto",
        metadata={
            "help": "the variant you expect: auto|alternating|alternating_cross|base. A checkpoint of another "
            "variant stops the run (exit 2) unless --force",
            "choices": ["auto", "alternating", "alternating_cross", "base"],
        },
    )
    force: bool = field(
        default=False,
        metadata={
            "help": "continue despite a --variant mismatch: the checkpoint's weights "
            "are loaded into the requested class"
        },
    )
    dry_run: bool = field(
        default=False, metadata={"help": "print the raw config.json model_type and the variant it maps to, then exit"}
    )
    inspect_data: bool = field(
        default=False,
        metadata={
            "help": "print the number of records and the first record as stored "
            "(no image processing), check every record, then exit"
        },
    )
    inspect_weights: bool = field(
        default=False,
        metadata={
            "help": "with --init_from_backbone: report copied / shape-mismatched / "
            "skipped / unexpected / missing keys, then exit"
        },
    )
    init_from_backbone: bool = field(
        default=False,
        metadata={
            "help": "build the --variant model and copy every --backbone_model "
            "tensor whose name and shape match (skipping --init_skip_prefixes)"
        },
    )
    backbone_model: str | None = field(
        default=None,
        metadata={
            "help": "backbone for --init_from_backbone: a bare Qwen2 LM or any LLaVA-Qwen checkpoint (folder or Hub id)"
        },
    )
    init_skip_prefixes: str = field(
        default=",".join(DEFAULT_SKIP_PREFIXES),
        metadata={
            "help": "comma-separated parameter prefixes never copied from the backbone (also matched after 'model.'); "
            "pass 'vision_resampler' alone to keep a LLaVA backbone's projector"
        },
    )
    vision_tower: str | None = field(
        default=None,
        metadata={
            "help": "SigLIP tower for a model built from a bare Qwen2 LM: a known "
            "id (google/siglip-so400m-patch14-384, the default), or a folder/Hub id with its "
            "config.json. Its weights are created from config (reported missing)"
        },
    )
    xattn_mode: str = field(
        default="gated", metadata={"help": "mode of a new alternating_cross model", "choices": list(XATTN_MODES)}
    )
    xattn_every_n_layers: int = field(
        default=4, metadata={"help": "a new gated model gets a cross-attention block before every n-th decoder layer"}
    )
    attn_implementation: str = field(
        default="sdpa",
        metadata={
            "help": "eager or sdpa (flash_attention_2 cannot express the alternating masks)",
            "choices": list(SUPPORTED_ATTENTION),
        },
    )
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "default: the model (or backbone) folder"}
    )
    mm_tunable_parts: str = field(
        default="mm_mlp_adapter,mm_language_model",
        metadata={
            "help": "comma-separated parts to train: mm_vision_tower, mm_mlp_adapter (projector + image_newline), "
            "mm_language_model. Gated cross-attention blocks are always trained"
        },
    )


@dataclass
class AlternatingTrainingArguments(TrainingArguments):
    throughput_log_steps: int = field(
        default=0,
        metadata={
            "help": "every N optimizer steps, add samples/s, step time and (CUDA) "
            "peak memory to the loss log record; 0 = off"
        },
    )
    xattn_gate_lr: float = field(
        default=1e-3, metadata={"help": "learning rate of the tanh gates (own optimizer group, no weight decay)"}
    )
    model_max_length: int = field(
        default=2048, metadata={"help": "spliced sequences (text + image features) are cut to this length"}
    )


class ThroughputCallback(TrainerCallback):
    """Every `every` optimizer steps: samples/s, seconds per step and (on CUDA) peak memory since the last
    report, merged into the log record that carries the loss at that step."""

    def __init__(self, every: int):
        self.every = every
        self.pending: dict[str, float] | None = None
        self._window_start = time.perf_counter()
        self._window_steps = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._window_start, self._window_steps = time.perf_counter(), 0
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def on_step_end(self, args, state, control, **kwargs):
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

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.pending is None or logs is None or "loss" not in logs:
            return
        logs.update(self.pending)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(self.pending)
        self.pending = None


class RunLogCallback(TrainerCallback):
    """Every log record (loss, learning rate, throughput) as one line of the run's log file."""

    def __init__(self, logger: logging.Logger):
        self.logger = logger

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and state.is_world_process_zero:
            self.logger.info("step %d: %s", state.global_step, json.dumps(logs, sort_keys=True))


class AlternatingTrainer(Trainer):
    """The Trainer with one more optimizer group: the tanh gates, at --xattn_gate_lr, without weight decay."""

    def create_optimizer(self, model=None):
        model = self.model if model is None else model
        if self.optimizer is not None:
            return self.optimizer
        decay_names = set(self.get_decay_parameter_names(model))
        with_decay, without_decay, gates = [], [], []
        for name, parameter in model.named_parameters():
            if not parameter.requires_grad:
                continue
            if name.endswith(GATE_SUFFIXES):
                gates.append(parameter)
            elif name in decay_names:
                with_decay.append(parameter)
            else:
                without_decay.append(parameter)
        groups = [
            {"params": with_decay, "weight_decay": self.args.weight_decay},
            {"params": without_decay, "weight_decay": 0.0},
        ]
        if gates:
            groups.append({"params": gates, "weight_decay": 0.0, "lr": self.args.xattn_gate_lr})
        optimizer_class, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        self.optimizer = optimizer_class(groups, **optimizer_kwargs)
        return self.optimizer


def set_trainable_parts(model: LlavaQwenForCausalLM, parts: str) -> dict[str, int]:
    """requires_grad per LLaVA-NeXT's mm_tunable_parts; returns trainable parameter counts per part."""
    wanted = {part.strip() for part in parts.split(",") if part.strip()}
    unknown = wanted - set(TUNABLE_PARTS)
    if unknown:
        raise LlavaConfigError(
            f"unknown --mm_tunable_parts {', '.join(sorted(unknown))}; choose from {', '.join(TUNABLE_PARTS)}"
        )
    counts = {"mm_vision_tower": 0, "mm_mlp_adapter": 0, "mm_language_model": 0, "xattn": 0}
    for name, parameter in model.named_parameters():
        if ".vision_tower." in name:
            part = "mm_vision_tower"
        elif ".mm_projector." in name or name.endswith("image_newline"):
            part = "mm_mlp_adapter"
        elif ".xattn." in name:
            part = "xattn"
        else:
            part = "mm_language_model"
        parameter.requires_grad_(part == "xattn" or part in wanted)
        counts[part] += parameter.numel() if parameter.requires_grad else 0
    return counts


def choose_aspect_ratio(data_args: DataArguments, config, logger: logging.Logger) -> str:
    if data_args.image_aspect_ratio:
        return data_args.image_aspect_ratio
    if config.image_aspect_ratio in SUPPORTED_ASPECT_RATIOS:
        return config.image_aspect_ratio
    logger.warning(
        "the model config asks for image_aspect_ratio %r; anyres tiling is not implemented yet, so images "
        "are padded to one square (pad)",
        config.image_aspect_ratio,
    )
    return "pad"


def last_complete_checkpoint(output_dir: Path, logger: logging.Logger) -> str | None:
    """The newest `checkpoint-N` whose trainer_state.json (the Trainer writes it last) exists. A folder left
    half-written by an interrupted save is skipped with a warning instead of crashing the resume."""
    folders = sorted(
        (p for p in output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if p.is_dir() and p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
        reverse=True,
    )
    for folder in folders:
        if (folder / TRAINER_STATE_NAME).is_file():
            return str(folder)
        logger.warning("skipping %s: no %s, so its save was interrupted", folder, TRAINER_STATE_NAME)
    return None


def parse_args(argv: list[str] | None, prog: str):
    parser = HfArgumentParser(
        (ModelArguments, DataArguments, AlternatingTrainingArguments),
        prog=prog,
        description="Train LLaVA-OneVision (Qwen2 + SigLIP) as base, alternating or alternating_cross. "
        "Images are preprocessed at one fixed square resolution (pad or square); anyres tiling is not implemented yet.",
    )
    return parser.parse_args_into_dataclasses(args=argv)


# ----------------------------------------------------------------------------------------- the modes
def dry_run(model_args: ModelArguments) -> int:
    source = model_args.model_name_or_path or model_args.backbone_model
    if not source:
        raise LlavaConfigError("--dry_run needs --model_name_or_path (or --backbone_model)")
    kind = inspect_checkpoint(source)
    print(kind.describe())
    problem = variant_mismatch(kind, model_args.variant)
    if problem and not model_args.force:
        print(f"error: {problem}")
        return 2
    if problem:
        print(f"--force: continuing; the weights would be loaded into the {model_args.variant} class")
    print("dry run: nothing loaded or trained")
    return 0


def inspect_data(data_args: DataArguments) -> int:
    if not data_args.data_path:
        raise LlavaDataError("--inspect_data needs --data_path")
    records = read_records(data_args.data_path, data_args.data_sampling_seed)
    print(f"records: {len(records)} (from {data_args.data_path})")
    if records:
        print(f"first record ({records[0].where}):")
        print(json.dumps(records[0].data, indent=2, ensure_ascii=False)[:4000])
    problems = []
    for record in records:
        try:
            validate_record(record)
        except LlavaDataError as error:
            problems.append(str(error))
    if problems:
        print(f"{len(problems)} invalid record(s); the first: {problems[0]}")
        return 2
    print(f"all {len(records)} records are valid")
    return 0


def prepare_model(model_args: ModelArguments, logger: logging.Logger | None) -> LlavaQwenForCausalLM | None:
    """Load the checkpoint, or plan (and unless --inspect_weights, perform) an init from a backbone."""
    if model_args.init_from_backbone:
        backbone = model_args.backbone_model or model_args.model_name_or_path
        if not backbone:
            raise LlavaConfigError("--init_from_backbone needs --backbone_model")
        skip = tuple(p.strip() for p in model_args.init_skip_prefixes.split(",") if p.strip())
        plan = plan_init_from_backbone(
            backbone,
            model_args.variant,
            skip,
            model_args.vision_tower,
            model_args.xattn_mode,
            model_args.xattn_every_n_layers,
        )
        header = f"init from backbone {backbone} ({plan.source.raw_model_type}) into {plan.config.model_type}" + (
            f", xattn_mode {plan.config.xattn_mode}" if hasattr(plan.config, "xattn_mode") else ""
        )
        if model_args.inspect_weights:
            print(header)
            print(plan.report.format())
            return None
        logger.info("%s\n%s", header, plan.report.format())
        return build_from_plan(plan, model_args.attn_implementation)
    if model_args.inspect_weights:
        raise LlavaConfigError(
            "--inspect_weights reports an --init_from_backbone copy; add --init_from_backbone --backbone_model …"
        )
    if not model_args.model_name_or_path:
        raise LlavaConfigError("--model_name_or_path is required (or --init_from_backbone --backbone_model …)")
    model = load_model(
        model_args.model_name_or_path, model_args.variant, model_args.force, model_args.attn_implementation
    )
    logger.info("loaded %s as %s", model_args.model_name_or_path, type(model).__name__)
    return model


def run(argv: list[str] | None = None, prog: str = "train_alternating") -> int:
    try:
        model_args, data_args, training_args = parse_args(argv, prog)
    except ImportError as error:  # e.g. --deepspeed without the deepspeed package
        raise LlavaConfigError(
            f"a requested option needs a package that is not installed ({error}); "
            "for --deepspeed: pip install deepspeed"
        ) from error
    except ValueError as error:  # TrainingArguments' own consistency checks
        raise LlavaConfigError(f"invalid training arguments: {error}") from error
    if model_args.dry_run:
        return dry_run(model_args)
    if model_args.inspect_data:
        return inspect_data(data_args)
    if model_args.inspect_weights:
        prepare_model(model_args, None)
        return 0
    if not data_args.data_path:
        raise LlavaDataError("--data_path is required to train")
    if not training_args.output_dir or training_args.output_dir == "trainer_output":
        raise LlavaConfigError("--output_dir is required to train")

    output_dir = Path(training_args.output_dir)
    logger = setup_run_logging(output_dir, LOG_FILE, "crossgraft.llava")
    model = prepare_model(model_args, logger)
    tokenizer_source = model_args.tokenizer_name_or_path or model_args.model_name_or_path or model_args.backbone_model
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    model.config.tokenizer_model_max_length = training_args.model_max_length
    model.config.tokenizer_padding_side = "right"
    counts = set_trainable_parts(model, model_args.mm_tunable_parts)
    logger.info("trainable parameters: %s", ", ".join(f"{part} {count:,}" for part, count in counts.items()))

    data_args.image_processor = SquareImageProcessor.from_config(
        model.config, choose_aspect_ratio(data_args, model.config, logger)
    )
    data_module = make_supervised_data_module(tokenizer, data_args)
    logger.info("%d training records from %s", len(data_module["train_dataset"]), data_args.data_path)

    trainer = AlternatingTrainer(
        model=model, args=training_args, processing_class=tokenizer, callbacks=[RunLogCallback(logger)], **data_module
    )
    if training_args.throughput_log_steps > 0:
        # First in line, so every reporter (console, log file, integrations) sees the merged record.
        trainer.callback_handler.callbacks.insert(0, ThroughputCallback(training_args.throughput_log_steps))

    resume = training_args.resume_from_checkpoint
    if resume is None:
        resume = last_complete_checkpoint(output_dir, logger)
        if resume:
            logger.info("resuming from %s", resume)
    result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(str(output_dir))
    trainer.save_state()
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(output_dir))
    logger.info(
        "done: %d steps, training loss %.4f; model written to %s", result.global_step, result.training_loss, output_dir
    )
    return 0


def main(argv: list[str] | None = None, prog: str = "train_alternating") -> int:
    import sys

    try:
        return run(sys.argv[1:] if argv is None else argv, prog)
    except (LlavaConfigError, LlavaDataError, CheckpointError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
