"""Per-class + mean result tables: terminal text, CSV and JSON."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from crossgraft.anomaly.metrics import AnomalyMetrics, mean_metrics
from crossgraft.errors import ConfigError
from crossgraft.files import atomic_write, write_text_atomic

COLUMNS = {
    "image_auroc": "I-AUROC",
    "image_ap": "I-AP",
    "image_f1max": "I-F1max",
    "pixel_auroc": "P-AUROC",
    "pixel_ap": "P-AP",
    "pixel_f1max": "P-F1max",
    "aupro": "AUPRO",
    "aupro_compat": "AUPRO@200",
}
MEAN_ROW = "mean"
NOT_APPLICABLE = "n/a"


def _columns(per_class: dict[str, AnomalyMetrics]) -> list[str]:
    """Every column, except AUPRO@200 when no class has it."""
    fields = list(COLUMNS)
    if all(m.aupro_compat is None for m in per_class.values()):
        fields.remove("aupro_compat")
    return fields


def percent(value: float | None) -> str:
    """A metric in percent with one decimal, or n/a where it does not apply."""
    return NOT_APPLICABLE if value is None else f"{100 * value:.1f}"


def format_table(per_class: dict[str, AnomalyMetrics], title: str | None = None) -> str:
    """A plain-text table in percent (one decimal), classes then their mean."""
    fields = _columns(per_class)
    rows = {**per_class, MEAN_ROW: mean_metrics(per_class)}
    name_width = max(len(MEAN_ROW), *(len(name) for name in rows))
    widths = [max(len(COLUMNS[f]), 6) for f in fields]
    lines = []
    if title:
        lines.append(title)
    header = f"{'class':<{name_width}}  " + "  ".join(f"{COLUMNS[f]:>{w}}" for f, w in zip(fields, widths))
    lines += [header, "-" * len(header)]
    for name, metrics in rows.items():
        if name == MEAN_ROW:
            lines.append("-" * len(header))
        cells = []
        for field, width in zip(fields, widths):
            value = getattr(metrics, field)
            cells.append(f"{percent(value):>{width}}")
        lines.append(f"{name:<{name_width}}  " + "  ".join(cells))
    if any(getattr(m, f) is None for m in per_class.values() for f in fields):
        lines.append(
            f"{NOT_APPLICABLE}: not applicable (the class has only normal or only anomalous "
            "images/pixels); left out of the mean"
        )
    return "\n".join(lines)


def write_csv(per_class: dict[str, AnomalyMetrics], path: Path) -> Path:
    """One row per class and a mean row; values are fractions in [0, 1], empty where not applicable."""
    fields = _columns(per_class)
    rows = {**per_class, MEAN_ROW: mean_metrics(per_class)}
    with atomic_write(path) as handle:
        writer = csv.writer(handle)
        writer.writerow(["class", *fields])
        for name, metrics in rows.items():
            writer.writerow([name, *("" if getattr(metrics, f) is None else repr(getattr(metrics, f)) for f in fields)])
    return Path(path)


def write_json(per_class: dict[str, AnomalyMetrics], path: Path, extra: dict | None = None) -> Path:
    """{"classes": {name: metrics}, "mean": metrics, ...extra}; null where not applicable."""
    document = {
        "classes": {name: metrics.as_dict() for name, metrics in per_class.items()},
        "mean": mean_metrics(per_class).as_dict(),
        **(extra or {}),
    }
    return write_text_atomic(path, json.dumps(document, indent=2) + "\n")


def read_json(path: Path) -> dict[str, AnomalyMetrics]:
    """Per-class metrics back from a results.json."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
        return {name: AnomalyMetrics(**values) for name, values in document["classes"].items()}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
        raise ConfigError(f"{path}: not a results.json written by `crossgraft anomaly test` ({error!r})") from error


# ------------------------------------------------------------------------- a comparison of runs, as records
@dataclass
class MetricDelta:
    metric: str
    reference: float  # mean over classes (and seeds)
    other: float
    delta: float
    reference_std: float  # over seeds (0 with one seed)
    other_std: float
    ci_low: float | None  # paired bootstrap 95% interval of the mean difference (None below MIN_UNITS classes)
    ci_high: float | None
    units: int = 0  # classes the interval resamples (each the mean over the paired seeds)


@dataclass
class ComparedRun:
    """One run compared with the reference."""

    name: str
    deltas: list[MetricDelta]  # mean over classes, per metric
    per_class: dict[str, dict[str, float]]  # {metric: {class: delta}}
