"""The anomaly family's configs: values that cannot work are refused when a config is made, every field explains
itself, each command's defaults, and run configs read back, older ones included."""

import dataclasses
import json

import pytest

from crossgraft.anomaly import config as cfg
from crossgraft.anomaly import run_folder
from crossgraft.anomaly.cli import COMMANDS, build_parser
from crossgraft.anomaly.config import SyntheticConfig
from crossgraft.anomaly.data import DataError
from crossgraft.args import nested_fields
from crossgraft.errors import ConfigError


def all_config_types():
    seen, todo = [], [command.config for command in COMMANDS.values()]
    while todo:
        dtype = todo.pop()
        if dtype not in seen:
            seen.append(dtype)
            todo += nested_fields(dtype).values()
    return seen


@pytest.mark.parametrize("dtype", all_config_types(), ids=lambda t: t.__name__)
def test_every_setting_has_help(dtype):
    nested = nested_fields(dtype)
    for f in dataclasses.fields(dtype):
        if f.init and f.name not in nested:
            assert f.metadata.get("help"), f"{dtype.__name__}.{f.name} has no help"


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: cfg.TrainConfig(num_feedback_loops=0), "--num_feedback_loops must be at least 1, got 0"),
        (lambda: cfg.CrossAttentionConfig(cross_attn_dropout=1.5), r"--cross_attn_dropout must lie in \[0, 1\)"),
        (lambda: cfg.CrossAttentionConfig(cross_attn_heads=0), "--cross_attn_heads must be at least 1"),
        (lambda: cfg.CrossAttentionConfig(variant="both"), "unknown variant 'both'"),
        (lambda: cfg.TrainConfig(image_epoch=-2), "--image_epoch must be at least 0, got -2"),
        (lambda: cfg.TrainConfig(text_lr=-1e-5), "--text_lr must be a positive number"),
        (lambda: cfg.TrainConfig(image_lr=float("nan")), "--image_lr must be a positive number"),
        (lambda: cfg.TrainConfig(shot=5), "--shot must be an even number >= 2"),
        (lambda: cfg.TrainConfig(shot=0), "for every image use --full_shot, got 0"),
        (lambda: cfg.TrainConfig(shot=-2), "--shot must be an even number >= 2"),
        (lambda: cfg.TrainConfig(text_batch_size=0), "--text_batch_size must be at least 1"),
        (lambda: cfg.TrainConfig(milestones=[0, 10]), "--milestones must be positive"),
        (lambda: cfg.AdapterConfig(image_adapt_weight=2.0), r"--image_adapt_weight must lie in \[0, 1\]"),
        (lambda: cfg.AdapterConfig(surgery_until_layer=1), "--surgery_until_layer must be at least 2"),
        (lambda: cfg.QuirkConfig(preset="public"), "unknown --preset 'public'"),
        (lambda: cfg.BackboneConfig(img_size=0), "--img_size must be positive"),
        (lambda: cfg.KShotConfig(shot=3), "--shot must be an even number >= 2"),
        (lambda: cfg.CompareConfig(runs=["one"]), "compare needs at least two runs"),
        (lambda: SyntheticConfig(test_per_class=1), "--test_per_class >= 2"),
    ],
)
def test_values_that_cannot_work_are_refused(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


def test_an_unknown_dataset_is_refused_when_named():
    with pytest.raises(DataError, match="unknown dataset 'Nope'"):
        cfg.DataConfig(dataset="Nope")
    with pytest.raises(DataError, match="unknown dataset 'Nope'"):
        cfg.TrainConfig(eval_dataset="Nope")


def test_shot_settings_of_the_public_code():
    assert cfg.TrainConfig().k_shot == 32
    assert cfg.TrainConfig(full_shot=True, shot=0).k_shot is None  # --shot is not used then
    assert cfg.TrainConfig(full_shot=True).k_shot is None
    assert cfg.TrainConfig(training_mode="full_shot").k_shot is None


def test_each_command_has_its_own_defaults():
    assert build_parser("train").parse([]).data.dataset == "VisA"
    assert build_parser("test").parse(["--save_path", "r"]).data.dataset == "MVTec"
    assert build_parser("inspect-data").parse([]).data.dataset == "synthetic"
    demo = build_parser("demo").parse([])
    assert demo.clip == "tiny" and demo.synthetic == cfg.DEMO_SYNTHETIC
    assert build_parser("make-synthetic").parse(["--out", "x"]).synthetic == SyntheticConfig()
    assert build_parser("features").parse([]).backbone.clip == "openai/clip-vit-large-patch14-336"
    assert cfg.DataConfig(dataset="BTAD").root.as_posix() == "data/BTech_Dataset_transformed"


UNVERSIONED = {  # run_config.json as crossgraft wrote it before the file had a format name
    "dataset": "synthetic",
    "data_root": "data/x",
    "save_path": "runs/old",
    "meta": None,
    "classes": ["dots"],
    "shot": None,
    "clip": "tiny",
    "tokenizer": None,
    "img_size": 64,
    "text_epoch": 1,
    "image_epoch": 2,
    "text_lr": 1e-05,
    "image_lr": 0.0005,
    "text_batch_size": 4,
    "image_batch_size": 4,
    "text_norm_weight": 0.1,
    "surgery_until_layer": None,
    "milestones": [16000, 32000],
    "gamma": 0.5,
    "seed": 7,
    "adapter": {
        "text_adapt_weight": 0.1,
        "image_adapt_weight": 0.1,
        "text_adapt_until": 3,
        "image_adapt_until": 6,
        "relu": False,
    },
    "quirks": {"vv_mode": "batch", "stage1_last_level_only": True, "stage1_image_loss": False, "gelu": "exact"},
    "preset": "reference",
    "class_descriptions": None,
    "resume": False,
    "num_workers": 0,
    "device": "cpu",
    "mixed_precision": "no",
    "allow_missing_masks": False,
    "cross": {
        "variant": "cross_attn",
        "text_weight": 0.2,
        "image_weight": 0.1,
        "learnable_weight": False,
        "heads": 8,
        "dropout": 0.1,
        "image_norm_match": True,
    },
    "load_base_text_adapter": None,
    "load_base_image_adapter": None,
    "num_feedback_loops": 1,
    "eval_each_loop": False,
    "eval_dataset": None,
    "eval_data_root": None,
    "eval_classes": None,
    "surgery_from": 2,
}


def test_an_older_run_config_is_read(tmp_path):
    (tmp_path / run_folder.RUN_CONFIG).write_text(json.dumps(UNVERSIONED))
    saved = run_folder.load_run_config(tmp_path)
    assert saved.config.variant == "cross_attn" and saved.config.cross.text_cross_attn_weight == 0.2
    assert saved.config.k_shot is None and saved.config.data.classes == ["dots"]
    assert saved.quirks == cfg.PRESETS["reference"] and (saved.image_size, saved.surgery_from) == (64, 2)
    assert saved.descriptions is None  # not recorded then: read from config.class_descriptions
    del UNVERSIONED["quirks"]
    (tmp_path / run_folder.RUN_CONFIG).write_text(json.dumps(UNVERSIONED))
    with pytest.raises(ConfigError, match="is incomplete or not a crossgraft run config: no 'quirks'"):
        run_folder.load_run_config(tmp_path)
