"""`crossgraft llava evaluate`: one run on held-out LLaVA records — the generated answer to each record's first
question, the teacher-forced loss of its reference answer, caption metrics and (when records carry
`attributes`) how many attribute words the answer names.

Files under the evaluation folder: evaluation.json (the settings), predictions.jsonl (one line per sample,
appended batch by batch, so an interrupted evaluation resumes where it stopped), summary.json / summary.md and
evaluate.log.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from crossgraft.files import (
    JsonLine,
    atomic_write,
    read_json_lines,
    read_json_object,
    write_text_atomic,
)
from crossgraft.images import set_max_pixels
from crossgraft.llava.caption_metrics import CAPTION_METRICS, caption_statistics, mean_finalize, summed_value, words
from crossgraft.llava.config import EvaluateConfig
from crossgraft.llava.configuration import IGNORE_INDEX, LlavaConfigError
from crossgraft.llava.data import (
    ROLES,
    DataCollatorForSupervisedDataset,
    LazySupervisedDataset,
    LlavaDataError,
    Record,
    generation_prompt,
    read_records,
    tokenize_conversation,
    validate_record,
)
from crossgraft.llava.loading import load_model
from crossgraft.llava.modeling import LlavaQwenForCausalLM
from crossgraft.llava.processing import ImageProcessor
from crossgraft.lock import RunLock
from crossgraft.runlog import setup_run_logging

SETTINGS_FILE = "evaluation.json"
PREDICTIONS_FILE = "predictions.jsonl"
SUMMARY_FILE = "summary.json"
LOG_FILE = "evaluate.log"
METRICS_SOURCE = "computed in-house with coco-caption's definitions"


@dataclass
class HeldOutSample:
    sample_id: str
    record: Record
    prompt_turns: list[dict[str, str]]  # the turns before the first answer (system turn included)
    answer: str  # the reference: the first gpt turn
    attributes: list[str]  # attribute words the answer should name ([] when the record has none)


@dataclass
class EvaluationSummary:
    samples: int
    skipped: list[str]  # ids of records without an answer (--missing_answers skip)
    loss: float  # teacher-forced loss of the reference answers, mean over their tokens (with <|im_end|>)
    perplexity: float
    bleu4: float
    rouge_l: float
    cider_d: float
    attributes_right: float | None  # share of attribute words named in the answers; None without attributes
    metrics_source: str = METRICS_SOURCE
    empty_predictions: int = 0  # generated answers with no text at all


def sample_id(record: Record) -> str:
    record_id = record.data.get("id") if isinstance(record.data, dict) else None
    return str(record_id) if record_id is not None else f"{Path(record.source).name}:{record.index}"


def first_answer(record: Record) -> tuple[list[dict[str, str]], str | None]:
    """The turns before the first gpt turn, and that turn's text (None when there is no non-empty one)."""
    turns = record.data.get("conversations") if isinstance(record.data, dict) else None
    for number, turn in enumerate(turns if isinstance(turns, list) else []):
        if isinstance(turn, dict) and ROLES.get(turn.get("from", "")) == "assistant":
            value = turn.get("value")
            return turns[:number], value if isinstance(value, str) and value.strip() else None  # type: ignore[index]
    return list(turns) if isinstance(turns, list) else [], None


def held_out_samples(records: list[Record], missing_answers: str) -> tuple[list[HeldOutSample], list[str]]:
    """Samples to evaluate and the ids of records skipped for having no answer (refused unless 'skip')."""
    samples, missing, seen = [], [], set()
    for record in records:
        identifier = sample_id(record)
        if identifier in seen:
            raise LlavaDataError(f"{record.where}: sample id {identifier!r} appears twice; ids must be unique")
        seen.add(identifier)
        prompt_turns, answer = first_answer(record)
        if answer is None:
            missing.append(identifier)
            continue
        validate_record(record)
        attributes = record.data.get("attributes") or {}
        if not isinstance(attributes, dict) or not all(isinstance(v, str) for v in attributes.values()):
            raise LlavaDataError(f"{record.where}: 'attributes' must map names to words")
        samples.append(HeldOutSample(identifier, record, prompt_turns, answer, list(attributes.values())))
    if missing and missing_answers == "refuse":
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise LlavaDataError(
            f"{len(missing)} held-out record(s) have no gpt answer to compare with: {shown}. "
            "Add answers, or pass --missing_answers skip to leave them out (they are named in the summary)"
        )
    if not samples:
        raise LlavaDataError("no held-out record has an answer to evaluate")
    return samples, missing


def evaluation_folder(config: EvaluateConfig) -> Path:
    if config.out is not None:
        return Path(config.out)
    return Path(config.model_name_or_path) / "evaluation" / Path(config.data_path).stem


def settings_of(config: EvaluateConfig) -> dict[str, Any]:
    return {
        "model_name_or_path": str(Path(config.model_name_or_path).resolve())
        if Path(config.model_name_or_path).exists()
        else config.model_name_or_path,
        "data_path": str(Path(config.data_path).resolve()),
        "generation": config.generation_settings(),
        "image_aspect_ratio": config.image_aspect_ratio,
        **({"image_grid_pinpoints": config.image_grid_pinpoints} if config.image_grid_pinpoints else {}),
    }


def read_settings(path: Path) -> dict[str, Any]:
    """An evaluation folder's evaluation.json: a JSON object, or a LlavaConfigError naming the file."""
    return read_json_object(path, "evaluation settings", LlavaConfigError)


def check_settings(folder: Path, settings: dict[str, Any]) -> None:
    """A folder holding predictions made with other settings is refused rather than mixed."""
    path = folder / SETTINGS_FILE
    if not path.is_file():
        write_text_atomic(path, json.dumps(settings, indent=2) + "\n")
        return
    saved = read_settings(path)
    changed = sorted(key for key in settings if saved.get(key) != settings[key])
    if changed:
        raise LlavaConfigError(
            f"{folder} holds an evaluation made with other settings ({', '.join(changed)} differ): "
            "pass another --out, or delete the folder to start over"
        )


ROW_FIELDS: dict[str, tuple[type, ...]] = {
    "id": (str,),
    "prediction": (str,),
    "reference": (str,),
    "loss_sum": (float, int),
    "tokens": (int,),
    "attributes_right": (int,),
    "attributes_total": (int,),
}
FINGERPRINT_SAMPLE_BYTES = 1 << 16  # read from the start, middle and end of each weight file


@dataclass
class PredictionsFile:
    """predictions.jsonl as read: its valid rows (the first of each id, in file order) and one line per line that
    was dropped (cut short, not a row, a repeated id), naming the file and line."""

    rows: list[JsonLine]
    problems: list[str]

    @property
    def values(self) -> list[dict[str, Any]]:
        return [row.value for row in self.rows]


def row_problem(row: Any) -> str | None:
    """What is wrong with one predictions.jsonl row, or None for a valid row."""
    if not isinstance(row, dict):
        return f"a JSON {type(row).__name__}, not a row object"
    for name, types in ROW_FIELDS.items():
        value = row.get(name)
        if not isinstance(value, types) or isinstance(value, bool):
            return f"{name!r} is missing or not a {types[0].__name__}"
    if not math.isfinite(row["loss_sum"]) or min(row["tokens"], row["attributes_right"], row["attributes_total"]) < 0:
        return "a loss that is not finite or a negative count"
    if "fingerprint" in row and not isinstance(row["fingerprint"], str):
        return "'fingerprint' is not text"
    return None


def read_predictions(path: Path) -> PredictionsFile:
    """The valid rows of predictions.jsonl; every other line (one an interruption cut short, one that is not a
    complete row, a repeated id: the first is kept) is listed in `problems` and left out."""
    if not path.is_file():
        return PredictionsFile([], [])
    broken: list[JsonLine] = []
    lines = read_json_lines(path, "predictions file", broken_lines=broken)
    problems = [(line.number, "not valid json (cut short?)") for line in broken]
    rows: list[JsonLine] = []
    first_line: dict[str, int] = {}
    for line in lines:
        problem = row_problem(line.value)
        if problem is None and line.value["id"] in first_line:
            problem = f"repeats the id {line.value['id']!r} of line {first_line[line.value['id']]} (the first is kept)"
        if problem is not None:
            problems.append((line.number, problem))
            continue
        first_line[line.value["id"]] = line.number
        rows.append(line)
    return PredictionsFile(rows, [f"{path}:{number}: {problem}" for number, problem in sorted(problems)])


def evaluation_fingerprint(settings: dict[str, Any], model_name_or_path: str) -> str:
    """Names one evaluation: its settings and its model's weights (each local weight file's size and bytes sampled
    from its start, middle and end, so a retrained model in the same folder differs while a copy does not)."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    folder = Path(model_name_or_path)
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin")) if folder.is_dir() else []
    for path in files:
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}".encode())
        with path.open("rb") as handle:
            for offset in (
                0,
                max(size // 2 - FINGERPRINT_SAMPLE_BYTES // 2, 0),
                max(size - FINGERPRINT_SAMPLE_BYTES, 0),
            ):
                handle.seek(offset)
                digest.update(handle.read(FINGERPRINT_SAMPLE_BYTES))
    return digest.hexdigest()[:16]


def resumable_rows(
    path: Path, samples: list[HeldOutSample], fingerprint: str, logger: logging.Logger
) -> list[dict[str, Any]]:
    """The rows of an interrupted evaluation that this one keeps. Lines that are not valid rows, rows of an older
    crossgraft (no fingerprint) and rows whose sample is gone or changed are dropped with a warning and evaluated
    again; a row written by another evaluation (other model weights or settings) is refused."""
    found = read_predictions(path)
    for problem in found.problems:
        logger.warning("%s: dropped; the sample is evaluated again", problem)
    current = {sample.sample_id: sample for sample in samples}
    kept = []
    for row in found.rows:
        where = f"{path}:{row.number}"
        if "fingerprint" not in row.value:
            logger.warning("%s: written by an older crossgraft (no fingerprint); the sample is evaluated again", where)
        elif row.value["fingerprint"] != fingerprint:
            raise LlavaConfigError(
                f"{where} was written by another evaluation (other model weights or settings): pass another --out, "
                f"or delete {path} to start over"
            )
        elif row.value["id"] not in current or current[row.value["id"]].answer != row.value["reference"]:
            logger.warning("%s: its sample %r is no longer in the data as it was; dropped", where, row.value["id"])
        else:
            kept.append(row.value)
    return kept


@dataclass
class AnswerScores:
    nll_sums: torch.Tensor  # (B,) summed negative log-likelihood of each row's learned tokens
    token_counts: torch.Tensor  # (B,)
    greedy: torch.Tensor  # (B,) True where every learned token is the argmax of its logits


def answer_losses(model: LlavaQwenForCausalLM, batch: dict[str, Any]) -> AnswerScores:
    """Teacher-forced scores of the learned (labelled) tokens of each row. Only the learned positions go through
    the LM head, so the (B, L, vocab) logits are never built."""
    spliced, hidden = model.splice_and_decode(
        batch["input_ids"], batch["attention_mask"], batch["labels"], batch.get("images"), batch.get("image_sizes")
    )  # hidden: (B, L, D)
    assert spliced.labels is not None
    targets = spliced.labels[:, 1:]  # (B, L-1): position t predicts token t+1
    learned = targets != IGNORE_INDEX
    logits = model.lm_head(hidden[:, :-1][learned])  # (N, vocab)
    nll = F.cross_entropy(logits.float(), targets[learned], reduction="none")  # (N,)
    rows = torch.arange(targets.shape[0], device=targets.device)[:, None].expand_as(targets)[learned]
    sums = torch.zeros(targets.shape[0], device=nll.device).index_add_(0, rows, nll)
    missed = (logits.argmax(dim=-1) != targets[learned]).float()  # (N,)
    misses = torch.zeros(targets.shape[0], device=nll.device).index_add_(0, rows, missed)
    return AnswerScores(sums, learned.sum(dim=1), misses == 0)


def attribute_hits(prediction: str, attributes: list[str]) -> int:
    named = set(words(prediction))
    return sum(all(word in named for word in words(attribute)) for attribute in attributes)


def summarize(rows: list[dict[str, Any]], skipped: list[str]) -> EvaluationSummary:
    loss = float(mean_finalize(np.array([[sum(r["loss_sum"] for r in rows), sum(r["tokens"] for r in rows)]]))[0])
    caption = caption_statistics([r["prediction"] for r in rows], [r["reference"] for r in rows])
    values = {name: summed_value(CAPTION_METRICS[name].finalize, stats) for name, stats in caption.items()}
    totals = sum(r["attributes_total"] for r in rows)
    attributes = sum(r["attributes_right"] for r in rows) / totals if totals else None
    empty = sum(not row["prediction"].strip() for row in rows)
    return EvaluationSummary(
        len(rows),
        skipped,
        loss,
        math.exp(loss),
        values["bleu4"],
        values["rouge_l"],
        values["cider_d"],
        attributes,
        empty_predictions=empty,
    )


def format_summary(summary: EvaluationSummary) -> str:
    lines = [
        f"samples: {summary.samples}"
        + (f" ({len(summary.skipped)} without an answer skipped)" if summary.skipped else ""),
        f"loss {summary.loss:.4f}, perplexity {summary.perplexity:.2f} (reference answers, teacher-forced)",
        f"BLEU-4 {100 * summary.bleu4:.1f}, ROUGE-L {100 * summary.rouge_l:.1f}, CIDEr-D {100 * summary.cider_d:.1f} "
        f"({summary.metrics_source})",
    ]
    if summary.attributes_right is not None:
        lines.append(f"attribute words named: {100 * summary.attributes_right:.1f}%")
    if summary.empty_predictions:
        stops = ": the model stops at once" if summary.empty_predictions == summary.samples else ""
        lines.append(
            f"{summary.empty_predictions} of {summary.samples} predictions are empty{stops} (the caption metrics "
            "count them as answers that name nothing)"
        )
    return "\n".join(lines)


def evaluate(config: EvaluateConfig, model: LlavaQwenForCausalLM | None = None) -> tuple[Path, EvaluationSummary]:
    """Evaluate one run; returns the evaluation folder and its summary. Samples already in predictions.jsonl
    (an interrupted evaluation with the same settings) are not evaluated again."""
    set_max_pixels(config.max_image_pixels)
    samples, skipped = held_out_samples(read_records(config.data_path), config.missing_answers)
    folder = evaluation_folder(config)
    with RunLock(folder):  # one writer per evaluation folder
        return _evaluate(config, model, folder, samples, skipped)


def _evaluate(
    config: EvaluateConfig,
    model: LlavaQwenForCausalLM | None,
    folder: Path,
    samples: list[HeldOutSample],
    skipped: list[str],
) -> tuple[Path, EvaluationSummary]:
    logger = setup_run_logging(folder, LOG_FILE, "crossgraft.llava.evaluate")
    settings = settings_of(config)
    check_settings(folder, settings)
    if skipped:
        logger.warning("skipped %d record(s) without an answer: %s", len(skipped), ", ".join(skipped))
    predictions_path = folder / PREDICTIONS_FILE
    fingerprint = evaluation_fingerprint(settings, config.model_name_or_path)
    done = resumable_rows(predictions_path, samples, fingerprint, logger)
    with atomic_write(predictions_path) as file:  # only the rows kept
        file.writelines(json.dumps(row) + "\n" for row in done)
    done_ids = {row["id"] for row in done}
    todo = [sample for sample in samples if sample.sample_id not in done_ids]
    if done:
        logger.info("resuming: %d of %d samples already evaluated", len(samples) - len(todo), len(samples))

    if todo:
        if model is None:
            model = load_model(config.model_name_or_path, attn_implementation=config.attn_implementation)
        model.eval()
        tokenizer = AutoTokenizer.from_pretrained(config.model_name_or_path)
        processor = ImageProcessor.from_config(model.config, config.image_aspect_ratio, config.image_grid_pinpoints)
        model.config.update(processor.config_settings())  # the model merges anyres tiles as they are cut
        dataset = LazySupervisedDataset(
            [s.record for s in todo], tokenizer, processor, config.image_folder, config.system_prompt
        )
        generator = torch.Generator().manual_seed(config.seed)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        collate = DataCollatorForSupervisedDataset(pad)
        batches = range(0, len(todo), config.batch_size)
        for start in tqdm(batches, desc="evaluating", unit="batch", disable=None):
            chunk = todo[start : start + config.batch_size]
            rows = _evaluate_batch(model, tokenizer, dataset, chunk, collate, config, generator, pad)
            rows = [{**row, "fingerprint": fingerprint} for row in rows]
            with predictions_path.open("a", encoding="utf-8") as file:
                file.writelines(json.dumps(row) + "\n" for row in rows)
                file.flush()

    by_id = {row["id"]: row for row in read_predictions(predictions_path).values}
    rows = [by_id[sample.sample_id] for sample in samples]
    summary = summarize(rows, skipped)
    write_text_atomic(folder / SUMMARY_FILE, json.dumps(asdict(summary), indent=2) + "\n")
    write_text_atomic(folder / "summary.md", format_summary(summary) + "\n")
    logger.info("%s", format_summary(summary))
    return folder, summary


def _evaluate_batch(
    model: LlavaQwenForCausalLM,
    tokenizer: Any,
    dataset: LazySupervisedDataset,
    chunk: list[HeldOutSample],
    collate: DataCollatorForSupervisedDataset,
    config: EvaluateConfig,
    generator: torch.Generator,
    pad: int,
) -> list[dict[str, Any]]:
    prompts, scored = [], []
    for sample in chunk:
        image_item = dataset.load_images(sample.record)
        prompt = torch.tensor(generation_prompt(sample.prompt_turns, tokenizer, config.system_prompt))
        prompts.append({"input_ids": prompt, "labels": prompt, **image_item})
        turns = [*sample.prompt_turns, {"from": "gpt", "value": sample.answer}]
        input_ids, labels = tokenize_conversation(turns, tokenizer, config.system_prompt)
        scored.append({"input_ids": torch.tensor(input_ids), "labels": torch.tensor(labels), **image_item})
    with torch.no_grad():
        prompt_batch = collate(prompts)
        answers = model.generate(
            prompt_batch["input_ids"], prompt_batch["attention_mask"], prompt_batch.get("images"),
            max_new_tokens=config.max_new_tokens, eos_token_id=tokenizer.eos_token_id, pad_token_id=pad,
            image_sizes=prompt_batch.get("image_sizes"),
            do_sample=config.do_sample, temperature=config.temperature, top_p=config.top_p, generator=generator,
        )  # fmt: skip
        scores = answer_losses(model, collate(scored))
    texts = tokenizer.batch_decode(answers, skip_special_tokens=True)
    return [
        {
            "id": sample.sample_id,
            "prediction": text.strip(),
            "reference": sample.answer,
            "loss_sum": float(loss_sum),
            "tokens": int(tokens),
            "attributes_right": attribute_hits(text, sample.attributes),
            "attributes_total": len(sample.attributes),
        }
        for sample, text, loss_sum, tokens in zip(chunk, texts, scores.nll_sums, scores.token_counts)
    ]
