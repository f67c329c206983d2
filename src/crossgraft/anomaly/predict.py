"""`crossgraft anomaly predict`: heat maps and scores for new images with a trained run.

Without a test set there is no class-wide min-max normalisation, so scores stay in the map's own unit:
the map is the level-mean of (100·cos_A + 1 − 100·cos_N)/2 (blurred, upsampled), and an image's score is
its maximum. `--threshold` marks images above it anomalous; `--fit_on DIR` fits the threshold on normal
images only (the highest normal score), so no normal image of that set is flagged.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from crossgraft.anomaly.config import PredictConfig
from crossgraft.anomaly.data.formats import output_stem, read_folder
from crossgraft.anomaly.data.records import Sample
from crossgraft.anomaly.data.transforms import load_image
from crossgraft.anomaly.deploy.engines import Engine, ExportedEngine, engine_from
from crossgraft.anomaly.deploy.graph import resized_pixels
from crossgraft.anomaly.visualize import PanelText, load_rgb, save_panel, verdict
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
class ScoredImage:
    sample: Sample
    score_map: np.ndarray  # (S, S): the level-mean anomaly map
    image_score: float
    det_score: float


def score_images(engine: Engine, class_name: str, samples: list[Sample], batch_size: int) -> Iterator[ScoredImage]:
    """Maps and scores of `samples`, batch by batch (an image's result does not depend on its batch)."""
    for first in range(0, len(samples), batch_size):
        batch = samples[first : first + batch_size]
        pixels = np.stack([resized_pixels(load_image(sample.image_path), engine.image_size) for sample in batch])
        output = engine.run(pixels, class_name)  # pixels (B, S, S, 3) uint8
        for j, sample in enumerate(batch):
            yield ScoredImage(sample, output.anomaly_map[j], float(output.image_score[j]), float(output.det_score[j]))


def fit_threshold(engine: Engine, class_name: str, normal_folder: Path, batch_size: int) -> float:
    """The highest score of normal images: no image of that set is flagged."""
    normal = read_folder(normal_folder, class_name)
    return max(scored.image_score for scored in score_images(engine, class_name, normal, batch_size))


def colour_range(score_map: np.ndarray, threshold: float | None) -> tuple[float, float]:
    """A prediction's colour scale: the image's minimum to max(its maximum, the threshold), so that a map below the
    threshold never looks red."""
    low, high = float(score_map.min()), float(score_map.max())
    return low, high if threshold is None else max(high, threshold)


def prediction_panel_text(
    image_name: str, class_name: str, image_score: float, threshold: float | None, low: float, high: float
) -> PanelText:
    """The title block of a prediction's panel (predict's files, the web page's download)."""
    judged = (
        "no threshold (--threshold or --fit_on gives a verdict)"
        if threshold is None
        else verdict(image_score > threshold, None, f"score > threshold {threshold:.4g}")
    )
    return PanelText(
        title=f"{image_name}  |  {class_name}",
        detail=f"image score {image_score:.4g} (the map's maximum)  |  {judged}",
        scale=f"colours: {low:.4g} to {high:.4g}, this image's min to max(its max, the threshold)",
        empty_mask="no ground truth",
    )


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
        panel_text = prediction_panel_text(image_path.name, config.class_name, scored.image_score, threshold, low, high)
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
