"""The built-in demos: `demo` learns to find defects on classes it never saw; `ablation-demo` trains base and
cross_attn (from base) per seed and compares them."""

import json

import pytest

from crossgraft.anomaly.cli import main

pytestmark = pytest.mark.slow  # trains the demos


def test_demo_trains_and_learns(tmp_path, capsys):
    """`make demo`'s defaults: after the short schedule the model finds defects on classes it never saw."""
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "trained, held-out classes (zero-shot)" in printed and "contact sheet" in printed
    heldout = json.loads((out / "heldout" / "results.json").read_text())
    untrained = json.loads((out / "untrained" / "results.json").read_text())
    assert set(heldout["classes"]) == {"checker", "rings", "disc", "waves"}
    assert heldout["mean"]["pixel_auroc"] >= 0.85  # chance is 0.5
    assert heldout["mean"]["pixel_auroc"] > untrained["mean"]["pixel_auroc"] + 0.2
    assert len(list((out / "heldout" / "visualize").glob("*/*.png"))) == 64  # a panel per image
    assert len(list((out / "heldout" / "visualize").glob("*_sheet.png"))) == 4  # a contact sheet per class
    plots = out / "heldout" / "plots"
    assert (plots / "curves_mean.svg").is_file() and (plots / "metrics.png").is_file()
    assert (out / "run" / "plots" / "training.png").is_file()
    for name in ("text_adapter.pth", "image_adapter.pth", "image_adapter_8.pth", "train.log", "run_config.json"):
        assert (out / "run" / name).is_file()
    assert main(["demo", "--out", str(out), "--device", "cpu"]) == 0  # a second run resumes: no retraining
    assert "reused from" in capsys.readouterr().out
    assert "resuming: image adapter at epoch 8 of 8" in (out / "run" / "train.log").read_text()


def test_ablation_demo_trains_both_variants_per_seed_and_compares_them(tmp_path, capsys):
    out = tmp_path / "ablation"
    small = ["--classes", "4", "--train_per_class", "1", "--test_per_class", "4", "--size", "64"]
    args = ["ablation-demo", "--out", str(out), *small, "--text_epoch", "1", "--image_epoch", "1", "--seeds", "5", "6"]
    assert main([*args, "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "cross_attn  vs  base" in printed and "bootstrap 95% CI" in printed and "per-class delta" in printed
    for seed in (5, 6):
        cross_log = (out / f"cross_attn_seed{seed}" / "train_cross_attention.log").read_text()
        assert (
            "LOADING PRE-TRAINED BASE TEXT ADAPTER" in cross_log
            and "LOADING PRE-TRAINED BASE IMAGE ADAPTER" in cross_log
        )
        for variant in ("base", "cross_attn"):
            results = json.loads((out / f"{variant}_seed{seed}" / "heldout" / "results.json").read_text())
            assert set(results["classes"]) == {"checker", "rings"}  # the held-out half
    comparison = json.loads((out / "compare.json").read_text())["comparisons"][0]
    assert comparison["run"].startswith("cross_attn=") and comparison["run"].count(",") == 1  # two seeds
    assert {d["metric"] for d in comparison["mean"]} >= {"pixel_auroc", "image_auroc", "aupro"}
    for figure in ("compare_forest", "compare_classes_cross_attn"):
        assert (out / f"{figure}.png").is_file() and (out / f"{figure}.svg").is_file()
