"""`crossgraft anomaly export`: a trained run as one ONNX graph or OpenVINO IR, with metadata.json beside it.

The graph is the `AnomalyDetector` (anomaly/detector.py): uint8 images (B, S, S, 3) and a class index (B,) in; the
level-mean anomaly map (B, S, S), the image score (B,) and the detection score (B,) out; the batch axis is dynamic. Each
class's text side is computed once, here, and stored in the graph, so the graph knows the exported classes only
(a training run served with the torch engine takes any class name).

The folder is written beside its final place and renamed into it when complete and checked: an interrupted export
leaves the previous one (or nothing) in place. Before the rename, the new graph runs on a test batch through its
engine and its outputs are compared with eager PyTorch; the difference is stored in metadata.json.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crossgraft.anomaly.config import ExportConfig
from crossgraft.anomaly.data.transforms import CLIP_MEAN, CLIP_STD
from crossgraft.anomaly.deploy.engines import (
    GRAPH_CLASSES_KEY,
    METADATA,
    Engine,
    ExportedEngine,
    ExportMetadata,
    OnnxRuntimeEngine,
    OpenVINOEngine,
    check_text_adapter,
    fit_threshold,
    require_package,
)
from crossgraft.anomaly.detector import INPUT_NAMES, OUTPUT_NAMES, AnomalyDetector
from crossgraft.anomaly.infer import load_trained
from crossgraft.anomaly.prompts import class_text
from crossgraft.anomaly.run_folder import RUN_CONFIG
from crossgraft.errors import ConfigError, OutputError
from crossgraft.files import ensure_folder, recover_folder, replace_folder, write_text_atomic
from crossgraft.images import set_max_pixels

log = logging.getLogger(__name__)
ONNX_FILE = "model.onnx"
FP32_FILE = "model_fp32.onnx"  # the traced graph an int8 export quantises (then removed)
IR_FILE = "model.xml"
MAX_BATCH = 4096  # the dynamic batch axis' upper bound (torch.export wants one)
EXAMPLE_BATCH = 2  # traced with 2 images: torch.export would fix a batch axis traced at 1
CHECK_SEED = 0
CHECK_BATCH = 3  # images of the export's own check: more than the traced batch, so the dynamic axis is tried
FP32_TOLERANCE = 1e-4  # relative to the largest value: what an fp32 export must meet in its own check
INPUT_SPEC = {
    "images": "uint8 (B, S, S, 3), RGB, the image resized to S x S with bicubic resampling (PIL); the graph "
    "normalises it with CLIP's mean and std",
    "class_index": "int64 (B,): each image's class, an index into `classes`",
}
OUTPUT_SPEC = {
    "anomaly_map": "float32 (B, S, S): level-mean of the reference maps (blur at grid resolution, bilinear "
    "upsample, sum over levels) / number of levels",
    "image_score": "float32 (B,): the anomaly map's maximum (what `predict` thresholds)",
    "det_score": "float32 (B,): (cos(detection token, abnormal anchor) + 1) / 2",
}


@dataclass
class ExportResult:
    folder: Path
    metadata: ExportMetadata
    check_difference: float  # largest relative difference of the engine's outputs vs eager PyTorch on a test batch
    seconds: float


def export(config: ExportConfig) -> ExportResult:
    """Trace the run's graph for the chosen classes, write it (and its metadata) to `config.out`, check it."""
    started = time.perf_counter()
    set_max_pixels(config.max_image_pixels)
    require_package("onnxruntime" if config.format == "onnx" else "openvino", f"--format {config.format}")
    require_package("onnxscript", "exporting an ONNX graph")  # torch.onnx's exporter
    log.info("loading %s ...", config.save_path)
    run = load_trained(config.save_path, config.epoch, device="cpu", image_size=config.img_size)
    check_text_adapter(run)
    descriptions = run.descriptions(config.class_descriptions)
    texts = [class_text(name, descriptions) for name in config.class_name]
    graph = AnomalyDetector(run.model, texts, run.has_text, config.domain).eval()
    metadata = ExportMetadata(
        graph=IR_FILE if config.format == "openvino" else ONNX_FILE,
        graph_format=config.format,
        image_size=graph.model.backbone.image_size,
        classes=list(config.class_name),
        class_texts=texts,
        domain=config.domain,
        variant=run.variant,
        backbone=run.saved.config.backbone.clip,
        epoch=run.epoch,
        source=str(run.image_checkpoint),
        quantization="int8 (onnxruntime dynamic quantisation of MatMul/Gemm weights)"
        if config.quantize == "int8"
        else "none",
        thresholds_fitted_on=str(config.fit_on) if config.fit_on is not None else None,
        run_config=json.loads((config.save_path / RUN_CONFIG).read_text()),
        input=INPUT_SPEC,
        outputs=OUTPUT_SPEC,
        normalisation={"mean": list(CLIP_MEAN), "std": list(CLIP_STD), "pixel_scale": 255},
    )
    staging = staging_folder(config.out)
    try:
        log.info("writing the %s graph for %s ...", config.format, ", ".join(config.class_name))
        write_graph(graph, staging, config.format, config.quantize)
        write_text_atomic(staging / METADATA, json.dumps(asdict(metadata), indent=2) + "\n")
        log.info("checking the graph against PyTorch ...")
        difference = check_export(graph, staging)
        if config.fit_on is not None:  # fitted through the new graph itself: the scores it will threshold
            log.info("fitting thresholds on %s ...", config.fit_on)
            metadata.thresholds = fit_thresholds(exported_engine(staging), config)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if config.quantize == "none" and difference > FP32_TOLERANCE:
        rejected = config.out.parent / f"{config.out.name}.rejected"
        shutil.rmtree(rejected, ignore_errors=True)
        staging.rename(rejected)
        raise OutputError(
            f"the exported graph's outputs differ from PyTorch's by {difference:.2e} (relative), more than "
            f"{FP32_TOLERANCE:g}: the export is left in {rejected} for inspection and not installed as {config.out}"
        )
    metadata.check = {"max_relative_difference_vs_torch": difference, "images": CHECK_BATCH, "seed": CHECK_SEED}
    write_text_atomic(staging / METADATA, json.dumps(asdict(metadata), indent=2) + "\n")
    replace_folder(staging, config.out)
    return ExportResult(config.out, metadata, difference, time.perf_counter() - started)


def fit_thresholds(engine: Engine, config: ExportConfig) -> dict[str, float]:
    """Each class's highest score on its normal images: FIT_ON itself with one class, FIT_ON/CLASS with several."""
    assert config.fit_on is not None
    if len(config.class_name) == 1:
        name = config.class_name[0]
        return {name: fit_threshold(engine, name, config.fit_on, config.batch_size)}
    folders = {name: config.fit_on / name for name in config.class_name if (config.fit_on / name).is_dir()}
    if not folders:
        raise ConfigError(
            f"--fit_on {config.fit_on}: with several classes it needs one subfolder of normal images per class "
            f"({', '.join(config.class_name)}); none is there"
        )
    missing = sorted(set(config.class_name) - set(folders))
    if missing:
        log.warning("no normal images for %s under %s: no threshold for them", ", ".join(missing), config.fit_on)
    return {name: fit_threshold(engine, name, folder, config.batch_size) for name, folder in folders.items()}


def staging_folder(out: Path) -> Path:
    """A fresh folder beside `out`, swapped into place when the export is complete. An `out` that exists must be
    an earlier export (it is replaced), never another folder. What killed exports left is cleaned up first."""
    for line in recover_folder(out):
        log.warning("%s", line)
    if out.exists() and not (out / METADATA).is_file() and (not out.is_dir() or any(out.iterdir())):
        raise OutputError(f"{out} exists and is not an export folder (no {METADATA}): choose another --out")
    ensure_folder(out.parent)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    return staging


def example_inputs(side: int, classes: int, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, side, side, 3), dtype=torch.uint8, generator=generator)  # (B, S, S, 3)
    return images, torch.arange(batch) % classes


def write_graph(graph: AnomalyDetector, folder: Path, graph_format: str = "onnx", quantize: str = "none") -> Path:
    """model.onnx (+ model.onnx.data, the weights), or its int8 or OpenVINO IR form; returns the graph file."""
    onnx_path = folder / ONNX_FILE
    traced_path = folder / FP32_FILE if quantize == "int8" else onnx_path
    side = graph.model.backbone.image_size
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with quiet_exporter():
        torch.onnx.export(
            graph,
            example_inputs(side, graph.num_classes, EXAMPLE_BATCH, CHECK_SEED),
            str(traced_path),
            input_names=INPUT_NAMES,
            output_names=OUTPUT_NAMES,
            dynamic_shapes={"images": {0: batch}, "class_index": {0: batch}},
            dynamo=True,
            external_data=True,
            optimize=True,
            verbose=False,
        )
    if quantize == "int8":
        quantization = require_package("onnxruntime.quantization", "--quantize int8")
        with quiet_exporter():
            quantization.quantize_dynamic(
                str(traced_path),
                str(onnx_path),
                weight_type=quantization.QuantType.QInt8,
                op_types_to_quantize=["MatMul", "Gemm"],
                use_external_data_format=True,
            )
        remove_graph(traced_path)
    if graph_format == "openvino":
        ov = require_package("openvino", "--format openvino")
        model = ov.convert_model(str(onnx_path))
        model.set_rt_info(str(graph.num_classes), GRAPH_CLASSES_KEY.split("."))
        ov.save_model(model, str(folder / IR_FILE), compress_to_fp16=False)
        remove_graph(onnx_path)
        return folder / IR_FILE
    onnx = require_package("onnx", "exporting an ONNX graph")
    model = onnx.load(str(onnx_path), load_external_data=False)  # the weights stay in model.onnx.data
    entry = model.metadata_props.add()
    entry.key, entry.value = GRAPH_CLASSES_KEY, str(graph.num_classes)
    onnx.save(model, str(onnx_path))
    return onnx_path


def remove_graph(onnx_path: Path) -> None:
    onnx_path.unlink()
    onnx_path.with_name(f"{onnx_path.name}.data").unlink(missing_ok=True)


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """Silence the exporters' progress lines and notes (torch.onnx prints them; onnxruntime logs on the root
    logger); errors still raise."""
    loggers = [logging.root, logging.getLogger("torch.onnx")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def check_export(graph: AnomalyDetector, folder: Path) -> float:
    """Largest relative difference (per output, vs its largest value) between the new graph run by its engine and
    eager PyTorch, on random images of every class."""
    images, index = example_inputs(graph.model.backbone.image_size, graph.num_classes, CHECK_BATCH, CHECK_SEED + 1)
    with torch.no_grad():
        expected = [t.numpy() for t in graph(images, index)]
    got = exported_engine(folder).infer(images.numpy(), index.numpy())
    return max(relative_difference(a, b) for a, b in zip(expected, got))


def exported_engine(folder: Path) -> ExportedEngine:
    """The engine of a (staged) export: OpenVINO for IR, ONNX Runtime for ONNX."""
    return OpenVINOEngine(folder) if (folder / IR_FILE).exists() else OnnxRuntimeEngine(folder)


def relative_difference(expected: np.ndarray, got: Any) -> float:
    got = np.asarray(got)
    if got.shape != expected.shape:
        return float("inf")
    return float(np.abs(expected - got).max() / max(float(np.abs(expected).max()), 1e-12))
