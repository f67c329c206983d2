"""Fuzzed settings files: `--config` (json and yaml), a run folder's run_config.json, class-description tables
(json and the public code's constants.py)."""

from __future__ import annotations

import pytest
from fuzz.mutations import FUZZ, as_json, as_python, as_yaml, mutated_bytes, reads_or_refuses, written
from hypothesis import given

from crossgraft.anomaly.cli import COMMANDS as ANOMALY_COMMANDS
from crossgraft.anomaly.config import PRESETS, BackboneConfig, DataConfig, TrainConfig
from crossgraft.anomaly.prompts import load_class_descriptions
from crossgraft.anomaly.run_folder import SavedRun, load_run_config, save_run_config
from crossgraft.args import command_parser
from crossgraft.llava.cli import COMMANDS as LLAVA_COMMANDS

TRAIN_FLAGS = {
    "dataset": "synthetic", "data_root": "data", "classes": ["dots", "stripes"], "clip": "tiny", "img_size": 64,
    "text_epoch": 1, "image_epoch": 2, "text_batch_size": 4, "relu": True, "seed": 7, "device": "cpu",
    "variant": "cross_attn", "text_cross_attn_weight": 0.1, "lr": 0.0001, "save_path": "ckpt/run",
}  # fmt: skip
EVALUATE_FLAGS = {
    "model_name_or_path": "runs/ov",
    "data_path": "held_out.json",
    "max_new_tokens": 8,
    "do_sample": False,
}
DESCRIPTIONS = {"dots": "a surface with a dotted pattern", "stripes": "a striped surface"}
NESTED_DESCRIPTIONS = {"MVTec": {"bottle": "the bottle", "cable": "three cables"}, "VisA": {"pcb1": "a board"}}


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_config_files_of_anomaly_train(tmp_path_factory, suffix):
    folder = tmp_path_factory.mktemp("config")
    write = as_yaml if suffix == ".yaml" else as_json

    @FUZZ
    @given(data=mutated_bytes(TRAIN_FLAGS, write, yaml=suffix == ".yaml"))
    def read(data):
        path = written(folder, f"train{suffix}", data)
        config = reads_or_refuses(
            command_parser("anomaly", "train", ANOMALY_COMMANDS["train"]).parse, ["--config", str(path)]
        )
        assert config is None or isinstance(config, TrainConfig)

    read()


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_config_files_of_llava_evaluate(tmp_path_factory, suffix):
    folder = tmp_path_factory.mktemp("config")
    write = as_yaml if suffix == ".yaml" else as_json

    @FUZZ
    @given(data=mutated_bytes(EVALUATE_FLAGS, write, yaml=suffix == ".yaml"))
    def read(data):
        path = written(folder, f"evaluate{suffix}", data)
        reads_or_refuses(command_parser("llava", "evaluate", LLAVA_COMMANDS["evaluate"]).parse, ["--config", str(path)])

    read()


def test_run_config_json(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run_config")
    config = TrainConfig(data=DataConfig(dataset="synthetic", data_root=folder), backbone=BackboneConfig(clip="tiny"))
    save_run_config(folder, SavedRun(config, 64, 6, PRESETS["reference"], DESCRIPTIONS))
    valid = __import__("json").loads((folder / "run_config.json").read_text())

    @FUZZ
    @given(data=mutated_bytes(valid, as_json))
    def read(data):
        path = written(folder, "run_config.json", data)
        saved = reads_or_refuses(load_run_config, path.parent)
        assert saved is None or isinstance(saved, SavedRun)

    read()


@pytest.mark.parametrize(
    ("name", "valid", "write"),
    [
        ("descriptions.json", DESCRIPTIONS, as_json),
        ("nested.json", NESTED_DESCRIPTIONS, as_json),
        ("constants.py", NESTED_DESCRIPTIONS, as_python("REAL_NAMES")),
    ],
)
def test_class_description_files(tmp_path_factory, name, valid, write):
    folder = tmp_path_factory.mktemp("descriptions")

    @FUZZ
    @given(data=mutated_bytes(valid, write))
    def read(data):
        table = reads_or_refuses(load_class_descriptions, written(folder, name, data))
        assert table is None or isinstance(table, dict)

    read()
