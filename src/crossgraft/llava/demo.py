"""`crossgraft llava demo`: the four LLaVA variants trained the same way from one tiny backbone on the tiny
caption sample, compared on held-out captions. Everything runs offline on the CPU in well under a minute."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import yaml
from transformers import AutoTokenizer

from crossgraft.files import write_text_atomic
from crossgraft.llava.compare import compare
from crossgraft.llava.config import (
    AlternatingTrainingArguments,
    DataArguments,
    DemoConfig,
    EvaluateConfig,
    ModelArguments,
)
from crossgraft.llava.data import DataCollatorForSupervisedDataset, LazySupervisedDataset, load_records
from crossgraft.llava.evaluate import evaluate
from crossgraft.llava.loading import load_model
from crossgraft.llava.plots import plot_runs
from crossgraft.llava.processing import ImageProcessor
from crossgraft.llava.sample import make_sample, make_tiny_model
from crossgraft.llava.train import train
from crossgraft.llava.visualize import draw_attention_rules

# (name, ModelArguments fields); every variant starts from the same backbone with its projector kept.
DEMO_VARIANTS: tuple[tuple[str, dict[str, object]], ...] = (
    ("base", {}),
    ("alternating", {"init_from_backbone": True, "variant": "alternating"}),
    (
        "alternating_cross (gated)",
        {"init_from_backbone": True, "variant": "alternating_cross", "xattn_every_n_layers": 2},
    ),
    ("alternating_cross (mask)", {"init_from_backbone": True, "variant": "alternating_cross", "xattn_mode": "mask"}),
)


@dataclass
class DemoResult:
    variant: str
    eval_loss_before: float
    eval_loss_after: float
    attributes_right: float  # colour, shape and background words named in held-out greedy captions
    train_seconds: float


def write_splits(data_dir: Path, count: int, seed: int) -> tuple[Path, Path]:
    """One generated sample, split by yaml sampling: the first 75% to train on, the last 25% held out."""
    sample = make_sample(data_dir, count, seed)
    train_yaml, eval_yaml = data_dir / "train.yaml", data_dir / "eval.yaml"
    for path, sampling in ((train_yaml, "first:75%"), (eval_yaml, "end:25%")):
        write_text_atomic(
            path, yaml.safe_dump({"datasets": [{"json_path": sample.name, "sampling_strategy": sampling}]})
        )
    return train_yaml, eval_yaml


def demo_arguments(
    name: str, model_fields: dict[str, object], backbone: Path, train_yaml: Path, eval_yaml: Path, config: DemoConfig
) -> tuple[ModelArguments, DataArguments, AlternatingTrainingArguments]:
    """The same training settings for every variant; only the model arguments differ."""
    if model_fields:
        model_args = ModelArguments(
            backbone_model=str(backbone),
            **model_fields,  # type: ignore[arg-type]
        )
    else:
        model_args = ModelArguments(model_name_or_path=str(backbone))
    output_dir = config.out / name.replace(" ", "_").replace("(", "").replace(")", "")
    training_args = AlternatingTrainingArguments(
        output_dir=str(output_dir),
        max_steps=config.steps,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=6,
        learning_rate=2e-3,
        lr_scheduler_type="cosine",
        warmup_steps=5,
        logging_steps=10,
        eval_strategy="steps",
        eval_steps=config.steps,
        eval_on_start=True,
        save_strategy="no",
        seed=config.seed,
        report_to="none",
        dataloader_pin_memory=False,
        disable_tqdm=True,
        throughput_log_steps=20,
    )
    return model_args, DataArguments(data_path=str(train_yaml), eval_data_path=str(eval_yaml)), training_args


@dataclass
class DemoResults:
    variants: list[DemoResult]
    comparison: str  # `llava compare` of every variant against base on the held-out captions


def run_demo(config: DemoConfig) -> DemoResults:
    out = Path(config.out)
    train_yaml, eval_yaml = write_splits(out / "data", config.count, config.seed)
    backbone = make_tiny_model(out / "backbone", "llava_qwen", seed=config.seed)
    draw_first_sequence(backbone, train_yaml, out / "attention_rules.png")
    results = []
    output_dirs = []
    for name, model_fields in DEMO_VARIANTS:
        model_args, data_args, training_args = demo_arguments(
            name, model_fields, backbone, train_yaml, eval_yaml, config
        )
        started = time.perf_counter()
        output_dir = train(model_args, data_args, training_args).output_dir
        output_dirs.append(f"{name}={output_dir}")
        seconds = time.perf_counter() - started
        history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
        eval_losses = [record["eval_loss"] for record in history if "eval_loss" in record]
        _, summary = evaluate(EvaluateConfig(model_name_or_path=str(output_dir), data_path=str(eval_yaml)))
        attributes = summary.attributes_right or 0.0
        results.append(DemoResult(name, eval_losses[0], eval_losses[-1], attributes, round(seconds, 1)))
    comparison = compare(output_dirs, str(eval_yaml), out, config.seed)
    write_results(out, results, comparison)
    plot_runs(output_dirs, out / "training_curves")
    return DemoResults(results, comparison)


def draw_first_sequence(model_dir: Path, data_path: Path, path: Path) -> Path:
    """The attention rules on the first training record, spliced as the model sees it."""
    model = load_model(str(model_dir)).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    records = load_records(str(data_path))
    dataset = LazySupervisedDataset(records[:1], tokenizer, ImageProcessor.from_config(model.config), None)
    batch = DataCollatorForSupervisedDataset(tokenizer.pad_token_id)([dataset[0]])
    with torch.no_grad():
        spliced = model.model.prepare_multimodal_inputs(
            batch["input_ids"], batch["attention_mask"], None, batch["images"], image_sizes=batch["image_sizes"]
        )
    return draw_attention_rules(spliced.attention_mask[0], spliced.image_token_mask[0], path)


def format_results(results: list[DemoResult], comparison: str = "") -> str:
    lines = [
        "| variant | held-out caption loss, start | after training | attributes right | train time (s) |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r.variant} | {r.eval_loss_before:.3f} | {r.eval_loss_after:.3f} | {r.attributes_right:.0%} "
        f"| {r.train_seconds:.1f} |"
        for r in results
    ]
    if comparison:
        lines += ["", "Held-out captions, each variant against base (`crossgraft llava compare`):", "", comparison]
    return "\n".join(lines)


def write_results(out: Path, results: list[DemoResult], comparison: str) -> None:
    write_text_atomic(out / "results.json", json.dumps([asdict(r) for r in results], indent=2))
    write_text_atomic(out / "results.md", format_results(results, comparison) + "\n")
