"""`predict`: heat maps and scores for new images, outputs mirroring the input tree, a threshold fitted on normal
images, and which run and epoch made them."""

import json

import numpy as np
import pytest
from PIL import Image

from crossgraft.anomaly.config import PredictConfig
from crossgraft.anomaly.predict import predict
from crossgraft.anomaly.visualize import EMPTY_TILE, panel_layout
from crossgraft.errors import ConfigError


def test_predict_writes_heat_maps_and_fits_a_threshold_on_normal_images(trained_run, synthetic_root, tmp_path):
    normal_dir = synthetic_root / "dots" / "test" / "good"
    config = PredictConfig(
        inputs=synthetic_root / "dots" / "test",
        save_path=trained_run,
        class_name="dots",
        fit_on=normal_dir,
        out=tmp_path,
    )
    result = predict(config)
    predictions = result.predictions
    assert len(predictions) == 6 and "base run in" in result.model and "(epoch 2)" in result.model
    summary = json.loads((tmp_path / "predictions.json").read_text())
    threshold = summary["threshold"]
    assert threshold == result.threshold == max(p.image_score for p in predictions if "/good/" in p.image)
    assert not any(p.anomalous for p in predictions if "/good/" in p.image)
    for p in predictions:
        assert p.anomalous == (p.image_score > threshold)
    # good/000.png, scratch/000.png, spot/000.png, missing/000.png share a stem: outputs mirror the input tree
    heatmaps = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*_heatmap.png"))
    assert heatmaps == [
        "good/000_heatmap.png",
        "good/001_heatmap.png",
        "good/002_heatmap.png",
        "missing/000_heatmap.png",
        "scratch/000_heatmap.png",
        "spot/000_heatmap.png",
    ]
    # a four-tile panel: no ground truth for new images, the ground-truth tile says so
    layout = panel_layout(64)
    panel = np.asarray(Image.open(tmp_path / "spot" / "000_heatmap.png").convert("RGB"))
    assert panel.shape == (layout.height, layout.width, 3)
    top, left, bottom, right = layout.tile_box(1)
    assert (panel[top:bottom, left:right] == EMPTY_TILE).all(axis=2).mean() > 0.9
    assert sorted(p["heatmap"] for p in summary["predictions"]) == sorted(str(tmp_path / h) for h in heatmaps)
    for p in summary["predictions"]:  # each record's json lies beside its own heat map and names its image
        record = json.loads(open(p["heatmap"].replace("_heatmap.png", ".json")).read())
        assert record["image"] == p["image"] and record["heatmap"] == p["heatmap"]


def test_a_single_image_and_the_batch_size_give_the_same_scores(trained_run, synthetic_root, tmp_path):
    image = synthetic_root / "dots" / "test" / "spot" / "000.png"
    alone = predict(PredictConfig(inputs=image, save_path=trained_run, class_name="dots", out=tmp_path / "one"))
    assert (tmp_path / "one" / "000_heatmap.png").is_file()
    folder = predict(
        PredictConfig(
            inputs=image.parent.parent, save_path=trained_run, class_name="dots", batch_size=3, out=tmp_path / "all"
        )
    )
    same = next(p for p in folder.predictions if p.image == str(image))
    assert same.image_score == pytest.approx(alone.predictions[0].image_score, abs=1e-5)


def test_a_threshold_and_a_fit_contradict(trained_run, tmp_path):
    with pytest.raises(ConfigError, match="give --threshold or --fit_on, not both"):
        PredictConfig(inputs=tmp_path, save_path=trained_run, threshold=1.0, fit_on=tmp_path)


def test_the_colour_scale_reaches_the_threshold_even_when_it_is_zero():
    from crossgraft.anomaly.visualize import colour_range

    score_map = np.array([[-2.0, -1.0]], dtype=np.float32)
    assert colour_range(score_map, None) == (-2.0, -1.0)
    assert colour_range(score_map, 0.0) == (-2.0, 0.0)  # a threshold of 0 is a threshold, not "none"
    assert colour_range(score_map, -1.5) == (-2.0, -1.0)
