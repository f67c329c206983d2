"""The named anomaly datasets as settings: each one's layout, domain and classes, and where the public AA-CLIP code
keeps it. Pure data (no reader, no torch), so configs can check a dataset name without loading any dataset code."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from crossgraft.errors import DataError

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
