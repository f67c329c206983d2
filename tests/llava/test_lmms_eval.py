"""The lmms-eval adapter answers and scores requests exactly as `llava evaluate` does on the same records.

lmms-eval itself is not installed here (it requires torchvision, whose wheel does not import beside the CPU
torch), so its requests are built as lmms-eval builds them: objects whose `args` tuple the adapter reads."""

import json
from dataclasses import dataclass
from importlib.metadata import entry_points

import pytest
from PIL import Image

from crossgraft.llava.config import EvaluateConfig
from crossgraft.llava.configuration import LlavaConfigError
from crossgraft.llava.evaluate import PREDICTIONS_FILE, evaluate
from crossgraft.llava.lmms_eval import CrossgraftLlava, manifest

pytestmark = pytest.mark.slow  # trains the models it speaks with


@dataclass
class Request:  # lmms_eval.api.instance.Instance exposes its arguments as `.args`
    args: tuple


@pytest.fixture(scope="module")
def task(llava_sample):
    records = json.loads(llava_sample.read_text())
    docs = []
    for record in records:
        question, answer = (turn["value"] for turn in record["conversations"])
        image = Image.open(llava_sample.parent / record["image"])
        docs.append({"image": image, "question": question.split("\n", 1)[1], "answer": answer})
    return {"shapes": {"test": docs}}


def generate_requests(docs, gen_kwargs):
    return [
        Request((d["question"], dict(gen_kwargs), lambda doc: [doc["image"]], i, "shapes", "test"))
        for i, d in enumerate(docs)
    ]


@pytest.mark.parametrize("kind", ["llava_qwen", "llava_qwen_with_alternating_cross_attn"])
def test_answers_and_loglikelihoods_equal_evaluate(speaking_models, llava_sample, task, tmp_path, kind):
    folder, _ = evaluate(EvaluateConfig(model_name_or_path=str(speaking_models[kind]), data_path=str(llava_sample),
                                        out=tmp_path, batch_size=3, max_new_tokens=48))  # fmt: skip
    expected = [json.loads(line) for line in (folder / PREDICTIONS_FILE).read_text().splitlines()]
    adapter = CrossgraftLlava(pretrained=str(speaking_models[kind]), batch_size="3")
    adapter.task_dict = task
    docs = task["shapes"]["test"]
    answers = adapter.generate_until(generate_requests(docs, {"max_new_tokens": 48, "until": []}))
    assert answers == [row["prediction"] for row in expected]
    assert all(len(answer) >= 3 for answer in answers), answers  # real text, not only undecodable ids

    def target(doc):
        return doc["answer"] + "<|im_end|>"

    scored = adapter.loglikelihood(
        [Request((d["question"], target, lambda doc: [doc["image"]], i, "shapes", "test")) for i, d in enumerate(docs)]
    )
    for (log_probability, greedy), row in zip(scored, expected):
        assert log_probability == pytest.approx(-row["loss_sum"], rel=1e-5)
        assert greedy == (row["prediction"] == row["reference"])  # greedy: the caption is what generation gives


def test_until_cuts_answers_and_a_greedy_continuation_is_recognised(speaking_models, task):
    adapter = CrossgraftLlava(pretrained=str(speaking_models["llava_qwen"]), batch_size=2)
    adapter.task_dict = task
    docs = task["shapes"]["test"][:2]
    full = adapter.generate_until(generate_requests(docs, {"max_new_tokens": 8}))
    assert all(len(answer) > 1 for answer in full), full
    cut = adapter.generate_until(generate_requests(docs, {"max_new_tokens": 8, "until": [full[0][1]]}))
    assert cut[0] == full[0].split(full[0][1])[0].strip()
    request = Request((docs[0]["question"], full[0][:1], lambda doc: [doc["image"]], 0, "shapes", "test"))
    # the first generated character, scored as a continuation, is the greedy choice (byte-level tokenizer)
    assert adapter.loglikelihood([request])[0][1] is True


def test_videos_are_refused_by_name(speaking_models, task):
    adapter = CrossgraftLlava(pretrained=str(speaking_models["llava_qwen"]))
    adapter.task_dict = task
    request = Request(("What happens?", {}, lambda doc: ["clip.mp4"], 0, "shapes", "test"))
    with pytest.raises(LlavaConfigError, match="shapes/test document 0: .*images only, got str"):
        adapter.generate_until([request])


def test_lmms_eval_finds_the_adapter_through_its_entry_point():
    (entry,) = [e for e in entry_points(group="lmms_eval.models") if e.name == "crossgraft_llava"]
    assert entry.load() is manifest
    try:
        import lmms_eval  # noqa: F401
    except ImportError:
        with pytest.raises(LlavaConfigError, match=r"pip install 'crossgraft\[lmms-eval\]'"):
            manifest()
    else:
        assert manifest().simple_class_path == "crossgraft.llava.lmms_eval.CrossgraftLlava"
