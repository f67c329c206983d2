"""Cross-attention variants (DESIGN §4): shapes, per-image anchors, test-time use, weight 0 = base, gradients,
fair-comparison loading, feedback rounds, diagnostics and the comparison table."""

import json
from functools import partial

import pytest
import torch
from helpers import quick_train_config

from crossgraft.anomaly.checkpoints import load_image_adapter, load_text_adapter
from crossgraft.anomaly.compare import compare, compare_runs
from crossgraft.anomaly.diagnostics import gradient_flow, text_to_patch_attention
from crossgraft.anomaly.infer import anomaly_maps, load_trained
from crossgraft.anomaly.metrics import AnomalyMetrics
from crossgraft.anomaly.model import AdaptedCLIP, CrossAttentionConfig, stage1_context
from crossgraft.anomaly.modules import CrossAttention
from crossgraft.anomaly.report import write_json
from crossgraft.anomaly.train import TrainConfig, stage1_loss, train
from crossgraft.cli import build_parser, main
from crossgraft.graft import CheckpointError

VARIANTS = ["text_cross_attn", "image_cross_attn", "cross_attn"]


def build(backbone, variant="cross_attn", seed=0, **changes):
    torch.manual_seed(seed)
    model = AdaptedCLIP(backbone, cross=CrossAttentionConfig(variant=variant, **changes))
    model.vv_mode = "tokens"
    return model


@pytest.mark.parametrize("batch", [1, 3, 16])
def test_shapes_through_both_modules(tiny_backbone, batch):
    model = build(tiny_backbone).eval()
    images = torch.randn(batch, 3, 64, 64)
    context = stage1_context(tiny_backbone, images, model.surgery_from, "tokens")
    assert context.shape == (batch, 64, 64)  # (B, N, E): 8x8 patches, embedding 64
    texts = ["bottle", "screw", "bottle"] * 6
    with torch.no_grad():
        side = model.text_side(texts[:batch], context)
        output = model(images, text_context=side.sentences)
    assert side.anchors.shape == (batch, 64, 2) and side.sentences.shape == (batch, 16, 64)
    assert [t.shape for t in output.seg_tokens] == [(batch, 64, 64)] * 4 and output.det_token.shape == (batch, 64)
    module = CrossAttention(96, 64, heads=8)
    out, weights = module(torch.randn(batch, 65, 96), torch.randn(batch, 16, 64), return_attention=True)
    assert out.shape == (batch, 65, 96) and weights.shape == (batch, 8, 65, 16)
    torch.testing.assert_close(weights.sum(-1), torch.ones(batch, 8, 65))


def test_anchors_depend_on_the_image_only_with_text_cross_attention(tiny_backbone):
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        crossed = build(tiny_backbone, "text_cross_attn").eval().image_text(["bottle"] * 3, images).anchors
        plain = build(tiny_backbone, "base").eval().image_text(["bottle"] * 3, images).anchors
    assert not torch.allclose(crossed[0], crossed[1], atol=1e-6) and not torch.allclose(crossed[1], crossed[2])
    assert torch.equal(plain[0], plain[1]) and torch.equal(plain[1], plain[2])
    # the same image gets the same anchors whatever else is in the batch
    with torch.no_grad():
        alone = build(tiny_backbone, "text_cross_attn").eval().image_text(["bottle"], images[1:2]).anchors
    torch.testing.assert_close(alone[0], crossed[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_weight_zero_equals_the_base_model_exactly(tiny_backbone, variant):
    images = torch.randn(2, 3, 64, 64)
    base = build(tiny_backbone, "base").eval()
    zero = build(tiny_backbone, variant, text_weight=0.0, image_weight=0.0)
    zero.text_adapter.load_state_dict(base.text_adapter.state_dict())
    zero.image_adapter.load_state_dict(base.image_adapter.state_dict())
    zero.train()  # dropout active: still exactly zero contribution
    with torch.no_grad():
        side, base_side = zero.image_text(["pill"] * 2, images), base.image_text(["pill"] * 2, images)
        maps = anomaly_maps(zero, images, side, "industrial")
        base_maps = anomaly_maps(base, images, base_side, "industrial")
    torch.testing.assert_close(side.anchors, base_side.anchors, atol=1e-6, rtol=0)
    torch.testing.assert_close(maps.maps, base_maps.maps, atol=1e-4, rtol=0)
    torch.testing.assert_close(maps.det_scores, base_maps.det_scores, atol=1e-6, rtol=0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_test_time_path_uses_the_modules(tiny_backbone, variant):
    model = build(tiny_backbone, variant).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = anomaly_maps(model, images, model.image_text(["pill"] * 2, images), "industrial").maps
        for module in (model.text_cross_attn, model.image_cross_attn):
            if module is not None:
                module.out_proj.weight.copy_(torch.randn_like(module.out_proj.weight))  # not a mere rescale
        after = anomaly_maps(model, images, model.image_text(["pill"] * 2, images), "industrial").maps
    assert not torch.allclose(before, after, atol=1e-4)


def test_every_cross_attention_parameter_gets_a_gradient(tiny_backbone, synthetic_root):
    model = build(tiny_backbone).train()
    images, masks = torch.randn(3, 3, 64, 64), (torch.rand(3, 64, 64) > 0.9).float()
    labels = torch.tensor([0, 1, 1])
    config = TrainConfig(dataset="synthetic", data_root=synthetic_root, save_path=synthetic_root)
    texts = {"pill": "pill"}
    stage1_loss(model, images, masks, labels, ["pill"] * 3, texts, model.surgery_from, config).backward()
    from crossgraft.anomaly.train import stage2_loss

    with torch.no_grad():
        side = model.image_text(["pill"] * 3, images)
    stage2_loss(model, images, masks, labels, side).backward()
    for name, parameter in [*model.text_cross_attn.named_parameters(), *model.image_cross_attn.named_parameters()]:
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_learnable_weight_is_a_parameter_and_saved(tiny_backbone):
    fixed = build(tiny_backbone)
    learnable = build(tiny_backbone, learnable_weight=True)
    assert "residual_weight" not in fixed.text_cross_attn.state_dict()
    assert isinstance(learnable.image_cross_attn.residual_weight, torch.nn.Parameter)
    assert "residual_weight" in learnable.image_cross_attn.state_dict()


quick = partial(quick_train_config, image_epoch=1, seed=3)


@pytest.fixture(scope="module")
def base_run(synthetic_root, tmp_path_factory):
    path = tmp_path_factory.mktemp("base")
    train(quick(synthetic_root, path))
    return path


def test_fair_comparison_loads_base_adapters_bit_identical_and_prints_the_summary(
    base_run, synthetic_root, tmp_path, capsys
):
    run = tmp_path / "cross"
    config = quick(
        synthetic_root,
        run,
        text_epoch=0,
        image_epoch=0,
        cross=CrossAttentionConfig(variant="cross_attn"),
        load_base_text_adapter=base_run / "text_adapter.pth",
        load_base_image_adapter=base_run / "image_adapter.pth",
    )
    model = train(config)
    printed = capsys.readouterr().out
    for line in (
        "LOADING PRE-TRAINED BASE TEXT ADAPTER",
        "✓ Base text adapter loaded successfully!",
        "WEIGHT INITIALIZATION SUMMARY",
        "text_cross_attn:",
        "(random init - NEW)",
        "(pre-trained)",
        "STAGE 1: TEXT ADAPTER TRAINING WITH CROSS-ATTENTION",
        "LOADING PRE-TRAINED BASE IMAGE ADAPTER",
        "STAGE 2: IMAGE ADAPTER TRAINING WITH CROSS-ATTENTION",
        "Mean weight magnitude:",
    ):
        assert line in printed, line
    for key, value in torch.load(base_run / "text_adapter.pth")["text_adapter"].items():
        assert torch.equal(model.text_adapter.state_dict()[key], value), key
    for key, value in torch.load(base_run / "image_adapter.pth")["image_adapter"].items():
        assert torch.equal(model.image_adapter.state_dict()[key], value), key
    assert "WEIGHT INITIALIZATION SUMMARY" in (run / "train_cross_attention.log").read_text()


def test_small_weights_warn(base_run, synthetic_root, tmp_path, capsys):
    checkpoint = torch.load(base_run / "text_adapter.pth")
    checkpoint["text_adapter"] = {k: v * 0.01 for k, v in checkpoint["text_adapter"].items()}
    torch.save(checkpoint, tmp_path / "tiny_weights.pth")
    train(
        quick(
            synthetic_root,
            tmp_path / "run",
            text_epoch=0,
            image_epoch=0,
            cross=CrossAttentionConfig(variant="text_cross_attn"),
            load_base_text_adapter=tmp_path / "tiny_weights.pth",
        )
    )
    assert "[WARNING] mean weight magnitude" in capsys.readouterr().out


def test_cross_attention_checkpoints_and_test_time_loading(base_run, synthetic_root, tmp_path):
    run = tmp_path / "cross"
    train(quick(synthetic_root, run, cross=CrossAttentionConfig(variant="cross_attn")))
    text = torch.load(run / "text_adapter_cross_attn.pth")
    image = torch.load(run / "image_adapter_cross_attn_1.pth")
    assert set(text) == {"epoch", "text_adapter", "text_cross_attn", "text_optimizer"}
    assert set(text["text_cross_attn"]) == {f"{n}_proj.{p}" for n in ("q", "k", "v", "out") for p in ("weight", "bias")}
    assert "image_cross_attn" in image and (run / "image_adapter_cross_attn.pth").exists()
    model, run_config, has_text = load_trained(run)
    assert model.cross.variant == "cross_attn" and has_text
    assert torch.equal(model.image_cross_attn.q_proj.weight, image["image_cross_attn"]["q_proj.weight"])


def test_bad_base_checkpoints_stop_before_anything_is_written(base_run, synthetic_root, tmp_path):
    run = tmp_path / "never"
    cross = CrossAttentionConfig(variant="cross_attn")
    with pytest.raises(CheckpointError, match="no 'image_adapter' entry .*text adapter checkpoint"):
        train(quick(synthetic_root, run, cross=cross, load_base_image_adapter=base_run / "text_adapter.pth"))
    broken = torch.load(base_run / "image_adapter.pth")
    broken["image_adapter"]["layer_adapters.0.fc.0.weight"] = torch.zeros(1024, 1024)
    del broken["image_adapter"]["det_proj.fc.weight"]
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError) as info:
        train(quick(synthetic_root, run, cross=cross, load_base_image_adapter=tmp_path / "broken.pth"))
    assert "layer_adapters.0.fc.0.weight: checkpoint has shape (1024, 1024), the model expects (96, 96)" in str(
        info.value
    )
    assert "missing in the checkpoint: det_proj.fc.weight" in str(info.value)
    assert not run.exists()  # nothing written


def test_a_cross_attention_checkpoint_does_not_load_into_the_base_variant(synthetic_root, tmp_path, tiny_backbone):
    run = tmp_path / "cross"
    train(quick(synthetic_root, run, cross=CrossAttentionConfig(variant="image_cross_attn")))
    base = AdaptedCLIP(tiny_backbone)
    with pytest.raises(CheckpointError, match="holds 'image_cross_attn' weights: it comes from a cross-attention run"):
        load_image_adapter(base, run / "image_adapter_cross_attn.pth")
    with pytest.raises(CheckpointError, match="is loading base adapters"):
        train(
            quick(
                synthetic_root,
                tmp_path / "x",
                cross=CrossAttentionConfig(variant="cross_attn"),
                load_base_image_adapter=run / "image_adapter_cross_attn.pth",
            )
        )
    text_only = AdaptedCLIP(tiny_backbone, cross=CrossAttentionConfig(variant="text_cross_attn"))
    with pytest.raises(CheckpointError, match="no 'text_cross_attn' entry"):
        load_text_adapter(text_only, run / "text_adapter_cross_attn.pth")


def test_feedback_with_two_loops_writes_both_loops_checkpoints_and_metrics(synthetic_root, tmp_path):
    run = tmp_path / "feedback"
    train(
        quick(
            synthetic_root,
            run,
            cross=CrossAttentionConfig(variant="cross_attn"),
            num_feedback_loops=2,
            eval_each_loop=True,
            eval_classes=["dots"],
        )
    )
    for loop in (1, 2):
        folder = run / f"loop_{loop}"
        for name in (
            "text_adapter_cross_attn.pth",
            "image_adapter_cross_attn.pth",
            "image_adapter_cross_attn_1.pth",
            "run_config.json",
        ):
            assert (folder / name).exists(), folder / name
        results = json.loads((folder / "eval" / "results.json").read_text())
        assert set(results["classes"]) == {"dots"} and results["mean"]["pixel_auroc"] is not None
    log = (run / "train_cross_attention.log").read_text()
    assert "FEEDBACK LOOP 2/2" in log and "loop 1 metrics" in log and "loop 2 metrics" in log
    assert "(from loop 1)" in log
    second = torch.load(run / "loop_2" / "image_adapter_cross_attn.pth")["image_adapter"]
    first = torch.load(run / "loop_1" / "image_adapter_cross_attn.pth")["image_adapter"]
    assert any(not torch.equal(first[k], second[k]) for k in first)
    assert torch.equal(
        torch.load(run / "image_adapter_cross_attn.pth")["image_adapter"]["det_proj.fc.weight"],
        second["det_proj.fc.weight"],
    )  # the run folder holds the last loop's weights


def test_seed_command_lines_are_accepted():
    seed_000 = (
        "--dataset MVTec --shot 32 --text_epoch 5 --image_epoch 20 --load_base_text_adapter "
        "ckpt/baseline/text_adapter.pth --load_base_image_adapter ckpt/baseline/image_adapter.pth "
        "--save_path ckpt/cross_attn_from_base"
    ).split()
    args = build_parser().parse_args(["anomaly", "train", "--variant", "cross_attn", *seed_000])
    assert args.variant == "cross_attn" and args.shot == 32 and args.data_root is None
    assert str(args.load_base_image_adapter) == "ckpt/baseline/image_adapter.pth"
    seed_001 = (
        "--dataset VisA --save_path ./ckpt/visa_feedback_fixed --num_feedback_loops 3 --text_batch_size 16 "
        "--image_batch_size 2 --text_lr 0.00001 --image_lr 0.0005 --load_base_text_adapter "
        "./ckpt/VisA_base_full_1216/text_adapter.pth"
    ).split()
    args = build_parser().parse_args(["anomaly", "train", "--variant", "cross_attn", *seed_001])
    assert args.num_feedback_loops == 3 and args.image_lr == 0.0005


def test_seed_scripts_run_and_missing_public_data_is_a_clear_error(synthetic_root, tmp_path, capsys):
    from crossgraft.cli import train_cross_attention, train_cross_attention_feedback

    assert train_cross_attention(["--dataset", "MVTec", "--shot", "2", "--save_path", str(tmp_path / "x")]) == 2
    assert "data root not found: data/mvtec_ad" in capsys.readouterr().err
    assert (
        train_cross_attention_feedback(
            [
                "--dataset",
                "synthetic",
                "--data_root",
                str(synthetic_root),
                "--clip",
                "tiny",
                "--full_shot",
                "--text_epoch",
                "1",
                "--image_epoch",
                "1",
                "--num_feedback_loops",
                "2",
                "--save_path",
                str(tmp_path / "fb"),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert (tmp_path / "fb" / "loop_2" / "text_adapter_cross_attn.pth").exists()


def test_gradient_flow_report_and_norm_matching(tiny_backbone):
    model = build(tiny_backbone, "image_cross_attn", image_weight=1.0)
    images, masks = torch.randn(2, 3, 64, 64), (torch.rand(2, 64, 64) > 0.9).float()
    labels = torch.tensor([1, 1])
    matched = gradient_flow(model, images, masks, labels, ["pill", "pill"], norm_match=True)
    unmatched = gradient_flow(model, images, masks, labels, ["pill", "pill"], norm_match=False)
    assert matched.without_cross_attn == pytest.approx(unmatched.without_cross_attn)
    assert matched.with_cross_attn != pytest.approx(unmatched.with_cross_attn)
    report = matched.report()
    assert "Without cross-attention:" in report and "Ratio:" in report
    assert ("[OK]" in report) == (matched.ratio >= 0.8) and ("[CAUTION]" in report) == (matched.ratio < 0.8)


def test_attention_maps_sum_to_one_over_patches(tiny_backbone, tmp_path):
    model = build(tiny_backbone, "text_cross_attn").eval()
    maps = text_to_patch_attention(model, torch.randn(1, 3, 64, 64), "bottle", ["damaged", "broken", "zzz"])
    assert set(maps) == {"damaged", "broken"}
    assert maps["damaged"].shape == (8, 8) and maps["damaged"].sum() == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ValueError, match="no text cross-attention"):
        text_to_patch_attention(build(tiny_backbone, "base"), torch.randn(1, 3, 64, 64), "bottle", ["damaged"])


def metrics(value):
    return AnomalyMetrics(value, value, value, value, value, value, value)


def test_compare_deltas_and_paired_bootstrap(tmp_path, capsys):
    classes = ["a", "b", "c"]
    for seed, offset in ((1, 0.0), (2, 0.02)):
        write_json({c: metrics(0.5 + 0.1 * i + offset) for i, c in enumerate(classes)}, tmp_path / f"A{seed}.json")
        write_json({c: metrics(0.55 + 0.1 * i + offset) for i, c in enumerate(classes)}, tmp_path / f"B{seed}.json")
    text = compare(
        [f"A={tmp_path}/A1.json,{tmp_path}/A2.json", f"B={tmp_path}/B1.json,{tmp_path}/B2.json"], out=tmp_path
    )
    assert "B  vs  A" in text and "+5.0" in text and "± 1.0" in text
    deltas, per_class = compare_runs([json_read(tmp_path / "A1.json")], [json_read(tmp_path / "B1.json")])
    assert all(d.delta == pytest.approx(0.05) for d in deltas)
    assert all(d.ci_low == pytest.approx(0.05) and d.ci_high == pytest.approx(0.05) for d in deltas)
    assert per_class["pixel_auroc"] == pytest.approx({"a": 0.05, "b": 0.05, "c": 0.05})
    assert json.loads((tmp_path / "compare.json").read_text())["comparisons"][0]["run"].startswith("B=")
    write_json({"z": metrics(0.5)}, tmp_path / "other.json")
    assert main(["anomaly", "compare", str(tmp_path / "A1.json"), str(tmp_path / "other.json")]) == 2
    assert "evaluated on other classes" in capsys.readouterr().err


def json_read(path):
    from crossgraft.anomaly.report import read_json

    return read_json(path)


def test_grad_flow_and_attention_map_commands(synthetic_root, tmp_path, capsys):
    common = ["--dataset", "synthetic", "--data_root", str(synthetic_root), "--device", "cpu"]
    assert main(["anomaly", "grad-flow", *common, "--clip", "tiny"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("Ratio:") == 2 and "not norm-matched" in printed
    run = tmp_path / "run"
    train(quick(synthetic_root, run, cross=CrossAttentionConfig(variant="cross_attn")))
    capsys.readouterr()
    images = synthetic_root / "dots" / "test" / "spot"
    assert (
        main(
            [
                "anomaly",
                "attention-maps",
                str(images),
                "--save_path",
                str(run),
                "--class_name",
                "dots",
                "--words",
                "damaged",
                "defect",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert "attention maps" in capsys.readouterr().out
    assert sorted(p.name for p in (run / "attention_maps").glob("*.png"))[:2] == ["000_damaged.png", "000_defect.png"]
    capsys.readouterr()
    tree = synthetic_root / "dots" / "test"  # good/000.png and spot/000.png share a stem
    assert main(["anomaly", "attention-maps", str(tree), "--save_path", str(run), "--class_name", "dots",
                 "--words", "damaged", "--out", str(tmp_path / "maps"), "--device", "cpu"]) == 0  # fmt: skip
    written = sorted(p.relative_to(tmp_path / "maps").as_posix() for p in (tmp_path / "maps").rglob("*.png"))
    assert written == [f"{folder}/{stem}_damaged.png" for folder, stem in (
        ("good", "000"), ("good", "001"), ("good", "002"), ("missing", "000"), ("scratch", "000"), ("spot", "000"))]
    assert main(["anomaly", "grad-flow", *common, "--save_path", str(run)]) == 0
    assert "With cross-attention:" in capsys.readouterr().out


@pytest.mark.parametrize("variant", ["text_cross_attn", "cross_attn"])
def test_test_time_maps_do_not_depend_on_the_batch_under_the_reference_preset(tiny_backbone, variant):
    """The batch-axis V-V quirk belongs to stage-1 training: at test time an image's map is the same alone
    or in any batch."""
    torch.manual_seed(0)
    model = AdaptedCLIP(tiny_backbone, cross=CrossAttentionConfig(variant=variant)).eval()
    model.vv_mode = "batch"  # the reference preset
    images = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        together = anomaly_maps(model, images, model.image_text(["pill"] * 4, images), "industrial")
        for i in range(4):
            alone = anomaly_maps(model, images[i : i + 1], model.image_text(["pill"], images[i : i + 1]), "industrial")
            torch.testing.assert_close(alone.maps[0], together.maps[i], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(alone.det_scores[0], together.det_scores[i], atol=1e-6, rtol=1e-6)


def test_shape_errors_name_both_shapes_and_the_flag_that_sets_each(tiny_backbone):
    module = CrossAttention(96, 64, heads=8, name="image_cross_attn")
    with pytest.raises(ValueError, match=r"image_cross_attn: queries \(2, 65, 64\).* width 96\).*--clip"):
        module(torch.randn(2, 65, 64), torch.randn(2, 16, 64))
    with pytest.raises(ValueError, match=r"image_cross_attn: context \(2, 16, 32\).* width 64\).*--clip"):
        module(torch.randn(2, 65, 96), torch.randn(2, 16, 32))
    with pytest.raises(ValueError, match=r"queries \(2, 65, 96\) and context \(3, 16, 64\).* one context per image"):
        module(torch.randn(2, 65, 96), torch.randn(3, 16, 64))
    with pytest.raises(ValueError, match=r"width 60 is not divisible by 8 heads .*--cross_attn_heads"):
        CrossAttention(96, 60, heads=8)
    model = build(tiny_backbone, "text_cross_attn")
    with pytest.raises(ValueError, match=r"2 texts but image context \(3, 64, 64\)"):
        model.text_side(["pill", "pill"], torch.randn(3, 64, 64))


def test_vanishing_gradients_and_the_summary_labels_are_logged(synthetic_root, tmp_path):
    run = tmp_path / "zero"
    # a fixed text cross-attention weight of 0 cuts the module off: its gradient is exactly zero
    train(quick(synthetic_root, run, cross=CrossAttentionConfig(variant="text_cross_attn", text_weight=0.0)))
    log = (run / "train_cross_attention.log").read_text()
    assert "average gradient norm of text_cross_attn is 0.00e+00 < 1e-03" in log
    assert "average gradient norm of text_adapter" not in log
    fb = tmp_path / "fb"
    train(quick(synthetic_root, fb, text_epoch=0, cross=CrossAttentionConfig(variant="cross_attn"), num_feedback_loops=2))
    summaries = [part.split("=" * 70)[1] for part in
                 (fb / "train_cross_attention.log").read_text().split("WEIGHT INITIALIZATION SUMMARY")[1:]]  # fmt: skip
    assert len(summaries) == 4  # stage 1 and 2 of each loop
    round1_stage2, round2_stage1, round2_stage2 = summaries[1], summaries[2], summaries[3]
    assert "text_adapter:       " in round1_stage2 and "(random init)" in round1_stage2.split("\n")[1]
    assert "text_cross_attn:    " in round1_stage2 and "random init - NEW" in round1_stage2.split("\n")[2]
    assert "trained in Stage 1" not in "".join(summaries) and "updated from Stage 1" not in "".join(summaries)
    assert all("(from loop 1)" in line for line in round2_stage1.strip().splitlines()[:4])
    assert all("(from loop 1)" in line for line in round2_stage2.strip().splitlines()[:4])
