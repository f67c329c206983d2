"""A training run's folder as a file format: `run_config.json` (the `TrainConfig` as flags in sections, so `--config`
reads it back, and what the run resolved from it), its reading with the migration of files written before the
format had a name, and the names of the files a run folder holds."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, get_args

from crossgraft import __version__
from crossgraft.anomaly.config import (
    AdapterConfig,
    BackboneConfig,
    CrossAttentionConfig,
    GeluKind,
    QuirkConfig,
    Quirks,
    TrainConfig,
    VVMode,
)
from crossgraft.anomaly.prompts import DescriptionTable, check_table
from crossgraft.args import ConfigArgumentParser, config_to_dict, read_config_file
from crossgraft.errors import ConfigError
from crossgraft.files import write_text_atomic

RUN_CONFIG = "run_config.json"
TRAIN_SAMPLES = "train_samples.jsonl"  # the samples a run trained on, one json record per line
RUN_CONFIG_FORMAT = "crossgraft.anomaly.run/1"


@dataclass
class SavedRun:
    """A training run as its folder records it: the config, and what the run resolved from it."""

    config: TrainConfig
    image_size: int  # pixels
    surgery_from: int  # 1-based first V-V block
    quirks: Quirks
    descriptions: DescriptionTable | None  # the class descriptions the prompts used; None: not recorded (older run)
    loop: int | None = None  # the feedback round a loop_N/ folder holds


def save_run_config(save_path: Path, run: SavedRun) -> Path:
    """Write SAVE_PATH/run_config.json: the settings as flags in sections (so `--config` reads it back), and
    what the run resolved from them."""
    document = {
        "format": RUN_CONFIG_FORMAT,
        "crossgraft_version": __version__,
        **config_to_dict(run.config),
        "resolved": {
            "img_size": run.image_size,
            "surgery_from": run.surgery_from,
            "quirks": config_to_dict(run.quirks),
            "descriptions": run.descriptions,
            "loop": run.loop,
        },
    }
    return write_text_atomic(Path(save_path) / RUN_CONFIG, json.dumps(document, indent=2) + "\n")


def load_run_config(save_path: Path) -> SavedRun:
    """Read SAVE_PATH/run_config.json; a missing, corrupt or incomplete file is a ConfigError naming it."""
    path = Path(save_path) / RUN_CONFIG
    if not path.is_file():
        raise ConfigError(f"{path} not found: is {save_path} a crossgraft training folder?")
    document = read_config_file(path)
    if "format" not in document:
        document = _from_unversioned(document, path)
    resolved = document.get("resolved")
    if not isinstance(resolved, dict):
        raise ConfigError(f"{path} is incomplete: no 'resolved' section (was it edited or cut short?)")
    missing = [key for key in ("img_size", "surgery_from", "quirks") if key not in resolved]
    missing += [
        f"{section}.{name}"
        for section, names in MODEL_SETTINGS.items()
        for name in names
        if not isinstance(document.get(section), dict) or name not in document[section]
    ]
    if missing:
        raise ConfigError(
            f"{path} is incomplete: no {', '.join(missing)} (the settings that define the model; was it edited or "
            "cut short?)"
        )
    parser = ConfigArgumentParser(TrainConfig)
    parser.apply_settings(document, str(path))
    config = parser.parse([])
    return SavedRun(
        config=config,
        image_size=_whole_number(resolved["img_size"], "img_size", path),
        surgery_from=_whole_number(resolved["surgery_from"], "surgery_from", path),
        quirks=_resolved_quirks(resolved["quirks"], path),
        descriptions=_resolved_descriptions(resolved.get("descriptions"), path),
        loop=None if resolved.get("loop") is None else _whole_number(resolved["loop"], "loop", path),
    )


def _whole_number(value: Any, name: str, path: Path) -> int:
    if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        raise ConfigError(f"{path}: resolved.{name} must be a whole number > 0, not {str(value)[:40]!r}")
    return value


def _resolved_quirks(value: Any, path: Path) -> Quirks:
    """The quirks a run resolved, each checked against its allowed values."""
    allowed: dict[str, tuple[Any, ...]] = {
        "vv_mode": get_args(VVMode), "gelu": get_args(GeluKind), "stage1_last_level_only": (True, False),
        "stage1_image_loss": (True, False), "stage1_augment": (True, False),
    }  # fmt: skip
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: resolved.quirks must be an object, not {type(value).__name__}")
    for name, given in value.items():
        if name not in allowed or not any(given is choice or given == choice and type(given) is type(choice)
                                          for choice in allowed[name]):  # fmt: skip
            raise ConfigError(f"{path}: resolved.quirks.{str(name)[:40]} = {str(given)[:40]!r} is not a known setting")
    try:
        return Quirks(**value)
    except TypeError as error:
        raise ConfigError(f"{path}: the resolved quirks are incomplete ({error})") from error


def _resolved_descriptions(value: Any, path: Path) -> DescriptionTable | None:
    if value is not None:
        check_table(value, f"{path}: resolved.descriptions")
    return value


# the sections a run config must spell out in full: they define the model that test and predict rebuild (a setting
# that only changes how training feeds images, and runs written before it existed, may leave it out)
TRAINING_ONLY = {"stage1_augment"}
MODEL_SETTINGS = {
    section: [f.name for f in fields(dtype) if f.init and f.name not in TRAINING_ONLY]
    for section, dtype in (
        ("backbone", BackboneConfig),
        ("adapter", AdapterConfig),
        ("quirks", QuirkConfig),
        ("cross", CrossAttentionConfig),
    )
} | {"data": ["dataset"]}


LEGACY_TOP_LEVEL = (
    "save_path text_epoch image_epoch text_lr image_lr text_batch_size image_batch_size milestones gamma "
    "text_norm_weight seed resume num_workers device mixed_precision class_descriptions load_base_text_adapter "
    "load_base_image_adapter num_feedback_loops eval_each_loop eval_dataset eval_data_root eval_classes"
).split()
LEGACY_CROSS_NAMES = {
    "variant": "variant",
    "text_weight": "text_cross_attn_weight",
    "image_weight": "image_cross_attn_weight",
    "learnable_weight": "learnable_cross_attn_weight",
    "heads": "cross_attn_heads",
    "dropout": "cross_attn_dropout",
    "image_norm_match": "image_norm_match",
}


def _from_unversioned(old: dict[str, Any], path: Path) -> dict[str, Any]:
    """A run_config.json as crossgraft wrote it before the format had a name (flat, resolved values mixed in)."""
    try:
        quirks = old["quirks"]
        return {
            "data": {k: old[k] for k in ("dataset", "data_root", "meta", "classes", "allow_missing_masks") if k in old},
            "backbone": {"clip": old["clip"], "tokenizer": old.get("tokenizer"), "img_size": old["img_size"]},
            **{key: old[key] for key in LEGACY_TOP_LEVEL if key in old},
            "shot": old.get("shot") or 32,
            "full_shot": old.get("shot") is None,
            "adapter": {**old["adapter"], "surgery_until_layer": old.get("surgery_until_layer")},
            "quirks": {
                "preset": old.get("preset", "reference"),
                "vv_attention": quirks["vv_mode"],
                "stage1_levels": "last" if quirks["stage1_last_level_only"] else "all",
                "stage1_image_loss": "on" if quirks["stage1_image_loss"] else "off",
                "gelu": quirks["gelu"],
            },
            "cross": {LEGACY_CROSS_NAMES[k]: v for k, v in old.get("cross", {}).items() if k in LEGACY_CROSS_NAMES},
            "resolved": {
                "img_size": old["img_size"],
                "surgery_from": old["surgery_from"],
                "quirks": quirks,
                "descriptions": None,
                "loop": old.get("loop"),
            },
        }
    except (KeyError, TypeError) as error:
        raise ConfigError(f"{path} is incomplete or not a crossgraft run config: no {error}") from error
