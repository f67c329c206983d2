"""The `crossgraft` command line: help texts, commands end to end, and errors as plain messages."""

import json
import subprocess
import sys

import pytest

from crossgraft.cli import build_parser, main

ANOMALY_COMMANDS = ["demo", "train", "test", "predict", "make-synthetic", "inspect-data", "k-shot", "features"]


def test_top_level_and_family_help_list_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "anomaly" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["anomaly", "--help"])
    out = capsys.readouterr().out
    assert all(command in out for command in ANOMALY_COMMANDS)


@pytest.mark.parametrize("command", ANOMALY_COMMANDS)
def test_every_flag_of_every_command_has_help(command):
    parser = build_parser()
    family = next(a for a in parser._actions if a.dest == "family").choices["anomaly"]
    sub = next(a for a in family._actions if a.dest == "command").choices[command]
    for action in sub._actions:
        if action.dest != "help":
            assert action.help, f"{command} {action.option_strings} has no help text"


def test_module_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "crossgraft", "anomaly", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "make-synthetic" in result.stdout


def test_make_synthetic_inspect_and_k_shot(tmp_path, capsys):
    root = tmp_path / "data"
    assert (
        main(
            [
                "anomaly",
                "make-synthetic",
                "--out",
                str(root),
                "--classes",
                "2",
                "--train_per_class",
                "1",
                "--test_per_class",
                "4",
                "--size",
                "32",
            ]
        )
        == 0
    )
    assert main(["anomaly", "inspect-data", "--data_root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "8 images, every file readable" in out and "stripes" in out
    shots = tmp_path / "shots.jsonl"
    assert main(["anomaly", "k-shot", "--data_root", str(root), "--shot", "2", "--out", str(shots)]) == 0
    assert len(shots.read_text().splitlines()) == 4
    assert main(["anomaly", "inspect-data", "--data_root", str(root), "--meta", str(shots)]) == 0
    assert "4 images" in capsys.readouterr().out


def test_errors_are_plain_messages_with_exit_code_2(tmp_path, capsys):
    assert main(["anomaly", "inspect-data", "--dataset", "NoSuchSet", "--data_root", str(tmp_path)]) == 2
    assert "error: unknown dataset 'NoSuchSet'" in capsys.readouterr().err
    assert main(["anomaly", "features", "--clip", str(tmp_path / "missing.pt")]) == 2
    assert "CLIP checkpoint file not found" in capsys.readouterr().err


def test_features_command_on_the_tiny_preset(capsys):
    assert main(["anomaly", "features", "--clip", "tiny", "--img_size", "128", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "grid 16x16 (trained at 64 px)" in out and "level  8: tokens (2, 257, 96)" in out
    assert "trainable CLIP parameters: 0" in out


def test_demo_trains_and_learns(tmp_path, capsys):
    """`make demo`'s defaults: after the short schedule the model finds defects on classes it never saw."""
    out = tmp_path / "demo"
    assert main(["anomaly", "demo", "--out", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "trained, held-out classes (zero-shot)" in printed and "heat maps" in printed
    heldout = json.loads((out / "heldout" / "results.json").read_text())
    untrained = json.loads((out / "untrained" / "results.json").read_text())
    assert set(heldout["classes"]) == {"checker", "rings", "disc", "waves"}
    assert heldout["mean"]["pixel_auroc"] >= 0.85  # chance is 0.5
    assert heldout["mean"]["pixel_auroc"] > untrained["mean"]["pixel_auroc"] + 0.2
    assert len(list((out / "heldout" / "visualize").rglob("*.png"))) == 64
    for name in ("text_adapter.pth", "image_adapter.pth", "image_adapter_8.pth", "train.log", "run_config.json"):
        assert (out / "run" / name).is_file()
    assert main(["anomaly", "demo", "--out", str(out), "--device", "cpu"]) == 0  # a second run resumes: no retraining
    assert "reused from" in capsys.readouterr().out
    assert "resuming: image adapter at epoch 8 of 8" in (out / "run" / "train.log").read_text()


def test_train_test_predict_commands(synthetic_root, tmp_path, capsys):
    run = tmp_path / "run"
    common = ["--dataset", "synthetic", "--data_root", str(synthetic_root)]
    assert (
        main(
            [
                "anomaly",
                "train",
                *common,
                "--save_path",
                str(run),
                "--clip",
                "tiny",
                "--shot",
                "2",
                "--text_epoch",
                "1",
                "--image_epoch",
                "1",
                "--preset",
                "fixed",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    config = json.loads((run / "run_config.json").read_text())
    assert config["quirks"]["vv_mode"] == "tokens" and config["shot"] == 2
    assert len((run / "train_samples.jsonl").read_text().splitlines()) == 6  # 2 per class
    assert main(["anomaly", "test", *common, "--save_path", str(run), "--epoch", "1", "--device", "cpu"]) == 0
    assert "P-AUROC" in capsys.readouterr().out and (run / "test_synthetic_epoch1" / "results.csv").is_file()
    assert (
        main(
            [
                "anomaly",
                "predict",
                str(synthetic_root / "dots" / "test" / "good"),
                "--save_path",
                str(run),
                "--class_name",
                "dots",
                "--threshold",
                "1000",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert "normal" in capsys.readouterr().out
    assert main(["anomaly", "train", *common, "--save_path", str(run), "--device", "cpu"]) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert main(["anomaly", "test", *common, "--save_path", str(tmp_path / "none"), "--device", "cpu"]) == 2
    assert "run_config.json not found" in capsys.readouterr().err
