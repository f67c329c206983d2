"""`--cache_stage1_features`: each training image's frozen stage-1 features, computed the first time stage 1 sees
the image and read back in every later text epoch.

Valid only when an image's features are the same every epoch: no stage-1 augmentation, and V-V attention over
tokens rather than across the batch axis (TrainConfig refuses the other combinations). The features live in a
memory-mapped .npy file under the run folder (fp16 by default: 4 levels of a 518-px ViT-L image are 8.4 MB), so
a large k-shot set does not have to fit in memory; the file is removed when stage 1 ends.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from crossgraft.anomaly.backbone import FrozenCLIP
from crossgraft.anomaly.config import VVMode
from crossgraft.anomaly.model import stage1_features

CACHE_FILE = "stage1_features{tag}.cache.npy"
IMAGE_CACHE_FILE = "stage1_image_features{tag}.cache.npy"


class Stage1FeatureCache:
    """Frozen stage-1 features (per level (N, E) patches and the (E,) image feature) of `count` training images,
    addressed by their dataset index."""

    def __init__(self, folder: Path, count: int, dtype: str = "float16", process_index: int = 0) -> None:
        self.folder = Path(folder)
        self.files = [self.folder / name.format(tag=f".{process_index}" if process_index else "")
                      for name in (CACHE_FILE, IMAGE_CACHE_FILE)]  # fmt: skip
        self.count = count
        self.dtype = np.dtype(dtype)
        self.filled = np.zeros(count, dtype=bool)
        self._patches: np.memmap | None = None  # (count, levels, N, E)
        self._images: np.memmap | None = None  # (count, E)
        self.feature_dtype = torch.float32  # what stage1_features returned (the losses run in it)

    def _open(self, patches: list[torch.Tensor], image_feature: torch.Tensor) -> None:
        levels, (_, tokens, width) = len(patches), patches[0].shape
        self.feature_dtype = patches[0].dtype
        self.folder.mkdir(parents=True, exist_ok=True)
        self._patches = np.lib.format.open_memmap(
            self.files[0], mode="w+", dtype=self.dtype, shape=(self.count, levels, tokens, width)
        )
        self._images = np.lib.format.open_memmap(
            self.files[1], mode="w+", dtype=self.dtype, shape=(self.count, image_feature.shape[-1])
        )

    def features(
        self,
        backbone: FrozenCLIP,
        images: torch.Tensor,
        indices: torch.Tensor,
        surgery_from: int,
        vv_mode: VVMode,
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """What `stage1_features(backbone, images, …)` returns, computed only for the images not cached yet."""
        rows = indices.tolist()
        missing = [position for position, index in enumerate(rows) if not self.filled[index]]
        if missing:
            patches, image_feature = stage1_features(backbone, images[missing], surgery_from, vv_mode)
            if self._patches is None:
                self._open(patches, image_feature)
            assert self._patches is not None and self._images is not None
            targets = [rows[position] for position in missing]
            stacked = torch.stack(patches, dim=1)  # (M, levels, N, E)
            self._patches[targets] = stacked.float().cpu().numpy().astype(self.dtype)
            self._images[targets] = image_feature.float().cpu().numpy().astype(self.dtype)
            self.filled[targets] = True
        assert self._patches is not None and self._images is not None
        device, dtype = images.device, self.feature_dtype
        cached = torch.from_numpy(np.ascontiguousarray(self._patches[rows])).to(device=device, dtype=dtype)
        image_feature = torch.from_numpy(np.ascontiguousarray(self._images[rows])).to(device=device, dtype=dtype)
        return list(cached.unbind(dim=1)), image_feature

    def close(self) -> None:
        """Drop the memory maps and remove the files."""
        self._patches = self._images = None
        for path in self.files:
            path.unlink(missing_ok=True)
