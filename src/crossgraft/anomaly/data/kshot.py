"""Seeded k-shot selection: k/2 normal and k/2 anomalous images per class."""

from __future__ import annotations

import random

from crossgraft.anomaly.data.datasets import group_by_class
from crossgraft.anomaly.data.records import ANOMALOUS, NORMAL, DataError, Sample


def sample_k_shot(samples: list[Sample], shot: int, seed: int) -> list[Sample]:
    """Draw `shot // 2` normal and `shot // 2` anomalous samples from every class.

    Each class draws from its own generator seeded by (seed, class name), so a class's selection does not
    change when other classes are added or removed. The selection keeps the original order within a class.
    """
    if shot < 2 or shot % 2:
        raise DataError(f"--shot must be an even number >= 2 (half normal, half anomalous), got {shot}")
    per_label = shot // 2
    chosen: list[Sample] = []
    for class_name, group in group_by_class(samples).items():
        rng = random.Random(f"{seed}:{class_name}")
        for label, word in ((NORMAL, "normal"), (ANOMALOUS, "anomalous")):
            pool = [i for i, s in enumerate(group) if s.label == label]
            if len(pool) < per_label:
                raise DataError(
                    f"--shot {shot} needs {per_label} {word} images of class {class_name!r}, "
                    f"but it has only {len(pool)}"
                )
            chosen.extend(group[i] for i in sorted(rng.sample(pool, per_label)))
    return chosen
