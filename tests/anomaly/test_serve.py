"""`serve`: what the page does (read an upload, refuse what is not an image or too large, score, draw), and the page
itself in a real browser (Debian's Chromium driven by Playwright): upload a synthetic defect image, wait for the
result, and check the rendered heat map's pixels and the score text."""

import io
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crossgraft.anomaly.config import ExportConfig, ServeConfig
from crossgraft.anomaly.deploy.engines import OnnxRuntimeEngine, open_engine
from crossgraft.anomaly.serve import PageDetector, build_app, class_thresholds, slider_range, training_samples
from crossgraft.anomaly.visualize import jet
from crossgraft.errors import ConfigError, DataError

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
PAGE_TIMEOUT_MS = 180_000  # generous: a loaded 2-core machine (CI) is slow, a hang still ends
SCREENSHOT_ENV = "CROSSGRAFT_SERVE_SCREENSHOT"  # also save the page's screenshot there (the README's picture)


def heat_levels(rgb: np.ndarray) -> np.ndarray:
    """JET colours back to their level 0..255 (nearest colour of the 256-entry table): (H, W)."""
    table = jet(np.arange(256, dtype=np.uint8)).astype(np.int32)  # (256, 3)
    pixels = rgb.reshape(-1, 1, 3).astype(np.int32)
    return ((pixels - table[None]) ** 2).sum(-1).argmin(1).reshape(rgb.shape[:2])


def defect_contrast(levels: np.ndarray, mask: np.ndarray) -> float:
    """Mean heat inside the defect minus outside, the map resized to the mask's size."""
    side = mask.shape[0]
    levels = np.asarray(Image.fromarray(levels.astype(np.uint8)).resize((side, side), Image.Resampling.BILINEAR))
    return float(levels[mask].mean() - levels[~mask].mean())


def defect_images(root: Path, class_name: str) -> list[tuple[Path, np.ndarray]]:
    class_root = root / class_name
    found = []
    for mask_path in sorted((class_root / "ground_truth").rglob("*_mask.png")):
        image = class_root / "test" / mask_path.parent.name / mask_path.name.replace("_mask", "")
        found.append((image, np.asarray(Image.open(mask_path).convert("L")) > 0))
    return found


@pytest.fixture(scope="module")
def detector(trained_run):
    return PageDetector(open_engine("torch", save_path=trained_run), max_upload_bytes=1_000_000)


@pytest.fixture(scope="module")
def clear_defect(detector, synthetic_root):
    """The defect image whose map the model gets most clearly right: the page test checks that the page shows the
    model's map faithfully, not how good the tiny model is."""
    best = max(
        (
            (defect_contrast(detector.render(detector.score([path], "dots")[0], 0.0).heat.max(-1), mask), path, mask)
            for path, mask in defect_images(synthetic_root, "dots")
        ),
        key=lambda item: item[0],
    )
    return best[1], best[2]


def test_the_heat_map_is_hotter_on_the_defect(detector, clear_defect):
    path, mask = clear_defect
    scored = detector.score([path], "dots")[0]
    rendered = detector.render(scored, scored.image_score - 1)
    assert defect_contrast(heat_levels(rendered.heat), mask) > 20 and rendered.anomalous
    assert "ANOMALOUS" in rendered.text and f"{scored.image_score:.4g}" in rendered.text
    assert not detector.render(scored, scored.image_score + 1).anomalous
    assert rendered.heat.shape == rendered.overlay.shape == (512, 512, 3)


def test_uploads_that_are_not_images_or_too_large_are_refused(detector, tmp_path, synthetic_root):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(DataError, match="notes.txt is not an image this page can read"):
        detector.score([text], "dots")
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (800, 800, 3), dtype=np.uint8)).save(big)
    with pytest.raises(DataError, match=r"big.png is 1\.\d MB; this page takes images up to 1\.0 MB"):
        detector.score([big], "dots")
    with pytest.raises(DataError, match="choose a class from the list or type one"):
        detector.score([big], " ")


@pytest.mark.slow  # exports a graph
def test_a_training_run_takes_any_class_name_and_an_export_its_own(detector, trained_run, synthetic_root, tmp_path):
    image = defect_images(synthetic_root, "dots")[0][0]
    assert detector.score([image], "walnut")[0].class_name == "walnut"  # zero-shot: a class never trained on
    export_dir = tmp_path / "export"
    from crossgraft.anomaly.deploy.export import export

    export(ExportConfig(save_path=trained_run, class_name=["dots"], out=export_dir))
    exported = PageDetector(OnnxRuntimeEngine(export_dir), max_upload_bytes=1_000_000)
    with pytest.raises(DataError, match="this export knows the classes dots; 'walnut' needs an export with it"):
        exported.score([image], "walnut")
    assert exported.score([image], "dots")[0].image_score == pytest.approx(
        detector.score([image], "dots")[0].image_score, rel=1e-4, abs=1e-4
    )


def test_the_threshold_slider_spans_the_examples_scores(detector, synthetic_root):
    examples = [[str(path), "dots"] for path, _ in defect_images(synthetic_root, "dots")]
    scores = [detector.score([path], "dots")[0].image_score for path, _ in examples]
    low, high, start = slider_range(detector, examples, None)
    assert low < min(scores) and high > max(scores) and min(scores) <= start <= max(scores)
    assert slider_range(detector, examples, 123.0)[2] == 123.0


def test_a_training_runs_thresholds_are_fitted_on_its_normal_images(detector):
    fitted = class_thresholds(detector)
    samples = training_samples(detector.engine)
    assert sorted(fitted) == ["checker", "dots", "stripes"]
    normal = [s.image_path for s in samples if s.class_name == "dots" and s.label == 0]
    assert normal and fitted["dots"] == max(s.image_score for s in detector.score(normal, "dots"))


def test_serve_needs_a_run_or_an_export(trained_run, tmp_path):
    with pytest.raises(ConfigError, match="one of them"):
        ServeConfig()
    with pytest.raises(ConfigError, match="one of them"):
        ServeConfig(save_path=trained_run, model=tmp_path)


# ------------------------------------------------------------------------------------------- real browser
def find_browser() -> str | None:
    for name in BROWSERS:
        if path := shutil.which(name):
            return path
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def content_box(rgb: np.ndarray) -> np.ndarray:
    """The colour-mapped picture inside an element's screenshot (JET colours are saturated, the page is not)."""
    saturated = (rgb.max(-1).astype(int) - rgb.min(-1)) > 60
    rows, cols = np.flatnonzero(saturated.any(1)), np.flatnonzero(saturated.any(0))
    return rgb[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


@pytest.mark.slow  # drives the browser
def test_the_page_in_a_real_browser(trained_run, detector, clear_defect, tmp_path):
    browser_path = find_browser()
    if browser_path is None:
        pytest.skip("no Chromium on this machine (.ci/run installs Debian's chromium; apt was not available)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is part of the dev extra")
    image_path, mask = clear_defect
    expected = detector.score([image_path], "dots")[0]
    port = free_port()
    app = build_app(ServeConfig(save_path=trained_run, port=port, max_upload_mb=0.5, device="cpu"))
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (600, 600, 3), dtype=np.uint8)).save(big)
    not_image = tmp_path / "notes.txt"
    not_image.write_text("hello")
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(PAGE_TIMEOUT_MS)
            page.goto(f"http://127.0.0.1:{port}")
            page.wait_for_selector("#upload input[type=file]", state="attached")
            header = page.inner_text("body")
            assert "base run in" in header and "epoch 2" in header and "backbone tiny" in header

            def submit(path: Path) -> str:
                clear = page.locator("#upload button[aria-label='Clear']")
                if clear.count():
                    clear.click()
                page.locator("#upload input[type=file]").set_input_files(str(path))
                page.wait_for_function(f"document.body.innerText.includes({path.name!r})")  # the result comes on upload
                page.wait_for_function(  # the new file's result, no longer pending (gradio shows a timer then)
                    "([name]) => { const t = document.querySelector('#result').innerText;"
                    " return t.includes(name) && !/^\\s*\\d+(\\.\\d+)?s/.test(t)"
                    " && (t.includes('image score') || t.includes('refused')); }",
                    arg=[path.name],
                )
                return page.inner_text("#result")

            choose = page.locator("#class input")
            choose.fill("dots")
            choose.press("Enter")
            result = submit(image_path)
            assert f"image score {expected.image_score:.4g}" in result and "class 'dots'" in result
            page.wait_for_selector("#heatmap img")
            shot = np.asarray(Image.open(io.BytesIO(page.locator("#heatmap img").screenshot())).convert("RGB"))
            heat = heat_levels(content_box(shot))
            assert defect_contrast(heat, mask) > 20, "the rendered heat map is not hotter on the defect"
            page.screenshot(path=str(tmp_path / "serve.png"), full_page=True)
            if os.environ.get(SCREENSHOT_ENV):
                page.screenshot(path=os.environ[SCREENSHOT_ENV], full_page=True)
            assert "refused:" in submit(not_image) and "is not an image this page can read" in page.inner_text(
                "#result"
            )
            assert "refused:" in submit(big) and "this page takes images up to 0.5 MB" in page.inner_text("#result")
            browser.close()
    finally:
        app.close()


def test_a_request_of_too_many_images_is_refused(detector, synthetic_root):
    paths = sorted((synthetic_root / "dots" / "test").rglob("*.png"))[:1] * (detector.max_images + 1)
    with pytest.raises(DataError, match=rf"{detector.max_images + 1} images in one request; .* at most"):
        detector.score(paths, "dots")


@pytest.mark.slow  # serves the page
def test_every_normal_request_is_answered_beside_hostile_ones(trained_run, synthetic_root):
    gradio_client = pytest.importorskip("gradio_client")
    port = free_port()
    config = ServeConfig(save_path=trained_run, port=port, device="cpu", request_seconds=0.01, concurrency=1)
    app = build_app(config)
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    # distinct images: gradio caches an output file by its content, and identical outputs written at the same
    # moment by concurrent requests can be served half-written (a gradio race, not the page's)
    paths = sorted(p for p in synthetic_root.rglob("*.png") if "ground_truth" not in p.parts)[:21]
    images = [gradio_client.handle_file(str(path)) for path in paths]
    image = images[-1]
    try:
        client = gradio_client.Client(f"http://127.0.0.1:{port}", verbose=False)
        normal = [client.submit(picture, "dots", 0.5, api_name="/detect_one") for picture in images[:20]]
        long_name = client.submit(image, "x" * 100_000, 0.5, api_name="/detect_one")
        many = client.submit([image] * config.max_images, "dots", 0.5, api_name="/detect_many")
        answers = [job.result(timeout=PAGE_TIMEOUT_MS / 1000)[3] for job in normal]
        assert all("image score" in answer and "class 'dots'" in answer for answer in answers)
        assert "refused:" in long_name.result(timeout=60)[3] and "characters long" in long_name.result()[3]
        table = many.result(timeout=60)[1]
        assert "stopped after 0.01 s:" in table and f"of {config.max_images} images scored" in table
    finally:
        app.close()


def test_the_page_and_predict_fit_the_same_threshold_and_give_the_same_verdict(
    detector, trained_run, synthetic_root, tmp_path
):
    from crossgraft.anomaly.config import PredictConfig
    from crossgraft.anomaly.predict import predict

    fit_on = tmp_path / "fit_on"
    shutil.copytree(synthetic_root / "dots" / "train" / "good", fit_on / "dots")
    shutil.copytree(synthetic_root / "checker" / "train" / "good", fit_on / "zero_shot_name")
    page = class_thresholds(detector, fit_on)
    inputs = synthetic_root / "dots" / "test"
    predicted = predict(
        PredictConfig(inputs=inputs, save_path=trained_run, class_name="dots", fit_on=fit_on / "dots",
                      out=tmp_path / "predict", device="cpu")
    )  # fmt: skip
    assert page["dots"] == pytest.approx(predicted.threshold, rel=1e-6)
    assert "zero_shot_name" in page  # a class typed on the page is fitted by the same rule
    for prediction in predicted.predictions:
        scored = detector.score([prediction.image], "dots")[0]
        assert detector.render(scored, page["dots"]).anomalous == prediction.anomalous, prediction.image
