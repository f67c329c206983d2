"""Test-time maps and scores (docs/aa-clip.md) against hand-worked values, and
rebuilding a trained run from its folder."""

import json

import numpy as np
import pytest
import torch

from crossgraft.anomaly.infer import fuse_image_scores, gaussian_blur, level_logit_gap, load_trained
from crossgraft.anomaly.run_folder import RUN_CONFIG
from crossgraft.errors import ConfigError
from crossgraft.graft import CheckpointError


def test_level_map_formula():
    seg = torch.tensor([[[0.6, 0.8], [1.0, 0.0], [0.0, 1.0], [0.8, 0.6]]])
    anchors = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    gap = level_logit_gap(seg, anchors)
    assert gap.shape == (1, 2, 2)
    assert gap[0, 0, 0].item() == pytest.approx((100 * 0.8 + 1 - 100 * 0.6) / 2)
    assert gap[0, 0, 1].item() == pytest.approx((0 + 1 - 100) / 2)


@pytest.mark.parametrize("kernel_size,sigma", [(7, 1.0), (9, 1.5)])
def test_gaussian_blur_kernel_and_reflect_border(kernel_size, sigma):
    x = torch.zeros(1, 11, 11)
    x[0, 5, 5] = 1.0
    blurred = gaussian_blur(x, kernel_size, sigma)
    half = (kernel_size - 1) / 2
    k = np.exp(-0.5 * (np.linspace(-half, half, kernel_size) / sigma) ** 2)
    k /= k.sum()
    expected = np.outer(k, k)
    r = kernel_size // 2
    np.testing.assert_allclose(blurred[0, 5 - r : 5 + r + 1, 5 - r : 5 + r + 1].numpy(), expected, atol=1e-7)
    assert blurred.sum().item() == pytest.approx(1.0, abs=1e-6)  # nothing reaches the border
    edge = torch.zeros(1, 11, 11)
    edge[0, 1, 5] = 1.0  # reflect padding mirrors row 1 to row -1 (the edge row itself is not repeated)
    assert gaussian_blur(edge, kernel_size, sigma)[0, 0, 5].item() == pytest.approx(
        float(expected[r + 1, r] + expected[r - 1, r])
    )


def test_image_score_fusion_industrial_and_medical():
    map_max = np.array([2.0, 4.0, 6.0])
    det = np.array([0.5, 0.7, 0.6])
    # class-wide map range [0, 8]: max parts 0.25, 0.5, 0.75; det min-max 0, 1, 0.5
    np.testing.assert_allclose(fuse_image_scores(map_max, det, 0.0, 8.0, "industrial"), [0.125, 0.75, 0.625])
    np.testing.assert_allclose(fuse_image_scores(map_max, det, 0.0, 8.0, "medical"), [0.25, 0.5, 0.75])


def test_a_run_is_rebuilt_from_its_folder_alone(trained_run, cross_run):
    run = load_trained(trained_run, epoch=1)
    assert run.variant == "base" and run.epoch == 1 and run.has_text
    assert run.image_checkpoint.name == "image_adapter_1.pth" and "(epoch 1)" in run.describe()
    latest = load_trained(trained_run)
    assert latest.epoch == 2 and latest.image_checkpoint.name == "image_adapter.pth"
    assert latest.model.vv_mode == "batch" and latest.model.backbone.gelu == "exact"  # the reference preset
    checkpoint = torch.load(cross_run / "image_adapter_cross_attn_1.pth")
    crossed = load_trained(cross_run)
    assert crossed.variant == "cross_attn" and crossed.has_text
    assert torch.equal(crossed.model.image_cross_attn.q_proj.weight, checkpoint["image_cross_attn"]["q_proj.weight"])
    with pytest.raises(CheckpointError, match=r"image_adapter_9.pth not found; .*image_adapter_2.pth"):
        load_trained(trained_run, epoch=9)


def test_a_broken_run_config_is_named(trained_run, tmp_path):
    with pytest.raises(ConfigError, match=r"run_config.json not found: is .* a crossgraft training folder"):
        load_trained(tmp_path)
    (tmp_path / RUN_CONFIG).write_text("{not json")
    with pytest.raises(ConfigError, match=r"run_config.json: not valid json"):
        load_trained(tmp_path)
    document = json.loads((trained_run / RUN_CONFIG).read_text())
    del document["resolved"]["surgery_from"]
    (tmp_path / RUN_CONFIG).write_text(json.dumps(document))
    with pytest.raises(ConfigError, match=r"run_config.json is incomplete: no surgery_from"):
        load_trained(tmp_path)
    document = json.loads((trained_run / RUN_CONFIG).read_text())
    del document["adapter"]["relu"], document["cross"]["variant"]
    (tmp_path / RUN_CONFIG).write_text(json.dumps(document))
    with pytest.raises(ConfigError, match=r"run_config.json is incomplete: no adapter.relu, cross.variant"):
        load_trained(tmp_path)
    document = json.loads((trained_run / RUN_CONFIG).read_text())
    document["cross"]["cross_attn_dropout"] = 1.5
    (tmp_path / RUN_CONFIG).write_text(json.dumps(document))
    with pytest.raises(ConfigError, match=r"--cross_attn_dropout must lie in \[0, 1\), got 1.5"):
        load_trained(tmp_path)


def test_a_cross_variant_runs_the_shared_vision_prefix_once_with_the_same_maps(cross_run, monkeypatch):
    from crossgraft.anomaly.infer import anomaly_maps, batch_text

    run = load_trained(cross_run)
    model = run.model.eval()
    images = torch.randn(
        2, 3, model.backbone.image_size, model.backbone.image_size, generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        separate = anomaly_maps(model, images, batch_text(model, True, "dots", images), "industrial")
        embeddings = []
        original = model.backbone.embed_image
        monkeypatch.setattr(model.backbone, "embed_image", lambda x: embeddings.append(1) or original(x))
        start = model.shared_start(images)
        shared = anomaly_maps(model, images, batch_text(model, True, "dots", images, None, start), "industrial", start)
    assert start[0] == 1 and len(embeddings) == 1  # the patch embedding and block 1 ran once for both passes
    assert torch.equal(shared.maps, separate.maps) and torch.equal(shared.det_scores, separate.det_scores)
