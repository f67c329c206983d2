"""Every setting of the LLaVA family, as typed configs: the model, data and training arguments of a training run
(`train_alternating` / `crossgraft llava train`: every Hugging Face `TrainingArguments` flag plus the seed's and
LLaVA-NeXT's own), and one config per other command. The command line is generated from them; the Python API
(`crossgraft.llava.train.train`) takes them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crossgraft.limits import MAX_PIXELS_HELP
from crossgraft.llava.constants import (
    ASPECT_RATIO_HELP,
    DEFAULT_SKIP_PREFIXES,
    DTYPE_NAMES,
    LLAVA_NEXT_GROUP,
    SUPPORTED_ATTENTION,
    TINY_TYPES,
    XATTN_MODES,
    LlavaConfigError,
    check_aspect_ratio,
)

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."  # LLaVA-NeXT's qwen_1_5 template
TUNABLE_PARTS = ("mm_vision_tower", "mm_mlp_adapter", "mm_language_model")  # LLaVA-NeXT's names


QWEN_TEMPLATES = ("qwen_1_5", "qwen_2", "chatml_direct")  # LLaVA-NeXT's names for the ChatML template


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
            "help": "comma-separated parameter prefixes never copied from the backbone (also matched after 'model.'). "
            "The default keeps a LLaVA backbone's projector; 'mm_projector,vision_resampler' re-initialises it, as "
            "the seed's wrapper did"
        },
    )
    vision_tower: str | None = field(
        default=None,
        metadata={
            "help": "SigLIP tower for a model built from a bare Qwen2 LM: a folder or Hub id with SigLIP weights "
            "(google/siglip-so400m-patch14-384 for OneVision). Its weights are copied into the tower, layers past "
            "mm_vision_select_layer dropped as LLaVA-NeXT does. Without it the tower stays random, and the log and "
            "--inspect_weights say so"
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
            "help": "eager, sdpa or flex_attention (flash_attention_2 cannot express the alternating masks)",
            "choices": list(SUPPORTED_ATTENTION),
        },
    )
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "default: the model (or backbone) folder"}
    )
    mm_tunable_parts: str = field(
        default="mm_mlp_adapter,mm_language_model",
        metadata={
            "help": "comma-separated parts to train: mm_vision_tower, mm_mlp_adapter (the projector), "
            "mm_language_model. Gated cross-attention blocks are always trained"
        },
    )

    # LLaVA-NeXT's training scripts pass these; each is checked against the checkpoint (see llava/train.py)
    version: str | None = field(
        default=None,
        metadata={"help": "LLaVA-NeXT's conversation template: crossgraft uses Qwen's chat template, so qwen_1_5, "
                  "qwen_2 or chatml_direct (OneVision's) are accepted and others refused", "group": LLAVA_NEXT_GROUP},
    )  # fmt: skip
    mm_projector_type: str | None = field(
        default=None,
        metadata={"help": "must be the checkpoint's projector (mlp2x_gelu, the only one crossgraft builds)",
                  "group": LLAVA_NEXT_GROUP},
    )  # fmt: skip
    mm_vision_select_layer: int | None = field(
        default=None, metadata={"help": "must be the checkpoint's (OneVision: -2)", "group": LLAVA_NEXT_GROUP}
    )
    mm_patch_merge_type: str | None = field(
        default=None,
        metadata={"help": "must be the checkpoint's (OneVision: spatial_unpad)", "group": LLAVA_NEXT_GROUP},
    )
    mm_use_im_start_end: bool = field(
        default=False,
        metadata={"help": "image start/end tokens: not supported, so only False", "group": LLAVA_NEXT_GROUP},
    )
    mm_use_im_patch_token: bool = field(
        default=False,
        metadata={"help": "the <im_patch> token: not supported, so only False", "group": LLAVA_NEXT_GROUP},
    )

    def __post_init__(self) -> None:
        if self.version is not None and self.version not in QWEN_TEMPLATES:
            raise LlavaConfigError(
                f"--version {self.version}: crossgraft formats conversations with Qwen's chat template "
                f"({', '.join(QWEN_TEMPLATES)}); another template would change what the model is trained on"
            )
        if self.mm_use_im_start_end or self.mm_use_im_patch_token:
            raise LlavaConfigError(
                "--mm_use_im_start_end / --mm_use_im_patch_token True add image tokens that OneVision checkpoints do "
                "not have; crossgraft supports only False (as OneVision's scripts pass)"
            )
        variants = ("auto", "alternating", "alternating_cross", "base")
        if self.variant not in variants:
            raise LlavaConfigError(f"--variant must be one of {', '.join(variants)}, got {self.variant!r}")
        if self.xattn_mode not in XATTN_MODES:
            raise LlavaConfigError(f"--xattn_mode must be one of {', '.join(XATTN_MODES)}, got {self.xattn_mode!r}")
        if self.xattn_every_n_layers < 1:
            raise LlavaConfigError(f"--xattn_every_n_layers must be at least 1, got {self.xattn_every_n_layers}")
        unknown = set(self.tunable_parts) - set(TUNABLE_PARTS)
        if unknown:
            raise LlavaConfigError(
                f"unknown --mm_tunable_parts {', '.join(sorted(unknown))}; choose from {', '.join(TUNABLE_PARTS)}"
            )

    @property
    def tunable_parts(self) -> list[str]:
        return [part.strip() for part in self.mm_tunable_parts.split(",") if part.strip()]


@dataclass
class DataArguments:
    data_path: str | None = field(
        default=None,
        metadata={
            "help": "LLaVA-format records: a .json list, a .jsonl file, several files as "
            "'dir/{a,b}.json', or a .yaml file with a 'datasets:' list of {json_path, sampling_strategy} "
            "(first:N, end:N, random:N, with N a count or a percentage such as 10%%)."
        },
    )
    eval_data_path: str | None = field(
        default=None,
        metadata={"help": "held-out records in any --data_path format, for --eval_strategy (eval_loss in the logs)"},
    )
    image_folder: str | None = field(
        default=None,
        metadata={"help": "folder the records' relative 'image' paths start from (default: the data file's folder)"},
    )
    image_aspect_ratio: str | None = field(
        default=None,
        metadata={
            "help": "how images become tiles: pad (pasted onto a square of the mean colour, LLaVA's expand2square), "
            "square (resized), or anyres / anyres_max_N (a base tile plus a grid of tiles chosen from "
            "--image_grid_pinpoints, unpadded, with one image_newline per row; anyres_max_N shrinks the grid's "
            "features to about N tiles, OneVision: anyres_max_9). Default: the model config's. Samples with several "
            "images get one padded tile per image, as in LLaVA-NeXT. The saved config.json records the choice"
        },
    )
    image_grid_pinpoints: str | None = field(
        default=None,
        metadata={
            "help": "anyres resolutions: '(1x1),...,(6x6)' (tile counts, OneVision's) or a list of [width, height] "
            "pixel pairs such as '[[384,768],[768,384]]'. Default: the model config's"
        },
    )
    system_prompt: str = field(
        default=DEFAULT_SYSTEM_PROMPT, metadata={"help": "system turn of the Qwen chat template"}
    )
    data_sampling_seed: int = field(default=0, metadata={"help": "seed of 'random:N' sampling in yaml lists"})
    label_mode: str = field(
        default="answers",
        metadata={
            "help": "what is learned: answers (each assistant answer and its <|im_end|>) or llava_next (exactly what "
            "LLaVA-NeXT's preprocess_qwen learns: whole assistant turns with their role headers, plus every newline, "
            "<|im_start|> and <|im_end|> token), so a loss compares with LLaVA-NeXT's numbers",
            "choices": ["answers", "llava_next"],
        },
    )
    keep_image_position: bool = field(
        default=False,
        metadata={
            "help": "keep a turn's single <image> where the text puts it; by default it is moved to the start of "
            "its turn (<image>\\n + text), as LLaVA-NeXT's preprocess_multimodal does"
        },
    )
    max_image_pixels: int | None = field(default=None, metadata={"help": MAX_PIXELS_HELP})
    video_folder: str | None = field(
        default=None,
        metadata={"help": "LLaVA-NeXT's video root: accepted with no effect (video records are refused)",
                  "group": LLAVA_NEXT_GROUP},
    )  # fmt: skip
    frames_upbound: int | None = field(
        default=None,
        metadata={"help": "LLaVA-NeXT's video frame cap: accepted with no effect (video records are refused)",
                  "group": LLAVA_NEXT_GROUP},
    )  # fmt: skip
    lazy_preprocess: bool = field(
        default=True,
        metadata={"help": "LLaVA-NeXT's lazy tokenisation: crossgraft always tokenises each sample when it is used",
                  "group": LLAVA_NEXT_GROUP},
    )  # fmt: skip

    def __post_init__(self) -> None:
        if self.image_aspect_ratio is not None:
            check_aspect_ratio(self.image_aspect_ratio)
        if self.max_image_pixels is not None and self.max_image_pixels < 1:
            raise LlavaConfigError(f"--max_image_pixels must be positive, got {self.max_image_pixels}")
        if self.label_mode not in ("answers", "llava_next"):
            raise LlavaConfigError(f"--label_mode must be answers or llava_next, got {self.label_mode!r}")


@dataclass
class MakeSampleConfig:
    """`make-sample`: a tiny LAION-style image-caption set in LLaVA format."""

    out: Path = field(metadata={"help": "folder to write"})
    count: int = field(default=12, metadata={"help": "number of image-caption records (the training file)"})
    heldout: int = field(
        default=0,
        metadata={"help": "also write this many other records to OUT/held_out.json (ids disjoint from the training "
                  "file's), for `evaluate`"},
    )  # fmt: skip
    seed: int = field(default=0, metadata={"help": "the same seed writes the same sample"})

    def __post_init__(self) -> None:
        if self.count < 1 or self.heldout < 0:
            raise LlavaConfigError(f"--count must be >= 1 and --heldout >= 0, got {self.count} and {self.heldout}")


@dataclass
class MakeTinyConfig:
    """`make-tiny`: a tiny random checkpoint (config.json, model.safetensors, tokenizer)."""

    out: Path = field(metadata={"help": "folder to write"})
    model_type: str = field(default="llava_qwen", metadata={"help": "which model", "choices": list(TINY_TYPES)})
    seed: int = field(default=0, metadata={"help": "weights seed"})


@dataclass
class PlotRunsConfig:
    """`plot-runs`: loss and throughput curves of one or several runs on one figure."""

    runs: list[str] = field(
        metadata={
            "help": "[NAME=]PATH of each run: its --output_dir (the finished run's trainer_state.json, else its latest "
            "checkpoint's) or a trainer_state.json; NAME labels it (default: the folder's name)",
            "positional": True,
        }
    )
    out: Path = field(default=Path("training_curves"), metadata={"help": "file stem: writes OUT.png and OUT.svg"})


@dataclass
class DemoConfig:
    """`demo`: the four variants trained identically from one tiny backbone, compared on held-out captions."""

    out: Path = field(default=Path("runs/llava-demo"), metadata={"help": "folder to write"})
    steps: int = field(default=200, metadata={"help": "optimizer steps per variant"})
    count: int = field(default=48, metadata={"help": "records in the generated sample"})
    seed: int = field(default=0, metadata={"help": "seed of the data, the backbone and training"})


MISSING_ANSWER_ACTIONS = ("refuse", "skip")


@dataclass
class EvaluateConfig:
    """`evaluate`: generation and teacher-forced loss of one run on held-out records in LLaVA format."""

    model_name_or_path: str = field(metadata={"help": "a trained run (its --output_dir) or any LLaVA checkpoint"})
    data_path: str = field(metadata={"help": "held-out records, in any --data_path format of `train`"})
    out: Path | None = field(
        default=None,
        metadata={"help": "folder to write (default: MODEL/evaluation/DATA, DATA the data file's name without suffix)"},
    )
    image_folder: str | None = field(
        default=None, metadata={"help": "folder the records' relative image paths start from (default: the data's)"}
    )
    image_aspect_ratio: str | None = field(
        default=None, metadata={"help": f"{ASPECT_RATIO_HELP} (default: the model config's, as in training)"}
    )
    image_grid_pinpoints: str | None = field(
        default=None, metadata={"help": "anyres resolutions, as for train (default: the model config's)"}
    )
    system_prompt: str = field(default=DEFAULT_SYSTEM_PROMPT, metadata={"help": "system turn of the chat template"})
    batch_size: int = field(default=8, metadata={"help": "records per batch"})
    max_new_tokens: int = field(default=64, metadata={"help": "longest generated answer"})
    do_sample: bool = field(default=False, metadata={"help": "sample instead of greedy decoding"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature (with --do_sample)"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling mass (with --do_sample)"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})
    missing_answers: str = field(
        default="refuse",
        metadata={
            "help": "records without a gpt answer: refuse (stop, naming them) or skip (leave them out, named in the "
            "summary)",
            "choices": list(MISSING_ANSWER_ACTIONS),
        },
    )
    attn_implementation: str = field(
        default="sdpa", metadata={"help": "eager, sdpa or flex_attention", "choices": list(SUPPORTED_ATTENTION)}
    )
    max_image_pixels: int | None = field(default=None, metadata={"help": MAX_PIXELS_HELP})

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise LlavaConfigError("--batch_size and --max_new_tokens must be at least 1")
        if self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise LlavaConfigError(
                f"--temperature must be > 0 and --top_p in (0, 1], got {self.temperature}, {self.top_p}"
            )
        if self.missing_answers not in MISSING_ANSWER_ACTIONS:
            raise LlavaConfigError(f"--missing_answers must be refuse or skip, got {self.missing_answers!r}")
        if self.image_aspect_ratio is not None:
            check_aspect_ratio(self.image_aspect_ratio)

    def generation_settings(self) -> dict[str, object]:
        """What decides the generated answers besides the model; evaluations to compare must share it."""
        return {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": self.do_sample,
            "temperature": self.temperature if self.do_sample else None,
            "top_p": self.top_p if self.do_sample else None,
            "seed": self.seed if self.do_sample else None,
            "system_prompt": self.system_prompt,
        }


@dataclass
class LlavaCompareConfig:
    """`compare`: metric differences between runs evaluated on the same held-out records."""

    runs: list[str] = field(
        metadata={
            "help": "NAME=PATH[,PATH…] per variant, the first is the reference. PATH: an `evaluate` folder, or a run "
            "whose MODEL/evaluation holds one (or the one for --data_path). Several paths: seeds of one variant",
            "positional": True,
        }
    )
    data_path: str | None = field(
        default=None,
        metadata={"help": "held-out records: runs not yet evaluated on them are evaluated first (default settings)"},
    )
    out: Path | None = field(default=None, metadata={"help": "folder for compare.txt / compare.json"})
    seed: int = field(default=0, metadata={"help": "bootstrap seed"})


@dataclass
class MergeLoraConfig:
    """`merge-lora`: a LoRA run's adapters merged into its base, written as an ordinary checkpoint."""

    out: Path = field(metadata={"help": "folder to write (new or empty)", "positional": True})
    model_name_or_path: str = field(
        metadata={"help": "the LoRA run (its --output_dir) or one of its checkpoint-N folders"}
    )


@dataclass
class LlavaExportConfig:
    """`export`: a run as a checkpoint folder another codebase loads."""

    out: Path = field(
        metadata={
            "help": "folder to write. LLaVA-NeXT's builder picks the class from this name: it must contain "
            "'llava' and 'qwen' (plus 'with_alternating_attn' or 'with_alternating_cross_attn' for those variants); "
            "a name that would load the wrong class is refused with one that works",
            "positional": True,
        }
    )
    model_name_or_path: str = field(metadata={"help": "the run (its --output_dir) or checkpoint to export"})
    to: str = field(
        default="llava-next",
        metadata={
            "help": "target: llava-next (LLaVA-NeXT and the alternating fork, mavleo96/LLaVA-Alternating-Attn)",
            "choices": ["llava-next"],
        },
    )
    dtype: str = field(
        default="keep",
        metadata={"help": "weights dtype of the export", "choices": ["keep", *DTYPE_NAMES]},
    )


def __getattr__(name: str) -> Any:
    """`AlternatingTrainingArguments` lives in `llava/training_args.py` (it extends transformers' TrainingArguments,
    which the other commands' help should not load); it is still importable from here."""
    if name == "AlternatingTrainingArguments":
        from crossgraft.llava.training_args import AlternatingTrainingArguments

        return AlternatingTrainingArguments
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
