"""Config round trips, variant dispatch from the raw config.json, and init_from_backbone on saved checkpoints."""

import json
import shutil

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from crossgraft.graft import CheckpointError, selective_copy
from crossgraft.llava import MODEL_CLASSES
from crossgraft.llava.configuration import LlavaConfigError, LlavaQwenAlternatingCrossConfig, LlavaQwenConfig
from crossgraft.llava.loading import (
    build_from_plan,
    inspect_checkpoint,
    load_model,
    plan_init_from_backbone,
    read_raw_config,
)
from crossgraft.llava.sample import make_tiny_model

BASE, ALT, CROSS = "llava_qwen", "llava_qwen_with_alternating_attn", "llava_qwen_with_alternating_cross_attn"


@pytest.mark.parametrize("kind", [BASE, ALT, CROSS])
def test_config_round_trip_and_auto_classes(tiny_models, kind):
    config = AutoConfig.from_pretrained(tiny_models[kind])
    assert config.model_type == kind and config.vision_config["hidden_size"] == 32
    model = AutoModelForCausalLM.from_pretrained(tiny_models[kind])
    assert type(model) is MODEL_CLASSES[kind]
    if kind == CROSS:
        assert config.xattn_mode == "gated"
        assert all(p.item() == 0.0 for n, p in model.named_parameters() if n.endswith("_gate"))


@pytest.mark.parametrize(
    "kind, variant", [(BASE, "base"), (ALT, "alternating"), (CROSS, "alternating_cross"), ("qwen2", None)]
)
def test_dispatch_from_raw_config(tiny_models, kind, variant):
    assert inspect_checkpoint(str(tiny_models[kind])).variant == variant


def test_lmms_lab_style_llava_config_loads_as_base(tiny_models, tmp_path):
    folder = tmp_path / "onevision"
    shutil.copytree(tiny_models[BASE], folder)
    raw = read_raw_config(str(folder))
    raw.update(model_type="llava", architectures=["LlavaQwenForCausalLM"], image_aspect_ratio="anyres_max_9")
    (folder / "config.json").write_text(json.dumps(raw))
    kind = inspect_checkpoint(str(folder))
    assert kind.variant == "base" and kind.raw_model_type == "llava"
    model = load_model(str(folder))
    assert type(model).__name__ == "LlavaQwenForCausalLM"
    reference = MODEL_CLASSES[BASE].from_pretrained(tiny_models[BASE])
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))


def test_unknown_and_foreign_model_types_are_refused(tiny_models, tmp_path):
    for model_type, architectures, message in (
        ("mistral", [], "unknown model_type 'mistral'"),
        ("llava", ["LlavaForConditionalGeneration"], "not a LLaVA-NeXT Qwen checkpoint"),
    ):
        folder = tmp_path / model_type / str(len(architectures))
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps({"model_type": model_type, "architectures": architectures}))
        with pytest.raises(CheckpointError, match=message):
            inspect_checkpoint(str(folder))
    with pytest.raises(CheckpointError, match="no config.json"):
        inspect_checkpoint(str(tmp_path))


def test_cross_config_without_xattn_mode_means_mask(tiny_models, tmp_path):
    folder = tmp_path / "published_cross"
    shutil.copytree(tiny_models[CROSS], folder)
    raw = read_raw_config(str(folder))
    raw.pop("xattn_mode")
    (folder / "config.json").write_text(json.dumps(raw))
    config = AutoConfig.from_pretrained(folder)
    assert config.xattn_mode == "mask" and config.attention_pattern == "cross_modality"
    assert LlavaQwenAlternatingCrossConfig().xattn_mode == "gated"  # new models


def test_contradicting_config_is_refused():
    with pytest.raises(LlavaConfigError, match="mm_hidden_size is 99 but the vision tower"):
        LlavaQwenConfig(vision_config={"hidden_size": 32}, mm_hidden_size=99)
    with pytest.raises(LlavaConfigError, match="xattn_mode"):
        LlavaQwenAlternatingCrossConfig(xattn_mode="sideways")


def test_variant_mismatch_stops_unless_forced(tiny_models):
    with pytest.raises(LlavaConfigError, match="--variant alternating was asked for"):
        load_model(str(tiny_models[BASE]), "alternating")
    forced = load_model(str(tiny_models[BASE]), "alternating", force=True)
    assert type(forced).__name__ == "LlavaQwenWithAlternatingAttnForCausalLM"
    with pytest.raises(LlavaConfigError, match="flash-attention"):
        load_model(str(tiny_models[BASE]), attn_implementation="flash_attention_2")


def test_loaded_gates_are_not_reinitialised(tiny_models, tmp_path):
    model = MODEL_CLASSES[CROSS].from_pretrained(tiny_models[CROSS])
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("_gate"):
                parameter.fill_(0.25)
    model.save_pretrained(tmp_path / "trained")
    again = MODEL_CLASSES[CROSS].from_pretrained(tmp_path / "trained")
    assert all(p.item() == 0.25 for n, p in again.named_parameters() if n.endswith("_gate"))


def test_init_from_saved_base_model_counts(tiny_models):
    plan = plan_init_from_backbone(str(tiny_models[BASE]), "alternating_cross")
    report = plan.report
    n_target = len(MODEL_CLASSES[CROSS](plan.config).state_dict())
    assert not report.skipped  # the projector is kept by default
    assert len(report.mismatched) == 0 and len(report.unexpected) == 0
    assert report.tied == ["lm_head.weight"]
    xattn = [key for key in report.missing if ".xattn." in key]
    assert len(xattn) == len(report.missing) == 15  # one block (layer 3): 2 gates, 3 norms, q/k/v/o, MLP
    assert len(report.copied) + len(report.missing) + len(report.tied) == n_target
    model = build_from_plan(plan)
    assert model.config.xattn_mode == "gated"
    assert all(p.item() == 0.0 for n, p in model.named_parameters() if n.endswith("_gate"))
    source = MODEL_CLASSES[BASE].from_pretrained(tiny_models[BASE]).state_dict()
    for key in report.copied:
        assert torch.equal(model.state_dict()[key], source[key]), key
    assert torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)


def test_init_from_bare_qwen2_loads_the_siglip_tower_and_reports_the_rest_missing(tiny_models):
    from transformers import SiglipVisionModel

    plan = plan_init_from_backbone(str(tiny_models["qwen2"]), "alternating", vision_tower=str(tiny_models["siglip"]))
    report = plan.report
    tower = [key for key in report.copied if ".vision_tower." in key]
    assert len(report.copied) - len(tower) == 2 + 4 * 12  # embeddings, final norm, 12 tensors per decoder layer
    assert not report.skipped and not report.unexpected and not report.mismatched
    assert all(key == "model.image_newline" or ".mm_projector." in key for key in report.missing)
    assert len([key for key in report.missing if ".mm_projector." in key]) == 4
    assert "1 layer(s) past mm_vision_select_layer dropped" in plan.tower  # 3 SigLIP layers, 2 kept
    model = build_from_plan(plan)
    assert type(model).__name__ == "LlavaQwenWithAlternatingAttnForCausalLM"
    siglip = {
        key.removeprefix("vision_model."): value
        for key, value in SiglipVisionModel.from_pretrained(tiny_models["siglip"]).state_dict().items()
    }
    ours = model.state_dict()
    for key in ("embeddings.patch_embedding.weight", "encoder.layers.1.mlp.fc2.weight"):
        assert torch.equal(ours["model.vision_tower.vision_tower.vision_model." + key], siglip[key]), key
    with pytest.raises(LlavaConfigError, match="say which model to build"):
        plan_init_from_backbone(str(tiny_models["qwen2"]), "auto")


def test_a_tower_that_stays_random_is_said_and_a_misfit_tower_is_refused(tiny_models, tmp_path):
    from crossgraft.llava.train import describe_plan

    random_tower = plan_init_from_backbone(str(tiny_models["qwen2"]), "base")
    assert random_tower.tower.startswith("vision tower: RANDOM")
    assert "RANDOM" in describe_plan(random_tower)
    misfit = tmp_path / "misfit_siglip"
    shutil.copytree(tiny_models["siglip"], misfit)
    config = json.loads((misfit / "config.json").read_text())
    config["intermediate_size"] = 48  # the config now disagrees with the weights
    (misfit / "config.json").write_text(json.dumps(config))
    with pytest.raises(LlavaConfigError, match=r"layers.0.mlp.fc1.bias is \(64,\) but .* needs \(48,\)"):
        plan_init_from_backbone(str(tiny_models["qwen2"]), "base", vision_tower=str(misfit))


def test_init_reports_shape_mismatches(tmp_path, tiny_models):
    wider = make_tiny_model(tmp_path / "wide_qwen2", "qwen2", hidden_size=96, intermediate_size=128)
    plan = plan_init_from_backbone(str(wider), "base", vision_tower=str(tiny_models["siglip"]))
    config = plan.config
    assert config.hidden_size == 96  # the target follows the backbone's sizes ...
    narrow = {key: torch.zeros(4, 4) for key in ("model.norm.weight", "lm_head.extra")}
    matched, report = selective_copy(narrow, {"model.norm.weight": (64,)})
    assert not matched and report.mismatched == [
        ("model.norm.weight", (4, 4), (64,))
    ]  # ... a forced shape clash is named
    assert report.unexpected == ["lm_head.extra"]
    assert "shape-mismatched: 1" in report.format() and "source (4, 4) vs target (64,)" in report.format()


def test_published_onevision_config_builds_the_published_architecture():
    """lmms-lab/llava-onevision-qwen2-0.5b-ov's config.json (its fields as published) → 893.6M parameters,
    a 26-layer SigLIP without head (LLaVA-NeXT drops the last layer), 729 patches per image. Built on meta."""
    raw = {
        "architectures": ["LlavaQwenForCausalLM"],
        "model_type": "llava",
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_attention_heads": 14,
        "num_hidden_layers": 24,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
        "rope_theta": 1000000.0,
        "rope_scaling": None,
        "max_position_embeddings": 32768,
        "max_window_layers": 24,
        "sliding_window": 32768,
        "use_sliding_window": False,
        "rms_norm_eps": 1e-06,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "torch_dtype": "bfloat16",
        "image_aspect_ratio": "anyres_max_9",
        "image_grid_pinpoints": [[384, 384], [384, 768]],
        "mm_hidden_size": 1152,
        "mm_newline_position": "grid",
        "mm_patch_merge_type": "spatial_unpad",
        "mm_projector_type": "mlp2x_gelu",
        "mm_resampler_type": None,
        "mm_spatial_pool_mode": "bilinear",
        "mm_vision_select_feature": "patch",
        "mm_vision_select_layer": -2,
        "mm_vision_tower": "google/siglip-so400m-patch14-384",
        "mm_tunable_parts": "mm_vision_tower,mm_mlp_adapter,mm_language_model",
        "mm_use_im_start_end": False,
        "tokenizer_model_max_length": 32768,
        "tokenizer_padding_side": "right",
        "use_mm_proj": True,
    }
    from crossgraft.llava.loading import build_config, classify

    assert classify(raw, "lmms").variant == "base"
    config = build_config(raw, "llava_qwen")
    assert config.rope_parameters["rope_theta"] == 1000000.0 and config.mm_hidden_size == 1152
    with torch.device("meta"):
        model = MODEL_CLASSES["llava_qwen"](config)
    keys = set(model.state_dict())
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == 893.6
    tower = "model.vision_tower.vision_tower.vision_model."
    assert f"{tower}encoder.layers.25.mlp.fc2.weight" in keys and f"{tower}encoder.layers.26.mlp.fc2.weight" not in keys
    assert f"{tower}post_layernorm.weight" in keys and not any(key.startswith(f"{tower}head") for key in keys)
    assert model.model.vision_tower.num_patches == 729


@pytest.mark.parametrize("kind", ["llava_qwen", "llava_qwen_with_alternating_cross_attn"])
def test_saved_config_carries_what_llava_next_era_loaders_read(tmp_path, kind):
    folder = make_tiny_model(tmp_path / kind, kind, rope_parameters={"rope_theta": 1e6, "rope_type": "default"})
    saved = json.loads((folder / "config.json").read_text())
    assert saved["rope_theta"] == 1e6  # transformers 4.x reads this key; without it RoPE would use 10000
    assert saved["torch_dtype"] == saved["dtype"] == "float32"
    assert saved["model_type"] == kind and saved["architectures"] == [load_model(str(folder)).__class__.__name__]
    reloaded = load_model(str(folder)).config
    assert reloaded.rope_parameters["rope_theta"] == 1e6


def test_a_llava_backbone_keeps_its_projector_unless_told_otherwise(tiny_models):
    kept = plan_init_from_backbone(str(tiny_models["llava_qwen"]), "alternating")
    assert sum(".mm_projector." in key for key in kept.report.copied) == 4 and not kept.report.missing
    assert kept.tower.startswith("vision tower: from the backbone")
    seed_list = plan_init_from_backbone(
        str(tiny_models["llava_qwen"]), "alternating", skip_prefixes=("mm_projector", "vision_resampler")
    )
    assert sum(".mm_projector." in key for key in seed_list.report.skipped) == 4
