"""`AlternatingTrainingArguments`: transformers' TrainingArguments with the LLaVA family's training settings (its
own module, so that commands other than `train` never load transformers for their help)."""

from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cached_property
from typing import Literal

import torch
from transformers import TrainingArguments

from crossgraft.llava.constants import LLAVA_NEXT_GROUP, LlavaConfigError


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
    mm_projector_lr: float | None = field(
        default=None, metadata={"help": "learning rate of the projector (default: --learning_rate)"}
    )
    mm_vision_tower_lr: float | None = field(
        default=None, metadata={"help": "learning rate of the vision tower when it trains (default: --learning_rate)"}
    )
    model_max_length: int | None = field(
        default=None,
        metadata={
            "help": "spliced sequences (text + image features) are cut to this length, and the saved config.json "
            "records it (tokenizer_model_max_length). Default: the source checkpoint's (lmms-lab OV: 32768), else 2048"
        },
    )
    lora_enable: bool = field(
        default=False,
        metadata={
            "help": "train the language model through LoRA adapters on its linear layers (peft: pip install "
            "'crossgraft[lora]'); its own weights stay frozen, the other --mm_tunable_parts and the gated blocks "
            "train in full. Saves write the adapter and non_lora_trainables.safetensors"
        },
    )
    lora_r: int = field(default=64, metadata={"help": "LoRA rank (LLaVA-NeXT's default)"})
    lora_targets: Literal["language_model", "llava_next"] = field(
        default="language_model",
        metadata={
            "help": "which linear layers get adapters: language_model (the decoder's own, model.layers.*) or "
            "llava_next (LLaVA-NeXT's rule: every linear layer whose name ends like one of the language model's, "
            "so the vision tower's q_proj / k_proj / v_proj too; gated blocks and the projector still train in full)"
        },
    )
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling alpha: updates are scaled by alpha / r"})
    lora_dropout: float = field(default=0.05, metadata={"help": "dropout on the LoRA branch's input"})
    merge_lora: bool = field(
        default=False,
        metadata={
            "help": "with --lora_enable: when training ends, also write the adapters merged into the weights as "
            "OUTPUT_DIR/merged, a checkpoint that loads like any other"
        },
    )

    group_by_modality_length: bool = field(
        default=False,
        metadata={"help": "LLaVA-NeXT's batching: image and text-only records in separate batches (each step one "
                  "modality on every process), shuffled by the run's seed and the epoch", "group": LLAVA_NEXT_GROUP},
    )  # fmt: skip
    # LLaVA-NeXT's scripts were written for transformers 4.x: its spellings of two settings
    evaluation_strategy: str | None = field(
        default=None, metadata={"help": "transformers 4's name for --eval_strategy (the same setting)",
                                "group": LLAVA_NEXT_GROUP},
    )  # fmt: skip
    warmup_ratio: float | None = field(
        default=None, metadata={"help": "the share of the steps spent warming up: --warmup_steps as a ratio (0..1)",
                                "group": LLAVA_NEXT_GROUP},
    )  # fmt: skip

    def __post_init__(self) -> None:
        if self.deepspeed and importlib.util.find_spec("deepspeed") is None:
            raise LlavaConfigError(
                "--deepspeed needs DeepSpeed, which is not installed: pip install 'crossgraft[deepspeed]'"
            )
        if self.deepspeed and not any(name in os.environ for name in LAUNCHER_VARIABLES):
            as_one_process_launch()  # `crossgraft llava train --deepspeed …` without torchrun or deepspeed
        if cpu_only() and "DS_ACCELERATOR" not in os.environ:
            os.environ["DS_ACCELERATOR"] = "cpu"  # what DeepSpeed picks here anyway, without a warning that it did
        if self.evaluation_strategy is not None:  # before TrainingArguments reads eval_strategy
            self.eval_strategy = self.evaluation_strategy
        if self.warmup_ratio is not None:
            if not 0 <= self.warmup_ratio < 1:
                raise LlavaConfigError(f"--warmup_ratio must lie in [0, 1), got {self.warmup_ratio}")
            if self.warmup_steps:
                raise LlavaConfigError("--warmup_ratio and --warmup_steps say the same thing twice: give one of them")
            self.warmup_steps = self.warmup_ratio  # transformers 5 reads a warmup_steps below 1 as a ratio
        super().__post_init__()
        if self.throughput_log_steps < 0:
            raise LlavaConfigError(f"--throughput_log_steps must be >= 0 (0: off), got {self.throughput_log_steps}")
        for name in ("xattn_gate_lr", "mm_projector_lr", "mm_vision_tower_lr"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise LlavaConfigError(f"--{name} must be a positive number, got {value}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate >= 0):
            raise LlavaConfigError(f"--learning_rate must be a finite number >= 0, got {self.learning_rate}")
        if self.model_max_length is not None and self.model_max_length < 1:
            raise LlavaConfigError(f"--model_max_length must be at least 1, got {self.model_max_length}")
        if self.lora_r < 1 or self.lora_alpha <= 0 or not 0 <= self.lora_dropout < 1:
            raise LlavaConfigError(
                f"LoRA needs --lora_r >= 1, --lora_alpha > 0 and 0 <= --lora_dropout < 1, got {self.lora_r}, "
                f"{self.lora_alpha}, {self.lora_dropout}"
            )
        if self.merge_lora and not self.lora_enable:
            raise LlavaConfigError("--merge_lora merges LoRA adapters; it needs --lora_enable")

    @cached_property
    def _setup_devices(self) -> torch.device:
        """Several processes on a machine without a GPU (a launcher set LOCAL_RANK): transformers and accelerate find
        no GPU backend and give each process a one-process state, so every process would train alone as process 0.
        Without DeepSpeed the processes run as --use_cpu runs them (accelerate's MULTI_CPU over gloo). With DeepSpeed
        (its cpu accelerator, which does join every process: DeepSpeed refused the batch size resolved for one) the
        state is accelerate's DeepSpeed state over gloo, as it is over NCCL on GPUs. Everything else is
        transformers' own."""
        if not (cpu_only() and int(os.environ.get("LOCAL_RANK", -1)) != -1):
            return super()._setup_devices
        if not self.deepspeed:
            self.use_cpu = True
            return super()._setup_devices
        from accelerate.state import AcceleratorState, PartialState

        AcceleratorState._reset_state(reset_partial_state=True)
        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"  # as transformers does: accelerate reads it while it sets up
        try:
            self.distributed_state = PartialState(backend="gloo", timeout=timedelta(seconds=self.ddp_timeout))
        finally:
            del os.environ["ACCELERATE_USE_DEEPSPEED"]
        self._n_gpu = 1  # one device per process, as under DeepSpeed on GPUs
        return self.distributed_state.device


def cpu_only() -> bool:
    """No GPU or other accelerator that torch knows of: DeepSpeed runs on its CPU accelerator, over gloo."""
    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6
    if accelerator is None:
        return not torch.cuda.is_available()
    try:
        return accelerator.current_accelerator() is None
    except RuntimeError:  # torch 2.6 raises when there is none
        return True


# what torchrun, `deepspeed`, `accelerate launch` or an MPI launcher set in each process they start
LAUNCHER_VARIABLES = ("LOCAL_RANK", "RANK", "WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


def as_one_process_launch() -> None:
    """The variables a launcher sets, for one process on this machine (DeepSpeed would otherwise look for MPI)."""
    import socket

    os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"})
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:  # a port nothing listens on now
            probe.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(probe.getsockname()[1])
