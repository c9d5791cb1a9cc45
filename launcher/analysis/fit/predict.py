"""Predictions at target rows with bootstrap intervals: a law fitted once, then refitted on resampled
training rows (``n_boot`` replicates, seeded) and evaluated at the same targets.

Rows are resampled with replacement within their isoFLOP budget where the points carry budget
labels (so every replicate keeps every budget, as ``fit_sweep`` does), else all together. The
interval is the percentile interval (``bootstrap.LEVEL``) over the replicates that could be
fitted. A target row that carries the fitted value itself is checked against it: ``observed``,
``rel_error`` (predicted / observed − 1) and ``inside`` (whether it fell in the interval).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from launcher.analysis.fit.bootstrap import percentile_interval, resample_counts
from launcher.analysis.fit.laws import LawFamily, Options
from launcher.analysis.fit.points import Points, Targets
from launcher.errors import UserError


@dataclass(frozen=True)
class Prediction:
    value: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    n_ok: int  # replicates that could be fitted
    loss: np.ndarray | None  # two_stage: the step-1 loss the metric was read off


def strata(points: Points) -> list[np.ndarray]:
    """Rows grouped by budget label where any row has one (unlabelled rows form one more group)."""
    if all(b is None for b in points.budget):
        return [np.arange(len(points))]
    groups: dict[object, list[int]] = {}
    for i, b in enumerate(points.budget):
        groups.setdefault(b, []).append(i)
    return [np.array(v) for v in groups.values()]


def predict(
    law: LawFamily, fit, points: Points, options: Options, targets: Targets, n_boot: int, seed: int
) -> Prediction:
    """The fitted law at ``targets`` and its bootstrap interval (NaN bounds with ``n_boot`` = 0)."""
    if n_boot < 0:
        raise UserError(f"--n-boot: must be 0 or more, got {n_boot}")
    value = law.predict(fit, targets)
    loss = law.stage_loss(fit, targets)
    if n_boot == 0:
        nan = np.full(len(targets), np.nan)
        return Prediction(value, nan, nan, 0, loss)
    counts = resample_counts(strata(points), len(points), n_boot, np.random.default_rng(seed))
    replicates = law.replicates(fit, points, options, counts, targets)
    lo, hi = percentile_interval(replicates)
    n_ok = int(np.all(np.isfinite(replicates), axis=1).sum())
    return Prediction(value, lo, hi, n_ok, loss)


def entries(prediction: Prediction, key: str, carried: list[dict], observed: list[float | None]) -> list[dict]:
    """One dict per target: its own columns, then ``key`` (loss or metric), lo, hi and the check."""
    out = []
    for i, row in enumerate(carried):
        entry = {**row, key: prediction.value[i], "lo": prediction.lo[i], "hi": prediction.hi[i]}
        if prediction.loss is not None:
            entry["loss"] = prediction.loss[i]
        seen = observed[i]
        if seen is not None:
            lo, hi = prediction.lo[i], prediction.hi[i]
            entry.update(
                observed=seen,
                rel_error=prediction.value[i] / seen - 1.0 if seen else None,
                inside=bool(lo <= seen <= hi) if np.isfinite(lo) and np.isfinite(hi) else None,
            )
        out.append(entry)
    return out
