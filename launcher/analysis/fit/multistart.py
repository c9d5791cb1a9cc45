"""Best of many L-BFGS runs: the search every Huber-on-log-loss law shares (approach 3, overtrain, datacon).

An objective here is a batched one (``lbfgs.BatchedObjective``) that also converts parameter rows
between natural coordinates (what a law reports) and the internal ones it is optimised in
(``to_internal``/``to_natural``), and accepts one weighting per row so that bootstrap replicates
are rows of one batch. ``fit_from_starts`` screens every start at a loose tolerance and polishes
the best distinct end points at a tight one; ``refit_weighted`` refits under many weightings at once
from a few warm starts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from launcher.analysis.fit.lbfgs import BatchResult, minimize_lbfgs_batched
from launcher.errors import UserError

# Screening tolerance for every start, then a tight one for the N_POLISH best distinct end points.
SCREEN: dict[str, Any] = dict(rtol=1e-6, patience=1, max_iter=500)
POLISH: dict[str, Any] = dict(rtol=1e-10, patience=3, max_iter=2000)
N_POLISH = 8


class Objective(Protocol):
    def __call__(self, theta: np.ndarray, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]: ...
    def to_internal(self, theta: np.ndarray) -> np.ndarray: ...
    def to_natural(self, internal: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class MultiStart:
    theta: np.ndarray  # best parameters, natural coordinates
    objective: float
    n_starts: int
    n_converged: int  # starts whose screening run stopped by a tolerance
    candidates: np.ndarray  # distinct optima, best first (natural): warm starts for refits
    candidate_objectives: np.ndarray  # their objectives


def best_distinct(x: np.ndarray, fun: np.ndarray, k: int) -> np.ndarray:
    """Indices of up to k end points, best first, skipping near-duplicates of ones already taken."""
    chosen: list[int] = []
    for i in np.argsort(fun):
        if not np.isfinite(fun[i]) or len(chosen) == k:
            break
        if all(np.max(np.abs(x[i] - x[j])) > 1e-3 for j in chosen):
            chosen.append(int(i))
    return np.array(chosen, dtype=int)


def finite_fun(result: BatchResult) -> np.ndarray:
    ok = np.isfinite(result.fun) & np.all(np.isfinite(result.x), axis=1)
    return np.where(ok, result.fun, np.inf)


def fit_from_starts(
    objective: Objective, starts: np.ndarray | Sequence[Sequence[float]], what: str, polish: dict[str, Any] = POLISH
) -> MultiStart:
    """Every start to a relative tolerance of 1e-6 (about where scipy's default stops on these
    objectives); the best distinct end points then continue to ``polish`` (1e-10), so the optimum is
    tight without paying the tight tolerance on thousands of starts that end on plateaus."""
    starts = np.atleast_2d(np.asarray(starts, float))
    screen = minimize_lbfgs_batched(objective, objective.to_internal(starts), **SCREEN)
    keep = best_distinct(screen.x, finite_fun(screen), N_POLISH)
    if keep.size == 0:
        raise UserError(f"{what}: the fit diverged from every start")
    polished = minimize_lbfgs_batched(objective, screen.x[keep], **polish)
    polish_fun = finite_fun(polished)
    order = np.argsort(polish_fun)
    order = order[np.isfinite(polish_fun[order])]
    best = order[0]
    return MultiStart(
        objective.to_natural(polished.x[best])[0],
        float(polish_fun[best]),
        len(starts),
        int(screen.converged.sum()),
        objective.to_natural(polished.x[order]),
        polish_fun[order],
    )


def refit_weighted(
    make_objective: Callable[[np.ndarray], Objective], weights: np.ndarray, starts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Refit under each row of ``weights`` [R, P] (e.g. bootstrap counts) from the same few ``starts``.

    ``make_objective(weights [R·K, P])`` builds the batched objective; all R·K runs go through one
    optimisation. Returns the best θ [R, n] (natural coordinates, NaN where every start diverged)
    and objective [R].
    """
    weights = np.atleast_2d(weights)
    starts = np.atleast_2d(starts)
    (R, K), n = (len(weights), len(starts)), starts.shape[1]
    objective = make_objective(np.repeat(weights, K, axis=0))
    result = minimize_lbfgs_batched(objective, objective.to_internal(np.tile(starts, (R, 1))), **POLISH)
    fun = finite_fun(result).reshape(R, K)
    best = np.argmin(fun, axis=1)
    theta = objective.to_natural(result.x.reshape(R, K, n)[np.arange(R), best])
    best_fun = fun[np.arange(R), best]
    theta[~np.isfinite(best_fun)] = np.nan
    return theta, best_fun
