"""LLaVA-NeXT's `anyres` image path, as LLaVA-OneVision uses it (`image_aspect_ratio: anyres_max_9`,
`mm_patch_merge_type: spatial_unpad`).

Pixels: the grid resolution that keeps most of the image with the least waste is chosen from
`image_grid_pinpoints`; the image is resized into it (aspect kept, black padding) and cut into tiles of the tower's
size, row by row. A base tile, the whole image resized to one square, goes first.

Features: the tiles' patch features are laid out as one (rows·p, columns·p) map, the padding is cut off again
(unpad, to the original aspect ratio), the map is shrunk bilinearly when it holds more than N tiles' worth of
features (`anyres_max_N`), and an `image_newline` ends each row. The sequence is then
base features (p², unchanged) + rows · (columns + 1).
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from crossgraft.llava.configuration import ANYRES_PATTERN, LlavaConfigError

MAX_TILES_SLACK = 1.1  # LLaVA-NeXT shrinks the map only when it exceeds N tiles by more than 10%

Resolution = tuple[int, int]  # (width, height) in pixels


def is_anyres(aspect_ratio: str) -> bool:
    return ANYRES_PATTERN.fullmatch(aspect_ratio) is not None


def max_tiles(aspect_ratio: str) -> int | None:
    """N of anyres_max_N; None for plain anyres (no shrinking)."""
    match = ANYRES_PATTERN.fullmatch(aspect_ratio)
    return int(match.group(1)) if match and match.group(1) else None


def parse_grid_pinpoints(value: object, tile_size: int) -> list[Resolution]:
    """`image_grid_pinpoints` as LLaVA-NeXT configs write it → [(width, height), …] in pixels.

    Accepted: a list of [width, height] pairs; the same list as a string; or the range form "(1x1),...,(6x6)"
    (tile counts from the first to the last pair, times `tile_size`). Every resolution must be a whole number of
    tiles: LLaVA-NeXT's grid shape is the resolution divided by the tile size.
    """
    if value is None or value == "" or value == []:
        return []
    if isinstance(value, str) and "x" in value:
        matches = re.findall(r"\((\d+)x(\d+)\)", value)
        if not matches:
            raise LlavaConfigError(f"image_grid_pinpoints {value!r}: expected the form '(1x1),...,(6x6)'")
        (first_w, first_h), (last_w, last_h) = (tuple(map(int, m)) for m in (matches[0], matches[-1]))
        pairs: object = [
            (columns * tile_size, rows * tile_size)
            for columns in range(first_w, last_w + 1)
            for rows in range(first_h, last_h + 1)
        ]
    elif isinstance(value, str):
        try:
            pairs = ast.literal_eval(value)
        except (ValueError, SyntaxError) as error:
            raise LlavaConfigError(f"image_grid_pinpoints {value!r} is not a list of [width, height] pairs") from error
    else:
        pairs = value
    if not isinstance(pairs, (list, tuple)) or not pairs:
        raise LlavaConfigError(f"image_grid_pinpoints {value!r} is not a list of [width, height] pairs")
    resolutions = []
    for pair in pairs:
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(v, int) and v > 0 for v in pair)):
            raise LlavaConfigError(f"image_grid_pinpoints: {pair!r} is not a [width, height] pair of positive integers")
        width, height = pair
        if width % tile_size or height % tile_size:
            raise LlavaConfigError(
                f"image_grid_pinpoints: {width}x{height} is not a whole number of {tile_size}-pixel tiles "
                "(the vision tower's image size)"
            )
        resolutions.append((width, height))
    return resolutions


def select_best_resolution(image_size: Resolution, resolutions: Sequence[Resolution]) -> Resolution:
    """The resolution that shows most of the image's pixels once it is scaled into it (aspect kept), then the one
    that wastes least; ties go to the earlier one (LLaVA-NeXT's rule)."""
    width, height = image_size
    best, most_shown, least_wasted = resolutions[0], 0, math.inf
    for candidate_width, candidate_height in resolutions:
        scale = min(candidate_width / width, candidate_height / height)
        shown = min(int(width * scale) * int(height * scale), width * height)
        wasted = candidate_width * candidate_height - shown
        if shown > most_shown or (shown == most_shown and wasted < least_wasted):
            best, most_shown, least_wasted = (candidate_width, candidate_height), shown, wasted
    return best


def grid_shape(image_size: Resolution, resolutions: Sequence[Resolution], tile_size: int) -> tuple[int, int]:
    """(columns, rows) of tiles an image of `image_size` (width, height) is cut into."""
    width, height = select_best_resolution(image_size, resolutions)
    return width // tile_size, height // tile_size


def resize_and_pad(image: Image.Image, target: Resolution) -> Image.Image:
    """Scale into `target` keeping the aspect (the filled side exact, the other rounded up), centred on black."""
    width, height = image.size
    target_width, target_height = target
    scale_width, scale_height = target_width / width, target_height / height
    if scale_width < scale_height:
        new_width, new_height = target_width, min(math.ceil(height * scale_width), target_height)
    else:
        new_width, new_height = min(math.ceil(width * scale_height), target_width), target_height
    resized = image.resize((new_width, new_height), Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", target, (0, 0, 0))
    canvas.paste(resized, ((target_width - new_width) // 2, (target_height - new_height) // 2))
    return canvas


def split_into_tiles(image: Image.Image, tile_size: int) -> list[Image.Image]:
    """Row by row, left to right."""
    width, height = image.size
    return [
        image.crop((left, top, left + tile_size, top + tile_size))
        for top in range(0, height, tile_size)
        for left in range(0, width, tile_size)
    ]


def unpad(feature_map: torch.Tensor, image_size: Resolution) -> torch.Tensor:
    """feature_map (D, H, W) of an image padded into a grid → the rows or columns that hold the image, (D, H', W').
    The kept size is floored and the padding split evenly, as LLaVA-NeXT's unpad_image does."""
    width, height = image_size
    map_height, map_width = feature_map.shape[1:]
    if width / height > map_width / map_height:  # black bars above and below
        kept = int(height * (map_width / width))
        padding = (map_height - kept) // 2
        return feature_map[:, padding : map_height - padding, :]
    kept = int(width * (map_height / height))
    padding = (map_width - kept) // 2
    return feature_map[:, :, padding : map_width - padding]


def merge_tiles(
    base: torch.Tensor,
    tiles: torch.Tensor,
    image_size: Resolution,
    grid: tuple[int, int],
    image_newline: torch.Tensor,
    most_tiles: int | None,
) -> torch.Tensor:
    """base (p², D) and tiles (columns·rows, p², D) of one image → its sequence (p² + H'·(W'+1), D).

    The tiles become one (D, rows·p, columns·p) map, which is unpadded to the image's aspect, shrunk bilinearly
    to about `most_tiles` tiles' worth of features when it holds more than 1.1 times that, and ends each row
    with `image_newline` (D,).
    """
    columns, rows = grid
    side = math.isqrt(base.shape[0])  # p: patches per tile side
    width = tiles.shape[-1]
    feature_map = tiles.view(rows, columns, side, side, width)  # (rows, columns, p, p, D)
    feature_map = feature_map.permute(4, 0, 2, 1, 3).reshape(width, rows * side, columns * side)  # (D, H, W)
    feature_map = unpad(feature_map, image_size)
    _, height, map_width = feature_map.shape
    if most_tiles is not None:
        times = math.sqrt(height * map_width / (most_tiles * side**2))
        if times > MAX_TILES_SLACK:
            size = [int(height // times), int(map_width // times)]
            feature_map = F.interpolate(feature_map[None], size, mode="bilinear")[0]
    newline = image_newline.to(feature_map.dtype)[:, None, None].expand(width, feature_map.shape[1], 1)
    feature_map = torch.cat([feature_map, newline], dim=2)  # (D, H', W'+1)
    return torch.cat([base, feature_map.flatten(1).transpose(0, 1)])  # (p² + H'·(W'+1), D)


def image_token_count(
    image_size: Resolution,
    single_tile: bool,
    tile_size: int,
    patch_size: int,
    pinpoints: Sequence[Resolution],
    aspect_ratio: str,
    unpad: bool,
) -> int:
    """How many positions one image takes in the spliced sequence: the features of its tiles as `merge_tiles`
    arranges them (computed by that same function on one-wide features, so the count cannot drift from the model's)."""
    per_tile = (tile_size // patch_size) ** 2  # p²
    if single_tile or not is_anyres(aspect_ratio):
        return per_tile + (1 if unpad else 0)
    grid = grid_shape(image_size, pinpoints, tile_size)
    merged = merge_tiles(
        torch.zeros(per_tile, 1), torch.zeros(grid[0] * grid[1], per_tile, 1), image_size, grid, torch.zeros(1),
        max_tiles(aspect_ratio),
    )  # fmt: skip
    return int(merged.shape[0])
