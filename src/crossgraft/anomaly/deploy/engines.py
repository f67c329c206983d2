"""Engines that run the deployable graph: eager PyTorch on a run folder, ONNX Runtime and OpenVINO on an export.

Every engine takes the same input (uint8 images (B, S, S, 3), resized to the model's side) and returns the same
`Detection`. `open_engine` picks one from what the user gave: a training run folder (`--save_path`: torch, any
class name, zero-shot) or an export folder (`--model`: its classes only). `score_images` runs any engine over image
files, and `fit_threshold` fits a class's threshold on normal images (predict --fit_on, export, the web page).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
from collections.abc import Iterator
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch

from crossgraft import __version__
from crossgraft.anomaly.catalog import INDUSTRIAL, MEDICAL
from crossgraft.anomaly.config import PredictConfig, ServeConfig
from crossgraft.anomaly.data.formats import read_folder
from crossgraft.anomaly.data.records import Sample
from crossgraft.anomaly.data.transforms import load_image
from crossgraft.anomaly.detector import INPUT_NAMES, AnomalyDetector, Detection, resized_pixels
from crossgraft.anomaly.infer import TrainedRun, load_trained
from crossgraft.anomaly.prompts import class_text
from crossgraft.devices import resolve_device
from crossgraft.errors import ConfigError, CrossgraftError
from crossgraft.files import read_json_object, recover_folder
from crossgraft.graft import CheckpointError
from crossgraft.limits import path_component

EngineName = Literal["auto", "torch", "onnxruntime", "openvino"]
METADATA = "metadata.json"
EXPORT_FORMAT = "crossgraft.anomaly.export"
EXPORT_VERSION = 1
MAX_IMAGE_SIDE = 16384  # an export's input side; ViT-L at 518 is the largest in use
log = logging.getLogger(__name__)
GRAPH_CLASSES_KEY = "crossgraft.classes"  # the class axis' length, recorded in the graph itself
ENGINE_PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}


def require_package(module: str, purpose: str, extra: str = "deploy") -> Any:
    """Import an optional dependency, or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ConfigError(
            f"{purpose} needs the {module.split('.')[0]} package, which is not installed: "
            f"pip install 'crossgraft[{extra}]'"
        ) from error


class Engine(Protocol):
    name: str
    image_size: int
    classes: list[str]  # the class names it knows; a zero-shot engine takes any other too
    zero_shot: bool

    def run(self, images: np.ndarray, class_name: str) -> Detection:
        """Maps and scores of uint8 images (B, S, S, 3) of one class."""
        ...

    def describe(self) -> str:
        """One line naming the model and the engine."""
        ...


def check_images(images: np.ndarray, side: int) -> None:
    """Refuse anything but uint8 images (B, side, side, 3)."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (side, side, 3):
        raise ConfigError(f"the engine takes uint8 images (B, {side}, {side}, 3), got {images.dtype} {images.shape}")


def check_text_adapter(run: TrainedRun) -> None:
    """Exporting or serving class names needs the run's text adapter (predict alone falls back to CLIP's text)."""
    if not run.has_text:
        raise ConfigError(
            f"{run.image_checkpoint.parent} has no text adapter (text_adapter*.pth): AA-CLIP's anchors for a "
            "class name, zero-shot or not, come from it. Train stage 1 (the text adapters) first"
        )


class TorchEngine:
    """Eager PyTorch on a training run; any class name (the text side is built on first use and kept)."""

    name = "torch"
    zero_shot = True

    def __init__(
        self, run: TrainedRun, domain: str, descriptions: dict[str, str], require_text_adapter: bool = False
    ) -> None:
        if require_text_adapter:
            check_text_adapter(run)
        self.run_ = run
        self.domain = domain
        self.descriptions = descriptions
        self.image_size = run.model.backbone.image_size
        self.classes = run.trained_classes()
        self.graphs: dict[str, AnomalyDetector] = {}

    def graph(self, class_name: str) -> AnomalyDetector:
        """The detector with this class's text side built in (made on first use, then kept)."""
        if class_name not in self.graphs:
            text = class_text(class_name, self.descriptions)
            self.graphs[class_name] = AnomalyDetector(self.run_.model, [text], self.run_.has_text, self.domain).eval()
        return self.graphs[class_name]

    @torch.no_grad()
    def run(self, images: np.ndarray, class_name: str) -> Detection:
        """Maps and scores of uint8 images (B, S, S, 3) of one class, by eager PyTorch."""
        check_images(images, self.image_size)
        device = self.run_.model.backbone.device
        pixels = torch.from_numpy(np.ascontiguousarray(images)).to(device)
        index = torch.zeros(len(images), dtype=torch.long, device=device)
        score_map, image_score, det_score = self.graph(class_name)(pixels, index)
        return Detection(score_map.float().cpu().numpy(), image_score.float().cpu().numpy(), det_score.cpu().numpy())

    def describe(self) -> str:
        """One line naming the run, its backbone and the engine."""
        return f"{self.run_.describe()}; backbone {self.run_.saved.config.backbone.clip}; engine torch"


@dataclass
class ExportMetadata:
    """metadata.json of an export folder (see `export.py` for what each entry holds)."""

    graph: str  # the graph file, relative to the folder
    graph_format: Literal["onnx", "openvino"]
    image_size: int
    classes: list[str]
    class_texts: list[str]
    domain: str
    variant: str
    backbone: str
    epoch: int
    source: str  # the run folder and checkpoint it was exported from
    quantization: str = "none"
    thresholds: dict[str, float] = field(default_factory=dict)  # per class, fitted on normal images
    thresholds_fitted_on: str | None = None
    crossgraft_version: str = __version__
    format: str = f"{EXPORT_FORMAT}/{EXPORT_VERSION}"
    run_config: dict[str, Any] = field(default_factory=dict)
    input: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    normalisation: dict[str, Any] = field(default_factory=dict)
    check: dict[str, Any] = field(default_factory=dict)  # the export's own comparison with eager PyTorch

    def describe(self) -> str:
        """One line naming the exported model and where it came from."""
        quantized = "" if self.quantization == "none" else f", {self.quantization}"
        return f"{self.variant} on {self.backbone}, epoch {self.epoch}, exported from {self.source}{quantized}"


def read_metadata(folder: Path) -> ExportMetadata:
    """Read and check DIR/metadata.json (this crossgraft's format or an older one) before anything runs. What a
    killed export left beside the folder is cleaned up first (`recover_folder`)."""
    folder = Path(folder)
    for line in recover_folder(folder):
        log.warning("%s", line)
    path = folder / METADATA
    if not path.is_file():
        raise ConfigError(f"{path} not found: is {folder} a folder written by `crossgraft anomaly export`?")
    document = read_json_object(path, METADATA, CheckpointError)
    name, _, version = str(document.get("format", ""))[:200].partition("/")
    if name != EXPORT_FORMAT or not version.isdigit() or len(version) > 6:
        raise CheckpointError(f"{path} is not crossgraft export metadata (format {shown(document.get('format'))})")
    if int(version) > EXPORT_VERSION:
        raise CheckpointError(
            f"{folder} was exported by a newer crossgraft ({str(document.get('crossgraft_version'))[:40]}, format "
            f"version {version}); this crossgraft {__version__} reads format version {EXPORT_VERSION}: upgrade "
            "crossgraft"
        )
    known = {entry.name for entry in fields(ExportMetadata)}
    unknown = sorted(set(document) - known)
    missing = sorted(entry.name for entry in fields(ExportMetadata) if entry.name not in document and _required(entry))
    if unknown or missing:
        raise CheckpointError(
            f"{path} does not hold the expected entries ("
            + "; ".join(part for part in (_listed("unknown", unknown), _listed("missing", missing)) if part)
            + ")"
        )
    metadata = ExportMetadata(**document)
    check_metadata(metadata, path)
    return metadata


def check_metadata(metadata: ExportMetadata, path: Path) -> None:
    """Every entry of an export's metadata.json has the type and value it must have; the graph file is in the
    folder. A CheckpointError names the entry and what it holds."""

    def require(ok: bool, key: str, expected: str) -> None:
        if not ok:
            raise CheckpointError(f"{path}: {key!r} must be {expected}, not {shown(getattr(metadata, key))}")

    for key in ("domain", "variant", "backbone", "source", "quantization", "crossgraft_version"):
        require(isinstance(getattr(metadata, key), str), key, "text")
    for key in ("run_config", "input", "outputs", "normalisation", "check", "thresholds"):
        require(isinstance(getattr(metadata, key), dict), key, "a JSON object")
    require(
        metadata.thresholds_fitted_on is None or isinstance(metadata.thresholds_fitted_on, str),
        "thresholds_fitted_on",
        "text or null",
    )
    require(_is_int(metadata.epoch) and metadata.epoch >= 0, "epoch", "a whole number >= 0")
    require(metadata.graph_format in ("onnx", "openvino"), "graph_format", "'onnx' or 'openvino'")
    require(
        _is_int(metadata.image_size) and 0 < metadata.image_size <= MAX_IMAGE_SIDE,
        "image_size",
        f"a whole number from 1 to {MAX_IMAGE_SIDE}",
    )
    require(metadata.domain in (INDUSTRIAL, MEDICAL), "domain", f"{INDUSTRIAL!r} or {MEDICAL!r}")
    classes = metadata.classes
    require(
        isinstance(classes, list) and len(classes) > 0 and all(isinstance(c, str) for c in classes),
        "classes",
        "a non-empty list of class names",
    )
    require(len(set(classes)) == len(classes), "classes", "distinct names")
    for class_name in classes:
        path_component(class_name, f"{path}: the class name", CheckpointError)
    texts = metadata.class_texts
    require(
        isinstance(texts, list) and len(texts) == len(classes) and all(isinstance(t, str) for t in texts),
        "class_texts",
        f"a list of {len(classes)} texts, one per class",
    )
    for class_name, threshold in metadata.thresholds.items():
        if class_name not in classes:
            raise CheckpointError(
                f"{path}: a threshold is given for {shown(class_name)}, which is not one of the classes"
            )
        if not (isinstance(threshold, int | float) and not isinstance(threshold, bool) and math.isfinite(threshold)):
            raise CheckpointError(
                f"{path}: the threshold of {class_name} must be a finite number, not {shown(threshold)}"
            )
    require(isinstance(metadata.graph, str), "graph", "a file name")
    path_component(metadata.graph, f"{path}: the graph file", CheckpointError)
    if not (path.parent / metadata.graph).is_file():
        raise CheckpointError(f"{path} names the graph file {metadata.graph}, which is not in {path.parent}")


def shown(value: object) -> str:
    """A short repr of a value read from a user's file, for an error message."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _required(entry: Field[Any]) -> bool:
    return entry.default is MISSING and entry.default_factory is MISSING


def _listed(what: str, keys: list[str]) -> str:
    return f"{what}: {', '.join(shown(key) for key in keys[:10])}" if keys else ""


def class_position(metadata: ExportMetadata, class_name: str, folder: Path) -> int:
    """The index of `class_name` in the export's class axis, or a ConfigError naming the exported classes."""
    if class_name not in metadata.classes:
        raise ConfigError(
            f"{folder} was exported for the classes {', '.join(metadata.classes)}, not {class_name!r}: export it "
            "with that class too (--class_name), or run the training run itself (--save_path), which takes any "
            "class name"
        )
    return metadata.classes.index(class_name)


def check_graph_size(graph_side: object, metadata: ExportMetadata, folder: Path) -> None:
    """Refuse a graph whose input side differs from the one its metadata.json records."""
    if graph_side != metadata.image_size:
        raise CheckpointError(
            f"the graph in {folder} takes {graph_side}x{graph_side} images but its {METADATA} says "
            f"{metadata.image_size}: the files come from different exports"
        )


def check_graph_classes(graph_classes: str | None, metadata: ExportMetadata, folder: Path) -> None:
    """Refuse a graph whose class axis (recorded in the graph when it was exported) differs from metadata.json's
    class list. Exports made before the graph recorded it are not checked."""
    if graph_classes is not None and graph_classes != str(len(metadata.classes)):
        raise CheckpointError(
            f"the graph in {folder} was exported for {shown(graph_classes)} classes but its {METADATA} lists "
            f"{len(metadata.classes)} ({', '.join(metadata.classes)}): the files come from different exports"
        )


@contextlib.contextmanager
def engine_errors(engine: str, action: str, graph: Path) -> Iterator[None]:
    """An inference engine's own error while loading or running a graph becomes one line naming the graph file
    (and its weights file beside it)."""
    try:
        yield
    except CrossgraftError:
        raise
    except Exception as error:  # each engine raises its own classes (RuntimeError, ORT's Fail, InvalidProtobuf...)
        weights = graph.with_suffix(".bin") if graph.suffix == ".xml" else Path(f"{graph}.data")
        if not weights.exists() and (graph.suffix == ".xml" or "xternal" in str(error)):
            problem = f"its weights file {weights.name} is missing"
        else:
            problem = _engine_reason(error)
        raise CheckpointError(
            f"{engine} cannot {action} the graph {graph}: {problem}. The export is damaged or incomplete: export the "
            "run again"
        ) from error


def _engine_reason(error: Exception) -> str:
    """The line of an engine's message that says what is wrong (OpenVINO's first lines name its source files)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Exception from", "Check '"))]
    return ((useful or lines or [type(error).__name__])[-1])[:200].rstrip(".")


class ExportedEngine:
    """An export folder run by an inference engine: its classes only, the domain and thresholds it was made with."""

    name = "exported"
    zero_shot = False

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.metadata = read_metadata(self.folder)
        self.image_size = self.metadata.image_size
        self.classes = self.metadata.classes

    def infer(self, images: np.ndarray, class_index: np.ndarray) -> list[np.ndarray]:
        """The graph's three outputs for uint8 images (B, S, S, 3) and class indices (B,)."""
        raise NotImplementedError

    def run(self, images: np.ndarray, class_name: str) -> Detection:
        """Maps and scores of uint8 images (B, S, S, 3) of one of the exported classes."""
        check_images(images, self.image_size)
        index = np.full(len(images), class_position(self.metadata, class_name, self.folder), dtype=np.int64)
        score_map, image_score, det_score = self.infer(images, index)
        return Detection(score_map, image_score, det_score)

    def describe(self) -> str:
        """One line naming the export and the engine."""
        return f"{self.metadata.describe()}; engine {self.name}"


class OnnxRuntimeEngine(ExportedEngine):
    """ONNX Runtime on an exported model.onnx (fp32 or dynamically quantised int8)."""

    name = "onnxruntime"

    def __init__(self, folder: Path, threads: int | None = None) -> None:
        ort = require_package("onnxruntime", "the onnxruntime engine")
        super().__init__(folder)
        if self.metadata.graph_format != "onnx":
            raise ConfigError(f"{folder} holds an OpenVINO graph: run it with --engine openvino")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: its optimiser's notes are not the user's business
        if threads:
            options.intra_op_num_threads = threads
        self.graph_path = self.folder / self.metadata.graph
        with engine_errors("ONNX Runtime", "load", self.graph_path):
            self.session = ort.InferenceSession(str(self.graph_path), options, providers=["CPUExecutionProvider"])
            graph_classes = self.session.get_modelmeta().custom_metadata_map.get(GRAPH_CLASSES_KEY)
            graph_side = self.session.get_inputs()[0].shape[1]
        check_graph_size(graph_side, self.metadata, self.folder)
        check_graph_classes(graph_classes, self.metadata, self.folder)

    def infer(self, images: np.ndarray, class_index: np.ndarray) -> list[np.ndarray]:
        """The graph's outputs by ONNX Runtime: anomaly map (B, S, S), image score (B,), det score (B,)."""
        with engine_errors("ONNX Runtime", "run", self.graph_path):
            return list(self.session.run(None, {INPUT_NAMES[0]: images, INPUT_NAMES[1]: class_index}))


class OpenVINOEngine(ExportedEngine):
    """OpenVINO on an export (its IR model.xml, or the ONNX graph), in fp32 unless `precision` says otherwise
    (OpenVINO's CPU plugin would pick bf16 by itself on CPUs that have it, which moves the maps by ~1%)."""

    name = "openvino"

    def __init__(self, folder: Path, threads: int | None = None, precision: str = "f32") -> None:
        ov = require_package("openvino", "the openvino engine")
        super().__init__(folder)
        core = ov.Core()
        self.graph_path = self.folder / self.metadata.graph
        settings: dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision}
        if threads:
            settings["INFERENCE_NUM_THREADS"] = threads
        with engine_errors("OpenVINO", "load", self.graph_path):
            model = core.read_model(str(self.graph_path), str(self.graph_path.with_suffix(".bin")))
            graph_side = model.inputs[0].get_partial_shape()[1].get_length()
            key = GRAPH_CLASSES_KEY.split(".")
            graph_classes = model.get_rt_info(key).astype(str) if model.has_rt_info(key) else None
            check_graph_size(graph_side, self.metadata, self.folder)
            check_graph_classes(graph_classes, self.metadata, self.folder)
            self.compiled = core.compile_model(model, "CPU", settings)

    def infer(self, images: np.ndarray, class_index: np.ndarray) -> list[np.ndarray]:
        """The graph's outputs by OpenVINO: anomaly map (B, S, S), image score (B,), det score (B,)."""
        with engine_errors("OpenVINO", "run", self.graph_path):
            outputs = self.compiled([images, class_index])
            return [outputs[i] for i in range(len(outputs))]


def engine_from(settings: PredictConfig | ServeConfig, require_text_adapter: bool = False) -> Engine:
    """`open_engine` with a command's settings (`--device auto` is cuda when there is one)."""
    return open_engine(
        settings.engine,
        settings.save_path,
        settings.model,
        settings.epoch,
        resolve_device(settings.device),
        settings.domain,
        settings.class_descriptions,
        settings.threads,
        require_text_adapter,
    )


def open_engine(
    engine: EngineName,
    save_path: Path | None = None,
    model: Path | None = None,
    epoch: int | None = None,
    device: str = "cpu",
    domain: str = "industrial",
    class_descriptions: Path | None = None,
    threads: int | None = None,
    require_text_adapter: bool = False,
) -> Engine:
    """The engine for a run folder (torch) or an export folder (onnxruntime or openvino; `auto` reads which)."""
    if (save_path is None) == (model is None):
        raise ConfigError("give a training run (--save_path) or an export (--model), one of them")
    if model is None:
        if engine not in ("auto", "torch"):
            raise ConfigError(
                f"--engine {engine} runs an exported model: export the run first (crossgraft anomaly export "
                f"--save_path {save_path} --format {'openvino' if engine == 'openvino' else 'onnx'} --out DIR), then "
                "give --model DIR"
            )
        assert save_path is not None
        run = load_trained(save_path, epoch, device=device)
        return TorchEngine(run, domain, run.descriptions(class_descriptions), require_text_adapter)
    if engine == "torch":
        raise ConfigError(f"--engine torch runs a training run (--save_path), not the export {model}")
    if epoch is not None or class_descriptions is not None:
        raise ConfigError("--epoch and --class_descriptions apply to a training run; an export fixed them")
    graph_format = read_metadata(model).graph_format
    if engine == "openvino" or (engine == "auto" and graph_format == "openvino"):
        return OpenVINOEngine(model, threads)
    return OnnxRuntimeEngine(model, threads)


# ------------------------------------------------------------------ scoring images and fitting thresholds
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
