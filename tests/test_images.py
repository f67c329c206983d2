"""The image reader both families share: 16-bit images scaled (not white), masks from their values (not alpha),
truncated files and decompression bombs named, atomic image writes."""

import numpy as np
import pytest
from PIL import Image

from crossgraft.errors import DataError, OutputError
from crossgraft.images import image_size, read_mask_values, read_rgb, save_image, set_max_pixels


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
        image_size(tmp_path / "cut.jpg")


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
