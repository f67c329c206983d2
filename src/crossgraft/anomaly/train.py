"""The AA-CLIP two-stage training loop (docs/aa-clip.md) and its cross-attention variants (docs/cross-attention.md).

Stage 1 trains the text adapters (and the text cross-attention) against frozen V-V features; stage 2 trains
the image adapters (and the image cross-attention) against frozen anchors. `num_feedback_loops` repeats the
pair, later rounds taking stage 1's visual features from the adapted image encoder. One runner trains either
stage: seeded loader, progress bar, NaN guard, (data-parallel) step, gradient norms per module, a checkpoint in
the public format after every epoch. `resume` continues from the last one; Hugging Face Accelerate makes the
same loop data-parallel.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch.optim import Adam
from torch.optim.lr_scheduler import MultiStepLR
from torch.utils.data import DataLoader
from tqdm import tqdm

from crossgraft.anomaly.backbone import load_backbone
from crossgraft.anomaly.catalog import get_spec
from crossgraft.anomaly.checkpoints import (
    check_image_adapter,
    check_text_adapter,
    image_file,
    load_image_adapter,
    load_text_adapter,
    save_image_adapter,
    save_text_adapter,
    text_file,
)
from crossgraft.anomaly.config import TINY_CLIP, DataConfig, EvalConfig, TrainConfig
from crossgraft.anomaly.data import (
    AnomalyDataset,
    AugmentConfig,
    EvalTransform,
    Sample,
    TrainTransform,
    load_data,
    sample_k_shot,
    write_jsonl,
)
from crossgraft.anomaly.evaluate import evaluate_model
from crossgraft.anomaly.fair import BaseAdapters, banner, initialization_summary, load_base_adapters, loaded_banner
from crossgraft.anomaly.feature_cache import Stage1FeatureCache
from crossgraft.anomaly.losses import stage1_loss, stage2_loss
from crossgraft.anomaly.metrics import mean_metrics
from crossgraft.anomaly.model import AdaptedCLIP, TextSide, evaluation_mode
from crossgraft.anomaly.plots import plot_run
from crossgraft.anomaly.prompts import (
    DescriptionTable,
    class_text,
    descriptions_for,
    load_class_descriptions,
    public_prompts_warning,
)
from crossgraft.anomaly.run_folder import RUN_CONFIG, TRAIN_SAMPLES, SavedRun, load_run_config, save_run_config
from crossgraft.args import flatten_config
from crossgraft.devices import resolve_device
from crossgraft.errors import DataError, TrainingError
from crossgraft.lock import RunLock
from crossgraft.runlog import setup_run_logging

BETAS = (0.5, 0.999)
VANISHING_GRAD_NORM = 1e-3  # seed 001: "If grad_norm < 0.001, gradients are vanishing"
TINY_WARNING = (
    "!!! the backbone is the random `tiny` CLIP (for tests and demos): nothing this run learns says anything "
    "about real data; pass --clip openai/clip-vit-large-patch14-336 for the paper's model !!!"
)
# settings that may differ when a run is resumed: more epochs extend it; the others do not change what it learns
RESUMABLE_CHANGES = frozenset(
    {
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
)

Batch = dict[str, Any]  # what AnomalyDataset yields, collated: image, mask, label, class_name, image_path, index


def epoch_seed(seed: int, stage: int, epoch: int) -> int:
    """Every epoch's shuffling and augmentation depend only on (seed, stage, epoch): resuming is exact, and the
    same with any number of processes or workers."""
    return seed * 1000 + stage * 100 + epoch


# ================================================================================================= a stage
@dataclass
class Stage:
    """What one stage trains and how: everything the runner needs that differs between stage 1 and stage 2."""

    number: int  # 1: text side, 2: image side
    name: str  # "text" or "image"
    epochs: int
    batch_size: int
    transform: EvalTransform  # TrainTransform (augmented) or EvalTransform (resize only)
    model: AdaptedCLIP
    modules: dict[str, torch.nn.Module]  # what the stage trains, by name: in training mode at every step
    optimizer: Adam
    loss: Callable[[Batch], torch.Tensor]
    save: Callable[[int], Path]  # writes the checkpoint after an epoch (1-based count); returns the file
    scheduler: MultiStepLR | None = None  # stepped per iteration, as the public code does

    @cached_property  # read at every step: listed once
    def groups(self) -> dict[str, list[torch.nn.Parameter]]:
        """The trainable parameters by module."""
        return {name: list(module.parameters()) for name, module in self.modules.items()}

    @cached_property
    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for group in self.groups.values() for p in group]


class StageRunner:
    """Runs the epochs of either stage for one run: data, progress bar, NaN guard, step, log line, checkpoint."""

    def __init__(
        self, accelerator: Accelerator, samples: list[Sample], config: TrainConfig, logger: logging.Logger
    ) -> None:
        self.accelerator = accelerator
        self.samples = samples
        self.config = config
        self.logger = logger
        # the whole run's progress, across stages and feedback rounds: a line after every epoch with an ETA
        self.total_epochs = config.num_feedback_loops * (config.text_epoch + config.image_epoch)
        self.epochs_done = 0
        self.epoch_seconds: dict[str, list[float]] = {"text": [], "image": []}
        self.started = time.monotonic()

    def loader(self, stage: Stage, epoch: int) -> DataLoader:
        seed = epoch_seed(self.config.seed, stage.number, epoch)
        generator = torch.Generator().manual_seed(seed)  # the shuffle
        loader = DataLoader(
            AnomalyDataset(self.samples, stage.transform, seed=seed),  # each image's augmentation
            batch_size=stage.batch_size,
            shuffle=True,
            generator=generator,
            num_workers=self.config.num_workers,
        )
        if self.accelerator.num_processes > 1:
            loader = self.accelerator.prepare_data_loader(loader)
        return loader

    def run(self, stage: Stage, start_epoch: int, last_checkpoint: Path) -> None:
        """Train epochs start_epoch..epochs-1, checkpointing after each (the main process writes)."""
        self.epochs_done += start_epoch  # done by the run this one resumes
        for epoch in range(start_epoch, stage.epochs):
            epoch_started = time.monotonic()
            loss, norms = self.run_epoch(stage, epoch, last_checkpoint)
            self.epoch_seconds[stage.name].append(time.monotonic() - epoch_started)
            self.logger.info(
                "training %s epoch %d: loss: %.6f | average grad norm: %s",
                stage.name,
                epoch,
                loss,
                ", ".join(f"{name} {value:.4f}" for name, value in norms.items()),
            )
            for name, norm in norms.items():
                if norm < VANISHING_GRAD_NORM:
                    self.logger.warning(
                        "average gradient norm of %s is %.2e < %.0e in %s epoch %d: its gradients are vanishing, "
                        "so it barely learns (a cross-attention weight of 0, a learning-rate or loss problem?)",
                        name,
                        norm,
                        VANISHING_GRAD_NORM,
                        stage.name,
                        epoch,
                    )
            self.check_learning(stage, epoch, norms, last_checkpoint)
            if self.accelerator.is_main_process:
                stage.save(epoch + 1)
            self.epochs_done += 1
            self.log_progress(stage, epoch)

    def log_progress(self, stage: Stage, epoch: int) -> None:
        """'run: 3 of 14 epochs done (0:42 so far, about 2:30 left)': the ETA counts each stage's remaining epochs at
        that stage's mean epoch time (the other stage's where it has not run yet)."""
        if self.total_epochs <= 0:
            return
        means = {name: sum(times) / len(times) for name, times in self.epoch_seconds.items() if times}
        fallback = next(iter(means.values()), 0.0)
        remaining_epochs = max(self.total_epochs - self.epochs_done, 0)
        # the remaining epochs split between the stages in the run's own proportion
        text_share = self.config.text_epoch / max(self.config.text_epoch + self.config.image_epoch, 1)
        left = remaining_epochs * (
            text_share * means.get("text", fallback) + (1 - text_share) * means.get("image", fallback)
        )
        self.logger.info(
            "run: %d of %d epochs done (%s so far, about %s left); %s epoch %d finished",
            min(self.epochs_done, self.total_epochs),
            self.total_epochs,
            clock(time.monotonic() - self.started),
            clock(left),
            stage.name,
            epoch,
        )

    def stop(self, reason: str, last_checkpoint: Path) -> None:
        """End training: the reason goes to the run's log and to the error; the checkpoints before it stay."""
        kept = f"the latest is {last_checkpoint}" if last_checkpoint.exists() else "there are none yet"
        message = f"{reason}; training stopped, nothing of this epoch was saved ({kept})."
        self.logger.error(message)
        raise TrainingError(message)

    def check_learning(self, stage: Stage, epoch: int, norms: dict[str, float], last_checkpoint: Path) -> None:
        """After an epoch, before its checkpoint: the weights are finite, and some gradient reached them."""
        for name, group in stage.groups.items():
            if not all(torch.isfinite(p).all() for p in group):
                self.stop(
                    f"the {name} weights became non-finite in {stage.name} epoch {epoch + 1} (learning rate too high?)",
                    last_checkpoint,
                )
        if all(norm == 0.0 for norm in norms.values()):
            self.stop(
                f"no gradient reached the {stage.name} side's weights in a whole epoch ({stage.name} epoch "
                f"{epoch + 1}: every gradient norm is exactly 0); they cannot learn (saturated by a too-high "
                "learning rate?)",
                last_checkpoint,
            )

    def run_epoch(self, stage: Stage, epoch: int, last_checkpoint: Path) -> tuple[float, dict[str, float]]:
        """One epoch; returns the mean loss and the mean gradient norm of each module group."""
        progress = tqdm(
            self.loader(stage, epoch),
            desc=f"{stage.name} epoch {epoch} ({epoch + 1} of {stage.epochs})",  # numbered as the log line is
            leave=False,
            disable=not self.accelerator.is_main_process,
        )
        losses: list[float] = []
        norms = dict.fromkeys(stage.groups, 0.0)
        stage.model.train_only(stage.modules.values())  # whatever ran in between (anchors, an evaluation)
        for step, batch in enumerate(progress):
            with self.accelerator.autocast():
                loss = stage.loss(batch)
            if not torch.isfinite(loss):
                self.stop(
                    f"the stage-{stage.number} loss became {loss.item()} at epoch {epoch + 1}, step {step} (try a "
                    "lower learning rate, or --mixed_precision no)",
                    last_checkpoint,
                )
            stage.optimizer.zero_grad()
            self.accelerator.backward(loss)
            self._all_reduce_grads(stage.parameters)
            for name, group in stage.groups.items():
                grads = [p.grad.norm() ** 2 for p in group if p.grad is not None]
                norms[name] += float(torch.stack(grads).sum().sqrt()) if grads else 0.0
            stage.optimizer.step()
            if stage.scheduler is not None:
                stage.scheduler.step()
            losses.append(loss.item())
            progress.set_postfix(loss=f"{loss.item():.4f}")
        steps = max(len(losses), 1)
        return sum(losses) / steps, {name: total / steps for name, total in norms.items()}

    def _all_reduce_grads(self, parameters: list[torch.nn.Parameter]) -> None:
        """Average gradients over processes (data parallel); nothing to do in a single process."""
        if self.accelerator.num_processes == 1:
            return
        for parameter in parameters:
            if parameter.grad is not None:
                parameter.grad = self.accelerator.reduce(parameter.grad, reduction="mean")


def clock(seconds: float) -> str:
    """H:MM:SS, or M:SS under an hour."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def trained_modules(model: AdaptedCLIP, side: str) -> dict[str, torch.nn.Module]:
    """The modules one stage trains, by name: `text` (stage 1) or `image` (stage 2)."""
    names = (f"{side}_adapter", f"{side}_cross_attn")
    return {name: getattr(model, name) for name in names if getattr(model, name) is not None}


# ================================================================================================ a run
def round_folders(config: TrainConfig) -> list[Path]:
    """Where each feedback round writes its checkpoints (the run folder itself with one round)."""
    if config.num_feedback_loops == 1:
        return [config.save_path]
    return [config.save_path / f"loop_{index}" for index in range(1, config.num_feedback_loops + 1)]


def check_resume_checkpoints(model: AdaptedCLIP, config: TrainConfig) -> None:
    """Every checkpoint a resume would continue from reads and fits the model, before anything is written."""
    for folder in round_folders(config):
        for path, check in (
            (folder / text_file(config.variant), check_text_adapter),
            (folder / image_file(config.variant), check_image_adapter),
        ):
            if path.exists():
                check(model, path)


def check_run_folder(config: TrainConfig) -> None:
    """A folder holds one run: training into a folder that holds another run, or resuming with settings that
    change what the run learns, is refused before anything is written."""
    save_path = config.save_path
    checkpoints = sorted(p.name for p in save_path.glob("*_adapter*.pth")) if save_path.is_dir() else []
    if not (save_path / RUN_CONFIG).is_file():
        if checkpoints:
            raise TrainingError(
                f"{save_path} holds checkpoints ({', '.join(checkpoints)}) but no {RUN_CONFIG}: it is not a "
                "crossgraft run folder; choose another --save_path (nothing was overwritten)"
            )
        return
    saved = load_run_config(save_path).config
    old, new = flatten_config(saved), flatten_config(config)
    changed = [
        f"{key}: {old[key]} -> {new[key]}" for key in new if key not in RESUMABLE_CHANGES and old[key] != new[key]
    ]
    held = f"{save_path} holds a {saved.variant} run ({', '.join([RUN_CONFIG, *checkpoints])})"
    if not config.resume and changed:  # a resume would be refused too: only another folder helps
        raise TrainingError(
            f"{held} with other settings ({'; '.join(changed)}); choose another --save_path for this run "
            "(nothing was overwritten)"
        )
    if not config.resume:
        raise TrainingError(
            f"{held}; choose another --save_path for a new run, or pass --resume to continue that run with the same "
            "settings (nothing was overwritten)"
        )
    if changed:
        raise TrainingError(
            f"cannot resume the {saved.variant} run in {save_path} with other settings ({'; '.join(changed)}); "
            f"only {', '.join(sorted(RESUMABLE_CHANGES - {'resume', 'save_path'}))} may change on resume. Use another "
            "--save_path for a new run (nothing was overwritten)"
        )


def train(config: TrainConfig) -> AdaptedCLIP:
    """Train a run: N feedback rounds (1 = plain AA-CLIP) of stage 1 then stage 2. Returns the trained model.

    The run folder has one writer (an OS lock the main process holds for the whole run), and everything is checked
    (settings against a run already there, data, backbone, base and resume checkpoints) before anything is written.
    """
    accelerator = Accelerator(cpu=resolve_device(config.device) == "cpu", mixed_precision=config.mixed_precision)
    lock = RunLock(config.save_path)
    try:
        model = _train(config, accelerator, lock)
        # every process leaves together: none starts closing its connections while the main one still saves
        accelerator.wait_for_everyone()
        return model
    finally:
        lock.release()


def _train(config: TrainConfig, accelerator: Accelerator, lock: RunLock) -> AdaptedCLIP:
    save_path = config.save_path
    main = accelerator.is_main_process
    if main and save_path.is_dir():  # a folder in use is named before anything else is said about it
        lock.acquire()
    check_run_folder(config)
    data = config.data.resolved()
    samples = load_data(data, "test")
    if config.k_shot is not None:
        samples = sample_k_shot(samples, config.k_shot, config.seed)
    table = load_class_descriptions(config.class_descriptions)
    descriptions = descriptions_for(table, get_spec(data.dataset).name, str(config.class_descriptions))
    class_names = sorted({s.class_name for s in samples})
    quirks = config.quirks.resolve()
    backbone = load_backbone(config.backbone, quirks.gelu, accelerator.device)
    torch.manual_seed(config.seed)  # adapter init: a resumed run re-creates the same untrained adapters
    model = AdaptedCLIP(backbone, config.adapter, config.cross, quirks.vv_mode).to(accelerator.device)
    base = load_base_adapters(model, config.load_base_text_adapter, config.load_base_image_adapter)
    if config.resume:
        check_resume_checkpoints(model, config)
    if main:  # everything above is checked before anything is written; from here on the folder is ours
        lock.acquire()
        check_run_folder(config)  # again, under the lock: no other run has started here since
    logger = setup_run_logging(
        save_path,  # every run writes train.log; a variant also the seed's train_cross_attention.log
        ["train.log"] if config.variant == "base" else ["train.log", "train_cross_attention.log"],
        name="crossgraft.train",
    )
    if not main:  # one process writes the log and the checkpoints
        logger.setLevel(logging.WARNING)
    logger.info("settings: %s", config_summary(config))
    if config.backbone.clip == TINY_CLIP:
        logger.warning(TINY_WARNING)
    prompts_warning = public_prompts_warning(get_spec(data.dataset).name, descriptions)
    if prompts_warning and config.quirks.preset == "reference":
        logger.warning(prompts_warning)
    logger.info("training on %d images of %d classes (%s)", len(samples), len(class_names), ", ".join(class_names))
    run = SavedRun(
        config=config,
        image_size=backbone.image_size,
        surgery_from=model.surgery_from,
        quirks=quirks,
        descriptions=table,  # the whole table: the test data may be another dataset
    )
    if main:
        write_jsonl(samples, save_path / TRAIN_SAMPLES, root=data.root)
        save_run_config(save_path, run)
    if base.text is not None:
        loaded_banner(logger, model, "text", base.text)

    texts = {name: class_text(name, descriptions) for name in class_names}
    runner = StageRunner(accelerator, samples, config, logger)
    rounds = config.num_feedback_loops
    for round_index, round_dir in enumerate(round_folders(config), start=1):
        if rounds > 1:
            if main:
                save_run_config(round_dir, SavedRun(**{**run.__dict__, "loop": round_index}))
            logger.info("=" * 70 + "\nFEEDBACK LOOP %d/%d\n" + "=" * 70, round_index, rounds)
        train_round(model, config, runner, texts, class_names, round_index, round_dir, base)
        if config.eval_each_loop and main:
            evaluate_round(model, config, table, round_dir, round_index, logger)
    if rounds > 1 and main:  # the run folder's own files are the last round's, so test/predict find them
        for path in (save_path / f"loop_{rounds}").glob("*.pth"):
            shutil.copy2(path, save_path / path.name)
    if main:  # what `plot-run` draws, for every run that trained an epoch
        try:
            logger.info("training curves: %s", plot_run(save_path)[0])
        except DataError as error:
            logger.info("no training curves: %s", error)
    logger.info("done: checkpoints in %s", save_path)
    return model


def config_summary(config: TrainConfig) -> str:
    """The run's settings on one line, for the log."""
    return ", ".join(f"{key}={value}" for key, value in flatten_config(config).items())


def train_round(
    model: AdaptedCLIP,
    config: TrainConfig,
    runner: StageRunner,
    texts: dict[str, str],
    class_names: list[str],
    round_index: int,
    round_dir: Path,
    base: BaseAdapters,
) -> None:
    """Stage 1 then stage 2 of one round, each resuming from `round_dir`'s checkpoint with --resume."""
    logger, device = runner.logger, runner.accelerator.device
    variant, quirks = config.variant, config.quirks.resolve()

    cache = (
        Stage1FeatureCache(round_dir, len(runner.samples), config.stage1_cache_dtype, runner.accelerator.process_index)
        if config.cache_stage1_features
        else None
    )

    def text_loss(batch: Batch) -> torch.Tensor:
        images, masks, labels = (batch[k].to(device) for k in ("image", "mask", "label"))
        class_texts = [texts[name] for name in batch["class_name"]]
        frozen = (
            cache.features(model.backbone, images, batch["index"], model.surgery_from, model.vv_mode)
            if cache is not None
            else None
        )
        return stage1_loss(
            model,
            images,
            masks,
            labels,
            class_texts,
            quirks=quirks,
            text_norm_weight=config.text_norm_weight,
            adapted_features=round_index > 1,
            frozen=frozen,
        )

    text_modules = trained_modules(model, "text")
    text_optimizer = Adam([p for m in text_modules.values() for p in m.parameters()], lr=config.text_lr, betas=BETAS)
    text_stage = Stage(
        number=1,
        name="text",
        epochs=config.text_epoch,
        batch_size=config.text_batch_size,
        transform=TrainTransform(model.backbone.image_size, AugmentConfig(color_jitter=False))
        if quirks.stage1_augment
        else EvalTransform(model.backbone.image_size),
        model=model,
        modules=text_modules,
        optimizer=text_optimizer,
        loss=text_loss,
        save=lambda epoch: save_text_adapter(model, text_optimizer, epoch, round_dir),
    )
    text_start = resume_stage(model, text_stage, round_dir / text_file(variant), config.resume, logger)
    if variant != "base":
        initialization_summary(logger, model, 1, round_index, base, trained_text=False)
        banner(logger, "STAGE 1: TEXT ADAPTER TRAINING WITH CROSS-ATTENTION", [])
    try:
        runner.run(text_stage, text_start, round_dir / text_file(variant))
    finally:
        if cache is not None:
            cache.close()

    with torch.no_grad(), evaluation_mode(model):  # stage 2's frozen anchors: per class, unless text sees the image
        class_sides = model.text_side([texts[n] for n in class_names]) if model.text_cross_attn is None else None

    def image_loss(batch: Batch) -> torch.Tensor:
        images, masks, labels = (batch[k].to(device) for k in ("image", "mask", "label"))
        with torch.no_grad():
            if class_sides is None:  # per image: the text attends to each image's own frozen context
                text = model.image_text([texts[name] for name in batch["class_name"]], images)
            else:
                rows = [class_names.index(name) for name in batch["class_name"]]
                text = TextSide(class_sides.anchors[rows], class_sides.sentences[rows])
        return stage2_loss(model, images, masks, labels, text)

    image_modules = trained_modules(model, "image")
    image_optimizer = Adam([p for m in image_modules.values() for p in m.parameters()], lr=config.image_lr, betas=BETAS)
    image_scheduler = MultiStepLR(image_optimizer, milestones=list(config.milestones), gamma=config.gamma)
    image_stage = Stage(
        number=2,
        name="image",
        epochs=config.image_epoch,
        batch_size=config.image_batch_size,
        transform=TrainTransform(model.backbone.image_size, AugmentConfig(color_jitter=True)),
        model=model,
        modules=image_modules,
        optimizer=image_optimizer,
        scheduler=image_scheduler,
        loss=image_loss,
        save=lambda epoch: save_image_adapter(model, image_optimizer, image_scheduler, epoch, round_dir),
    )
    image_start = resume_stage(model, image_stage, round_dir / image_file(variant), config.resume, logger)
    if variant != "base":
        if round_index == 1 and base.image is not None:
            loaded_banner(logger, model, "image", base.image)
        elif round_index == 1:
            logger.info("[NOTE] Training image_adapter from scratch (random initialization)")
        initialization_summary(logger, model, 2, round_index, base, trained_text=config.text_epoch > 0)
        banner(logger, "STAGE 2: IMAGE ADAPTER TRAINING WITH CROSS-ATTENTION", [])
    runner.run(image_stage, image_start, round_dir / image_file(variant))


def resume_stage(model: AdaptedCLIP, stage: Stage, checkpoint_path: Path, resume: bool, logger: logging.Logger) -> int:
    """With --resume and a checkpoint of this stage: load weights and optimizer (and scheduler) state, and return
    the epoch to continue from; else 0."""
    if not (resume and checkpoint_path.exists()):
        return 0
    load = load_text_adapter if stage.number == 1 else load_image_adapter
    checkpoint = load(model, checkpoint_path)
    stage.optimizer.load_state_dict(checkpoint[f"{stage.name}_optimizer"])
    if stage.scheduler is not None and f"{stage.name}_scheduler" in checkpoint:
        stage.scheduler.load_state_dict(checkpoint[f"{stage.name}_scheduler"])
    start = int(checkpoint["epoch"])
    logger.info("resuming: %s adapter at epoch %d of %d", stage.name, start, stage.epochs)
    return start


def evaluate_round(
    model: AdaptedCLIP,
    config: TrainConfig,
    table: DescriptionTable,
    round_dir: Path,
    round_index: int,
    logger: logging.Logger,
) -> None:
    data = eval_data(config)
    eval_config = EvalConfig(data=data, save_path=round_dir, out=round_dir / "eval", device=str(model.backbone.device))
    descriptions = descriptions_for(table, get_spec(data.dataset).name, str(config.class_descriptions))
    results = evaluate_model(model, True, eval_config, descriptions, label=f"loop {round_index}")
    logger.info("loop %d metrics (mean over classes): %s", round_index, json.dumps(mean_metrics(results).as_dict()))


def eval_data(config: TrainConfig) -> DataConfig:
    """What --eval_each_loop evaluates on: --eval_dataset / --eval_data_root / --eval_classes, each defaulting to
    the training data's (its test split, read from the folder layout)."""
    return DataConfig(
        dataset=config.eval_dataset or config.data.dataset,
        data_root=config.eval_data_root or config.data.root,
        classes=config.eval_classes,
    )
