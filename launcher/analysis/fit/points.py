"""Measured (N, D, C, loss) points as validated arrays, and their grouping into isoFLOP budgets.

Every fitter takes a ``Points``; per-point weights ride along so that a bootstrap replicate is the
same fit with integer resampling counts as weights (no copying of rows). Two optional columns serve
the laws that need more than (N, D, loss): ``U`` (unique tokens, the data-constrained law) and
``metric`` (a downstream metric, the two-stage law; any finite value, unlike the positive loss).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from launcher.errors import UserError

REQUIRED = ("N", "D", "loss")
# Budgets whose FLOPs differ by less than this factor are one isoFLOP budget when no labels are given.
SAME_BUDGET_FACTOR = 1.25


@dataclass(frozen=True)
class Points:
    """Columns of a point set; ``budget`` and ``name`` are object arrays (None where unknown);
    ``U`` and ``metric`` are None when no point has them."""

    N: np.ndarray
    D: np.ndarray
    C: np.ndarray
    loss: np.ndarray
    weight: np.ndarray
    budget: np.ndarray
    name: np.ndarray
    U: np.ndarray | None = None
    metric: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.loss)

    def take(self, index) -> Points:
        columns = (getattr(self, f) for f in self.__dataclass_fields__)
        taken: list[Any] = [None if c is None else c[index] for c in columns]
        return Points(*taken)

    def with_weight(self, weight: np.ndarray) -> Points:
        return dataclasses.replace(self, weight=np.asarray(weight, float))

    @property
    def flops_per_param_token(self) -> float:
        """The sweep's own FLOPs-per-(parameter·token) factor k in C = k·N·D (6 for the 6ND convention)."""
        return float(np.median(self.C / (self.N * self.D)))


@dataclass(frozen=True)
class Targets:
    """Where a law predicts: N, D, C (and U, unique tokens, for the data-constrained law) per target."""

    N: np.ndarray
    D: np.ndarray
    C: np.ndarray
    U: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.N)


@dataclass(frozen=True)
class Budget:
    """One isoFLOP budget: its label, its FLOPs and the indices of its points."""

    label: object
    C: float
    index: np.ndarray


def _rows(points) -> list[Mapping]:
    if isinstance(points, np.ndarray) and points.dtype.names:
        return [dict(zip(points.dtype.names, row)) for row in points.tolist()]
    if isinstance(points, Iterable) and not isinstance(points, (str, bytes, Mapping)):
        return list(points)
    raise UserError(f"points: expected a list of dicts or a numpy structured array, got {type(points).__name__}")


def _number(row: Mapping, key: str, i: int, positive: bool = True, what: str = "point") -> float:
    value = row[key]
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{what} {i}: {key} must be a number, got {value!r}") from None
    if not math.isfinite(number) or (positive and number <= 0):
        raise UserError(f"{what} {i}: {key} must be a {'positive ' if positive else ''}finite number, got {value!r}")
    return number


def _optional(rows: Sequence[Mapping], key: str, positive: bool, what: str = "point") -> np.ndarray | None:
    """The column ``key`` where any row has it; then every row must."""
    if not any(r.get(key) is not None for r in rows):
        return None
    for i, r in enumerate(rows):
        if r.get(key) is None:
            raise UserError(f"{what} {i}: missing {key}, which other {what}s have")
    return np.array([_number(r, key, i, positive, what) for i, r in enumerate(rows)])


def as_points(points, weights=None) -> Points:
    """Validate ``points`` (dicts or structured rows with N, D, loss; optional C, budget, name, U, metric)."""
    if isinstance(points, Points):
        return points if weights is None else points.with_weight(_weights(weights, len(points)))
    rows = _rows(points)
    if not rows:
        raise UserError("points: no points given")
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise UserError(f"point {i}: expected a mapping with keys N, D, loss, got {type(row).__name__}")
        missing = [k for k in REQUIRED if k not in row]
        if missing:
            raise UserError(
                f"point {i}: missing {', '.join(missing)}; each point needs N, D, loss (C, budget, name optional)"
            )
    N = np.array([_number(r, "N", i) for i, r in enumerate(rows)])
    D = np.array([_number(r, "D", i) for i, r in enumerate(rows)])
    loss = np.array([_number(r, "loss", i) for i, r in enumerate(rows)])
    C = np.array([_number(r, "C", i) if r.get("C") is not None else 6.0 * N[i] * D[i] for i, r in enumerate(rows)])
    budget = np.empty(len(rows), dtype=object)
    budget[:] = [_label(r.get("budget")) for r in rows]
    name = np.empty(len(rows), dtype=object)
    name[:] = [r.get("name") for r in rows]
    return Points(
        N,
        D,
        C,
        loss,
        _weights(weights, len(rows)),
        budget,
        name,
        _optional(rows, "U", positive=True),
        _optional(rows, "metric", positive=False),
    )


def as_targets(rows: Sequence[Mapping]) -> Targets:
    """Validate target rows (N, D; optional C, default 6·N·D, and U)."""
    if not rows:
        raise UserError("targets: no target rows given")
    for i, row in enumerate(rows):
        missing = [k for k in ("N", "D") if row.get(k) is None]
        if missing:
            raise UserError(f"target {i}: missing {', '.join(missing)}; each target needs N, D (C, U optional)")
    N = np.array([_number(r, "N", i, what="target") for i, r in enumerate(rows)])
    D = np.array([_number(r, "D", i, what="target") for i, r in enumerate(rows)])
    C = np.array(
        [_number(r, "C", i, what="target") if r.get("C") is not None else 6.0 * N[i] * D[i] for i, r in enumerate(rows)]
    )
    return Targets(N, D, C, _optional(rows, "U", positive=True, what="target"))


def _label(value):
    """A budget label as a JSON-friendly scalar; NaN and empty strings mean 'no budget'."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, (np.generic,)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _weights(weights, n: int) -> np.ndarray:
    if weights is None:
        return np.ones(n)
    w = np.asarray(weights, dtype=float)
    if w.shape != (n,):
        raise UserError(f"weights: expected {n} values (one per point), got shape {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or not np.any(w > 0):
        raise UserError("weights: must be finite, non-negative and not all zero")
    return w


def _budget_flops(label, C: np.ndarray) -> float:
    """A numeric label is the nominal budget; otherwise the geometric mean of the runs' FLOPs."""
    try:
        value = float(label)
    except (TypeError, ValueError):
        return float(np.exp(np.mean(np.log(C))))
    return value if math.isfinite(value) and value > 0 else float(np.exp(np.mean(np.log(C))))


def budgets(points: Points) -> list[Budget]:
    """IsoFLOP budgets, smallest first: by label where any point has one, else by clustering C."""
    labelled = np.array([b is not None for b in points.budget])
    if labelled.any():
        groups: dict[object, list[int]] = {}
        for i in np.flatnonzero(labelled):
            groups.setdefault(points.budget[i], []).append(int(i))
        out = [Budget(k, _budget_flops(k, points.C[v]), np.array(v)) for k, v in groups.items()]
    else:
        order = np.argsort(points.C)
        logc = np.log(points.C[order])
        cuts = np.flatnonzero(np.diff(logc) > math.log(SAME_BUDGET_FACTOR)) + 1
        out = []
        for chunk in np.split(order, cuts):
            c = _budget_flops(None, points.C[chunk])
            out.append(Budget(float(f"{c:.6g}"), c, np.sort(chunk)))
    return sorted(out, key=lambda b: b.C)


def pareto_front(x: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Indices of points whose loss is below that of every point with smaller or equal x, by x."""
    order = np.lexsort((loss, x))
    best = np.minimum.accumulate(loss[order])
    keep = np.r_[True, loss[order][1:] < best[:-1]]
    return order[keep]
