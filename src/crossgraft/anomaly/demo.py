"""`crossgraft anomaly demo`: AA-CLIP end to end on synthetic data with the tiny backbone.

Writes the synthetic dataset, trains the base model (reference preset, short schedule) on the test split of
half its classes (the "train domain", as AA-CLIP trains on one dataset's test split), then evaluates
zero-shot on the other, held-out classes and on the training classes, next to the same model before
training. Prints the tables and where the heat maps are.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import torch

from crossgraft.anomaly.backbone import load_backbone
from crossgraft.anomaly.compare import compare
from crossgraft.anomaly.config import (
    AblationConfig,
    BackboneConfig,
    CrossAttentionConfig,
    DataConfig,
    DemoConfig,
    EvalConfig,
    SyntheticConfig,
    TrainConfig,
)
from crossgraft.anomaly.data.synthetic import class_names, make_synthetic_dataset
from crossgraft.anomaly.evaluate import evaluate, evaluate_model
from crossgraft.anomaly.metrics import AnomalyMetrics, mean_metrics
from crossgraft.anomaly.model import AdaptedCLIP
from crossgraft.anomaly.plots import plot_run
from crossgraft.anomaly.report import percent
from crossgraft.anomaly.train import train
from crossgraft.devices import resolve_device
from crossgraft.runlog import setup_run_logging

TRAIN_SEED = 111  # the demos' training seed (the public code's default)


def ensure_synthetic(data_root: Path, config: SyntheticConfig) -> bool:
    """Write the synthetic set unless the same config already lies there. True when it was written."""
    stamp = data_root / "synthetic.json"
    if stamp.is_file() and json.loads(stamp.read_text()).get("config") == asdict(config):
        return False
    make_synthetic_dataset(data_root, config)
    return True


def split_classes(count: int) -> tuple[list[str], list[str]]:
    """Train domain: every other class (textures and an object); held out: the rest."""
    names = class_names(count)
    return names[0::2], names[1::2]


def demo_training(config: DemoConfig, data_root: Path, classes: list[str], save_path: Path, seed: int) -> TrainConfig:
    """The run both demos train: the train-domain classes, every image, the short schedule, the reference preset,
    resumable so that a second demo only re-evaluates."""
    return TrainConfig(
        data=DataConfig(dataset="synthetic", data_root=data_root, classes=classes),
        backbone=BackboneConfig(clip=config.clip, img_size=config.synthetic.size),
        save_path=save_path,
        full_shot=True,
        text_epoch=config.text_epoch,
        image_epoch=config.image_epoch,
        seed=seed,
        resume=True,
        device=config.device,
    )


def heldout_eval(
    data_root: Path, classes: list[str], run_dir: Path, out: Path, device: str, pictures: bool = False
) -> EvalConfig:
    """Testing on some synthetic classes; `pictures`: with panels, contact sheets and curve figures."""
    return EvalConfig(
        data=DataConfig(dataset="synthetic", data_root=data_root, classes=classes),
        save_path=run_dir,
        visualize=pictures,
        plots=pictures,
        out=out,
        device=device,
    )


def run_demo(config: DemoConfig) -> dict[str, dict[str, AnomalyMetrics]]:
    out = config.out
    data_root, run_dir = out / "data", out / "run"
    logger = setup_run_logging(out, "demo.log", name="crossgraft.demo")
    written = ensure_synthetic(data_root, config.synthetic)
    train_classes, heldout_classes = split_classes(config.synthetic.classes)
    logger.info("synthetic dataset %s %s", "written to" if written else "reused from", data_root)
    logger.info("train domain: %s | held out: %s", ", ".join(train_classes), ", ".join(heldout_classes))

    training = demo_training(config, data_root, train_classes, run_dir, TRAIN_SEED)
    train(training)
    training_plots = plot_run(run_dir)

    torch.manual_seed(TRAIN_SEED)
    device = resolve_device(config.device)
    quirks = training.quirks.resolve()
    untrained = (
        AdaptedCLIP(load_backbone(training.backbone, quirks.gelu, device), vv_mode=quirks.vv_mode).to(device).eval()
    )
    results = {
        "untrained, held-out classes": evaluate_model(
            untrained,
            True,
            heldout_eval(data_root, heldout_classes, run_dir, out / "untrained", config.device),
            {},
            label="untrained (Xavier-initialised adapters)",
        ),
        "trained, held-out classes (zero-shot)": evaluate(
            heldout_eval(data_root, heldout_classes, run_dir, out / "heldout", config.device, pictures=True)
        ),
        "trained, training classes": evaluate(
            heldout_eval(data_root, train_classes, run_dir, out / "train_domain", config.device)
        ),
    }
    logger.info("\nmean over classes (%%):  %-40s %8s %8s %8s", "", "P-AUROC", "I-AUROC", "AUPRO")
    for name, per_class in results.items():
        mean = mean_metrics(per_class)
        cells = [percent(value) for value in (mean.pixel_auroc, mean.image_auroc, mean.aupro)]
        logger.info("  %-60s %8s %8s %8s", name, *cells)
    logger.info("held-out classes: heat-map panels and a contact sheet per class in %s", out / "heldout" / "visualize")
    logger.info("held-out classes: ROC, PR and PRO curves and a bar chart in %s", out / "heldout" / "plots")
    logger.info("training curves: %s", training_plots[0])
    logger.info("checkpoints: %s; logs: %s, %s", run_dir, run_dir / "train.log", out / "demo.log")
    return results


def run_ablation_demo(config: AblationConfig) -> str:
    """Base vs cross_attn on the synthetic data: same seeds, same epochs, cross_attn initialised from the
    base run's adapters (seed 000's fair comparison); both tested zero-shot on the held-out classes."""
    out = config.out
    data_root = out / "data"
    ensure_synthetic(data_root, config.synthetic)
    train_classes, heldout_classes = split_classes(config.synthetic.classes)
    runs: dict[str, list[str]] = {"base": [], "cross_attn": []}
    for seed in config.seeds:
        base_dir, cross_dir = out / f"base_seed{seed}", out / f"cross_attn_seed{seed}"
        train(demo_training(config, data_root, train_classes, base_dir, seed))
        cross = replace(
            demo_training(config, data_root, train_classes, cross_dir, seed),
            cross=CrossAttentionConfig(variant="cross_attn"),
            load_base_text_adapter=base_dir / "text_adapter.pth",
            load_base_image_adapter=base_dir / "image_adapter.pth",
        )
        train(cross)
        for name, run_dir in (("base", base_dir), ("cross_attn", cross_dir)):
            evaluate(heldout_eval(data_root, heldout_classes, run_dir, run_dir / "heldout", config.device))
            runs[name].append(str(run_dir / "heldout"))
    text = compare([f"base={','.join(runs['base'])}", f"cross_attn={','.join(runs['cross_attn'])}"], out=out)
    logger = setup_run_logging(out, "ablation.log", name="crossgraft.demo")
    logger.info(
        "\nAblation on held-out synthetic classes (%s), seeds %s: base vs cross_attn initialised from "
        "base\n\n%s\n\nwritten: %s, %s; plots: %s, %s",
        ", ".join(heldout_classes),
        list(config.seeds),
        text,
        out / "compare.txt",
        out / "compare.json",
        out / "compare_forest.png",
        out / "compare_classes_cross_attn.png",
    )
    return text
