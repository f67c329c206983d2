"""`test`: the named checkpoint, results written, metrics independent of the batch size, image-level evaluation
without masks, and the class descriptions a run was trained with."""

import json

import pytest
from helpers import quick_train_config

from crossgraft.anomaly.config import DataConfig, EvalConfig
from crossgraft.anomaly.data import load_data
from crossgraft.anomaly.data.records import write_jsonl
from crossgraft.anomaly.evaluate import evaluate
from crossgraft.anomaly.metrics import mean_metrics
from crossgraft.anomaly.run_folder import load_run_config
from crossgraft.anomaly.train import train


def synthetic(root, **changes):
    return DataConfig(dataset="synthetic", data_root=root, **changes)


@pytest.mark.slow  # trains several runs
def test_evaluation_picks_the_named_epoch_and_writes_results(trained_run, synthetic_root, tmp_path):
    results = evaluate(
        EvalConfig(
            data=synthetic(synthetic_root),
            save_path=trained_run,
            epoch=1,
            visualize=True,
            pro_compat=True,
            out=tmp_path / "eval",
        )
    )
    assert set(results) == {"stripes", "checker", "dots"}
    assert all(m.aupro_compat is not None and 0 <= m.pixel_auroc <= 1 for m in results.values())
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert saved["epoch"] == 1 and set(saved["classes"]) == set(results)
    assert "base run in" in saved["model"] and "image_adapter_1.pth (epoch 1)" in saved["model"]
    assert "image_adapter_1.pth (epoch 1)" in (tmp_path / "eval" / "test.log").read_text()
    visualize = tmp_path / "eval" / "visualize"
    assert len(list(visualize.glob("*/*.png"))) == 18  # a panel per image
    assert sorted(p.name for p in visualize.glob("*_sheet.png")) == [f"{c}_sheet.png" for c in sorted(results)]
    plots = tmp_path / "eval" / "plots"
    stems = {"metrics", "curves_mean", *(f"curves_{c}" for c in results)}
    assert {p.name for p in plots.iterdir()} == {f"{s}.{suffix}" for s in stems for suffix in ("png", "svg")}
    # a different epoch is a different model
    other = evaluate(
        EvalConfig(data=synthetic(synthetic_root), save_path=trained_run, epoch=2, plots=False, out=tmp_path / "e2")
    )
    assert any(other[c].pixel_auroc != results[c].pixel_auroc for c in results)
    default = EvalConfig(data=synthetic(synthetic_root), save_path=trained_run, epoch=2)
    assert default.results_dir == trained_run / "test_synthetic_epoch2"


def test_a_cross_attention_run_scores_the_same_at_batch_1_and_4(cross_run, synthetic_root, tmp_path):
    results = {}
    for size in (1, 4):
        config = EvalConfig(
            data=synthetic(synthetic_root), save_path=cross_run, batch_size=size, plots=False, out=tmp_path / f"b{size}"
        )
        per_class = evaluate(config)
        results[size] = {**per_class, "mean": mean_metrics(per_class)}
    assert set(results[1]) == {"stripes", "checker", "dots", "mean"}
    for name, metrics in results[1].items():
        for metric, value in metrics.as_dict().items():
            # maps agree to float rounding (~1e-6), which can reorder near-tied pixels; the batch-coupled context
            # this guards against moved maps by ~1e-3 and the metrics by ~1e-3
            assert getattr(results[4][name], metric) == pytest.approx(value, abs=1e-5), (name, metric)


def test_image_level_only_evaluation_without_masks(trained_run, synthetic_root, tmp_path):
    samples = load_data(synthetic(synthetic_root, classes=["dots"]), "test")
    no_masks = [s.__class__(s.image_path, s.label, s.class_name, s.defect_type, None) for s in samples]
    meta = write_jsonl(no_masks, tmp_path / "no_masks.jsonl", root=synthetic_root)
    data = synthetic(synthetic_root, meta=meta)
    with pytest.raises(Exception, match="anomalous image without a mask.*--allow_missing_masks"):
        evaluate(EvalConfig(data=data, save_path=trained_run, plots=False, out=tmp_path / "refused"))
    data = synthetic(synthetic_root, meta=meta, allow_missing_masks=True)
    results = evaluate(EvalConfig(data=data, save_path=trained_run, plots=False, out=tmp_path / "images"))
    dots = results["dots"]
    assert dots.image_auroc is not None and dots.image_ap is not None
    assert dots.pixel_auroc is None and dots.aupro is None  # no masks: not applicable, not 0
    with_masks = evaluate(
        EvalConfig(
            data=synthetic(synthetic_root, classes=["dots"]), save_path=trained_run, plots=False, out=tmp_path / "all"
        )
    )
    assert dots.image_auroc == with_masks["dots"].image_auroc  # the image metrics do not need the masks


def test_class_descriptions_are_recorded_and_used_at_test_time(synthetic_root, tmp_path):
    descriptions = tmp_path / "descriptions.json"
    descriptions.write_text(json.dumps({"dots": "a grey fabric with round dots", "zipper": "a metal zipper"}))
    run = tmp_path / "run"
    train(quick_train_config(synthetic_root, run, image_epoch=1, class_descriptions=descriptions))
    saved = load_run_config(run)
    assert saved.descriptions == {"dots": "a grey fabric with round dots", "zipper": "a metal zipper"}
    descriptions.unlink()  # the run folder alone is enough
    data = synthetic(synthetic_root, classes=["dots"])
    recorded = evaluate(EvalConfig(data=data, save_path=run, plots=False, out=tmp_path / "recorded"))
    assert (
        "prompts of dots describe it as 'a grey fabric with round dots'"
        in (tmp_path / "recorded" / "test.log").read_text()
    )
    plain = tmp_path / "plain.json"
    plain.write_text("{}")
    overridden = evaluate(
        EvalConfig(data=data, save_path=run, class_descriptions=plain, plots=False, out=tmp_path / "plain")
    )
    assert "describe it as" not in (tmp_path / "plain" / "test.log").read_text()
    assert overridden["dots"].pixel_auroc != recorded["dots"].pixel_auroc  # other prompts, other maps
