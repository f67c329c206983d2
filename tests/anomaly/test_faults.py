"""Kill a tiny anomaly training at chosen and at random points (inside checkpoint and run-config writes too), then
rerun the same command: the weights equal the uninterrupted run's, bit for bit."""

import pytest
import torch
from helpers import adapter_weights, killed_then_done, run_with_faults

pytestmark = pytest.mark.slow  # kills training processes


def anomaly_args(synthetic_root, save_path):
    return [
        "anomaly",
        "train",
        "--dataset",
        "synthetic",
        "--data_root",
        str(synthetic_root),
        "--classes",
        "dots",
        "stripes",
        "--full_shot",
        "--clip",
        "tiny",
        "--img_size",
        "64",
        "--text_epoch",
        "2",
        "--image_epoch",
        "3",
        "--text_batch_size",
        "4",
        "--image_batch_size",
        "4",
        "--save_path",
        str(save_path),
        "--device",
        "cpu",
        "--resume",
    ]


@pytest.fixture(scope="module")
def anomaly_reference(synthetic_root, tmp_path_factory):
    path = tmp_path_factory.mktemp("uninterrupted")
    _, seconds = run_with_faults("none", anomaly_args(synthetic_root, path))
    return adapter_weights(path), seconds


@pytest.mark.parametrize(
    "plan",
    ["write:2:mid", "write:4:rename", "write:9:mid", "random:1", "random:2"],  # run_config, checkpoints, at random
)
def test_an_anomaly_run_killed_anywhere_resumes_to_the_same_weights(plan, anomaly_reference, synthetic_root, tmp_path):
    reference, seconds = anomaly_reference
    plan = killed_then_done(anomaly_args(synthetic_root, tmp_path / "run"), plan, tmp_path / "run", seconds)
    weights = adapter_weights(tmp_path / "run")
    assert weights.keys() == reference.keys()
    for key, value in reference.items():
        assert torch.equal(weights[key], value), f"{plan}: {key}"
    train_log = (tmp_path / "run" / "train.log").read_text()
    assert train_log.count("training image epoch 2:") >= 1
