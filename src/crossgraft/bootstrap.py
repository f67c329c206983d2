"""The paired bootstrap both families' `compare` commands use: resample the units (anomaly classes, LLaVA
held-out samples) with replacement, recompute the statistic on each resample, report the 2.5th and 97.5th
percentiles.

A resample is a count per unit (how often it was drawn), so any statistic that is a function of weighted sums,
`finalize(counts @ per_unit_statistics)`, is recomputed exactly and without copying the data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

BOOTSTRAP_SAMPLES = 10_000
MIN_UNITS = 5  # fewer paired units give a percentile interval too coarse to call a 95% interval: none is reported
CHUNK = 500  # resamples drawn at once: bounds memory at CHUNK x units counts


def resample_counts(units: int, rng: np.random.Generator, samples: int = BOOTSTRAP_SAMPLES) -> Iterator[np.ndarray]:
    """Chunks of (r, units) counts: row i says how often each unit was drawn in resample i."""
    for start in range(0, samples, CHUNK):
        rows = min(CHUNK, samples - start)
        picks = rng.integers(0, units, size=(rows, units))  # (r, units) indices drawn with replacement
        counts = np.zeros((rows, units))
        np.add.at(counts, (np.arange(rows)[:, None], picks), 1.0)
        yield counts


def bootstrap_interval(
    statistic: Callable[[np.ndarray], np.ndarray],
    units: int,
    rng: np.random.Generator,
    samples: int = BOOTSTRAP_SAMPLES,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile interval of `statistic`, which maps (r, units) counts to (r,) values (callers report none below
    MIN_UNITS units: see `interval_text`)."""
    values = np.concatenate([statistic(counts) for counts in resample_counts(units, rng, samples)])
    tail = 100 * (1 - level) / 2
    low, high = np.nanpercentile(values, [tail, 100 - tail])
    return float(low), float(high)


def interval_text(
    low: float | None, high: float | None, units: int, what: str, scale: float = 100, digits: int = 1
) -> str:
    """'[+0.4, +2.1] (n=12 classes)', or why there is no interval: the unit count is always shown."""
    count = f"n={units} {what}"
    if units < MIN_UNITS or low is None or high is None:
        return f"none ({count}; a bootstrap interval needs at least {MIN_UNITS})"
    return f"[{scale * low:+.{digits}f}, {scale * high:+.{digits}f}] ({count})"
