"""Every dataset layout on tiny on-disk fixtures: counts, labels, class names, masks, and bad input."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crossgraft.anomaly.data import AnomalyDataset, DataError, EvalTransform, load_samples
from crossgraft.anomaly.data.formats import read_folder, read_jsonl, read_meta_json

SIZE = 16


def write_image(path: Path, size=(SIZE, SIZE), value=128, fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path, format=fmt)
    return path


def write_mask(path: Path, size=(SIZE, SIZE), value=255) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.zeros((size[1], size[0]), np.uint8)
    mask[4:8, 4:8] = value
    Image.fromarray(mask).save(path)
    return path


@pytest.fixture
def mvtec_root(tmp_path):
    for cls in ("bottle", "screw"):
        for i in range(3):
            write_image(tmp_path / cls / "train" / "good" / f"{i:03d}.png")
        for i in range(2):
            write_image(tmp_path / cls / "test" / "good" / f"{i:03d}.png")
        for defect in ("crack", "scratch"):
            write_image(tmp_path / cls / "test" / defect / "000.png")
            write_mask(tmp_path / cls / "ground_truth" / defect / "000_mask.png")
    return tmp_path


def test_mvtec_layout_counts_labels_and_masks(mvtec_root):
    samples = load_samples("MVTec", mvtec_root)
    assert len(samples) == 8
    assert {s.class_name for s in samples} == {"bottle", "screw"}
    anomalous = [s for s in samples if s.label == 1]
    assert len(anomalous) == 4 and {s.defect_type for s in anomalous} == {"crack", "scratch"}
    assert all(s.mask_path.name == "000_mask.png" for s in anomalous)
    assert all(s.mask_path is None and s.defect_type == "good" for s in samples if s.label == 0)
    train = load_samples("MVTec", mvtec_root, split="train", classes=["screw"])
    assert len(train) == 3 and all(s.label == 0 for s in train)


def test_btad_layout_with_ok_ko_and_bmp_images(tmp_path):
    write_image(tmp_path / "01" / "test" / "ok" / "0000.bmp", fmt="BMP")
    write_image(tmp_path / "01" / "test" / "ko" / "0001.bmp", fmt="BMP")
    write_mask(tmp_path / "01" / "ground_truth" / "ko" / "0001.png")
    write_image(tmp_path / "02" / "test" / "ko" / "0002.png")
    write_mask(tmp_path / "02" / "ground_truth" / "ko" / "0002.png")
    samples = load_samples("BTAD", tmp_path)
    by_name = {s.image_path.name: s for s in samples}
    assert by_name["0000.bmp"].label == 0 and by_name["0001.bmp"].label == 1
    assert by_name["0001.bmp"].mask_path.name == "0001.png" and by_name["0002.png"].class_name == "02"


def test_visa_csv_and_mask_binarisation(tmp_path):
    rows = [["object", "split", "label", "image", "mask"]]
    for i in range(2):
        image = f"candle/Data/Images/Normal/{i:04d}.JPG"
        write_image(tmp_path / image, fmt="JPEG")
        rows.append(["candle", "test", "normal", image, ""])
    image, mask = "candle/Data/Images/Anomaly/000.JPG", "candle/Data/Masks/Anomaly/000.png"
    write_image(tmp_path / image, fmt="JPEG")
    write_mask(tmp_path / mask, value=2)  # VisA stores instance ids, not 255
    rows.append(["candle", "test", "anomaly", image, mask])
    write_image(tmp_path / "candle/Data/Images/Normal/train.JPG", fmt="JPEG")
    rows.append(["candle", "train", "normal", "candle/Data/Images/Normal/train.JPG", ""])
    (tmp_path / "split_csv").mkdir()
    with (tmp_path / "split_csv" / "1cls.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)

    samples = load_samples("VisA", tmp_path)
    assert [s.label for s in samples] == [0, 0, 1] and {s.class_name for s in samples} == {"candle"}
    item = AnomalyDataset(samples, EvalTransform(32))[2]
    assert set(item["mask"].unique().tolist()) == {0.0, 1.0}
    assert item["mask"].sum() == 8 * 8  # the 4x4 square of value 2 at 16 px, resized to 32 px, binarised
    assert len(load_samples("VisA", tmp_path, split="train")) == 1


def test_visa_without_split_csv_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="split_csv/1cls.csv"):
        load_samples("VisA", tmp_path)


def test_medical_bmad_layout(tmp_path):
    root = tmp_path / "Brain_AD"
    write_image(root / "test" / "good" / "img" / "a.png")
    write_image(root / "test" / "Ungood" / "img" / "b.png")
    write_mask(root / "test" / "Ungood" / "label" / "b.png")
    samples = load_samples("Brain", root)
    assert [(s.class_name, s.label) for s in samples] == [("Brain", 0), ("Brain", 1)]
    assert samples[1].mask_path.name == "b.png"


def test_public_jsonl_and_anomalyclip_meta_json(mvtec_root):
    samples = load_samples("MVTec", mvtec_root)
    lines = [
        json.dumps(
            {
                "image_path": str(s.image_path.relative_to(mvtec_root)),
                "label": s.label,
                "class_name": s.class_name,
                **({"mask_path": str(s.mask_path.relative_to(mvtec_root))} if s.mask_path else {}),
            }
        )
        for s in samples
    ]
    (mvtec_root / "meta.jsonl").write_text("\n".join(lines) + "\n")
    from_jsonl = load_samples("MVTec", mvtec_root, meta=mvtec_root / "meta.jsonl")
    assert [(s.image_path, s.label, s.mask_path) for s in from_jsonl] == [
        (s.image_path, s.label, s.mask_path) for s in samples
    ]
    meta = {"test": {}, "train": {}}
    for s in samples:
        meta["test"].setdefault(s.class_name, []).append(
            {
                "img_path": str(s.image_path.relative_to(mvtec_root)),
                "mask_path": str(s.mask_path.relative_to(mvtec_root)) if s.mask_path else "",
                "cls_name": s.class_name,
                "specie_name": s.defect_type,
                "anomaly": s.label,
            }
        )
    (mvtec_root / "meta.json").write_text(json.dumps(meta))
    from_meta = read_meta_json(mvtec_root / "meta.json", mvtec_root, classes=["bottle"])
    assert len(from_meta) == 4 and {s.defect_type for s in from_meta} == {"good", "crack", "scratch"}


def test_plain_folder_for_prediction(tmp_path):
    write_image(tmp_path / "a.png")
    write_image(tmp_path / "sub" / "b.jpg", fmt="JPEG")
    (tmp_path / "notes.txt").write_text("not an image")
    samples = read_folder(tmp_path, class_name="pcb")
    assert [s.image_path.name for s in samples] == ["a.png", "b.jpg"]
    assert all(s.label is None and s.class_name == "pcb" for s in samples)
    with pytest.raises(DataError, match="no image files"):
        read_folder(tmp_path / "sub" / "empty" if (tmp_path / "sub" / "empty").mkdir() is None else tmp_path)
    with pytest.raises(DataError, match="no such file"):
        read_folder(tmp_path / "missing")
    item = AnomalyDataset(samples, EvalTransform(8))[0]
    assert item["label"].item() == -1 and item["mask"].sum() == 0


# -------------------------------------------------------------------------------------------- bad input
def test_missing_image_and_mask_name_the_file(mvtec_root):
    (mvtec_root / "bottle" / "ground_truth" / "crack" / "000_mask.png").unlink()
    with pytest.raises(DataError, match=r"anomalous image without a mask: .*bottle/test/crack/000.png"):
        load_samples("MVTec", mvtec_root)
    samples = load_samples("MVTec", mvtec_root, allow_missing_masks=True)
    assert sum(s.label == 1 and s.mask_path is None for s in samples) == 1
    (mvtec_root / "meta.jsonl").write_text(
        json.dumps({"image_path": "bottle/test/crack/missing.png", "label": 0, "class_name": "bottle"}) + "\n"
    )
    with pytest.raises(DataError, match="image not found: .*missing.png"):
        load_samples("MVTec", mvtec_root, meta=mvtec_root / "meta.jsonl")
    (mvtec_root / "meta.jsonl").write_text(
        json.dumps(
            {
                "image_path": "bottle/test/crack/000.png",
                "label": 1,
                "class_name": "bottle",
                "mask_path": "bottle/ground_truth/crack/gone.png",
            }
        )
        + "\n"
    )
    with pytest.raises(DataError, match="mask not found: .*gone.png"):
        load_samples("MVTec", mvtec_root, meta=mvtec_root / "meta.jsonl")


def test_corrupt_image_and_mask_size_mismatch_are_found_up_front(mvtec_root):
    corrupt = mvtec_root / "screw" / "test" / "good" / "001.png"
    corrupt.write_bytes(b"\x89PNG truncated garbage")
    with pytest.raises(DataError, match=r"cannot read image .*screw/test/good/001.png.*corrupt"):
        load_samples("MVTec", mvtec_root)
    write_image(corrupt)
    write_mask(mvtec_root / "bottle" / "ground_truth" / "crack" / "000_mask.png", size=(SIZE, SIZE + 2))
    with pytest.raises(DataError, match=r"mask .*000_mask.png is 16x18 but its image .*000.png is 16x16"):
        load_samples("MVTec", mvtec_root)


def test_dataset_item_checks_files_too(mvtec_root):
    samples = load_samples("MVTec", mvtec_root, classes=["bottle"])
    write_mask(samples[-1].mask_path, size=(SIZE + 1, SIZE))  # changed after loading
    dataset = AnomalyDataset(samples, EvalTransform(8))
    with pytest.raises(DataError, match="is 17x16 but its image"):
        dataset[len(samples) - 1]
    samples[0].image_path.write_bytes(b"garbage")
    with pytest.raises(DataError, match="corrupt"):
        dataset[0]


def test_unknown_dataset_class_and_empty_set(mvtec_root, tmp_path):
    with pytest.raises(DataError, match="unknown dataset 'MVTecc'; known: MVTec, VisA"):
        load_samples("MVTecc", mvtec_root)
    with pytest.raises(DataError, match=r"unknown class\(es\) \['botle'\].*\['bottle', 'screw'\]"):
        load_samples("MVTec", mvtec_root, classes=["botle"])
    empty = tmp_path / "empty_ds"
    (empty / "cls" / "test" / "good").mkdir(parents=True)
    with pytest.raises(DataError, match="no images found"):
        load_samples("custom", empty)
    with pytest.raises(DataError, match="data root not found"):
        load_samples("MVTec", tmp_path / "nowhere")


def test_bad_jsonl_lines_name_the_line(tmp_path):
    path = tmp_path / "meta.jsonl"
    path.write_text('{"image_path": "a.png", "label": 0, "class_name": "x"}\n{"label": 1, "class_name": "x"}\n')
    with pytest.raises(DataError, match=r"meta.jsonl:2: record has no 'image_path'"):
        read_jsonl(path)
    path.write_text('{"image_path": "a.png", "label": "maybe", "class_name": "x"}\n')
    with pytest.raises(DataError, match=r"meta.jsonl:1: label must be"):
        read_jsonl(path)
    path.write_text("{not json\n")
    with pytest.raises(DataError, match=r"meta.jsonl:1: not valid json"):
        read_jsonl(path)


@pytest.mark.parametrize(
    "line, message",
    [
        ("3", r"meta.jsonl:2: expected a json object, found int"),
        ("null", r"meta.jsonl:2: expected a json object, found NoneType"),
        ('{"image_path": 5, "label": 0, "class_name": "x"}', r"meta.jsonl:2: 'image_path' must be a path"),
        ('{"image_path": "b.png", "label": 1, "class_name": "x", "mask_path": ["m"]}', r"'mask_path' must be a path"),
    ],
)
def test_jsonl_records_of_the_wrong_type_name_the_line(tmp_path, line, message):
    path = tmp_path / "meta.jsonl"
    path.write_text('{"image_path": "a.png", "label": 0, "class_name": "x"}\n' + line + "\n")
    with pytest.raises(DataError, match=message):
        read_jsonl(path)


def test_meta_json_of_the_wrong_shape_and_files_that_are_not_utf8(tmp_path):
    path = tmp_path / "meta.json"
    path.write_text(json.dumps({"test": [{"img_path": "a.png"}]}))
    with pytest.raises(DataError, match=r"meta.json: the 'test' split must map class names to lists of records"):
        read_meta_json(path)
    path.write_text(json.dumps({"test": {"x": [3]}}))
    with pytest.raises(DataError, match=r"meta.json: test/x\[0\]: expected a json object, found int"):
        read_meta_json(path)
    path.write_text(json.dumps({"test": {"x": [{"img_path": None}]}}))
    with pytest.raises(DataError, match=r"test/x\[0\]: 'img_path' must be a path"):
        read_meta_json(path)
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes('{"image_path": "caf\xe9.png", "label": 0, "class_name": "x"}\n'.encode("latin-1"))
    with pytest.raises(
        DataError, match=r"latin.jsonl: not utf-8 text \(byte 19: invalid continuation byte\); save it as utf-8"
    ):
        read_jsonl(latin)


def test_broken_links_among_the_images_are_named_not_skipped(mvtec_root, tmp_path):
    good = mvtec_root / "bottle" / "test" / "good"
    (good / "002.png").symlink_to(good / "nowhere.png")
    with pytest.raises(DataError, match=r"1 broken link\(s\) among the images: .*002.png \(a link to nothing"):
        load_samples("MVTec", mvtec_root)
    (good / "002.png").unlink()
    (good / "002.png").symlink_to(good / "002.png")  # a link to itself
    with pytest.raises(DataError, match=r"002.png \(a link to nothing, or a link loop\)"):
        read_folder(mvtec_root / "bottle")
    (good / "002.png").unlink()
    (good / "back").symlink_to(mvtec_root / "bottle")  # a folder loop
    with pytest.raises(DataError, match=r"good/back \(a link back to a folder already read: a loop\)"):
        read_folder(mvtec_root / "bottle")
    (good / "back").unlink()
    elsewhere = write_image(tmp_path / "elsewhere" / "x.png")
    (good / "linked").symlink_to(elsewhere.parent)  # a linked folder is followed
    assert elsewhere.name in [p.image_path.name for p in read_folder(mvtec_root / "bottle")]


def test_a_truncated_jpeg_fails_the_up_front_check(mvtec_root):
    image = mvtec_root / "screw" / "test" / "good" / "001.png"
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 255, (SIZE * 4, SIZE * 4, 3), dtype=np.uint8))
    noisy.save(image.with_suffix(".jpg"))
    image.unlink()
    data = image.with_suffix(".jpg").read_bytes()
    image.with_suffix(".jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cannot read image .*001.jpg: the file is corrupt, truncated"):
        load_samples("MVTec", mvtec_root)


def test_an_rgba_mask_with_an_opaque_alpha_marks_only_its_region(mvtec_root):
    mask_path = mvtec_root / "bottle" / "ground_truth" / "crack" / "000_mask.png"
    rgba = np.zeros((SIZE, SIZE, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[4:8, 4:8, :3] = 255
    Image.fromarray(rgba, mode="RGBA").save(mask_path)
    sample = next(s for s in load_samples("MVTec", mvtec_root, classes=["bottle"]) if s.mask_path == mask_path)
    item = AnomalyDataset([sample], EvalTransform(SIZE))[0]
    assert item["mask"].sum() == 16  # 4x4, not the whole image
