"""The image reader both families share: 16-bit images scaled (not white), masks from their values (not alpha),
truncated files and decompression bombs named, atomic image writes."""

import numpy as np
import pytest
from PIL import Image

from crossgraft.errors import DataError, OutputError
from crossgraft.images import check_image_file, mask_values, read_mask_values, read_rgb, save_image, set_max_pixels


def test_a_16_bit_grey_image_is_scaled_not_clipped(tmp_path):
    values = np.full((8, 8), 30000, dtype=np.uint16)
    values[0, 0] = 65535
    Image.fromarray(values).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode.startswith("I")
    rgb = np.asarray(read_rgb(tmp_path / "grey16.png"))
    assert rgb.shape == (8, 8, 3) and rgb[1, 1].tolist() == [117, 117, 117] and rgb[0, 0].tolist() == [255] * 3
    assert np.asarray(Image.open(tmp_path / "grey16.png").convert("RGB"))[1, 1].tolist() == [255] * 3  # PIL's own


def test_a_mask_is_read_from_its_values_not_from_alpha(tmp_path):
    rgba = np.zeros((6, 6, 4), dtype=np.uint8)
    rgba[..., 3] = 255  # opaque everywhere
    rgba[2:4, 2:4, :3] = 255  # the defect
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "mask.png")
    values = read_mask_values(tmp_path / "mask.png")
    assert (values != 0).sum() == 4
    grey_alpha = np.zeros((6, 6, 2), dtype=np.uint8)
    grey_alpha[..., 1] = 255
    grey_alpha[0, :, 0] = 1
    Image.fromarray(grey_alpha, mode="LA").save(tmp_path / "la.png")
    assert (read_mask_values(tmp_path / "la.png") != 0).sum() == 6
    palette = Image.fromarray(np.array([[0, 2], [0, 1]], dtype=np.uint8), mode="P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    palette.save(tmp_path / "ids.png")
    assert read_mask_values(tmp_path / "ids.png").tolist() == [[0, 2], [0, 1]]  # instance ids as stored


def test_a_truncated_file_fails_on_its_decode_naming_it(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "a.jpg")
    data = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with Image.open(tmp_path / "cut.jpg") as header_only:
        header_only.verify()  # the header alone looks fine
    with pytest.raises(DataError, match=r"cannot read image .*cut.jpg: the file is corrupt, truncated"):
        check_image_file(tmp_path / "cut.jpg")


def test_a_decompression_bomb_is_named_with_the_limit_and_the_flag(tmp_path):
    Image.new("RGB", (200, 100)).save(tmp_path / "big.png")
    try:
        set_max_pixels(10_000)
        with pytest.raises(
            DataError,
            match=r"big.png has more pixels than the decompression-bomb limit of 10,000 .*"
            r"--max_image_pixels",
        ):
            read_rgb(tmp_path / "big.png")
        set_max_pixels(40_000)
        assert read_rgb(tmp_path / "big.png").size == (200, 100)
    finally:
        set_max_pixels(None)


def test_images_are_written_atomically_and_bad_targets_are_named(tmp_path):
    path = save_image(Image.new("RGB", (4, 4), (10, 20, 30)), tmp_path / "out" / "a.png")
    assert np.asarray(Image.open(path))[0, 0].tolist() == [10, 20, 30]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a.png"]  # no temporary file left
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match=r"cannot create the folder .*file/sub: part of its path is a file"):
        save_image(Image.new("RGB", (4, 4)), tmp_path / "file" / "sub" / "a.png")
    with pytest.raises(OutputError, match="unknown image file type '.xyz'"):
        save_image(Image.new("RGB", (4, 4)), tmp_path / "a.xyz")


def one_percent_mask() -> Image.Image:
    values = np.zeros((100, 100), dtype=np.uint8)
    values[45:55, 45:55] = 255  # a 1% defect, white on black
    return Image.fromarray(values, mode="L")


@pytest.mark.parametrize(
    ("mode", "suffix"),
    [
        ("1", ".png"), ("L", ".png"), ("P", ".png"), ("I", ".tif"), ("I;16", ".png"), ("F", ".tif"),
        ("LA", ".png"), ("RGB", ".png"), ("RGBA", ".png"), ("CMYK", ".tif"), ("CMYK", ".jpg"),
        ("YCbCr", ".jpg"), ("LAB", ".tif"),
    ],
)  # fmt: skip
def test_a_mask_of_any_mode_reads_as_what_it_shows(tmp_path, mode, suffix):
    mask = one_percent_mask()
    converted = mask.convert("RGB").convert(mode) if mode in ("CMYK", "YCbCr", "HSV") else mask.convert(mode)
    if mode == "I;16":
        converted = Image.fromarray(np.asarray(mask).astype(np.uint16) * 257)
    path = tmp_path / f"mask{suffix}"
    converted.save(path)
    assert Image.open(path).mode in (mode, "I;16B") or suffix == ".jpg", Image.open(path).mode
    anomalous = (read_mask_values(path) != 0).mean()
    if suffix == ".jpg":  # lossy: the defect's edges blur into a few neighbours
        anomalous = (read_mask_values(path) > 127).mean()
    assert anomalous == pytest.approx(0.01, abs=0.002), f"{mode} {suffix}: {anomalous:.1%} anomalous"


@pytest.mark.parametrize("mode", ["PA", "HSV"])  # modes Pillow reads but does not write: the image itself
def test_a_mask_image_of_a_mode_pillow_cannot_write_reads_as_what_it_shows(mode):
    converted = one_percent_mask().convert("RGB").convert(mode) if mode == "HSV" else one_percent_mask().convert(mode)
    assert converted.mode == mode
    assert (mask_values(converted) != 0).mean() == 0.01


@pytest.mark.parametrize(
    ("mode", "values", "message"),
    [
        ("F", np.full((8, 8), 0.5, dtype=np.float32), "floating-point images are not supported"),
        ("I", np.full((8, 8), 70_000, dtype=np.int32), "32-bit integer image .* outside 0..65535"),
    ],
)
def test_inspection_reads_an_image_exactly_as_training_does(tmp_path, mode, values, message):
    from crossgraft.anomaly.data.records import Sample, verify_image_files
    from crossgraft.anomaly.data.transforms import load_image

    path = tmp_path / "image.tif"
    Image.fromarray(values, mode=mode).save(path)
    with pytest.raises(DataError, match=message):
        load_image(path)  # what training and testing do
    with pytest.raises(DataError, match=message):
        verify_image_files([Sample(image_path=path, label=0, class_name="a", defect_type="good")])
