"""Panels and contact sheets: every tile where the layout says, drawn from the maps, masks and scores given."""

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from crossgraft.anomaly.config import DataConfig, EvalConfig
from crossgraft.anomaly.data import load_data
from crossgraft.anomaly.evaluate import evaluate
from crossgraft.anomaly.visualize import (
    ANOMALOUS_FRAME,
    CONTOUR,
    EMPTY_TILE,
    NORMAL_FRAME,
    SHEET_COLUMNS,
    SHEET_FRAME,
    SHEET_HEADER,
    THUMB,
    TILE_MIN,
    PanelText,
    SheetEntry,
    heatmap_rgb,
    jet,
    load_rgb,
    panel_layout,
    prediction_panel_text,
    render_contact_sheet,
    render_panel,
    resize_map,
    resize_mask,
    save_panel,
    sheet_cell,
    verdict,
)

TEXT = PanelText("000.png  |  stripes / scratch", "image score 0.8", "colours: 0.1 to 0.9")


def inputs(side=64):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (80, 100, 3), dtype=np.uint8)
    score_map = rng.random((side, side)).astype(np.float32)
    mask = np.zeros((side, side), dtype=bool)
    mask[20:40, 10:30] = True
    return image, score_map, mask


def crop(picture, box):
    top, left, bottom, right = box
    return picture[top:bottom, left:right]


def test_a_panel_has_its_four_tiles_scale_and_outline():
    image, score_map, mask = inputs()
    low, high = 0.1, 0.9
    panel = render_panel(image, score_map, mask, low, high, TEXT)
    layout = panel_layout(64)
    side = layout.tile
    assert side == TILE_MIN and panel.shape == (layout.height, layout.width, 3)

    truth = resize_mask(mask, side)
    assert np.array_equal(crop(panel, layout.tile_box(1)), np.repeat(truth[..., None], 3, 2).astype(np.uint8) * 255)
    heat = heatmap_rgb(resize_map(score_map, side), low, high)
    assert np.array_equal(crop(panel, layout.tile_box(2)), heat)
    # the overlay: the mask's border drawn in the outline colour, the rest half image and half heat map
    picture, overlay = crop(panel, layout.tile_box(0)), crop(panel, layout.tile_box(3))
    border = truth & ~ndimage.binary_erosion(truth)
    assert (overlay[border] == CONTOUR).all()
    blend = (0.5 * picture.astype(np.float32) + 0.5 * heat.astype(np.float32)).astype(np.uint8)
    away = ~ndimage.binary_dilation(truth, iterations=2)
    assert np.array_equal(overlay[away], blend[away])
    # the colour bar runs from the high end (top) to the low end (bottom)
    top, left, bottom, right = layout.bar_box()
    assert np.array_equal(panel[top, left], jet(np.array([255], np.uint8))[0])
    assert np.array_equal(panel[bottom - 1, right - 1], jet(np.array([0], np.uint8))[0])
    # each title line holds text, and each tile a caption
    for line in range(3):
        assert (panel[line * layout.line_height + 2 : (line + 1) * layout.line_height + 2] < 100).any()
    for index in range(4):
        _, tile_left, tile_bottom, tile_right = layout.tile_box(index)
        assert (panel[tile_bottom : layout.height, tile_left:tile_right] < 100).any()


def test_a_normal_image_gets_a_labelled_empty_ground_truth_tile():
    image, score_map, _ = inputs()
    panel = render_panel(image, score_map, None, 0.0, 1.0, TEXT)
    layout = panel_layout(64)
    truth_tile = crop(panel, layout.tile_box(1))
    empty = (truth_tile == EMPTY_TILE).all(axis=2)
    assert 0.9 < empty.mean() < 1.0  # the label is written on it
    assert not (crop(panel, layout.tile_box(3)) == CONTOUR).all(axis=2).any()  # nothing outlined
    # an all-zero mask is no mask
    assert np.array_equal(render_panel(image, score_map, np.zeros((64, 64)), 0.0, 1.0, TEXT), panel)


def test_tiles_keep_large_maps_at_their_size_and_panels_are_written(tmp_path):
    assert panel_layout(518).tile == 518
    image, score_map, mask = inputs()
    Image.fromarray(image).save(tmp_path / "a.png")
    path = save_panel(load_rgb(tmp_path / "a.png"), score_map, tmp_path / "out" / "a_panel.png", TEXT, mask)
    layout = panel_layout(64)
    assert Image.open(path).size == (layout.width, layout.height)


def test_a_verdict_states_the_comparison_that_holds():
    f1 = "the class's F1-max threshold"
    assert verdict(0.379, 0.6434, 1, f1, True) == "normal: score 0.379 < the class's F1-max threshold 0.6434 (missed)"
    assert verdict(0.7, 0.6434, 1, f1, True) == "ANOMALOUS: score 0.7 >= the class's F1-max threshold 0.6434 (correct)"
    assert verdict(0.5, 0.5, 0, "threshold", True).endswith(">= threshold 0.5 (false alarm)")  # ties: anomalous
    assert verdict(0.5, 0.5, None, "threshold", False) == "normal: score 0.5 <= threshold 0.5"  # ties: normal
    assert verdict(2.5, 2, None, "threshold", False) == "ANOMALOUS: score 2.5 > threshold 2"


def test_predict_panels_name_the_image_by_its_folder_and_say_the_colour_unit():
    text = prediction_panel_text("missing/000.png", "bottle", 0.379, 0.6434, -0.2, 0.9)
    assert text.title.startswith("missing/000.png") and "normal: score 0.379 <= threshold 0.6434" in text.detail
    assert "map values -0.2 to 0.9 (the image score's unit)" in text.scale


def cell_origin(rank):
    width, height = sheet_cell()
    row, column = divmod(rank, SHEET_COLUMNS)
    return SHEET_HEADER + row * height, column * width


def test_the_contact_sheet_ranks_by_score_and_marks_the_wrong_side_of_the_threshold():
    rng = np.random.default_rng(1)
    scores = [0.9, 0.2, 0.7, 0.4, 0.65, 0.1, 0.3, 0.8, 0.55, 0.05]
    labels = [1, 0, 0, 1, 1, 0, 0, 1, 0, 0]
    entries = [
        SheetEntry(f"{i}.png", rng.integers(0, 256, (THUMB, THUMB, 3), dtype=np.uint8), s, y)
        for i, (s, y) in enumerate(zip(scores, labels))
    ]
    threshold = 0.5
    sheet = render_contact_sheet(entries, "stripes: 10 test images", threshold)
    width, height = sheet_cell()
    assert sheet.shape[0] == SHEET_HEADER + 2 * height  # 10 images in rows of 8
    for rank, index in enumerate(np.argsort(scores)[::-1]):
        top, left = cell_origin(rank)
        frame = sheet[top, left + width // 2]
        assert tuple(frame) == (ANOMALOUS_FRAME if labels[index] else NORMAL_FRAME)
        inner = sheet[top + SHEET_FRAME : top + SHEET_FRAME + THUMB, left + SHEET_FRAME : left + SHEET_FRAME + THUMB]
        assert np.array_equal(inner, entries[index].overlay)
        caption = sheet[top + THUMB + 2 * SHEET_FRAME : top + height, left : left + width]
        red = (np.abs(caption.astype(int) - ANOMALOUS_FRAME).sum(axis=2) < 60).any()
        wrong = (scores[index] >= threshold) != bool(labels[index])
        assert red == wrong, (rank, scores[index], labels[index])


def test_evaluation_draws_every_image_and_a_sheet_per_class(trained_run, synthetic_root, tmp_path):
    data = DataConfig(dataset="synthetic", data_root=synthetic_root, classes=["stripes"])
    evaluate(EvalConfig(data=data, save_path=trained_run, visualize=True, plots=False, out=tmp_path))
    samples = load_data(data, "test")
    panels = sorted((tmp_path / "visualize" / "stripes").glob("*.png"))
    assert len(panels) == len(samples)
    layout = panel_layout(64)  # the quick runs' image size
    for path in panels:
        panel = np.asarray(Image.open(path).convert("RGB"))
        assert panel.shape == (layout.height, layout.width, 3)
        truth = crop(panel, layout.tile_box(1))
        if path.name.startswith("good_"):
            assert (truth == EMPTY_TILE).all(axis=2).mean() > 0.9
        else:
            assert (truth == 255).all(axis=2).any() and (truth == 0).all(axis=2).any()
    sheet = np.asarray(Image.open(tmp_path / "visualize" / "stripes_sheet.png").convert("RGB"))
    frames = [tuple(sheet[top, left + 2]) for top, left in map(cell_origin, range(len(samples)))]
    assert frames.count(ANOMALOUS_FRAME) == sum(s.label for s in samples)
    assert frames.count(NORMAL_FRAME) == sum(1 - s.label for s in samples)
    assert not (tmp_path / "plots").exists()


@pytest.mark.parametrize("text", ["naïve ✓ café"])
def test_text_outside_ascii_is_drawn_not_an_error(text):
    image, score_map, mask = inputs()
    render_panel(image, score_map, mask, 0, 1, PanelText(text, text, text))
