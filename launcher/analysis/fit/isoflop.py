"""Chinchilla approach 2: a parabola per isoFLOP budget, then power laws through the minima.

Per budget, loss is fitted as a parabola in ln N (and separately in ln D) by weighted least
squares; its vertex is (N_opt, loss_opt) and (D_opt). N_opt ∝ C^a and D_opt ∝ C^b then come from
weighted log-log least squares over budgets, each budget weighted by the total weight of its
points.

Points are either runs (raw isoFLOP points) or per-budget optima already found. Optima go straight
to the power-law step, so published minima with weights 1/σ² of log n* (Porian et al. 2024) give the
authors' weighted fit. Runs need a parabola per budget: a budget with fewer than 3 distinct sizes is
skipped with its reason, never taken as its own optimum (that would fit a power law to whichever sizes
happened to run, with a spuriously tight bootstrap interval). Unless the caller says which, a point
set is optima when every budget holds exactly one point; a sweep's runs are always runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from launcher.analysis.fit.points import Budget, Points, budgets
from launcher.analysis.fit.powerlaw import PowerLaw, fit_power_law
from launcher.errors import UserError


@dataclass(frozen=True)
class Parabola:
    """loss = c2·x² + c1·x + c0 with x = ln N or ln D."""

    c2: float
    c1: float
    c0: float

    @property
    def vertex(self) -> tuple[float, float]:
        x = -self.c1 / (2.0 * self.c2)
        return float(np.exp(x)), float(self.c0 - self.c1**2 / (4.0 * self.c2))

    def as_list(self) -> list[float]:
        return [self.c2, self.c1, self.c0]


def fit_parabola(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> Parabola:
    """Weighted least squares, centred on the weighted mean of x for conditioning."""
    centre = np.average(x, weights=w)
    sw = np.sqrt(w)
    X = np.stack([(x - centre) ** 2, x - centre, np.ones_like(x)], axis=1)
    (q2, q1, q0), *_ = np.linalg.lstsq(X * sw[:, None], y * sw, rcond=None)
    return Parabola(float(q2), float(q1 - 2 * q2 * centre), float(q0 - q1 * centre + q2 * centre**2))


@dataclass(frozen=True)
class IsoflopMinimum:
    label: object
    C: float
    n_points: int
    N_opt: float
    D_opt: float
    loss_opt: float
    weight: float
    parabola_N: Parabola | None = None
    parabola_D: Parabola | None = None
    interior: bool = True  # the vertex lies within the budget's sampled range of N

    def as_dict(self) -> dict:
        return {
            "budget": self.label,
            "C": self.C,
            "n_points": self.n_points,
            "N_opt": self.N_opt,
            "D_opt": self.D_opt,
            "loss_opt": self.loss_opt,
            "interior": self.interior,
            "parabola_lnN": None if self.parabola_N is None else self.parabola_N.as_list(),
            "parabola_lnD": None if self.parabola_D is None else self.parabola_D.as_list(),
        }


def budget_minimum(points: Points, budget: Budget, given: bool = False) -> IsoflopMinimum:
    """The vertex of one budget's parabolas, or its point when ``given`` (the points are optima)."""
    idx = budget.index[points.weight[budget.index] > 0]
    w = points.weight[idx]
    if given:
        i = idx[0]
        return IsoflopMinimum(budget.label, budget.C, 1, points.N[i], points.D[i], points.loss[i], float(w[0]))
    lnN, lnD, loss = np.log(points.N[idx]), np.log(points.D[idx]), points.loss[idx]
    if np.unique(lnN).size < 3:
        raise UserError(f"budget {budget.label}: a parabola needs runs of 3+ distinct sizes, got {np.unique(lnN).size}")
    pn, pd = fit_parabola(lnN, loss, w), fit_parabola(lnD, loss, w)
    if pn.c2 <= 0 or pd.c2 <= 0:
        raise UserError(f"budget {budget.label}: loss is not convex in log N (no minimum inside the sweep)")
    N_opt, loss_opt = pn.vertex
    D_opt, _ = pd.vertex
    interior = bool(lnN.min() <= np.log(N_opt) <= lnN.max())
    return IsoflopMinimum(
        budget.label, budget.C, int(idx.size), N_opt, D_opt, loss_opt, float(w.sum()), pn, pd, interior
    )


@dataclass(frozen=True)
class IsoflopFit:
    minima: list[IsoflopMinimum]
    skipped: list[dict]
    N_law: PowerLaw
    D_law: PowerLaw
    loss_law: PowerLaw  # loss_opt ∝ C^exponent: a plain power law, for predicting the optimum's loss

    @property
    def a(self) -> float:
        return self.N_law.exponent

    @property
    def b(self) -> float:
        return self.D_law.exponent

    def optimum(self, C):
        return self.N_law(C), self.D_law(C), self.loss_law(C)

    def as_dict(self) -> dict:
        return {
            "a": self.a,
            "b": self.b,
            "N_coef": self.N_law.coef,
            "D_coef": self.D_law.coef,
            "r2_N": self.N_law.r2,
            "r2_D": self.D_law.r2,
            "loss_coef": self.loss_law.coef,
            "loss_exponent": self.loss_law.exponent,
            "budgets": [m.as_dict() for m in self.minima],
            "skipped_budgets": self.skipped,
        }


def isoflop_minima(points: Points, optima: bool | None = None) -> tuple[list[IsoflopMinimum], list[dict]]:
    """Minima of every budget that has one; the others as {"budget", "error"}. ``optima``: whether the
    points are per-budget optima rather than runs; None infers it (every budget a single point)."""
    groups = budgets(points)
    if optima is None:
        optima = all(b.index.size == 1 for b in groups)
    minima, skipped = [], []
    for budget in groups:
        if not np.any(points.weight[budget.index] > 0):
            continue
        try:
            minima.append(budget_minimum(points, budget, optima))
        except UserError as exc:
            skipped.append({"budget": budget.label, "error": str(exc)})
    return minima, skipped


def fit_optima(minima: list[IsoflopMinimum], skipped: list[dict] | None = None) -> IsoflopFit:
    if len(minima) < 2:
        reasons = "; ".join(s["error"] for s in skipped or [])
        raise UserError(
            f"approach 2: needs optima at 2+ isoFLOP budgets, got {len(minima)}" + (f" ({reasons})" if reasons else "")
        )
    C = np.array([m.C for m in minima])
    w = np.array([m.weight for m in minima])
    laws = [
        fit_power_law(C, [getattr(m, key) for m in minima], w, what=f"approach 2 {key}")
        for key in ("N_opt", "D_opt", "loss_opt")
    ]
    return IsoflopFit(minima, list(skipped or []), *laws)


def fit_isoflop(points: Points, optima: bool | None = None) -> IsoflopFit:
    """Approach 2 on runs or on given optima (``optima`` as in ``isoflop_minima``)."""
    return fit_optima(*isoflop_minima(points, optima))
