"""`crossgraft anomaly serve`: a web page (gradio) that runs a trained run or an export on uploaded images.

The page names what it runs, takes one image (tab "Image") or several (tab "Gallery"), a class (a trained or
exported one from the list, or, with a training run, any name typed in: zero-shot) and a threshold, and shows the
heat map, its overlay on the image, the image score and the verdict. The pictures are drawn by the same tile code
as `predict`'s panels (`visualize.py`), and the full panel of the last image can be downloaded.

What the page does is in plain functions (`PageDetector`), so that it is tested without a browser; `build_app` only lays
them out. Uploads that are not images, or larger than --max_upload_mb, are refused with a message on the page.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from crossgraft.anomaly.config import ServeConfig
from crossgraft.anomaly.data.formats import find_images
from crossgraft.anomaly.data.records import NORMAL, Sample
from crossgraft.anomaly.deploy.engines import (
    Engine,
    ExportedEngine,
    TorchEngine,
    engine_from,
    fit_threshold,
    require_package,
)
from crossgraft.anomaly.detector import resized_pixels
from crossgraft.anomaly.visualize import (
    colour_range,
    heatmap_rgb,
    overlay_tile,
    prediction_panel_text,
    resize_map,
    save_panel,
)
from crossgraft.errors import CrossgraftError, DataError
from crossgraft.images import read_rgb, set_max_pixels
from crossgraft.limits import path_component

log = logging.getLogger(__name__)
DISPLAY_SIDE = 512  # the page's pictures are drawn at least this large
MAX_EXAMPLES = 6
SCORE_BATCH = 8  # images per forward pass
MAX_FIT_IMAGES = 32  # normal images per class that fit a training run's default thresholds
SLIDER_DIGITS = 3
BYTES_PER_MB = 1024 * 1024


@dataclass
class Scored:
    """One uploaded image and what the model made of it."""

    name: str
    image: np.ndarray  # (H, W, 3) uint8, as uploaded
    score_map: np.ndarray  # (S, S): the level-mean anomaly map
    image_score: float
    det_score: float
    class_name: str


@dataclass
class Rendered:
    heat: np.ndarray  # (D, D, 3) uint8: the map in JET colours
    overlay: np.ndarray  # (D, D, 3) uint8: half image, half heat map
    text: str  # markdown: score, verdict, scale
    anomalous: bool


class PageDetector:
    """What the page does, without the page: read an upload, score it, draw it."""

    def __init__(
        self,
        engine: Engine,
        max_upload_bytes: int,
        threshold: float | None = None,
        max_images: int = 64,
        request_seconds: float = 120.0,
    ) -> None:
        self.engine = engine
        self.max_upload_bytes = max_upload_bytes
        self.threshold = threshold
        self.max_images = max_images
        self.request_seconds = request_seconds

    def read_upload(self, path: str | Path) -> Image.Image:
        """An uploaded file as an RGB image; DataError with a message for the page otherwise."""
        path = Path(path)
        size = path.stat().st_size
        if size > self.max_upload_bytes:
            raise DataError(
                f"{path.name} is {size / BYTES_PER_MB:.1f} MB; this page takes images up to "
                f"{self.max_upload_bytes / BYTES_PER_MB:.1f} MB"
            )
        try:
            return read_rgb(path, "upload")
        except DataError as error:
            raise DataError(f"{path.name} is not an image this page can read: {error}") from error

    def check_class(self, class_name: str | None) -> str:
        name = (class_name or "").strip()
        if not name:
            raise DataError("choose a class from the list" + (" or type one" if self.engine.zero_shot else ""))
        path_component(name, "the class name", DataError)
        if not self.engine.zero_shot and name not in self.engine.classes:
            raise DataError(
                f"this export knows the classes {', '.join(self.engine.classes)}; {name!r} needs an export with it "
                "(or serve the training run itself, which takes any class name)"
            )
        return name

    def score(self, paths: Sequence[str | Path], class_name: str | None) -> list[Scored]:
        """The uploaded images of one class, scored in batches of SCORE_BATCH. A request stops between batches once
        it has run `request_seconds`: the images scored by then are returned (fewer than were given)."""
        started = time.monotonic()
        name = self.check_class(class_name)
        if len(paths) > self.max_images:
            raise DataError(f"{len(paths)} images in one request; this page takes at most {self.max_images}")
        side = self.engine.image_size
        scored: list[Scored] = []
        for first in range(0, len(paths), SCORE_BATCH):
            if time.monotonic() - started > self.request_seconds:
                log.warning("a request stopped after %.0f s: %d of %d images scored", self.request_seconds,
                            len(scored), len(paths))  # fmt: skip
                break
            batch = [self.read_upload(path) for path in paths[first : first + SCORE_BATCH]]
            output = self.engine.run(np.stack([resized_pixels(image, side) for image in batch]), name)
            for j, image in enumerate(batch):
                path = Path(paths[first + j])
                score_map, image_score, det_score = output.anomaly_map[j], output.image_score[j], output.det_score[j]
                scored.append(
                    Scored(path.name, np.asarray(image), score_map, float(image_score), float(det_score), name)
                )
        return scored

    def render(self, scored: Scored, threshold: float) -> Rendered:
        """The heat map and overlay at display size, coloured from this map's minimum to max(its maximum,
        threshold) as `predict` does, so a map below the threshold never looks red."""
        side = max(DISPLAY_SIDE, scored.score_map.shape[0])
        low, high = colour_range(scored.score_map, threshold)
        heat = heatmap_rgb(resize_map(scored.score_map, side), low, high)
        image = np.asarray(Image.fromarray(scored.image).resize((side, side), Image.Resampling.BICUBIC))
        anomalous = scored.image_score > threshold
        verdict = "**ANOMALOUS**" if anomalous else "**normal**"
        text = (
            f"### {scored.name}: {verdict}\n\n"
            f"image score **{scored.image_score:.4g}** (the map's maximum) {'>' if anomalous else '≤'} threshold "
            f"{threshold:.4g} · detection score {scored.det_score:.3f} · class {scored.class_name!r}\n\n"
            f"colours: {low:.4g} (blue) to {high:.4g} (red), this image's minimum to max(its maximum, the threshold)"
        )
        return Rendered(heat, overlay_tile(image, heat, None, 2), text, anomalous)

    def panel(self, scored: Scored, threshold: float, folder: Path) -> Path:
        """The image's four-tile panel as `predict` writes it, for download."""
        low, high = colour_range(scored.score_map, threshold)
        text = prediction_panel_text(scored.name, scored.class_name, scored.image_score, threshold, low, high)
        path = folder / f"{Path(scored.name).stem}_panel.png"
        return save_panel(scored.image, scored.score_map, path, text, None, low, high)


def training_samples(engine: Engine) -> list[Sample]:
    """The samples a training run trained on that are still on disk; none for an export."""
    if not isinstance(engine, TorchEngine):
        return []
    return [sample for sample in engine.run_.training_samples() if sample.image_path.is_file()]


def example_images(config: ServeConfig, engine: Engine) -> list[list[str]]:
    """[image, class] rows for the page: --examples, else one anomalous training image per class, then normal ones."""
    if config.examples is not None:
        default_class = engine.classes[0] if engine.classes else "object"
        return [[str(path), default_class] for path in find_images(config.examples)[:MAX_EXAMPLES]]
    chosen, seen = [], set()
    for sample in sorted(training_samples(engine), key=lambda s: (-(s.label or 0), s.class_name, str(s.image_path))):
        if (sample.class_name, sample.label) not in seen:
            seen.add((sample.class_name, sample.label))
            chosen.append([str(sample.image_path), sample.class_name])
    return chosen[:MAX_EXAMPLES]


def class_thresholds(
    detector: PageDetector, fit_on: Path | None = None, batch_size: int = SCORE_BATCH
) -> dict[str, float]:
    """Each class's threshold, by the one fitting rule `predict --fit_on` and `export --fit_on` use (the highest
    score of the class's normal images: none of them is flagged): from FIT_ON/CLASS for every class that has such a
    folder (trained, exported or any other name), else an export's own fitted thresholds, else the normal images a
    training run trained on."""
    engine = detector.engine
    fitted: dict[str, float] = {}
    if fit_on is not None:
        for folder in sorted(path for path in Path(fit_on).iterdir() if path.is_dir()):
            if not engine.zero_shot and folder.name not in engine.classes:
                log.warning("%s: %s is not a class of this export; left out", fit_on, folder.name)
                continue
            fitted[folder.name] = fit_threshold(engine, folder.name, folder, batch_size)
    if isinstance(engine, ExportedEngine):
        return {**engine.metadata.thresholds, **fitted}
    normal: dict[str, list[Path]] = {}
    for sample in training_samples(engine):
        if sample.label == NORMAL:
            normal.setdefault(sample.class_name, []).append(sample.image_path)
    thresholds = {}
    for class_name, paths in normal.items():
        try:
            thresholds[class_name] = max(s.image_score for s in detector.score(paths[:MAX_FIT_IMAGES], class_name))
        except CrossgraftError as error:
            log.warning("no threshold for %s: %s", class_name, error)
    return {**thresholds, **fitted}


def slider_range(
    detector: PageDetector, examples: list[list[str]], threshold: float | None, others: list[float] | None = None
) -> tuple[float, float, float]:
    """(minimum, maximum, start) of the threshold slider, in the map's own unit: around the examples' scores, the
    given threshold and the `others` (the classes' fitted thresholds); the start is the given threshold, else the
    middle of the examples' scores."""
    scores = list(others or [])
    for path, class_name in examples:
        try:
            scores += [scored.image_score for scored in detector.score([path], class_name)]
        except CrossgraftError as error:
            log.warning("example %s left out: %s", path, error)
    if threshold is not None:
        scores.append(threshold)
    if not scores:
        return -1.0, 1.0, 0.0 if threshold is None else threshold
    low, high = min(scores), max(scores)
    margin = max(high - low, 1e-3)
    start = threshold if threshold is not None else (low + high) / 2
    return round_to_digits(low - margin), round_to_digits(high + margin), round_to_digits(start)


def round_to_digits(value: float, digits: int = SLIDER_DIGITS) -> float:
    """`value` with `digits` significant digits (what a slider's ends should show)."""
    return float(f"{value:.{digits}g}")


def serve(config: ServeConfig) -> None:
    """Build the page and serve it until interrupted."""
    app = build_app(config)
    print(f"serving on http://{config.host}:{config.port} (Ctrl+C stops)", flush=True)
    app.launch(server_name=config.host, server_port=config.port, show_error=True, max_file_size=upload_cap(config))


def upload_cap(config: ServeConfig) -> int:
    """The server's own limit on an upload's bytes: twice --max_upload_mb, so an upload a little over the limit
    still reaches the page (which says why it is refused) while a huge one is dropped before it is stored."""
    return int(2 * config.max_upload_mb * BYTES_PER_MB)


def build_app(config: ServeConfig) -> Any:
    """The gradio Blocks of the page (not yet launched)."""
    gr = require_package("gradio", "crossgraft anomaly serve", extra="serve")
    set_max_pixels(config.max_image_pixels)
    print(f"loading {config.save_path or config.model} ...", flush=True)
    engine = engine_from(config, require_text_adapter=True)
    detector = PageDetector(
        engine, int(config.max_upload_mb * BYTES_PER_MB), config.threshold, config.max_images, config.request_seconds
    )
    examples = example_images(config, engine)
    print(f"fitting the classes' thresholds{f' on {config.fit_on}' if config.fit_on else ''} ...", flush=True)
    fitted = {} if config.threshold is not None else class_thresholds(detector, config.fit_on)
    first_class = engine.classes[0] if engine.classes else None
    threshold = config.threshold if config.threshold is not None else fitted.get(first_class or "")
    low, high, start = slider_range(detector, examples, threshold, list(fitted.values()))
    downloads = Path(tempfile.mkdtemp(prefix="crossgraft-serve-"))
    print("building the page ...", flush=True)

    def request_folder() -> Path:
        """A fresh folder per request: the page serves a panel while another request may write one of that name."""
        return Path(tempfile.mkdtemp(dir=downloads))

    def threshold_note(class_name: str | None) -> str:
        name = (class_name or "").strip()
        if config.threshold is not None or name in fitted:
            return ""
        return (
            f"\n\nthreshold set by hand: no fitted threshold for {name!r} (`serve --fit_on DIR` fits one from "
            "DIR/CLASS, as `predict --fit_on` does)"
        )

    def detect_one(path: str | None, class_name: str | None, threshold: float) -> tuple[Any, ...]:
        if not path:
            return None, None, None, "upload an image (or pick an example below)", None, None
        try:
            scored = detector.score([path], class_name)[0]
        except CrossgraftError as error:
            return None, None, None, f"**refused:** {error}", None, None
        rendered = detector.render(scored, threshold)
        panel = str(detector.panel(scored, threshold, request_folder()))
        return rendered.heat, rendered.overlay, panel, rendered.text + threshold_note(class_name), scored, scored.image

    def rerender(scored: Scored | None, threshold: float) -> tuple[Any, ...]:
        if scored is None:
            return None, None, None, "upload an image (or pick an example below)"
        rendered = detector.render(scored, threshold)
        return rendered.heat, rendered.overlay, str(detector.panel(scored, threshold, request_folder())), rendered.text

    def detect_many(files: list[str] | None, class_name: str | None, threshold: float) -> tuple[Any, str]:
        if not files:
            return [], "upload one or more images"
        try:
            results = detector.score(list(files), class_name)
        except CrossgraftError as error:
            return [], f"**refused:** {error}"
        gallery, rows = [], ["| image | score | verdict |", "|---|---|---|"]
        if len(results) < len(files):
            rows.insert(
                0, f"stopped after {config.request_seconds:g} s: {len(results)} of {len(files)} images scored\n"
            )
        for scored in results:
            rendered = detector.render(scored, threshold)
            verdict = "ANOMALOUS" if rendered.anomalous else "normal"
            gallery.append((rendered.overlay, f"{scored.name}: {scored.image_score:.4g} ({verdict})"))
            rows.append(f"| {scored.name} | {scored.image_score:.4g} | {verdict} |")
        return gallery, "\n".join(rows)

    choices = list(engine.classes)
    class_help = "a trained class, or type any class name (zero-shot)" if engine.zero_shot else "an exported class"

    def class_choice(**extra: Any) -> Any:
        first = choices[0] if choices else None
        return gr.Dropdown(
            choices, value=first, label="class", info=class_help, allow_custom_value=engine.zero_shot, **extra
        )

    def threshold_slider(**extra: Any) -> Any:
        return gr.Slider(low, high, value=start, label="threshold (image score above it: anomalous)", **extra)

    with gr.Blocks(title="crossgraft anomaly detection") as app:
        gr.Markdown(f"# crossgraft anomaly detection\n\nRunning **{engine.describe()}**.")
        with gr.Tab("Image"):
            with gr.Row():
                with gr.Column():
                    upload = gr.File(label="image", file_count="single", elem_id="upload")
                    uploaded = gr.Image(label="uploaded image", type="numpy", interactive=False, elem_id="uploaded")
                    class_box = class_choice(elem_id="class")
                    slider = threshold_slider(elem_id="threshold")
                    button = gr.Button("Detect", variant="primary", elem_id="detect")
                    if examples:
                        gr.Examples(examples, inputs=[upload, class_box], label="examples (each with its own class)")
                with gr.Column():
                    result = gr.Markdown("upload an image (or pick an example)", elem_id="result")
                    with gr.Row():
                        heat = gr.Image(label="heat map", type="numpy", elem_id="heatmap", format="png")
                        overlay = gr.Image(label="overlay", type="numpy", elem_id="overlay", format="png")
                    panel = gr.File(label="panel (PNG, as predict writes it)", elem_id="panel")
            state = gr.State(None)
            class_box.change(lambda name, current: fitted.get(name, current), [class_box, slider], slider)
            outputs = [heat, overlay, panel, result, state, uploaded]
            button.click(detect_one, [upload, class_box, slider], outputs)
            upload.change(detect_one, [upload, class_box, slider], outputs)  # a result on upload or on an example
            slider.release(rerender, [state, slider], [heat, overlay, panel, result])
        with gr.Tab("Gallery"):
            uploads = gr.File(label="images", file_count="multiple", elem_id="uploads")
            class_many = class_choice()
            slider_many = threshold_slider()
            class_many.change(lambda name, current: fitted.get(name, current), [class_many, slider_many], slider_many)
            button_many = gr.Button("Detect all", variant="primary", elem_id="detect-all")
            table = gr.Markdown()
            gallery = gr.Gallery(label="overlays", columns=4, elem_id="gallery")
            button_many.click(detect_many, [uploads, class_many, slider_many], [gallery, table])
    # every request waits its turn; `concurrency` of them run the model at once, `queue_size` may wait
    return app.queue(default_concurrency_limit=config.concurrency, max_size=config.queue_size)
