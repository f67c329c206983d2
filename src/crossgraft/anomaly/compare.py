"""`crossgraft anomaly compare`: metric deltas between runs evaluated on the same data (an ablation table).

Each run is one results.json (or a folder holding one), or several separated by commas: the same
configuration trained with different seeds; `NAME=` in front names it. The first run is the reference;
every other run gets, per
class and for the mean over classes, its metric minus the reference's. With several seeds, values are
mean ± std over seeds, and the mean difference gets a paired bootstrap 95% interval (seeds paired by
position, classes resampled with replacement).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from crossgraft.anomaly.plots import write_comparison_figures
from crossgraft.anomaly.report import COLUMNS, ComparedRun, MetricDelta, read_json
from crossgraft.bootstrap import MIN_UNITS, bootstrap_interval, interval_text
from crossgraft.errors import ConfigError
from crossgraft.files import write_text_atomic


def _results_file(spec_path: str) -> Path:
    path = Path(spec_path)
    candidate = path / "results.json" if path.is_dir() else path
    if not candidate.is_file():
        raise ConfigError(f"no results.json at {path} (run `crossgraft anomaly test` first)")
    return candidate


def split_spec(spec: str) -> tuple[str, str]:
    """`NAME=PATH[,PATH…]` or `PATH[,PATH…]` (then the paths are the name)."""
    name, _, paths = spec.partition("=") if "=" in spec else (spec, "", spec)
    return name, paths


def load_run(spec: str) -> list[dict]:
    """One run: a list (one entry per seed) of {class: AnomalyMetrics}."""
    return [read_json(_results_file(part)) for part in split_spec(spec)[1].split(",") if part]


def _matrix(seeds: list[dict], classes: list[str], metric: str) -> np.ndarray:
    """(seeds, classes) values; NaN where a class has no value for the metric."""
    return np.array(
        [[getattr(s[c], metric) if getattr(s[c], metric) is not None else np.nan for c in classes] for s in seeds],
        dtype=float,
    )


def compare_runs(reference: list[dict], other: list[dict], *, seed: int = 0) -> tuple[list[MetricDelta], dict]:
    """Mean-over-classes deltas of every metric, and per-class deltas {metric: {class: delta}}."""
    classes = list(reference[0])
    for name, run in (("reference", reference), ("other", other)):
        for results in run:
            if list(results) != classes and set(results) != set(classes):
                raise ConfigError(
                    f"the {name} run was evaluated on other classes ({sorted(results)}) than the "
                    f"reference ({sorted(classes)}): compare runs tested on the same data"
                )
    if len(other) != len(reference) and len(other) > 1 and len(reference) > 1:
        raise ConfigError(f"{len(reference)} reference seeds but {len(other)} seeds to compare: pair them one to one")
    rng = np.random.default_rng(seed)
    deltas, per_class = [], {}
    for metric in COLUMNS:
        a, b = _matrix(reference, classes, metric), _matrix(other, classes, metric)
        if np.isnan(a).all() or np.isnan(b).all():
            continue
        class_a, class_b = np.nanmean(a, axis=0), np.nanmean(b, axis=0)  # per class, over seeds
        per_class[metric] = {c: float(class_b[i] - class_a[i]) for i, c in enumerate(classes)}
        seeds_a, seeds_b = np.nanmean(a, axis=1), np.nanmean(b, axis=1)  # per seed, mean over classes
        low = high = None
        units = 0
        if max(len(reference), len(other)) > 1 or len(classes) > 1:
            pairs = min(len(reference), len(other))
            diff = (b[:pairs] if len(other) > 1 else b) - (a[:pairs] if len(reference) > 1 else a)  # (seeds, classes)
            valid = ~np.isnan(diff).all(axis=0)
            diff = diff[:, valid]
            class_sums, class_counts = np.nansum(diff, axis=0), (~np.isnan(diff)).sum(axis=0)  # (classes,)

            def resampled_mean(counts: np.ndarray, s: np.ndarray = class_sums, n: np.ndarray = class_counts) -> Any:
                return (counts @ s) / (counts @ n)  # the mean over seeds and resampled classes

            units = int(diff.shape[1])
            if units >= MIN_UNITS:
                low, high = bootstrap_interval(resampled_mean, units, rng)
        deltas.append(
            MetricDelta(
                metric,
                float(np.nanmean(seeds_a)),
                float(np.nanmean(seeds_b)),
                float(np.nanmean(seeds_b) - np.nanmean(seeds_a)),
                float(np.std(seeds_a)),
                float(np.std(seeds_b)),
                low,
                high,
                units,
            )
        )
    return deltas, per_class


def format_comparison(name_a: str, name_b: str, deltas: list[MetricDelta], per_class: dict, seeds: int) -> str:
    lines = [
        f"{name_b}  vs  {name_a}  (values in %, mean over classes{', ± std over seeds' if seeds > 1 else ''})",
        f"{'metric':<10}{'reference':>16}{'other':>16}{'delta':>9}   paired bootstrap 95% CI of the delta "
        f"(n: classes resampled{', each the mean over the paired seeds' if seeds > 1 else ''})",
    ]
    for d in deltas:
        ref = f"{100 * d.reference:.1f}" + (f" ± {100 * d.reference_std:.1f}" if seeds > 1 else "")
        oth = f"{100 * d.other:.1f}" + (f" ± {100 * d.other_std:.1f}" if seeds > 1 else "")
        ci = interval_text(d.ci_low, d.ci_high, d.units, "classes")
        lines.append(f"{COLUMNS[d.metric]:<10}{ref:>16}{oth:>16}{100 * d.delta:>+9.1f}   {ci}")
    if per_class:
        metrics = list(per_class)
        classes = list(next(iter(per_class.values())))
        lines += [
            "",
            "per-class delta (other - reference, %):",
            f"{'class':<14}" + "".join(f"{COLUMNS[m]:>11}" for m in metrics),
        ]
        for c in classes:
            cells = "".join(
                f"{'n/a':>11}" if np.isnan(per_class[m][c]) else f"{100 * per_class[m][c]:>+11.1f}" for m in metrics
            )
            lines.append(f"{c:<14}{cells}")
    return "\n".join(lines)


def compare(specs: list[str], out: Path | None = None, seed: int = 0) -> str:
    """Compare every run with the first; returns the printed text. Under `out`: compare.txt, compare.json, the
    forest plot of the mean differences and a per-class difference map per run (PNG and SVG)."""
    if len(specs) < 2:
        raise ConfigError("compare needs at least two runs")
    reference = load_run(specs[0])
    reference_name = split_spec(specs[0])[0]
    texts: list[str] = []
    compared: list[ComparedRun] = []
    comparisons: list[dict] = []
    document = {"reference": specs[0], "comparisons": comparisons}
    for spec in specs[1:]:
        other = load_run(spec)
        deltas, per_class = compare_runs(reference, other, seed=seed)
        seeds = max(len(reference), len(other))
        texts.append(format_comparison(reference_name, split_spec(spec)[0], deltas, per_class, seeds))
        comparisons.append({"run": spec, "mean": [d.__dict__ for d in deltas], "per_class": per_class})
        compared.append(ComparedRun(split_spec(spec)[0], deltas, per_class))
    text = "\n\n".join(texts)
    if out is not None:
        write_text_atomic(Path(out) / "compare.json", json.dumps(document, indent=2))
        write_text_atomic(Path(out) / "compare.txt", text + "\n")
        write_comparison_figures(reference_name, compared, Path(out))
    return text
