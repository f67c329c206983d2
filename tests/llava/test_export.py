"""`llava export --to llava-next`: folder names that LLaVA-NeXT's builder maps to the right class, complete
configs, identical weights, and refusals before anything is written."""

import json
import os

import pytest
import torch

from crossgraft.llava.configuration import LlavaConfigError
from crossgraft.llava.export import builder_class_for, export_llava_next, suggested_name
from crossgraft.llava.loading import load_model
from crossgraft.llava.sample import make_tiny_model


@pytest.mark.parametrize(
    "name, expected",
    [
        ("my-run-llava-qwen", "LlavaQwenForCausalLM"),
        ("llava-qwen-with_alternating_attn", "LlavaQwenWithAlternatingAttnForCausalLM"),
        ("LLaVA-Qwen-with_alternating_cross_attn-7", "LlavaQwenWithAlternatingCrossAttnForCausalLM"),
        ("alt", None),  # no 'llava': loaded as a plain language model
        ("llava-qwen-lora", None),  # the LoRA branch
        ("yield-llava-qwen", None),  # 'yi' is tested before 'qwen' (Yi models)
        ("llava-qwen-moe", None),
    ],
)
def test_builder_class_follows_llava_next_naming(name, expected):
    assert builder_class_for(name) == expected


@pytest.mark.parametrize(
    "model_type", ["llava_qwen", "llava_qwen_with_alternating_attn", "llava_qwen_with_alternating_cross_attn"]
)
def test_suggested_names_route_to_the_right_class(model_type):
    from crossgraft.llava.export import BUILDER_NAMES

    for name in ("alt", "yield-run", "lora_v1.5", "llava-qwen-with_alternating_attn"):
        assert builder_class_for(suggested_name(name, model_type)) == BUILDER_NAMES[model_type][1]


def test_base_export_loads_with_the_same_logits_and_a_complete_config(tiny_models, tmp_path):
    out = tmp_path / "run-llava-qwen"
    export = export_llava_next(str(tiny_models["llava_qwen"]), out)
    assert export.builder_class == "LlavaQwenForCausalLM" and not export.needs_fork
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llava_qwen" and config["architectures"] == ["LlavaQwenForCausalLM"]
    assert config["rope_theta"] == 10000.0 and config["torch_dtype"] == "float32"
    assert config["mm_use_im_patch_token"] is False and config["mm_use_im_start_end"] is False
    assert "get_model_name_from_path" in (out / "README.md").read_text()
    assert not list(tmp_path.glob(".*partial"))
    # transformers 4.40 (LLaVA-NeXT's pin) reads additional_special_tokens, transformers 5 writes extra_special_tokens
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    special = ["<|im_start|>", "<|im_end|>"]
    assert tokenizer_config["additional_special_tokens"] == tokenizer_config["extra_special_tokens"] == special
    assert json.loads((out / "special_tokens_map.json").read_text())["additional_special_tokens"] == special
    from transformers import AutoTokenizer

    reloaded, source = AutoTokenizer.from_pretrained(out), AutoTokenizer.from_pretrained(tiny_models["llava_qwen"])
    assert reloaded("<|im_start|>user hi<|im_end|>").input_ids == source("<|im_start|>user hi<|im_end|>").input_ids
    assert sorted(reloaded.all_special_tokens) == sorted(source.all_special_tokens)
    original, exported = load_model(str(tiny_models["llava_qwen"])).eval(), load_model(str(out)).eval()
    assert original.state_dict().keys() == exported.state_dict().keys()
    input_ids = torch.tensor([[5, 6, -200, 7, 8]])
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(original(input_ids, images=images).logits, exported(input_ids, images=images).logits)


def test_alternating_and_mask_exports_name_the_fork(tmp_path):
    mask = make_tiny_model(tmp_path / "mask", "llava_qwen_with_alternating_cross_attn", xattn_mode="mask")
    export = export_llava_next(str(mask), tmp_path / "x-llava-qwen-with_alternating_cross_attn", "bfloat16")
    assert export.needs_fork and export.builder_class == "LlavaQwenWithAlternatingCrossAttnForCausalLM"
    config = json.loads((export.folder / "config.json").read_text())
    assert config["torch_dtype"] == "bfloat16" and config["xattn_mode"] == "mask"


def test_refusals_come_before_anything_is_written(tiny_models, tmp_path):
    with pytest.raises(LlavaConfigError, match="named like .*alt-llava-qwen-with_alternating_attn"):
        export_llava_next(str(tiny_models["llava_qwen_with_alternating_attn"]), tmp_path / "alt")
    with pytest.raises(LlavaConfigError, match="gated cross-attention blocks"):
        export_llava_next(
            str(tiny_models["llava_qwen_with_alternating_cross_attn"]),
            tmp_path / "g-llava-qwen-with_alternating_cross_attn",
        )
    with pytest.raises(LlavaConfigError, match="bare Qwen2"):
        export_llava_next(str(tiny_models["qwen2"]), tmp_path / "q-llava-qwen")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def file_modes(folder) -> dict[str, str]:
    return {str(p.relative_to(folder)): oct(p.stat().st_mode & 0o777) for p in folder.rglob("*") if p.is_file()}


def test_weights_tokenizers_and_checkpoints_are_written_with_the_users_umask(umask_022, llava_sample, tmp_path):
    """Under umask 022 every file a tiny model, a training run (its checkpoints included) and an export write is
    0644: safetensors writes through a private temporary file, whose 0600 used to survive the rename."""
    from helpers import QUIET, short_llava_run

    from crossgraft.cli import main

    model = make_tiny_model(tmp_path / "tiny", "llava_qwen")
    run = tmp_path / "run"
    args = short_llava_run(model, llava_sample, run, "--max_steps", "2", "--save_steps", "1", *QUIET)
    assert main(["llava", "train", *args]) == 0
    export_llava_next(str(run), tmp_path / "run-llava-qwen-export")
    for folder in (model, run, tmp_path / "run-llava-qwen-export"):
        modes = file_modes(folder)
        assert "model.safetensors" in modes, folder
        assert {name: mode for name, mode in modes.items() if mode != "0o644"} == {}, folder
    assert "checkpoint-1/model.safetensors" in file_modes(run)
