"""Small builders shared by test modules (on sys.path through pytest's `pythonpath`)."""

import random
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from crossgraft.anomaly.config import BackboneConfig, DataConfig, TrainConfig

FAULT_RUNNER = Path(__file__).parent / "fault_runner.py"
KILLED = -9  # the exit code of a process killed by SIGKILL
QUIET = ["--report_to", "none", "--dataloader_pin_memory", "false", "--disable_tqdm", "true"]  # LLaVA Trainer flags
trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy 2 renamed it; the floor is 1.26


def quick_train_config(root, save_path, classes=None, **changes) -> TrainConfig:
    """A seconds-long AA-CLIP run on the synthetic set with the tiny CLIP; `changes` override any field."""
    config = TrainConfig(
        data=DataConfig(dataset="synthetic", data_root=root, classes=classes),
        backbone=BackboneConfig(clip="tiny", img_size=64),
        save_path=save_path,
        full_shot=True,
        text_epoch=1,
        image_epoch=2,
        text_batch_size=4,
        image_batch_size=4,
        seed=7,
        device="cpu",
    )
    return replace(config, **changes)


def adapter_weights(run_dir) -> dict:
    """Every tensor of a run's text and image adapter checkpoints, keyed `file:name`."""
    return {
        f"{name}:{key}": value
        for name, entry in (("text_adapter.pth", "text_adapter"), ("image_adapter.pth", "image_adapter"))
        for key, value in torch.load(Path(run_dir) / name, map_location="cpu")[entry].items()
    }


def tied_class(seed=3, images=6, size=24):
    """One class's maps with many ties (scores rounded) and blob masks, and image scores with ties too:
    (scores (N, S, S), masks (N, S, S), image_scores (N,), labels (N,))."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((images, size, size), dtype=bool)
    for i in range(1, images):
        r, c = rng.integers(2, size - 8, size=2)
        masks[i, r : r + rng.integers(2, 7), c : c + rng.integers(2, 7)] = True
    scores = np.round(rng.random((images, size, size)) + 0.6 * masks, 2).astype(np.float32)
    labels = masks.reshape(images, -1).any(1).astype(int)
    image_scores = np.round(scores.reshape(images, -1).max(1) + rng.normal(0, 0.2, images), 1).astype(np.float32)
    return scores, masks, image_scores, labels


def free_port() -> int:
    """A TCP port nothing listens on now, for a multi-process test's rendezvous (torchrun's fixed default, 29500,
    may be held by another process on the machine)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_failure(result: subprocess.CompletedProcess) -> str:
    """What a failed multi-process launch said: its exit code, and every rank's output (torchrun passes each
    worker's stdout and stderr through; the rendezvous and gloo messages are there too)."""
    return (
        f"exit code {result.returncode}\n--- stdout (all ranks) ---\n{result.stdout[-6000:]}\n"
        f"--- stderr (all ranks, torchrun's agent) ---\n{result.stderr[-12000:]}"
    )


def torchrun(nproc: int) -> list[str]:
    """`python -m torch.distributed.run` with `nproc` processes on a free local port."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
    ]


def run_with_faults(plan, args, timeout=300):
    """`crossgraft ARGS` under tests/fault_runner.py with a kill plan; (exit code, seconds)."""
    started = time.perf_counter()
    command = [sys.executable, str(FAULT_RUNNER), plan, *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    assert result.returncode in (0, KILLED), result.stderr[-2000:]
    return result.returncode, time.perf_counter() - started


def until_done(args, plan):
    """The interrupted run, then the same command again until it finishes (a kill can come before any save).
    Returns the first run's exit code (-9: it was killed)."""
    first, _ = run_with_faults(plan, args)
    code = first
    for _ in range(3):
        if code == 0:
            return first
        code, _ = run_with_faults("none", args)
    raise AssertionError(f"{plan}: the run did not finish after its interruption")


def short_llava_run(model, sample, output_dir, *extra) -> list[str]:
    """The flags of a short, quiet, deterministic LLaVA training (constant learning rate, seed 0); `extra` adds
    the steps and saves."""
    return [
        "--model_name_or_path",
        str(model),
        "--data_path",
        str(sample),
        "--output_dir",
        str(output_dir),
        "--per_device_train_batch_size",
        "4",
        "--learning_rate",
        "3e-3",
        "--lr_scheduler_type",
        "constant",
        "--seed",
        "0",
        *QUIET,
        *extra,
    ]


def killed_then_done(args, plan, run_dir, seconds):
    """The run under `plan`, rerun until it finishes; returns the plan that killed it. A plan `random:N` is a timer
    at a seeded moment in (0.3, 0.95) of the uninterrupted run's `seconds`. When the run finishes before the timer
    (the machine was faster this time), the folder is cleared and the timer comes at half the time, so the test
    always sees a kill; a fixed plan (`write:…`, `trainer_state:…`) must kill on its first try."""
    fraction = random.Random(plan).uniform(0.3, 0.95) if plan.startswith("random") else None
    for _ in range(5):
        timed = plan if fraction is None else f"after:{fraction * seconds:.2f}"
        if until_done(args, timed) == KILLED:
            return timed
        if fraction is None:
            raise AssertionError(f"{plan} did not interrupt the run")
        shutil.rmtree(run_dir, ignore_errors=True)
        fraction /= 2
    raise AssertionError(f"{plan}: the run finished before every timer ({fraction * 2 * seconds:.2f} s the last)")
