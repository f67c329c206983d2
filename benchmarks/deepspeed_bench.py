"""DeepSpeed ZeRO-2 / ZeRO-3 on two CPU processes against one plain process, on the tiny models: for each shipped
config and variant (and ZeRO-2 with LoRA), how far the two-process weights lie from the one-process weights with
the same global batch, seed and data order, and the wall time of each against the one-process run measured in the
same invocation.

    python benchmarks/deepspeed_bench.py [--steps 4] [--out DIR]

Needs the deepspeed extra (pip install "crossgraft[deepspeed]"). On 2 CPU cores a two-process run is slower than one
process (start-up, gloo, partitioning); the point is the agreement, and the timing says what the launch costs.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from crossgraft.llava.sample import make_sample, make_tiny_model

CONFIGS = Path(__file__).parents[1] / "configs" / "deepspeed"
VARIANTS = {
    "base": "llava_qwen",
    "alternating": "llava_qwen_with_alternating_attn",
    "alternating_cross": "llava_qwen_with_alternating_cross_attn",
}
LORA = ["--lora_enable", "--lora_r", "4", "--lora_alpha", "8", "--lora_dropout", "0.0"]
GLOBAL_BATCH = 4


def train_args(model: Path, sample: Path, out: Path, per_device: int, steps: int, *extra: str) -> list[str]:
    return [
        "llava", "train", "--model_name_or_path", str(model), "--data_path", str(sample), "--output_dir", str(out),
        "--per_device_train_batch_size", str(per_device), "--learning_rate", "3e-3", "--lr_scheduler_type",
        "constant", "--seed", "0", "--max_steps", str(steps), "--save_strategy", "no", "--report_to", "none",
        "--disable_tqdm", "true", *extra,
    ]  # fmt: skip


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "DS_ACCELERATOR": "cpu"})
    if result.returncode:
        sys.exit(f"failed: {' '.join(command)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def one_process(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "crossgraft", *args]


def two_processes(args: list[str]) -> list[str]:
    launcher = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())]
    return [sys.executable, *launcher, "-m", "crossgraft", *args]


def largest_difference(folder: Path, reference: Path, files: list[str]) -> tuple[float, bool]:
    """max |a - b| over every tensor of the files, and whether both hold the same keys."""
    worst, same_keys = 0.0, True
    for name in files:
        a, b = load_file(folder / name), load_file(reference / name)
        same_keys &= a.keys() == b.keys()
        worst = max([worst, *((a[k] - b[k]).abs().max().item() for k in a.keys() & b.keys())])
    return worst, same_keys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per run")
    parser.add_argument("--out", type=Path, default=None, help="where the runs go (default: a temporary folder)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    root = args.out or Path(tempfile.mkdtemp(prefix="deepspeed_bench_"))
    sample = make_sample(root / "sample", count=8, seed=0)
    cases = [(variant, []) for variant in VARIANTS] + [("alternating_cross", LORA)]
    print(f"{'config':<11}{'variant':<26}{'max |2 proc - 1 proc|':>22}{'same keys':>11}{'s':>7}{'x 1 proc':>10}")
    for variant, extra in cases:
        model = make_tiny_model(root / VARIANTS[variant], VARIANTS[variant], seed=0)
        name = variant + (" + LoRA" if extra else "")
        files = ["adapter_model.safetensors", "non_lora_trainables.safetensors"] if extra else ["model.safetensors"]
        reference = root / f"one-{name}".replace(" + ", "-")
        baseline = timed(one_process(train_args(model, sample, reference, GLOBAL_BATCH, args.steps, *extra)))
        print(f"{'none':<11}{name:<26}{'(1 process)':>22}{'':>11}{baseline:>7.1f}{1.0:>10.2f}")
        for config in ["zero2.json"] if extra else ["zero2.json", "zero3.json"]:
            out = root / f"two-{config}-{name}".replace(" + ", "-")
            deepspeed = ["--deepspeed", str(CONFIGS / config), *extra]
            seconds = timed(two_processes(train_args(model, sample, out, GLOBAL_BATCH // 2, args.steps, *deepspeed)))
            worst, same_keys = largest_difference(out, reference, files)
            ratio = seconds / baseline
            print(f"{config[:-5]:<11}{name:<26}{worst:>22.2e}{str(same_keys):>11}{seconds:>7.1f}{ratio:>10.2f}")
    print(f"runs in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
