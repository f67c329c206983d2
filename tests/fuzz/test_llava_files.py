"""Fuzzed LLaVA-family files: conversation data (json, jsonl, yaml), an evaluation's predictions.jsonl and a LoRA
folder's adapter_config.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fuzz.mutations import FUZZ, as_json, as_json_lines, as_yaml, mutated_bytes, reads_or_refuses, written
from hypothesis import given
from safetensors.torch import save_file

from crossgraft.llava.data import read_records, validate_record
from crossgraft.llava.evaluate import read_predictions, summarize
from crossgraft.llava.lora import read_adapter_config

RECORDS = [
    {"id": "s0", "image": "a.png", "conversations": [{"from": "human", "value": "<image>\nWhat is it?"},
                                                      {"from": "gpt", "value": "A dotted tile."}]},
    {"id": "s1", "conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
                                   {"from": "gpt", "value": "Hello."}]},
]  # fmt: skip
YAML_SPEC = {"datasets": [{"json_path": "records.json", "sampling_strategy": "first:1"},
                          {"json_path": "records.json", "sampling_strategy": "random:50%"}]}  # fmt: skip
ROWS = [
    {"id": f"s{i}", "prediction": "a dotted tile", "reference": "A dotted tile.", "loss_sum": 3.5, "tokens": 4,
     "attributes_right": 1, "attributes_total": 2, "fingerprint": "0123456789abcdef"}
    for i in range(3)
]  # fmt: skip
ADAPTER_CONFIG = {
    "peft_type": "LORA", "task_type": None, "r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "bias": "none",
    "target_modules": "model\\.layers\\.\\d+\\.(self_attn|mlp)\\.\\w+_proj", "base_model_name_or_path": "base",
    "inference_mode": True, "fan_in_fan_out": False, "modules_to_save": None,
}  # fmt: skip


def read_and_validate(path: Path) -> list:
    records = read_records(str(path))
    for record in records:
        validate_record(record)  # what --inspect_data and training do with each record
    return records


@pytest.mark.parametrize(
    ("name", "valid", "write"),
    [("records.json", RECORDS, as_json), ("records.jsonl", RECORDS, as_json_lines), ("data.yaml", YAML_SPEC, as_yaml)],
)
def test_llava_data_files(tmp_path_factory, name, valid, write):
    folder = tmp_path_factory.mktemp("llava_data")

    @FUZZ
    @given(data=mutated_bytes(valid, write, yaml=name.endswith(".yaml")))
    def read(data):
        path = written(folder, name, data)
        (path.parent / "records.json").write_text(json.dumps(RECORDS)) if name.endswith(".yaml") else None
        records = reads_or_refuses(read_and_validate, path)
        assert records is None or isinstance(records, list)

    read()


def test_predictions_jsonl(tmp_path_factory):
    folder = tmp_path_factory.mktemp("predictions")

    @FUZZ
    @given(data=mutated_bytes(ROWS, as_json_lines))
    def read(data):
        found = reads_or_refuses(read_predictions, written(folder, "predictions.jsonl", data))
        if found is not None and found.rows:
            summarize(found.values, [])  # every row it keeps can be summarised

    read()


def test_adapter_config_json(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lora")
    weights = {"base_model.model.model.layers.0.mlp.up_proj.lora_A.weight": torch.zeros(4, 8)}

    @FUZZ
    @given(data=mutated_bytes(ADAPTER_CONFIG, as_json))
    def read(data):
        path = written(folder, "adapter_config.json", data)
        save_file(weights, str(path.parent / "adapter_model.safetensors"))
        save_file({"model.image_newline": torch.zeros(8)}, str(path.parent / "non_lora_trainables.safetensors"))
        config = reads_or_refuses(read_adapter_config, path.parent)
        assert config is None or isinstance(config, dict)

    read()
