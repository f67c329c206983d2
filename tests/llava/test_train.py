"""train_alternating end to end on CPU: the inspection modes, one step per variant with throughput in the loss
record, the gates' optimizer group, learning, resuming and building from a backbone."""

import json
import shutil

import pytest
import torch
from helpers import QUIET, short_llava_run
from safetensors.torch import save_file

from crossgraft.cli import main as crossgraft_main
from crossgraft.cli import train_alternating as train_main
from crossgraft.llava.config import AlternatingTrainingArguments, DataArguments, ModelArguments
from crossgraft.llava.train import (
    LOG_FILE,
    AlternatingTrainer,
    checkpoint_problem,
    resume_problem,
    train,
    without_tied_copies,
)

BASE, ALT, CROSS = "llava_qwen", "llava_qwen_with_alternating_attn", "llava_qwen_with_alternating_cross_attn"


def log_history(output_dir):
    return json.loads((output_dir / "trainer_state.json").read_text())["log_history"]


def test_dry_run_prints_the_raw_model_type_and_checks_the_variant(tiny_models, capsys):
    assert train_main(["--model_name_or_path", str(tiny_models[ALT]), "--dry_run"]) == 0
    out = capsys.readouterr().out
    assert "config.json model_type: llava_qwen_with_alternating_attn" in out
    assert "variant: alternating (class LlavaQwenWithAlternatingAttnForCausalLM" in out
    assert train_main(["--model_name_or_path", str(tiny_models[ALT]), "--dry_run", "--variant", "base"]) == 2
    assert "--variant base was asked for" in capsys.readouterr().out
    args = ["--model_name_or_path", str(tiny_models[ALT]), "--dry_run", "--variant", "base", "--force"]
    assert train_main(args) == 0
    assert crossgraft_main(["llava", "train", "--model_name_or_path", str(tiny_models["qwen2"]), "--dry_run"]) == 0
    assert "bare Qwen2 language model" in capsys.readouterr().out


def test_inspect_data_previews_without_images(llava_sample, tmp_path, capsys):
    assert train_main(["--data_path", str(llava_sample), "--inspect_data"]) == 0
    out = capsys.readouterr().out
    assert "records: 8" in out and '"from": "human"' in out and "all 8 records are valid" in out
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"id": "x", "conversations": [{"from": "gpt", "value": "hi"}]}]))
    assert train_main(["--data_path", str(bad), "--inspect_data"]) == 2
    assert "first turn must be from the human" in capsys.readouterr().out


def test_inspect_weights_reports_the_copy(tiny_models, llava_sample, capsys):
    args = [
        "--backbone_model",
        str(tiny_models["qwen2"]),
        "--data_path",
        str(llava_sample),
        "--variant",
        "alternating",
        "--init_from_backbone",
        "--inspect_weights",
        "--vision_tower",
        str(tiny_models["siglip"]),
    ]
    assert train_main(args) == 0
    out = capsys.readouterr().out
    assert "into llava_qwen_with_alternating_attn" in out
    # 50 language-model tensors and the 37 of the pretrained tower; missing: image_newline and 4 projector tensors
    assert "copied: 87" in out and "skipped: 0" in out and "missing: 5" in out
    assert "vision tower: 37 tensors from" in out and "1 layer(s) past mm_vision_select_layer dropped" in out
    assert train_main(["--model_name_or_path", str(tiny_models[BASE]), "--inspect_weights"]) == 2
    assert "add --init_from_backbone" in capsys.readouterr().err


@pytest.mark.parametrize("kind", [BASE, ALT, CROSS])
def test_one_step_per_variant_with_throughput_in_the_loss_record(kind, tiny_models, llava_sample, tmp_path):
    output_dir = tmp_path / kind
    args = [
        "--model_name_or_path",
        str(tiny_models[kind]),
        "--data_path",
        str(llava_sample),
        "--output_dir",
        str(output_dir),
        "--per_device_train_batch_size",
        "2",
        "--max_steps",
        "1",
        "--logging_steps",
        "1000",
        "--throughput_log_steps",
        "1",
        "--save_strategy",
        "no",
        *QUIET,
    ]
    assert train_main(args) == 0
    records = [r for r in log_history(output_dir) if "loss" in r]
    assert len(records) == 1  # logged only because the throughput callback asked for it
    assert records[0]["samples_per_second"] > 0 and records[0]["step_time_s"] > 0
    log_text = (output_dir / LOG_FILE).read_text()
    assert '"samples_per_second"' in log_text and '"loss"' in log_text
    assert json.loads((output_dir / "config.json").read_text())["model_type"] == kind


def test_gates_get_their_own_optimizer_group(tiny_models, llava_sample, tmp_path):
    from crossgraft.llava.loading import load_model

    model = load_model(str(tiny_models[CROSS]))
    args = AlternatingTrainingArguments(
        output_dir=str(tmp_path), learning_rate=1e-5, weight_decay=0.1, xattn_gate_lr=3e-3, report_to="none"
    )
    optimizer = AlternatingTrainer(model=model, args=args).create_optimizer()
    gate_ids = {id(p) for n, p in model.named_parameters() if n.endswith("_gate")}
    gate_groups = [g for g in optimizer.param_groups if {id(p) for p in g["params"]} == gate_ids]
    assert len(gate_ids) == 2 and len(gate_groups) == 1
    assert gate_groups[0]["lr"] == 3e-3 and gate_groups[0]["weight_decay"] == 0.0
    others = [g for g in optimizer.param_groups if g is not gate_groups[0]]
    assert {g["lr"] for g in others} == {1e-5} and {g["weight_decay"] for g in others} == {0.1, 0.0}


def test_each_tunable_part_trains_at_its_own_learning_rate(tiny_models, tmp_path):
    from crossgraft.llava.configuration import LlavaConfigError
    from crossgraft.llava.loading import load_model
    from crossgraft.llava.train import describe_freeze_state, set_trainable_parts, tunable_part

    model = load_model(str(tiny_models[CROSS]))
    args = AlternatingTrainingArguments(
        output_dir=str(tmp_path), learning_rate=1e-5, weight_decay=0.1, mm_projector_lr=2e-4,
        mm_vision_tower_lr=3e-6, report_to="none",
    )  # fmt: skip
    counts = set_trainable_parts(model, ["mm_vision_tower", "mm_mlp_adapter"])  # the language model stays frozen
    assert counts["mm_language_model"][0] == 0 and counts["mm_language_model"][1] > 0
    state = describe_freeze_state(counts, args)
    assert "mm_language_model  frozen" in state and "mm_mlp_adapter     trained" in state and "lr 0.0002" in state
    optimizer = AlternatingTrainer(model=model, args=args).create_optimizer()
    expected = {"mm_vision_tower": 3e-6, "mm_mlp_adapter": 2e-4, "xattn": 1e-5, "gates": 1e-3}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        assert group["lr"] == expected[group["part"]], group["part"]
        for parameter in group["params"]:
            name = names[id(parameter)]
            assert group["part"] == ("gates" if name.endswith("_gate") else tunable_part(name))
            if group["weight_decay"]:
                assert not name.endswith(("bias", "_gate")) and "norm" not in name
    trained = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert trained == {id(p) for p in model.parameters() if p.requires_grad}  # every trained tensor, once
    assert not any(tunable_part(names[i]) == "mm_language_model" for i in trained)
    with pytest.raises(LlavaConfigError, match="--mm_projector_lr must be a positive number"):
        AlternatingTrainingArguments(output_dir=str(tmp_path), mm_projector_lr=-1.0, report_to="none")


@pytest.mark.slow  # trains several runs
def test_training_learns_the_captions_and_resumes(tiny_models, llava_sample, tmp_path):
    output_dir = tmp_path / "learn"
    common = short_llava_run(tiny_models[ALT], llava_sample, output_dir, "--logging_steps", "2", "--save_steps", "30")
    assert train_main([*common, "--max_steps", "30"]) == 0
    losses = [r["loss"] for r in log_history(output_dir) if "loss" in r]
    assert losses[-1] < 0.5 * losses[0], losses  # the captions are learned, not just run
    assert (output_dir / "checkpoint-30").is_dir()

    (output_dir / "checkpoint-31").mkdir()  # a save interrupted halfway: weights begun, no trainer_state.json
    (output_dir / "checkpoint-31" / "model.safetensors").write_bytes(b"partial")
    assert train_main([*common, "--max_steps", "32"]) == 0  # the same folder again: resumes at step 30
    log_text = (output_dir / LOG_FILE).read_text()
    assert "skipping" in log_text and "checkpoint-31" in log_text
    assert f"resuming from {output_dir / 'checkpoint-30'}" in log_text
    steps = [r["step"] for r in log_history(output_dir) if "loss" in r]
    assert steps[-1] == 32 and steps.count(30) == 1


def test_train_from_a_bare_qwen2_backbone(tiny_models, llava_sample, tmp_path):
    output_dir = tmp_path / "from_qwen2"
    args = [
        "--backbone_model",
        str(tiny_models["qwen2"]),
        "--init_from_backbone",
        "--variant",
        "alternating_cross",
        "--vision_tower",
        str(tiny_models["siglip"]),
        "--xattn_every_n_layers",
        "2",
        "--data_path",
        str(llava_sample),
        "--output_dir",
        str(output_dir),
        "--max_steps",
        "1",
        "--save_strategy",
        "no",
        *QUIET,
    ]
    assert train_main(args) == 0
    config = json.loads((output_dir / "config.json").read_text())
    assert config["model_type"] == CROSS and config["xattn_mode"] == "gated" and config["xattn_every_n_layers"] == 2
    assert "init from backbone" in (output_dir / LOG_FILE).read_text()


def test_help_lists_the_seed_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in (
        "--variant",
        "--dry_run",
        "--force",
        "--inspect_data",
        "--inspect_weights",
        "--init_from_backbone",
        "--backbone_model",
        "--throughput_log_steps",
        "--deepspeed",
        "--gradient_checkpointing",
        "anyres",
    ):
        assert flag in out, flag


@pytest.mark.slow  # trains the demo
def test_demo_trains_all_four_variants_from_one_backbone(tmp_path, capsys):
    assert crossgraft_main(["llava", "demo", "--out", str(tmp_path), "--steps", "24", "--count", "16"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["variant"] for r in results] == [
        "base",
        "alternating",
        "alternating_cross (gated)",
        "alternating_cross (mask)",
    ]
    starts = [r["eval_loss_before"] for r in results]
    # gated blocks start closed and the projector is kept: base, alternating (text-only prefix aside) and gated
    # start from the same model; every variant learns the held-out captions' template.
    assert abs(starts[0] - starts[2]) < 1e-6
    assert all(r["eval_loss_after"] < 0.7 * r["eval_loss_before"] for r in results), results
    assert all(0.0 <= r["attributes_right"] <= 1.0 for r in results)
    assert (tmp_path / "attention_rules.png").stat().st_size > 0
    assert (tmp_path / "training_curves.png").is_file() and (tmp_path / "training_curves.svg").is_file()
    predictions = (tmp_path / "base" / "evaluation" / "eval" / "predictions.jsonl").read_text().splitlines()
    generated = [json.loads(line) for line in predictions]
    assert len(generated) == 4 and all(g["prediction"] and g["reference"] for g in generated)  # 25% of 16 held out
    out = capsys.readouterr().out
    assert "| alternating_cross (mask) |" in out
    assert "alternating_cross (mask)  vs  base" in out and "paired bootstrap 95% CI" in out
    compared = json.loads((tmp_path / "compare.json").read_text())
    assert [c["variant"] for c in compared["comparisons"]] == [r["variant"] for r in results[1:]]


def test_deepspeed_without_the_package_names_the_extra(tiny_models, llava_sample, tmp_path, capsys, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real_find_spec(name, *a)
    )
    args = [
        "--model_name_or_path", str(tiny_models[BASE]), "--data_path", str(llava_sample), "--output_dir",
        str(tmp_path / "o"), "--deepspeed", "configs/deepspeed/zero2.json",
    ]  # fmt: skip
    assert train_main(args) == 2
    assert "--deepspeed needs DeepSpeed, which is not installed: pip install 'crossgraft[deepspeed]'" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "o").exists()


def deepspeed_checkpoint(folder, processes=2, stage_files=("model_states", "optim_states")):
    """A checkpoint folder as a ZeRO-3 run of `processes` writes it (the files' contents as torch.save writes them)."""
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text("{}")
    (folder / "config.json").write_text("{}")
    save_file({"w": torch.zeros(2)}, str(folder / "model.safetensors"))
    (folder / "latest").write_text("global_step4")
    (folder / "global_step4").mkdir()
    for rank in range(processes):
        torch.save({"rank": rank}, folder / f"rng_state_{rank}.pth")
        for kind in stage_files:
            torch.save({"rank": rank}, folder / "global_step4" / f"zero_pp_rank_{rank}_mp_rank_00_{kind}.pt")
    return folder


def test_a_deepspeed_checkpoint_is_complete_only_with_every_shard(tmp_path):
    assert checkpoint_problem(deepspeed_checkpoint(tmp_path / "whole")) is None
    cut = deepspeed_checkpoint(tmp_path / "cut")
    shard = cut / "global_step4" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    shard.write_bytes(shard.read_bytes()[:100])
    assert checkpoint_problem(cut).startswith("global_step4/zero_pp_rank_1_mp_rank_00_optim_states.pt is incomplete")
    unfinished = deepspeed_checkpoint(tmp_path / "unfinished")
    (unfinished / "latest").unlink()
    assert checkpoint_problem(unfinished) == "its DeepSpeed state has no `latest` file"
    missing = deepspeed_checkpoint(tmp_path / "missing")
    (missing / "global_step4" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()
    assert checkpoint_problem(missing) == "global_step4 holds 2 model and 1 optimizer shards for 2 processes"
    elsewhere = deepspeed_checkpoint(tmp_path / "elsewhere")
    (elsewhere / "latest").write_text("../../etc")
    assert "names '../../etc', which is not a folder there" in checkpoint_problem(elsewhere)


def test_a_checkpoint_resumes_only_as_it_was_written(tmp_path):
    from types import SimpleNamespace

    zero = deepspeed_checkpoint(tmp_path / "zero")
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "optimizer.pt").write_bytes(b"")
    two = SimpleNamespace(deepspeed="zero3.json", world_size=2)
    assert resume_problem(zero, two) is None
    assert "split over 2 processes and this run has 1; launch 2 processes (torchrun --nproc_per_node 2)" in (
        resume_problem(zero, SimpleNamespace(deepspeed="zero3.json", world_size=1))
    )
    assert "holds DeepSpeed ZeRO shards; resume it with --deepspeed" in resume_problem(
        zero, SimpleNamespace(deepspeed=None, world_size=2)
    )
    assert "written without DeepSpeed; resume it without --deepspeed" in resume_problem(plain, two)
    assert f"--model_name_or_path {plain}" in resume_problem(plain, two)


def test_a_save_keeps_one_name_of_a_tied_parameter():
    embed = torch.nn.Embedding(4, 3)
    model = torch.nn.ModuleDict({"embed": embed, "head": torch.nn.Linear(3, 4, bias=False)})
    model["head"].weight = embed.weight
    cloned = {name: value.clone() for name, value in model.state_dict(keep_vars=False).items()}  # as ZeRO-2 hands it
    cloned["head.weight"] = embed.weight.detach().clone()
    assert set(without_tied_copies(model, cloned)) == {"embed.weight"}


@pytest.mark.parametrize("name, stage", [("zero2.json", 2), ("zero3.json", 3)])
def test_shipped_deepspeed_configs(name, stage):
    from pathlib import Path

    config = json.loads((Path(__file__).parents[2] / "configs" / "deepspeed" / name).read_text())
    assert config["zero_optimization"]["stage"] == stage
    assert "optimizer" not in config and "scheduler" not in config  # the Trainer's optimizer keeps the gate group
    assert config["train_micro_batch_size_per_gpu"] == "auto" and config["gradient_accumulation_steps"] == "auto"


def test_llava_family_help_and_unknown_command(capsys):
    assert crossgraft_main(["llava", "--help"]) == 0
    assert "make-sample" in capsys.readouterr().out
    assert crossgraft_main(["llava", "fly"]) == 2
    assert "unknown llava command 'fly'" in capsys.readouterr().err


@pytest.mark.slow  # trains several runs
def test_gradient_checkpointing_gives_the_same_first_step(tiny_models, llava_sample, tmp_path):
    first = {}
    for checkpointing in ("false", "true"):
        output_dir = tmp_path / checkpointing
        args = [
            "--model_name_or_path",
            str(tiny_models[CROSS]),
            "--data_path",
            str(llava_sample),
            "--output_dir",
            str(output_dir),
            "--max_steps",
            "1",
            "--logging_steps",
            "1",
            "--save_strategy",
            "no",
            "--seed",
            "0",
            "--gradient_checkpointing",
            checkpointing,
            *QUIET,
        ]
        assert train_main(args) == 0
        first[checkpointing] = next(r for r in log_history(output_dir) if "loss" in r)
    assert first["true"]["loss"] == pytest.approx(first["false"]["loss"], rel=1e-5)
    assert first["true"]["grad_norm"] == pytest.approx(first["false"]["grad_norm"], rel=1e-4)


@pytest.mark.slow  # starts processes
def test_train_alternating_console_script_is_installed():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(sys.executable).parent / "train_alternating"
    assert script.is_file()
    result = subprocess.run([str(script), "--dry_run"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--dry_run needs --model_name_or_path" in result.stderr


def test_the_python_entry_point_takes_the_typed_arguments(tiny_models, llava_sample, tmp_path):
    output_dir = tmp_path / "typed"
    result = train(
        ModelArguments(model_name_or_path=str(tiny_models[ALT])),
        DataArguments(data_path=str(llava_sample)),
        AlternatingTrainingArguments(
            output_dir=str(output_dir),
            max_steps=2,
            per_device_train_batch_size=2,
            save_strategy="no",
            report_to="none",
            dataloader_pin_memory=False,
        ),
    )
    assert result.output_dir == output_dir and result.global_step == 2 and result.training_loss > 0
    assert json.loads((output_dir / "config.json").read_text())["model_type"] == ALT


def test_a_config_file_holds_any_flags(tiny_models, llava_sample, tmp_path, capsys):
    settings = tmp_path / "run.yaml"
    settings.write_text(f"model_name_or_path: {tiny_models[ALT]}\nvariant: base\ndry_run: true\n")
    assert train_main(["--config", str(settings)]) == 2  # the file's --variant base contradicts the checkpoint
    assert "--variant base was asked for" in capsys.readouterr().out
    assert train_main(["--config", str(settings), "--variant", "alternating"]) == 0  # the command line wins
    settings.write_text("learning_rate: 1e-4\nno_such_flag: 1\n")
    assert train_main(["--config", str(settings)]) == 2
    assert "unknown setting(s) no_such_flag" in capsys.readouterr().err


def test_every_llava_command_explains_every_flag():
    from crossgraft.args import command_parser
    from crossgraft.llava.cli import COMMANDS

    assert {"train", "evaluate", "compare", "export", "demo"} <= set(COMMANDS)
    for command, spec in COMMANDS.items():
        for action in command_parser("llava", command, spec)._actions:
            if action.dest != "help":
                assert action.help, f"llava {command} {action.option_strings or action.dest} has no help text"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--xattn_every_n_layers", "0"], "--xattn_every_n_layers must be at least 1, got 0"),
        (["--throughput_log_steps", "-1"], "--throughput_log_steps must be >= 0"),
        (["--xattn_gate_lr", "0"], "--xattn_gate_lr must be a positive number"),
        (["--learning_rate", "nan"], "--learning_rate must be a finite number >= 0"),
        (["--model_max_length", "0"], "--model_max_length must be at least 1"),
        (["--mm_tunable_parts", "mm_language_model,mm_everything"], "unknown --mm_tunable_parts mm_everything"),
        (["--image_aspect_ratio", "highres"], "image_aspect_ratio 'highres' is not supported; use pad, square, anyres"),
    ],
)
def test_values_that_cannot_work_are_refused_before_anything_is_loaded(flags, message, tmp_path, capsys):
    args = [
        "--model_name_or_path",
        str(tmp_path / "never_read"),
        "--data_path",
        "x.json",
        "--output_dir",
        str(tmp_path / "o"),
    ]
    assert train_main([*args, *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_learning_rate_that_breaks_training_stops_it_and_keeps_the_last_checkpoint(
    tiny_models, llava_sample, tmp_path, capsys
):
    from safetensors.torch import load_file

    output_dir = tmp_path / "huge"
    broken = short_llava_run(tiny_models[ALT], llava_sample, output_dir, "--max_steps", "6", "--save_steps", "1")
    assert train_main([*broken, "--learning_rate", "1e30"]) == 2
    err = capsys.readouterr().err
    assert "training stopped before applying" in err and ("loss became" in err or "gradients became" in err)
    assert "training stopped before applying" in (output_dir / LOG_FILE).read_text()
    assert not (output_dir / "model.safetensors").exists()  # the broken model was not written
    for checkpoint in output_dir.glob("checkpoint-*"):  # whatever the guard let through is finite
        state = load_file(checkpoint / "model.safetensors")
        assert all(torch.isfinite(t).all() for t in state.values()), checkpoint.name


@pytest.mark.slow  # trains several runs
@pytest.mark.parametrize(
    "damage, problem",
    [
        ("trainer_state.json", "trainer_state.json is incomplete or corrupt"),  # a kill while it was written
        ("model.safetensors", "model.safetensors is incomplete or corrupt"),
        ("optimizer.pt", "optimizer.pt is empty"),
    ],
)
def test_an_incomplete_checkpoint_is_skipped_for_the_one_before(damage, problem, tiny_models, llava_sample, tmp_path):
    output_dir = tmp_path / "run"
    assert (
        train_main(short_llava_run(tiny_models[ALT], llava_sample, output_dir, "--max_steps", "4", "--save_steps", "2"))
        == 0
    )
    target = output_dir / "checkpoint-4" / damage
    data = target.read_bytes()
    target.write_bytes(b"" if damage == "optimizer.pt" else data[: len(data) // 2])
    assert (
        train_main(
            short_llava_run(tiny_models[ALT], llava_sample, output_dir, "--max_steps", "5", "--save_steps", "100")
        )
        == 0
    )
    log_text = (output_dir / LOG_FILE).read_text()
    assert f"skipping {output_dir / 'checkpoint-4'}: {problem}" in log_text
    assert f"resuming from {output_dir / 'checkpoint-2'}" in log_text


def test_missing_or_truncated_inputs_are_named(tiny_models, llava_sample, tmp_path, capsys):
    args = short_llava_run(tiny_models[ALT], llava_sample, tmp_path / "out", "--max_steps", "1")
    assert train_main([*args, "--resume_from_checkpoint", str(tmp_path / "nowhere")]) == 2
    assert (
        f"--resume_from_checkpoint {tmp_path / 'nowhere'} cannot be resumed: no such folder" in capsys.readouterr().err
    )
    broken = tmp_path / "broken_model"
    shutil.copytree(tiny_models[ALT], broken)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 3])
    args = short_llava_run(tiny_models[ALT], llava_sample, tmp_path / "out2", "--max_steps", "1")
    args[args.index("--model_name_or_path") + 1] = str(broken)
    assert train_main(args) == 2
    assert f"{broken / 'model.safetensors'} is incomplete or corrupt" in capsys.readouterr().err


@pytest.mark.slow  # starts processes
def test_one_writer_per_output_folder(tiny_models, llava_sample, tmp_path, capsys):
    import subprocess
    import sys

    output_dir = tmp_path / "shared"
    code = (
        "import sys, time; from crossgraft.lock import RunLock; lock = RunLock(sys.argv[1]).acquire(); "
        "print('held', flush=True); time.sleep(120)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(output_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert train_main(short_llava_run(tiny_models[ALT], llava_sample, output_dir, "--max_steps", "1")) == 2
        assert f"is in use by another run (pid {holder.pid}" in capsys.readouterr().err
        assert [p.name for p in output_dir.iterdir()] == [".crossgraft.lock"]
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("flags, expected", [([], 4096), (["--model_max_length", "300"], 300)])
def test_the_saved_config_keeps_the_source_max_length_unless_given(llava_sample, tmp_path, flags, expected):
    from crossgraft.llava.sample import make_tiny_model

    source = make_tiny_model(tmp_path / "source", "llava_qwen", tokenizer_model_max_length=4096)
    out = tmp_path / "run"
    args = short_llava_run(source, llava_sample, out, "--max_steps", "1", "--save_strategy", "no", *flags)
    assert crossgraft_main(["llava", "train", *args]) == 0
    assert json.loads((out / "config.json").read_text())["tokenizer_model_max_length"] == expected
    settings = json.loads((out / "run_args.json").read_text())  # the data flags reach the run folder too
    assert settings["data"]["label_mode"] == "answers" and settings["model"]["model_name_or_path"] == str(source)


def test_the_console_shows_each_log_record_once_and_no_pin_memory_warning(tiny_models, llava_sample, tmp_path, capfd):
    flags = ["--model_name_or_path", str(tiny_models["llava_qwen"]), "--data_path", str(llava_sample),
             "--output_dir", str(tmp_path / "out"), "--max_steps", "2", "--per_device_train_batch_size", "2",
             "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none"]  # fmt: skip
    assert crossgraft_main(["llava", "train", *flags]) == 0
    printed = capfd.readouterr()
    console = printed.out + printed.err
    assert console.count("step 1: {") == 1 and "{'loss'" not in console, console[-3000:]
    assert "pin_memory" not in console


def test_records_cut_before_their_answer_are_reported_and_never_trained_on(tiny_models, llava_sample, tmp_path, capsys):
    base = ["--model_name_or_path", str(tiny_models["llava_qwen"]), "--data_path", str(llava_sample)]
    records = len(json.loads(llava_sample.read_text()))
    assert crossgraft_main(["llava", "train", *base, "--inspect_data", "--model_max_length", "30"]) == 0
    out = capsys.readouterr().out
    assert f"{records} record(s) would be cut before their first answer token at model_max_length 30" in out
    assert "(id sample-0000) needs " in out
    assert crossgraft_main(["llava", "train", *base, "--inspect_data"]) == 0
    assert "every record keeps an answer token within model_max_length" in capsys.readouterr().out
    flags = [
        "--output_dir",
        str(tmp_path / "out"),
        "--max_steps",
        "1",
        "--model_max_length",
        "30",
        "--report_to",
        "none",
    ]
    assert crossgraft_main(["llava", "train", *base, *flags]) == 2  # nothing to learn from: refused, not loss 0
    assert "every record is cut before its first answer token" in capsys.readouterr().err


# LLaVA-NeXT's OneVision fine-tuning scripts (scripts/train/finetune_ov.sh and finetune_si.sh pass the same flags),
# as this project's own list. Left out here: --deepspeed (its arguments start DeepSpeed's process group, so
# test_deepspeed.py runs it in processes of its own), --bf16 and --tf32 (they need a GPU; transformers refuses them on
# a CPU).
ONEVISION_SCRIPT_FLAGS = [
    "--version", "qwen_1_5", "--image_folder", "images", "--video_folder", "videos",
    "--mm_tunable_parts=mm_vision_tower,mm_mlp_adapter,mm_language_model", "--mm_vision_tower_lr=2e-6",
    "--vision_tower", "google/siglip-so400m-patch14-384", "--mm_projector_type", "mlp2x_gelu",
    "--mm_vision_select_layer", "-2", "--mm_use_im_start_end", "False", "--mm_use_im_patch_token", "False",
    "--group_by_modality_length", "True", "--image_aspect_ratio", "anyres_max_9",
    "--image_grid_pinpoints", "(1x1),...,(6x6)", "--mm_patch_merge_type", "spatial_unpad",
    "--run_name", "ov", "--num_train_epochs", "1", "--per_device_train_batch_size", "1",
    "--per_device_eval_batch_size", "4", "--gradient_accumulation_steps", "2", "--evaluation_strategy", "no",
    "--save_strategy", "steps", "--save_steps", "1000", "--save_total_limit", "1", "--learning_rate", "1e-5",
    "--weight_decay", "0.", "--warmup_ratio", "0.03", "--lr_scheduler_type", "cosine", "--logging_steps", "1",
    "--model_max_length", "32768", "--gradient_checkpointing", "True", "--dataloader_num_workers", "4",
    "--lazy_preprocess", "True", "--report_to", "none", "--torch_compile", "True",
    "--torch_compile_backend", "inductor", "--dataloader_drop_last", "True", "--frames_upbound", "32",
]  # fmt: skip


def test_the_onevision_scripts_flags_are_accepted_and_checked(tiny_models, llava_sample, tmp_path, capsys):
    from crossgraft.args import command_parser
    from crossgraft.llava.cli import COMMANDS

    base = ["--model_name_or_path", str(tiny_models["llava_qwen"]), "--data_path", str(llava_sample)]
    flags = [*base, "--output_dir", str(tmp_path / "ov"), *ONEVISION_SCRIPT_FLAGS]
    assert crossgraft_main(["llava", "train", *flags, "--dry_run"]) == 0
    out = capsys.readouterr().out
    assert "--version qwen_1_5: conversations use Qwen's chat template" in out and "--lazy_preprocess: no effect" in out
    _, _, training = command_parser("llava", "train", COMMANDS["train"]).parse(flags)
    assert training.eval_strategy == "no" and training.warmup_steps == pytest.approx(0.03)
    assert training.group_by_modality_length is True and not (tmp_path / "ov").exists()
    for contradiction, message in [
        (["--mm_vision_select_layer", "-1"], "--mm_vision_select_layer -1 contradicts the checkpoint"),
        (["--mm_patch_merge_type", "flat"], "--mm_patch_merge_type flat contradicts the checkpoint"),
        (["--version", "vicuna_v1"], "--version vicuna_v1: crossgraft formats conversations with Qwen's chat"),
        (["--mm_use_im_start_end", "True"], "not have; crossgraft supports only False"),
        (["--warmup_ratio", "0.1", "--warmup_steps", "5"], "say the same thing twice"),
    ]:
        assert crossgraft_main(["llava", "train", *flags, *contradiction, "--dry_run"]) == 2, contradiction
        assert message in capsys.readouterr().err
    assert not (tmp_path / "ov").exists()


def test_training_with_group_by_modality_length_uses_the_grouped_order(
    tiny_models, llava_sample, tmp_path, monkeypatch
):
    from crossgraft.llava import train as train_module
    from crossgraft.llava.data import ModalityGroupedSampler

    made = []
    original = train_module.ModalityGroupingTrainer._get_train_sampler

    def recording(self, train_dataset=None):
        sampler = original(self, train_dataset)
        made.append(sampler)
        return sampler

    monkeypatch.setattr(train_module.ModalityGroupingTrainer, "_get_train_sampler", recording)
    flags = ["--model_name_or_path", str(tiny_models["llava_qwen"]), "--data_path", str(llava_sample),
             "--output_dir", str(tmp_path / "out"), "--max_steps", "2", "--per_device_train_batch_size", "2",
             "--save_strategy", "no", "--report_to", "none", "--group_by_modality_length", "True"]  # fmt: skip
    assert crossgraft_main(["llava", "train", *flags]) == 0
    assert made and isinstance(made[0], ModalityGroupedSampler) and made[0].batch_size == 2
