"""Figures of anomaly results: the curves behind the metrics, per-class bars, ablation forest plots and
training curves. Every figure draws numbers computed elsewhere (metrics, compare, the run's log); none computes
a metric of its own."""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from crossgraft.anomaly.metrics import AnomalyMetrics, ClassCurves, Curve, clip_polyline, mean_curve, mean_metrics
from crossgraft.anomaly.report import COLUMNS, MEAN_ROW, ComparedRun
from crossgraft.errors import DataError
from crossgraft.files import read_text
from crossgraft.plots import empty_axes, integer_ticks, new_figure, save_figure

CURVE_PANELS = (  # (ClassCurves field, title, x label, y label)
    ("image_roc", "image ROC", "false positive rate", "true positive rate"),
    ("image_pr", "image PR", "recall", "precision"),
    ("pixel_roc", "pixel ROC", "false positive rate", "true positive rate"),
    ("pixel_pr", "pixel PR", "recall", "precision"),
    ("pro", "PRO", "false positive rate", "per-region overlap"),
)
HEADLINE_METRICS = ("image_auroc", "pixel_auroc", "aupro")
CURVE_COLOUR = "tab:blue"


# ------------------------------------------------------------------------------------------- curves
def curve_figure(curves: ClassCurves, title: str) -> Figure:
    """Image ROC and PR, pixel ROC and PR, and the PRO curve up to its FPR limit with the AUPRO area shaded."""
    figure = new_figure(20, 4.4)
    figure.suptitle(title)
    for axes, (name, panel_title, x_label, y_label) in zip(figure.subplots(1, len(CURVE_PANELS)), CURVE_PANELS):
        curve: Curve | None = getattr(curves, name)
        if curve is None:
            empty_axes(axes, panel_title)
            continue
        draw_curve(axes, curve, panel_title)
        axes.set_xlabel(x_label)
        axes.set_ylabel(y_label)
    return figure


def draw_curve(axes: Axes, curve: Curve, title: str) -> None:
    """One curve; PRO is drawn up to its limit and the area AUPRO integrates is shaded."""
    if curve.metric == "AUPRO":
        xs, ys = clip_polyline(curve.x, curve.y, curve.x_limit)
        axes.fill_between(xs, ys, 0.0, color=CURVE_COLOUR, alpha=0.25, linewidth=0)
        axes.plot(xs, ys, color=CURVE_COLOUR)
        axes.set_xlim(0, curve.x_limit)
        title = f"{title} (up to FPR {curve.x_limit:g})"
    else:
        axes.plot(curve.x, curve.y, color=CURVE_COLOUR)
        axes.set_xlim(0, 1)
        if curve.metric == "AUROC":
            axes.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=0.8)  # chance
    axes.set_ylim(0, 1.02)
    axes.set_title(f"{title}: {curve.metric} {100 * curve.value:.1f}%")
    axes.grid(alpha=0.3)


def mean_curves(per_class: dict[str, ClassCurves]) -> ClassCurves:
    """The vertical average of each curve over the classes that have it (its area is the mean metric)."""
    mean = ClassCurves()
    for name, *_ in CURVE_PANELS:
        curves = [getattr(c, name) for c in per_class.values() if getattr(c, name) is not None]
        setattr(mean, name, mean_curve(curves) if curves else None)
    return mean


def write_curve_figures(per_class: dict[str, ClassCurves], out: Path, dataset: str) -> list[Path]:
    """OUT/curves_{class}.png|svg per class and OUT/curves_mean.png|svg."""
    written = []
    for class_name, curves in per_class.items():
        written += save_figure(curve_figure(curves, f"{dataset} / {class_name}"), out / f"curves_{class_name}")
    mean = curve_figure(mean_curves(per_class), f"{dataset}, mean over {len(per_class)} classes (vertical average)")
    return written + save_figure(mean, out / "curves_mean")


# --------------------------------------------------------------------------------------- class bars
def class_metrics_figure(per_class: dict[str, AnomalyMetrics], title: str) -> Figure:
    """Grouped bars of the headline metrics (%) per class and for the mean; n/a bars are left out."""
    rows = {**per_class, MEAN_ROW: mean_metrics(per_class)}
    figure = new_figure(max(6.0, 0.9 * len(rows) + 2), 4.5)
    axes = figure.subplots()
    width = 0.8 / len(HEADLINE_METRICS)
    positions = np.arange(len(rows))
    for index, metric in enumerate(HEADLINE_METRICS):
        values = [getattr(m, metric) for m in rows.values()]
        shown = [i for i, v in enumerate(values) if v is not None]
        bars = axes.bar(
            positions[shown] + (index - (len(HEADLINE_METRICS) - 1) / 2) * width,
            [100 * values[i] for i in shown],
            width,
            label=COLUMNS[metric],
        )
        axes.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    axes.set_xticks(positions, list(rows), rotation=30, ha="right")
    axes.set_ylabel("%")
    axes.set_ylim(0, 108)
    axes.set_title(textwrap.fill(title, width=int(figure.get_figwidth() * 11)))
    figure.legend(loc="outside lower center", ncols=len(HEADLINE_METRICS))
    axes.grid(axis="y", alpha=0.3)
    return figure


# ---------------------------------------------------------------------------------------- comparison
def forest_figure(reference: str, runs: list[ComparedRun]) -> Figure:
    """Per metric, each run's mean difference to the reference (percentage points) with its paired bootstrap
    95% interval; a dashed line at no difference."""
    metrics = [d.metric for d in runs[0].deltas]
    figure = new_figure(7.5, 0.55 * len(metrics) * len(runs) + 1.6)
    axes = figure.subplots()
    labels, row = [], 0
    for metric in metrics:
        for run_index, run in enumerate(runs):
            delta = next(d for d in run.deltas if d.metric == metric)
            colour = f"C{run_index}"
            if delta.ci_low is not None and delta.ci_high is not None:
                axes.plot([100 * delta.ci_low, 100 * delta.ci_high], [row, row], color=colour, linewidth=2)
            axes.plot([100 * delta.delta], [row], "o", color=colour, label=run.name if row < len(runs) else None)
            labels.append(f"{COLUMNS[metric]}  {run.name}" if len(runs) > 1 else COLUMNS[metric])
            row += 1
    axes.axvline(0, color="0.4", linestyle="--", linewidth=0.8)
    axes.set_yticks(range(row), labels)
    axes.invert_yaxis()
    axes.set_xlabel(f"difference to {reference} (percentage points), mean over classes; bar: bootstrap 95% CI")
    names = runs[0].name if len(runs) == 1 else ", ".join(run.name for run in runs)
    axes.set_title(f"{names} compared with {reference}")
    axes.grid(axis="x", alpha=0.3)
    return figure


def per_class_delta_figure(reference: str, run: ComparedRun) -> Figure:
    """Classes x metrics: the run's difference to the reference (percentage points), red worse, blue better."""
    metrics = list(run.per_class)
    classes = list(next(iter(run.per_class.values())))
    values = np.array([[100 * run.per_class[m][c] for m in metrics] for c in classes])  # (classes, metrics)
    figure = new_figure(1.2 * len(metrics) + 3, 0.4 * len(classes) + 1.8)
    axes = figure.subplots()
    finite = np.abs(values[np.isfinite(values)])
    bound = max(float(finite.max()) if finite.size else 1.0, 1e-9)
    image = axes.imshow(np.nan_to_num(values), cmap="RdBu", vmin=-bound, vmax=bound, aspect="auto")
    for (row, column), value in np.ndenumerate(values):
        colour = "white" if abs(value) > 0.6 * bound else "black"  # readable on the dark ends of the scale
        text = "n/a" if np.isnan(value) else f"{value:+.1f}"
        axes.text(column, row, text, ha="center", va="center", fontsize=8, color=colour)
    axes.set_xticks(range(len(metrics)), [COLUMNS[m] for m in metrics])
    axes.set_yticks(range(len(classes)), classes)
    axes.set_title(f"{run.name} minus {reference}, per class (percentage points)")
    figure.colorbar(image, ax=axes)
    return figure


def write_comparison_figures(reference: str, runs: list[ComparedRun], out: Path) -> list[Path]:
    """OUT/compare_forest.png|svg and OUT/compare_classes_{run}.png|svg per compared run."""
    written = save_figure(forest_figure(reference, runs), out / "compare_forest")
    for run in runs:
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", run.name)
        written += save_figure(per_class_delta_figure(reference, run), out / f"compare_classes_{stem}")
    return written


# ------------------------------------------------------------------------------------------ training
EPOCH_LINE = re.compile(
    r"training (?P<stage>text|image) epoch (?P<epoch>\d+): loss: (?P<loss>\S+) \| average grad norm: (?P<norms>.*)$"
)
ROUND_LINE = re.compile(r"FEEDBACK LOOP (?P<round>\d+)/\d+")
LOG_NAMES = ("train.log", "train_cross_attention.log")


@dataclass
class EpochRecord:
    """One finished epoch as the run's log recorded it."""

    stage: str  # "text" or "image"
    round: int  # feedback round, 1 without feedback
    epoch: int  # 0-based, as logged
    loss: float
    grad_norms: dict[str, float] = field(default_factory=dict)  # module group -> average gradient norm


def read_training_log(run: Path) -> list[EpochRecord]:
    """Every epoch line of a run's train.log (train_cross_attention.log for variants). An epoch logged twice
    (a run killed between its log line and its checkpoint, then resumed) counts once, the later line."""
    logs = [Path(run) / name for name in LOG_NAMES if (Path(run) / name).is_file()]
    if not logs:
        raise DataError(f"no training log in {run} (looked for {', '.join(LOG_NAMES)})")
    records: dict[tuple[str, int, int], EpochRecord] = {}
    round_index = 1
    for line in read_text(logs[0], "training log").splitlines():
        if found := ROUND_LINE.search(line):
            round_index = int(found["round"])
        elif found := EPOCH_LINE.search(line):
            norms = {}
            for part in found["norms"].split(", "):
                name, _, value = part.rpartition(" ")
                norms[name] = float(value)
            key = (found["stage"], round_index, int(found["epoch"]))
            records[key] = EpochRecord(found["stage"], round_index, int(found["epoch"]), float(found["loss"]), norms)
    if not records:
        raise DataError(f"{logs[0]} holds no finished epoch yet")
    return sorted(records.values(), key=lambda r: (r.round, r.stage != "text", r.epoch))


def training_figure(records: list[EpochRecord], title: str) -> Figure:
    """Loss per epoch per stage (and feedback round), and each module group's average gradient norm."""
    figure = new_figure(12, 4.5)
    loss_axes, norm_axes = figure.subplots(1, 2)
    rounds = sorted({r.round for r in records})
    for round_index in rounds:
        for stage in ("text", "image"):
            rows = [r for r in records if r.round == round_index and r.stage == stage]
            if not rows:
                continue
            suffix = f", round {round_index}" if len(rounds) > 1 else ""
            epochs = [r.epoch + 1 for r in rows]
            loss_axes.plot(
                epochs,
                [r.loss for r in rows],
                marker="o",
                label=f"stage {1 if stage == 'text' else 2} ({stage}){suffix}",
            )
            for group in rows[0].grad_norms:
                norms = [r.grad_norms.get(group, np.nan) for r in rows]
                norm_axes.plot(epochs, norms, marker="o", label=f"{group}{suffix}")
    loss_axes.set_title("training loss (mean over the epoch)")
    integer_ticks(loss_axes).set_xlabel("epoch")
    loss_axes.set_ylabel("loss")
    norm_axes.set_title("average gradient norm per module group")
    integer_ticks(norm_axes).set_xlabel("epoch")
    norm_axes.set_yscale("log")
    for axes in (loss_axes, norm_axes):
        axes.legend()
        axes.grid(alpha=0.3)
    figure.suptitle(title)
    return figure


def plot_run(run: Path, out: Path | None = None) -> list[Path]:
    """RUN/plots/training.png|svg (or under `out`) from the run's log."""
    records = read_training_log(run)
    return save_figure(training_figure(records, f"training of {run}"), (out or Path(run) / "plots") / "training")
