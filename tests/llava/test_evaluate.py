"""`llava evaluate`: predictions equal the model's own generation, the loss equals the forward pass's, an
interrupted evaluation resumes without redoing samples, and bad held-out data is refused by name."""

import json

import pytest
import torch
from transformers import AutoTokenizer

from crossgraft.llava import evaluate as evaluate_module
from crossgraft.llava.config import EvaluateConfig
from crossgraft.llava.configuration import LlavaConfigError
from crossgraft.llava.data import DataCollatorForSupervisedDataset, LazySupervisedDataset, LlavaDataError, load_records
from crossgraft.llava.evaluate import PREDICTIONS_FILE, evaluate
from crossgraft.llava.loading import load_model
from crossgraft.llava.processing import ImageProcessor


@pytest.fixture(scope="module")
def evaluated(tiny_models, llava_sample, tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluation")
    config = EvaluateConfig(
        model_name_or_path=str(tiny_models["llava_qwen"]), data_path=str(llava_sample), out=out,
        batch_size=3, max_new_tokens=6,
    )  # fmt: skip
    folder, summary = evaluate(config)
    return config, folder, summary


def rows_of(folder):
    return [json.loads(line) for line in (folder / PREDICTIONS_FILE).read_text().splitlines()]


def test_predictions_and_losses_equal_the_model_run_one_sample_at_a_time(evaluated, tiny_models, llava_sample):
    config, folder, summary = evaluated
    rows = rows_of(folder)
    records = load_records(str(llava_sample))
    assert [row["id"] for row in rows] == [record.data["id"] for record in records]
    model = load_model(config.model_name_or_path).eval()
    tokenizer = AutoTokenizer.from_pretrained(config.model_name_or_path)
    dataset = LazySupervisedDataset(records, tokenizer, ImageProcessor.from_config(model.config), None)
    collate = DataCollatorForSupervisedDataset(tokenizer.pad_token_id)
    total_loss, total_tokens = 0.0, 0
    for index in (0, 4):  # in different batches of 3
        item = dataset[index]
        batch = collate([item])
        with torch.no_grad():
            loss = model(**batch).loss.item()  # mean over the learned tokens of the one answer
        row = rows[index]
        assert row["tokens"] == int((item["labels"] != -100).sum())
        assert row["loss_sum"] / row["tokens"] == pytest.approx(loss, rel=1e-5)
    for row in rows:
        total_loss, total_tokens = total_loss + row["loss_sum"], total_tokens + row["tokens"]
    assert summary.loss == pytest.approx(total_loss / total_tokens)
    assert summary.samples == len(records) and summary.attributes_right is not None


def test_an_interrupted_evaluation_resumes_where_it_stopped(evaluated, monkeypatch, tmp_path):
    config, folder, summary = evaluated
    full = rows_of(folder)
    out = tmp_path / "resumed"
    out.mkdir()
    (out / "evaluation.json").write_text((folder / "evaluation.json").read_text())
    kept = "".join(json.dumps(row) + "\n" for row in full[:4])
    (out / PREDICTIONS_FILE).write_text(kept + '{"id": "sample-0004", "predic')  # cut short mid-line
    evaluated_ids = recording_batches(monkeypatch)
    _, resumed = evaluate(EvaluateConfig(**{**config.__dict__, "out": out}))
    assert evaluated_ids == [row["id"] for row in full[4:]]
    assert rows_of(out) == full
    assert resumed == summary


def test_other_settings_in_the_same_folder_are_refused(evaluated):
    config, folder, _ = evaluated
    with pytest.raises(LlavaConfigError, match="max_new_tokens|generation"):
        evaluate(EvaluateConfig(**{**config.__dict__, "max_new_tokens": 7}))


def test_records_without_an_answer_are_refused_or_skipped_by_name(tiny_models, llava_sample, tmp_path):
    records = json.loads(llava_sample.read_text())
    records[1]["conversations"] = records[1]["conversations"][:1]  # the question only
    records[2]["conversations"][1]["value"] = "  "
    path = llava_sample.parent / "held_out_missing.json"
    path.write_text(json.dumps(records))
    config = dict(model_name_or_path=str(tiny_models["llava_qwen"]), data_path=str(path), max_new_tokens=2)
    with pytest.raises(LlavaDataError, match="sample-0001, sample-0002.*--missing_answers skip"):
        evaluate(EvaluateConfig(**config, out=tmp_path / "refused"))
    assert not (tmp_path / "refused").exists()  # refused before anything was written
    folder, summary = evaluate(EvaluateConfig(**config, out=tmp_path / "skipped", missing_answers="skip"))
    assert summary.skipped == ["sample-0001", "sample-0002"] and summary.samples == len(records) - 2
    assert "sample-0001" not in (folder / PREDICTIONS_FILE).read_text()


def test_attribute_words_are_checked_against_the_answer():
    from crossgraft.llava.evaluate import attribute_hits

    assert attribute_hits("A red circle on a white background.", ["red", "circle", "white"]) == 3
    assert attribute_hits("A reddish circle.", ["red", "circle", "light blue"]) == 1


def resumed_copy(evaluated, tmp_path, lines):
    """A fresh evaluation folder holding the settings of `evaluated` and the given predictions.jsonl lines."""
    config, folder, _ = evaluated
    out = tmp_path / "resumed"
    out.mkdir()
    (out / "evaluation.json").write_text((folder / "evaluation.json").read_text())
    (out / PREDICTIONS_FILE).write_text("".join(line + "\n" for line in lines))
    return EvaluateConfig(**{**config.__dict__, "out": out}), out


def recording_batches(monkeypatch):
    evaluated_ids = []
    original = evaluate_module._evaluate_batch

    def recording(model, tokenizer, dataset, chunk, *args):
        evaluated_ids.extend(sample.sample_id for sample in chunk)
        return original(model, tokenizer, dataset, chunk, *args)

    monkeypatch.setattr(evaluate_module, "_evaluate_batch", recording)
    return evaluated_ids


def test_rows_that_are_not_valid_are_dropped_by_line_and_evaluated_again(evaluated, monkeypatch, tmp_path):
    _, folder, summary = evaluated
    full = rows_of(folder)
    assert all(isinstance(row["fingerprint"], str) for row in full)
    lines = [json.dumps(row) for row in full]
    lines[1] = json.dumps({**full[1], "loss_sum": "0.5"})  # a string where a number goes
    lines[2] = json.dumps([full[2]])  # not an object
    lines[3] = json.dumps({key: value for key, value in full[3].items() if key != "tokens"})
    lines.insert(5, json.dumps({**full[0], "prediction": "a later duplicate"}))  # the first of an id is kept
    lines.insert(6, '{"id": "sample-0009", "predic')  # a cut line in the middle
    config, out = resumed_copy(evaluated, tmp_path, lines)
    evaluated_ids = recording_batches(monkeypatch)
    _, resumed = evaluate(config)
    assert evaluated_ids == [full[1]["id"], full[2]["id"], full[3]["id"]]
    assert sorted(rows_of(out), key=lambda row: row["id"]) == sorted(full, key=lambda row: row["id"])
    assert resumed == summary
    log = (out / "evaluate.log").read_text()
    for number, reason in [(2, "'loss_sum' is missing or not a float"), (3, "a JSON list, not a row object"),
                           (4, "'tokens' is missing"), (6, "repeats the id 'sample-0000' of line 1"),
                           (7, "not valid json")]:  # fmt: skip
        assert f"{PREDICTIONS_FILE}:{number}: {reason}" in log, (number, log)


def test_a_row_from_another_evaluation_is_refused(evaluated, tiny_models, tmp_path):
    config, folder, _ = evaluated
    full = rows_of(folder)
    lines = [json.dumps(row) for row in full[:3]] + [json.dumps({**full[3], "fingerprint": "0123456789abcdef"})]
    config, out = resumed_copy(evaluated, tmp_path, lines)
    before = (out / PREDICTIONS_FILE).read_text()
    with pytest.raises(LlavaConfigError, match=rf"{PREDICTIONS_FILE}:4 was written by another evaluation"):
        evaluate(config)
    assert (out / PREDICTIONS_FILE).read_text() == before  # nothing lost


def test_a_second_evaluation_into_the_same_folder_stops_at_once(evaluated, tmp_path):
    from crossgraft.lock import RunFolderInUse, RunLock

    config, out = resumed_copy(evaluated, tmp_path, [])
    with RunLock(out):  # another evaluation holds the folder
        with pytest.raises(RunFolderInUse, match="in use by another run"):
            evaluate(config)
    assert (out / PREDICTIONS_FILE).read_text() == "" and not (out / "evaluate.log").exists()


def test_empty_answers_are_named_in_the_summary():
    from crossgraft.llava.evaluate import format_summary, summarize

    row = {"id": "a", "prediction": "", "reference": "A dot.", "loss_sum": 2.0, "tokens": 2, "attributes_right": 0,
           "attributes_total": 0}  # fmt: skip
    every = summarize([row, {**row, "id": "b"}], [])
    assert every.empty_predictions == 2
    assert "2 of 2 predictions are empty: the model stops at once" in format_summary(every)
    some = summarize([row, {**row, "id": "b", "prediction": "A dot."}], [])
    assert "1 of 2 predictions are empty (" in format_summary(some)
    assert "empty" not in format_summary(summarize([{**row, "prediction": "A dot."}], []))
