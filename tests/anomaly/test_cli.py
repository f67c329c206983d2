"""`crossgraft anomaly …` and the seeds' console scripts: every command's help, commands end to end, `--config`
files (a saved run repeats itself), the seeds' command lines, and errors as one message with exit status 2."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

import crossgraft.cli as top
from crossgraft.anomaly.cli import COMMANDS, build_parser
from crossgraft.anomaly.visualize import panel_layout
from crossgraft.cli import main

SCRIPTS = [
    "train_cross_attention",
    "train_cross_attention_feedback",
    "train_cross_attention_feedback_v2",
    "test_stage2_gradients",
]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_explains_every_flag(command, capsys):
    parser = build_parser(command)
    for action in parser._actions:
        if action.dest != "help":
            assert action.help, f"{command} {action.option_strings or action.dest} has no help text"
    with pytest.raises(SystemExit) as exit_info:
        main(["anomaly", command, "--help"])
    assert exit_info.value.code == 0 and "--config FILE" in capsys.readouterr().out


def test_the_family_help_lists_every_command(capsys):
    assert main(["anomaly", "--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {command} " in out for command in COMMANDS)


def test_make_synthetic_inspect_and_k_shot(tmp_path, capsys):
    root = tmp_path / "data"
    make = ["make-synthetic", "--out", str(root), "--classes", "2", "--train_per_class", "1", "--test_per_class", "4"]
    assert main(["anomaly", *make, "--size", "32"]) == 0
    assert main(["anomaly", "inspect-data", "--data_root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "8 images, every file readable" in out and "stripes" in out and "outside the data root" not in out
    shots = tmp_path / "shots.jsonl"
    assert main(["anomaly", "k-shot", "--data_root", str(root), "--shot", "2", "--out", str(shots)]) == 0
    assert len(shots.read_text().splitlines()) == 4 and f"--meta {shots}" in capsys.readouterr().out
    assert main(["anomaly", "inspect-data", "--data_root", str(root), "--meta", str(shots)]) == 0
    assert "4 images" in capsys.readouterr().out
    outside = tmp_path / "elsewhere.jsonl"  # metadata may point outside the root: allowed, and counted
    record = json.loads(shots.read_text().splitlines()[0])
    record["image_path"] = str((root / record["image_path"]).resolve())
    outside.write_text(json.dumps(record) + "\n")
    assert main(["anomaly", "inspect-data", "--data_root", str(tmp_path / "other"), "--meta", str(outside)]) == 0
    assert "note: 1 of 1 files lie outside the data root" in capsys.readouterr().out


def test_errors_are_plain_messages_with_exit_code_2(tmp_path, capsys):
    assert main(["anomaly", "inspect-data", "--dataset", "NoSuchSet", "--data_root", str(tmp_path)]) == 2
    assert "error: unknown dataset 'NoSuchSet'" in capsys.readouterr().err
    assert main(["anomaly", "features", "--clip", str(tmp_path / "missing.pt")]) == 2
    assert "CLIP checkpoint file not found" in capsys.readouterr().err
    for flags, message in (
        (["--num_feedback_loops", "0"], "--num_feedback_loops must be at least 1, got 0"),
        (["--cross_attn_dropout", "1.5"], "--cross_attn_dropout must lie in [0, 1), got 1.5"),
        (["--text_epoch", "-1"], "--text_epoch must be at least 0, got -1"),
        (["--image_lr", "0"], "--image_lr must be a positive number, got 0.0"),
        (["--shot", "3"], "--shot must be an even number >= 2"),
    ):
        assert main(["anomaly", "train", "--save_path", str(tmp_path / "never"), *flags]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "never").exists()
    assert main(["anomaly", "train", "--datset", "MVTec"]) == 2
    error = capsys.readouterr().err
    assert "unrecognized arguments: --datset MVTec (did you mean --dataset for --datset?)" in error
    assert len(error.strip().splitlines()) == 1 and "usage:" not in error
    assert main(["anomaly", "no-such-command"]) == 2
    assert "unknown anomaly command" in capsys.readouterr().err


def test_output_folders_that_cannot_be_written_are_messages(synthetic_root, tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    under_a_file = str(tmp_path / "a_file" / "run")
    assert main(["anomaly", "make-synthetic", "--out", under_a_file, "--classes", "1"]) == 2
    assert "cannot create the folder" in capsys.readouterr().err
    train = ["anomaly", "train", "--dataset", "synthetic", "--data_root", str(synthetic_root), "--clip", "tiny"]
    assert main([*train, "--full_shot", "--save_path", under_a_file, "--device", "cpu"]) == 2
    assert "part of its path is a file, not a folder" in capsys.readouterr().err


@pytest.mark.slow  # trains several runs
def test_train_test_predict_commands(synthetic_root, tmp_path, capsys):
    run = tmp_path / "run"
    common = ["--dataset", "synthetic", "--data_root", str(synthetic_root), "--device", "cpu"]
    train = ["anomaly", "train", *common, "--save_path", str(run), "--clip", "tiny", "--shot", "2"]
    assert main([*train, "--text_epoch", "1", "--image_epoch", "1", "--preset", "fixed"]) == 0
    config = json.loads((run / "run_config.json").read_text())
    assert config["quirks"]["preset"] == "fixed" and config["resolved"]["quirks"]["vv_mode"] == "tokens"
    assert config["shot"] == 2 and len((run / "train_samples.jsonl").read_text().splitlines()) == 6  # 2 per class
    assert main(["anomaly", "test", *common, "--save_path", str(run), "--epoch", "1"]) == 0
    out = capsys.readouterr().out
    assert "P-AUROC" in out and "base run in" in out and "(epoch 1)" in out
    assert (run / "test_synthetic_epoch1" / "results.csv").is_file()
    good = synthetic_root / "dots" / "test" / "good"
    predict = ["anomaly", "predict", str(good), "--save_path", str(run), "--class_name", "dots", "--device", "cpu"]
    assert main([*predict, "--threshold", "1000"]) == 0
    out = capsys.readouterr().out
    assert "model: base run in" in out and "(epoch 1)" in out and out.count("  normal  ") == 3
    assert "image score  det score  verdict  image" in out
    assert main([*train, "--text_epoch", "1", "--image_epoch", "1", "--preset", "fixed"]) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert main(["anomaly", "test", *common, "--save_path", str(tmp_path / "none")]) == 2
    assert "run_config.json not found" in capsys.readouterr().err


def test_a_saved_run_config_repeats_the_run(trained_run, synthetic_root, tmp_path):
    again = tmp_path / "again"
    assert main(["anomaly", "train", "--config", str(trained_run / "run_config.json"), "--save_path", str(again)]) == 0
    for name, key in (("text_adapter.pth", "text_adapter"), ("image_adapter.pth", "image_adapter")):
        first, second = (torch.load(run / name)[key] for run in (trained_run, again))
        assert all(torch.equal(first[k], second[k]) for k in first), name
    saved, repeated = (json.loads((run / "run_config.json").read_text()) for run in (trained_run, again))
    assert {**saved, "save_path": None} == {**repeated, "save_path": None}


def test_a_yaml_config_with_flat_flags_and_the_command_line_winning(synthetic_root, tmp_path, capsys):
    settings = {"inputs": str(synthetic_root / "dots"), "class_name": "dots", "device": "cpu", "batch_size": 3}
    (tmp_path / "predict.yaml").write_text(yaml.safe_dump(settings))
    args = ["--config", str(tmp_path / "predict.yaml"), "--save_path", "somewhere", "--batch_size", "5"]
    config = build_parser("predict").parse(args)
    assert config.inputs == synthetic_root / "dots" and config.batch_size == 5 and config.class_name == "dots"
    (tmp_path / "wrong.yaml").write_text(yaml.safe_dump({**settings, "dataset": "MVTec", "data_root": "x"}))
    assert main(["anomaly", "predict", "--config", str(tmp_path / "wrong.yaml"), "--save_path", "x"]) == 2
    assert "wrong.yaml: unknown setting(s) data_root, dataset" in capsys.readouterr().err
    (tmp_path / "list.json").write_text("[1, 2]")
    assert main(["anomaly", "test", "--config", str(tmp_path / "list.json"), "--save_path", "x"]) == 2
    assert "expected a mapping of flag names to values, found list" in capsys.readouterr().err
    assert main(["anomaly", "test", "--config", str(tmp_path / "missing.yaml"), "--save_path", "x"]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_the_seeds_command_lines_parse_as_written():
    seed_000 = (
        "--dataset MVTec --shot 32 --text_epoch 5 --image_epoch 20 --load_base_text_adapter "
        "ckpt/baseline/text_adapter.pth --load_base_image_adapter ckpt/baseline/image_adapter.pth "
        "--save_path ckpt/cross_attn_from_base"
    ).split()
    config = build_parser("train", variant="cross_attn").parse(seed_000)
    assert config.variant == "cross_attn" and config.shot == 32 and config.data.data_root is None
    assert config.data.root == Path("data/mvtec_ad")
    assert config.load_base_image_adapter == Path("ckpt/baseline/image_adapter.pth")
    seed_001 = (
        "--dataset VisA --save_path ./ckpt/visa_feedback_fixed --num_feedback_loops 3 --text_batch_size 16 "
        "--image_batch_size 2 --text_lr 0.00001 --image_lr 0.0005 --load_base_text_adapter "
        "./ckpt/VisA_base_full_1216/text_adapter.pth"
    ).split()
    config = build_parser("train", variant="cross_attn").parse(seed_001)
    assert config.num_feedback_loops == 3 and config.image_lr == 0.0005
    # seed 000's Conservative and Aggressive lines name no --save_path: the variant's own default folder, named by
    # the variant and its weights, never the base run's ckpt/baseline that they start from
    conservative = (
        "--load_base_text_adapter ckpt/baseline/text_adapter.pth --load_base_image_adapter "
        "ckpt/baseline/image_adapter.pth --text_epoch 5 --image_epoch 20 --text_lr 0.00001 --image_lr 0.0005"
    ).split()
    config = build_parser("train", variant="cross_attn").parse(conservative)
    assert config.save_path == Path("ckpt/cross_attn_text0.1_image0.1")
    assert build_parser("train").parse([]).save_path == Path("ckpt/baseline")  # the public code's default
    weighted = build_parser("train", variant="text_cross_attn").parse(["--text_cross_attn_weight", "0.05"])
    assert weighted.save_path == Path("ckpt/text_cross_attn_text0.05")


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_seed_scripts_show_their_own_names_and_defaults(script, capsys):
    with pytest.raises(SystemExit) as exit_info:
        getattr(top, script)(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {script} ")
    text = " ".join(out.split())  # help lines wrap anywhere
    if script.startswith("train_cross_attention"):
        assert "cross_attn: both (default: cross_attn)" in text
        loops = "3" if "feedback" in script else "1"
        assert f"image encoder of the previous round (default: {loops})" in text
    else:
        assert "--image_cross_attn_weight" in out and "--save_path" in out


@pytest.mark.parametrize("script", ["crossgraft", *SCRIPTS, "train_alternating"])
def test_console_scripts_are_installed(script):
    path = shutil.which(script, path=str(Path(sys.executable).parent))
    assert path is not None, f"{script} is not installed beside {sys.executable}"


@pytest.mark.slow  # trains several runs
def test_seed_scripts_run_and_missing_public_data_is_a_clear_error(synthetic_root, tmp_path, capsys):
    assert top.train_cross_attention(["--dataset", "MVTec", "--shot", "2", "--save_path", str(tmp_path / "x")]) == 2
    assert "data root not found: data/mvtec_ad" in capsys.readouterr().err
    args = ["--dataset", "synthetic", "--data_root", str(synthetic_root), "--clip", "tiny", "--full_shot"]
    args += [
        "--text_epoch",
        "1",
        "--image_epoch",
        "1",
        "--num_feedback_loops",
        "2",
        "--save_path",
        str(tmp_path / "fb"),
    ]
    assert top.train_cross_attention_feedback_v2([*args, "--device", "cpu"]) == 0
    assert (tmp_path / "fb" / "loop_2" / "text_adapter_cross_attn.pth").exists()
    grad = ["--dataset", "synthetic", "--data_root", str(synthetic_root), "--clip", "tiny", "--device", "cpu"]
    assert top.test_stage2_gradients(grad) == 0
    printed = capsys.readouterr().out
    assert printed.count("Ratio:") == 2 and "not norm-matched" in printed


def test_attention_maps_command(cross_run, synthetic_root, tmp_path, capsys):
    images = synthetic_root / "dots" / "test" / "spot"
    args = ["anomaly", "attention-maps", str(images), "--save_path", str(cross_run), "--class_name", "dots"]
    assert main([*args, "--words", "damaged", "defect", "zzz", "--out", str(tmp_path), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "note: zzz do not occur as whole tokens" in out and "2 attention-map panels" in out
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["000_damaged.png", "000_defect.png"]
    layout = panel_layout(64)
    assert Image.open(tmp_path / "000_damaged.png").size == (layout.width, layout.height)


@pytest.mark.slow  # starts processes
def test_the_module_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "crossgraft", "anomaly", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "make-synthetic" in result.stdout


HOSTILE_NAMES = ["../../x", "/abs", "a/b", "..", ".", ""]


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


@pytest.mark.slow  # loads a run for every command and name
@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_no_name_a_user_gives_writes_outside_out(name, trained_run, cross_run, synthetic_root, tmp_path, capsys,
                                                 monkeypatch):  # fmt: skip
    """A class name (from --class_name, --classes or a --meta line) or a run name that could climb out of --out is
    refused with one line before anything is written, or made a plain name: every file written lies under --out."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # a relative escape would land here
    out = tmp_path / "out"
    image = next((synthetic_root / "dots" / "test" / "spot").glob("*.png"))
    meta = tmp_path / "meta.jsonl"
    record = {"image_path": str(image), "label": 0, "class_name": name, "mask_path": None}
    meta.write_text(json.dumps(record) + "\n")
    before = files_under(tmp_path)
    device = ["--device", "cpu"]
    refused = [
        ["anomaly", "test", "--save_path", str(trained_run), "--dataset", "custom", "--data_root", "/",
         "--meta", str(meta), "--visualize", "--out", str(out), *device],
        ["anomaly", "test", "--save_path", str(trained_run), "--dataset", "synthetic", "--data_root",
         str(synthetic_root), "--classes", name, "--visualize", "--out", str(out), *device],
        ["anomaly", "predict", str(image), "--save_path", str(trained_run), "--class_name", name, "--out", str(out),
         *device],
        ["anomaly", "attention-maps", str(image), "--save_path", str(cross_run), "--class_name", name, "--out",
         str(out), *device],
        ["anomaly", "export", "--save_path", str(trained_run), "--class_name", name, "--out", str(out)],
    ]  # fmt: skip
    for command in refused:
        code = main(command)
        error = capsys.readouterr().err
        if name == "" and command[1] == "export":  # an empty --class_name is no name: refused as none given
            assert code == 2 and "--class_name needs at least one class" in error, error
            continue
        assert code == 2 and "it becomes a file name" in error and error.count("\n") == 1, (command[1], error)
    assert files_under(tmp_path) == before  # refused before anything was written
    results = trained_run / "results.json"
    if not results.is_file():
        assert main(["anomaly", "test", "--save_path", str(trained_run), "--dataset", "synthetic", "--data_root",
                     str(synthetic_root), "--out", str(tmp_path / "evaluated"), *device]) == 0  # fmt: skip
        results = tmp_path / "evaluated" / "results.json"
    assert main(["anomaly", "compare", f"base={results}", f"{name or 'x'}={results}", "--out", str(out)]) == 0
    capsys.readouterr()
    written = files_under(tmp_path) - before
    assert written and all(path.is_relative_to(out) or path.is_relative_to(tmp_path / "evaluated") for path in written)
