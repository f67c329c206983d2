"""`export` and the engines: ONNX Runtime and OpenVINO give PyTorch's maps and scores (≤1e-4 relative) at two
image sizes and batch 1 and 3, with a dynamic batch axis; the graph runs without crossgraft; int8 stays close;
predict writes the same files through every engine; bad input is refused with a reason."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from crossgraft.anomaly.config import ExportConfig, PredictConfig
from crossgraft.anomaly.data.transforms import load_image
from crossgraft.anomaly.deploy import engines
from crossgraft.anomaly.deploy.engines import OnnxRuntimeEngine, OpenVINOEngine, TorchEngine, open_engine
from crossgraft.anomaly.deploy.export import export, relative_difference
from crossgraft.anomaly.detector import resized_pixels
from crossgraft.anomaly.infer import load_trained
from crossgraft.anomaly.metrics import compute_metrics
from crossgraft.anomaly.predict import predict
from crossgraft.errors import ConfigError, OutputError
from crossgraft.graft import CheckpointError

pytestmark = pytest.mark.slow  # exports ONNX / OpenVINO graphs

CLASSES = ["dots", "stripes"]
TOLERANCE = 1e-4


def sample_images(root, side, count):
    paths = sorted((root / "dots" / "test").rglob("*.png"))[:count]
    return np.stack([resized_pixels(load_image(p), side) for p in paths])  # (B, S, S, 3) uint8


@pytest.fixture(scope="module")
def exports(trained_run, cross_run, tmp_path_factory):
    """fp32 exports of the base run at its own size (64) and at 96, as ONNX and as OpenVINO IR, and of cross_attn."""
    root = tmp_path_factory.mktemp("exports")
    made = {}
    for name, run, size, fmt in [
        ("base64", trained_run, None, "onnx"),
        ("base96", trained_run, 96, "onnx"),
        ("base64_ir", trained_run, None, "openvino"),
        ("cross64", cross_run, None, "onnx"),
    ]:
        config = ExportConfig(save_path=run, class_name=CLASSES, out=root / name, img_size=size, format=fmt)
        made[name] = export(config)
    return made


@pytest.mark.parametrize("name", ["base64", "base96", "base64_ir", "cross64"])
def test_engines_equal_torch_at_batch_1_and_3(name, exports, trained_run, cross_run, synthetic_root):
    result = exports[name]
    run_folder = cross_run if name.startswith("cross") else trained_run
    side = result.metadata.image_size
    assert side == (96 if name == "base96" else 64)
    torch_engine = open_engine("torch", save_path=run_folder)
    if side != torch_engine.image_size:  # the run itself at the export's size
        run = load_trained(run_folder, image_size=side)
        torch_engine = TorchEngine(run, "industrial", run.descriptions())
    engines_here = [OpenVINOEngine(result.folder)]
    if result.metadata.graph_format == "onnx":
        engines_here.append(OnnxRuntimeEngine(result.folder))
    for batch in (1, 3):
        images = sample_images(synthetic_root, side, batch)
        for class_name in CLASSES:
            expected = torch_engine.run(images, class_name)
            for engine in engines_here:
                got = engine.run(images, class_name)
                for field in ("anomaly_map", "image_score", "det_score"):
                    want, have = getattr(expected, field), getattr(got, field)
                    assert have.shape == want.shape
                    difference = relative_difference(want, have)
                    print(f"{name} {engine.name} B={batch} {class_name} {field}: {difference:.1e}")
                    assert difference <= TOLERANCE, (engine.name, field, difference)
    assert result.check_difference <= TOLERANCE


def test_metadata_describes_the_graph(exports, trained_run):
    metadata = json.loads((exports["base64"].folder / "metadata.json").read_text())
    assert metadata["format"] == "crossgraft.anomaly.export/1" and metadata["classes"] == CLASSES
    assert metadata["image_size"] == 64 and metadata["variant"] == "base" and metadata["backbone"] == "tiny"
    assert metadata["normalisation"]["mean"][0] == pytest.approx(0.48145466)
    assert metadata["run_config"] == json.loads((trained_run / "run_config.json").read_text())
    assert metadata["check"]["max_relative_difference_vs_torch"] <= TOLERANCE
    assert "uint8 (B, S, S, 3)" in metadata["input"]["images"]
    assert sorted(p.name for p in exports["base64_ir"].folder.iterdir()) == ["metadata.json", "model.bin", "model.xml"]


def test_every_exported_file_has_the_mode_the_users_umask_gives(exports):
    """model.onnx.data and model.bin are written through private temporary files (0600); the installed export is
    readable as the umask says, like every other file the user writes."""
    umask = os.umask(0)
    os.umask(umask)
    for made in exports.values():
        modes = {p.name: p.stat().st_mode & 0o777 for p in made.folder.iterdir() if p.is_file()}
        assert modes and all(mode == 0o666 & ~umask for mode in modes.values()), (made.folder, modes)


def test_the_graph_runs_without_crossgraft(exports, trained_run, synthetic_root, tmp_path):
    """A fresh interpreter that imports only onnxruntime (or openvino), numpy, json and PIL runs the export and
    gets PyTorch's map; crossgraft and torch are never imported."""
    images = sample_images(synthetic_root, 64, 3)
    np.save(tmp_path / "images.npy", images)
    expected = open_engine("torch", save_path=trained_run).run(images, "stripes")
    np.save(tmp_path / "expected.npy", expected.anomaly_map)
    for engine, folder in (("onnxruntime", exports["base64"].folder), ("openvino", exports["base64_ir"].folder)):
        script = textwrap.dedent(
            f"""
            import json, sys
            import numpy as np
            folder, work = {str(folder)!r}, {str(tmp_path)!r}
            metadata = json.load(open(folder + "/metadata.json"))
            images = np.load(work + "/images.npy")
            index = np.full(len(images), metadata["classes"].index("stripes"), dtype=np.int64)
            if {engine!r} == "onnxruntime":
                import onnxruntime
                session = onnxruntime.InferenceSession(folder + "/" + metadata["graph"])
                anomaly_map = session.run(["anomaly_map"], {{"images": images, "class_index": index}})[0]
            else:
                import openvino
                compiled = openvino.Core().compile_model(folder + "/" + metadata["graph"], "CPU",
                                                         {{"INFERENCE_PRECISION_HINT": "f32"}})
                anomaly_map = compiled([images, index])[0]
            expected = np.load(work + "/expected.npy")
            difference = np.abs(anomaly_map - expected).max() / np.abs(expected).max()
            loaded = sorted(name for name in sys.modules if name.split(".")[0] in ("crossgraft", "torch"))
            print(json.dumps({{"difference": float(difference), "loaded": loaded}}))
            """
        )
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout.strip().splitlines()[-1])
        assert report["loaded"] == [] and report["difference"] <= TOLERANCE, (engine, report)


def test_int8_export_stays_close_to_fp32(trained_run, synthetic_root, tmp_path):
    """Dynamic int8 moves the maps a little; the pixel AUROC on the synthetic test images moves by under 2 points
    (the deploy benchmark reports the change at ViT-L size)."""
    int8 = export(ExportConfig(save_path=trained_run, class_name=CLASSES, out=tmp_path / "int8", quantize="int8"))
    assert "int8" in int8.metadata.quantization and int8.check_difference < 0.1
    fp32 = open_engine("torch", save_path=trained_run)
    quantized = OnnxRuntimeEngine(int8.folder)
    for class_name in CLASSES:
        paths = sorted((synthetic_root / class_name / "test").rglob("*.png"))
        images = np.stack([resized_pixels(load_image(p), 64) for p in paths])
        masks = np.stack([mask_of(p, synthetic_root / class_name) for p in paths])
        labels = masks.reshape(len(masks), -1).max(1)
        aurocs = []
        for engine in (fp32, quantized):
            output = engine.run(images, class_name)
            aurocs.append(compute_metrics(output.anomaly_map, masks, output.image_score, labels).pixel_auroc)
        print(f"{class_name}: pixel AUROC fp32 {aurocs[0]:.4f}, int8 {aurocs[1]:.4f}")
        assert abs(aurocs[0] - aurocs[1]) < 0.02


def mask_of(image_path, class_root):
    from PIL import Image

    defect = image_path.parent.name
    if defect == "good":
        return np.zeros((64, 64), dtype=np.uint8)
    mask_path = class_root / "ground_truth" / defect / f"{image_path.stem}_mask.png"
    return (np.asarray(Image.open(mask_path).convert("L").resize((64, 64), Image.Resampling.NEAREST)) > 0).astype(
        np.uint8
    )


def test_predict_gives_the_same_files_through_every_engine(exports, trained_run, synthetic_root, tmp_path):
    inputs = synthetic_root / "stripes" / "test"
    results = {}
    for engine, source in (
        ("torch", {"save_path": trained_run}),
        ("onnxruntime", {"model": exports["base64"].folder}),
        ("openvino", {"model": exports["base64_ir"].folder}),
    ):
        out = tmp_path / engine
        result = predict(
            PredictConfig(inputs=inputs, class_name="stripes", engine=engine, out=out, threshold=0.0, **source)
        )
        assert f"engine {engine}" in result.model
        results[engine] = {p.image: p.image_score for p in result.predictions}
        files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
        results[engine + " files"] = files
    assert results["torch files"] == results["onnxruntime files"] == results["openvino files"]
    for engine in ("onnxruntime", "openvino"):
        for image, score in results["torch"].items():
            assert results[engine][image] == pytest.approx(score, rel=TOLERANCE, abs=TOLERANCE)


def test_an_exports_fitted_threshold_is_used_by_predict(trained_run, synthetic_root, tmp_path):
    normal = synthetic_root / "dots" / "test" / "good"
    result = export(ExportConfig(save_path=trained_run, class_name=["dots"], out=tmp_path / "e", fit_on=normal))
    threshold = result.metadata.thresholds["dots"]
    predictions = predict(
        PredictConfig(
            inputs=synthetic_root / "dots" / "test", class_name="dots", model=tmp_path / "e", out=tmp_path / "p"
        )
    )
    assert predictions.threshold == threshold
    assert not any(p.anomalous for p in predictions.predictions if "/good/" in p.image)


# ------------------------------------------------------------------------------------------------ bad input
def test_export_refuses_a_folder_without_checkpoints(trained_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(trained_run / "run_config.json", run)
    with pytest.raises(CheckpointError, match="image checkpoints in .*: none"):
        export(ExportConfig(save_path=run, class_name=["dots"], out=tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_export_without_a_text_adapter_says_zero_shot_needs_it(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "text_adapter.pth").unlink()
    with pytest.raises(ConfigError, match="no text adapter.*anchors for a class name"):
        export(ExportConfig(save_path=run, class_name=["dots"], out=tmp_path / "out"))


def test_an_engine_that_is_not_installed_names_the_extra(exports, monkeypatch):
    real_import = engines.importlib.import_module

    def no_onnxruntime(name, *args):
        if name.startswith("onnxruntime"):
            raise ImportError(name)
        return real_import(name, *args)

    monkeypatch.setattr(engines.importlib, "import_module", no_onnxruntime)
    with pytest.raises(
        ConfigError, match=r"onnxruntime package, which is not installed: pip install 'crossgraft\[deploy\]'"
    ):
        OnnxRuntimeEngine(exports["base64"].folder)


def test_an_export_from_a_newer_crossgraft_or_another_size_is_refused(exports, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(exports["base64"].folder, folder)
    metadata = json.loads((folder / "metadata.json").read_text())
    (folder / "metadata.json").write_text(
        json.dumps({**metadata, "format": "crossgraft.anomaly.export/2", "crossgraft_version": "9.0"})
    )
    with pytest.raises(CheckpointError, match="newer crossgraft \\(9.0, format version 2\\).*upgrade"):
        OnnxRuntimeEngine(folder)
    (folder / "metadata.json").write_text(json.dumps({**metadata, "image_size": 96}))
    for engine in (OnnxRuntimeEngine, OpenVINOEngine):
        with pytest.raises(CheckpointError, match="takes 64x64 images but its metadata.json says 96"):
            engine(folder)
    (folder / "metadata.json").unlink()
    with pytest.raises(ConfigError, match="not found: is .* a folder written by `crossgraft anomaly export`"):
        OnnxRuntimeEngine(folder)


def test_an_export_knows_its_classes_only(exports, synthetic_root):
    engine = OnnxRuntimeEngine(exports["base64"].folder)
    with pytest.raises(ConfigError, match="exported for the classes dots, stripes, not 'checker'.*--save_path"):
        engine.run(sample_images(synthetic_root, 64, 1), "checker")


def test_contradictory_or_impossible_export_settings_are_refused(trained_run, tmp_path):
    with pytest.raises(ConfigError, match="--quantize int8 .* --format onnx"):
        ExportConfig(save_path=trained_run, class_name=["a"], out=tmp_path, format="openvino", quantize="int8")
    with pytest.raises(ConfigError, match="names dots more than once"):
        ExportConfig(save_path=trained_run, class_name=["dots,stripes", "dots"], out=tmp_path)
    assert ExportConfig(save_path=trained_run, class_name=["dots, stripes", "checker"], out=tmp_path).class_name == [
        "dots",
        "stripes",
        "checker",
    ]
    with pytest.raises(ConfigError, match="--engine onnxruntime runs an exported model: export the run first"):
        open_engine("onnxruntime", save_path=trained_run)
    with pytest.raises(ConfigError, match="one of them"):
        PredictConfig(inputs=tmp_path, class_name="a")


def test_export_never_overwrites_another_folder_and_an_interrupted_export_keeps_the_old_one(
    exports, trained_run, tmp_path, monkeypatch
):
    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("keep")
    with pytest.raises(OutputError, match="not an export folder"):
        export(ExportConfig(save_path=trained_run, class_name=["dots"], out=other))
    assert (other / "mine.txt").read_text() == "keep"

    previous = tmp_path / "previous"
    shutil.copytree(exports["base64"].folder, previous)
    before = sorted((p.name, p.stat().st_size) for p in previous.iterdir())
    from crossgraft.anomaly.deploy import export as export_module

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(export_module, "check_export", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export(ExportConfig(save_path=trained_run, class_name=["dots"], out=previous))
    assert sorted((p.name, p.stat().st_size) for p in previous.iterdir()) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging folder left behind


def test_images_must_be_uint8_at_the_graphs_size(exports):
    engine = OnnxRuntimeEngine(exports["base64"].folder)
    with pytest.raises(ConfigError, match=r"uint8 images \(B, 64, 64, 3\)"):
        engine.run(np.zeros((1, 32, 32, 3), dtype=np.uint8), "dots")
    with pytest.raises(ConfigError, match="uint8"):
        engine.run(np.zeros((1, 64, 64, 3), dtype=np.float32), "dots")


def test_export_and_predict_from_the_command_line(trained_run, synthetic_root, tmp_path, capsys):
    from crossgraft.cli import main

    out = tmp_path / "ir"
    args = ["anomaly", "export", "--save_path", str(trained_run), "--class_name", "dots", "--out", str(out)]
    assert main([*args, "--format", "openvino"]) == 0
    printed = capsys.readouterr().out
    assert "exported base on tiny, epoch 2" in printed and "check against PyTorch" in printed
    assert f"--model {out} --engine openvino" in printed
    predict = ["anomaly", "predict", str(synthetic_root / "dots" / "test" / "good"), "--model", str(out)]
    assert main([*predict, "--class_name", "dots", "--threshold", "1000"]) == 0
    printed = capsys.readouterr().out
    assert "engine openvino" in printed and printed.count("  normal  ") == 3
    assert main([*predict, "--class_name", "walnut"]) == 2
    assert "exported for the classes dots, not 'walnut'" in capsys.readouterr().err
    assert main([*args, "--format", "openvino", "--quantize", "int8"]) == 2
    assert main([*predict, "--class_name", "dots", "--save_path", str(trained_run)]) == 2


def copied_export(exports, name, tmp_path, **changes):
    """A copy of an export with its metadata.json entries changed (a value of ... drops the entry)."""
    folder = tmp_path / f"copy_{name}"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(exports[name].folder, folder)
    metadata = json.loads((folder / "metadata.json").read_text())
    metadata = {key: value for key, value in {**metadata, **changes}.items() if value is not ...}
    (folder / "metadata.json").write_text(json.dumps(metadata))
    return folder


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"classes": "checker,dots"}, r"'classes' must be a non-empty list of class names, not 'checker,dots'"),
        ({"classes": []}, r"'classes' must be a non-empty list"),
        ({"classes": ["dots", "dots"]}, r"'classes' must be distinct names"),
        ({"classes": [1, 2]}, r"'classes' must be a non-empty list of class names, not \[1, 2\]"),
        ({"classes": ["dots", "../x"]}, r"the class name '../x' .*separator"),
        ({"thresholds": {"dots": float("nan")}}, r"the threshold of dots must be a finite number, not nan"),
        ({"thresholds": {"dots": "0.5"}}, r"the threshold of dots must be a finite number, not '0.5'"),
        ({"thresholds": {"walnut": 0.5}}, r"threshold is given for 'walnut', which is not one of the classes"),
        ({"thresholds": [0.5]}, r"'thresholds' must be a JSON object"),
        ({"graph": "../../model.onnx"}, r"the graph file '../../model.onnx' .*separator"),
        ({"graph": "/etc/passwd"}, r"the graph file '/etc/passwd' .*separator"),
        ({"graph": "other.onnx"}, r"names the graph file other.onnx, which is not in"),
        ({"graph": 7}, r"'graph' must be a file name, not 7"),
        ({"image_size": -64}, r"'image_size' must be a whole number from 1 to 16384, not -64"),
        ({"image_size": "64"}, r"'image_size' must be a whole number from 1 to 16384, not '64'"),
        ({"image_size": True}, r"'image_size' must be a whole number"),
        ({"class_texts": ["one"]}, r"'class_texts' must be a list of 2 texts, one per class"),
        ({"domain": "space"}, r"'domain' must be 'industrial' or 'medical', not 'space'"),
        ({"graph_format": "tflite"}, r"'graph_format' must be 'onnx' or 'openvino'"),
        ({"epoch": 1.5}, r"'epoch' must be a whole number >= 0, not 1.5"),
        ({"classes": ...}, r"does not hold the expected entries \(missing: 'classes'\)"),
        ({"surprise": 1}, r"does not hold the expected entries \(unknown: 'surprise'\)"),
    ],
)
def test_metadata_json_is_validated_before_anything_runs(exports, tmp_path, changes, message):
    folder = copied_export(exports, "base64", tmp_path, **changes)
    with pytest.raises(CheckpointError, match=message):
        engines.read_metadata(folder)


def test_a_metadata_file_that_is_not_an_object_or_not_json_is_one_error(exports, tmp_path):
    folder = copied_export(exports, "base64", tmp_path)
    for text, message in [
        ("[1, 2]", "expected a JSON object, found list"),
        ("{", "not valid json"),
        ("[" * 100_000, "not valid json"),
        ('"\udc80"', "not utf-8 text"),
    ]:
        (folder / "metadata.json").write_text(text, errors="surrogatepass")
        with pytest.raises(CheckpointError, match=message):
            OnnxRuntimeEngine(folder)


@pytest.mark.parametrize("name", ["base64", "base64_ir"])
def test_a_graph_exported_for_other_classes_is_refused(exports, tmp_path, name):
    folder = copied_export(exports, name, tmp_path, classes=["dots"], class_texts=["dots"])
    engine = OpenVINOEngine if name == "base64_ir" else OnnxRuntimeEngine
    with pytest.raises(CheckpointError, match=r"exported for '2' classes but its metadata.json lists 1 \(dots\)"):
        engine(folder)


@pytest.mark.parametrize(
    ("name", "damaged", "how", "message"),
    [
        ("base64", "model.onnx", b"garbage", r"ONNX Runtime cannot load the graph .*model.onnx: .*Protobuf parsing"),
        ("base64", "model.onnx", b"", r"ONNX Runtime cannot load the graph .*model.onnx: .*No graph"),
        ("base64", "model.onnx", "cut", r"ONNX Runtime cannot load the graph .*model.onnx"),
        ("base64", "model.onnx.data", None, r"model.onnx: its weights file model.onnx.data is missing"),
        ("base64", "model.onnx.data", "cut", r"ONNX Runtime cannot load the graph .*model.onnx: .*External"),
        ("base64_ir", "model.xml", b"<net", r"OpenVINO cannot load the graph .*model.xml"),
        ("base64_ir", "model.xml", "cut", r"OpenVINO cannot load the graph .*model.xml: .*offset"),
        ("base64_ir", "model.bin", None, r"model.xml: its weights file model.bin is missing"),
        ("base64_ir", "model.bin", "cut", r"OpenVINO cannot load the graph .*model.xml: Incorrect weights"),
    ],
)
def test_a_damaged_graph_file_is_one_error_naming_it(exports, tmp_path, name, damaged, how, message):
    folder = copied_export(exports, name, tmp_path)
    path = folder / damaged
    if how is None:
        path.unlink()
    elif how == "cut":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_bytes(how)
    with pytest.raises(CheckpointError, match=message + r".*export the run again"):
        open_engine("auto", model=folder).run(sample_images_of_zeros(), "dots")


def sample_images_of_zeros():
    return np.zeros((1, 64, 64, 3), dtype=np.uint8)


def test_an_export_a_kill_left_moved_aside_is_found_and_the_next_export_cleans_up(exports, trained_run, tmp_path):
    from tests.test_files import dead_pid

    out = tmp_path / "export"
    shutil.copytree(exports["base64"].folder, tmp_path / f".export.previous-{dead_pid()}")  # killed between renames
    shutil.copytree(exports["base64"].folder, tmp_path / f".export.partial-{dead_pid()}")
    assert not out.exists()
    assert OnnxRuntimeEngine(out).classes == CLASSES  # the reader put the old export back
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    (tmp_path / f".export.partial-{dead_pid()}").mkdir()
    export(ExportConfig(save_path=trained_run, class_name=["dots"], out=out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"] and OnnxRuntimeEngine(out).classes == ["dots"]
