"""Pictures a person would rather look at: labelled heat-map panels and per-class contact sheets.

A panel is a title block (file, class, score and verdict, what the colours span), four tiles that are always
present (image | ground truth | anomaly map | overlay with the ground truth outlined) with a caption each, and a
colour bar with the map's scale. `test --visualize`, `predict` and `attention-maps` all draw through `save_panel`.
Drawn with OpenCV (no figure library), so a test set of thousands of images takes seconds, not minutes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from crossgraft.anomaly.data.transforms import load_image
from crossgraft.images import save_image

TILE_MIN = 256  # smallest tile side in pixels: a scratch must stay visible
THUMB = 128  # contact-sheet thumbnail side
SHEET_COLUMNS = 8
SHEET_FRAME = 4  # frame around each thumbnail: its colour is the ground truth
SHEET_CAPTION = 18  # rank and score under each thumbnail
SHEET_HEADER = 62  # three lines of explanation
FONT = cv2.FONT_HERSHEY_SIMPLEX
Colour = tuple[int, int, int]  # RGB
BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)
EMPTY_TILE = (64, 64, 64)  # the ground-truth tile of an image without a mask
CONTOUR = (255, 255, 255)  # ground-truth outline on the overlay
ANOMALOUS_FRAME = (220, 30, 30)
NORMAL_FRAME = (30, 160, 60)
UNKNOWN_FRAME = (150, 150, 150)
TITLE_LINES = 3
TILE_CAPTIONS = ("image", "ground truth", "anomaly map", "overlay, ground truth outlined")


@dataclass
class PanelText:
    """What a panel says besides its pictures."""

    title: str  # file name and class (and, for attention maps, the word and the layer)
    detail: str  # image score and verdict against the threshold when one is known
    scale: str  # what the colours span, e.g. "colours: min-max of the class's maps, as the metrics use"
    empty_mask: str = "no defect (normal)"  # written on the ground-truth tile when there is no mask


@dataclass(frozen=True)
class PanelLayout:
    """Where everything of a panel lies, for a given tile side (pixels)."""

    tile: int

    @property
    def font_scale(self) -> float:
        return self.tile / 520

    @property
    def line_height(self) -> int:
        return int(round(self.tile * 0.075))

    @property
    def title_height(self) -> int:
        return TITLE_LINES * self.line_height + self.line_height // 2

    @property
    def caption_height(self) -> int:
        return self.line_height + self.line_height // 2

    @property
    def bar_strip(self) -> int:
        return max(self.tile // 16, 8)

    @property
    def bar_width(self) -> int:  # strip plus room for its tick labels
        return self.bar_strip + self.tile // 3

    @property
    def width(self) -> int:
        return 4 * self.tile + self.bar_width

    @property
    def height(self) -> int:
        return self.title_height + self.tile + self.caption_height

    def tile_box(self, index: int) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) of tile `index` (0 image, 1 ground truth, 2 map, 3 overlay)."""
        top, left = self.title_height, index * self.tile
        return top, left, top + self.tile, left + self.tile

    def bar_box(self) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) of the colour strip; its top row is the scale's high end."""
        top, left = self.title_height, 4 * self.tile + self.tile // 24
        return top, left, top + self.tile, left + self.bar_strip


def panel_layout(map_side: int) -> PanelLayout:
    """Tiles at the map's own size, at least TILE_MIN."""
    return PanelLayout(max(TILE_MIN, map_side))


# ---------------------------------------------------------------------------------------------- tiles
def scale_map(score_map: np.ndarray, low: float, high: float) -> np.ndarray:
    """(H, W) scores -> (H, W) in [0, 1] over [low, high]."""
    return np.clip((score_map - low) / max(high - low, 1e-12), 0, 1)


def heatmap_rgb(score_map: np.ndarray, low: float | None = None, high: float | None = None) -> np.ndarray:
    """(H, W) scores -> (H, W, 3) uint8 JET colours, scaled to [low, high] (the map's own range by default)."""
    low = float(score_map.min()) if low is None else low
    high = float(score_map.max()) if high is None else high
    return jet((scale_map(score_map, low, high) * 255).astype(np.uint8))


def jet(levels: np.ndarray) -> np.ndarray:
    """uint8 levels (any shape) -> RGB JET colours (shape + (3,))."""
    flat = levels.reshape(-1, 1)
    rgb = cv2.cvtColor(cv2.applyColorMap(flat, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    return rgb.reshape(*levels.shape, 3)


def resize_map(score_map: np.ndarray, side: int) -> np.ndarray:
    """A score map at `side` x `side` (bilinear), float32."""
    score_map = np.asarray(score_map, dtype=np.float32)
    if score_map.shape == (side, side):
        return score_map
    return cv2.resize(score_map, (side, side), interpolation=cv2.INTER_LINEAR)


def resize_mask(mask: np.ndarray | None, side: int) -> np.ndarray | None:
    """A boolean mask at `side` x `side` (nearest), or None when there is no mask or it is empty."""
    if mask is None or not np.asarray(mask).any():
        return None
    binary = (np.asarray(mask) > 0).astype(np.uint8)
    return cv2.resize(binary, (side, side), interpolation=cv2.INTER_NEAREST) > 0


def overlay_tile(image: np.ndarray, heat: np.ndarray, mask: np.ndarray | None, thickness: int) -> np.ndarray:
    """Half image, half heat map, with the ground truth's outline drawn on top."""
    overlay = (0.5 * image.astype(np.float32) + 0.5 * heat.astype(np.float32)).astype(np.uint8)
    if mask is not None:
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(overlay, contours, -1, CONTOUR, thickness)
    return overlay


def mask_tile(mask: np.ndarray | None, side: int, label: str, layout: PanelLayout) -> np.ndarray:
    """The ground truth in white on black, or a labelled empty tile."""
    if mask is not None:
        return np.repeat(mask.astype(np.uint8)[..., None] * 255, 3, axis=2)
    tile = np.full((side, side, 3), EMPTY_TILE, dtype=np.uint8)
    put_centered_in(tile, label, 0, side, side // 2, layout.font_scale, (230, 230, 230))
    return tile


# ----------------------------------------------------------------------------------------------- text
def fit_text(text: str, width: int, font_scale: float) -> str:
    """`text`, shortened with '...' until it fits `width` pixels."""
    if cv2.getTextSize(text, FONT, font_scale, 1)[0][0] <= width:
        return text
    while text and cv2.getTextSize(text + "...", FONT, font_scale, 1)[0][0] > width:
        text = text[:-1]
    return text + "..."


def put_text(canvas: np.ndarray, text: str, left: int, baseline: int, font_scale: float, colour: Colour = TEXT) -> None:
    text = fit_text(ascii_text(text), canvas.shape[1] - left - 2, font_scale)
    cv2.putText(canvas, text, (left, baseline), FONT, font_scale, colour, 1, cv2.LINE_AA)


def ascii_text(text: str) -> str:
    """OpenCV's fonts draw ASCII only: anything else becomes '?'."""
    return text.encode("ascii", "replace").decode("ascii")


def format_value(value: float) -> str:
    return f"{value:.4g}"


# ---------------------------------------------------------------------------------------------- panel
def render_panel(
    image: np.ndarray,
    score_map: np.ndarray,
    mask: np.ndarray | None,
    low: float,
    high: float,
    text: PanelText,
) -> np.ndarray:
    """The panel as an (H, W, 3) uint8 array; `image` (h, w, 3) uint8, `score_map` (S, S), `mask` (S, S) or None."""
    layout = panel_layout(score_map.shape[0])
    side = layout.tile
    canvas = np.full((layout.height, layout.width, 3), BACKGROUND, dtype=np.uint8)
    for line, words in enumerate((text.title, text.detail, text.scale)):
        put_text(canvas, words, 6, (line + 1) * layout.line_height, layout.font_scale * (1.1 if line == 0 else 1))

    picture = cv2.resize(image, (side, side), interpolation=cv2.INTER_CUBIC)
    scores = resize_map(score_map, side)
    truth = resize_mask(mask, side)
    heat = heatmap_rgb(scores, low, high)
    tiles = [
        picture,
        mask_tile(truth, side, text.empty_mask, layout),
        heat,
        overlay_tile(picture, heat, truth, max(1, side // 256)),
    ]
    captions = TILE_CAPTIONS if truth is not None else (*TILE_CAPTIONS[:3], "overlay")
    for index, (tile, caption) in enumerate(zip(tiles, captions)):
        top, left, bottom, right = layout.tile_box(index)
        canvas[top:bottom, left:right] = tile
        put_centered_in(canvas, caption, left, right, bottom + layout.line_height, layout.font_scale)
    draw_colour_bar(canvas, layout, low, high)
    return canvas


def put_centered_in(
    canvas: np.ndarray, text: str, left: int, right: int, baseline: int, font_scale: float, colour: Colour = TEXT
) -> None:
    """Text centred between columns `left` and `right` of the canvas."""
    text = fit_text(ascii_text(text), right - left - 4, font_scale)
    width = cv2.getTextSize(text, FONT, font_scale, 1)[0][0]
    cv2.putText(canvas, text, (left + (right - left - width) // 2, baseline), FONT, font_scale, colour, 1, cv2.LINE_AA)


def draw_colour_bar(canvas: np.ndarray, layout: PanelLayout, low: float, high: float) -> None:
    """A vertical JET strip, high at the top, with the values at its ends and middle."""
    top, left, bottom, right = layout.bar_box()
    levels = np.linspace(255, 0, bottom - top).round().astype(np.uint8)  # top row: the high end
    canvas[top:bottom, left:right] = jet(levels)[:, None, :]
    label_left = right + 4
    ticks = ((high, top + layout.line_height // 2), ((low + high) / 2, (top + bottom) // 2), (low, bottom - 2))
    for value, baseline in ticks:
        put_text(canvas, format_value(value), label_left, baseline, layout.font_scale * 0.9)
    put_centered_in(canvas, "scale", left, layout.width, bottom + layout.line_height, layout.font_scale)


def load_rgb(image_path: Path) -> np.ndarray:
    """An image file as an (H, W, 3) uint8 array, read once for all the pictures drawn of it."""
    return np.asarray(load_image(Path(image_path)))


def save_panel(
    image: np.ndarray,
    score_map: np.ndarray,
    out_path: Path,
    text: PanelText,
    mask: np.ndarray | None = None,
    low: float | None = None,
    high: float | None = None,
) -> Path:
    """Write the panel of one image (`load_rgb`); the colours span [low, high] (the map's own range by default)."""
    low = float(score_map.min()) if low is None else low
    high = float(score_map.max()) if high is None else high
    return save_image(Image.fromarray(render_panel(image, score_map, mask, low, high, text)), out_path)


def verdict(
    score: float, threshold: float, label: int | None, threshold_name: str, at_threshold_anomalous: bool
) -> str:
    """The call and the comparison that holds, e.g. 'normal: score 0.379 < F1-max threshold 0.643 (missed)';
    `at_threshold_anomalous` says which side a score equal to the threshold falls on."""
    anomalous = score >= threshold if at_threshold_anomalous else score > threshold
    if anomalous:
        relation = ">=" if at_threshold_anomalous else ">"
    else:
        relation = "<" if at_threshold_anomalous else "<="
    words = f"{'ANOMALOUS' if anomalous else 'normal'}: score {score:.4g} {relation} {threshold_name} {threshold:.4g}"
    if label is None:
        return words
    if anomalous == bool(label):
        return words + " (correct)"
    return words + (" (false alarm)" if anomalous else " (missed)")


# --------------------------------------------------------------------------------------- contact sheet
@dataclass
class SheetEntry:
    """One image on a contact sheet."""

    name: str
    overlay: np.ndarray  # (THUMB, THUMB, 3) uint8: image and heat map, ground truth outlined
    score: float
    label: int | None  # ground truth: 1 anomalous, 0 normal, None unknown


def sheet_entry(
    image: np.ndarray,
    name: str,
    score_map: np.ndarray,
    mask: np.ndarray | None,
    low: float,
    high: float,
    score: float,
    label: int | None,
) -> SheetEntry:
    """A thumbnail overlay of an image (`load_rgb`) on the same colour scale as the class's panels."""
    thumb = cv2.resize(image, (THUMB, THUMB), interpolation=cv2.INTER_AREA)
    heat = heatmap_rgb(resize_map(score_map, THUMB), low, high)
    return SheetEntry(name, overlay_tile(thumb, heat, resize_mask(mask, THUMB), 1), score, label)


def render_contact_sheet(entries: list[SheetEntry], title: str, threshold: float | None) -> np.ndarray:
    """Every entry as a framed thumbnail, highest score first (left to right, top to bottom): red frame
    anomalous, green normal (grey: not known); '!' marks an image on the wrong side of the threshold."""
    ordered = sorted(entries, key=lambda e: -e.score)
    columns = min(SHEET_COLUMNS, max(len(ordered), 1))
    rows = -(-len(ordered) // columns)
    frame, header = SHEET_FRAME, SHEET_HEADER
    cell_w, cell_h = sheet_cell()
    font_scale = 0.42
    width = max(columns * cell_w, 520)
    canvas = np.full((header + rows * cell_h, width, 3), BACKGROUND, dtype=np.uint8)
    put_text(canvas, title, 4, 16, font_scale * 1.15)
    put_text(canvas, "sorted by image score, highest first; frame: red anomalous, green normal", 4, 34, font_scale)
    explained = (
        f"'!' = wrong side of the threshold {format_value(threshold)}" if threshold is not None else "no threshold"
    )
    put_text(canvas, explained, 4, 52, font_scale)
    for rank, entry in enumerate(ordered):
        row, column = divmod(rank, columns)
        top, left = header + row * cell_h, column * cell_w
        colour = UNKNOWN_FRAME if entry.label is None else ANOMALOUS_FRAME if entry.label else NORMAL_FRAME
        canvas[top : top + THUMB + 2 * frame, left : left + cell_w] = colour
        canvas[top + frame : top + frame + THUMB, left + frame : left + frame + THUMB] = entry.overlay
        wrong = threshold is not None and entry.label is not None and (entry.score >= threshold) != bool(entry.label)
        label = f"{'! ' if wrong else ''}#{rank + 1} {format_value(entry.score)}"
        baseline = top + cell_h - 5
        put_centered_in(canvas, label, left, left + cell_w, baseline, font_scale, ANOMALOUS_FRAME if wrong else TEXT)
    return canvas


def sheet_cell() -> tuple[int, int]:
    """(width, height) of one contact-sheet cell: framed thumbnail and caption."""
    return THUMB + 2 * SHEET_FRAME, THUMB + 2 * SHEET_FRAME + SHEET_CAPTION


def save_contact_sheet(entries: list[SheetEntry], out_path: Path, title: str, threshold: float | None) -> Path:
    return save_image(Image.fromarray(render_contact_sheet(entries, title, threshold)), out_path)


def colour_range(score_map: np.ndarray, threshold: float | None) -> tuple[float, float]:
    """A prediction's colour scale: the image's minimum to max(its maximum, the threshold), so that a map below the
    threshold never looks red."""
    low, high = float(score_map.min()), float(score_map.max())
    return low, high if threshold is None else max(high, threshold)


def prediction_panel_text(
    image_name: str, class_name: str, image_score: float, threshold: float | None, low: float, high: float
) -> PanelText:
    """The title block of a prediction's panel (predict's files, the web page's download)."""
    judged = (
        f"image score {image_score:.4g} (no threshold: --threshold or --fit_on gives a verdict)"
        if threshold is None
        else verdict(image_score, threshold, None, "threshold", at_threshold_anomalous=False)
    )
    return PanelText(
        title=f"{image_name}  |  {class_name}",
        detail=f"{judged}  |  image score = the map's maximum",
        scale=f"colours: map values {low:.4g} to {high:.4g} (the image score's unit), this image's min to "
        "max(its max, the threshold)",
        empty_mask="no ground truth",
    )
