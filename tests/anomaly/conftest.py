"""Trained tiny runs shared by the anomaly test modules, each trained once per session."""

import pytest
from helpers import quick_train_config

from crossgraft.anomaly.config import CrossAttentionConfig
from crossgraft.anomaly.train import train


@pytest.fixture(scope="session")
def trained_run(synthetic_root, tmp_path_factory):
    """The base model (reference preset): 1 text epoch, 2 image epochs on the synthetic set."""
    path = tmp_path_factory.mktemp("base_run")
    train(quick_train_config(synthetic_root, path))
    return path


@pytest.fixture(scope="session")
def cross_run(synthetic_root, tmp_path_factory):
    """The cross_attn variant (reference preset), trained from scratch: 1 text epoch, 1 image epoch."""
    path = tmp_path_factory.mktemp("cross_run")
    train(
        quick_train_config(
            synthetic_root, path, image_epoch=1, seed=3, cross=CrossAttentionConfig(variant="cross_attn")
        )
    )
    return path
