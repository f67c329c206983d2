"""`llava compare`: deltas and paired bootstrap intervals over held-out samples, and refusals of unequal data."""

import json
import shutil

import numpy as np
import pytest

from crossgraft.errors import ConfigError
from crossgraft.llava.compare import Evaluation, compare, compare_variants, statistics_of
from crossgraft.llava.config import EvaluateConfig
from crossgraft.llava.evaluate import evaluate

REFERENCES = [
    f"A {c} {s} on a {b} background." for c in ("red", "blue") for s in ("circle", "square") for b in ("white", "grey")
] * 4


def fake_evaluation(predictions, losses, name="run"):
    rows = [
        {"id": f"s{i:03d}", "prediction": p, "reference": r, "loss_sum": loss * 10, "tokens": 10,
         "attributes_right": sum(w in p for w in r.lower().split()[1:3]), "attributes_total": 2}
        for i, (p, r, loss) in enumerate(zip(predictions, REFERENCES, losses))
    ]  # fmt: skip
    return Evaluation(name, {"generation": {"max_new_tokens": 8}}, rows)


def test_a_better_variant_gets_a_positive_delta_whose_interval_excludes_zero():
    rng = np.random.default_rng(0)
    weak = fake_evaluation(["A red circle."] * len(REFERENCES), rng.normal(2.0, 0.1, len(REFERENCES)))
    strong = fake_evaluation(REFERENCES, rng.normal(1.5, 0.1, len(REFERENCES)))
    deltas = {d.metric: d for d in compare_variants([weak], [strong])}
    assert set(deltas) == {"loss", "perplexity", "bleu4", "rouge_l", "cider_d", "attributes"}
    for metric in ("bleu4", "rouge_l", "cider_d", "attributes"):
        d = deltas[metric]
        assert d.delta == pytest.approx(d.other - d.reference) and 0 < d.ci_low <= d.delta <= d.ci_high
    assert deltas["bleu4"].other == pytest.approx(1.0)
    assert deltas["loss"].ci_high < 0  # a lower loss: the whole interval below zero
    assert deltas["perplexity"].other == pytest.approx(np.exp(deltas["loss"].other))


def test_a_run_against_itself_has_zero_delta_and_seed_variation_widens_the_interval():
    rng = np.random.default_rng(1)
    runs = [fake_evaluation(["A red square on a grey background."] * 32, rng.normal(2, 0.3, 32)) for _ in range(2)]
    for d in compare_variants(runs[:1], runs[:1]):
        assert d.delta == 0 and d.ci_low == 0 and d.ci_high == 0
    seeds = compare_variants(runs, runs[::-1])
    loss = next(d for d in seeds if d.metric == "loss")
    assert loss.delta == pytest.approx(0, abs=1e-12)
    # the pairs' differences cancel on average, but the seeds differ: resampling the pairs widens the interval
    assert loss.ci_low < -0.01 and loss.ci_high > 0.01


def test_compare_refuses_evaluations_of_other_samples_or_settings(tiny_models, llava_sample, tmp_path):
    base = tiny_models["llava_qwen"]
    config = dict(data_path=str(llava_sample), max_new_tokens=3)
    a, _ = evaluate(EvaluateConfig(model_name_or_path=str(base), out=tmp_path / "a", **config))
    b, _ = evaluate(EvaluateConfig(model_name_or_path=str(tiny_models["llava_qwen_with_alternating_attn"]),
                                   out=tmp_path / "b", **config))  # fmt: skip
    text = compare([f"base={a}", f"alt={b}"], out=tmp_path / "cmp")
    assert "alt  vs  base" in text and "BLEU-4" in text and "paired bootstrap" in text
    samples = len(json.loads(llava_sample.read_text()))
    expected = f"(n={samples} samples)" if samples >= 5 else f"none (n={samples} samples"
    assert expected in text
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["comparisons"][0]["variant"] == "alt"

    fewer = tmp_path / "fewer"
    shutil.copytree(b, fewer)
    lines = (fewer / "predictions.jsonl").read_text().splitlines()
    (fewer / "predictions.jsonl").write_text("\n".join(lines[1:]) + "\n")
    with pytest.raises(ConfigError, match="other samples"):
        compare([f"base={a}", f"alt={fewer}"])

    other_settings, _ = evaluate(EvaluateConfig(model_name_or_path=str(base), out=tmp_path / "c",
                                                **{**config, "max_new_tokens": 2}))  # fmt: skip
    with pytest.raises(ConfigError, match="other settings"):
        compare([f"base={a}", f"short={other_settings}"])


def test_statistics_skip_attributes_when_records_have_none():
    evaluation = fake_evaluation(REFERENCES, [1.0] * len(REFERENCES))
    for row in evaluation.rows:
        row["attributes_total"] = 0
    assert "attributes" not in statistics_of(evaluation)


def test_fewer_than_five_samples_get_no_interval_but_their_count():
    from crossgraft.llava.compare import compare_variants, format_deltas

    few = fake_evaluation(["A red circle."] * 4, [2.0] * 4)
    few.rows = few.rows[:4]
    deltas = compare_variants([few], [few], seed=0)
    assert all(d.ci_low is None and d.units == 4 for d in deltas)
    assert "none (n=4 samples; a bootstrap interval needs at least 5)" in format_deltas("a", "b", deltas, 4, "")
