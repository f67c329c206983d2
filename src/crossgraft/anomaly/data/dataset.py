"""A torch Dataset over `Sample`s."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import Dataset

from crossgraft.anomaly.data.records import Sample
from crossgraft.anomaly.data.transforms import load_image, load_mask

UNKNOWN_LABEL = -1
IMAGE_SEED_STRIDE = 1_000_003  # a prime above any dataset size: (seed, index) pairs never share a generator seed


class AnomalyDataset(Dataset):
    """Yields dicts: image (3, S, S), mask (S, S) in {0, 1}, label (-1 when unknown), class_name, image_path.

    With a `seed`, image i's random augmentation draws from a generator seeded by (seed, i): what an image gets
    depends on nothing else (not the process or worker that loads it, nor the images loaded before it)."""

    def __init__(self, samples: list[Sample], transform: Callable, seed: int | None = None) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        image = load_image(sample.image_path)
        mask = load_mask(sample.mask_path, image.size, sample.image_path)
        generator = None if self.seed is None else torch.Generator().manual_seed(self.seed * IMAGE_SEED_STRIDE + index)
        image_tensor, mask_tensor = self.transform(image, mask, generator)
        return {
            "image": image_tensor,
            "mask": mask_tensor,
            "label": torch.tensor(UNKNOWN_LABEL if sample.label is None else sample.label),
            "class_name": sample.class_name,
            "image_path": str(sample.image_path),
            "index": index,
        }
