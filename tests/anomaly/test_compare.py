"""`compare`: per-class and mean deltas, seeds as mean ± std, a paired bootstrap interval, and refusal of runs
evaluated on other data."""

import json

import pytest

from crossgraft.anomaly.compare import compare, compare_runs
from crossgraft.anomaly.metrics import AnomalyMetrics
from crossgraft.anomaly.report import read_json, write_json
from crossgraft.errors import ConfigError


def metrics(value):
    return AnomalyMetrics(value, value, value, value, value, value, value)


def test_compare_deltas_and_paired_bootstrap(tmp_path):
    classes = ["a", "b", "c"]
    for seed, offset in ((1, 0.0), (2, 0.02)):
        write_json({c: metrics(0.5 + 0.1 * i + offset) for i, c in enumerate(classes)}, tmp_path / f"A{seed}.json")
        write_json({c: metrics(0.55 + 0.1 * i + offset) for i, c in enumerate(classes)}, tmp_path / f"B{seed}.json")
    text = compare(
        [f"A={tmp_path}/A1.json,{tmp_path}/A2.json", f"B={tmp_path}/B1.json,{tmp_path}/B2.json"], out=tmp_path
    )
    assert "B  vs  A" in text and "+5.0" in text and "± 1.0" in text
    deltas, per_class = compare_runs([read_json(tmp_path / "A1.json")], [read_json(tmp_path / "B1.json")])
    assert all(d.delta == pytest.approx(0.05) for d in deltas)
    assert all(d.ci_low is None and d.ci_high is None and d.units == 3 for d in deltas)  # 3 classes: no interval
    assert "none (n=3 classes; a bootstrap interval needs at least 5)" in text
    five = {c: metrics(0.5) for c in "abcde"}
    deltas, _ = compare_runs([five], [{c: metrics(0.55) for c in "abcde"}])
    assert all(d.ci_low == pytest.approx(0.05) and d.ci_high == pytest.approx(0.05) and d.units == 5 for d in deltas)
    assert per_class["pixel_auroc"] == pytest.approx({"a": 0.05, "b": 0.05, "c": 0.05})
    assert json.loads((tmp_path / "compare.json").read_text())["comparisons"][0]["run"].startswith("B=")


def test_the_bootstrap_interval_covers_a_spread_of_per_class_deltas(tmp_path):
    reference = {c: metrics(0.5) for c in "abcdefgh"}
    other = {c: metrics(0.5 + d) for c, d in zip("abcdefgh", (-0.04, 0.0, 0.02, 0.04, 0.06, 0.08, 0.1, 0.14))}
    deltas, _ = compare_runs([reference], [other], seed=0)
    delta = next(d for d in deltas if d.metric == "pixel_auroc")
    assert delta.delta == pytest.approx(0.05)
    assert delta.ci_low < 0.05 < delta.ci_high and delta.ci_low > -0.04 and delta.ci_high < 0.14


def test_runs_evaluated_on_other_data_are_refused(tmp_path):
    write_json({"a": metrics(0.5)}, tmp_path / "one.json")
    write_json({"z": metrics(0.5)}, tmp_path / "other.json")
    with pytest.raises(ConfigError, match="evaluated on other classes"):
        compare([str(tmp_path / "one.json"), str(tmp_path / "other.json")])
    with pytest.raises(ConfigError, match=r"no results.json at .*missing"):
        compare([str(tmp_path / "one.json"), str(tmp_path / "missing")])
    (tmp_path / "broken.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"broken.json: not a results.json"):
        compare([str(tmp_path / "one.json"), str(tmp_path / "broken.json")])
