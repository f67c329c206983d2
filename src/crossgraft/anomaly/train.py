"""AA-CLIP two-stage training (DESIGN §3) and its cross-attention variants (§4).

Stage 1 trains the text adapters (and the text cross-attention) against frozen V-V features; stage 2 trains
the image adapters (and the image cross-attention) against frozen anchors. `num_feedback_loops` repeats the
pair, later rounds taking stage 1's visual features from the adapted image encoder. Base adapters can be
loaded first for a fair comparison. Checkpoints every epoch in the public format; `resume` continues from
the last one; Hugging Face Accelerate makes the same loop data-parallel."""

from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch.optim.lr_scheduler import MultiStepLR
from torch.utils.data import DataLoader
from tqdm import tqdm

from crossgraft.anomaly.backbone import load_clip
from crossgraft.anomaly.checkpoints import (
    image_file,
    load_image_adapter,
    load_text_adapter,
    save_image_adapter,
    save_text_adapter,
    text_file,
)
from crossgraft.anomaly.data import AnomalyDataset, AugmentConfig, TrainTransform, load_samples, sample_k_shot
from crossgraft.anomaly.data.records import DataError, write_jsonl
from crossgraft.anomaly.losses import (
    image_loss,
    orthogonality_loss,
    segmentation_loss,
    similarity_map,
)
from crossgraft.anomaly.model import (
    AdaptedCLIP,
    AdapterConfig,
    CrossAttentionConfig,
    TextSide,
    stage1_features,
    surgery_start,
)
from crossgraft.anomaly.prompts import class_text, load_class_descriptions
from crossgraft.graft import mean_abs_weight, write_text_atomic
from crossgraft.runlog import setup_run_logging

RUN_CONFIG = "run_config.json"
TRAIN_SAMPLES = "train_samples.jsonl"
BETAS = (0.5, 0.999)
TINY_WARNING = (
    "!!! the backbone is the random `tiny` CLIP (for tests and demos): nothing this run learns says anything "
    "about real data; pass --clip openai/clip-vit-large-patch14-336 for the paper's model !!!"
)


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
    clip: str = "openai/clip-vit-large-patch14-336"
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
    cross: CrossAttentionConfig = field(default_factory=CrossAttentionConfig)
    load_base_text_adapter: Path | None = None  # fair comparison (seed 000): start from a trained base model
    load_base_image_adapter: Path | None = None
    num_feedback_loops: int = 1
    eval_each_loop: bool = False
    eval_dataset: str | None = None  # default: the training dataset's test split
    eval_data_root: Path | None = None
    eval_classes: list[str] | None = None

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
        self,
        stage,
        epoch,
        total,
        transform,
        batch_size,
        loss_fn,
        optimizer,
        parameters,
        last_file,
        scheduler=None,
        groups=None,
    ) -> tuple[float, dict[str, float]]:
        """Train one epoch; returns the mean loss and the mean gradient norm of each parameter group."""
        loader = self.loader(transform, batch_size, epoch_seed(self.config.seed, stage, epoch))
        name = "text" if stage == 1 else "image"
        progress = tqdm(
            loader, desc=f"{name} epoch {epoch + 1}/{total}", leave=False, disable=not self.accelerator.is_main_process
        )
        losses = []
        norms = {name: 0.0 for name in groups or {}}
        for step, batch in enumerate(progress):
            with self.accelerator.autocast():
                loss = loss_fn(batch)
            _check_finite(loss, f"stage-{stage}", epoch + 1, step, self.save_path, last_file)
            optimizer.zero_grad()
            self.accelerator.backward(loss)
            _all_reduce_grads(self.accelerator, parameters)
            for name, group in (groups or {}).items():
                grads = [p.grad.norm() ** 2 for p in group if p.grad is not None]
                norms[name] += float(torch.stack(grads).sum().sqrt()) if grads else 0.0
            optimizer.step()
            if scheduler is not None:
                scheduler.step()  # per iteration, as the public code
            losses.append(loss.item())
            progress.set_postfix(loss=f"{loss.item():.4f}")
        steps = max(len(losses), 1)
        return sum(losses) / steps, {name: total_norm / steps for name, total_norm in norms.items()}


def train(config: TrainConfig) -> AdaptedCLIP:
    """Train a run: N feedback rounds (1 = plain AA-CLIP order) of stage 1 then stage 2."""
    save_path = Path(config.save_path)
    variant = config.cross.variant
    check_run_folder(save_path, config)
    accelerator = Accelerator(cpu=config.device == "cpu", mixed_precision=config.mixed_precision)
    main = accelerator.is_main_process
    device = accelerator.device
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
    descriptions = load_class_descriptions(config.class_descriptions)
    class_names = sorted({s.class_name for s in samples})
    backbone = load_clip(
        config.clip, image_size=config.img_size, gelu=config.quirks.gelu, tokenizer=config.tokenizer, device=device
    )
    torch.manual_seed(config.seed)  # adapter init: a resumed run re-creates the same untrained adapters
    model = AdaptedCLIP(backbone, config.adapter, config.cross).to(device)
    model.surgery_from = surgery_start(backbone.num_vision_layers, config.surgery_until_layer, backbone.levels)
    model.vv_mode = config.quirks.vv_mode
    # base checkpoints are checked before anything is written
    base_text = (
        load_text_adapter(model, config.load_base_text_adapter, adapters_only=True)
        if (config.load_base_text_adapter)
        else None
    )
    base_image = (
        load_image_adapter(model, config.load_base_image_adapter, adapters_only=True)
        if (config.load_base_image_adapter)
        else None
    )

    logger = setup_run_logging(
        save_path, "train.log" if variant == "base" else "train_cross_attention.log", name="crossgraft.train"
    )
    if not main:  # one process writes the log and the checkpoints
        logger.setLevel(logging.WARNING)
    logger.info("args: %s", json.dumps(config.to_json()))
    if config.clip == "tiny":
        logger.warning(TINY_WARNING)
    logger.info("training on %d images of %d classes (%s)", len(samples), len(class_names), ", ".join(class_names))
    run_config = config.to_json() | {"img_size": backbone.image_size, "surgery_from": model.surgery_from}
    if main:
        write_jsonl(samples, save_path / TRAIN_SAMPLES, root=config.data_root)
        write_text_atomic(save_path / RUN_CONFIG, json.dumps(run_config, indent=2))
    if base_text is not None:
        banner(
            logger,
            "LOADING PRE-TRAINED BASE TEXT ADAPTER",
            loaded_lines(model.text_adapter, "text", config.load_base_text_adapter),
        )

    texts = {name: class_text(name, descriptions) for name in class_names}
    epochs = EpochRunner(accelerator, samples, config, save_path)
    rounds = config.num_feedback_loops
    for round_index in range(1, rounds + 1):
        round_dir = save_path if rounds == 1 else save_path / f"loop_{round_index}"
        if main and rounds > 1:
            write_text_atomic(round_dir / RUN_CONFIG, json.dumps(run_config | {"loop": round_index}, indent=2))
        if rounds > 1:
            logger.info("=" * 70 + "\nFEEDBACK LOOP %d/%d\n" + "=" * 70, round_index, rounds)
        train_round(
            model,
            config,
            epochs,
            texts,
            class_names,
            round_index,
            round_dir,
            logger,
            accelerator,
            loaded={"text_adapter": base_text is not None, "image_adapter": base_image is not None},
        )
        if config.eval_each_loop and main:
            evaluate_round(model, config, descriptions, round_dir, round_index, logger)
    if rounds > 1 and main:  # the run folder's own files are the last round's, so test/predict find them
        for path in (save_path / f"loop_{rounds}").glob("*.pth"):
            shutil.copy2(path, save_path / path.name)
    logger.info("done: checkpoints in %s", save_path)
    return model


# settings that may differ when a run is resumed: more epochs extend it; the others do not change what it learns
RESUMABLE_CHANGES = {
    "text_epoch",
    "image_epoch",
    "resume",
    "save_path",
    "data_root",
    "num_workers",
    "device",
    "mixed_precision",
    "eval_each_loop",
    "eval_dataset",
    "eval_data_root",
    "eval_classes",
}


def _flatten(config: dict) -> dict:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flatten(value))
        else:
            flat[key] = value
    return flat


def check_run_folder(save_path: Path, config: TrainConfig) -> None:
    """A folder holds one run: training into a folder that holds another run, or resuming with settings that
    change what the run learns, is refused before anything is written."""
    saved_path = save_path / RUN_CONFIG
    checkpoints = sorted(p.name for p in save_path.glob("*_adapter*.pth")) if save_path.is_dir() else []
    if not saved_path.is_file():
        if checkpoints:
            raise TrainingError(
                f"{save_path} holds checkpoints ({', '.join(checkpoints)}) but no {RUN_CONFIG}: it is not a "
                "crossgraft run folder; choose another --save_path (nothing was overwritten)"
            )
        return
    saved = read_run_config(save_path)
    saved_variant = saved.get("cross", {}).get("variant", "base")
    if not config.resume:
        raise TrainingError(
            f"{save_path} holds a {saved_variant} run ({RUN_CONFIG}"
            f"{', ' + ', '.join(checkpoints) if checkpoints else ''}); choose another --save_path for a new run, or "
            "pass --resume to continue that run with the same settings (nothing was overwritten)"
        )
    old, new = _flatten(saved), _flatten(json.loads(json.dumps(config.to_json())))  # as saved: lists, not tuples
    changed = [
        f"{key}: {old.get(key)} -> {new[key]}"
        for key in new
        if key not in RESUMABLE_CHANGES and key in old and old[key] != new[key]
    ]
    if changed:
        raise TrainingError(
            f"cannot resume the {saved_variant} run in {save_path} with other settings ({'; '.join(changed)}); "
            f"only {', '.join(sorted(RESUMABLE_CHANGES - {'resume', 'save_path'}))} may change on resume. Use "
            "another --save_path for a new run (nothing was overwritten)"
        )


def train_round(model, config, epochs, texts, class_names, round_index, round_dir, logger, accelerator, loaded):
    """Stage 1 then stage 2 of one round, resuming from `round_dir`'s checkpoints with --resume."""
    variant, device, main = config.cross.variant, accelerator.device, accelerator.is_main_process
    text_groups, image_groups = trainable_groups(model, "text"), trainable_groups(model, "image")
    text_params = [p for group in text_groups.values() for p in group]
    image_params = [p for group in image_groups.values() for p in group]
    text_optimizer = torch.optim.Adam(text_params, lr=config.text_lr, betas=BETAS)
    image_optimizer = torch.optim.Adam(image_params, lr=config.image_lr, betas=BETAS)
    image_scheduler = MultiStepLR(image_optimizer, milestones=list(config.milestones), gamma=config.gamma)
    text_start = image_start = 0
    if config.resume and (round_dir / text_file(variant)).exists():
        checkpoint = load_text_adapter(model, round_dir / text_file(variant))
        text_optimizer.load_state_dict(checkpoint["text_optimizer"])
        text_start = int(checkpoint["epoch"])
        logger.info("resuming: text adapter at epoch %d of %d", text_start, config.text_epoch)
    if config.resume and (round_dir / image_file(variant)).exists():
        checkpoint = load_image_adapter(model, round_dir / image_file(variant))
        image_optimizer.load_state_dict(checkpoint["image_optimizer"])
        if "image_scheduler" in checkpoint:
            image_scheduler.load_state_dict(checkpoint["image_scheduler"])
        image_start = int(checkpoint["epoch"])
        logger.info("resuming: image adapter at epoch %d of %d", image_start, config.image_epoch)

    if variant != "base":
        summary(logger, model, stage=1, round_index=round_index, loaded=loaded)
        banner(logger, "STAGE 1: TEXT ADAPTER TRAINING WITH CROSS-ATTENTION", [])
    stage1_transform = TrainTransform(model.backbone.image_size, AugmentConfig(color_jitter=False))
    for epoch in range(text_start, config.text_epoch):

        def text_loss(batch):
            images, masks, labels = (batch[k].to(device) for k in ("image", "mask", "label"))
            return stage1_loss(
                model,
                images,
                masks,
                labels,
                batch["class_name"],
                texts,
                model.surgery_from,
                config,
                adapted_features=round_index > 1,
            )

        loss, norms = epochs.run(
            1,
            epoch,
            config.text_epoch,
            stage1_transform,
            config.text_batch_size,
            text_loss,
            text_optimizer,
            text_params,
            text_file(variant),
            groups=text_groups,
        )
        logger.info("training text epoch %d: loss: %.6f | average grad norm: %s", epoch, loss, format_norms(norms))
        warn_vanishing(logger, norms, "text", epoch)
        if main:
            save_text_adapter(model, text_optimizer, epoch + 1, round_dir)

    model.eval()
    with torch.no_grad():
        class_text_sides = model.text_side([texts[n] for n in class_names]) if model.text_cross_attn is None else None
    if variant != "base" and round_index == 1:
        if loaded["image_adapter"]:
            lines = loaded_lines(model.image_adapter, "image", config.load_base_image_adapter)
            banner(logger, "LOADING PRE-TRAINED BASE IMAGE ADAPTER", lines)
        else:
            logger.info("[NOTE] Training image_adapter from scratch (random initialization)")
    if variant != "base":
        summary(logger, model, stage=2, round_index=round_index, loaded=loaded, trained_text=config.text_epoch > 0)
        banner(logger, "STAGE 2: IMAGE ADAPTER TRAINING WITH CROSS-ATTENTION", [])
    stage2_transform = TrainTransform(model.backbone.image_size, AugmentConfig(color_jitter=True))
    for epoch in range(image_start, config.image_epoch):

        def image_stage_loss(batch):
            images, masks, labels = (batch[k].to(device) for k in ("image", "mask", "label"))
            with torch.no_grad():
                if class_text_sides is None:  # per image: the text attends to each image's frozen context
                    text = model.image_text([texts[name] for name in batch["class_name"]], images)
                else:
                    rows = [class_names.index(name) for name in batch["class_name"]]
                    text = TextSide(class_text_sides.anchors[rows], class_text_sides.sentences[rows])
            return stage2_loss(model, images, masks, labels, text)

        loss, norms = epochs.run(
            2,
            epoch,
            config.image_epoch,
            stage2_transform,
            config.image_batch_size,
            image_stage_loss,
            image_optimizer,
            image_params,
            image_file(variant),
            scheduler=image_scheduler,
            groups=image_groups,
        )
        logger.info("training image epoch %d: loss: %.6f | average grad norm: %s", epoch, loss, format_norms(norms))
        warn_vanishing(logger, norms, "image", epoch)
        if main:
            save_image_adapter(model, image_optimizer, image_scheduler, epoch + 1, round_dir)


def trainable_groups(model: AdaptedCLIP, side: str) -> dict[str, list[torch.nn.Parameter]]:
    """The parameters one stage trains, by module: `text` (stage 1) or `image` (stage 2)."""
    groups = {}
    for name in (f"{side}_adapter", f"{side}_cross_attn"):
        module = getattr(model, name)
        if module is not None:
            groups[name] = list(module.parameters())
    return groups


def evaluate_round(model, config: TrainConfig, descriptions, round_dir: Path, round_index: int, logger) -> None:
    from crossgraft.anomaly.evaluate import EvalConfig, evaluate_model
    from crossgraft.anomaly.metrics import mean_metrics

    eval_config = EvalConfig(
        dataset=config.eval_dataset or config.dataset,
        data_root=config.eval_data_root or config.data_root,
        classes=config.eval_classes,
        save_path=round_dir,
        out=round_dir / "eval",
        device=str(model.backbone.device),
    )
    results = evaluate_model(model, True, eval_config, descriptions, label=f"loop {round_index}")
    logger.info("loop %d metrics (mean over classes): %s", round_index, json.dumps(mean_metrics(results).as_dict()))


# ------------------------------------------------------------------------------------ seed 000's printout
RULE = "=" * 70
MAGNITUDE_WARNING = 0.05


def banner(logger, title: str, lines: list[str]) -> None:
    logger.info("\n".join([RULE, title, RULE, *lines]))


def loaded_lines(module, name: str, path) -> list[str]:
    magnitude = mean_abs_weight(module)
    lines = [
        f"  Path: {path}",
        f"  ✓ Base {name} adapter loaded successfully!",
        f"  Mean weight magnitude: {magnitude:.6f} (should be > 0.1 if trained)",
    ]
    if magnitude < MAGNITUDE_WARNING:
        lines.append(
            f"  [WARNING] mean weight magnitude {magnitude:.6f} < {MAGNITUDE_WARNING}: the checkpoint looks "
            "untrained; check the path"
        )
    return lines


def summary(logger, model, stage: int, round_index: int, loaded: dict, trained_text: bool = True) -> None:
    """The WEIGHT INITIALIZATION SUMMARY: mean |w| of each trainable module and where it comes from.

    `trained_text`: stage 1 of this round trained the text side (false with --text_epoch 0)."""
    states = {
        "text_adapter": "pre-trained" if loaded["text_adapter"] else "random init",
        "text_cross_attn": "random init - NEW",
        "image_adapter": "pre-trained" if loaded["image_adapter"] else "random init",
        "image_cross_attn": "random init - NEW",
    }
    if round_index > 1:
        states = {name: f"from loop {round_index - 1}" for name in states}
    if stage == 2 and trained_text:
        states["text_adapter"] = "updated from Stage 1"
        states["text_cross_attn"] = "trained in Stage 1"
    rows = []
    for name, state in states.items():
        module = getattr(model, name)
        if module is not None:
            rows.append(f"  {name + ':':<20}{mean_abs_weight(module):.6f} ({state})")
    banner(logger, "WEIGHT INITIALIZATION SUMMARY", [*rows, RULE])


VANISHING_GRAD_NORM = 1e-3  # seed 001: "If grad_norm < 0.001, gradients are vanishing"


def warn_vanishing(logger, norms: dict[str, float], stage: str, epoch: int) -> None:
    for name, norm in norms.items():
        if norm < VANISHING_GRAD_NORM:
            logger.warning(
                "average gradient norm of %s is %.2e < %.0e in %s epoch %d: its gradients are vanishing, so it "
                "barely learns (a cross-attention weight of 0, a learning-rate or loss problem?)",
                name,
                norm,
                VANISHING_GRAD_NORM,
                stage,
                epoch,
            )


def format_norms(norms: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.4f}" for name, value in norms.items())


def stage1_loss(
    model,
    images,
    masks,
    labels,
    batch_classes,
    texts,
    surgery_from,
    config: TrainConfig,
    adapted_features: bool = False,
):
    """Segmentation loss of the anchors against the visual features, plus the orthogonality term.

    Round 1 (and base AA-CLIP): frozen V-V features; their first level is the text cross-attention's context.
    Later feedback rounds: the visual features come from the adapted image encoder (no gradient); the
    context stays the frozen one, as at test time.
    """
    patch_features, image_feature = stage1_features(model.backbone, images, surgery_from, config.quirks.vv_mode)
    context = patch_features[0] if model.text_cross_attn is not None else None
    text = model.text_side([texts[name] for name in batch_classes], context)  # one pass per class without context
    anchors = text.anchors  # (B, E, 2)
    if adapted_features:
        with torch.no_grad():
            output = model(images, text_context=text.sentences.detach() if model.image_cross_attn else None)
        patch_features, image_feature = output.seg_tokens, F.normalize(output.det_token, dim=-1)
    image_size = images.shape[-1]
    if config.quirks.stage1_last_level_only:  # the public loop overwrites the loss: only the last level counts
        loss = segmentation_loss(similarity_map(patch_features[-1], anchors, image_size), masks)
    else:
        loss = sum(segmentation_loss(similarity_map(f, anchors, image_size), masks) for f in patch_features)
    if config.quirks.stage1_image_loss:
        loss = loss + image_loss(image_feature, anchors, labels)
    return loss + config.text_norm_weight * orthogonality_loss(anchors)


def stage2_loss(model, images, masks, labels, text: TextSide):
    """CE of the detection token against the anchors plus the segmentation loss of every level."""
    output = model(images, text_context=text.sentences if model.image_cross_attn is not None else None)
    loss = image_loss(output.det_token, text.anchors, labels)
    for seg_tokens in output.seg_tokens:
        loss = loss + segmentation_loss(similarity_map(seg_tokens, text.anchors, images.shape[-1]), masks)
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
