"""`crossgraft llava demo`: the four LLaVA variants trained the same way from one tiny backbone on the tiny
caption sample, compared on held-out captions. Everything runs offline on the CPU in well under a minute."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from crossgraft.llava.sample import make_sample, make_tiny_model
from crossgraft.llava.train import run

# (name, extra train_alternating flags); every variant starts from the same backbone with its projector kept.
DEMO_VARIANTS = (
    ("base", []),
    ("alternating", ["--init_from_backbone", "--variant", "alternating"]),
    (
        "alternating_cross (gated)",
        ["--init_from_backbone", "--variant", "alternating_cross", "--xattn_every_n_layers", "2"],
    ),
    ("alternating_cross (mask)", ["--init_from_backbone", "--variant", "alternating_cross", "--xattn_mode", "mask"]),
)


@dataclass
class DemoResult:
    variant: str
    eval_loss_before: float
    eval_loss_after: float
    train_seconds: float


def write_splits(data_dir: Path, count: int, seed: int) -> tuple[Path, Path]:
    """One generated sample, split by yaml sampling: the first 75% to train on, the last 25% held out."""
    sample = make_sample(data_dir, count, seed)
    train_yaml, eval_yaml = data_dir / "train.yaml", data_dir / "eval.yaml"
    train_yaml.write_text(yaml.safe_dump({"datasets": [{"json_path": sample.name, "sampling_strategy": "first:75%"}]}))
    eval_yaml.write_text(yaml.safe_dump({"datasets": [{"json_path": sample.name, "sampling_strategy": "end:25%"}]}))
    return train_yaml, eval_yaml


def run_demo(out: Path, steps: int = 200, count: int = 48, seed: int = 0) -> list[DemoResult]:
    out = Path(out)
    train_yaml, eval_yaml = write_splits(out / "data", count, seed)
    backbone = make_tiny_model(out / "backbone", "llava_qwen", seed=seed)
    results = []
    for name, flags in DEMO_VARIANTS:
        output_dir = out / name.replace(" ", "_").replace("(", "").replace(")", "")
        source = (
            ["--backbone_model", str(backbone), "--init_skip_prefixes", "vision_resampler"]
            if flags
            else ["--model_name_or_path", str(backbone)]
        )
        args = [
            *source,
            *flags,
            "--data_path",
            str(train_yaml),
            "--eval_data_path",
            str(eval_yaml),
            "--output_dir",
            str(output_dir),
            "--max_steps",
            str(steps),
            "--per_device_train_batch_size",
            "4",
            "--per_device_eval_batch_size",
            "6",
            "--learning_rate",
            "2e-3",
            "--lr_scheduler_type",
            "cosine",
            "--warmup_steps",
            "5",
            "--logging_steps",
            "10",
            "--eval_strategy",
            "steps",
            "--eval_steps",
            str(steps),
            "--eval_on_start",
            "true",
            "--save_strategy",
            "no",
            "--seed",
            str(seed),
            "--report_to",
            "none",
            "--dataloader_pin_memory",
            "false",
            "--disable_tqdm",
            "true",
            "--throughput_log_steps",
            "20",
        ]
        started = time.perf_counter()
        if run(args, prog="crossgraft llava demo") != 0:
            raise RuntimeError(f"the {name} run failed; see {output_dir}")
        seconds = time.perf_counter() - started
        history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
        eval_losses = [record["eval_loss"] for record in history if "eval_loss" in record]
        results.append(DemoResult(name, eval_losses[0], eval_losses[-1], round(seconds, 1)))
    write_results(out, results)
    return results


def format_results(results: list[DemoResult]) -> str:
    lines = [
        "| variant | held-out caption loss, start | after training | train time (s) |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| {r.variant} | {r.eval_loss_before:.3f} | {r.eval_loss_after:.3f} | {r.train_seconds:.1f} |" for r in results
    ]
    return "\n".join(lines)


def write_results(out: Path, results: list[DemoResult]) -> None:
    (out / "results.json").write_text(json.dumps([asdict(r) for r in results], indent=2))
    (out / "results.md").write_text(format_results(results) + "\n")
