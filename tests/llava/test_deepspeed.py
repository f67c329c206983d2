"""DeepSpeed ZeRO-2 and ZeRO-3 over two processes on the CPU (DeepSpeed's cpu accelerator, over gloo), launched with
torchrun as a user launches them on GPUs. Each shipped config trains each variant to the weights of one plain process
with the same global batch, seed and data order; the saved model is an ordinary checkpoint for every command; the
optimizer groups, per-part learning rates and freeze state hold under the partitioning; a run killed inside a ZeRO
checkpoint resumes to the uninterrupted weights. Plain DDP over gloo (no --deepspeed) is held to the same weights.
What this does not exercise: NCCL, GPU memory, fp16/bf16."""

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import torch
from helpers import FAULT_RUNNER, QUIET, launch_failure, torchrun
from safetensors.torch import load_file

from crossgraft.cli import main
from crossgraft.graft import file_problem
from crossgraft.llava.evaluate import SUMMARY_FILE
from crossgraft.llava.loading import load_model
from crossgraft.llava.modeling import LlavaQwenWithAlternatingCrossAttnForCausalLM
from crossgraft.llava.train import GATE_SUFFIXES, LOG_FILE, set_trainable_parts

pytestmark = pytest.mark.slow  # two-process DeepSpeed runs (about 12 s each)

CONFIGS = Path(__file__).parents[2] / "configs" / "deepspeed"
VARIANTS = {
    "base": "llava_qwen",
    "alternating": "llava_qwen_with_alternating_attn",
    "alternating_cross": "llava_qwen_with_alternating_cross_attn",  # gated
}
GLOBAL_BATCH = 4  # one process of 4, or two of 2
STEPS = ["--max_steps", "4", "--save_strategy", "no"]
# float32 sums in another order (two half batches, gloo's all-reduce) after 4 Adam steps; measured at most 1.5e-5
TOLERANCE = 2e-4
TUNED_PARTS = ["mm_mlp_adapter", "mm_language_model"]  # the vision tower stays frozen
PART_FLAGS = [
    "--mm_tunable_parts", ",".join(TUNED_PARTS), "--mm_projector_lr", "1e-3", "--xattn_gate_lr", "5e-3",
    "--weight_decay", "0.01",
]  # fmt: skip
LEARNING_RATES = {"mm_language_model": 3e-3, "mm_mlp_adapter": 1e-3, "xattn": 3e-3, "gates": 5e-3}
LORA = ["--lora_enable", "--lora_r", "4", "--lora_alpha", "8", "--lora_dropout", "0.0"]


def train_args(model, sample, output_dir, per_device, *extra) -> list[str]:
    return [
        "llava", "train", "--model_name_or_path", str(model), "--data_path", str(sample), "--output_dir",
        str(output_dir), "--per_device_train_batch_size", str(per_device), "--learning_rate", "3e-3",
        "--lr_scheduler_type", "constant", "--seed", "0", *QUIET, *PART_FLAGS, *extra,
    ]  # fmt: skip


def launch_two(args, plan=None) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node 2 -m crossgraft ARGS` (or under the fault runner with PLAN)."""
    program = [str(FAULT_RUNNER), plan] if plan else ["-m", "crossgraft"]
    environment = {**os.environ, "DS_ACCELERATOR": "cpu"}
    return subprocess.run([*torchrun(2), *program, *args], capture_output=True, text=True, timeout=300, env=environment)


@pytest.fixture(scope="module")
def one_process(tiny_models, llava_sample, tmp_path_factory):
    """The plain one-process run (no DeepSpeed) of a variant with the whole global batch, run once per flags."""
    runs = {}

    def run(variant, *extra):
        if (variant, extra) not in runs:
            out = tmp_path_factory.mktemp(f"one-{variant}")
            model = tiny_models[VARIANTS[variant]]
            assert main(train_args(model, llava_sample, out, GLOBAL_BATCH, *STEPS, *extra)) == 0
            runs[variant, extra] = out
        return runs[variant, extra]

    return run


@pytest.fixture(scope="module")
def two_processes(tiny_models, llava_sample, tmp_path_factory):
    """The two-process DeepSpeed run of a variant under a shipped config, half the global batch each."""
    runs = {}

    def run(config, variant, *extra):
        if (config, variant, extra) not in runs:
            out = tmp_path_factory.mktemp(f"two-{config}-{variant}")
            model = tiny_models[VARIANTS[variant]]
            deepspeed = ["--deepspeed", str(CONFIGS / config)] if config else []  # None: plain DDP over gloo
            args = train_args(model, llava_sample, out, GLOBAL_BATCH // 2, *STEPS, *deepspeed)
            result = launch_two([*args, *extra])
            assert result.returncode == 0, launch_failure(result)
            runs[config, variant, extra] = out
        return runs[config, variant, extra]

    return run


def logged_groups(log_text):
    """The optimizer groups the run logged from the optimizer that steps: its class, then (part, lr, decay, count)."""
    header = re.search(r"optimizer groups, as the (\w+) that steps holds them:\n((?:.*\n)+?)(?=\S)", log_text)
    assert header, log_text[-3000:]
    rows = re.findall(r"^\s+(\w+)\s+lr (\S+)\s+weight decay (\S+)\s+([\d,]+) parameters$", header.group(2), re.M)
    return header.group(1), [
        (part, float(lr), float(decay), int(count.replace(",", ""))) for part, lr, decay, count in rows
    ]


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("config", ["zero2.json", "zero3.json", pytest.param(None, id="no-deepspeed")])
def test_two_processes_train_the_weights_of_one_plain_process(config, variant, one_process, two_processes, tiny_models):
    start = load_file(tiny_models[VARIANTS[variant]] / "model.safetensors")
    reference = load_file(one_process(variant) / "model.safetensors")
    out = two_processes(config, variant)
    weights = load_file(out / "model.safetensors")  # gathered from the shards by the save
    assert weights.keys() == reference.keys() == start.keys()
    for key, value in reference.items():
        torch.testing.assert_close(weights[key], value, rtol=0, atol=TOLERANCE, msg=f"{config} {variant}: {key}")
    assert max((reference[k] - start[k]).abs().max().item() for k in start) > 50 * TOLERANCE  # training moved them
    tower = [key for key in start if ".vision_tower." in key]
    assert tower and all(torch.equal(weights[key], start[key]) for key in tower)  # frozen stays frozen
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 4


@pytest.mark.parametrize("config, optimizer_class", [("zero2.json", "DeepSpeedZeroOptimizer"),
                                                     ("zero3.json", "DeepSpeedZeroOptimizer_Stage3")])  # fmt: skip
def test_optimizer_groups_learning_rates_and_freeze_state_hold_under_zero(
    config, optimizer_class, two_processes, tiny_models
):
    """Read from the engine's optimizer (the run logs it at the start): the gates in their own group at
    --xattn_gate_lr without weight decay, each part at its own rate, and nothing of the frozen tower."""
    out = two_processes(config, "alternating_cross")
    stepping, groups = logged_groups((out / LOG_FILE).read_text())
    assert stepping == optimizer_class
    model = load_model(str(tiny_models[VARIANTS["alternating_cross"]]))
    counts = set_trainable_parts(model, TUNED_PARTS)
    gates = sum(p.numel() for name, p in model.named_parameters() if name.endswith(GATE_SUFFIXES))
    expected = {
        "mm_language_model": counts["mm_language_model"][0],
        "mm_mlp_adapter": counts["mm_mlp_adapter"][0],
        "xattn": counts["xattn"][0] - gates,
        "gates": gates,
    }
    assert gates > 0 and {part for part, *_ in groups} == set(expected)  # no group of mm_vision_tower
    for part, count in expected.items():
        assert sum(c for p, _, _, c in groups if p == part) == count, part  # whole tensors, not one shard
        assert {lr for p, lr, _, _ in groups if p == part} == {LEARNING_RATES[part]}, part
    assert {decay for p, _, decay, _ in groups if p == "gates"} == {0.0}
    assert {decay for p, _, decay, _ in groups if p == "mm_language_model"} == {0.0, 0.01}  # biases and norms: none


def test_lora_under_zero2_trains_the_adapters_of_one_plain_process(one_process, two_processes, tmp_path):
    reference, out = one_process("alternating_cross", *LORA), two_processes("zero2.json", "alternating_cross", *LORA)
    for name in ("adapter_model.safetensors", "non_lora_trainables.safetensors"):
        expected, got = load_file(reference / name), load_file(out / name)
        assert got.keys() == expected.keys() and expected, name
        for key, value in expected.items():
            torch.testing.assert_close(got[key], value, rtol=0, atol=TOLERANCE, msg=f"{name}: {key}")
    assert main(["llava", "merge-lora", str(tmp_path / "merged"), "--model_name_or_path", str(out)]) == 0
    merged, loaded = load_model(str(tmp_path / "merged")), load_model(str(out))  # a LoRA folder loads merged
    for (name, value), (_, other) in zip(merged.state_dict().items(), loaded.state_dict().items(), strict=True):
        torch.testing.assert_close(value, other, msg=name)


def test_a_zero3_model_is_an_ordinary_checkpoint_for_every_command(one_process, two_processes, llava_sample, tmp_path):
    out, reference = two_processes("zero3.json", "alternating_cross"), one_process("alternating_cross")
    model = LlavaQwenWithAlternatingCrossAttnForCausalLM.from_pretrained(out)
    assert model.config.xattn_mode == "gated"
    losses = []
    for run in (out, reference):
        assert main(["llava", "evaluate", "--model_name_or_path", str(run), "--data_path", str(llava_sample),
                     "--out", str(tmp_path / run.name), "--max_new_tokens", "4"]) == 0  # fmt: skip
        losses.append(json.loads((tmp_path / run.name / SUMMARY_FILE).read_text())["loss"])
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    assert main(["llava", "plot-runs", str(out), "--out", str(tmp_path / "plots")]) == 0
    more = ["--max_steps", "1", "--save_strategy", "no"]  # and it trains on, as any checkpoint does
    assert main(train_args(out, llava_sample, tmp_path / "on", GLOBAL_BATCH, *more)) == 0
    base = two_processes("zero3.json", "base")
    assert main(["llava", "export", str(tmp_path / "llava-qwen-export"), "--model_name_or_path", str(base)]) == 0
    exported = load_file(tmp_path / "llava-qwen-export" / "model.safetensors")
    assert exported.keys() == load_file(base / "model.safetensors").keys()


def test_a_run_killed_inside_a_zero3_checkpoint_resumes_to_the_uninterrupted_weights(
    tiny_models, llava_sample, tmp_path
):
    model = tiny_models[VARIANTS["alternating_cross"]]
    saving = ["--max_steps", "6", "--save_steps", "2", "--deepspeed", str(CONFIGS / "zero3.json")]
    uninterrupted = launch_two(train_args(model, llava_sample, tmp_path / "whole", 2, *saving))
    assert uninterrupted.returncode == 0, launch_failure(uninterrupted)

    out = tmp_path / "run"
    args = train_args(model, llava_sample, out, 2, *saving)
    killed = launch_two(args, plan="zero_shard:2")  # both processes die writing checkpoint-4's optimizer shards
    assert killed.returncode != 0 and "Signal 9 (SIGKILL)" in killed.stdout + killed.stderr, launch_failure(killed)
    shards = sorted((out / "checkpoint-4" / "global_step4").glob("*optim_states.pt"))
    assert shards and all(file_problem(shard) for shard in shards)  # cut halfway
    assert not (out / "checkpoint-4" / "trainer_state.json").exists()

    resumed = launch_two(args)
    assert resumed.returncode == 0, launch_failure(resumed)
    log_text = (out / LOG_FILE).read_text()
    assert "skipping " + str(out / "checkpoint-4") in log_text
    assert f"resuming from {out / 'checkpoint-2'}" in log_text
    expected, weights = load_file(tmp_path / "whole" / "model.safetensors"), load_file(out / "model.safetensors")
    for key, value in expected.items():
        torch.testing.assert_close(weights[key], value, rtol=0, atol=0, msg=key)


def test_a_variant_built_from_a_backbone_under_zero3_equals_one_plain_process(tiny_models, llava_sample, tmp_path):
    """--init_from_backbone creates the model inside DeepSpeed's partitioning (zero.Init) and copies into it."""
    backbone_folder = tiny_models["llava_qwen"]

    def args(name, per_device, *extra):
        flags = train_args(backbone_folder, llava_sample, tmp_path / name, per_device, *STEPS, *extra)
        return [
            *flags,
            "--init_from_backbone",
            "--backbone_model",
            str(backbone_folder),
            "--variant",
            "alternating_cross",
        ]

    assert main(args("one", GLOBAL_BATCH)) == 0
    result = launch_two(args("two", GLOBAL_BATCH // 2, "--deepspeed", str(CONFIGS / "zero3.json")))
    assert result.returncode == 0, launch_failure(result)
    one, two = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    backbone = load_file(backbone_folder / "model.safetensors")
    assert two.keys() == one.keys() > backbone.keys()  # the backbone's keys plus the gated blocks
    for key, value in one.items():
        torch.testing.assert_close(two[key], value, rtol=0, atol=TOLERANCE, msg=key)
    tower = [key for key in backbone if ".vision_tower." in key]
    assert tower and all(torch.equal(two[key], backbone[key]) for key in tower)  # copied, then frozen
