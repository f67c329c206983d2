"""Two-stage training: public checkpoint format, exact resume, quirk flags, bad input, evaluation, prediction."""

import json
from collections import OrderedDict
from dataclasses import replace

import pytest
import torch
from helpers import quick_train_config as quick_config

import crossgraft.anomaly.train as train_module
from crossgraft.anomaly.backbone import load_clip
from crossgraft.anomaly.checkpoints import load_image_adapter, load_text_adapter
from crossgraft.anomaly.data import DataError
from crossgraft.anomaly.evaluate import EvalConfig, evaluate
from crossgraft.anomaly.infer import load_trained
from crossgraft.anomaly.losses import image_loss, orthogonality_loss, segmentation_loss, similarity_map
from crossgraft.anomaly.model import AdaptedCLIP, AdapterConfig, stage1_features
from crossgraft.anomaly.predict import predict
from crossgraft.anomaly.train import PRESETS, TrainConfig, TrainingError, stage1_loss, train
from crossgraft.graft import CheckpointError


@pytest.fixture(scope="module")
def trained_run(synthetic_root, tmp_path_factory):
    save_path = tmp_path_factory.mktemp("run")
    train(quick_config(synthetic_root, save_path))
    return save_path


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
    train(quick_config(synthetic_root, relu_run, text_epoch=0, image_epoch=1, adapter=AdapterConfig(relu=True)))
    relu_keys = list(torch.load(relu_run / "image_adapter.pth", map_location="cpu")["image_adapter"])
    assert "seg_proj.0.fc.0.weight" in relu_keys and "det_proj.fc.0.weight" in relu_keys
    run_config = json.loads((trained_run / "run_config.json").read_text())
    assert run_config["quirks"] == {
        "vv_mode": "batch",
        "stage1_last_level_only": True,
        "stage1_image_loss": False,
        "gelu": "exact",
    }


def test_resume_after_an_interrupt_reaches_the_same_weights(synthetic_root, tmp_path):
    whole = tmp_path / "whole"
    train(quick_config(synthetic_root, whole, text_epoch=2, image_epoch=2))
    parts = tmp_path / "parts"
    train(quick_config(synthetic_root, parts, text_epoch=1, image_epoch=0))  # stopped after text epoch 1
    train(quick_config(synthetic_root, parts, text_epoch=2, image_epoch=1, resume=True))  # stopped after image 1
    train(quick_config(synthetic_root, parts, text_epoch=2, image_epoch=2, resume=True))
    for name, key in (("text_adapter.pth", "text_adapter"), ("image_adapter.pth", "image_adapter")):
        a = torch.load(whole / name, map_location="cpu")[key]
        b = torch.load(parts / name, map_location="cpu")[key]
        for param in a:
            assert torch.equal(a[param], b[param]), f"{name}:{param}"
    log = (parts / "train.log").read_text()
    assert "resuming: text adapter at epoch 1 of 2" in log and "resuming: image adapter at epoch 1 of 2" in log


def test_an_existing_run_is_never_overwritten_without_resume(trained_run, synthetic_root):
    before = (trained_run / "image_adapter.pth").read_bytes()
    with pytest.raises(TrainingError, match=r"holds a base run \(run_config.json, image_adapter.pth.*pass --resume"):
        train(quick_config(synthetic_root, trained_run))
    assert (trained_run / "image_adapter.pth").read_bytes() == before


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(synthetic_root, tmp_path, monkeypatch):
    real = train_module.stage2_loss
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] > 5 else loss  # epoch 1 has 5 steps at batch 4

    monkeypatch.setattr(train_module, "stage2_loss", flaky)
    with pytest.raises(TrainingError, match=r"stage-2 loss became nan at epoch 2.*image_adapter.pth"):
        train(quick_config(synthetic_root, tmp_path, text_epoch=0, image_epoch=3))
    assert torch.load(tmp_path / "image_adapter.pth", map_location="cpu")["epoch"] == 1
    assert not (tmp_path / "image_adapter_2.pth").exists()


def _batch(synthetic_root, size=2):
    from torch.utils.data import DataLoader

    from crossgraft.anomaly.data import AnomalyDataset, EvalTransform, load_samples

    samples = [s for s in load_samples("synthetic", synthetic_root) if s.class_name == "stripes"]
    return next(iter(DataLoader(AnomalyDataset(samples[-size:], EvalTransform(64)), batch_size=size)))


def test_quirk_flags_change_exactly_their_part(synthetic_root):
    batch = _batch(synthetic_root)
    images, masks, labels = batch["image"], batch["mask"], batch["label"]
    texts = {"stripes": "stripes"}
    torch.manual_seed(0)
    model = AdaptedCLIP(load_clip("tiny", image_size=64, gelu="exact"))
    reference = PRESETS["reference"]
    config = TrainConfig(dataset="synthetic", data_root=synthetic_root, save_path=synthetic_root, quirks=reference)

    patches, image_feature = stage1_features(model.backbone, images, 2, "batch")
    anchors = model.class_anchors(["stripes"]).expand(2, -1, -1)
    ortho = 0.1 * orthogonality_loss(anchors)
    seg = [segmentation_loss(similarity_map(p, anchors, 64), masks) for p in patches]
    with torch.no_grad():
        last_only = stage1_loss(model, images, masks, labels, ["stripes"] * 2, texts, 2, config)
        all_levels = stage1_loss(
            model,
            images,
            masks,
            labels,
            ["stripes"] * 2,
            texts,
            2,
            replace(config, quirks=replace(reference, stage1_last_level_only=False)),
        )
        with_image = stage1_loss(
            model,
            images,
            masks,
            labels,
            ["stripes"] * 2,
            texts,
            2,
            replace(config, quirks=replace(reference, stage1_image_loss=True)),
        )
    assert last_only.item() == pytest.approx((seg[-1] + ortho).item(), rel=1e-5)  # quirk 2: the last level only
    assert all_levels.item() == pytest.approx((sum(seg) + ortho).item(), rel=1e-5)
    assert with_image.item() == pytest.approx((last_only + image_loss(image_feature, anchors, labels)).item(), rel=1e-5)

    tokens_patches, tokens_image = stage1_features(model.backbone, images, 2, "tokens")  # quirk 1
    assert not torch.allclose(tokens_patches[-1], patches[-1], atol=1e-4)
    torch.testing.assert_close(tokens_image, image_feature)  # the plain path is untouched
    quick = load_clip("tiny", image_size=64, gelu="quick")  # quirk 4
    assert quick.clip.config.vision_config.hidden_act == "quick_gelu"
    assert model.backbone.clip.config.vision_config.hidden_act == "gelu"
    assert PRESETS["fixed"] == train_module.QuirkConfig("tokens", False, True, "quick")


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


def test_bad_training_input(synthetic_root, tmp_path):
    with pytest.raises(DataError, match=r"--shot 20 needs 10 normal images"):
        train(quick_config(synthetic_root, tmp_path / "a", shot=20))
    with pytest.raises(DataError, match=r"unknown class\(es\) \['bottle'\]"):
        train(quick_config(synthetic_root, tmp_path / "b", classes=["bottle"]))
    empty = tmp_path / "empty"
    (empty / "cls" / "test" / "good").mkdir(parents=True)
    with pytest.raises(DataError, match="no images found"):
        train(quick_config(empty, tmp_path / "c"))
    with pytest.raises(ValueError, match="text_adapt_until=9 but the text encoder has 4 blocks"):
        train(quick_config(synthetic_root, tmp_path / "d", adapter=AdapterConfig(text_adapt_until=9)))


def test_evaluation_picks_the_named_epoch_and_writes_results(trained_run, synthetic_root, tmp_path):
    results = evaluate(
        EvalConfig(
            dataset="synthetic",
            data_root=synthetic_root,
            save_path=trained_run,
            epoch=1,
            visualize=True,
            pro_compat=True,
            out=tmp_path / "eval",
        )
    )
    assert set(results) == {"stripes", "checker", "dots"}
    assert all(m.aupro_compat is not None and 0 <= m.pixel_auroc <= 1 for m in results.values())
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert saved["epoch"] == 1 and set(saved["classes"]) == set(results)
    assert len(list((tmp_path / "eval" / "visualize").rglob("*.png"))) == 18
    with pytest.raises(CheckpointError, match=r"image_adapter_9.pth not found; .*image_adapter_2.pth"):
        load_trained(trained_run, epoch=9)
    # a different epoch is a different model
    other = evaluate(
        EvalConfig(
            dataset="synthetic", data_root=synthetic_root, save_path=trained_run, epoch=2, out=tmp_path / "eval2"
        )
    )
    assert any(other[c].pixel_auroc != results[c].pixel_auroc for c in results)


def test_predict_writes_heat_maps_and_fits_a_threshold_on_normal_images(trained_run, synthetic_root, tmp_path):
    normal_dir = synthetic_root / "dots" / "test" / "good"
    predictions = predict(synthetic_root / "dots" / "test", trained_run, "dots", tmp_path, fit_on=normal_dir)
    assert len(predictions) == 6
    summary = json.loads((tmp_path / "predictions.json").read_text())
    threshold = summary["threshold"]
    assert threshold == max(p.image_score for p in predictions if "/good/" in p.image)
    assert not any(p.anomalous for p in predictions if "/good/" in p.image)
    for p in predictions:
        assert p.anomalous == (p.image_score > threshold)
    # good/000.png, scratch/000.png, spot/000.png, missing/000.png share a stem: outputs mirror the input tree
    heatmaps = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*_heatmap.png"))
    assert heatmaps == [
        "good/000_heatmap.png",
        "good/001_heatmap.png",
        "good/002_heatmap.png",
        "missing/000_heatmap.png",
        "scratch/000_heatmap.png",
        "spot/000_heatmap.png",
    ]
    assert sorted(p["heatmap"] for p in summary["predictions"]) == sorted(str(tmp_path / h) for h in heatmaps)
    for p in summary["predictions"]:  # each record's json lies beside its own heat map and names its image
        record = json.loads(open(p["heatmap"].replace("_heatmap.png", ".json")).read())
        assert record["image"] == p["image"] and record["heatmap"] == p["heatmap"]


def test_the_same_command_trains_data_parallel_under_torchrun(synthetic_root, tmp_path):
    import os
    import subprocess
    import sys

    run = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "-m",
        "crossgraft",
        "anomaly",
        "train",
        "--dataset",
        "synthetic",
        "--data_root",
        str(synthetic_root),
        "--full_shot",
        "--clip",
        "tiny",
        "--text_epoch",
        "1",
        "--image_epoch",
        "1",
        "--text_batch_size",
        "4",
        "--image_batch_size",
        "4",
        "--save_path",
        str(run),
        "--device",
        "cpu",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("training on 18 images") == 1  # only the main process logs
    log = (run / "train.log").read_text()
    assert log.count("training image epoch 0") == 1
    checkpoint = torch.load(run / "image_adapter_1.pth", map_location="cpu")
    assert checkpoint["epoch"] == 1 and torch.isfinite(checkpoint["image_adapter"]["det_proj.fc.weight"]).all()


def test_the_default_backbone_is_the_papers_and_a_tiny_run_says_so_loudly(trained_run):
    from crossgraft.cli import build_parser

    args = build_parser().parse_args(["anomaly", "train"])
    assert args.clip == "openai/clip-vit-large-patch14-336"
    assert TrainConfig(dataset="VisA", data_root="x", save_path="y").clip == "openai/clip-vit-large-patch14-336"
    log = (trained_run / "train.log").read_text()
    assert log.count("WARNING !!! the backbone is the random `tiny` CLIP") == 1


def test_a_run_of_another_variant_or_configuration_is_refused_in_a_used_folder(trained_run, synthetic_root):
    from crossgraft.anomaly.model import CrossAttentionConfig

    before = (trained_run / "run_config.json").read_text()
    cross = CrossAttentionConfig(variant="cross_attn")
    with pytest.raises(TrainingError, match=r"holds a base run .*another --save_path"):
        train(quick_config(synthetic_root, trained_run, cross=cross))
    with pytest.raises(TrainingError, match=r"cannot resume the base run .*\(variant: base -> cross_attn\)"):
        train(quick_config(synthetic_root, trained_run, cross=cross, resume=True))
    with pytest.raises(TrainingError, match=r"seed: 7 -> 8"):
        train(quick_config(synthetic_root, trained_run, seed=8, resume=True))
    assert (trained_run / "run_config.json").read_text() == before
    assert not list(trained_run.glob("*cross_attn*"))
