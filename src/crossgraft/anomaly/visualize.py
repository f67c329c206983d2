"""Pictures a person would rather look at: image | ground truth | heat map | overlay panels."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from crossgraft.anomaly.data.transforms import load_image
from crossgraft.images import save_image


def heatmap_rgb(score_map: np.ndarray, low: float | None = None, high: float | None = None) -> np.ndarray:
    """(H, W) scores -> (H, W, 3) uint8 JET colours, scaled to [low, high] (the map's own range by default)."""
    low = float(score_map.min()) if low is None else low
    high = float(score_map.max()) if high is None else high
    scaled = np.clip((score_map - low) / max(high - low, 1e-12), 0, 1)
    bgr = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def save_panel(
    image_path: Path,
    score_map: np.ndarray,
    out_path: Path,
    mask: np.ndarray | None = None,
    low: float | None = None,
    high: float | None = None,
) -> Path:
    """Write image | ground truth (if given) | heat map | overlay, all at the score map's size."""
    height, width = score_map.shape
    image = np.asarray(load_image(Path(image_path)).resize((width, height), Image.Resampling.BICUBIC))
    heat = heatmap_rgb(score_map, low, high)
    overlay = (0.5 * image + 0.5 * heat).astype(np.uint8)
    tiles = [image]
    if mask is not None:
        tiles.append(np.repeat((np.asarray(mask) > 0).astype(np.uint8)[..., None] * 255, 3, axis=2))
    tiles += [heat, overlay]
    return save_image(Image.fromarray(np.concatenate(tiles, axis=1)), out_path)
