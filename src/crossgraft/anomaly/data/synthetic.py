"""A synthetic anomaly dataset in the MVTec AD layout, for demos and tests.

Each class is a procedurally drawn texture or object with its own palette and geometry; images of a class
differ by small shifts, rotations and noise. Defects are drawn on top, and the mask is exactly the region
that was painted (for objects, its part that lies on the object):
  scratch  a thin dark polyline
  spot     a filled dark blob
  missing  a piece cut out (background shows through) or, on textures, smoothed away to a flat patch
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from crossgraft.anomaly.config import SyntheticConfig
from crossgraft.files import write_text_atomic
from crossgraft.images import save_image

ARCHETYPES = ("stripes", "checker", "dots", "rings", "weave", "disc", "plate", "waves")
OBJECT_ARCHETYPES = {"disc", "plate"}
DEFECTS = ("scratch", "spot", "missing")
PALETTE_JITTER = 30.0  # per-image shift of a class's colours
TEXTURE_MIN, TEXTURE_MAX = 100.0, 230.0  # texture and background colours
DEFECT_MAX = 45.0  # defect colours lie below this


def class_names(count: int) -> list[str]:
    """`stripes`, `checker`, ...; past the eight archetypes a numbered variant (`stripes2`) follows."""
    names = []
    for index in range(count):
        base = ARCHETYPES[index % len(ARCHETYPES)]
        round_ = index // len(ARCHETYPES)
        names.append(base if round_ == 0 else f"{base}{round_ + 1}")
    return names


@dataclass(frozen=True)
class _ClassStyle:
    archetype: str
    colors: np.ndarray  # (3, 3) float: foreground, second colour, background
    frequency: float
    angle: float


def _class_style(index: int, seed: int) -> _ClassStyle:
    rng = np.random.default_rng([seed, index, 7])
    colors = rng.uniform(TEXTURE_MIN, TEXTURE_MAX, size=(3, 3))
    return _ClassStyle(
        archetype=ARCHETYPES[index % len(ARCHETYPES)],
        colors=colors,
        frequency=float(rng.uniform(3, 6)),
        angle=float(rng.uniform(0, np.pi)),
    )


def _render(style: _ClassStyle, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A normal image (H, W, 3) uint8 and its object mask (H, W) bool (all True for textures)."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size
    phase = rng.uniform(0, 2 * np.pi)
    angle = style.angle + rng.normal(0, 0.05)
    u = xs * np.cos(angle) + ys * np.sin(angle)
    v = -xs * np.sin(angle) + ys * np.cos(angle)
    f = style.frequency * 2 * np.pi
    center = 0.5 + rng.normal(0, 0.02, size=2)
    radius = np.hypot(xs - center[0], ys - center[1])
    kind = style.archetype
    if kind == "stripes":
        weight = 0.5 + 0.5 * np.sin(f * u + phase)
    elif kind == "checker":
        weight = ((np.floor(u * style.frequency + phase) + np.floor(v * style.frequency)) % 2).astype(np.float32)
    elif kind == "dots":
        cell = np.stack([(u * style.frequency + phase / 6) % 1, (v * style.frequency) % 1])
        weight = (np.hypot(cell[0] - 0.5, cell[1] - 0.5) < 0.28).astype(np.float32)
    elif kind == "rings":
        weight = 0.5 + 0.5 * np.sin(f * 1.5 * radius + phase)
    elif kind == "weave":
        weight = 0.25 * (2 + np.sin(f * u + phase) + np.sin(f * v))
    elif kind == "waves":
        weight = 0.5 + 0.5 * np.sin(f * u + 0.8 * np.sin(f * 0.5 * v) + phase)
    elif kind == "disc":
        weight = 0.5 + 0.5 * np.sin(f * 2 * radius + phase)
    else:  # plate
        weight = 0.5 + 0.25 * np.sin(f * u + phase)
    # every image shifts the class palette a little, so colour alone never tells a defect from the texture
    foreground, second, background = np.clip(style.colors + rng.uniform(-PALETTE_JITTER, PALETTE_JITTER, 3), 0, 255)
    image = weight[..., None] * foreground + (1 - weight[..., None]) * second
    if kind == "disc":
        obj = radius < 0.34
    elif kind == "plate":
        inside = (np.abs(xs - center[0]) < 0.36) & (np.abs(ys - center[1]) < 0.26)
        holes = np.zeros_like(inside)
        for hx in (-0.24, 0.24):
            holes |= np.hypot(xs - center[0] - hx, ys - center[1]) < 0.06
        obj = inside & ~holes
    else:
        obj = np.ones((size, size), dtype=bool)
    image = np.where(obj[..., None], image, background)
    image = image + rng.normal(0, 4, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), obj


def _defect_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    """Marks are dark, as stains and scratches on a product are: far below every texture colour."""
    red, green, blue = (int(c) for c in rng.uniform(0, DEFECT_MAX, 3))
    return red, green, blue


def _draw_defect(
    image: np.ndarray, obj: np.ndarray, style: _ClassStyle, defect: str, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Paint one defect inside the object; return the new image and the exact (H, W) bool mask."""
    size = image.shape[0]
    region = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(region)
    inside = np.argwhere(obj)
    cy, cx = inside[rng.integers(len(inside))]  # defect centre on the object
    if defect == "scratch":
        points = [(int(cx), int(cy))]
        for _ in range(rng.integers(2, 4)):
            step = rng.uniform(0.08, 0.18) * size
            direction = rng.uniform(0, 2 * np.pi)
            x, y = points[-1]
            points.append((int(x + step * np.cos(direction)), int(y + step * np.sin(direction))))
        draw.line(points, fill=255, width=int(rng.integers(2, 4)))
    else:
        rx, ry = rng.uniform(0.05, 0.11, size=2) * size
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
    mask = (np.asarray(region) > 0) & obj
    result = image.copy()
    if defect == "missing":
        if style.archetype in OBJECT_ARCHETYPES:
            fill = style.colors[2]  # background shows through the hole
        else:
            fill = image[mask].mean(axis=0) * 0.6  # flat, darker patch: the texture is gone
        result[mask] = np.clip(fill + rng.normal(0, 4, size=(int(mask.sum()), 3)), 0, 255).astype(np.uint8)
    else:
        result[mask] = _defect_colour(rng)
    return result, mask


def make_synthetic_dataset(out: Path, config: SyntheticConfig = SyntheticConfig()) -> dict[str, dict[str, int]]:
    """Write the dataset under `out` and return per-class counts. The same config always writes the same files."""
    out = Path(out)
    counts: dict[str, dict[str, int]] = {}
    for index, name in enumerate(class_names(config.classes)):
        style = _class_style(index, config.seed)
        rng = np.random.default_rng([config.seed, index, 1])
        class_dir = out / name
        for i in range(config.train_per_class):
            image, _ = _render(style, config.size, rng)
            _save(image, class_dir / "train" / "good" / f"{i:03d}.png")
        n_good = config.test_per_class // 2
        for i in range(n_good):
            image, _ = _render(style, config.size, rng)
            _save(image, class_dir / "test" / "good" / f"{i:03d}.png")
        per_defect: dict[str, int] = {}
        for i in range(config.test_per_class - n_good):
            defect = DEFECTS[i % len(DEFECTS)]
            number = per_defect.get(defect, 0)
            image, obj = _render(style, config.size, rng)
            image, mask = _draw_defect(image, obj, style, defect, rng)
            _save(image, class_dir / "test" / defect / f"{number:03d}.png")
            _save((mask * 255).astype(np.uint8), class_dir / "ground_truth" / defect / f"{number:03d}_mask.png")
            per_defect[defect] = number + 1
        counts[name] = {"train_good": config.train_per_class, "test_good": n_good, **per_defect}
    write_text_atomic(out / "synthetic.json", json.dumps({"config": asdict(config), "counts": counts}, indent=2))
    return counts


def _save(array: np.ndarray, path: Path) -> None:
    save_image(Image.fromarray(array), path)
