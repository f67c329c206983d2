"""AA-CLIP two-stage training (DESIGN §3): stage 1 trains the text adapters against frozen V-V features,
stage 2 trains the image adapters against the frozen anchors. Checkpoints every epoch in the public format;
`resume` continues from the last one; Hugging Face Accelerate makes the same loop data-parallel."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from torch.optim.lr_scheduler import MultiStepLR
from torch.utils.data import DataLoader
from tqdm import tqdm

from crossgraft.anomaly.backbone import load_clip
from crossgraft.anomaly.checkpoints import (
    IMAGE_FILE,
    TEXT_FILE,
    load_image_adapter,
    load_text_adapter,
    save_image_adapter,
    save_text_adapter,
)
from crossgraft.anomaly.data import AnomalyDataset, AugmentConfig, TrainTransform, load_samples, sample_k_shot
from crossgraft.anomaly.data.records import DataError, write_jsonl
from crossgraft.anomaly.losses import (
    image_loss,
    orthogonality_loss,
    segmentation_loss,
    similarity_map,
)
from crossgraft.anomaly.model import AdaptedCLIP, AdapterConfig, stage1_features, surgery_start
from crossgraft.anomaly.prompts import class_text, load_class_descriptions
from crossgraft.runlog import setup_run_logging

RUN_CONFIG = "run_config.json"
TRAIN_SAMPLES = "train_samples.jsonl"
BETAS = (0.5, 0.999)


@dataclass
class QuirkConfig:
    """The public code's quirks (DESIGN §3), each switchable. The defaults reproduce the public code."""

    vv_mode: str = "batch"  # 1: V-V attention across the batch axis ("tokens" = over tokens)
    stage1_last_level_only: bool = True  # 2: stage-1 loss keeps only the last level
    stage1_image_loss: bool = False  # 3: no image-level loss in stage 1
    gelu: str = "exact"  # 4: exact GELU instead of CLIP's QuickGELU


PRESETS = {
    "reference": QuirkConfig(),
    "fixed": QuirkConfig(vv_mode="tokens", stage1_last_level_only=False, stage1_image_loss=True, gelu="quick"),
}


@dataclass
class TrainConfig:
    dataset: str
    data_root: Path
    save_path: Path
    meta: Path | None = None
    classes: list[str] | None = None
    shot: int | None = 32  # None: every image (full shot)
    clip: str = "tiny"
    tokenizer: str | None = None
    img_size: int | None = None
    text_epoch: int = 5
    image_epoch: int = 20
    text_lr: float = 1e-5
    image_lr: float = 5e-4
    text_batch_size: int = 16
    image_batch_size: int = 2
    text_norm_weight: float = 0.1
    surgery_until_layer: int | None = None
    milestones: tuple[int, ...] = (16000, 32000)
    gamma: float = 0.5
    seed: int = 111
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    quirks: QuirkConfig = field(default_factory=QuirkConfig)
    preset: str = "reference"
    class_descriptions: Path | None = None
    resume: bool = False
    num_workers: int = 0
    device: str = "cpu"
    mixed_precision: str = "no"
    allow_missing_masks: bool = False

    def to_json(self) -> dict:
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, Path):
                data[key] = str(value)
        return data


class TrainingError(RuntimeError):
    """Training cannot go on (NaN loss, a save path that holds another run, …)."""


def read_run_config(save_path: Path) -> dict:
    path = Path(save_path) / RUN_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {save_path} a crossgraft training folder?")
    return json.loads(path.read_text(encoding="utf-8"))


def epoch_seed(seed: int, stage: int, epoch: int) -> int:
    """Every epoch's shuffling and augmentation depend only on (seed, stage, epoch): resuming is exact."""
    return seed * 1000 + stage * 100 + epoch


def _check_finite(loss: torch.Tensor, stage: str, epoch: int, step: int, save_path: Path, last: str) -> None:
    if not torch.isfinite(loss):
        raise TrainingError(
            f"the {stage} loss became {loss.item()} at epoch {epoch}, step {step}; training stopped. The last good "
            f"checkpoint is kept ({Path(save_path) / last if (Path(save_path) / last).exists() else 'none yet'}). "
            "Try a lower learning rate, or --mixed_precision no."
        )


def _all_reduce_grads(accelerator: Accelerator, parameters) -> None:
    """Average gradients over processes (data parallel); a no-op in a single process."""
    if accelerator.num_processes == 1:
        return
    for parameter in parameters:
        if parameter.grad is not None:
            parameter.grad = accelerator.reduce(parameter.grad, reduction="mean")


class EpochRunner:
    """One training epoch of either stage: seeded loader, progress bar, NaN guard, (data-parallel) step."""

    def __init__(self, accelerator: Accelerator, samples, config: TrainConfig, save_path: Path) -> None:
        self.accelerator = accelerator
        self.samples = samples
        self.config = config
        self.save_path = save_path

    def loader(self, transform, batch_size: int, seed: int) -> DataLoader:
        generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)  # augmentation draws from the global RNG in the main process
        loader = DataLoader(
            AnomalyDataset(self.samples, transform),
            batch_size=batch_size,
            shuffle=True,
            generator=generator,
            num_workers=self.config.num_workers,
        )
        if self.accelerator.num_processes > 1:
            loader = self.accelerator.prepare_data_loader(loader)
        return loader

    def run(
        self, stage, epoch, total, transform, batch_size, loss_fn, optimizer, parameters, last_file, scheduler=None
    ) -> float:
        """Train one epoch; returns the mean loss."""
        loader = self.loader(transform, batch_size, epoch_seed(self.config.seed, stage, epoch))
        name = "text" if stage == 1 else "image"
        progress = tqdm(
            loader, desc=f"{name} epoch {epoch + 1}/{total}", leave=False, disable=not self.accelerator.is_main_process
        )
        losses = []
        for step, batch in enumerate(progress):
            with self.accelerator.autocast():
                loss = loss_fn(batch)
            _check_finite(loss, f"stage-{stage}", epoch + 1, step, self.save_path, last_file)
            optimizer.zero_grad()
            self.accelerator.backward(loss)
            _all_reduce_grads(self.accelerator, parameters)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()  # per iteration, as the public code
            losses.append(loss.item())
            progress.set_postfix(loss=f"{loss.item():.4f}")
        return sum(losses) / max(len(losses), 1)


def train(config: TrainConfig) -> AdaptedCLIP:
    save_path = Path(config.save_path)
    accelerator = Accelerator(cpu=config.device == "cpu", mixed_precision=config.mixed_precision)
    logger = setup_run_logging(save_path, "train.log")
    main = accelerator.is_main_process
    if not main:  # one process writes the log and the checkpoints
        logger.setLevel(logging.WARNING)
    logger.info("args: %s", json.dumps(config.to_json()))
    existing = [name for name in (TEXT_FILE, IMAGE_FILE) if (save_path / name).exists()]
    if existing and not config.resume:
        raise TrainingError(
            f"{save_path} already holds {', '.join(existing)}; pass --resume to continue that run, or choose "
            "another --save_path (nothing was overwritten)"
        )

    samples = load_samples(
        config.dataset,
        config.data_root,
        split="test",
        meta=config.meta,
        classes=config.classes,
        allow_missing_masks=config.allow_missing_masks,
    )
    if config.shot:
        samples = sample_k_shot(samples, config.shot, config.seed)
    if main:
        write_jsonl(samples, save_path / TRAIN_SAMPLES, root=config.data_root)
    descriptions = load_class_descriptions(config.class_descriptions)
    class_names = sorted({s.class_name for s in samples})
    logger.info("training on %d images of %d classes (%s)", len(samples), len(class_names), ", ".join(class_names))

    device = accelerator.device
    backbone = load_clip(
        config.clip, image_size=config.img_size, gelu=config.quirks.gelu, tokenizer=config.tokenizer, device=device
    )
    torch.manual_seed(config.seed)  # adapter init: a resumed run re-creates the same untrained adapters
    model = AdaptedCLIP(backbone, config.adapter).to(device)
    surgery_from = surgery_start(backbone.num_vision_layers, config.surgery_until_layer, backbone.levels)
    if main:
        run_config = config.to_json() | {"img_size": backbone.image_size, "surgery_from": surgery_from}
        (save_path / "run_config.json").write_text(json.dumps(run_config, indent=2))

    text_optimizer = torch.optim.Adam(model.text_adapter.parameters(), lr=config.text_lr, betas=BETAS)
    image_optimizer = torch.optim.Adam(model.image_adapter.parameters(), lr=config.image_lr, betas=BETAS)
    image_scheduler = MultiStepLR(image_optimizer, milestones=list(config.milestones), gamma=config.gamma)
    text_start = image_start = 0
    if config.resume and (save_path / TEXT_FILE).exists():
        checkpoint = load_text_adapter(model, save_path / TEXT_FILE)
        text_optimizer.load_state_dict(checkpoint["text_optimizer"])
        text_start = int(checkpoint["epoch"])
        logger.info("resuming: text adapter at epoch %d of %d", text_start, config.text_epoch)
    if config.resume and (save_path / IMAGE_FILE).exists():
        checkpoint = load_image_adapter(model, save_path / IMAGE_FILE)
        image_optimizer.load_state_dict(checkpoint["image_optimizer"])
        if "image_scheduler" in checkpoint:
            image_scheduler.load_state_dict(checkpoint["image_scheduler"])
        image_start = int(checkpoint["epoch"])
        logger.info("resuming: image adapter at epoch %d of %d", image_start, config.image_epoch)

    texts = {name: class_text(name, descriptions) for name in class_names}
    epochs = EpochRunner(accelerator, samples, config, save_path)
    stage1_transform = TrainTransform(backbone.image_size, AugmentConfig(color_jitter=False))
    for epoch in range(text_start, config.text_epoch):

        def text_loss(batch):
            images, masks, labels = (batch[k].to(device) for k in ("image", "mask", "label"))
            return stage1_loss(model, images, masks, labels, batch["class_name"], texts, surgery_from, config)

        loss = epochs.run(
            1,
            epoch,
            config.text_epoch,
            stage1_transform,
            config.text_batch_size,
            text_loss,
            text_optimizer,
            list(model.text_adapter.parameters()),
            TEXT_FILE,
        )
        logger.info("training text epoch %d: loss: %.6f", epoch, loss)
        if main:
            save_text_adapter(model, text_optimizer, epoch + 1, save_path)

    model.eval()
    with torch.no_grad():
        anchors = dict(zip(class_names, model.class_anchors([texts[n] for n in class_names])))  # each (E, 2)
    stage2_transform = TrainTransform(backbone.image_size, AugmentConfig(color_jitter=True))
    for epoch in range(image_start, config.image_epoch):

        def image_stage_loss(batch):
            images, masks, labels = (batch[k].to(device) for k in ("image", "mask", "label"))
            batch_anchors = torch.stack([anchors[name] for name in batch["class_name"]])  # (B, E, 2)
            return stage2_loss(model, images, masks, labels, batch_anchors)

        loss = epochs.run(
            2,
            epoch,
            config.image_epoch,
            stage2_transform,
            config.image_batch_size,
            image_stage_loss,
            image_optimizer,
            list(model.image_adapter.parameters()),
            IMAGE_FILE,
            scheduler=image_scheduler,
        )
        logger.info("training image epoch %d: loss: %.6f", epoch, loss)
        if main:
            save_image_adapter(model, image_optimizer, image_scheduler, epoch + 1, save_path)
    logger.info("done: checkpoints in %s", save_path)
    return model


def stage1_loss(model, images, masks, labels, batch_classes, texts, surgery_from, config: TrainConfig):
    """Segmentation loss of the anchors against frozen V-V features, plus the orthogonality term."""
    patch_features, image_feature = stage1_features(model.backbone, images, surgery_from, config.quirks.vv_mode)
    unique = sorted(set(batch_classes))
    class_anchors = model.class_anchors([texts[name] for name in unique])  # (C, E, 2)
    anchors = class_anchors[[unique.index(name) for name in batch_classes]]  # (B, E, 2)
    image_size = images.shape[-1]
    if config.quirks.stage1_last_level_only:  # the public loop overwrites the loss: only the last level counts
        loss = segmentation_loss(similarity_map(patch_features[-1], anchors, image_size), masks)
    else:
        loss = sum(segmentation_loss(similarity_map(f, anchors, image_size), masks) for f in patch_features)
    if config.quirks.stage1_image_loss:
        loss = loss + image_loss(image_feature, anchors, labels)
    return loss + config.text_norm_weight * orthogonality_loss(anchors)


def stage2_loss(model, images, masks, labels, anchors):
    """CE of the detection token against the anchors plus the segmentation loss of every level."""
    output = model(images)
    loss = image_loss(output.det_token, anchors, labels)
    for seg_tokens in output.seg_tokens:
        loss = loss + segmentation_loss(similarity_map(seg_tokens, anchors, images.shape[-1]), masks)
    return loss


def validate_config(config: TrainConfig) -> None:
    """Contradictions in the flags, caught before anything is loaded."""
    if config.shot is not None and config.shot <= 0:
        raise DataError(f"--shot must be positive (or use --full_shot), got {config.shot}")
    for name in ("text_epoch", "image_epoch"):
        if getattr(config, name) < 0:
            raise ValueError(f"--{name} must be >= 0")
    for name in ("text_lr", "image_lr"):
        value = getattr(config, name)
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"--{name} must be a positive number, got {value}")
    if config.quirks.vv_mode not in ("batch", "tokens"):
        raise ValueError(f"V-V mode must be batch or tokens, got {config.quirks.vv_mode!r}")
