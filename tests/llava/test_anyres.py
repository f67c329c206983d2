"""anyres_max_N + spatial_unpad, LLaVA-NeXT's image path for OneVision: geometry, pixels, features, the model."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from crossgraft.errors import ShapeError
from crossgraft.llava import MODEL_CLASSES
from crossgraft.llava.anyres import (
    grid_shape,
    merge_tiles,
    parse_grid_pinpoints,
    resize_and_pad,
    select_best_resolution,
    unpad,
)
from crossgraft.llava.configuration import IMAGE_TOKEN_INDEX, LlavaConfigError, check_aspect_ratio
from crossgraft.llava.data import DataCollatorForSupervisedDataset, LazySupervisedDataset, Record
from crossgraft.llava.processing import ImageProcessor
from crossgraft.llava.sample import tiny_llava_config

BASE, ALT, CROSS = "llava_qwen", "llava_qwen_with_alternating_attn", "llava_qwen_with_alternating_cross_attn"

# OneVision's geometry: SigLIP-so400m at 384 px, 14-px patches → 27 × 27 = 729 features per tile,
# image_grid_pinpoints "(1x1),...,(6x6)", image_aspect_ratio anyres_max_9.
OV_TILE, OV_SIDE = 384, 27
OV_PINPOINTS = parse_grid_pinpoints("(1x1),...,(6x6)", OV_TILE)

# image (width, height) → (grid columns × rows, spliced tokens), as LLaVA-NeXT's code gives them: its
# get_anyres_image_grid_shape, unpad_image and the anyres_max branch of prepare_inputs_labels_for_multimodal,
# run on random features of these shapes (outside this project). Three worked by hand:
#   640×480: best grid 768×768 (2×2; the smallest that shows every pixel) → 54×54 map; the image is wider than the
#     map, so rows are cut: kept int(480·54/640) = 40, padding (54−40)//2 = 7 → 40×54; sqrt(40·54 / (9·729)) = 0.57
#     ≤ 1.1, no shrinking; 729 + 40·(54+1) = 2929.
#   1920×1080: 5×3 grid → 81×135; kept int(1080·135/1920) = 75 rows → 75×135; times = sqrt(75·135 / 6561) = 1.242
#     > 1.1 → bilinear to (int(75 // 1.242), int(135 // 1.242)) = 60×108; 729 + 60·109 = 7269.
#   384×384: 1×1 grid → 27×27, nothing to unpad; 729 + 27·28 = 1485 (LLaVA-NeXT keeps the base tile and the grid
#     even then; `pad` would give 729 + 1 newline = 730).
LLAVA_NEXT_TOKENS = {
    (640, 480): ((2, 2), 2929),
    (480, 640): ((2, 2), 2943),
    (384, 384): ((1, 1), 1485),
    (300, 300): ((1, 1), 1485),
    (1920, 1080): ((5, 3), 7269),
    (1080, 1920): ((3, 5), 7317),
    (1000, 200): ((3, 1), 2123),
    (200, 1000): ((1, 3), 2187),
    (999, 333): ((3, 1), 2943),
    (641, 479): ((2, 2), 2929),
    (2304, 2304): ((6, 6), 7371),
    (4000, 3000): ((6, 5), 7309),
    (100, 700): ((1, 2), 1161),
    (1280, 720): ((4, 2), 5967),
    (513, 1027): ((2, 3), 4050),
}


@pytest.mark.parametrize("size", list(LLAVA_NEXT_TOKENS), ids=[f"{w}x{h}" for w, h in LLAVA_NEXT_TOKENS])
def test_token_counts_equal_llava_next_at_onevision_sizes(size):
    grid, tokens = LLAVA_NEXT_TOKENS[size]
    assert grid_shape(size, OV_PINPOINTS, OV_TILE) == grid
    columns, rows = grid
    width = 4
    base = torch.randn(OV_SIDE**2, width)
    tiles = torch.randn(columns * rows, OV_SIDE**2, width)
    merged = merge_tiles(base, tiles, size, grid, torch.zeros(width), most_tiles=9)
    assert merged.shape == (tokens, width)
    assert torch.equal(merged[: OV_SIDE**2], base)  # the base tile first, unchanged


def test_pinpoints_parse_in_every_form_llava_next_writes():
    listed = [[OV_TILE * c, OV_TILE * r] for c in range(1, 7) for r in range(1, 7)]  # OV's config.json spells it out
    assert parse_grid_pinpoints(listed, OV_TILE) == OV_PINPOINTS
    assert parse_grid_pinpoints(json.dumps(listed), OV_TILE) == OV_PINPOINTS
    assert len(OV_PINPOINTS) == 36 and OV_PINPOINTS[1] == (384, 768)  # (width, height), width-major
    assert parse_grid_pinpoints(None, OV_TILE) == []
    with pytest.raises(LlavaConfigError, match="400x384 is not a whole number of 384-pixel tiles"):
        parse_grid_pinpoints([[400, 384]], OV_TILE)
    with pytest.raises(LlavaConfigError, match="is not a list of"):
        parse_grid_pinpoints("[[384, 384]", OV_TILE)
    for good in ("pad", "square", "anyres", "anyres_max_9", "anyres_max_1"):
        check_aspect_ratio(good)
    for bad in ("anyres_max_0", "anyres_max_", "highres", "crop_split"):
        with pytest.raises(LlavaConfigError, match="is not supported; use pad, square, anyres or anyres_max_N"):
            check_aspect_ratio(bad)


def test_best_resolution_prefers_showing_pixels_then_wasting_least():
    assert select_best_resolution((640, 480), OV_PINPOINTS) == (768, 768)  # shows all 307,200 pixels
    assert select_best_resolution((300, 300), OV_PINPOINTS) == (384, 384)  # all candidates show all: least waste
    assert select_best_resolution((5000, 5000), OV_PINPOINTS) == (2304, 2304)  # none shows all: the most


def position_map(height, width):
    """(1, H, W) whose value at (r, c) is r·1000 + c, so a cut can be read off its contents."""
    rows = torch.arange(height)[:, None] * 1000
    return (rows + torch.arange(width)[None, :]).float()[None]


@pytest.mark.parametrize(
    "image_size, kept_rows, kept_columns",
    [
        ((641, 479), (7, 47), (0, 54)),  # wide, odd: int(479·54/641) = 40 rows kept, 7 cut above and below
        ((479, 641), (0, 54), (7, 47)),  # tall, odd: the columns are cut instead
        # int(490·54/640) = 41 rows; the cut (54−41)//2 = 6 is taken from both sides, so 42 rows stay: LLaVA-NeXT's
        # own arithmetic, kept as it is
        ((640, 490), (6, 48), (0, 54)),
        ((512, 512), (0, 54), (0, 54)),  # the same aspect: nothing is cut
    ],
)
def test_unpad_cuts_exactly_llava_next_rows_on_odd_sizes(image_size, kept_rows, kept_columns):
    feature_map = position_map(54, 54)
    cut = unpad(feature_map, image_size)
    assert torch.equal(cut, feature_map[:, kept_rows[0] : kept_rows[1], kept_columns[0] : kept_columns[1]])


def test_merged_rows_follow_the_grid_and_end_in_a_newline():
    """2×1 grid of 2×2-patch tiles: the map is [tile0 | tile1] side by side; each row then gets the newline."""
    side, width = 2, 1
    base = torch.full((side * side, width), -1.0)
    tiles = torch.arange(8.0).view(2, side * side, width)  # tile 0: 0..3, tile 1: 4..7, row-major in each tile
    newline = torch.tensor([99.0])
    merged = merge_tiles(base, tiles, (200, 100), (2, 1), newline, most_tiles=None)  # aspect 2:1, nothing cut
    assert merged[4:, 0].tolist() == [0, 1, 4, 5, 99, 2, 3, 6, 7, 99]


def test_features_beyond_n_tiles_are_shrunk_bilinearly_and_max_n_decides():
    side = 27
    tiles = torch.randn(36, side * side, 2)
    base = torch.randn(side * side, 2)
    full = merge_tiles(base, tiles, (2304, 2304), (6, 6), torch.zeros(2), most_tiles=None)
    nine = merge_tiles(base, tiles, (2304, 2304), (6, 6), torch.zeros(2), most_tiles=9)
    many = merge_tiles(base, tiles, (2304, 2304), (6, 6), torch.zeros(2), most_tiles=36)
    assert full.shape[0] == 729 + 162 * 163  # anyres: no shrinking
    assert nine.shape[0] == 729 + 81 * 82  # times = 2: 162 → 81
    assert many.shape[0] == full.shape[0]  # within N tiles: as is


# ------------------------------------------------------------------------------------------------- pixels
def processor(aspect_ratio="anyres_max_9", pinpoints="(1x1),...,(3x3)", size=32):
    return ImageProcessor(size, (0.5,) * 3, (0.5,) * 3, aspect_ratio, tuple(parse_grid_pinpoints(pinpoints, size)))


def random_image(width, height, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_anyres_pixels_are_the_base_image_then_the_tiles_of_the_padded_grid():
    image = random_image(80, 60)  # best of the 32-px pinpoints: 96×64 (3×2), shows every pixel
    processed = processor()(image)
    assert processed.size == (80, 60)
    assert processed.tiles.shape == (1 + 6, 3, 32, 32)
    square = processor("square")(image).tiles[0]
    assert torch.equal(processed.tiles[0], square)  # the base tile: the whole image resized (not padded)
    grid = resize_and_pad(image, (96, 64))
    assert grid.size == (96, 64)
    expected = processor("square")(grid.crop((32, 32, 64, 64))).tiles[0]  # row 1, column 1
    assert torch.equal(processed.tiles[1 + 3 + 1], expected)
    # 80×60 scaled by 64/60 fills the height: width ceil(80·64/60) = 86, centred, black columns 5 px left
    assert np.asarray(grid)[:, :5].max() == 0 and np.asarray(grid)[:, 5].max() > 0


def test_a_one_by_one_grid_repeats_the_square_path():
    """pinpoints of one tile: the grid tile is the image resized, exactly today's `square` tile, and its features
    are today's square features laid out in rows with a newline each."""
    torch.manual_seed(0)
    model = MODEL_CLASSES[BASE](tiny_llava_config(BASE, _tokenizer(), image_aspect_ratio="anyres")).eval()
    model.config.image_grid_pinpoints = [[32, 32]]
    image = random_image(50, 50)
    tiles = processor("anyres", [[32, 32]])(image).tiles
    square = processor("square")(image).tiles
    assert torch.equal(tiles[0], square[0]) and torch.equal(tiles[1], square[0])
    with torch.no_grad():
        merged = model.model.image_features([tiles], [(50, 50)])[0]
        today = model.model.image_features(square)[0]  # one tile: its 16 features + one newline
        patches = model.model.encode_images(square)[0]  # (16, D)
    assert today.shape[0] == 16 + 1 and torch.equal(today[:16], patches)
    newline = model.model.image_newline
    rows = torch.cat([patches.view(4, 4, -1), newline.expand(4, 1, -1)], dim=1).reshape(20, -1)
    assert torch.allclose(merged, torch.cat([patches, rows]), atol=1e-6)


# ------------------------------------------------------------------------------------------------- model
def _tokenizer():
    from crossgraft.llava.sample import build_tiny_tokenizer

    return build_tiny_tokenizer()


def anyres_model(kind, **overrides):
    torch.manual_seed(0)
    config = tiny_llava_config(
        kind, _tokenizer(), image_aspect_ratio="anyres_max_4", image_grid_pinpoints="(1x1),...,(3x3)", **overrides
    )
    return MODEL_CLASSES[kind](config).eval()


def write_records(tmp_path):
    for name, (w, h) in {"wide.png": (90, 30), "tall.png": (40, 70), "small.png": (20, 20)}.items():
        random_image(w, h).save(tmp_path / name)
    records = [
        {"id": "wide", "image": "wide.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A wide one."}]},
        {"id": "tall", "image": "tall.png", "conversations": [
            {"from": "human", "value": "Describe <image> please"}, {"from": "gpt", "value": "Tall."}]},
        {"id": "two", "image": ["small.png", "wide.png"], "conversations": [
            {"from": "human", "value": "<image> and <image>?"}, {"from": "gpt", "value": "Two."}]},
        {"id": "text", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]},
    ]  # fmt: skip
    return [Record(record, str(tmp_path / "data.json"), index) for index, record in enumerate(records)]


def expected_image_tokens(size, grid, side=4, most_tiles=4):
    """LLaVA-NeXT's count written out on its own (not through merge_tiles): the grid's map, unpadded (the padding
    taken from both sides), shrunk when past `most_tiles` tiles by 10%, one newline per row, after the base tile."""
    width, height = size
    rows, columns = grid[1] * side, grid[0] * side
    if width / height > columns / rows:
        rows -= 2 * ((rows - int(height * columns / width)) // 2)
    else:
        columns -= 2 * ((columns - int(width * rows / height)) // 2)
    times = math.sqrt(rows * columns / (most_tiles * side**2))
    if times > 1.1:
        rows, columns = int(rows // times), int(columns // times)
    return side * side + rows * (columns + 1)


@pytest.mark.parametrize("kind, overrides", [(BASE, {}), (ALT, {}), (CROSS, {"xattn_every_n_layers": 2})])
def test_variable_image_tokens_flow_through_collator_masks_and_training(tmp_path, kind, overrides):
    model = anyres_model(kind, **overrides)
    records = write_records(tmp_path)
    tokenizer = _tokenizer()
    dataset = LazySupervisedDataset(records, tokenizer, ImageProcessor.from_config(model.config), None)
    items = [dataset[i] for i in range(len(records))]
    assert [len(t) for t in items[0]["images"]] == [1 + 3]  # 90×30: a 3×1 grid
    assert [len(t) for t in items[1]["images"]] == [1 + 6]  # 40×70: 64×96 is the smallest that shows it all
    assert [len(t) for t in items[2]["images"]] == [1, 1]  # several images: one padded tile each
    assert "images" not in items[3]
    batch = DataCollatorForSupervisedDataset(tokenizer.pad_token_id)(items)
    assert len(batch["images"]) == 4 and batch["image_sizes"].tolist() == [[90, 30], [40, 70], [20, 20], [90, 30]]

    spliced = model.model.prepare_multimodal_inputs(
        batch["input_ids"], batch["attention_mask"], batch["labels"], batch["images"], image_sizes=batch["image_sizes"]
    )
    expected = [expected_image_tokens((90, 30), (3, 1)), expected_image_tokens((40, 70), (2, 3)), 2 * (16 + 1), 0]
    assert spliced.image_token_mask.sum(dim=1).tolist() == expected
    text = (batch["input_ids"] != IMAGE_TOKEN_INDEX) & batch["attention_mask"].bool()
    assert spliced.attention_mask.sum(dim=1).tolist() == [t + e for t, e in zip(text.sum(dim=1).tolist(), expected)]
    if kind == CROSS:  # the gated blocks read every spliced image feature, newlines included
        assert spliced.image_context_mask.sum(dim=1).tolist() == expected

    model.train()
    output = model(**batch)
    assert torch.isfinite(output.loss)
    output.loss.backward()
    assert model.model.image_newline.grad is not None and model.model.image_newline.grad.abs().sum() > 0


def test_cached_generation_with_anyres_images_equals_full_forward(tmp_path):
    model = anyres_model(ALT)
    records = write_records(tmp_path)[:3]
    tokenizer = _tokenizer()
    dataset = LazySupervisedDataset(records, tokenizer, ImageProcessor.from_config(model.config), None)
    batch = DataCollatorForSupervisedDataset(tokenizer.pad_token_id)([dataset[i] for i in range(3)])
    options = dict(max_new_tokens=6, eos_token_id=[], pad_token_id=0, output_scores=True)
    images, sizes = batch["images"], batch["image_sizes"]
    cached = model.decode(batch["input_ids"], batch["attention_mask"], images, image_sizes=sizes, **options)
    full = model.decode(
        batch["input_ids"], batch["attention_mask"], images, image_sizes=sizes, use_cache=False, **options
    )
    assert torch.equal(cached.tokens, full.tokens)
    assert (cached.scores - full.scores).abs().max() <= 1e-5


def test_tiles_that_do_not_fit_the_model_are_refused_with_the_reason(tmp_path):
    model = anyres_model(BASE)
    tiles = processor()(random_image(90, 30)).tiles  # 1 + 3 tiles
    ids = torch.tensor([[5, IMAGE_TOKEN_INDEX, 6]])
    with pytest.raises(ShapeError, match="no image_sizes entry"):
        model.model.prepare_multimodal_inputs(ids, None, None, [tiles])
    with pytest.raises(ShapeError, match=r"\(90x90\) comes as 4 tiles, but .* give it a 3x3 grid: 1 \+ 9 tiles"):
        model.model.prepare_multimodal_inputs(ids, None, None, [tiles], image_sizes=[(90, 90)])
    pad_model = MODEL_CLASSES[BASE](tiny_llava_config(BASE, _tokenizer())).eval()
    with pytest.raises(ShapeError, match="merges tiles only for image_aspect_ratio anyres"):
        pad_model.model.prepare_multimodal_inputs(ids, None, None, [tiles], image_sizes=[(90, 30)])


def test_anyres_without_pinpoints_or_with_another_merge_type_is_refused():
    config = tiny_llava_config(BASE, _tokenizer())
    with pytest.raises(LlavaConfigError, match="anyres_max_9 needs image_grid_pinpoints .* --image_grid_pinpoints"):
        ImageProcessor.from_config(config, "anyres_max_9")
    assert ImageProcessor.from_config(config, "anyres_max_9", "(1x1),...,(2x2)").grid_pinpoints[-1] == (64, 64)
    flat = tiny_llava_config(BASE, _tokenizer(), mm_patch_merge_type="flat", image_grid_pinpoints=[[32, 32]])
    with pytest.raises(LlavaConfigError, match="merged with mm_patch_merge_type spatial_unpad"):
        ImageProcessor.from_config(flat, "anyres")


# --------------------------------------------------------------------------------------------------- runs
def test_a_run_trains_with_anyres_records_it_and_evaluates_the_same_way(tiny_models, llava_sample, tmp_path):
    from helpers import short_llava_run

    from crossgraft.cli import main
    from crossgraft.llava.loading import load_model

    out = tmp_path / "run"
    flags = short_llava_run(tiny_models[BASE], llava_sample, out, "--max_steps", "2", "--save_strategy", "no")
    flags += ["--image_aspect_ratio", "anyres_max_4", "--image_grid_pinpoints", "(1x1),...,(2x2)"]
    assert main(["llava", "train", *flags]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["image_aspect_ratio"] == "anyres_max_4"
    assert saved["image_grid_pinpoints"] == [[32, 32], [32, 64], [64, 32], [64, 64]]
    assert (
        "images: anyres_max_4, a base tile plus a grid of 32-pixel tiles (1x1 to 2x2"
        in (out / "train_alternating.log").read_text()
    )
    # evaluation reads the run's config: 64×48 images come as 1 + 2×2 tiles, without a flag
    evaluate_flags = ["--model_name_or_path", str(out), "--data_path", str(llava_sample), "--max_new_tokens", "2"]
    assert main(["llava", "evaluate", *evaluate_flags]) == 0
    model = load_model(str(out))
    processor = ImageProcessor.from_config(model.config)
    assert processor.aspect_ratio == "anyres_max_4" and len(processor(random_image(64, 48)).tiles) == 5


def test_anyres_without_pinpoints_is_refused_before_anything_is_written(tiny_models, llava_sample, tmp_path, capsys):
    from helpers import short_llava_run

    from crossgraft.cli import main

    out = tmp_path / "never"
    flags = short_llava_run(tiny_models[BASE], llava_sample, out, "--max_steps", "1")
    assert main(["llava", "train", *flags, "--image_aspect_ratio", "anyres_max_9"]) == 2
    assert "anyres_max_9 needs image_grid_pinpoints" in capsys.readouterr().err
    assert not out.exists()


def test_the_counted_length_of_every_record_equals_the_models_splice(tmp_path):
    from crossgraft.llava.data import LazySupervisedDataset, LengthLimit
    from crossgraft.llava.processing import ImageProcessor

    model = anyres_model("llava_qwen")
    tokenizer = _tokenizer()
    image_processor = ImageProcessor.from_config(model.config)
    limit = LengthLimit(10_000, model.config.vision_tower_config().patch_size, True)
    dataset = LazySupervisedDataset(write_records(tmp_path), tokenizer, image_processor, None, length_limit=limit)
    collate = DataCollatorForSupervisedDataset(tokenizer.pad_token_id)
    for index, record in enumerate(dataset.records):
        images = [dataset.read_image(record, name) for name in record.image_paths]
        counted, first_learned = dataset.needed_length(record, images)
        item = dataset[index]
        with torch.no_grad():
            spliced = model.model.prepare_multimodal_inputs(**{k: v for k, v in collate([item]).items()})
        assert counted == int(spliced.attention_mask.sum()), record.data["id"]
        learned = (spliced.labels[0] != -100).nonzero()
        assert first_learned == int(learned[0]), record.data["id"]


def test_a_record_cut_before_its_answer_is_skipped_with_its_needed_length(tmp_path, caplog):
    from crossgraft.llava.data import LazySupervisedDataset, LengthLimit, LlavaDataError
    from crossgraft.llava.processing import ImageProcessor

    model = anyres_model("llava_qwen")
    records = write_records(tmp_path)
    image_processor = ImageProcessor.from_config(model.config)
    patch = model.config.vision_tower_config().patch_size

    def dataset_cut_at(limit):
        limited = LengthLimit(limit, patch, True)
        return LazySupervisedDataset(records, _tokenizer(), image_processor, None, length_limit=limited)

    probe = dataset_cut_at(10**6)
    firsts = [probe.needed_length(r, [probe.read_image(r, n) for n in r.image_paths])[1] for r in records]
    cut_at = firsts[0]  # the first record's first answer token falls just past the limit
    dataset = dataset_cut_at(cut_at)
    with caplog.at_level("WARNING"):
        item = dataset[0]
    kept = next(i for i, first in enumerate(firsts) if first < cut_at)
    assert torch.equal(item["input_ids"], probe[kept]["input_ids"])
    assert f"skipped {records[0].where}: model_max_length {cut_at} cuts it before its first answer token" in caplog.text
    nothing = dataset_cut_at(1)
    with pytest.raises(LlavaDataError, match="every record is cut before its first answer token"):
        nothing[0]
