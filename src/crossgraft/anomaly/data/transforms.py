"""Image/mask loading and the reference train and test transforms (PIL + numpy + torch, no torchvision).

Train augmentation follows the public AA-CLIP code: colour jitter (brightness, contrast, saturation 0.5,
each applied with p=0.7; off for the stage-1 loader), bicubic resize, then joint image+mask rotation ±30°
(p=0.5), translation up to 15% (p=0.5) and horizontal / vertical flips (p=0.5 each). Masks are resized
nearest and binarised `!= 0`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance

from crossgraft.errors import DataError
from crossgraft.images import read_mask_values, read_rgb

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class AugmentConfig:
    color_jitter: bool = True
    jitter_strength: float = 0.5  # factors drawn from [1 - s, 1 + s] for brightness, contrast, saturation
    jitter_p: float = 0.7
    rotate_degrees: float = 30.0
    rotate_p: float = 0.5
    translate: float = 0.15  # fraction of the image side
    translate_p: float = 0.5
    hflip_p: float = 0.5
    vflip_p: float = 0.5


def load_image(path: Path) -> Image.Image:
    """Read an image as 8-bit RGB; a missing, unreadable or truncated file raises DataError naming it."""
    return read_rgb(path)


def load_mask(path: Path | None, size: tuple[int, int], image_path: Path | None = None) -> Image.Image:
    """Read a mask as a binary 'L' image (0/255, `!= 0` is anomalous, alpha ignored); all zeros when there is none."""
    if path is None:
        return Image.new("L", size, 0)
    values = read_mask_values(path)
    if (values.shape[1], values.shape[0]) != tuple(size):
        raise DataError(
            f"mask {path} is {values.shape[1]}x{values.shape[0]} but its image {image_path or ''} is "
            f"{size[0]}x{size[1]}"
        )
    return Image.fromarray(((values != 0) * 255).astype(np.uint8), mode="L")


def _to_tensors(image: Image.Image, mask: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)  # (3, S, S)
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    mask_tensor = torch.from_numpy((np.asarray(mask) != 0).astype(np.float32))  # (S, S)
    return (pixels - mean) / std, mask_tensor


class EvalTransform:
    """Resize (image bicubic, mask nearest), normalise with CLIP's mean/std, binarise the mask."""

    def __init__(self, image_size: int) -> None:
        self.image_size = image_size

    def resize(self, image: Image.Image, mask: Image.Image) -> tuple[Image.Image, Image.Image]:
        size = (self.image_size, self.image_size)
        return image.resize(size, Image.Resampling.BICUBIC), mask.resize(size, Image.Resampling.NEAREST)

    def __call__(
        self, image: Image.Image, mask: Image.Image, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return _to_tensors(*self.resize(image, mask))


class TrainTransform(EvalTransform):
    """The reference augmentation, applied jointly to image and mask. Its random draws come from `generator`
    (torch's global RNG without one), so a seeded generator per image makes it reproducible anywhere."""

    def __init__(self, image_size: int, augment: AugmentConfig | None = None) -> None:
        super().__init__(image_size)
        self.augment = augment or AugmentConfig()

    def __call__(
        self, image: Image.Image, mask: Image.Image, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        def chance(p: float) -> bool:
            return bool(torch.rand((), generator=generator) < p)

        def uniform(low: float, high: float) -> float:
            return float(low + (high - low) * torch.rand((), generator=generator))

        a = self.augment
        if a.color_jitter:
            for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
                if chance(a.jitter_p):
                    factor = uniform(1 - a.jitter_strength, 1 + a.jitter_strength)
                    image = enhancer(image).enhance(factor)
        image, mask = self.resize(image, mask)
        if chance(a.rotate_p):
            angle = uniform(-a.rotate_degrees, a.rotate_degrees)
            image = image.rotate(angle, resample=Image.Resampling.BILINEAR)
            mask = mask.rotate(angle, resample=Image.Resampling.NEAREST)
        if chance(a.translate_p):
            limit = a.translate * self.image_size
            shift = (round(uniform(-limit, limit)), round(uniform(-limit, limit)))
            image = image.rotate(0, translate=shift, resample=Image.Resampling.BILINEAR)
            mask = mask.rotate(0, translate=shift, resample=Image.Resampling.NEAREST)
        if chance(a.hflip_p):
            image, mask = (
                image.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
                mask.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
            )
        if chance(a.vflip_p):
            image, mask = (
                image.transpose(Image.Transpose.FLIP_TOP_BOTTOM),
                mask.transpose(Image.Transpose.FLIP_TOP_BOTTOM),
            )
        return _to_tensors(image, mask)
