"""Anomaly datasets: on-disk formats, one record type, transforms, k-shot selection, synthetic data."""

from crossgraft.anomaly.data.dataset import AnomalyDataset
from crossgraft.anomaly.data.datasets import (
    group_by_class,
    load_data,
    load_samples,
    summarize_samples,
)
from crossgraft.anomaly.data.kshot import sample_k_shot
from crossgraft.anomaly.data.records import DataError, Sample, write_jsonl
from crossgraft.anomaly.data.transforms import AugmentConfig, EvalTransform, TrainTransform

__all__ = [
    "AnomalyDataset",
    "AugmentConfig",
    "DataError",
    "Sample",
    "EvalTransform",
    "TrainTransform",
    "load_data",
    "group_by_class",
    "load_samples",
    "sample_k_shot",
    "summarize_samples",
    "write_jsonl",
]
