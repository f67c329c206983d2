"""Session fixtures: the tiny backbone and a small synthetic dataset are built once."""

from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_backbone():
    from crossgraft.anomaly.backbone import load_clip

    return load_clip("tiny", image_size=64)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    from crossgraft.anomaly.data.synthetic import SyntheticConfig, make_synthetic_dataset

    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic_dataset(root, SyntheticConfig(classes=3, train_per_class=4, test_per_class=6, size=64, seed=1))
    return root
