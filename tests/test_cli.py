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


def test_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    args = [
        "anomaly",
        "demo",
        "--out",
        str(out),
        "--classes",
        "2",
        "--train_per_class",
        "4",
        "--test_per_class",
        "6",
        "--size",
        "64",
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "P-AUROC" in printed and "mean" in printed
    results = json.loads((out / "results.json").read_text())
    assert set(results["classes"]) == {"stripes", "checker"}
    # frozen features already separate drawn defects from normal texture: far above chance
    assert results["mean"]["pixel_auroc"] > 0.8
    assert (out / "results.csv").is_file() and (out / "demo.log").is_file()
    assert len(list((out / "heatmaps").glob("*.png"))) == 6
    assert main(args) == 0  # a second run reuses the data it wrote
    assert "reused from" in capsys.readouterr().out
