"""Reading images the same careful way in both families: any mode becomes 8-bit RGB (16-bit images are scaled, not
clipped to white), masks are read from their values (never from an alpha channel), every pixel is decoded (a
truncated file fails here, naming itself), and an image past the decompression-bomb limit is named with the limit
and the flag that raises it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from crossgraft.errors import ConfigError, DataError, OutputError
from crossgraft.files import atomic_write
from crossgraft.limits import DEFAULT_MAX_PIXELS, MAX_PIXELS_FLAG

SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
RGB_MODES = {"RGB", "RGBA", "RGBX", "RGBa"}  # masks: the brightest of R, G, B
FIRST_CHANNEL_MODES = {"LA", "La", "PA", "LAB"}  # masks: grey or palette index (alpha ignored), LAB's lightness
CONVERTED_MODES = {"CMYK", "YCbCr", "HSV"}  # masks: through Pillow's conversion to RGB


def set_max_pixels(limit: int | None) -> None:
    """The decompression-bomb limit for every image read from now on (None: the default)."""
    if limit is not None and limit < 1:
        raise ConfigError(f"{MAX_PIXELS_FLAG} must be positive, got {limit}")
    Image.MAX_IMAGE_PIXELS = (limit or DEFAULT_MAX_PIXELS) // 2


def max_pixels() -> int:
    return 2 * (Image.MAX_IMAGE_PIXELS or DEFAULT_MAX_PIXELS // 2)


def _open(path: Path, what: str) -> Image.Image:
    """Open and decode every pixel; every failure is a DataError naming the file."""
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except FileNotFoundError as error:
        raise DataError(f"{what} not found: {path}") from error
    except Image.DecompressionBombError as error:
        raise DataError(
            f"{what} {path} has more pixels than the decompression-bomb limit of {max_pixels():,} ({error}); if you "
            f"trust the file, raise the limit with {MAX_PIXELS_FLAG}"
        ) from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DataError(
            f"cannot read {what} {path}: the file is corrupt, truncated or not an image ({error})"
        ) from error


def to_rgb(image: Image.Image, path: Path | str = "") -> Image.Image:
    """8-bit RGB: 16-bit grey is scaled (65535 → 255), alpha is dropped, palettes are looked up."""
    if image.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.int64)
        if values.max(initial=0) > 65535 or values.min(initial=0) < 0:
            raise DataError(
                f"{path}: a 32-bit integer image ({image.mode}) with values outside 0..65535 is not supported"
            )
        return Image.fromarray((values / 257).round().astype(np.uint8), mode="L").convert("RGB")
    if image.mode == "F":
        raise DataError(f"{path}: floating-point images are not supported; save it as 8- or 16-bit")
    if image.mode == "LAB":  # Pillow copies LAB's channels into RGB unconverted
        raise DataError(f"{path}: LAB images are not supported; save it as RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def read_rgb(path: Path, what: str = "image") -> Image.Image:
    """An image file as 8-bit RGB, fully decoded."""
    return to_rgb(_open(Path(path), what), path)


def read_mask_values(path: Path) -> np.ndarray:
    """A mask file's values (H, W), fully decoded, read by what the mask shows (`mask_values`)."""
    return mask_values(_open(Path(path), "mask"), path)


def mask_values(mask: Image.Image, path: Path | str = "") -> np.ndarray:
    """A mask's values (H, W), read by what it shows: grey as stored, palette indices as stored (instance ids),
    colour as the brightest RGB channel, other colour spaces (CMYK, YCbCr, HSV) through their own conversion to RGB
    and LAB by its lightness; an alpha channel is ignored (an opaque alpha would otherwise mark every pixel)."""
    values = np.asarray(mask)
    if values.ndim == 2:
        return values
    if mask.mode in RGB_MODES:
        return values[..., :3].max(axis=2)
    if mask.mode in FIRST_CHANNEL_MODES:
        return values[..., 0]
    if mask.mode in CONVERTED_MODES:  # CMYK white is (0, 0, 0, 0): its channels read as they are would invert it
        return np.asarray(mask.convert("RGB")).max(axis=2)
    raise DataError(f"mask {path}: its mode {mask.mode} is not one crossgraft reads; save it as a grey (L) PNG")


def check_image_file(path: Path) -> tuple[int, int]:
    """(width, height) of an image, read exactly as training and testing read it (`read_rgb`): a file this accepts
    is a file they read."""
    return read_rgb(path).size


def check_mask_file(path: Path) -> tuple[int, int]:
    """(width, height) of a mask, read exactly as training and testing read it (`read_mask_values`)."""
    height, width = read_mask_values(path).shape
    return width, height


PNG_COMPRESS_LEVEL = 3  # twice as fast to write as Pillow's default 6, about 15% larger files


def save_image(image: Image.Image, path: Path | str) -> Path:
    """Write an image atomically, in the format its suffix names (.png, .jpg, …)."""
    path = Path(path)
    image_format = Image.registered_extensions().get(path.suffix.lower())
    if image_format is None:
        raise OutputError(f"cannot write {path}: unknown image file type {path.suffix!r}")
    options = {"compress_level": PNG_COMPRESS_LEVEL} if image_format == "PNG" else {}
    with atomic_write(path, binary=True) as handle:
        image.save(handle, format=image_format, **options)
    return path
