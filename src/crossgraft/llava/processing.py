"""LLaVA-OneVision's image processor: an image becomes normalised tiles as LLaVA-NeXT prepares them (pad, square,
and anyres tiling). Reads a model config, never changes one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from crossgraft.images import to_rgb
from crossgraft.llava.anyres import (
    is_anyres,
    max_tiles,
    parse_grid_pinpoints,
    resize_and_pad,
    select_best_resolution,
    split_into_tiles,
)
from crossgraft.llava.configuration import LlavaConfigError, LlavaQwenConfig, check_aspect_ratio


@dataclass
class ProcessedImage:
    """One image ready for the tower: its tiles and its original size (LLaVA-NeXT's `image_sizes` entry)."""

    tiles: torch.Tensor  # (T, 3, S, S); T = 1 for pad and square, 1 + columns·rows for anyres
    size: tuple[int, int]  # (width, height) of the image as read


@dataclass
class ImageProcessor:
    """Image → normalised (T, 3, S, S) tiles, as LLaVA-NeXT prepares them for `image_aspect_ratio`:

    - `pad`: pasted centred on a square of the mean colour (expand2square), then resized: one tile.
    - `square`: resized straight to the square: one tile.
    - `anyres` / `anyres_max_N`: the base tile (the image resized to the square) and the tiles of the best
      `grid_pinpoints` resolution (see crossgraft.llava.anyres).

    `single_tile=True` processes as `pad` whatever the mode: LLaVA-NeXT's rule for samples with several images.
    """

    size: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    aspect_ratio: str = "pad"
    grid_pinpoints: tuple[tuple[int, int], ...] = ()  # (width, height) resolutions for anyres

    def __post_init__(self) -> None:
        check_aspect_ratio(self.aspect_ratio)
        if is_anyres(self.aspect_ratio) and not self.grid_pinpoints:
            raise LlavaConfigError(
                f"image_aspect_ratio {self.aspect_ratio} needs image_grid_pinpoints (the resolutions to tile into), "
                "and this model's config has none: pass --image_grid_pinpoints '(1x1),...,(6x6)' (OneVision's) or "
                "use --image_aspect_ratio pad"
            )

    @classmethod
    def from_config(
        cls, config: LlavaQwenConfig, aspect_ratio: str | None = None, grid_pinpoints: object = None
    ) -> ImageProcessor:
        """The processor for --image_aspect_ratio / --image_grid_pinpoints (default: the config's, as LLaVA-NeXT
        reads them). The config is only read: a model that should merge tiles by other settings than its config's
        takes `processor.config_settings()`."""
        size = config.vision_tower_config().image_size
        if not isinstance(size, int):
            raise LlavaConfigError(f"the vision tower's images must be square, got image_size {size}")
        aspect_ratio = aspect_ratio or config.image_aspect_ratio
        if is_anyres(aspect_ratio) and "unpad" not in config.mm_patch_merge_type:
            raise LlavaConfigError(
                f"image_aspect_ratio {aspect_ratio} is merged with mm_patch_merge_type spatial_unpad (OneVision's); "
                f"this model's config has {config.mm_patch_merge_type!r}"
            )
        mean, std = (float(v) for v in config.image_mean), (float(v) for v in config.image_std)
        pinpoints = parse_grid_pinpoints(grid_pinpoints or config.image_grid_pinpoints, size)
        return cls(size, tuple(mean), tuple(std), aspect_ratio, tuple(pinpoints))  # type: ignore[arg-type]

    def config_settings(self) -> dict[str, Any]:
        """The model-config fields that make a model merge anyres tiles the way this processor cuts them (and that
        a saved config.json records): `model.config.update(processor.config_settings())`."""
        settings: dict[str, Any] = {"image_aspect_ratio": self.aspect_ratio}
        if self.grid_pinpoints:
            settings["image_grid_pinpoints"] = [list(resolution) for resolution in self.grid_pinpoints]
        return settings

    def describe(self) -> str:
        """One line for the run's log."""
        if not is_anyres(self.aspect_ratio):
            return f"images: {self.aspect_ratio}, one {self.size}-pixel tile each"
        grids = sorted({(w // self.size, h // self.size) for w, h in self.grid_pinpoints})
        most = max_tiles(self.aspect_ratio)
        return (
            f"images: {self.aspect_ratio}, a base tile plus a grid of {self.size}-pixel tiles "
            f"({grids[0][0]}x{grids[0][1]} to {grids[-1][0]}x{grids[-1][1]}, {len(grids)} grids)"
            + (f", features shrunk to about {most} tiles' worth" if most else "")
            + "; samples with several images: one padded tile per image"
        )

    def __call__(self, image: Image.Image, single_tile: bool = False) -> ProcessedImage:
        image = to_rgb(image)  # 16-bit grey scaled, not clipped
        if single_tile or self.aspect_ratio == "pad":
            tiles = [self._expand_to_square(image)]
        elif self.aspect_ratio == "square":
            tiles = [image]
        else:
            grid_resolution = select_best_resolution(image.size, self.grid_pinpoints)
            tiles = [image, *split_into_tiles(resize_and_pad(image, grid_resolution), self.size)]
        return ProcessedImage(torch.stack([self._normalise(tile) for tile in tiles]), image.size)

    def _normalise(self, image: Image.Image) -> torch.Tensor:
        image = image.resize((self.size, self.size), Image.Resampling.BICUBIC)  # tiles are already this size
        pixels = np.asarray(image, dtype=np.float32) / 255.0  # (S, S, 3)
        mean, std = np.asarray(self.image_mean, dtype=np.float32), np.asarray(self.image_std, dtype=np.float32)
        normalised = (pixels - mean) / std
        return torch.from_numpy(normalised.transpose(2, 0, 1).copy())  # (3, S, S)

    def _expand_to_square(self, image: Image.Image) -> Image.Image:
        width, height = image.size
        if width == height:
            return image
        side = max(width, height)
        background = tuple(int(value * 255) for value in self.image_mean)
        canvas = Image.new("RGB", (side, side), background)
        canvas.paste(image, ((side - width) // 2, (side - height) // 2))
        return canvas
