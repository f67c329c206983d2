"""Reading a named dataset (or a metadata file) into checked samples; the names themselves are in `catalog`."""

from __future__ import annotations

from pathlib import Path

from crossgraft.anomaly.catalog import DatasetSpec, get_spec
from crossgraft.anomaly.config import DataConfig
from crossgraft.anomaly.data.formats import read_jsonl, read_medical, read_meta_json, read_mvtec, read_visa
from crossgraft.anomaly.data.records import DataError, Sample, check_samples, verify_image_files
from crossgraft.images import set_max_pixels


def load_samples(
    dataset: str,
    data_root: Path,
    *,
    split: str = "test",
    meta: Path | None = None,
    classes: list[str] | None = None,
    allow_missing_masks: bool = False,
    verify_files: bool = True,
) -> list[Sample]:
    """Read, check and return the samples of one dataset split.

    `meta` (a public-format .jsonl or an AnomalyCLIP meta.json, paths relative to `data_root`) replaces the
    folder layout. Every file is checked up front, so a bad file fails before any training or testing starts.
    """
    spec = get_spec(dataset)
    data_root = Path(data_root)
    if meta is not None:
        meta = Path(meta)
        if meta.suffix == ".jsonl":
            samples = read_jsonl(meta, data_root, classes)
        else:
            samples = read_meta_json(meta, data_root, split, classes)
    elif spec.layout == "visa":
        samples = read_visa(data_root, split, classes)
    elif spec.layout == "medical":
        samples = read_medical(data_root, split, classes, default_class=spec.classes[0])
    else:
        samples = read_mvtec(data_root, split, classes)
    if not samples:
        raise DataError(f"no images found for dataset {spec.name} ({split} split) under {meta or data_root}")
    check_samples(samples, allow_missing_masks=allow_missing_masks, where=f"{spec.name} {split}")
    if verify_files:
        verify_image_files(samples)
    return samples


def load_data(data: DataConfig, split: str = "test") -> list[Sample]:
    """Read and check the samples of one split of a `DataConfig` (every file is decoded up front)."""
    set_max_pixels(data.max_image_pixels)
    return load_samples(
        data.dataset,
        data.root,
        split=split,
        meta=data.meta,
        classes=data.classes,
        allow_missing_masks=data.allow_missing_masks,
    )


def group_by_class(samples: list[Sample]) -> dict[str, list[Sample]]:
    """Samples per class, classes in first-seen order."""
    groups: dict[str, list[Sample]] = {}
    for sample in samples:
        groups.setdefault(sample.class_name, []).append(sample)
    return groups


def summarize_samples(samples: list[Sample], spec: DatasetSpec, split: str, root: Path) -> str:
    """What `inspect-data` prints: counts per class (normal, anomalous, masks, defect types) and how many files
    lie outside the data root (metadata paths may point anywhere)."""
    lines = [f"{spec.name} ({spec.domain}), {split} split: {len(samples)} images, every file readable"]
    lines.append(f"  {'class':<14}{'normal':>8}{'anomalous':>11}{'masks':>7}  defect types")
    for name, group in group_by_class(samples).items():
        anomalous = [s for s in group if s.label == 1]
        defects = sorted({s.defect_type for s in anomalous})
        lines.append(
            f"  {name:<14}{len(group) - len(anomalous):>8}{len(anomalous):>11}"
            f"{sum(s.mask_path is not None for s in group):>7}  {', '.join(defects)}"
        )
    root = Path(root).resolve()
    files = [path for s in samples for path in (s.image_path, s.mask_path) if path is not None]
    outside = sum(not Path(path).resolve().is_relative_to(root) for path in files)
    if outside:
        lines.append(f"  note: {outside} of {len(files)} files lie outside the data root {root}")
    return "\n".join(lines)
