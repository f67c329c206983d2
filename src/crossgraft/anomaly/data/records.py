"""The one record type every dataset format is read into, and the checks on it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from crossgraft.errors import CrossgraftError
from crossgraft.files import atomic_write

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
NORMAL, ANOMALOUS = 0, 1
GOOD = "good"


class DataError(CrossgraftError, ValueError):
    """Bad or missing input data. The message names the file or record at fault."""


@dataclass(frozen=True)
class Sample:
    """One image of a dataset. `label` is 0 (normal), 1 (anomalous) or None (unknown, for prediction)."""

    image_path: Path
    label: int | None
    class_name: str
    defect_type: str = GOOD
    mask_path: Path | None = None

    def to_json(self, root: Path | None = None) -> dict:
        """The public AA-CLIP jsonl fields, paths relative to `root` where they lie under it."""
        record = {
            "image_path": _relative(self.image_path, root),
            "label": self.label,
            "class_name": self.class_name,
            "defect_type": self.defect_type,
        }
        if self.mask_path is not None:
            record["mask_path"] = _relative(self.mask_path, root)
        return record


def _relative(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return path.resolve().relative_to(Path(root).resolve()).as_posix()
        except ValueError:
            pass
    return str(path)


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if is_image_file(p)) if folder.is_dir() else []


def check_samples(samples: list[Sample], *, allow_missing_masks: bool = False, where: str = "") -> None:
    """Every listed file exists, and every anomalous sample has a mask (unless image-level only is allowed)."""
    suffix = f" ({where})" if where else ""
    for sample in samples:
        if not sample.image_path.is_file():
            raise DataError(f"image not found: {sample.image_path}{suffix}")
        if sample.mask_path is not None and not sample.mask_path.is_file():
            raise DataError(f"mask not found: {sample.mask_path} (for image {sample.image_path}){suffix}")
        if sample.label == ANOMALOUS and sample.mask_path is None and not allow_missing_masks:
            raise DataError(
                f"anomalous image without a mask: {sample.image_path}{suffix}. Pixel metrics need masks; pass "
                "--allow_missing_masks to evaluate this set at image level only"
            )


def verify_image_files(samples: list[Sample]) -> None:
    """Open every image and mask header: unreadable files and mask/image size mismatches fail here, up front."""
    for sample in samples:
        image_size = _header_size(sample.image_path)
        if sample.mask_path is not None:
            mask_size = _header_size(sample.mask_path)
            if mask_size != image_size:
                raise DataError(
                    f"mask {sample.mask_path} is {mask_size[0]}x{mask_size[1]} but its image "
                    f"{sample.image_path} is {image_size[0]}x{image_size[1]}"
                )


def _header_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as image:
            image.verify()
            return image.size
    except FileNotFoundError as error:
        raise DataError(f"file not found: {path}") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DataError(f"cannot read image {path}: the file is corrupt or not an image ({error})") from error


def write_jsonl(samples: list[Sample], path: Path, root: Path | None = None) -> Path:
    """Write samples as public-format jsonl lines (paths relative to `root`); atomic."""
    with atomic_write(path) as handle:
        for sample in samples:
            handle.write(json.dumps(sample.to_json(root)) + "\n")
    return Path(path)
