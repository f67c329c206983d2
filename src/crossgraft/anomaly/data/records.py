"""The one record type every dataset format is read into, and the checks on it."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from crossgraft.errors import DataError
from crossgraft.files import atomic_write
from crossgraft.images import check_image_file, check_mask_file
from crossgraft.limits import path_component

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
NORMAL, ANOMALOUS = 0, 1
GOOD = "good"


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


def _broken_links(paths: list[Path]) -> list[Path]:
    """Image-named links that lead to no file: dangling, or a loop."""
    return [p for p in paths if p.suffix.lower() in IMAGE_SUFFIXES and p.is_symlink() and not p.exists()]


def _refuse_broken(broken: list[Path], loops: list[Path] | None = None) -> None:
    problems = [f"{p} (a link to nothing, or a link loop)" for p in broken]
    problems += [f"{p} (a link back to a folder already read: a loop)" for p in loops or []]
    if problems:
        shown = "; ".join(problems[:5]) + (f"; … and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise DataError(f"{len(problems)} broken link(s) among the images: {shown}. Fix or remove them")


def list_images(folder: Path) -> list[Path]:
    """The image files of one folder, sorted; broken links among them are an error, not skipped."""
    if not folder.is_dir():
        return []
    entries = sorted(folder.iterdir())
    _refuse_broken(_broken_links(entries))
    return [p for p in entries if is_image_file(p)]


def find_images(root: Path) -> list[Path]:
    """Every image file under `root`, sorted, following linked folders (each real folder once); broken links and
    folder loops are an error, not skipped."""
    images: list[Path] = []
    broken: list[Path] = []
    loops: list[Path] = []
    seen: set[str] = set()
    for folder, subfolders, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            loops.append(Path(folder))
            subfolders[:] = []
            continue
        seen.add(real)
        entries = [Path(folder) / name for name in files]
        broken += _broken_links(entries)
        images += [p for p in entries if is_image_file(p)]
    _refuse_broken(broken, loops)
    return sorted(images)


def check_samples(samples: list[Sample], *, allow_missing_masks: bool = False, where: str = "") -> None:
    """Every listed file exists, and every anomalous sample has a mask (unless image-level only is allowed)."""
    suffix = f" ({where})" if where else ""
    for sample in samples:
        path_component(sample.class_name, f"the class name of {sample.image_path}{suffix}", DataError)
        path_component(sample.defect_type, f"the defect type of {sample.image_path}{suffix}", DataError)
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
    """Decode every image and mask: unreadable or truncated files and mask/image size mismatches fail here, up
    front, naming the file."""
    for sample in samples:
        width, height = check_image_file(sample.image_path)
        if sample.mask_path is not None:
            mask_width, mask_height = check_mask_file(sample.mask_path)
            if (mask_width, mask_height) != (width, height):
                raise DataError(
                    f"mask {sample.mask_path} is {mask_width}x{mask_height} but its image {sample.image_path} is "
                    f"{width}x{height}"
                )


def write_jsonl(samples: list[Sample], path: Path, root: Path | None = None) -> Path:
    """Write samples as public-format jsonl lines (paths relative to `root`); atomic."""
    with atomic_write(path) as handle:
        for sample in samples:
            handle.write(json.dumps(sample.to_json(root)) + "\n")
    return Path(path)
