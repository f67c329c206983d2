"""Kill a tiny LLaVA training at a chosen point (inside a checkpoint's save) and at a random one, then rerun the
same command: it resumes from the last complete checkpoint to the uninterrupted run's weights, bit for bit."""

import json

import pytest
import torch
from helpers import killed_then_done, run_with_faults, short_llava_run
from safetensors.torch import load_file

pytestmark = pytest.mark.slow  # kills training processes


def llava_args(model, sample, output_dir):
    """`crossgraft llava train` for 6 steps with a checkpoint every 2."""
    return ["llava", "train", *short_llava_run(model, sample, output_dir, "--max_steps", "6", "--save_steps", "2")]


@pytest.fixture(scope="module")
def llava_reference(tiny_models, llava_sample, tmp_path_factory):
    path = tmp_path_factory.mktemp("llava_uninterrupted")
    _, seconds = run_with_faults(
        "none", llava_args(tiny_models["llava_qwen_with_alternating_attn"], llava_sample, path)
    )
    return load_file(path / "model.safetensors"), seconds


@pytest.mark.parametrize("plan", ["trainer_state:2", "random:1"])
def test_a_llava_run_killed_anywhere_resumes_to_the_same_weights(
    plan, llava_reference, tiny_models, llava_sample, tmp_path
):
    reference, seconds = llava_reference
    output_dir = tmp_path / "run"
    args = llava_args(tiny_models["llava_qwen_with_alternating_attn"], llava_sample, output_dir)
    plan = killed_then_done(args, plan, output_dir, seconds)
    weights = load_file(output_dir / "model.safetensors")
    for key, value in reference.items():
        torch.testing.assert_close(weights[key], value, rtol=0, atol=0, msg=f"{plan}: {key}")
    if plan == "trainer_state:2":  # checkpoint-4's state was cut: the rerun skipped it for checkpoint-2
        log_text = (output_dir / "train_alternating.log").read_text()
        assert "checkpoint-4: trainer_state.json is incomplete or corrupt" in log_text
        assert f"resuming from {output_dir / 'checkpoint-2'}" in log_text
    assert json.loads((output_dir / "trainer_state.json").read_text())["global_step"] == 6
