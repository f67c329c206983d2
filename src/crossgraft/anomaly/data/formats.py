"""Readers for the on-disk layouts of anomaly datasets. Each returns a list of `Sample`s, nothing else."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from crossgraft.anomaly.data.records import (
    ANOMALOUS,
    GOOD,
    NORMAL,
    DataError,
    Sample,
    find_images,
    is_image_file,
    list_images,
)
from crossgraft.files import parse_json, read_json_lines, read_text

NORMAL_DIR_NAMES = {"good", "ok"}  # MVTec / MPDD say "good", BTAD says "ok"
MASK_SUFFIXES = ("_mask", "")  # MVTec: 000_mask.png; BTAD: 0000.png beside 0000.bmp


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{what} not found: {path}")
    return path


def _class_dirs(root: Path, split: str, classes: list[str] | None) -> list[Path]:
    _require_dir(root, "data root")
    found = sorted(p for p in root.iterdir() if (p / split).is_dir())
    if classes is None:
        if not found:
            raise DataError(f"no class folders with a '{split}' split under {root}")
        return found
    names = {p.name for p in found}
    unknown = [c for c in classes if c not in names]
    if unknown:
        raise DataError(f"unknown class(es) {unknown} under {root}; classes there: {sorted(names)}")
    return [root / c for c in classes]


def _find_mask(ground_truth: Path, defect: str, image: Path) -> Path | None:
    folder = ground_truth / defect
    for suffix in MASK_SUFFIXES:
        for candidate in sorted(folder.glob(f"{image.stem}{suffix}.*")):
            if is_image_file(candidate):
                return candidate
    return None


def read_mvtec(root: Path, split: str = "test", classes: list[str] | None = None) -> list[Sample]:
    """MVTec AD layout, also MPDD and BTAD: `{class}/{split}/{good|ok|defect}/*`, masks under `ground_truth`."""
    root = Path(root)
    samples = []
    for class_dir in _class_dirs(root, split, classes):
        for defect_dir in sorted(p for p in (class_dir / split).iterdir() if p.is_dir()):
            normal = defect_dir.name in NORMAL_DIR_NAMES
            for image in list_images(defect_dir):
                mask = None if normal else _find_mask(class_dir / "ground_truth", defect_dir.name, image)
                samples.append(
                    Sample(
                        image_path=image,
                        label=NORMAL if normal else ANOMALOUS,
                        class_name=class_dir.name,
                        defect_type=GOOD if normal else defect_dir.name,
                        mask_path=mask,
                    )
                )
    return samples


def read_visa(root: Path, split: str = "test", classes: list[str] | None = None) -> list[Sample]:
    """VisA with its `split_csv/1cls.csv` (object, split, label, image, mask; paths relative to the root)."""
    root = Path(root)
    csv_path = root / "split_csv" / "1cls.csv"
    if not csv_path.is_file():
        raise DataError(f"VisA split file not found: {csv_path} (VisA needs split_csv/1cls.csv under the data root)")
    samples = []
    with io.StringIO(read_text(csv_path, "VisA split file"), newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"object", "split", "label", "image", "mask"} - set(reader.fieldnames or [])
        if missing:
            raise DataError(f"{csv_path}: missing column(s) {sorted(missing)}")
        for line, row in enumerate(reader, start=2):
            if row["split"] != split:
                continue
            if row["label"] not in ("normal", "anomaly"):
                raise DataError(f"{csv_path}:{line}: label must be 'normal' or 'anomaly', got {row['label']!r}")
            anomalous = row["label"] == "anomaly"
            samples.append(
                Sample(
                    image_path=root / row["image"],
                    label=ANOMALOUS if anomalous else NORMAL,
                    class_name=row["object"],
                    defect_type="anomaly" if anomalous else GOOD,
                    mask_path=root / row["mask"] if anomalous and row["mask"] else None,
                )
            )
    return _filter_classes(samples, classes, str(csv_path))


def read_medical(
    root: Path, split: str = "test", classes: list[str] | None = None, default_class: str = "object"
) -> list[Sample]:
    """BMAD-style medical sets: `{split}/{good,Ungood}/{img,label}`, either at the root or per class folder."""
    root = Path(root)
    _require_dir(root, "data root")
    if (root / split).is_dir():
        class_roots = {(classes[0] if classes else default_class): root}
    else:
        class_roots = {p.name: p for p in _class_dirs(root, split, classes)}
    samples = []
    for class_name, class_root in class_roots.items():
        for state, label in (("good", NORMAL), ("Ungood", ANOMALOUS)):
            state_dir = class_root / split / state
            if not state_dir.is_dir():
                continue
            label_dir = state_dir / "label"
            for image in list_images(state_dir / "img"):
                mask = None
                if label == ANOMALOUS and label_dir.is_dir():
                    mask = next((p for p in list_images(label_dir) if p.stem == image.stem), None)
                samples.append(
                    Sample(image, label, class_name, defect_type=GOOD if label == NORMAL else "anomaly", mask_path=mask)
                )
    return samples


def _parse_label(value: object, where: str) -> int:
    if value in (0, 1, True, False):
        return int(value)
    if isinstance(value, str) and value.lower() in {"0", "1", "normal", "good", "anomaly", "abnormal"}:
        return NORMAL if value.lower() in {"0", "normal", "good"} else ANOMALOUS
    raise DataError(f"{where}: label must be 0/1 or normal/anomaly, got {value!r}")


def read_jsonl(path: Path, root: Path | None = None, classes: list[str] | None = None) -> list[Sample]:
    """The public AA-CLIP metadata: one json object a line with image_path, label, class_name[, mask_path]."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"metadata file not found: {path}")
    root = Path(root) if root is not None else path.parent
    samples = []
    for line in read_json_lines(path, "metadata file"):
        where, record = f"{path}:{line.number}", line.value
        if not isinstance(record, dict):
            raise DataError(
                f"{where}: expected a json object, found {type(record).__name__} ({json.dumps(record)[:40]})"
            )
        for key in ("image_path", "label", "class_name"):
            if key not in record:
                raise DataError(f"{where}: record has no {key!r} (keys: {sorted(record)})")
        label = _parse_label(record["label"], where)
        mask = _optional_path(record.get("mask_path"), "mask_path", where)
        _require_path(record["image_path"], "image_path", where)
        samples.append(
            Sample(
                image_path=root / record["image_path"],
                label=label,
                class_name=str(record["class_name"]),
                defect_type=record.get("defect_type") or (GOOD if label == NORMAL else "anomaly"),
                mask_path=root / mask if mask else None,
            )
        )
    return _filter_classes(samples, classes, str(path))


def read_meta_json(
    path: Path, root: Path | None = None, split: str = "test", classes: list[str] | None = None
) -> list[Sample]:
    """AnomalyCLIP-style meta.json: {split: {class: [{img_path, mask_path, cls_name, specie_name, anomaly}]}}."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"metadata file not found: {path}")
    root = Path(root) if root is not None else path.parent
    meta = parse_json(read_text(path, "metadata file"), str(path))
    if not isinstance(meta, dict):
        raise DataError(f"{path}: expected a json object of splits, found {type(meta).__name__}")
    if split not in meta:
        raise DataError(f"{path}: no {split!r} split (has {sorted(meta)})")
    if not isinstance(meta[split], dict):
        raise DataError(
            f"{path}: the {split!r} split must map class names to lists of records, found {type(meta[split]).__name__}"
        )
    samples = []
    for class_name, records in meta[split].items():
        if not isinstance(records, list):
            raise DataError(f"{path}: {split}/{class_name} must be a list of records, found {type(records).__name__}")
        for index, record in enumerate(records):
            where = f"{path}: {split}/{class_name}[{index}]"
            if not isinstance(record, dict):
                raise DataError(f"{where}: expected a json object, found {type(record).__name__}")
            if "img_path" not in record:
                raise DataError(f"{where}: record has no 'img_path'")
            _require_path(record["img_path"], "img_path", where)
            label = _parse_label(record.get("anomaly", 0), where)
            mask = _optional_path(record.get("mask_path"), "mask_path", where)
            samples.append(
                Sample(
                    image_path=root / record["img_path"],
                    label=label,
                    class_name=str(record.get("cls_name", class_name)),
                    defect_type=record.get("specie_name") or (GOOD if label == NORMAL else "anomaly"),
                    mask_path=root / mask if mask and label == ANOMALOUS else None,
                )
            )
    return _filter_classes(samples, classes, str(path))


def _require_path(value: object, key: str, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise DataError(f"{where}: {key!r} must be a path (a non-empty string), found {value!r}")
    return value


def _optional_path(value: object, key: str, where: str) -> str | None:
    return None if value in (None, "") else _require_path(value, key, where)


def read_folder(path: Path, class_name: str = "object") -> list[Sample]:
    """Images to predict on: one file, or every image in a folder tree. Labels are unknown."""
    path = Path(path)
    if path.is_file():
        if not is_image_file(path):
            raise DataError(f"not an image file (by its suffix): {path}")
        images = [path]
    elif path.is_dir():
        images = find_images(path)
        if not images:
            raise DataError(f"no image files under {path}")
    else:
        raise DataError(f"no such file or folder: {path}")
    return [Sample(image, None, class_name, defect_type="unknown") for image in images]


def output_stem(image: Path, inputs: Path) -> Path:
    """Where an image's outputs go, relative to an output folder: its path below `inputs` without the suffix
    (`crack/000` for inputs/crack/000.png), so that equal file names in different subfolders never collide;
    just the stem when `inputs` is the image itself."""
    image, inputs = Path(image), Path(inputs)
    if inputs.is_file() or image == inputs:
        return Path(image.stem)
    return image.relative_to(inputs).with_suffix("")


def _filter_classes(samples: list[Sample], classes: list[str] | None, where: str) -> list[Sample]:
    if classes is None:
        return samples
    present = {s.class_name for s in samples}
    unknown = [c for c in classes if c not in present]
    if unknown:
        raise DataError(f"unknown class(es) {unknown} in {where}; classes there: {sorted(present)}")
    wanted = set(classes)
    return [s for s in samples if s.class_name in wanted]
