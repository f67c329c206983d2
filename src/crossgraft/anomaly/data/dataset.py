"""A torch Dataset over `Sample`s."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import Dataset

from crossgraft.anomaly.data.records import Sample
from crossgraft.anomaly.data.transforms import load_image, load_mask

UNKNOWN_LABEL = -1


class AnomalyDataset(Dataset):
    """Yields dicts: image (3, S, S), mask (S, S) in {0, 1}, label (-1 when unknown), class_name, image_path."""

    def __init__(self, samples: list[Sample], transform: Callable) -> None:
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        image = load_image(sample.image_path)
        mask = load_mask(sample.mask_path, image.size, sample.image_path)
        image_tensor, mask_tensor = self.transform(image, mask)
        return {
            "image": image_tensor,
            "mask": mask_tensor,
            "label": torch.tensor(UNKNOWN_LABEL if sample.label is None else sample.label),
            "class_name": sample.class_name,
            "image_path": str(sample.image_path),
            "index": index,
        }
