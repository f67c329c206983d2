"""Every setting of the anomaly family, as typed configs.

The command line is generated from these dataclasses (`crossgraft anomaly COMMAND --help`: one flag per field,
help from the field's metadata), the Python API takes them, and a training run saves its `TrainConfig` as
`run_config.json`, from which `test`, `predict` and the diagnostics rebuild the model it trained. Values that
cannot work are refused (`ConfigError`) when a config is made, before anything is read or written.

- `DataConfig`: which images (a named dataset or a metadata file under a root, some classes): `load()`.
- `BackboneConfig`: which CLIP, at which image size: `load()`.
- `AdapterConfig`, `CrossAttentionConfig`: the model around the frozen CLIP (docs/aa-clip.md, docs/cross-attention.md).
- `QuirkConfig`: the public code's quirks, driven by `preset` and each overridable (docs/aa-clip.md).
- `TrainConfig`: a training run; `save_run_config` / `load_run_config` write and read it with what it resolved.
- one config per other command: `EvalConfig` (test), `PredictConfig`, `ExportConfig`, `ServeConfig`,
  `GradFlowConfig`, `AttentionMapsConfig`,
  `CompareConfig`, `DemoConfig`, `AblationConfig`, `MakeSyntheticConfig`, `InspectConfig`, `KShotConfig`,
  `FeaturesConfig`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from crossgraft.anomaly.catalog import default_data_root, get_spec
from crossgraft.args import config_to_dict
from crossgraft.errors import ConfigError
from crossgraft.limits import MAX_PIXELS_HELP, path_component

PAPER_CLIP = "openai/clip-vit-large-patch14-336"
PAPER_IMAGE_SIZE = 518  # AA-CLIP's run size for ViT-L/14 (37 x 37 patches)
TINY_CLIP = "tiny"
CLASS_DESCRIPTIONS_HELP = (
    "descriptions that replace class names in the prompts: json {class: description} or {dataset: {class: "
    "description}}, or the public AA-CLIP checkout (a folder) or its dataset/constants.py, whose REAL_NAMES table "
    "is read as data (never run); a per-dataset table gives the --dataset's descriptions"
)
VARIANTS = {  # variant -> (text cross-attention, image cross-attention)
    "base": (False, False),
    "text_cross_attn": (True, False),
    "image_cross_attn": (False, True),
    "cross_attn": (True, True),
}
Variant = Literal["base", "text_cross_attn", "image_cross_attn", "cross_attn"]
Device = str  # auto, cpu, cuda or cuda:N
DEVICE_HELP = "auto, cpu, cuda or cuda:N"
GeluKind = Literal["quick", "exact"]
VVMode = Literal["tokens", "batch", "alone"]  # V-V attention over tokens, across the batch axis, or each image alone


def _path(value: Path | str | None) -> Path | None:
    return None if value is None else Path(value)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _positive(name: str, value: float) -> None:
    _require(math.isfinite(value) and value > 0, f"--{name} must be a positive number, got {value}")


def _at_least(name: str, value: int, low: int) -> None:
    _require(value >= low, f"--{name} must be at least {low}, got {value}")


def _fraction(name: str, value: float) -> None:
    _require(math.isfinite(value) and 0 <= value <= 1, f"--{name} must lie in [0, 1], got {value}")


# ================================================================================================ parts
@dataclass
class DataConfig:
    """Which images: a named dataset (or a metadata file) under a root folder, optionally only some classes."""

    _argument_group_name = "data"

    dataset: str = field(
        default="synthetic",
        metadata={
            "help": "dataset name: MVTec, VisA, BTAD, MPDD, Brain, Liver, Retina, Colon_*, synthetic, custom "
            "(an MVTec-layout folder)"
        },
    )
    data_root: Path | None = field(
        default=None,
        metadata={
            "help": "folder that holds the dataset (default: the public code's data/ layout, e.g. data/mvtec_ad, "
            "data/VisA_20220922)"
        },
    )
    meta: Path | None = field(
        default=None,
        metadata={
            "help": "metadata file instead of the folder layout: the public AA-CLIP .jsonl (image_path, label, "
            "class_name, mask_path) or an AnomalyCLIP meta.json; paths relative to --data_root"
        },
    )
    classes: list[str] | None = field(default=None, metadata={"help": "only these classes (default: all)"})
    allow_missing_masks: bool = field(
        default=False, metadata={"help": "accept anomalous images without a mask (image-level evaluation only)"}
    )
    max_image_pixels: int | None = field(default=None, metadata={"help": MAX_PIXELS_HELP})

    def __post_init__(self) -> None:
        get_spec(self.dataset)  # an unknown name fails here, before anything else
        self.data_root, self.meta = _path(self.data_root), _path(self.meta)
        for name in self.classes or []:
            path_component(name, "--classes")
        if self.max_image_pixels is not None:
            _at_least("max_image_pixels", self.max_image_pixels, 1)

    @property
    def root(self) -> Path:
        """--data_root, or where the public code keeps this dataset."""
        return self.data_root if self.data_root is not None else default_data_root(self.dataset)

    @property
    def domain(self) -> str:
        return get_spec(self.dataset).domain

    def resolved(self) -> DataConfig:
        """The same selection with the default root written out (what a run folder records)."""
        return replace(self, data_root=self.root)


@dataclass
class BackboneConfig:
    """Which frozen CLIP, and the image size it runs at."""

    _argument_group_name = "backbone"

    clip: str = field(
        default=PAPER_CLIP,
        metadata={
            "help": "CLIP weights: a Hugging Face id or local directory (openai/clip-vit-large-patch14-336 is the "
            "paper's), an OpenAI-format .pt/.pth file (ViT-L-14-336px.pt), or 'tiny' (random, offline, for tests "
            "and demos)"
        },
    )
    tokenizer: str | None = field(
        default=None,
        metadata={"help": "CLIP tokenizer (HF id or directory); default: from --clip, or the OpenAI one for .pt files"},
    )
    img_size: int | None = field(
        default=None,
        metadata={
            "help": f"input side in pixels, a multiple of the patch size (default: {PAPER_IMAGE_SIZE} for real CLIPs, "
            "the preset's own size for tiny); positions are interpolated bicubically"
        },
    )

    def __post_init__(self) -> None:
        _require(self.img_size is None or self.img_size > 0, f"--img_size must be positive, got {self.img_size}")

    @property
    def image_size(self) -> int | None:
        """--img_size, else 518 for a real CLIP and the tiny preset's own size (None) for `tiny`."""
        if self.img_size is not None:
            return self.img_size
        return None if self.clip == TINY_CLIP else PAPER_IMAGE_SIZE


@dataclass
class AdapterConfig:
    """AA-CLIP's adapters (docs/aa-clip.md): the public train.py flags."""

    _argument_group_name = "model (the public train.py flags)"

    text_adapt_weight: float = field(default=0.1, metadata={"help": "λ of the text adapters' residual mix"})
    image_adapt_weight: float = field(default=0.1, metadata={"help": "λ of the image adapters' residual mix"})
    text_adapt_until: int = field(default=3, metadata={"help": "text adapters after text blocks 1..K"})
    image_adapt_until: int = field(default=6, metadata={"help": "image adapters after vision blocks 1..K"})
    relu: bool = field(default=False, metadata={"help": "LeakyReLU after seg_proj and det_proj"})
    surgery_until_layer: int | None = field(
        default=None,
        metadata={
            "help": "V-V attention in the last K-1 vision blocks (public default 20 = blocks 6..24 of ViT-L); "
            "default: from the first feature level on"
        },
    )

    def __post_init__(self) -> None:
        _fraction("text_adapt_weight", self.text_adapt_weight)
        _fraction("image_adapt_weight", self.image_adapt_weight)
        _at_least("text_adapt_until", self.text_adapt_until, 0)
        _at_least("image_adapt_until", self.image_adapt_until, 0)
        if self.surgery_until_layer is not None:
            _at_least("surgery_until_layer", self.surgery_until_layer, 2)

    def as_dict(self) -> dict[str, Any]:
        return config_to_dict(self)


CROSS_GROUP = "cross-attention variants and fair comparison (docs/cross-attention.md, seeds 000-003)"


@dataclass
class CrossAttentionConfig:
    """The cross-attention extension (docs/cross-attention.md). `base` is AA-CLIP itself."""

    _argument_group_name = CROSS_GROUP

    variant: Variant = field(
        default="base",
        metadata={
            "help": "base = AA-CLIP; text_cross_attn: prompts attend to their image's features after text block 1; "
            "image_cross_attn: image tokens attend to their class's sentence embeddings after vision block "
            "--image_adapt_until; cross_attn: both"
        },
    )
    text_cross_attn_weight: float = field(default=0.1, metadata={"help": "w_t in x + w_t * cross_attn(x)"})
    image_cross_attn_weight: float = field(
        default=0.1,
        metadata={"help": "w_i in x + w_i * cross_attn(x) (the output is first rescaled to the tokens' norm)"},
    )
    learnable_cross_attn_weight: bool = field(default=False, metadata={"help": "make w_t and w_i parameters"})
    cross_attn_heads: int = field(default=8, metadata={"help": "attention heads of both modules"})
    cross_attn_dropout: float = field(default=0.1, metadata={"help": "dropout on the attention weights"})
    image_norm_match: bool = field(
        default=True,
        metadata={
            "help": "rescale the image cross-attention output to the tokens' norm before adding it (seed 001's fix); "
            "--no_image_norm_match adds it unscaled, the state before the fix (a diagnostic)"
        },
    )

    def __post_init__(self) -> None:
        _require(self.variant in VARIANTS, f"unknown variant {self.variant!r}; choose one of {', '.join(VARIANTS)}")
        for name in ("text_cross_attn_weight", "image_cross_attn_weight"):
            _require(math.isfinite(getattr(self, name)), f"--{name} must be a finite number")
        _at_least("cross_attn_heads", self.cross_attn_heads, 1)
        _require(
            0 <= self.cross_attn_dropout < 1, f"--cross_attn_dropout must lie in [0, 1), got {self.cross_attn_dropout}"
        )

    @property
    def text(self) -> bool:
        """Whether the text side attends to the image (text_cross_attn, cross_attn)."""
        return VARIANTS[self.variant][0]

    @property
    def image(self) -> bool:
        """Whether the image side attends to the text (image_cross_attn, cross_attn)."""
        return VARIANTS[self.variant][1]

    def as_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    def run_folder_name(self) -> str:
        """The default run folder's name: `baseline` (the public code's) for the base model, else the variant and
        its cross-attention weights, e.g. `cross_attn_text0.1_image0.1` (`_learnable` when they are learned)."""
        if self.variant == "base":
            return "baseline"
        parts: list[str] = [self.variant]
        if self.text:
            parts.append(f"text{self.text_cross_attn_weight:g}")
        if self.image:
            parts.append(f"image{self.image_cross_attn_weight:g}")
        if self.learnable_cross_attn_weight:
            parts.append("learnable")
        return "_".join(parts)


@dataclass(frozen=True)
class Quirks:
    """What a run does about each of the public code's quirks (docs/quirks.md)."""

    vv_mode: VVMode  # 1: V-V attention across the batch axis ("batch") or over tokens
    stage1_last_level_only: bool  # 2: the stage-1 loss keeps only the last level
    stage1_image_loss: bool  # 3: an image-level loss in stage 1 (the public code has none)
    gelu: GeluKind  # 4: exact GELU (the public code) or CLIP's QuickGELU
    # 5: stage 1 trains on augmented images (the public code: flips, rotation, translation) or on the images as
    # they are, whose frozen features are then the same every epoch (what --cache_stage1_features needs)
    stage1_augment: bool = True


PRESETS = {
    "reference": Quirks(vv_mode="batch", stage1_last_level_only=True, stage1_image_loss=False, gelu="exact"),
    "fixed": Quirks(
        vv_mode="tokens", stage1_last_level_only=False, stage1_image_loss=True, gelu="quick", stage1_augment=False
    ),
}


@dataclass
class QuirkConfig:
    """`preset` sets every quirk; each flag below overrides its own one."""

    _argument_group_name = "fidelity: the public code's quirks (docs/quirks.md)"

    preset: Literal["reference", "fixed"] = field(
        default="reference",
        metadata={"help": "reference: every quirk on (reproduces the public code); fixed: every quirk off"},
    )
    vv_attention: Literal["batch", "tokens"] | None = field(
        default=None,
        metadata={"help": "quirk 1: V-V attention across the batch axis (reference) or over tokens (fixed)"},
    )
    stage1_levels: Literal["last", "all"] | None = field(
        default=None,
        metadata={"help": "quirk 2: stage-1 loss from the last level only (reference) or summed over levels"},
    )
    stage1_image_loss: Literal["on", "off"] | None = field(
        default=None, metadata={"help": "quirk 3: image-level loss in stage 1 (off in reference, on in fixed)"}
    )
    gelu: Literal["exact", "quick"] | None = field(
        default=None, metadata={"help": "quirk 4: exact GELU (reference) or CLIP's QuickGELU (fixed)"}
    )
    stage1_augment: Literal["on", "off"] | None = field(
        default=None,
        metadata={
            "help": "quirk 5: stage-1 images augmented every epoch (on, reference) or used as they are (off, fixed: "
            "the frozen features are then the same every epoch, as --cache_stage1_features needs)"
        },
    )

    def __post_init__(self) -> None:
        _require(self.preset in PRESETS, f"unknown --preset {self.preset!r}; choose one of {', '.join(PRESETS)}")

    def resolve(self) -> Quirks:
        """The preset's quirks with this config's overrides."""
        preset = PRESETS[self.preset]
        return Quirks(
            vv_mode=self.vv_attention or preset.vv_mode,
            stage1_last_level_only=preset.stage1_last_level_only
            if self.stage1_levels is None
            else self.stage1_levels == "last",
            stage1_image_loss=preset.stage1_image_loss
            if self.stage1_image_loss is None
            else self.stage1_image_loss == "on",
            gelu=self.gelu or preset.gelu,
            stage1_augment=preset.stage1_augment if self.stage1_augment is None else self.stage1_augment == "on",
        )


# ============================================================================================ training
SCHEDULE = "schedule"
DEFAULT_RUNS = "ckpt"  # where training runs go without --save_path (the public code's folder)
EVAL_GROUP = "evaluation after each feedback round"


@dataclass(kw_only=True)
class TrainConfig:
    """A two-stage AA-CLIP training run (and its cross-attention variants): what `run_config.json` records."""

    data: DataConfig = field(default_factory=lambda: DataConfig(dataset="VisA"))
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    save_path: Path = field(  # type: ignore[assignment]  # None until __post_init__ names the default folder
        default=None,
        metadata={
            "help": f"run folder for checkpoints and logs (default: {DEFAULT_RUNS}/baseline for the base model, as the "
            f"public code; {DEFAULT_RUNS}/VARIANT_textW_imageW for a cross-attention variant, e.g. "
            f"{DEFAULT_RUNS}/cross_attn_text0.1_image0.1)",
            "group": SCHEDULE,
        },
    )
    shot: int = field(
        default=32,
        metadata={"help": "k-shot: k/2 normal + k/2 anomalous images per class", "group": SCHEDULE},
    )
    full_shot: bool = field(
        default=False, metadata={"help": "train on every image (--shot is then not used)", "group": SCHEDULE}
    )
    training_mode: Literal["few_shot", "full_shot"] = field(
        default="few_shot", metadata={"help": "the public code's switch; full_shot = --full_shot", "group": SCHEDULE}
    )
    text_epoch: int = field(default=5, metadata={"help": "stage-1 epochs", "group": SCHEDULE})
    image_epoch: int = field(
        default=20, metadata={"help": "stage-2 epochs (the paper reports epoch 15)", "group": SCHEDULE}
    )
    text_lr: float = field(
        default=1e-5, metadata={"help": "stage-1 Adam learning rate (betas 0.5, 0.999)", "group": SCHEDULE}
    )
    image_lr: float = field(
        default=5e-4, metadata={"help": "stage-2 Adam learning rate (betas 0.5, 0.999)", "group": SCHEDULE}
    )
    text_batch_size: int = field(default=16, metadata={"help": "stage-1 batch size", "group": SCHEDULE})
    image_batch_size: int = field(default=2, metadata={"help": "stage-2 batch size", "group": SCHEDULE})
    milestones: list[int] = field(
        default_factory=lambda: [16000, 32000],
        metadata={"help": "stage-2 MultiStepLR milestones in iterations", "group": SCHEDULE},
    )
    gamma: float = field(
        default=0.5, metadata={"help": "stage-2 learning-rate factor at each milestone", "group": SCHEDULE}
    )
    text_norm_weight: float = field(
        default=0.1, metadata={"help": "weight of the anchors' orthogonality loss", "group": SCHEDULE}
    )
    seed: int = field(
        default=111, metadata={"help": "seed of the k-shot draw, shuffling and augmentation", "group": SCHEDULE}
    )
    resume: bool = field(
        default=False,
        metadata={
            "help": "continue the run in --save_path from its last checkpoints; settings must be the run's own, "
            "except text_epoch/image_epoch (to extend it), data_root, devices and workers, evaluation",
            "group": SCHEDULE,
        },
    )
    num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes", "group": SCHEDULE})
    cache_stage1_features: bool = field(
        default=False,
        metadata={
            "help": "compute each training image's frozen stage-1 features once and reuse them in every text epoch "
            "(a memory-mapped file in the run folder, removed after stage 1). Needs --stage1_augment off and "
            "--vv_attention tokens (both in --preset fixed): otherwise an image's features change every epoch",
            "group": SCHEDULE,
        },
    )
    stage1_cache_dtype: Literal["float16", "float32"] = field(
        default="float16",
        metadata={"help": "precision of the cached stage-1 features (float16 halves the file)", "group": SCHEDULE},
    )
    device: Device = field(default="auto", metadata={"help": DEVICE_HELP, "group": SCHEDULE})
    mixed_precision: Literal["no", "bf16", "fp16"] = field(
        default="no",
        metadata={"help": "autocast precision on GPU (the frozen CLIP stays in its own dtype)", "group": SCHEDULE},
    )
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    class_descriptions: Path | None = field(
        default=None, metadata={"help": CLASS_DESCRIPTIONS_HELP, "group": AdapterConfig._argument_group_name}
    )
    quirks: QuirkConfig = field(default_factory=QuirkConfig)
    cross: CrossAttentionConfig = field(default_factory=CrossAttentionConfig)
    load_base_text_adapter: Path | None = field(
        default=None,
        metadata={
            "help": "start from a trained base model's text_adapter.pth (public code's or ours)",
            "group": CROSS_GROUP,
        },
    )
    load_base_image_adapter: Path | None = field(
        default=None,
        metadata={
            "help": "start from a trained base model's image_adapter[_N].pth (public code's or ours)",
            "group": CROSS_GROUP,
        },
    )
    num_feedback_loops: int = field(
        default=1,
        metadata={
            "help": "rounds of stage 1 -> stage 2; later rounds take stage 1's visual features from the adapted "
            "image encoder of the previous round",
            "group": CROSS_GROUP,
        },
    )
    eval_each_loop: bool = field(
        default=False, metadata={"help": "evaluate after every round (metrics in the log)", "group": EVAL_GROUP}
    )
    eval_dataset: str | None = field(
        default=None, metadata={"help": "dataset for --eval_each_loop (default: --dataset)", "group": EVAL_GROUP}
    )
    eval_data_root: Path | None = field(
        default=None, metadata={"help": "its root (default: --data_root)", "group": EVAL_GROUP}
    )
    eval_classes: list[str] | None = field(
        default=None, metadata={"help": "its classes (default: all)", "group": EVAL_GROUP}
    )

    def __post_init__(self) -> None:
        if self.save_path is None:
            self.save_path = Path(DEFAULT_RUNS) / self.cross.run_folder_name()
        self.save_path = Path(self.save_path)
        for name in ("class_descriptions", "load_base_text_adapter", "load_base_image_adapter", "eval_data_root"):
            setattr(self, name, _path(getattr(self, name)))
        if self.k_shot is not None:
            _require(
                self.shot >= 2 and self.shot % 2 == 0,
                "--shot must be an even number >= 2 (half normal, half anomalous); for every image use --full_shot, "
                f"got {self.shot}",
            )
        _at_least("text_epoch", self.text_epoch, 0)
        _at_least("image_epoch", self.image_epoch, 0)
        _positive("text_lr", self.text_lr)
        _positive("image_lr", self.image_lr)
        _at_least("text_batch_size", self.text_batch_size, 1)
        _at_least("image_batch_size", self.image_batch_size, 1)
        _require(all(m > 0 for m in self.milestones), f"--milestones must be positive, got {self.milestones}")
        _positive("gamma", self.gamma)
        _require(
            math.isfinite(self.text_norm_weight) and self.text_norm_weight >= 0,
            f"--text_norm_weight must be >= 0, got {self.text_norm_weight}",
        )
        _at_least("num_workers", self.num_workers, 0)
        _at_least("num_feedback_loops", self.num_feedback_loops, 1)
        if self.cache_stage1_features:
            quirks = self.quirks.resolve()
            _require(
                not quirks.stage1_augment and quirks.vv_mode != "batch",
                "--cache_stage1_features would reuse stale features: "
                + " and ".join(
                    reason
                    for reason, applies in (
                        (
                            "stage-1 augmentation is on (each epoch sees other pixels; add --stage1_augment off)",
                            quirks.stage1_augment,
                        ),
                        (
                            "V-V attention runs across the batch axis (an image's features depend on its batch-mates; "
                            "add --vv_attention tokens)",
                            quirks.vv_mode == "batch",
                        ),
                    )
                    if applies
                )
                + ". --preset fixed sets both",
            )
        if self.eval_dataset is not None:
            get_spec(self.eval_dataset)

    @property
    def k_shot(self) -> int | None:
        """Images per class to draw, or None for every image (--full_shot, --training_mode full_shot)."""
        return None if self.full_shot or self.training_mode == "full_shot" else self.shot

    @property
    def variant(self) -> str:
        return self.cross.variant


# ===================================================================================== other commands
RUN_FOLDER_HELP = "the training run folder"
EPOCH_HELP = "use image_adapter_{epoch}.pth (default: the latest image_adapter.pth)"


@dataclass(kw_only=True)
class EvalConfig:
    """`test`: evaluate one checkpoint of a trained run on a dataset's test split."""

    data: DataConfig = field(default_factory=lambda: DataConfig(dataset="MVTec"))
    save_path: Path = field(metadata={"help": RUN_FOLDER_HELP})
    epoch: int | None = field(default=None, metadata={"help": EPOCH_HELP})
    batch_size: int = field(default=8, metadata={"help": "images per forward pass (results do not depend on it)"})
    visualize: bool = field(
        default=False,
        metadata={
            "help": "write a panel per image (image | ground truth | anomaly map | overlay, with score, verdict "
            "and colour scale) under OUT/visualize/CLASS, and a contact sheet per class (OUT/visualize/CLASS_sheet.png)"
        },
    )
    plots: bool = field(
        default=True,
        metadata={
            "help": "write the image/pixel ROC and PR curves and the PRO curve per class and for the mean, and a "
            "bar chart of the metrics per class, as PNG and SVG under OUT/plots (--no_plots: skip them)"
        },
    )
    pro_compat: bool = field(
        default=False, metadata={"help": "also report the 200-threshold AUPRO of AnomalyCLIP papers"}
    )
    class_descriptions: Path | None = field(
        default=None, metadata={"help": "instead of the descriptions the run recorded: " + CLASS_DESCRIPTIONS_HELP}
    )
    out: Path | None = field(
        default=None, metadata={"help": "results folder (default: SAVE_PATH/test_DATASET[_epochN])"}
    )
    device: Device = field(default="auto", metadata={"help": DEVICE_HELP})
    num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes"})

    def __post_init__(self) -> None:
        self.save_path = Path(self.save_path)
        self.class_descriptions, self.out = _path(self.class_descriptions), _path(self.out)
        _at_least("batch_size", self.batch_size, 1)
        _at_least("num_workers", self.num_workers, 0)

    @property
    def results_dir(self) -> Path:
        suffix = f"_epoch{self.epoch}" if self.epoch is not None else ""
        return self.out or self.save_path / f"test_{get_spec(self.data.dataset).name}{suffix}"


@dataclass(kw_only=True)
class RunOnImagesConfig:
    """New images through a trained run: what `predict` and `attention-maps` share."""

    inputs: Path = field(
        metadata={"help": "an image file or a folder of images (searched recursively)", "positional": True}
    )
    class_name: str = field(default="object", metadata={"help": "what the images show (goes into the prompts)"})
    epoch: int | None = field(default=None, metadata={"help": EPOCH_HELP})
    class_descriptions: Path | None = field(
        default=None, metadata={"help": "instead of the descriptions the run recorded: " + CLASS_DESCRIPTIONS_HELP}
    )
    out: Path | None = None  # each command says where its outputs go by default
    device: Device = field(default="auto", metadata={"help": DEVICE_HELP})
    max_image_pixels: int | None = field(default=None, metadata={"help": MAX_PIXELS_HELP})

    def __post_init__(self) -> None:
        self.inputs, self.out = Path(self.inputs), _path(self.out)
        path_component(self.class_name, "--class_name")
        self.class_descriptions = _path(self.class_descriptions)
        if self.max_image_pixels is not None:
            _at_least("max_image_pixels", self.max_image_pixels, 1)


ENGINE_HELP = (
    "what runs the model: torch (a training run, --save_path: any class name), onnxruntime or openvino (an export, "
    "--model: its classes); auto picks torch for a run and the export's own format for an export"
)
MODEL_HELP = "an export folder (`crossgraft anomaly export`) instead of a training run"
THREADS_HELP = "CPU threads of the onnxruntime / openvino engine (default: all cores)"


def _split_names(names: list[str]) -> list[str]:
    """--class_name a,b c: every name, commas and spaces both separating."""
    return [name.strip() for entry in names for name in entry.split(",") if name.strip()]


@dataclass(kw_only=True)
class PredictConfig(RunOnImagesConfig):
    """`predict`: heat maps and anomaly scores for new images with a trained run or an export."""

    save_path: Path | None = field(default=None, metadata={"help": RUN_FOLDER_HELP + " (or --model)"})
    model: Path | None = field(default=None, metadata={"help": MODEL_HELP})
    engine: Literal["auto", "torch", "onnxruntime", "openvino"] = field(default="auto", metadata={"help": ENGINE_HELP})
    threads: int | None = field(default=None, metadata={"help": THREADS_HELP})
    out: Path | None = field(
        default=None, metadata={"help": "output folder (default: SAVE_PATH/predictions or MODEL/predictions)"}
    )
    threshold: float | None = field(default=None, metadata={"help": "image score above which an image is anomalous"})
    fit_on: Path | None = field(
        default=None, metadata={"help": "folder of normal images: the threshold becomes their highest score"}
    )
    domain: Literal["industrial", "medical"] = field(
        default="industrial", metadata={"help": "blur kernel of the maps (7/σ1 industrial, 9/σ1.5 medical)"}
    )
    batch_size: int = field(default=8, metadata={"help": "images per forward pass (results do not depend on it)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.save_path, self.model = _path(self.save_path), _path(self.model)
        self.fit_on = _path(self.fit_on)
        _at_least("batch_size", self.batch_size, 1)
        _require(
            self.threshold is None or self.fit_on is None, "give --threshold or --fit_on, not both: they contradict"
        )
        _require(
            (self.save_path is None) != (self.model is None),
            "give a training run (--save_path) or an export (--model), one of them",
        )
        if self.threads is not None:
            _at_least("threads", self.threads, 1)

    @property
    def out_dir(self) -> Path:
        folder = self.save_path if self.save_path is not None else self.model
        assert folder is not None
        return self.out or folder / "predictions"


@dataclass(kw_only=True)
class ExportConfig:
    """`export`: a trained run as one ONNX or OpenVINO graph (uint8 images in, anomaly map and scores out)."""

    save_path: Path = field(metadata={"help": RUN_FOLDER_HELP})
    class_name: list[str] = field(
        metadata={
            "help": "the classes the graph knows (its text side is computed now and stored in it): NAME[,NAME...]; "
            "any name works, trained or not (zero-shot)"
        }
    )
    out: Path = field(metadata={"help": "the export folder: model.onnx (or model.xml + .bin) and metadata.json"})
    epoch: int | None = field(default=None, metadata={"help": EPOCH_HELP})
    format: Literal["onnx", "openvino"] = field(
        default="onnx", metadata={"help": "onnx (ONNX Runtime, OpenVINO) or openvino (OpenVINO IR)"}
    )
    img_size: int | None = field(
        default=None,
        metadata={
            "help": "the graph's image side (default: the run's); a multiple of the patch size. Smaller is faster "
            "(ViT-L/14 at 336 instead of 518: about 2.5x) at some accuracy"
        },
    )
    quantize: Literal["none", "int8"] = field(
        default="none",
        metadata={
            "help": "int8: onnxruntime's dynamic quantisation of the matrix multiplications (weights int8, "
            "activations quantised per call; --format onnx only); none keeps fp32"
        },
    )
    fit_on: Path | None = field(
        default=None,
        metadata={
            "help": "normal images that fit each class's threshold (their highest score, stored in metadata.json): "
            "a folder of images with one --class_name, else a folder with one subfolder per class"
        },
    )
    class_descriptions: Path | None = field(
        default=None, metadata={"help": "instead of the descriptions the run recorded: " + CLASS_DESCRIPTIONS_HELP}
    )
    domain: Literal["industrial", "medical"] = field(
        default="industrial", metadata={"help": "blur kernel of the maps, fixed in the graph (7/σ1, 9/σ1.5)"}
    )
    batch_size: int = field(default=8, metadata={"help": "images per forward pass while fitting thresholds"})
    max_image_pixels: int | None = field(default=None, metadata={"help": MAX_PIXELS_HELP})

    def __post_init__(self) -> None:
        self.save_path, self.out = Path(self.save_path), Path(self.out)
        self.fit_on, self.class_descriptions = _path(self.fit_on), _path(self.class_descriptions)
        self.class_name = _split_names(self.class_name)
        _require(bool(self.class_name), "--class_name needs at least one class")
        for name in self.class_name:
            path_component(name, "--class_name")
        repeated = sorted({name for name in self.class_name if self.class_name.count(name) > 1})
        _require(not repeated, f"--class_name names {', '.join(repeated)} more than once")
        _require(
            self.quantize == "none" or self.format == "onnx",
            "--quantize int8 is onnxruntime's dynamic quantisation: use it with --format onnx",
        )
        _at_least("batch_size", self.batch_size, 1)
        if self.img_size is not None:
            _at_least("img_size", self.img_size, 1)


@dataclass(kw_only=True)
class ServeConfig:
    """`serve`: a web page (gradio) that runs a trained run or an export on uploaded images."""

    save_path: Path | None = field(
        default=None, metadata={"help": RUN_FOLDER_HELP + " (any class name: zero-shot; or --model)"}
    )
    model: Path | None = field(default=None, metadata={"help": MODEL_HELP + " (its classes only)"})
    engine: Literal["auto", "torch", "onnxruntime", "openvino"] = field(default="auto", metadata={"help": ENGINE_HELP})
    epoch: int | None = field(default=None, metadata={"help": EPOCH_HELP})
    class_descriptions: Path | None = field(
        default=None, metadata={"help": "instead of the descriptions the run recorded: " + CLASS_DESCRIPTIONS_HELP}
    )
    examples: Path | None = field(
        default=None,
        metadata={"help": "a folder of example images to offer on the page (default: a few of the run's test images)"},
    )
    threshold: float | None = field(
        default=None, metadata={"help": "the slider's starting threshold (default: the class's fitted one, if any)"}
    )
    fit_on: Path | None = field(
        default=None,
        metadata={
            "help": "a folder with one subfolder of normal images per class (FIT_ON/CLASS, any class name): each such "
            "class's threshold is fitted on it as predict --fit_on fits it (default: an export's fitted thresholds, or "
            "the normal images a training run trained on)"
        },
    )
    domain: Literal["industrial", "medical"] = field(
        default="industrial", metadata={"help": "blur kernel of the maps (7/σ1 industrial, 9/σ1.5 medical)"}
    )
    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on (0.0.0.0: every interface)"})
    port: int = field(default=7860, metadata={"help": "port to listen on"})
    max_upload_mb: float = field(
        default=20.0,
        metadata={
            "help": "larger uploads are refused with a message (the server drops uploads over twice this unread)"
        },
    )
    max_images: int = field(default=64, metadata={"help": "at most this many images in one gallery request"})
    request_seconds: float = field(
        default=120.0,
        metadata={"help": "a gallery request stops scoring after this many seconds and shows what it has"},
    )
    concurrency: int = field(
        default=1, metadata={"help": "requests the model runs at once; the others wait in the queue, in order"}
    )
    queue_size: int = field(
        default=64, metadata={"help": "requests that may wait; more are turned away with a 'busy' message"}
    )
    max_image_pixels: int | None = field(default=None, metadata={"help": MAX_PIXELS_HELP})
    device: Device = field(default="auto", metadata={"help": DEVICE_HELP})
    threads: int | None = field(default=None, metadata={"help": THREADS_HELP})

    def __post_init__(self) -> None:
        self.save_path, self.model = _path(self.save_path), _path(self.model)
        self.examples, self.class_descriptions = _path(self.examples), _path(self.class_descriptions)
        self.fit_on = _path(self.fit_on)
        _require(
            self.fit_on is None or self.fit_on.is_dir(),
            f"--fit_on {self.fit_on}: not a folder (it holds one subfolder of normal images per class)",
        )
        _require(
            (self.save_path is None) != (self.model is None),
            "give a training run (--save_path) or an export (--model), one of them",
        )
        for name in ("max_upload_mb", "max_images", "request_seconds", "concurrency", "queue_size"):
            _positive(name, getattr(self, name))
        _require(0 <= self.port <= 65535, f"--port must lie in 0..65535, got {self.port}")


@dataclass(kw_only=True)
class GradFlowConfig:
    """`grad-flow` (seed 001's test_stage2_gradients): image-adapter gradient norm with vs without cross-attention."""

    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    save_path: Path | None = field(
        default=None,
        metadata={"help": "a trained run to test (default: fresh adapters on --clip, random image cross-attention)"},
    )
    epoch: int | None = field(default=None, metadata={"help": "image checkpoint epoch of --save_path"})
    image_cross_attn_weight: float = field(default=0.1, metadata={"help": "w_i of a fresh model"})
    batch_size: int = field(default=2, metadata={"help": "images in the batch"})
    seed: int = field(default=0, metadata={"help": "picks the batch and the cross-attention init"})
    device: Device = field(default="auto", metadata={"help": DEVICE_HELP})

    def __post_init__(self) -> None:
        self.save_path = _path(self.save_path)
        _at_least("batch_size", self.batch_size, 1)


@dataclass(kw_only=True)
class AttentionMapsConfig(RunOnImagesConfig):
    """`attention-maps`: text->patch attention of chosen prompt words, as heat maps over the images."""

    save_path: Path = field(metadata={"help": RUN_FOLDER_HELP})

    out: Path | None = field(default=None, metadata={"help": "output folder (default: SAVE_PATH/attention_maps)"})
    words: list[str] = field(
        default_factory=lambda: ["damaged", "broken", "flaw", "defect", "damage"],
        metadata={"help": "prompt words whose attention to draw"},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.save_path = Path(self.save_path)

    @property
    def out_dir(self) -> Path:
        return self.out or self.save_path / "attention_maps"


@dataclass(kw_only=True)
class CompareConfig:
    """`compare`: per-class and mean metric deltas between runs tested on the same data."""

    runs: list[str] = field(
        metadata={
            "help": "results of each run: [NAME=]PATH or [NAME=]PATH1,PATH2,... (seeds); PATH is a results.json or "
            "a folder holding one; the first run is the reference",
            "positional": True,
        }
    )
    out: Path | None = field(
        default=None,
        metadata={
            "help": "also write here: compare.txt, compare.json, the forest plot of the mean differences with their "
            "95%% intervals (compare_forest.png/.svg) and each run's per-class differences (compare_classes_RUN)"
        },
    )
    seed: int = field(default=0, metadata={"help": "bootstrap seed"})

    def __post_init__(self) -> None:
        self.out = _path(self.out)
        _require(len(self.runs) >= 2, "compare needs at least two runs (the first is the reference)")


@dataclass
class PlotRunConfig:
    """`plot-run`: training curves of a run from its log."""

    run: Path = field(
        metadata={"help": "a run folder (holding train.log or train_cross_attention.log)", "positional": True}
    )
    out: Path | None = field(default=None, metadata={"help": "where training.png/.svg go (default: RUN/plots)"})

    def __post_init__(self) -> None:
        self.run, self.out = Path(self.run), _path(self.out)


@dataclass(frozen=True)
class SyntheticConfig:
    """What the synthetic generator writes; the same config writes the same images."""

    _argument_group_name = "synthetic data"

    classes: int = field(default=6, metadata={"help": "number of object/texture classes"})
    train_per_class: int = field(default=10, metadata={"help": "normal training images per class"})
    test_per_class: int = field(
        default=12, metadata={"help": "test images per class: half normal, the rest spread over scratch/spot/missing"}
    )
    size: int = field(default=128, metadata={"help": "image side in pixels"})
    seed: int = field(default=0, metadata={"help": "the same seed writes the same images"})

    def __post_init__(self) -> None:
        if self.classes < 1 or self.train_per_class < 0 or self.test_per_class < 2 or self.size < 32:
            raise ConfigError(
                "synthetic data needs --classes >= 1, --train_per_class >= 0, --test_per_class >= 2 (one good, one "
                f"defective) and --size >= 32; got {self.classes}, {self.train_per_class}, {self.test_per_class}, "
                f"{self.size}"
            )


DEMO_SYNTHETIC = SyntheticConfig(classes=8, train_per_class=2, test_per_class=16, size=128, seed=0)


@dataclass(kw_only=True)
class DemoConfig:
    """`demo`: the built-in default run (synthetic data, tiny CLIP, AA-CLIP trained and tested)."""

    out: Path = field(default=Path("runs/demo"), metadata={"help": "run folder (data, results, heat maps, log)"})
    clip: str = field(default=TINY_CLIP, metadata={"help": "CLIP weights (see `crossgraft anomaly features --help`)"})
    device: Device = field(default="auto", metadata={"help": DEVICE_HELP})
    text_epoch: int = field(default=2, metadata={"help": "stage-1 epochs (short schedule)"})
    image_epoch: int = field(default=8, metadata={"help": "stage-2 epochs (short schedule)"})
    synthetic: SyntheticConfig = field(default_factory=lambda: DEMO_SYNTHETIC)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        _at_least("text_epoch", self.text_epoch, 0)
        _at_least("image_epoch", self.image_epoch, 0)


@dataclass(kw_only=True)
class AblationConfig(DemoConfig):
    """`ablation-demo`: base vs cross_attn (initialised from base) on synthetic data, over seeds, compared."""

    out: Path = field(default=Path("runs/ablation"), metadata={"help": "run folder"})
    seeds: list[int] = field(default_factory=lambda: [111, 112], metadata={"help": "training seeds"})


@dataclass(kw_only=True)
class MakeSyntheticConfig:
    """`make-synthetic`: write a synthetic MVTec-layout dataset."""

    out: Path = field(metadata={"help": "folder to write the dataset into"})
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass(kw_only=True)
class InspectConfig:
    """`inspect-data`: read a dataset, check every file, count per class."""

    data: DataConfig = field(default_factory=DataConfig)
    split: str = field(default="test", metadata={"help": "which split to read (train or test)"})


@dataclass(kw_only=True)
class KShotConfig(InspectConfig):
    """`k-shot`: a seeded k-shot subset as jsonl."""

    shot: int = field(metadata={"help": "images per class, even: half normal, half anomalous"})
    seed: int = field(default=111, metadata={"help": "selection seed (per class: seed and class name)"})
    out: Path | None = field(
        default=None, metadata={"help": "jsonl to write (default: {dataset}_{shot}shot_seed{seed}.jsonl)"}
    )

    def __post_init__(self) -> None:
        _require(self.shot >= 2 and self.shot % 2 == 0, f"--shot must be an even number >= 2, got {self.shot}")
        self.out = _path(self.out)

    @property
    def jsonl(self) -> Path:
        return self.out or Path(f"{self.data.dataset}_{self.shot}shot_seed{self.seed}.jsonl")


@dataclass(kw_only=True)
class FeaturesConfig:
    """`features`: load a backbone and print its token features per level."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    gelu: Literal["quick", "exact"] = field(
        default="quick",
        metadata={"help": "MLP activation: CLIP's own QuickGELU, or exact GELU as the public AA-CLIP code runs"},
    )
    device: Device = field(default="auto", metadata={"help": DEVICE_HELP})
    batch: int = field(default=2, metadata={"help": "random images to run"})


@dataclass(kw_only=True)
class DescriptionsConfig:
    """`descriptions`: the public code's REAL_NAMES table (or any description file) as an editable json."""

    source: Path = field(
        metadata={
            "help": "the public AA-CLIP checkout (a folder), its dataset/constants.py, or a description json",
            "aliases": ["--from"],
        }
    )
    dataset: str | None = field(
        default=None, metadata={"help": "write only this dataset's {class: description} (default: every dataset)"}
    )
    out: Path = field(metadata={"help": "json file to write"})

    def __post_init__(self) -> None:
        self.source, self.out = Path(self.source), Path(self.out)
        if self.dataset is not None:
            self.dataset = get_spec(self.dataset).name
