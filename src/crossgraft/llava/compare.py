"""`crossgraft llava compare`: each variant's metrics minus the reference variant's, on the same held-out samples,
with a paired bootstrap 95% interval over samples (`crossgraft.bootstrap`, shared with the anomaly family).

Every metric is recomputed from per-sample statistics (caption metrics: `caption_metrics`; loss: summed
negative log-likelihood and token count; attributes: words named and asked for), so a resample gives the exact
corpus-level value (BLEU-4 stays a corpus BLEU). With several runs per variant (seeds, paired by position), each
resample also draws the seed pairs with replacement and averages their differences, so the interval holds both
the samples' and the seeds' variation.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from crossgraft.bootstrap import MIN_UNITS, bootstrap_interval, interval_text
from crossgraft.errors import ConfigError
from crossgraft.files import write_text_atomic
from crossgraft.llava.caption_metrics import CAPTION_METRICS, caption_statistics, mean_finalize
from crossgraft.llava.config import EvaluateConfig
from crossgraft.llava.evaluate import (
    PREDICTIONS_FILE,
    SETTINGS_FILE,
    evaluate,
    evaluation_folder,
    read_predictions,
    read_settings,
)


@dataclass
class Evaluation:
    folder: Path
    settings: dict[str, Any]
    rows: list[dict[str, Any]]  # predictions.jsonl, sorted by sample id

    @cached_property
    def statistics(self) -> dict[str, np.ndarray]:
        """Per metric, the per-sample statistics (n, k) whose sums the metric is computed from (computed once,
        however many variants are compared with this one)."""
        return statistics_of(self)


@dataclass
class LlavaMetricDelta:
    metric: str
    reference: float  # mean over the variant's runs
    other: float
    delta: float
    ci_low: float | None  # None below MIN_UNITS samples
    ci_high: float | None
    units: int = 0  # held-out samples the interval resamples


# name → (label, scale for printing, finalize of summed statistics)
METRICS: dict[str, tuple[str, float, Callable[[np.ndarray], np.ndarray]]] = {
    "loss": ("loss", 1.0, mean_finalize),
    "perplexity": ("perplexity", 1.0, lambda summed: np.exp(mean_finalize(summed))),
    **{name: (metric.name, 100.0, metric.finalize) for name, metric in CAPTION_METRICS.items()},
    "attributes": ("attributes", 100.0, mean_finalize),
}


def evaluation_of(path: Path, data_path: str | None) -> Path:
    """The evaluation folder a compare argument names: the folder itself, MODEL/evaluation/DATA for --data_path
    (evaluated first when missing), or the only folder under MODEL/evaluation."""
    if (path / PREDICTIONS_FILE).is_file():
        return path
    if data_path is not None:
        config = EvaluateConfig(model_name_or_path=str(path), data_path=data_path)
        folder = evaluation_folder(config)
        if not (folder / "summary.json").is_file():
            folder, _ = evaluate(config)
        return folder
    found = sorted(p.parent for p in path.glob(f"evaluation/*/{PREDICTIONS_FILE}"))
    if len(found) != 1:
        where = f"{len(found)} evaluations under {path}/evaluation" if found else f"no evaluation at {path}"
        raise ConfigError(
            f"{where}: name the evaluation folder, or pass --data_path (runs `crossgraft llava evaluate` first)"
        )
    return found[0]


def load_evaluation(folder: Path) -> Evaluation:
    if not (folder / "summary.json").is_file():
        raise ConfigError(f"{folder}: the evaluation is not complete (no summary.json); run `evaluate` again")
    settings = read_settings(folder / SETTINGS_FILE)
    predictions = read_predictions(folder / PREDICTIONS_FILE)
    if predictions.problems:
        raise ConfigError(
            f"{predictions.problems[0]}"
            + (f" (and {len(predictions.problems) - 1} more)" if len(predictions.problems) > 1 else "")
            + f": run `crossgraft llava evaluate` on {folder} again to evaluate those samples anew"
        )
    rows = sorted(predictions.values, key=lambda row: row["id"])
    return Evaluation(folder, settings, rows)


def statistics_of(evaluation: Evaluation) -> dict[str, np.ndarray]:
    """Per metric, the per-sample statistics (n, k) whose sums the metric is computed from."""
    rows = evaluation.rows
    loss = np.array([[row["loss_sum"], row["tokens"]] for row in rows], dtype=float)
    statistics = {"loss": loss, "perplexity": loss}
    statistics.update(caption_statistics([r["prediction"] for r in rows], [r["reference"] for r in rows]))
    if all(row["attributes_total"] for row in rows):
        statistics["attributes"] = np.array([[r["attributes_right"], r["attributes_total"]] for r in rows], dtype=float)
    return statistics


def check_same_data(evaluations: list[Evaluation]) -> None:
    reference = evaluations[0]
    ids = [row["id"] for row in reference.rows]
    for evaluation in evaluations[1:]:
        other = [row["id"] for row in evaluation.rows]
        if other != ids:
            only_reference, only_other = sorted(set(ids) - set(other)), sorted(set(other) - set(ids))
            raise ConfigError(
                f"{evaluation.folder} was evaluated on other samples than {reference.folder} "
                f"({len(only_other)} ids only there, e.g. {only_other[:3]}; {len(only_reference)} only in the "
                f"reference, e.g. {only_reference[:3]}): compare evaluations of the same held-out data"
            )
        if evaluation.settings.get("generation") != reference.settings.get("generation"):
            raise ConfigError(
                f"{evaluation.folder} generated with other settings than {reference.folder} "
                f"({evaluation.settings.get('generation')} vs {reference.settings.get('generation')}): "
                "evaluate both the same way"
            )


def compare_variants(reference: list[Evaluation], other: list[Evaluation], seed: int = 0) -> list[LlavaMetricDelta]:
    if len(reference) > 1 and len(other) > 1 and len(reference) != len(other):
        raise ConfigError(f"{len(reference)} reference runs but {len(other)} to compare: pair the seeds one to one")
    pairs = max(len(reference), len(other))
    reference_runs = [reference[i % len(reference)] for i in range(pairs)]
    other_runs = [other[i % len(other)] for i in range(pairs)]
    reference_stats = [e.statistics for e in reference_runs]
    other_stats = [e.statistics for e in other_runs]
    units = len(reference_runs[0].rows)
    rng = np.random.default_rng(seed)
    deltas = []
    for metric, (_, _, finalize) in METRICS.items():
        if not all(metric in stats for stats in (*reference_stats, *other_stats)):
            continue
        a = [stats[metric] for stats in reference_stats]  # per seed (n, k)
        b = [stats[metric] for stats in other_stats]
        value_a = float(np.mean([finalize(s.sum(0, keepdims=True))[0] for s in a[: len(reference)]]))
        value_b = float(np.mean([finalize(s.sum(0, keepdims=True))[0] for s in b[: len(other)]]))

        def difference(counts: np.ndarray, a: list = a, b: list = b, finalize: Callable = finalize) -> np.ndarray:
            per_pair = np.stack([finalize(counts @ sb) - finalize(counts @ sa) for sa, sb in zip(a, b)], axis=1)
            # the seed pairs are resampled too: (r, pairs) draw counts, each row summing to the number of pairs
            pair_counts = rng.multinomial(pairs, np.full(pairs, 1 / pairs), size=len(counts))
            return (per_pair * pair_counts).sum(axis=1) / pairs

        low, high = bootstrap_interval(difference, units, rng) if units >= MIN_UNITS else (None, None)
        deltas.append(LlavaMetricDelta(metric, value_a, value_b, value_b - value_a, low, high, units))
    return deltas


def format_deltas(name_a: str, name_b: str, deltas: list[LlavaMetricDelta], samples: int, seeds: str) -> str:
    width = max(len(name_a), len(name_b), 10) + 2
    lines = [
        f"{name_b}  vs  {name_a}  ({samples} held-out samples{seeds}; caption metrics and attributes in %)",
        f"{'metric':<12}{name_a:>{width}}{name_b:>{width}}{'delta':>9}   paired bootstrap 95% CI of the delta",
    ]
    for d in deltas:
        label, scale, _ = METRICS[d.metric]
        digits = 3 if scale == 1 else 1
        lines.append(
            f"{label:<12}{scale * d.reference:>{width}.{digits}f}{scale * d.other:>{width}.{digits}f}"
            f"{scale * d.delta:>+9.{digits}f}   {interval_text(d.ci_low, d.ci_high, d.units, 'samples', scale, digits)}"
        )
    return "\n".join(lines)


def split_spec(spec: str) -> tuple[str, list[Path]]:
    name, _, paths = spec.partition("=") if "=" in spec else (spec, "", spec)
    return name, [Path(part) for part in paths.split(",") if part]


def compare(specs: list[str], data_path: str | None = None, out: Path | None = None, seed: int = 0) -> str:
    """Compare every variant with the first; returns the printed text (also OUT/compare.txt and compare.json)."""
    if len(specs) < 2:
        raise ConfigError("compare needs at least two runs: NAME=RUN for the reference, then the others")
    variants = [
        (name, [load_evaluation(evaluation_of(p, data_path)) for p in paths]) for name, paths in map(split_spec, specs)
    ]
    check_same_data([evaluation for _, runs in variants for evaluation in runs])
    reference_name, reference = variants[0]
    texts: list[str] = []
    comparisons: list[dict[str, Any]] = []
    for name, runs in variants[1:]:
        deltas = compare_variants(reference, runs, seed)
        seeds = f"; runs {len(reference)} vs {len(runs)}" if max(len(reference), len(runs)) > 1 else ""
        texts.append(format_deltas(reference_name, name, deltas, len(reference[0].rows), seeds))
        comparisons.append({"variant": name, "deltas": [asdict(d) for d in deltas]})
    text = "\n\n".join(texts)
    if out is not None:
        write_text_atomic(Path(out) / "compare.txt", text + "\n")
        document = {"reference": reference_name, "comparisons": comparisons}
        write_text_atomic(Path(out) / "compare.json", json.dumps(document, indent=2) + "\n")
    return text
