"""`crossgraft anomaly predict`: heat maps and scores for new images with a trained run.

Without a test set there is no class-wide min-max normalisation, so scores stay in the map's own unit:
the map is the level-mean of (100·cos_A + 1 − 100·cos_N)/2 (blurred, upsampled), and an image's score is
its maximum. `--threshold` marks images above it anomalous; `--fit_on DIR` fits the threshold on normal
images only (the highest normal score), so no normal image of that set is flagged.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from crossgraft.anomaly.config import PredictConfig
from crossgraft.anomaly.data.formats import output_stem, read_folder
from crossgraft.anomaly.deploy.engines import ExportedEngine, engine_from, fit_threshold, score_images
from crossgraft.anomaly.visualize import colour_range, load_rgb, prediction_panel_text, save_panel
from crossgraft.files import write_text_atomic
from crossgraft.images import set_max_pixels


@dataclass
class Prediction:
    image: str
    class_name: str
    image_score: float  # max of the level-mean anomaly map
    det_score: float  # (cos(det, T_A) + 1) / 2
    anomalous: bool | None  # None when no threshold was given or fitted
    heatmap: str


@dataclass
class PredictionSet:
    model: str  # which run, checkpoint and epoch made them
    threshold: float | None
    predictions: list[Prediction]
    summary: Path  # predictions.json


def predict(config: PredictConfig) -> PredictionSet:
    """Heat maps, one json per image (mirroring the input tree) and predictions.json under `config.out_dir`."""
    set_max_pixels(config.max_image_pixels)
    engine = engine_from(config)
    threshold = config.threshold
    if config.fit_on is not None:
        threshold = fit_threshold(engine, config.class_name, config.fit_on, config.batch_size)
    elif threshold is None and isinstance(engine, ExportedEngine):
        threshold = engine.metadata.thresholds.get(config.class_name)
    out = config.out_dir
    predictions = []
    inputs = read_folder(config.inputs, config.class_name)
    for scored in score_images(engine, config.class_name, inputs, config.batch_size):
        image_path = scored.sample.image_path
        stem = out / output_stem(image_path, config.inputs)
        low, high = colour_range(scored.score_map, threshold)
        shown = output_stem(image_path, config.inputs).with_suffix(image_path.suffix).as_posix()  # missing/000.png
        panel_text = prediction_panel_text(shown, config.class_name, scored.image_score, threshold, low, high)
        heatmap = save_panel(
            load_rgb(image_path),
            scored.score_map,
            stem.with_name(f"{stem.name}_heatmap.png"),
            panel_text,
            None,
            low,
            high,
        )
        prediction = Prediction(
            str(image_path),
            config.class_name,
            scored.image_score,
            scored.det_score,
            None if threshold is None else scored.image_score > threshold,
            str(heatmap),
        )
        write_text_atomic(stem.with_name(f"{stem.name}.json"), json.dumps(asdict(prediction), indent=2))
        predictions.append(prediction)
    summary = {
        "model": engine.describe(),
        "threshold": threshold,
        "fitted_on": str(config.fit_on) if config.fit_on else None,
        "predictions": [asdict(p) for p in predictions],
    }
    summary_path = write_text_atomic(out / "predictions.json", json.dumps(summary, indent=2))
    return PredictionSet(engine.describe(), threshold, predictions, summary_path)
