"""Fuzzed anomaly-family files: `--meta` JSON Lines, AnomalyCLIP meta.json, an export's metadata.json, and image
and mask files of every mode, whole or cut short."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fuzz.mutations import FUZZ, as_json, as_json_lines, mutated_bytes, reads_or_refuses, written
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from crossgraft.anomaly.data.formats import read_jsonl, read_meta_json
from crossgraft.anomaly.data.records import Sample
from crossgraft.anomaly.data.transforms import load_image, load_mask
from crossgraft.anomaly.deploy.engines import ExportMetadata, read_metadata
from crossgraft.images import read_mask_values, read_rgb

META_LINES = [
    {"image_path": "dots/test/good/000.png", "label": 0, "class_name": "dots"},
    {"image_path": "dots/test/hole/001.png", "label": 1, "class_name": "dots", "mask_path": "dots/gt/001.png",
     "defect_type": "hole"},
]  # fmt: skip
META_JSON = {
    "test": {
        "dots": [
            {"img_path": "dots/test/good/000.png", "mask_path": "", "cls_name": "dots", "specie_name": "good",
             "anomaly": 0},
            {"img_path": "dots/test/hole/001.png", "mask_path": "dots/gt/001.png", "cls_name": "dots",
             "specie_name": "hole", "anomaly": 1},
        ]
    }
}  # fmt: skip
EXPORT_METADATA = {
    "graph": "model.onnx", "graph_format": "onnx", "image_size": 64, "classes": ["dots", "stripes"],
    "class_texts": ["dots", "stripes"], "domain": "industrial", "variant": "base", "backbone": "tiny", "epoch": 2,
    "source": "ckpt/run/image_adapter.pth", "quantization": "none", "thresholds": {"dots": 0.5},
    "thresholds_fitted_on": None, "crossgraft_version": "0.1.0", "format": "crossgraft.anomaly.export/1",
    "run_config": {}, "input": {}, "outputs": {}, "normalisation": {}, "check": {},
}  # fmt: skip
MODES = ["1", "L", "P", "I", "I;16", "F", "LA", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV"]
FORMATS = ["PNG", "TIFF", "JPEG", "BMP", "GIF", "WEBP"]


def test_meta_jsonl(tmp_path_factory):
    folder = tmp_path_factory.mktemp("meta_jsonl")

    @FUZZ
    @given(data=mutated_bytes(META_LINES, as_json_lines))
    def read(data):
        samples = reads_or_refuses(read_jsonl, written(folder, "meta.jsonl", data))
        assert samples is None or all(isinstance(sample, Sample) for sample in samples)

    read()


def test_anomalyclip_meta_json(tmp_path_factory):
    folder = tmp_path_factory.mktemp("meta_json")

    @FUZZ
    @given(data=mutated_bytes(META_JSON, as_json))
    def read(data):
        samples = reads_or_refuses(read_meta_json, written(folder, "meta.json", data))
        assert samples is None or all(isinstance(sample, Sample) for sample in samples)

    read()


def test_export_metadata_json(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")

    @FUZZ
    @given(data=mutated_bytes(EXPORT_METADATA, as_json))
    def read(data):
        path = written(folder, "metadata.json", data)
        (path.parent / "model.onnx").write_bytes(b"")  # the graph file the valid metadata names
        metadata = reads_or_refuses(read_metadata, path.parent)
        assert metadata is None or isinstance(metadata, ExportMetadata)

    read()


@st.composite
def image_files(draw: st.DrawFn) -> bytes:
    """A small image of any mode in any format Pillow writes it in, perhaps cut short or with a flipped byte."""
    mode = draw(st.sampled_from(MODES))
    side = draw(st.integers(min_value=1, max_value=24))
    seed = draw(st.integers(min_value=0, max_value=2**16))
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGB")
    image = image.convert(mode) if mode not in ("I", "I;16", "F", "LA", "PA") else image.convert("L").convert(mode)
    buffer = io.BytesIO()
    for image_format in [draw(st.sampled_from(FORMATS)), "TIFF", "PNG"]:
        try:
            image.save(buffer, format=image_format)
            break
        except (OSError, KeyError, ValueError):
            buffer = io.BytesIO()
    data = buffer.getvalue()
    damage = draw(st.sampled_from(["none", "cut", "flip"]))
    if damage == "cut" and data:
        data = data[: draw(st.integers(min_value=0, max_value=len(data) - 1))]
    elif damage == "flip" and data:
        at = draw(st.integers(min_value=0, max_value=len(data) - 1))
        data = data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]
    return data


@pytest.mark.parametrize("reader", ["image", "mask"])
def test_image_and_mask_files(tmp_path_factory, reader):
    folder = tmp_path_factory.mktemp("images")

    @FUZZ
    @given(data=image_files())
    def read(data):
        path = written(folder, "file.img", data)
        if reader == "image":
            image = reads_or_refuses(read_rgb, path)
            assert image is None or image.mode == "RGB"
            assert image is None or reads_or_refuses(load_image, path) is not None
        else:
            values = reads_or_refuses(read_mask_values, path)
            assert values is None or values.ndim == 2
            if values is not None:
                mask = reads_or_refuses(load_mask, path, (values.shape[1], values.shape[0]))
                assert mask is not None and mask.mode == "L" and set(np.unique(np.asarray(mask))) <= {0, 255}

    read()
