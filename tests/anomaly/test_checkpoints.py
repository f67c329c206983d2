"""Checkpoints in the public AA-CLIP format (docs/aa-clip.md) and the variants' (docs/cross-attention.md):
names and shapes, loading the public
code's files, mismatches explained by key, shapes and cause, and files that would run code refused."""

import os
from collections import OrderedDict

import pytest
import torch
from helpers import quick_train_config

from crossgraft.anomaly.backbone import load_clip
from crossgraft.anomaly.checkpoints import load_image_adapter, load_text_adapter
from crossgraft.anomaly.config import AdapterConfig, CrossAttentionConfig
from crossgraft.anomaly.model import AdaptedCLIP
from crossgraft.anomaly.train import train
from crossgraft.graft import CheckpointError, read_checkpoint


def test_checkpoints_have_the_public_names_and_shapes(trained_run, synthetic_root, tmp_path):
    text = torch.load(trained_run / "text_adapter.pth", map_location="cpu")
    assert set(text) == {"epoch", "text_adapter", "text_optimizer"} and text["epoch"] == 1
    assert list(text["text_adapter"]) == ["0.fc.0.weight", "1.fc.0.weight", "2.fc.0.weight", "3.fc.0.weight"]
    assert text["text_adapter"]["0.fc.0.weight"].shape == (64, 64)  # tiny text width
    for name in ("image_adapter.pth", "image_adapter_1.pth", "image_adapter_2.pth"):
        assert (trained_run / name).exists()
    image = torch.load(trained_run / "image_adapter_2.pth", map_location="cpu")
    assert {"epoch", "image_adapter", "image_optimizer"} <= set(image) and image["epoch"] == 2
    keys = list(image["image_adapter"])
    assert [k for k in keys if k.startswith("layer_adapters")] == [f"layer_adapters.{i}.fc.0.weight" for i in range(6)]
    assert [k for k in keys if k.startswith("seg_proj")] == [f"seg_proj.{i}.fc.weight" for i in range(4)]
    assert "det_proj.fc.weight" in keys
    assert image["image_adapter"]["seg_proj.0.fc.weight"].shape == (64, 96)  # embed x vision width
    relu_run = tmp_path / "relu"
    train(quick_train_config(synthetic_root, relu_run, text_epoch=0, image_epoch=1, adapter=AdapterConfig(relu=True)))
    relu_keys = list(torch.load(relu_run / "image_adapter.pth", map_location="cpu")["image_adapter"])
    assert "seg_proj.0.fc.0.weight" in relu_keys and "det_proj.fc.0.weight" in relu_keys


def test_cross_attention_checkpoints_add_their_modules(cross_run):
    text = torch.load(cross_run / "text_adapter_cross_attn.pth")
    image = torch.load(cross_run / "image_adapter_cross_attn_1.pth")
    assert set(text) == {"epoch", "text_adapter", "text_cross_attn", "text_optimizer"}
    assert set(text["text_cross_attn"]) == {f"{n}_proj.{p}" for n in ("q", "k", "v", "out") for p in ("weight", "bias")}
    assert "image_cross_attn" in image and (cross_run / "image_adapter_cross_attn.pth").exists()


def test_public_checkpoints_load_and_mismatches_are_explained(tmp_path):
    torch.manual_seed(0)
    model = AdaptedCLIP(load_clip("tiny"))
    public_text = OrderedDict((f"{i}.fc.0.weight", torch.randn(64, 64)) for i in range(4))
    torch.save({"epoch": 5, "text_adapter": public_text, "text_optimizer": {}}, tmp_path / "text_adapter.pth")
    load_text_adapter(model, tmp_path / "text_adapter.pth")
    for key, value in public_text.items():
        assert torch.equal(model.text_adapter.state_dict()[key], value)

    image_state = {k: v.clone() for k, v in model.image_adapter.state_dict().items()}
    relu_state = {k.replace(".fc.weight", ".fc.0.weight"): v for k, v in image_state.items()}
    torch.save({"epoch": 1, "image_adapter": relu_state}, tmp_path / "relu.pth")
    with pytest.raises(CheckpointError, match=r"--relu differs: the checkpoint was trained with --relu"):
        load_image_adapter(model, tmp_path / "relu.pth")

    short_text = OrderedDict((f"{i}.fc.0.weight", torch.randn(64, 64)) for i in range(3))
    torch.save({"text_adapter": short_text}, tmp_path / "short.pth")
    with pytest.raises(CheckpointError, match=r"2 text adapters: it was trained with --text_adapt_until 2"):
        load_text_adapter(model, tmp_path / "short.pth")

    wide = dict(image_state)
    wide["layer_adapters.0.fc.0.weight"] = torch.zeros(1024, 1024)
    torch.save({"image_adapter": wide}, tmp_path / "wide.pth")
    with pytest.raises(CheckpointError) as info:
        load_image_adapter(model, tmp_path / "wide.pth")
    message = str(info.value)
    assert "layer_adapters.0.fc.0.weight: checkpoint has shape (1024, 1024), the model expects (96, 96)" in message
    assert "another --clip" in message
    assert torch.equal(
        model.image_adapter.state_dict()["layer_adapters.0.fc.0.weight"], image_state["layer_adapters.0.fc.0.weight"]
    )  # nothing loaded on failure

    with pytest.raises(CheckpointError, match="no 'image_adapter' entry .*text adapter checkpoint"):
        load_image_adapter(model, tmp_path / "text_adapter.pth")
    (tmp_path / "broken.pth").write_bytes(b"nope")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_text_adapter(model, tmp_path / "broken.pth")


def test_a_cross_attention_checkpoint_does_not_load_into_the_base_variant(cross_run, trained_run, tiny_backbone):
    base = AdaptedCLIP(tiny_backbone)
    with pytest.raises(CheckpointError, match="holds 'image_cross_attn' weights: it comes from a cross-attention run"):
        load_image_adapter(base, cross_run / "image_adapter_cross_attn.pth")
    with pytest.raises(CheckpointError, match="is loading base adapters"):
        load_image_adapter(
            AdaptedCLIP(tiny_backbone, cross=CrossAttentionConfig(variant="cross_attn")),
            cross_run / "image_adapter_cross_attn.pth",
            adapters_only=True,
        )
    text_only = AdaptedCLIP(tiny_backbone, cross=CrossAttentionConfig(variant="text_cross_attn"))
    with pytest.raises(CheckpointError, match="no 'text_cross_attn' entry"):
        load_text_adapter(text_only, trained_run / "text_adapter.pth")


class Payload:
    """Unpickling this object would create a file: a stand-in for code a hostile checkpoint runs."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def test_a_checkpoint_that_would_run_code_is_refused_and_nothing_runs(trained_run, tmp_path):
    checkpoint = torch.load(trained_run / "image_adapter.pth")
    marker = tmp_path / "payload_ran"
    checkpoint["extra"] = Payload(str(marker))
    torch.save(checkpoint, tmp_path / "hostile.pth")
    with pytest.raises(CheckpointError, match=r"hostile.pth holds Python objects .* could run code .* refused"):
        read_checkpoint(tmp_path / "hostile.pth")
    model = AdaptedCLIP(load_clip("tiny"))
    with pytest.raises(CheckpointError, match="refused"):
        load_image_adapter(model, tmp_path / "hostile.pth")
    assert not marker.exists()
    assert read_checkpoint(trained_run / "image_adapter.pth")["epoch"] == 2  # our own files load safely
