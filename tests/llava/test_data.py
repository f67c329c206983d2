"""Record formats, validation messages, the Qwen template's labels, images and the collator."""

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from crossgraft.errors import DataError
from crossgraft.images import set_max_pixels
from crossgraft.llava.config import DataArguments
from crossgraft.llava.configuration import IGNORE_INDEX, IMAGE_TOKEN_INDEX, LlavaConfigError
from crossgraft.llava.data import (
    LlavaDataError,
    load_records,
    make_supervised_data_module,
    read_records,
    tokenize_conversation,
)
from crossgraft.llava.processing import ImageProcessor


def record(index, caption="a caption", image=None):
    value = ("<image>\n" if image else "") + "Describe."
    data = {"id": f"r{index}", "conversations": [{"from": "human", "value": value}, {"from": "gpt", "value": caption}]}
    if image:
        data["image"] = image
    return data


def write_json(path, records):
    path.write_text(json.dumps(records))
    return path


def test_json_jsonl_and_brace_lists(tmp_path):
    write_json(tmp_path / "a.json", [record(i) for i in range(3)])
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(record(i)) for i in range(3, 5)) + "\n\n")
    write_json(tmp_path / "c.json", [record(9)])
    assert [r.data["id"] for r in read_records(str(tmp_path / "b.jsonl"))] == ["r3", "r4"]
    records = read_records(str(tmp_path / "{a,c}.json"))
    assert [r.data["id"] for r in records] == ["r0", "r1", "r2", "r9"]
    assert records[3].source.endswith("c.json") and records[3].index == 0


def test_yaml_sampling_strategies_are_seeded(tmp_path):
    write_json(tmp_path / "many.json", [record(i) for i in range(20)])
    spec = {
        "datasets": [
            {"json_path": "many.json", "sampling_strategy": "first:3"},
            {"json_path": "many.json", "sampling_strategy": "end:10%"},
            {"json_path": str(tmp_path / "many.json"), "sampling_strategy": "random:25%"},
            {"json_path": "many.json", "sampling_strategy": "random:4"},
        ]
    }
    (tmp_path / "mix.yaml").write_text(yaml.safe_dump(spec))
    ids = [r.data["id"] for r in read_records(str(tmp_path / "mix.yaml"), seed=3)]
    assert ids[:3] == ["r0", "r1", "r2"] and ids[3:5] == ["r18", "r19"]
    assert len(ids) == 3 + 2 + 5 + 4
    assert ids == [r.data["id"] for r in read_records(str(tmp_path / "mix.yaml"), seed=3)]
    other = [r.data["id"] for r in read_records(str(tmp_path / "mix.yaml"), seed=4)]
    assert other[:5] == ids[:5] and other[5:] != ids[5:]

    (tmp_path / "bad.yaml").write_text(
        yaml.safe_dump({"datasets": [{"json_path": "many.json", "sampling_strategy": "some:3"}]})
    )
    with pytest.raises(LlavaDataError, match=r"bad.yaml, datasets\[0\]: sampling_strategy 'some:3'"):
        read_records(str(tmp_path / "bad.yaml"))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r["conversations"].reverse(), "the first turn must be from the human"),
        (lambda r: r["conversations"].append({"from": "gpt", "value": "again"}), "turns must alternate"),
        (lambda r: r["conversations"][1].update(value="  "), "a gpt turn \\(caption\\) is empty"),
        (lambda r: r.update(image="x.png"), "0 <image> placeholder\\(s\\) but 1 image"),
        (lambda r: r["conversations"][1].update(value="<image> hi"), "a gpt turn contains <image>"),
        (lambda r: r["conversations"][0].update(speaker="human"), None),
        (lambda r: r["conversations"][0].pop("from"), "turn 0 must be"),
        (lambda r: r.pop("conversations"), "'conversations' must be a non-empty list"),
    ],
)
def test_bad_records_name_file_and_record(tmp_path, change, message):
    records = [record(0), record(1)]
    change(records[1])
    path = write_json(tmp_path / "data.json", records)
    if message is None:
        assert len(load_records(str(path))) == 2  # extra keys are fine
        return
    with pytest.raises(LlavaDataError, match=rf"data.json, record 1 \(id r1\): {message}"):
        load_records(str(path))


def test_unreadable_files_are_named(tmp_path):
    (tmp_path / "broken.jsonl").write_text(json.dumps(record(0)) + "\n{not json\n")
    with pytest.raises(LlavaDataError, match="broken.jsonl:2: not valid json"):
        read_records(str(tmp_path / "broken.jsonl"))
    with pytest.raises(LlavaDataError, match="data file not found"):
        read_records(str(tmp_path / "absent.json"))
    with pytest.raises(LlavaDataError, match="unknown data file type"):
        read_records(str(tmp_path / "data.csv"))
    write_json(tmp_path / "object.json", {"a": 1})
    with pytest.raises(LlavaDataError, match="expected a JSON list"):
        read_records(str(tmp_path / "object.json"))


def test_qwen_template_learns_only_the_answers(tiny_tokenizer):
    turns = [
        {"from": "human", "value": "<image>\nWhat is it?"},
        {"from": "gpt", "value": "A red circle."},
        {"from": "human", "value": "And the background?"},
        {"from": "gpt", "value": "White."},
    ]
    input_ids, labels = tokenize_conversation(turns, tiny_tokenizer)
    assert len(input_ids) == len(labels)
    assert input_ids.count(IMAGE_TOKEN_INDEX) == 1
    assert labels[input_ids.index(IMAGE_TOKEN_INDEX)] == IGNORE_INDEX
    text = tiny_tokenizer.decode([i if i != IMAGE_TOKEN_INDEX else tiny_tokenizer.pad_token_id for i in input_ids])
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")
    assert "<|im_start|>assistant\nA red circle.<|im_end|>\n<|im_start|>user\nAnd the background?" in text
    # Learned spans, in order: each answer and its <|im_end|>, nothing else.
    spans, current = [], []
    for token, label in zip(input_ids, labels):
        if label == IGNORE_INDEX:
            if current:
                spans.append(tiny_tokenizer.decode(current))
                current = []
        else:
            assert label == token
            current.append(token)
    assert spans == ["A red circle.<|im_end|>", "White.<|im_end|>"]


def test_dataset_items_images_and_collator(llava_sample, tiny_tokenizer):
    processor = ImageProcessor(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "pad")
    data_args = DataArguments(data_path=str(llava_sample))
    module = make_supervised_data_module(tiny_tokenizer, data_args, processor)
    dataset, collator = module["train_dataset"], module["data_collator"]
    assert len(dataset) == 8
    batch = collator([dataset[0], dataset[1], dataset[2]])
    assert [tiles.shape for tiles in batch["images"]] == [(1, 3, 32, 32)] * 3  # one tile per image
    assert batch["image_sizes"].shape == (3, 2)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert (batch["input_ids"] == IMAGE_TOKEN_INDEX).sum() == 3
    lengths = batch["attention_mask"].sum(1)
    assert (batch["labels"][0, lengths[0] :] == IGNORE_INDEX).all()


def test_missing_and_corrupt_images_are_named(tmp_path, tiny_tokenizer):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    path = write_json(tmp_path / "data.json", [record(0, image="absent.png"), record(1, image="bad.png")])
    data_args = DataArguments(data_path=str(path))
    processor = ImageProcessor(32, (0.5,) * 3, (0.5,) * 3)
    dataset = make_supervised_data_module(tiny_tokenizer, data_args, processor)["train_dataset"]
    with pytest.raises(LlavaDataError, match=r"record 0 \(id r0\): image not found: .*absent.png"):
        dataset[0]
    with pytest.raises(LlavaDataError, match=r"record 1 \(id r1\): cannot read image .*bad.png"):
        dataset[1]


def test_square_preprocessing_pads_with_the_mean_colour():
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    padded = ImageProcessor(20, (0.5,) * 3, (0.5,) * 3, "pad")(image).tiles[0]
    squashed = ImageProcessor(20, (0.5,) * 3, (0.5,) * 3, "square")(image).tiles[0]
    assert padded.shape == squashed.shape == (3, 20, 20)
    assert torch.allclose(padded[:, 0, 10], torch.tensor([-0.0039, -0.0039, -0.0039]), atol=1e-3)  # grey band
    assert torch.allclose(padded[:, 10, 10], torch.tensor([1.0, -1.0, -1.0]), atol=1e-3)  # the image
    assert torch.allclose(squashed[:, 0, 10], torch.tensor([1.0, -1.0, -1.0]), atol=1e-3)  # no band
    with pytest.raises(LlavaConfigError, match="anyres_max_9 needs image_grid_pinpoints"):
        ImageProcessor(20, (0.5,) * 3, (0.5,) * 3, "anyres_max_9")


def test_sample_caption_attributes():
    from crossgraft.llava.sample import caption_attributes

    assert caption_attributes("A red circle on a black background.") == ("red", "circle", "black")
    assert caption_attributes("A red circle on a background") == ("red", "circle", None)
    assert caption_attributes("") == (None, None, None)


def test_records_of_the_wrong_type_and_files_that_are_not_utf8_are_named(tmp_path):
    (tmp_path / "lines.jsonl").write_text(json.dumps(record(0)) + "\n7\nnull\n")
    records = read_records(str(tmp_path / "lines.jsonl"))
    with pytest.raises(LlavaDataError, match=r"lines.jsonl, record 1: expected an object, found int"):
        load_records(str(tmp_path / "lines.jsonl"))
    assert len(records) == 3
    write_json(tmp_path / "image.json", [record(0, image=5)])
    with pytest.raises(LlavaDataError, match=r"record 0 \(id r0\): 'image' must be a path or a list of paths"):
        load_records(str(tmp_path / "image.json"))
    (tmp_path / "latin.json").write_bytes(b'[{"id": "caf\xe9"}]')  # latin-1, not utf-8
    with pytest.raises(DataError, match=r"latin.json: not utf-8 text \(byte \d+: invalid"):
        read_records(str(tmp_path / "latin.json"))


def test_16_bit_images_and_decompression_bombs(tmp_path, tiny_tokenizer):
    grey = np.full((40, 40), 40000, dtype=np.uint16)
    Image.fromarray(grey).save(tmp_path / "grey16.png")
    Image.new("RGB", (300, 200)).save(tmp_path / "big.png")
    path = write_json(tmp_path / "data.json", [record(0, image="grey16.png"), record(1, image="big.png")])
    processor = ImageProcessor(32, (0.0,) * 3, (1.0,) * 3, "square")
    data_args = DataArguments(data_path=str(path), max_image_pixels=50_000)
    try:
        dataset = make_supervised_data_module(tiny_tokenizer, data_args, processor)["train_dataset"]
        pixels = dataset[0]["images"][0][0]
        assert pixels.shape == (3, 32, 32) and pixels.mean().item() == pytest.approx(156 / 255, abs=1e-3)  # not 1.0
        with pytest.raises(
            LlavaDataError,
            match=r"record 1 \(id r1\): image .*big.png has more pixels than the "
            r"decompression-bomb limit of 50,000 .*--max_image_pixels",
        ):
            dataset[1]
    finally:
        set_max_pixels(None)
    with pytest.raises(LlavaConfigError, match="--max_image_pixels must be positive"):
        DataArguments(max_image_pixels=0)
    with pytest.raises(LlavaConfigError, match="'anyres_max_0' is not supported; use pad, square, anyres or"):
        DataArguments(image_aspect_ratio="anyres_max_0")


def test_a_lone_image_moves_to_the_start_of_its_turn_as_llava_next_does():
    from crossgraft.llava.data import move_lone_image_to_front

    turns = [
        {"from": "human", "value": "What is <image> this?"},
        {"from": "human", "value": "<image>\nAlready first"},
        {"from": "human", "value": "Two <image> and <image>"},
    ]
    moved = move_lone_image_to_front(turns)
    assert [t["value"] for t in moved] == ["<image>\nWhat is  this?", "<image>\nAlready first", turns[2]["value"]]
    assert turns[0]["value"] == "What is <image> this?"  # the record itself is not changed


def test_llava_next_label_mode_learns_what_preprocess_qwen_learns(tiny_tokenizer):
    from crossgraft.llava.configuration import IGNORE_INDEX, IMAGE_TOKEN_INDEX
    from crossgraft.llava.data import tokenize_conversation

    def ids(text):
        return tiny_tokenizer(text, add_special_tokens=False).input_ids

    start, end, newline = ids("<|im_start|>")[0], ids("<|im_end|>")[0], ids("\n")[0]
    turns = [{"from": "human", "value": "<image>\nHi"}, {"from": "gpt", "value": "Yo"}]
    sequence, labels = tokenize_conversation(turns, tiny_tokenizer, "S", "llava_next")
    system = [start, *ids("system"), newline, *ids("S"), end, newline]
    user = [start, *ids("user"), newline, IMAGE_TOKEN_INDEX, newline, *ids("Hi"), end, newline]
    assistant = [start, *ids("assistant"), newline, *ids("Yo"), end, newline]
    assert sequence == system + user + assistant
    always = {start, end, newline}  # learned wherever they are (LLaVA-NeXT's unmask_tokens_idx)
    expected = [t if t in always else IGNORE_INDEX for t in system + user] + assistant
    assert labels == expected
    # answers mode: the answer and its <|im_end|> only
    _, answer_labels = tokenize_conversation(turns, tiny_tokenizer, "S", "answers")
    assert [t for t in answer_labels if t != IGNORE_INDEX] == [*ids("Yo"), end]
    # a first turn that is not the human's is skipped in llava_next mode; --system_prompt stays the system turn
    with_system = [{"from": "system", "value": "Other"}, *turns]
    assert tokenize_conversation(with_system, tiny_tokenizer, "S", "llava_next") == (sequence, labels)


def test_the_label_mode_reaches_the_training_data(tiny_tokenizer, llava_sample):
    from crossgraft.llava.data import make_supervised_data_module
    from crossgraft.llava.processing import ImageProcessor

    processor = ImageProcessor(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    learned = {}
    for mode in ("answers", "llava_next"):
        data = make_supervised_data_module(
            tiny_tokenizer, DataArguments(data_path=str(llava_sample), label_mode=mode), processor
        )
        learned[mode] = int((data["train_dataset"][0]["labels"] != IGNORE_INDEX).sum())
    assert learned["llava_next"] > learned["answers"] > 0
    with pytest.raises(LlavaConfigError, match="--label_mode"):
        DataArguments(label_mode="everything")


@pytest.mark.parametrize(
    "change",
    [
        lambda r: r.update(video="clip.mp4"),
        lambda r: r["conversations"][0].update(value="<video>\nDescribe."),
    ],
    ids=["video_entry", "video_placeholder"],
)
def test_video_records_are_refused_by_id_when_read_and_at_inspection(tmp_path, change, capsys):
    """A video record would train on the literal text `<video>`: refused, naming the record, by the reader that
    training uses and by --inspect_data."""
    from crossgraft.cli import train_alternating as train_main

    records = [record(0), record(1)]
    change(records[1])
    path = write_json(tmp_path / "data.json", records)
    with pytest.raises(LlavaDataError, match=r"data.json, record 1 \(id r1\): video is not supported"):
        load_records(str(path))
    assert train_main(["--data_path", str(path), "--inspect_data"]) == 2
    printed = capsys.readouterr()
    assert "record 1 (id r1): video is not supported" in printed.out + printed.err


def test_make_sample_writes_a_held_out_file_with_other_ids_and_images(tmp_path, capsys):
    from crossgraft.cli import main
    from crossgraft.llava.data import load_records

    assert main(["llava", "make-sample", "--out", str(tmp_path), "--count", "6", "--heldout", "3"]) == 0
    assert "3 held-out records" in capsys.readouterr().out
    train = load_records(str(tmp_path / "sample.json"))
    held_out = load_records(str(tmp_path / "held_out.json"))
    assert (len(train), len(held_out)) == (6, 3)
    assert not {r.data["id"] for r in train} & {r.data["id"] for r in held_out}
    assert not {r.data["image"] for r in train} & {r.data["image"] for r in held_out}
    assert all((tmp_path / r.data["image"]).is_file() for r in [*train, *held_out])
    assert main(["llava", "make-sample", "--out", str(tmp_path / "x"), "--heldout", "-1"]) == 2


def test_modality_grouped_batches_hold_one_modality_and_every_record_once():
    from crossgraft.llava.data import ModalityGroupedSampler

    lengths = [(-1 if i % 3 == 0 else 1) * (5 + i % 7) for i in range(50)]  # 17 text-only, 33 with an image
    batch_size, world_size = 2, 2
    sampler = ModalityGroupedSampler(lengths, batch_size, world_size, seed=0)
    order = list(sampler)
    assert sorted(order) == list(range(50)) and len(sampler) == 50
    megabatches = [order[i : i + batch_size * world_size] for i in range(0, len(order), batch_size * world_size)]
    mixed = [m for m in megabatches if len({lengths[i] > 0 for i in m}) > 1]
    assert len(mixed) <= 1 and (not mixed or mixed[0] == megabatches[-1])  # only the leftovers' last megabatch
    assert list(ModalityGroupedSampler(lengths, batch_size, world_size, seed=0)) == order  # seeded: resumable
    sampler.set_epoch(1)
    assert list(sampler) != order  # another epoch, another order
    assert list(ModalityGroupedSampler(lengths, batch_size, world_size, seed=1)) != order
