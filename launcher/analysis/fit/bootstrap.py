"""Bootstrap over runs: a replicate is the same fit with resampling counts as point weights.

Runs are resampled with replacement within their isoFLOP budget (so every replicate keeps
every budget), and percentile intervals are taken over the replicates that could be fitted.
"""

from __future__ import annotations

import warnings

import numpy as np

LEVEL = 0.95


def resample_counts(strata: list[np.ndarray], n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """[n_boot, n] counts: each stratum's members drawn with replacement, as many as it has."""
    counts = np.zeros((n_boot, n))
    for members in strata:
        draws = rng.integers(0, len(members), size=(n_boot, len(members)))
        for j, member in enumerate(members):
            counts[:, member] = (draws == j).sum(axis=1)
    return counts


def percentile_interval(samples, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) percentiles over replicates (axis 0), ignoring non-finite ones; NaN where none are finite."""
    samples = np.where(np.isfinite(samples), samples, np.nan)
    tail = 50.0 * (1.0 - level)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column gives NaN, as intended
        lo, hi = np.nanpercentile(samples, [tail, 100.0 - tail], axis=0)
    return lo, hi
