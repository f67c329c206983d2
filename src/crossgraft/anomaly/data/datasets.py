"""Named datasets: which layout each is stored in, its domain, and its classes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from crossgraft.anomaly.data.formats import read_jsonl, read_medical, read_meta_json, read_mvtec, read_visa
from crossgraft.anomaly.data.records import DataError, Sample, check_samples, verify_image_files

INDUSTRIAL, MEDICAL = "industrial", "medical"


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    layout: str  # "mvtec" (also BTAD, MPDD, synthetic), "visa" or "medical" (BMAD-style)
    domain: str  # decides the test-time blur and image-score fusion
    classes: tuple[str, ...] = ()  # empty: whatever class folders the data root holds


MVTEC_CLASSES = (
    "bottle",
    "cable",
    "capsule",
    "carpet",
    "grid",
    "hazelnut",
    "leather",
    "metal_nut",
    "pill",
    "screw",
    "tile",
    "transistor",
    "toothbrush",
    "wood",
    "zipper",
)
VISA_CLASSES = (
    "candle",
    "capsules",
    "cashew",
    "chewinggum",
    "fryum",
    "macaroni1",
    "macaroni2",
    "pcb1",
    "pcb2",
    "pcb3",
    "pcb4",
    "pipe_fryum",
)

DATASETS = {
    spec.name: spec
    for spec in [
        DatasetSpec("MVTec", "mvtec", INDUSTRIAL, MVTEC_CLASSES),
        DatasetSpec("VisA", "visa", INDUSTRIAL, VISA_CLASSES),
        DatasetSpec("BTAD", "mvtec", INDUSTRIAL, ("01", "02", "03")),
        DatasetSpec(
            "MPDD",
            "mvtec",
            INDUSTRIAL,
            ("bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate", "tubes"),
        ),
        DatasetSpec("Brain", "medical", MEDICAL, ("Brain",)),
        DatasetSpec("Liver", "medical", MEDICAL, ("Liver",)),
        DatasetSpec("Retina", "medical", MEDICAL, ("Retina",)),
        DatasetSpec("Colon_clinicDB", "medical", MEDICAL, ("Colon_clinicDB",)),
        DatasetSpec("Colon_colonDB", "medical", MEDICAL, ("Colon_colonDB",)),
        DatasetSpec("Colon_cvc300", "medical", MEDICAL, ("CVC-300",)),
        DatasetSpec("Colon_Kvasir", "medical", MEDICAL, ("Kvasir",)),
        DatasetSpec("synthetic", "mvtec", INDUSTRIAL),
        DatasetSpec("custom", "mvtec", INDUSTRIAL),  # any MVTec-layout folder, or any --meta file
    ]
}


# where the public AA-CLIP code expects each dataset (its dataset/constants.py), relative to the working folder
PUBLIC_DATA_ROOTS = {
    "MVTec": "data/mvtec_ad",
    "VisA": "data/VisA_20220922",
    "BTAD": "data/BTech_Dataset_transformed",
    "MPDD": "data/MPDD",
    "Brain": "data/MedAD/Brain_AD",
    "Liver": "data/MedAD/Liver_AD",
    "Retina": "data/MedAD/Retina_RESC_AD",
    "Colon_clinicDB": "data/Colon/CVC-ClinicDB",
    "Colon_colonDB": "data/Colon/CVC-ColonDB",
    "Colon_cvc300": "data/Colon/CVC-300",
    "Colon_Kvasir": "data/Colon/Kvasir",
}


def default_data_root(dataset: str) -> Path:
    """The public code's location of a dataset, for command lines that give no --data_root."""
    spec = get_spec(dataset)
    if spec.name not in PUBLIC_DATA_ROOTS:
        raise DataError(f"--data_root is required for dataset {spec.name}")
    return Path(PUBLIC_DATA_ROOTS[spec.name])


def get_spec(name: str) -> DatasetSpec:
    """Look a dataset up by name, ignoring case."""
    by_lower = {key.lower(): spec for key, spec in DATASETS.items()}
    spec = by_lower.get(name.lower())
    if spec is None:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)} (or use --meta FILE)")
    return spec


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
