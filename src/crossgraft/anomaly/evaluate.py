"""`crossgraft anomaly test`: evaluate one checkpoint of a trained run on a dataset (docs/aa-clip.md,
docs/metrics.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from crossgraft.anomaly.catalog import get_spec
from crossgraft.anomaly.config import EvalConfig
from crossgraft.anomaly.data import AnomalyDataset, EvalTransform, Sample, group_by_class, load_data
from crossgraft.anomaly.detector import AnomalyDetector
from crossgraft.anomaly.infer import fuse_image_scores, load_trained
from crossgraft.anomaly.metrics import AnomalyMetrics, ClassCurves, ClassEvaluation, ClassMetricsAccumulator
from crossgraft.anomaly.model import AdaptedCLIP, evaluation_mode
from crossgraft.anomaly.plots import class_metrics_figure, write_curve_figures
from crossgraft.anomaly.prompts import class_text, public_prompts_warning
from crossgraft.anomaly.report import format_table, write_csv, write_json
from crossgraft.anomaly.visualize import PanelText, load_rgb, save_contact_sheet, save_panel, sheet_entry, verdict
from crossgraft.devices import resolve_device
from crossgraft.plots import save_figure
from crossgraft.runlog import setup_run_logging


def evaluate(config: EvalConfig) -> dict[str, AnomalyMetrics]:
    """Evaluate the checkpoint a config names; results go to `config.results_dir`."""
    run = load_trained(config.save_path, config.epoch, device=resolve_device(config.device))
    dataset = get_spec(config.data.dataset).name
    descriptions = run.descriptions(config.class_descriptions, dataset)
    warning = public_prompts_warning(dataset, descriptions) if run.saved.config.quirks.preset == "reference" else None
    return evaluate_model(run.model, run.has_text, config, descriptions, run.describe(), warning)


def evaluate_model(
    model: AdaptedCLIP,
    has_text: bool,
    config: EvalConfig,
    descriptions: dict[str, str],
    label: str,
    warning: str | None = None,
) -> dict[str, AnomalyMetrics]:
    """Evaluate a model in memory (a loaded run, or an untrained baseline) on the config's dataset; `warning` goes
    into the log first."""
    spec = get_spec(config.data.dataset)
    out = config.results_dir
    samples = load_data(config.data, "test")  # bad data is refused before anything is written
    logger = setup_run_logging(out, "test.log", name="crossgraft.test")
    if warning:
        logger.warning(warning)
    logger.info(
        "evaluating %s on %s: %d images; text adapter %s",
        label,
        spec.name,
        len(samples),
        "used" if has_text else "absent (CLIP's own text encoder)",
    )
    transform = EvalTransform(model.backbone.image_size)
    results: dict[str, AnomalyMetrics] = {}
    curves: dict[str, ClassCurves] = {}
    for class_name, class_samples in group_by_class(samples).items():
        text = class_text(class_name, descriptions)
        if class_name in descriptions:
            logger.info("prompts of %s describe it as %r", class_name, text)
        with evaluation_mode(model):  # no dropout; a training run in progress gets its modes back
            evaluation = evaluate_class(
                model, has_text, class_samples, text, spec.domain, transform, config, out / "visualize" / class_name
            )
        results[class_name], curves[class_name] = evaluation.metrics, evaluation.curves
    logger.info("\n%s", format_table(results, title=f"{spec.name} test split, {label} (%)"))
    extra = {"dataset": spec.name, "model": label, "epoch": config.epoch, "batch_size": config.batch_size}
    write_csv(results, out / "results.csv")
    write_json(results, out / "results.json", extra=extra)
    logger.info("results: %s, %s", out / "results.csv", out / "results.json")
    if config.plots:
        write_curve_figures(curves, out / "plots", spec.name)
        save_figure(class_metrics_figure(results, f"{spec.name} test split, {label}"), out / "plots" / "metrics")
        logger.info("plots (ROC, PR and PRO curves per class and their mean, metrics per class): %s", out / "plots")
    if config.visualize:
        logger.info(
            "heat-map panels (image | ground truth | anomaly map | overlay) and one contact sheet per class: %s",
            out / "visualize",
        )
    return results


def evaluate_class(
    model: AdaptedCLIP,
    has_text: bool,
    samples: list[Sample],
    text: str,
    domain: str,
    transform: EvalTransform,
    config: EvalConfig,
    visual_dir: Path,
) -> ClassEvaluation:
    """Maps batch by batch into the metric accumulator; image scores fused with the class-wide normalisation."""
    pixels = ClassMetricsAccumulator(pro_compat=config.pro_compat)
    has_masks = all(s.mask_path is not None for s in samples if s.label == 1)
    map_max: list[np.ndarray] = []  # per batch (B,)
    map_min: list[np.ndarray] = []
    det_scores: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    kept: list[tuple[Sample, np.ndarray, np.ndarray]] = []  # what --visualize draws once the class range is known
    detector = AnomalyDetector(model, [text], has_text, domain)  # per image: maps and det scores
    loader = DataLoader(
        AnomalyDataset(samples, transform), batch_size=config.batch_size, num_workers=config.num_workers
    )
    for batch in tqdm(loader, desc=samples[0].class_name, leave=False):
        images = batch["image"].to(model.backbone.device)  # (B, 3, S, S), CLIP-normalised
        output = detector.level_maps(images, torch.zeros(len(images), dtype=torch.long, device=images.device))
        maps = output.maps.float().cpu().numpy()
        if has_masks:
            pixels.add_pixels(maps, batch["mask"].numpy() > 0)
        map_max.append(maps.reshape(len(maps), -1).max(1))
        map_min.append(maps.reshape(len(maps), -1).min(1))
        det_scores.append(output.det_scores.float().cpu().numpy())
        labels.append(batch["label"].numpy())
        if config.visualize:
            kept += [
                (samples[i], maps[j].astype(np.float16), batch["mask"][j].numpy())
                for j, i in enumerate(batch["index"].tolist())
            ]
    maxima, minima = np.concatenate(map_max), np.concatenate(map_min)  # (N,)
    low, high = float(minima.min()), float(maxima.max())
    image_scores = fuse_image_scores(maxima, np.concatenate(det_scores), low, high, domain)
    pixels.add_images(image_scores, np.concatenate(labels))
    evaluation = pixels.evaluate()
    if kept:
        draw_class(kept, image_scores, low, high, evaluation.curves.image_threshold, visual_dir)
    return evaluation


def judged(score: float, threshold: float | None, label: int | None) -> str:
    """The verdict against the class's F1-max threshold (the image metrics count score >= it as anomalous)."""
    if threshold is None:
        return "no threshold (the class has only one label)"
    return verdict(score, threshold, label, "the class's F1-max threshold", at_threshold_anomalous=True)


def shown_path(sample: Sample) -> str:
    """An image's name with the folder it sits in (`missing/000.png`): MVTec-style trees repeat file names in
    every defect folder."""
    return f"{sample.image_path.parent.name}/{sample.image_path.name}"


def draw_class(
    kept: list[tuple[Sample, np.ndarray, np.ndarray]],
    image_scores: np.ndarray,
    low: float,
    high: float,
    threshold: float | None,
    visual_dir: Path,
) -> None:
    """A panel per image and the class's contact sheet. Colours share the class-wide range the image scores
    are normalised with; the verdict is against the class's image F1-max threshold."""
    entries = []
    range_note = (
        f"colours: map values {low:.4g} to {high:.4g}, the class's range (the image score is on 0..1: this range "
        "normalised, mixed with the detection score)"
    )
    for (sample, score_map, mask), score in zip(kept, image_scores.tolist()):
        truth = mask if sample.mask_path else None
        text = PanelText(
            title=f"{shown_path(sample)}  |  {sample.class_name} / {sample.defect_type}",
            detail=judged(score, threshold, sample.label),
            scale=range_note,
        )
        name = f"{sample.defect_type}_{sample.image_path.stem}.png"
        image = load_rgb(sample.image_path)
        save_panel(image, score_map.astype(np.float32), visual_dir / name, text, truth, low, high)
        entries.append(sheet_entry(image, shown_path(sample), score_map, truth, low, high, score, sample.label))
    class_name = kept[0][0].class_name
    title = f"{class_name}: {len(entries)} test images"
    save_contact_sheet(entries, visual_dir.parent / f"{class_name}_sheet.png", title, threshold)
