"""The shared paired bootstrap: counts are resamples with replacement, and the interval brackets the truth."""

import numpy as np

from crossgraft.bootstrap import bootstrap_interval, resample_counts


def test_each_resample_draws_every_unit_count_times_in_total():
    rng = np.random.default_rng(0)
    chunks = list(resample_counts(7, rng, samples=1200))
    counts = np.concatenate(chunks)
    assert counts.shape == (1200, 7) and len(chunks) == 3
    assert (counts.sum(axis=1) == 7).all()
    assert abs(counts.mean() - 1.0) < 0.02  # each unit is drawn once per resample on average


def test_interval_of_a_mean_covers_the_mean_and_narrows_with_more_units():
    rng = np.random.default_rng(1)
    widths = []
    for units in (20, 500):
        values = rng.normal(2.0, 1.0, units)
        low, high = bootstrap_interval(lambda c, v=values: (c @ v) / c.sum(axis=1), units, np.random.default_rng(2))
        assert low < values.mean() < high
        widths.append(high - low)
        # a normal-theory interval of the mean, for scale: ±1.96 s/√n
        assert abs((high - low) - 2 * 1.96 * values.std() / np.sqrt(units)) < 0.25 * (high - low)
    assert widths[1] < widths[0] / 3
