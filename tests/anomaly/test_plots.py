"""Figures show what the results hold: curve areas are the reported metrics, bars and markers are their values,
training curves are the log's numbers."""

import numpy as np
import pytest
from helpers import tied_class, trapezoid
from matplotlib.collections import PolyCollection
from PIL import Image

from crossgraft.anomaly.compare import compare
from crossgraft.anomaly.config import DataConfig, EvalConfig
from crossgraft.anomaly.evaluate import evaluate
from crossgraft.anomaly.metrics import ClassMetricsAccumulator, mean_metrics
from crossgraft.anomaly.plots import (
    class_metrics_figure,
    curve_figure,
    forest_figure,
    mean_curves,
    per_class_delta_figure,
    plot_run,
    read_training_log,
    training_figure,
)
from crossgraft.anomaly.report import ComparedRun, MetricDelta
from crossgraft.cli import main
from crossgraft.errors import DataError
from crossgraft.plots import save_figure


def evaluated_class(seed):
    """The metrics and curves of one tied class (helpers.tied_class)."""
    scores, masks, image_scores, labels = tied_class(seed)
    accumulator = ClassMetricsAccumulator()
    accumulator.add(image_scores, labels, scores, masks)
    return accumulator.evaluate()


def polygon_area(vertices):
    x, y = vertices[:, 0], vertices[:, 1]
    return 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def drawn_areas(figure):
    """Per panel: the trapezoid area under its first line and, where shaded, the shaded polygon's area."""
    areas = []
    for axes in figure.axes:
        if not axes.lines:
            areas.append(None)
            continue
        xy = axes.lines[0].get_xydata()
        shaded = [c for c in axes.collections if isinstance(c, PolyCollection)]
        shade = polygon_area(shaded[0].get_paths()[0].vertices) if shaded else None
        areas.append((float(trapezoid(xy[:, 1], xy[:, 0])), shade))
    return areas


def test_the_curves_drawn_are_the_metrics(tmp_path):
    evaluation = evaluated_class(0)
    metrics = evaluation.metrics
    figure = curve_figure(evaluation.curves, "synthetic / stripes")
    expected = [metrics.image_auroc, metrics.image_ap, metrics.pixel_auroc, metrics.pixel_ap]
    areas = drawn_areas(figure)
    for (area, _), value in zip(areas[:4], expected):
        assert area == pytest.approx(value, abs=1e-9)
    pro_line, pro_shade = areas[4]
    limit = evaluation.curves.pro.x_limit
    assert pro_shade / limit == pytest.approx(metrics.aupro, abs=1e-6)  # the shaded area is the AUPRO
    assert pro_line / limit == pytest.approx(metrics.aupro, abs=1e-9)
    assert figure.axes[4].get_xlim() == (0, limit)
    assert f"{100 * metrics.aupro:.1f}%" in figure.axes[4].get_title()
    png, svg = save_figure(figure, tmp_path / "curves_stripes")
    assert Image.open(png).size == (2000, 440)
    assert svg.read_text().lstrip().startswith("<?xml") and "</svg>" in svg.read_text()


def test_the_mean_curves_are_the_mean_metrics():
    evaluations = {f"class{seed}": evaluated_class(seed) for seed in range(3)}
    mean = mean_metrics({name: e.metrics for name, e in evaluations.items()})
    figure = curve_figure(mean_curves({name: e.curves for name, e in evaluations.items()}), "mean")
    areas = drawn_areas(figure)
    for (area, _), value in zip(areas[:4], [mean.image_auroc, mean.image_ap, mean.pixel_auroc, mean.pixel_ap]):
        assert area == pytest.approx(value, abs=1e-9)
    assert areas[4][1] / 0.3 == pytest.approx(mean.aupro, abs=1e-6)


def test_a_class_with_one_label_gets_a_note_not_a_curve():
    accumulator = ClassMetricsAccumulator()
    accumulator.add(np.array([0.1, 0.2]), np.array([0, 0]), np.zeros((2, 4, 4)), np.zeros((2, 4, 4)))
    figure = curve_figure(accumulator.evaluate().curves, "all normal")
    assert all(not axes.lines and "n/a" in axes.texts[0].get_text() for axes in figure.axes)


def test_the_bars_are_the_results():
    per_class = {f"c{seed}": evaluated_class(seed).metrics for seed in range(3)}
    per_class["c1"].aupro = None  # not applicable: no bar
    figure = class_metrics_figure(per_class, "results")
    axes = figure.axes[0]
    heights = [[bar.get_height() for bar in container] for container in axes.containers]
    rows = [*per_class.values(), mean_metrics(per_class)]
    for metric, drawn in zip(("image_auroc", "pixel_auroc", "aupro"), heights):
        values = [100 * getattr(m, metric) for m in rows if getattr(m, metric) is not None]
        assert drawn == pytest.approx(values)
    assert [t.get_text() for t in axes.get_xticklabels()] == ["c0", "c1", "c2", "mean"]


def deltas():
    return [
        MetricDelta("image_auroc", 0.8, 0.85, 0.05, 0.01, 0.02, 0.01, 0.09),
        MetricDelta("pixel_auroc", 0.9, 0.88, -0.02, 0.0, 0.0, -0.05, 0.01),
        MetricDelta("aupro", 0.7, 0.7, 0.0, 0.0, 0.0, None, None),
    ]


def test_the_forest_plot_draws_each_difference_and_its_interval():
    runs = [ComparedRun("cross_attn", deltas(), {}), ComparedRun("other", deltas()[::-1], {})]
    axes = forest_figure("base", runs).axes[0]
    points = [line for line in axes.lines if line.get_marker() == "o"]
    intervals = [line for line in axes.lines if line.get_marker() == "None" and len(line.get_xdata()) == 2]
    expected = [100 * d.delta for d in deltas() for _ in range(2)]
    assert [line.get_xdata()[0] for line in points] == pytest.approx(
        [100 * next(d for d in run.deltas if d.metric == m.metric).delta for m in deltas() for run in runs]
    )
    assert len(points) == len(expected)
    drawn = sorted(tuple(line.get_xdata()) for line in intervals if line.get_ydata()[0] == line.get_ydata()[1])
    wanted = sorted((100 * d.ci_low, 100 * d.ci_high) for d in deltas() if d.ci_low is not None for _ in runs)
    assert drawn == [pytest.approx(w) for w in wanted]


def test_the_per_class_map_holds_the_deltas():
    per_class = {"image_auroc": {"a": 0.1, "b": -0.02}, "aupro": {"a": float("nan"), "b": 0.03}}
    axes = per_class_delta_figure("base", ComparedRun("x", deltas(), per_class)).axes[0]
    values = axes.images[0].get_array()
    assert np.allclose(values, [[10.0, 0.0], [-2.0, 3.0]])
    assert [t.get_text() for t in axes.texts] == ["+10.0", "n/a", "-2.0", "+3.0"]


def test_compare_writes_its_figures(trained_run, synthetic_root, tmp_path):
    data = DataConfig(dataset="synthetic", data_root=synthetic_root)
    for epoch in (1, 2):
        evaluate(EvalConfig(data=data, save_path=trained_run, epoch=epoch, plots=False, out=tmp_path / f"e{epoch}"))
    compare([f"epoch1={tmp_path / 'e1'}", f"epoch2={tmp_path / 'e2'}"], out=tmp_path / "cmp")
    names = {p.name for p in (tmp_path / "cmp").iterdir()}
    assert {"compare_forest.png", "compare_forest.svg", "compare_classes_epoch2.png"} <= names


def test_training_curves_are_the_logged_numbers(trained_run, tmp_path, capsys):
    records = read_training_log(trained_run)
    log = (trained_run / "train.log").read_text()
    assert [(r.stage, r.epoch) for r in records] == [("text", 0), ("image", 0), ("image", 1)]
    for record in records:
        assert f"training {record.stage} epoch {record.epoch}: loss: {record.loss:.6f}" in log
    figure = training_figure(records, "run")
    loss_axes, norm_axes = figure.axes
    image_line = next(line for line in loss_axes.lines if "image" in line.get_label())
    assert list(image_line.get_ydata()) == [r.loss for r in records if r.stage == "image"]
    norm_line = next(line for line in norm_axes.lines if line.get_label() == "image_adapter")
    assert list(norm_line.get_ydata()) == [r.grad_norms["image_adapter"] for r in records if r.stage == "image"]
    assert main(["anomaly", "plot-run", str(trained_run), "--out", str(tmp_path)]) == 0
    assert Image.open(tmp_path / "training.png").size == (1200, 450)


def test_a_log_is_read_with_rounds_and_repeated_epochs_once(tmp_path):
    lines = [
        "2026 INFO training text epoch 0: loss: 2.000000 | average grad norm: text_adapter 1.0000",
        "2026 INFO ====\nFEEDBACK LOOP 2/2\n====",
        "2026 INFO training text epoch 0: loss: 1.500000 | average grad norm: text_adapter 0.5000, text_cross_attn 0.2",
        "2026 INFO training text epoch 0: loss: 1.400000 | average grad norm: text_adapter 0.4000, text_cross_attn 0.1",
    ]
    (tmp_path / "train_cross_attention.log").write_text("\n".join(lines) + "\n")
    records = read_training_log(tmp_path)
    assert [(r.round, r.loss) for r in records] == [(1, 2.0), (2, 1.4)]
    assert records[1].grad_norms == {"text_adapter": 0.4, "text_cross_attn": 0.1}
    assert plot_run(tmp_path)[0] == tmp_path / "plots" / "training.png"
    with pytest.raises(DataError, match="no training log"):
        read_training_log(tmp_path / "plots")
