"""The anomaly family's one detector: raw 8-bit images in, the test-time anomaly map and scores out.

`AnomalyDetector` is what every engine runs, so `predict`, the web page and `export` all detect through it: eager
PyTorch runs it as it is; `export` traces it into one ONNX graph (which OpenVINO reads). `test` keeps only the
class-wide score fusion of the public protocol outside it. Each class's text side is computed once, when the
detector is built, and stored in it:

- variants whose text does not attend to the image (`base`, `image_cross_attn`) store each class's anchors
  [T_N, T_A] (C, E, 2) and, for image cross-attention, its sentence embeddings (C, S, E);
- variants whose text attends to the image (`text_cross_attn`, `cross_attn`) store the frozen first text block's
  output of each class's sentences (C, S*T, Wt) and their token ids, and the graph runs the rest of the text path
  (cross-attention to the image's stage-1 context, the adapted text blocks) for every image.

Inputs: `images` uint8 (B, S, S, 3), RGB, already resized to the model's side S (bicubic, as the test transform
does); `class_index` int64 (B,), an index into the graph's class list. Outputs: `anomaly_map` (B, S, S), the
level-mean of the reference maps (blur at grid resolution, bilinear upsample, sum over levels, divided by the
number of levels), `image_score` (B,), the map's maximum, and `det_score` (B,), (cos(det, T_A) + 1) / 2 — the
numbers `crossgraft anomaly predict` reports.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn

from crossgraft.anomaly.data.transforms import CLIP_MEAN, CLIP_STD
from crossgraft.anomaly.infer import MapOutput, anomaly_maps, class_text_side
from crossgraft.anomaly.model import AdaptedCLIP, TextSide
from crossgraft.errors import ShapeError

INPUT_NAMES = ["images", "class_index"]
OUTPUT_NAMES = ["anomaly_map", "image_score", "det_score"]
PIXEL_MAX = 255.0


@dataclass
class Detection:
    """One batch's results, as numpy arrays, whichever engine computed them."""

    anomaly_map: np.ndarray  # (B, S, S) float32: the level-mean anomaly map
    image_score: np.ndarray  # (B,): the map's maximum
    det_score: np.ndarray  # (B,): (cos(det, T_A) + 1) / 2


class AnomalyDetector(nn.Module):
    """A trained model with the text side of a fixed list of classes built in (see the module docstring)."""

    mean: torch.Tensor  # (1, 3, 1, 1), CLIP's
    std: torch.Tensor
    text_block_one: torch.Tensor
    sentence_ids: torch.Tensor
    anchors: torch.Tensor
    sentences: torch.Tensor

    def __init__(self, model: AdaptedCLIP, class_texts: list[str], has_text: bool, domain: str) -> None:
        super().__init__()
        self.model = model
        self.domain = domain
        self.attends_text = has_text and model.text_cross_attn is not None
        self.num_classes = len(class_texts)
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)
        with torch.no_grad():
            if self.attends_text:
                block_one, ids = model.text_block_one(class_texts)
                self.register_buffer("text_block_one", block_one, persistent=False)  # (C, S*T, Wt)
                self.register_buffer("sentence_ids", ids, persistent=False)  # (C, S, T)
            else:
                side = class_text_side(model, has_text, class_texts)
                self.register_buffer("anchors", side.anchors, persistent=False)  # (C, E, 2)
                self.register_buffer("sentences", side.sentences, persistent=False)  # (C, S, E)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, S, S, 3) -> CLIP-normalised float (B, 3, S, S), the test transform's arithmetic."""
        if images.dim() != 4 or images.shape[-1] != 3:
            raise ShapeError(f"images must be uint8 (B, S, S, 3) RGB, got shape {tuple(images.shape)}")
        pixels = images.permute(0, 3, 1, 2).float()
        return (pixels / PIXEL_MAX - self.mean) / self.std

    def text_of(
        self, class_index: torch.Tensor, images: torch.Tensor, start: tuple[int, torch.Tensor] | None = None
    ) -> TextSide:
        """Each image's text side from its class index (B,): the stored anchors (B, E, 2) and sentences (B, S, E), or,
        for text that attends to the image, the adapted text path run on the image's context (B, N, E)."""
        if self.attends_text:
            context = self.model.image_context(images, start)  # (B, N, E)
            return self.model.attend_text(self.text_block_one[class_index], self.sentence_ids[class_index], context)
        return TextSide(anchors=self.anchors[class_index], sentences=self.sentences[class_index])

    def level_maps(self, pixels: torch.Tensor, class_index: torch.Tensor) -> MapOutput:
        """CLIP-normalised pixels (B, 3, S, S) and class indices (B,) -> the reference maps summed over levels
        (B, S, S) and the det scores (B,): what `test` fuses class-wide, and `forward` turns into the level mean."""
        start = self.model.shared_start(pixels) if self.attends_text else None  # shared by both vision passes
        return anomaly_maps(self.model, pixels, self.text_of(class_index, pixels, start), self.domain, start)

    def forward(
        self, images: torch.Tensor, class_index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """uint8 images (B, S, S, 3) and class indices (B,) -> anomaly map (B, S, S), image score (B,), det score
        (B,)."""
        output = self.level_maps(self.normalise(images), class_index)
        score_map = output.maps / len(self.model.backbone.levels)  # (B, S, S)
        return score_map, score_map.flatten(1).amax(dim=1), output.det_scores


def resized_pixels(image: Image.Image, side: int) -> np.ndarray:
    """An RGB image as the graph takes it: bicubic-resized to side x side, uint8 (side, side, 3)."""
    return np.asarray(image.convert("RGB").resize((side, side), Image.Resampling.BICUBIC), dtype=np.uint8)
