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

from torch.utils.data import DataLoader

from crossgraft.anomaly.data import AnomalyDataset, EvalTransform
from crossgraft.anomaly.data.formats import output_stem, read_folder
from crossgraft.anomaly.data.records import Sample
from crossgraft.anomaly.infer import anomaly_maps, batch_text, load_trained
from crossgraft.anomaly.prompts import class_text, load_class_descriptions
from crossgraft.anomaly.visualize import save_panel
from crossgraft.graft import write_text_atomic


@dataclass
class Prediction:
    image: str
    class_name: str
    image_score: float  # max of the level-mean anomaly map
    det_score: float  # (cos(det, T_A) + 1) / 2
    anomalous: bool | None  # None when no threshold was given or fitted
    heatmap: str


def _score(model, has_text, text, samples: list[Sample], domain: str, batch_size: int, device: str):
    loader = DataLoader(AnomalyDataset(samples, EvalTransform(model.backbone.image_size)), batch_size=batch_size)
    levels = len(model.backbone.levels)
    text_cache: dict = {}
    for batch in loader:
        images = batch["image"].to(device)
        output = anomaly_maps(model, images, batch_text(model, has_text, text, images, text_cache), domain)
        maps = (output.maps / levels).float().cpu()
        for j, index in enumerate(batch["index"].tolist()):
            yield samples[index], maps[j], float(maps[j].max()), float(output.det_scores[j])


def predict(
    inputs: Path,
    save_path: Path,
    class_name: str,
    out: Path,
    *,
    epoch: int | None = None,
    threshold: float | None = None,
    fit_on: Path | None = None,
    domain: str = "industrial",
    batch_size: int = 8,
    device: str = "cpu",
) -> list[Prediction]:
    model, run, has_text = load_trained(save_path, epoch, device=device)
    descriptions = load_class_descriptions(run.get("class_descriptions"))
    text = class_text(class_name, descriptions)
    if threshold is None and fit_on is not None:
        normal = read_folder(fit_on, class_name)
        threshold = max(score for *_, score, _ in _score(model, has_text, text, normal, domain, batch_size, device))
    out = Path(out)
    predictions = []
    for sample, score_map, score, det in _score(
        model, has_text, text, read_folder(inputs, class_name), domain, batch_size, device
    ):
        stem = out / output_stem(sample.image_path, inputs)
        heatmap = save_panel(
            sample.image_path,
            score_map.numpy(),
            stem.with_name(f"{stem.name}_heatmap.png"),
            low=float(score_map.min()),
            high=max(float(score_map.max()), threshold or -1e9),
        )
        prediction = Prediction(
            str(sample.image_path),
            class_name,
            score,
            det,
            None if threshold is None else score > threshold,
            str(heatmap),
        )
        write_text_atomic(stem.with_name(f"{stem.name}.json"), json.dumps(asdict(prediction), indent=2))
        predictions.append(prediction)
    summary = {
        "threshold": threshold,
        "fitted_on": str(fit_on) if fit_on else None,
        "predictions": [asdict(p) for p in predictions],
    }
    write_text_atomic(out / "predictions.json", json.dumps(summary, indent=2))
    return predictions
