"""Test-time anomaly maps and image scores (docs/aa-clip.md), and loading a trained run for inference."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from crossgraft.anomaly.backbone import load_backbone
from crossgraft.anomaly.catalog import MEDICAL
from crossgraft.anomaly.checkpoints import image_file, load_image_adapter, load_text_adapter, text_file
from crossgraft.anomaly.data.formats import read_jsonl
from crossgraft.anomaly.data.records import Sample
from crossgraft.anomaly.losses import LOGIT_SCALE
from crossgraft.anomaly.model import AdaptedCLIP, TextSide
from crossgraft.anomaly.prompts import class_sentences, descriptions_for, load_class_descriptions
from crossgraft.anomaly.run_folder import RUN_CONFIG, TRAIN_SAMPLES, SavedRun, load_run_config
from crossgraft.devices import resolve_device
from crossgraft.errors import ConfigError
from crossgraft.graft import CheckpointError

BLUR = {"industrial": (7, 1.0), "medical": (9, 1.5)}  # kernel size, sigma at grid resolution


@dataclass
class MapOutput:
    maps: torch.Tensor  # (B, H, W): sum over levels of the blurred, upsampled level maps
    det_scores: torch.Tensor  # (B,): (cos(det, T_A) + 1) / 2


def gaussian_blur(x: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, H, W) with reflect borders (torchvision's GaussianBlur kernel)."""
    half = (kernel_size - 1) / 2
    coords = torch.linspace(-half, half, kernel_size, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (coords / sigma) ** 2)
    kernel = kernel / kernel.sum()
    pad = kernel_size // 2
    y = F.pad(x[:, None], (pad, pad, pad, pad), mode="reflect")
    y = F.conv2d(y, kernel.view(1, 1, 1, -1))
    y = F.conv2d(y, kernel.view(1, 1, -1, 1))
    return y[:, 0]


def level_logit_gap(seg_tokens: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """(100·cos_A + 1 − 100·cos_N) / 2 on the patch grid: (B, g, g). anchors (B, E, 2)."""
    batch, patches, _ = seg_tokens.shape
    grid = math.isqrt(patches)
    cos = torch.bmm(seg_tokens, anchors)  # (B, N, 2)
    gap = (LOGIT_SCALE * cos[..., 1] + 1 - LOGIT_SCALE * cos[..., 0]) / 2
    return gap.reshape(batch, grid, grid)


@torch.no_grad()
def anomaly_maps(
    model: AdaptedCLIP,
    images: torch.Tensor,
    text: TextSide,
    domain: str,
    start: tuple[int, torch.Tensor] | None = None,
) -> MapOutput:
    """Reference test-time maps: per level gap → blur at grid resolution → bilinear upsample → sum.
    `text` holds each image's anchors (B, E, 2) and sentence embeddings (B, S, E); `start`: the vision tokens
    `batch_text` already computed (`AdaptedCLIP.shared_start`)."""
    kernel_size, sigma = BLUR[domain]
    anchors = text.anchors
    output = model(images, text.sentences if model.image_cross_attn is not None else None, start)
    size = images.shape[-1]
    maps = images.new_zeros(images.shape[0], size, size, dtype=torch.float32)  # (B, S, S); shape[0]: exportable
    for seg_tokens in output.seg_tokens:
        level = gaussian_blur(level_logit_gap(seg_tokens, anchors).float(), kernel_size, sigma)
        maps = maps + F.interpolate(level[:, None], size=(size, size), mode="bilinear", align_corners=True)[:, 0]
    det = torch.bmm(output.det_token.unsqueeze(1).float(), anchors.float())[:, 0]  # (B, 2)
    return MapOutput(maps=maps, det_scores=(det[:, 1] + 1) / 2)


def fuse_image_scores(
    map_max: np.ndarray, det_scores: np.ndarray, map_min_all: float, map_max_all: float, domain: str
) -> np.ndarray:
    """Per class: min-max normalise maps (by their class-wide range) and det scores; industrial image score =
    0.5·max(map) + 0.5·det, medical = max(map). Inputs are per-image tensors/arrays of one class."""
    span = max(map_max_all - map_min_all, 1e-12)
    map_part = (map_max - map_min_all) / span
    if domain == MEDICAL:
        return map_part
    det_span = max(float(det_scores.max() - det_scores.min()), 1e-12)
    return 0.5 * map_part + 0.5 * (det_scores - det_scores.min()) / det_span


def clip_text_side(model: AdaptedCLIP, texts: list[str]) -> TextSide:
    """Text side from CLIP's own text encoder (a run without a text adapter, as the public code does)."""
    anchors, sentences = [], []
    for text in texts:
        normal, abnormal = class_sentences(text)
        embeddings = F.normalize(model.backbone.encode_text(normal + abnormal), dim=-1)  # (S, E)
        states = [F.normalize(part.mean(0), dim=-1) for part in (embeddings[: len(normal)], embeddings[len(normal) :])]
        anchors.append(torch.stack(states, dim=-1))
        sentences.append(embeddings)
    return TextSide(anchors=torch.stack(anchors), sentences=torch.stack(sentences))


def class_text_side(model: AdaptedCLIP, has_text: bool, class_texts: list[str]) -> TextSide:
    """Each class text's side without image context (C, ...): from the text adapter, or from CLIP's own text encoder
    for a run without one (as the public code does)."""
    return model.text_side(class_texts) if has_text else clip_text_side(model, class_texts)


@torch.no_grad()
def batch_text(
    model: AdaptedCLIP,
    has_text: bool,
    text: str,
    images: torch.Tensor,
    cache: dict | None = None,
    start: tuple[int, torch.Tensor] | None = None,
) -> TextSide:
    """The text side for a batch of images of one class, as the trained variant uses it. Unless the text
    attends to the image, it is the same for every image: computed once per class text (kept in `cache`).
    `start`: the vision tokens shared with the adapted pass (`AdaptedCLIP.shared_start`)."""
    per_image = has_text and model.text_cross_attn is not None
    if per_image:
        return model.image_text([text] * len(images), images, start)
    side = cache.get(text) if cache is not None else None
    if side is None:
        side = class_text_side(model, has_text, [text])
        if cache is not None:
            cache[text] = side
    return TextSide(side.anchors.expand(len(images), -1, -1), side.sentences.expand(len(images), -1, -1))


@dataclass
class TrainedRun:
    """A trained run loaded for inference: the model as it was trained, and what was loaded."""

    model: AdaptedCLIP
    saved: SavedRun
    has_text: bool  # a text adapter was loaded (without one: CLIP's own text encoder, as the public code does)
    image_checkpoint: Path
    epoch: int  # the image checkpoint's epoch

    @property
    def variant(self) -> str:
        """The run's variant (base, text_cross_attn, image_cross_attn or cross_attn)."""
        return self.saved.config.variant

    def descriptions(self, override: Path | None = None, dataset: str | None = None) -> dict[str, str]:
        """The {class: description} of a dataset's prompts: from a file given now, else the table the run recorded
        (looked through for every dataset when `dataset` is None, as `predict` does)."""
        if override is not None:
            return descriptions_for(load_class_descriptions(override), dataset, str(override))
        table = self.saved.descriptions
        if table is None:  # an older run recorded the file's path only
            table = load_class_descriptions(self.saved.config.class_descriptions)
        return descriptions_for(table, dataset, f"the descriptions {self.saved.config.save_path} was trained with")

    def training_samples(self) -> list[Sample]:
        """The samples the run trained on (its train_samples.jsonl, paths under the run's data root); none when the
        file is missing."""
        path = self.image_checkpoint.parent / TRAIN_SAMPLES
        return read_jsonl(path, self.saved.config.data.root) if path.is_file() else []

    def trained_classes(self) -> list[str]:
        """The class names the run trained on, sorted."""
        return sorted({sample.class_name for sample in self.training_samples()})

    def describe(self) -> str:
        """One line naming the run, its checkpoint and epoch."""
        text = "" if self.has_text else "; no text adapter: CLIP's own text encoder"
        checkpoint = self.image_checkpoint
        return f"{self.variant} run in {checkpoint.parent}, {checkpoint.name} (epoch {self.epoch}){text}"


def load_trained(
    save_path: Path, epoch: int | None = None, device: str = "cpu", image_size: int | None = None
) -> TrainedRun:
    """Rebuild the model a run trained from its run_config.json alone, and load its adapters.

    `epoch` picks image_adapter_{epoch}.pth; without it the latest image_adapter.pth is used. `image_size` runs
    the model at another side than it was trained at (CLIP's positions are interpolated; the adapters do not
    depend on it)."""
    save_path = Path(save_path)
    saved = load_run_config(save_path)
    config = saved.config
    size = saved.image_size if image_size is None else image_size
    backbone = load_backbone(replace(config.backbone, img_size=size), saved.quirks.gelu, device)
    model = AdaptedCLIP(backbone, config.adapter, config.cross, saved.quirks.vv_mode).to(resolve_device(device))
    if model.surgery_from != saved.surgery_from:
        raise ConfigError(
            f"{save_path / RUN_CONFIG} says the V-V path starts at block {saved.surgery_from}, but its settings give "
            f"block {model.surgery_from}: the file was edited inconsistently"
        )
    image_path = save_path / image_file(config.variant, epoch)
    if not image_path.exists():
        available = sorted(p.name for p in save_path.glob("image_adapter*.pth"))
        raise CheckpointError(f"{image_path} not found; image checkpoints in {save_path}: {available or 'none'}")
    image_checkpoint = load_image_adapter(model, image_path)
    text_path = save_path / text_file(config.variant)
    has_text = text_path.exists()
    if has_text:
        load_text_adapter(model, text_path)
    elif model.text_cross_attn is not None:
        raise CheckpointError(f"{text_path} not found: this {config.variant} run needs its text cross-attention")
    model.eval()
    return TrainedRun(model, saved, has_text, image_path, int(image_checkpoint.get("epoch", -1)))
