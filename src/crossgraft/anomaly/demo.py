"""`crossgraft anomaly demo`: AA-CLIP end to end on synthetic data with the tiny backbone.

Writes the synthetic dataset, trains the base model (reference preset, short schedule) on the test split of
half its classes (the "train domain", as AA-CLIP trains on one dataset's test split), then evaluates
zero-shot on the other, held-out classes and on the training classes, next to the same model before
training. Prints the tables and where the heat maps are.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from crossgraft.anomaly.backbone import load_clip
from crossgraft.anomaly.compare import compare
from crossgraft.anomaly.data.synthetic import SyntheticConfig, class_names, make_synthetic_dataset
from crossgraft.anomaly.evaluate import EvalConfig, evaluate, evaluate_model
from crossgraft.anomaly.metrics import AnomalyMetrics, mean_metrics
from crossgraft.anomaly.model import AdaptedCLIP, AdapterConfig, CrossAttentionConfig
from crossgraft.anomaly.train import TrainConfig, train
from crossgraft.runlog import setup_run_logging

DEMO_SYNTHETIC = SyntheticConfig(classes=8, train_per_class=2, test_per_class=16, size=128, seed=0)


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


def demo_training(data_root, train_classes, synthetic, clip, text_epoch, image_epoch, seed, device) -> dict:
    """The TrainConfig fields both demos share: the train-domain classes, every image, the short schedule
    (the reference preset is TrainConfig's default), resumable so a second run only re-evaluates."""
    return dict(
        dataset="synthetic",
        data_root=data_root,
        classes=train_classes,
        shot=None,
        clip=clip,
        img_size=synthetic.size,
        text_epoch=text_epoch,
        image_epoch=image_epoch,
        seed=seed,
        resume=True,
        device=device,
    )


def run_demo(
    out: Path,
    synthetic: SyntheticConfig = DEMO_SYNTHETIC,
    clip: str = "tiny",
    device: str = "cpu",
    text_epoch: int = 2,
    image_epoch: int = 8,
    seed: int = 111,
) -> dict[str, dict[str, AnomalyMetrics]]:
    out = Path(out)
    data_root, run_dir = out / "data", out / "run"
    logger = setup_run_logging(out, "demo.log", name="crossgraft.demo")
    written = ensure_synthetic(data_root, synthetic)
    train_classes, heldout_classes = split_classes(synthetic.classes)
    logger.info("synthetic dataset %s %s", "written to" if written else "reused from", data_root)
    logger.info("train domain: %s | held out: %s", ", ".join(train_classes), ", ".join(heldout_classes))

    config = TrainConfig(
        save_path=run_dir,
        **demo_training(data_root, train_classes, synthetic, clip, text_epoch, image_epoch, seed, device),
    )
    train(config)

    def eval_config(classes: list[str], name: str, visualize: bool) -> EvalConfig:
        return EvalConfig(
            dataset="synthetic",
            data_root=data_root,
            save_path=run_dir,
            classes=classes,
            visualize=visualize,
            out=out / name,
            device=device,
        )

    torch.manual_seed(seed)
    untrained = (
        AdaptedCLIP(load_clip(clip, image_size=synthetic.size, gelu=config.quirks.gelu, device=device), AdapterConfig())
        .to(device)
        .eval()
    )
    results = {
        "untrained, held-out classes": evaluate_model(
            untrained,
            True,
            eval_config(heldout_classes, "untrained", False),
            {},
            label="untrained (Xavier-initialised adapters)",
        ),
        "trained, held-out classes (zero-shot)": evaluate(eval_config(heldout_classes, "heldout", True)),
        "trained, training classes": evaluate(eval_config(train_classes, "train_domain", True)),
    }
    logger.info("\nmean over classes (%%):  %-40s %8s %8s %8s", "", "P-AUROC", "I-AUROC", "AUPRO")
    for name, per_class in results.items():
        mean = mean_metrics(per_class)
        logger.info("  %-60s %8.1f %8.1f %8.1f", name, 100 * mean.pixel_auroc, 100 * mean.image_auroc, 100 * mean.aupro)
    logger.info(
        "heat maps (image | ground truth | heat map | overlay): %s, %s",
        out / "heldout" / "visualize",
        out / "train_domain" / "visualize",
    )
    logger.info("checkpoints: %s; logs: %s, %s", run_dir, run_dir / "train.log", out / "demo.log")
    return results


def run_ablation_demo(
    out: Path,
    synthetic: SyntheticConfig = DEMO_SYNTHETIC,
    seeds: tuple[int, ...] = (111, 112),
    clip: str = "tiny",
    device: str = "cpu",
    text_epoch: int = 2,
    image_epoch: int = 8,
) -> str:
    """Base vs cross_attn on the synthetic data: same seeds, same epochs, cross_attn initialised from the
    base run's adapters (seed 000's fair comparison); both tested zero-shot on the held-out classes."""
    out = Path(out)
    data_root = out / "data"
    ensure_synthetic(data_root, synthetic)
    train_classes, heldout_classes = split_classes(synthetic.classes)
    runs: dict[str, list[str]] = {"base": [], "cross_attn": []}
    for seed in seeds:
        base_dir, cross_dir = out / f"base_seed{seed}", out / f"cross_attn_seed{seed}"
        common = demo_training(data_root, train_classes, synthetic, clip, text_epoch, image_epoch, seed, device)
        train(TrainConfig(save_path=base_dir, **common))
        train(
            TrainConfig(
                save_path=cross_dir,
                cross=CrossAttentionConfig(variant="cross_attn"),
                load_base_text_adapter=base_dir / "text_adapter.pth",
                load_base_image_adapter=base_dir / "image_adapter.pth",
                **common,
            )
        )
        for name, run_dir in (("base", base_dir), ("cross_attn", cross_dir)):
            evaluate(
                EvalConfig(
                    dataset="synthetic",
                    data_root=data_root,
                    save_path=run_dir,
                    classes=heldout_classes,
                    out=run_dir / "heldout",
                    device=device,
                )
            )
            runs[name].append(str(run_dir / "heldout"))
    text = compare([f"base={','.join(runs['base'])}", f"cross_attn={','.join(runs['cross_attn'])}"], out=out)
    logger = setup_run_logging(out, "ablation.log", name="crossgraft.demo")
    logger.info(
        "\nAblation on held-out synthetic classes (%s), seeds %s: base vs cross_attn initialised from "
        "base\n\n%s\n\nwritten: %s, %s",
        ", ".join(heldout_classes),
        list(seeds),
        text,
        out / "compare.txt",
        out / "compare.json",
    )
    return text
