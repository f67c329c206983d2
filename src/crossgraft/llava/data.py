"""LLaVA conversation data: reading (json, jsonl, `{a,b}.json`, yaml `datasets:` lists with seeded sampling),
validation with messages that name the file and record, the Qwen chat template with assistant-only labels,
and a collator that leaves `<image>` placeholders for the model to splice."""

from __future__ import annotations

import logging
import math
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from crossgraft.errors import DataError
from crossgraft.files import parse_json, parse_yaml, read_json_lines, read_text
from crossgraft.images import read_rgb, set_max_pixels
from crossgraft.llava.anyres import image_token_count
from crossgraft.llava.config import DEFAULT_SYSTEM_PROMPT, DataArguments
from crossgraft.llava.configuration import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from crossgraft.llava.processing import ImageProcessor

LOGGER = logging.getLogger(__name__)  # a child of the run log's logger: skipped records are written there

IMAGE_PLACEHOLDER = "<image>"
VIDEO_PLACEHOLDER = "<video>"  # LLaVA-NeXT's video token: refused (crossgraft trains on images)
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
ROLE_NAMES = tuple(ROLES)  # membership by equality: a role that is not text (a list, say) is simply not one


class LlavaDataError(DataError):
    """Data that cannot be used as given. The message names the file and the record."""


@dataclass
class Record:
    """One conversation and where it came from (for error messages)."""

    data: dict[str, Any]
    source: str
    index: int

    @property
    def where(self) -> str:
        record_id = self.data.get("id") if isinstance(self.data, dict) else None
        return f"{self.source}, record {self.index}" + (f" (id {record_id})" if record_id is not None else "")

    @property
    def image_paths(self) -> list[str]:
        image = self.data.get("image")
        if image is None:
            return []
        return [image] if isinstance(image, str) else list(image)


# ---------------------------------------------------------------------------------------------- reading
def expand_braces(path: str) -> list[str]:
    """'data/{a,b}.json' → ['data/a.json', 'data/b.json'] (one brace group, as LLaVA-NeXT accepts)."""
    match = re.search(r"\{([^{}]*)\}", path)
    if not match:
        return [path]
    return [path[: match.start()] + part.strip() + path[match.end() :] for part in match.group(1).split(",")]


def is_file(path: Path) -> bool:
    """Path.is_file that says False for a name the system cannot even look up (too long, say)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _read_file(path: Path) -> list[Record]:
    if not is_file(path):
        raise LlavaDataError(f"data file not found: {path}")
    if path.suffix == ".jsonl":
        return [
            Record(line.value, str(path), line.number - 1)
            for line in read_json_lines(path, "data file", error=LlavaDataError)
        ]
    text = read_text(path, "data file")
    data = parse_json(text, str(path), LlavaDataError)
    if not isinstance(data, list):
        raise LlavaDataError(f"{path}: expected a JSON list of records, found {type(data).__name__}")
    return [Record(item, str(path), index) for index, item in enumerate(data)]


def _sample(records: list[Record], strategy: str, rng: random.Random, where: str) -> list[Record]:
    """'all', 'first:N', 'end:N', 'random:N'; N a count or 'P%'."""
    if strategy in ("all", "", None):
        return records
    kind, _, amount = str(strategy).partition(":")
    try:
        if amount.endswith("%"):
            count = math.ceil(len(records) * float(amount[:-1]) / 100)
        else:
            count = int(amount)
    except (ValueError, OverflowError):  # not a number, or an infinite percentage
        count = -1
    if kind not in ("first", "end", "random") or count < 0:
        raise LlavaDataError(
            f"{where}: sampling_strategy {strategy!r} is not one of all, first:N, end:N, random:N (N a count or P%)"
        )
    count = min(count, len(records))
    if kind == "first":
        return records[:count]
    if kind == "end":
        return records[len(records) - count :]
    return rng.sample(records, count)


def _read_yaml(path: Path, seed: int, reading: tuple[Path, ...]) -> list[Record]:
    if path.resolve() in reading:
        raise LlavaDataError(f"{path} lists itself among its datasets (through {', '.join(map(str, reading))})")
    if not is_file(path):
        raise LlavaDataError(f"data file not found: {path}")
    spec = parse_yaml(read_text(path, "data file"), str(path), LlavaDataError)
    if not isinstance(spec, dict) or not isinstance(spec.get("datasets"), list):
        raise LlavaDataError(f"{path}: expected a 'datasets:' list of {{json_path, sampling_strategy}} entries")
    rng = random.Random(seed)
    records = []
    for number, entry in enumerate(spec["datasets"]):
        where = f"{path}, datasets[{number}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("json_path"), str) or not entry["json_path"]:
            raise LlavaDataError(f"{where}: each entry needs a 'json_path' (a file name)")
        json_path = Path(entry["json_path"])
        if not json_path.is_absolute() and not is_file(json_path):
            json_path = path.parent / json_path
        found = _read_records(str(json_path), seed, (*reading, path.resolve()))
        records.extend(_sample(found, entry.get("sampling_strategy", "all"), rng, where))
    return records


def read_records(data_path: str, seed: int = 0) -> list[Record]:
    """Every record of `data_path` (see DataArguments.data_path), not yet validated."""
    return _read_records(data_path, seed, ())


def _read_records(data_path: str, seed: int, reading: tuple[Path, ...]) -> list[Record]:
    records: list[Record] = []
    for name in expand_braces(str(data_path)):
        path = Path(name)
        if path.suffix in (".yaml", ".yml"):
            records.extend(_read_yaml(path, seed, reading))
        elif path.suffix in (".json", ".jsonl"):
            records.extend(_read_file(path))
        else:
            raise LlavaDataError(f"{path}: unknown data file type; use .json, .jsonl or .yaml")
    return records


# ------------------------------------------------------------------------------------------- validation
def validate_record(record: Record) -> None:
    """First turn from the human (after an optional system turn), turns alternate, every answer is non-empty,
    and the number of `<image>` placeholders equals the number of images."""
    data = record.data
    if not isinstance(data, dict):
        raise LlavaDataError(f"{record.where}: expected an object, found {type(data).__name__}")
    turns = data.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise LlavaDataError(f"{record.where}: 'conversations' must be a non-empty list")
    for number, turn in enumerate(turns):
        if not (isinstance(turn, dict) and isinstance(turn.get("value"), str) and turn.get("from") in ROLE_NAMES):
            raise LlavaDataError(
                f'{record.where}: turn {number} must be {{"from": human|gpt, "value": text}}, found {turn!r:.80}'
            )
    if "video" in data or any(VIDEO_PLACEHOLDER in turn["value"] for turn in turns):
        raise LlavaDataError(
            f"{record.where}: video is not supported (the record has a 'video' entry or a {VIDEO_PLACEHOLDER} "
            "placeholder, which would be trained on as literal text); remove it or give its frames as images"
        )
    roles = [ROLES[turn["from"]] for turn in turns]
    if roles[0] == "system":
        roles, turns = roles[1:], turns[1:]
    if not roles or roles[0] != "user":
        raise LlavaDataError(f"{record.where}: the first turn must be from the human")
    for number, (role, expected) in enumerate(zip(roles, ["user", "assistant"] * len(roles))):
        if role != expected:
            raise LlavaDataError(f"{record.where}: turns must alternate human/gpt; turn {number} is from {role}")
    if "assistant" not in roles:
        raise LlavaDataError(f"{record.where}: there is no gpt turn to learn from")
    for turn, role in zip(turns, roles):
        if role == "assistant" and not turn["value"].strip():
            raise LlavaDataError(f"{record.where}: a gpt turn (caption) is empty")
        if role == "assistant" and IMAGE_PLACEHOLDER in turn["value"]:
            raise LlavaDataError(f"{record.where}: a gpt turn contains {IMAGE_PLACEHOLDER}")
    image = data.get("image")
    if image is not None and not (
        (isinstance(image, str) and image) or (isinstance(image, list) and all(isinstance(i, str) and i for i in image))
    ):
        raise LlavaDataError(f"{record.where}: 'image' must be a path or a list of paths")
    placeholders = sum(turn["value"].count(IMAGE_PLACEHOLDER) for turn in turns)
    if placeholders != len(record.image_paths):
        raise LlavaDataError(
            f"{record.where}: {placeholders} {IMAGE_PLACEHOLDER} placeholder(s) but {len(record.image_paths)} image(s)"
        )


def load_records(data_path: str, seed: int = 0) -> list[Record]:
    """Read and validate every record; the first bad one stops with a message naming it."""
    records = read_records(data_path, seed)
    if not records:
        raise LlavaDataError(f"{data_path}: no records")
    for record in records:
        validate_record(record)
    return records


# -------------------------------------------------------------------------------------------- tokenising
LABEL_MODES = ("answers", "llava_next")


def move_lone_image_to_front(turns: list[dict[str, str]]) -> list[dict[str, str]]:
    """LLaVA-NeXT's `preprocess_multimodal`: a turn holding exactly one `<image>` anywhere but at its start gets it
    moved there, `<image>\n` + the rest stripped. Turns with several images are left as they are."""
    moved = []
    for turn in turns:
        value = turn["value"]
        if value.count(IMAGE_PLACEHOLDER) == 1 and not value.startswith(IMAGE_PLACEHOLDER):
            value = (IMAGE_PLACEHOLDER + "\n" + value.replace(IMAGE_PLACEHOLDER, "").strip()).strip()
        moved.append({**turn, "value": value})
    return moved


def tokenize_conversation(
    turns: list[dict[str, str]],
    tokenizer: PreTrainedTokenizerBase,
    system_prompt: str = DEFAULT_SYSTEM_PROMPT,
    label_mode: str = "answers",
) -> tuple[list[int], list[int]]:
    """Qwen chat template; `<image>` becomes IMAGE_TOKEN_INDEX.

        <|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n
        <|im_start|>assistant\n{answer}<|im_end|>\n

    label_mode `answers`: each assistant answer and its `<|im_end|>` are learned; the system and user turns, the
    role headers and the newlines are IGNORE_INDEX; a leading system turn replaces `system_prompt`.
    `llava_next`: what LLaVA-NeXT's `preprocess_qwen` learns. Each turn is encoded as one string; an assistant
    turn is learned whole (its role header and final newline too), and so is every newline, `<|im_start|>` and
    `<|im_end|>` token anywhere, system and user turns included. A first turn that is not the human's is dropped and
    `system_prompt` is the system turn (LLaVA-NeXT skips a non-human first turn).
    """
    if label_mode not in LABEL_MODES:
        raise LlavaDataError(f"label mode must be one of {', '.join(LABEL_MODES)}, got {label_mode!r}")

    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False).input_ids if text else []

    def encode_with_images(text: str) -> list[int]:
        ids: list[int] = []
        for number, part in enumerate(text.split(IMAGE_PLACEHOLDER)):
            if number:
                ids.append(IMAGE_TOKEN_INDEX)
            ids += encode(part)
        return ids

    if label_mode == "llava_next":
        if ROLES[turns[0]["from"]] != "user":
            turns = turns[1:]
        sequence = encode(f"<|im_start|>system\n{system_prompt}<|im_end|>\n")
        learned = [False] * len(sequence)
        for turn in turns:
            role = ROLES[turn["from"]]
            ids = encode_with_images(f"<|im_start|>{role}\n{turn['value']}<|im_end|>\n")
            sequence += ids
            learned += [role == "assistant"] * len(ids)
        always = {*encode("\n"), *encode("<|im_start|>"), *encode("<|im_end|>")}  # LLaVA-NeXT's unmask_tokens_idx
        targets = [
            token if (learn or token in always) and token != IMAGE_TOKEN_INDEX else IGNORE_INDEX
            for token, learn in zip(sequence, learned)
        ]
        return sequence, targets

    if ROLES[turns[0]["from"]] == "system":
        system_prompt, turns = turns[0]["value"], turns[1:]
    input_ids: list[int] = []
    labels: list[int] = []

    def add(ids: list[int], learn: bool) -> None:
        input_ids.extend(ids)
        labels.extend(ids if learn else [IGNORE_INDEX] * len(ids))

    add(encode(f"<|im_start|>system\n{system_prompt}<|im_end|>\n"), learn=False)
    for turn in turns:
        role = ROLES[turn["from"]]
        add(encode(f"<|im_start|>{role}\n"), learn=False)
        if role == "user":
            add(encode_with_images(turn["value"]), learn=False)
            add(encode("<|im_end|>"), learn=False)
        else:
            add(encode(turn["value"]) + encode("<|im_end|>"), learn=True)
        add(encode("\n"), learn=False)
    return input_ids, labels


def generation_prompt(
    question: str | list[dict[str, str]], tokenizer: PreTrainedTokenizerBase, system_prompt: str = DEFAULT_SYSTEM_PROMPT
) -> list[int]:
    """Token ids of a Qwen-template prompt that ends with the assistant header, for generate(): one question, or
    the turns of a conversation before the answer to generate (a leading system turn replaces system_prompt)."""
    turns = [{"from": "human", "value": question}] if isinstance(question, str) else question
    input_ids, _ = tokenize_conversation(turns, tokenizer, system_prompt)
    return input_ids + tokenizer("<|im_start|>assistant\n", add_special_tokens=False).input_ids


# --------------------------------------------------------------------------------------- dataset, collator
def image_inputs(image_processor: ImageProcessor, images: list[Image.Image]) -> dict[str, Any]:
    """{'images': [(T_i, 3, S, S)], 'image_sizes': (N, 2)} for one sample's images, else {}. A sample with several
    images gets one padded tile per image whatever the aspect-ratio mode (LLaVA-NeXT's rule)."""
    if not images:
        return {}
    processed = [image_processor(image, single_tile=len(images) > 1) for image in images]
    return {"images": [p.tiles for p in processed], "image_sizes": torch.tensor([p.size for p in processed])}


@dataclass(frozen=True)
class LengthLimit:
    """What the model keeps of a sample: its first `max_length` positions after the images are spliced in."""

    max_length: int
    patch_size: int  # the tower's: an image tile gives (tile_size / patch_size)² features
    unpad: bool  # mm_patch_merge_type spatial_unpad: newlines after rows (and after a single tile)

    def image_tokens(self, processor: ImageProcessor, sizes: list[tuple[int, int]]) -> list[int]:
        """Positions each image of one sample takes (several images: one tile each, LLaVA-NeXT's rule)."""
        single = len(sizes) > 1
        return [
            image_token_count(size, single, processor.size, self.patch_size, processor.grid_pinpoints,
                              processor.aspect_ratio, self.unpad)
            for size in sizes
        ]  # fmt: skip


def spliced_length(input_ids: list[int], labels: list[int], image_tokens: list[int]) -> tuple[int, int | None]:
    """(length after splicing, position of the first learned token or None): each `<image>` placeholder becomes
    that image's positions."""
    position, first_learned, images = 0, None, iter(image_tokens)
    for token, label in zip(input_ids, labels):
        if token == IMAGE_TOKEN_INDEX:
            position += next(images, 1)
            continue
        if label != IGNORE_INDEX and first_learned is None:
            first_learned = position
        position += 1
    return position, first_learned


class LazySupervisedDataset(Dataset):
    """Records are validated up front; tokenising and image loading happen per item."""

    def __init__(
        self,
        records: list[Record],
        tokenizer: PreTrainedTokenizerBase,
        image_processor: ImageProcessor,
        image_folder: str | None,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        label_mode: str = "answers",
        keep_image_position: bool = False,
        length_limit: LengthLimit | None = None,
    ) -> None:
        self.records = records
        self.length_limit = length_limit
        self.skipped: set[str] = set()  # records this process skipped: cut before any answer token
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.image_folder = image_folder
        self.system_prompt = system_prompt
        self.label_mode = label_mode
        self.keep_image_position = keep_image_position

    def __len__(self) -> int:
        return len(self.records)

    def image_path(self, record: Record, name: str) -> Path:
        base = Path(self.image_folder) if self.image_folder else Path(record.source).parent
        return Path(name) if Path(name).is_absolute() else base / name

    def read_image(self, record: Record, name: str) -> Image.Image:
        path = self.image_path(record, name)
        if not path.is_file():
            raise LlavaDataError(f"{record.where}: image not found: {path}")
        try:
            return read_rgb(path)
        except DataError as error:
            raise LlavaDataError(f"{record.where}: {error}") from error

    def load_images(self, record: Record) -> dict[str, Any]:
        """The record's images as model inputs (see `image_inputs`), else {}."""
        images = [self.read_image(record, name) for name in record.image_paths]
        return image_inputs(self.image_processor, images)

    def tokenized(self, record: Record) -> tuple[list[int], list[int]]:
        turns = record.data["conversations"]
        if not self.keep_image_position:
            turns = move_lone_image_to_front(turns)
        return tokenize_conversation(turns, self.tokenizer, self.system_prompt, self.label_mode)

    def needed_length(self, record: Record, images: list[Image.Image]) -> tuple[int, int | None]:
        """(length after splicing, first learned position) of a record whose images are `images`."""
        return self._spliced(*self.tokenized(record), images)

    def _spliced(self, input_ids: list[int], labels: list[int], images: list[Image.Image]) -> tuple[int, int | None]:
        assert self.length_limit is not None
        counts = self.length_limit.image_tokens(self.image_processor, [image.size for image in images])
        return spliced_length(input_ids, labels, counts)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """The sample at `index`; with a length limit, a record the limit would cut before its first answer token
        is skipped (logged by id, with the length it needs) for the next one, so no batch trains on nothing."""
        for offset in range(len(self.records)):
            record = self.records[(index + offset) % len(self.records)]
            images = [self.read_image(record, name) for name in record.image_paths]
            input_ids, labels = self.tokenized(record)  # once: the length check and the sample share it
            if self.length_limit is not None:
                needed, first_learned = self._spliced(input_ids, labels, images)
                if first_learned is None or first_learned >= self.length_limit.max_length:
                    if record.where not in self.skipped:
                        self.skipped.add(record.where)
                        LOGGER.warning(
                            "skipped %s: model_max_length %d cuts it before its first answer token (it needs %d "
                            "positions); raise --model_max_length to train on it",
                            record.where, self.length_limit.max_length, needed,
                        )  # fmt: skip
                    continue
            return {
                "input_ids": torch.tensor(input_ids),
                "labels": torch.tensor(labels),
                **image_inputs(self.image_processor, images),
            }
        raise LlavaDataError(
            f"every record is cut before its first answer token at model_max_length "
            f"{self.length_limit.max_length if self.length_limit else '?'}: raise --model_max_length"
        )


@dataclass
class DataCollatorForSupervisedDataset:
    """Right-pads input_ids (pad token) and labels (IGNORE_INDEX); lists every image of the batch in order (each
    its own number of tiles) with their sizes."""

    pad_token_id: int

    def __call__(self, instances: list[dict[str, Any]]) -> dict[str, Any]:
        length = max(len(item["input_ids"]) for item in instances)
        input_ids = torch.full((len(instances), length), self.pad_token_id, dtype=torch.long)  # (B, S)
        labels = torch.full((len(instances), length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros(len(instances), length, dtype=torch.long)
        for row, item in enumerate(instances):
            n = len(item["input_ids"])
            input_ids[row, :n], labels[row, :n], attention_mask[row, :n] = item["input_ids"], item["labels"], 1
        batch: dict[str, Any] = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
        with_images = [item for item in instances if "images" in item]
        if with_images:
            batch["images"] = [tiles for item in with_images for tiles in item["images"]]  # N × (T_i, 3, S, S)
            batch["image_sizes"] = torch.cat([item["image_sizes"] for item in with_images])  # (N, 2)
        return batch


def make_supervised_data_module(
    tokenizer: PreTrainedTokenizerBase,
    data_args: DataArguments,
    image_processor: ImageProcessor,
    length_limit: LengthLimit | None = None,
) -> dict[str, Any]:
    """LLaVA-NeXT's entry point: {'train_dataset', 'eval_dataset', 'data_collator'} for the Trainer; images go
    through the model's `image_processor`."""
    if not data_args.data_path:
        raise LlavaDataError("--data_path is required")
    set_max_pixels(data_args.max_image_pixels)

    def dataset(path: str) -> LazySupervisedDataset:
        records = load_records(path, data_args.data_sampling_seed)
        return LazySupervisedDataset(
            records, tokenizer, image_processor, data_args.image_folder, data_args.system_prompt,
            data_args.label_mode, data_args.keep_image_position, length_limit,
        )  # fmt: skip

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return {
        "train_dataset": dataset(data_args.data_path),
        "eval_dataset": dataset(data_args.eval_data_path) if data_args.eval_data_path else None,
        "data_collator": DataCollatorForSupervisedDataset(pad),
    }


# ------------------------------------------------------------------------------- --group_by_modality_length
def modality_lengths(records: list[Record]) -> list[int]:
    """LLaVA-NeXT's length of each record for grouping: the words of its conversation, negative for a record
    without an image (the sign is the modality)."""
    lengths = []
    for record in records:
        words = sum(len(str(turn.get("value", "")).split()) for turn in record.data["conversations"])
        words = max(words, 1)
        lengths.append(words if record.image_paths else -words)
    return lengths


def even_chunks(indices: list[int], lengths: list[int], chunks: int) -> list[list[int]]:
    """Split `indices` (longest first) into `chunks` of equal count, each index going to the chunk with the least
    total length so far: every process gets a similar amount of work."""
    if len(indices) % chunks:
        return [indices[i::chunks] for i in range(chunks)]
    per_chunk = len(indices) // chunks
    parts: list[list[int]] = [[] for _ in range(chunks)]
    totals = [0] * chunks
    for index in indices:
        open_parts = [c for c in range(chunks) if len(parts[c]) < per_chunk]
        target = min(open_parts, key=lambda c: totals[c])
        parts[target].append(index)
        totals[target] += abs(lengths[index])
    return parts


def length_grouped_indices(
    lengths: list[int], batch_size: int, world_size: int, generator: torch.Generator
) -> list[int]:
    """A shuffled order in megabatches of world_size x batch_size, each sorted by length and spread evenly over
    the processes."""
    order = torch.randperm(len(lengths), generator=generator).tolist()
    size = world_size * batch_size
    megabatches = [
        sorted(order[i : i + size], key=lambda j: abs(lengths[j]), reverse=True) for i in range(0, len(order), size)
    ]
    return [i for megabatch in megabatches for chunk in even_chunks(megabatch, lengths, world_size) for i in chunk]


def modality_grouped_indices(
    lengths: list[int], batch_size: int, world_size: int, generator: torch.Generator
) -> list[int]:
    """LLaVA-NeXT's --group_by_modality_length order: image records and text-only records are grouped apart into
    megabatches of world_size x batch_size (so every process trains on one modality in a step), the megabatches
    are shuffled, and the two modalities' leftovers form one last mixed megabatch."""
    image = [i for i, length in enumerate(lengths) if length > 0]
    text = [i for i, length in enumerate(lengths) if length < 0]
    if not image or not text:
        return length_grouped_indices(lengths, batch_size, world_size, generator)
    size = world_size * batch_size
    groups = []
    for members in (image, text):
        shuffled = [
            members[i] for i in length_grouped_indices([lengths[j] for j in members], batch_size, world_size, generator)
        ]
        groups.append([shuffled[i : i + size] for i in range(0, len(shuffled), size)])
    leftover = groups[0][-1] + groups[1][-1]
    megabatches = groups[0][:-1] + groups[1][:-1]
    megabatches = [megabatches[i] for i in torch.randperm(len(megabatches), generator=generator).tolist()]
    if leftover:
        megabatches.append(sorted(leftover))
    return [i for megabatch in megabatches for i in megabatch]


class ModalityGroupedSampler(torch.utils.data.Sampler[int]):
    """`modality_grouped_indices` as a sampler: seeded by the run's seed and the epoch (`set_epoch`), so a resumed
    run sees the same order and skips the batches it already trained on."""

    def __init__(self, lengths: list[int], batch_size: int, world_size: int, seed: int) -> None:
        self.lengths, self.batch_size, self.world_size, self.seed = lengths, batch_size, world_size, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(modality_grouped_indices(self.lengths, self.batch_size, self.world_size, generator))
