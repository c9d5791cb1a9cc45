"""Approach 3 by variable projection (``--method vpnls``): a two-dimensional search over (α, β).

For fixed exponents the Chinchilla form L̂ = E + A·x + B·y (x = N^-α, y = D^-β) is linear in
E, A, B ≥ 0, but approach 3's objective, Σ w·Huber_δ(log L̂ − log L), takes the log of it, so the
inner problem is not a linear least squares. It is solved by iteratively reweighted Gauss–Newton:
linearise r = log L̂ − log L around the current (E, A, B) (∂r/∂θ = [1, x, y]/L̂), weight each
point by w·min(1, δ/|r|) (the IRLS weights of the Huber loss), and solve the resulting weighted
least squares under E, A, B ≥ 0 exactly (three unknowns: the best feasible solution over the
seven active sets), halving the step while the Huber objective does not decrease. The first
step, from L̂ = L, is the non-negative least squares of the relative error (L̂ − L)/L.

Every cell of a log-spaced (α, β) grid is solved this way at once (numpy over [cells, points]),
which gives the objective profiled over E, A, B on the grid. The best distinct cells are then
refined by L-BFGS on the same objective in all five parameters (approach 3's ``HuberObjective``),
to a relative tolerance of 1e-13 rather than the grid method's 1e-10: a start from the profile
lies in a flat valley where 1e-10 stops a few 1e-9 short. So the result is a stationary point of
exactly approach 3's objective, sum or mean of the Huber terms alike (the IRLS weights and the
polish are invariant to that scale).
"""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Callable

import numpy as np

from launcher.analysis.fit.chinchilla import HUBER_DELTA, ChinchillaFit, HuberObjective, check_points, fit_chinchilla
from launcher.analysis.fit.laws import DEFAULT_METHOD, METHODS
from launcher.analysis.fit.multistart import N_POLISH, fit_from_starts
from launcher.analysis.fit.points import Points
from launcher.errors import UserError

EXPONENTS = np.geomspace(0.02, 3.0, 28)  # α and β axes: 784 cells
IRLS_STEPS = 40
IRLS_RTOL = 1e-10  # stop once no cell's objective falls by more than this fraction in a step
TIGHT = dict(rtol=1e-13, patience=5, max_iter=5000)
HALVINGS = 6
SUBSETS = [s for k in (3, 2, 1) for s in itertools.combinations(range(3), k)]
FLOOR = 1e-12  # a coefficient at its bound 0 starts the polish this far below the loss (log of it is finite)
LARGE = 5_000  # more points than this: the start search runs on a subsample (fit_approach3)
START_POINTS = 2_000


def _huber(r: np.ndarray, w: np.ndarray, delta: float) -> np.ndarray:
    c = np.clip(r, -delta, delta)
    return 0.5 * (c * (2.0 * r - c)) @ w  # Huber = c·(2r − c)/2 with c = clip(r, −δ, δ)


def _nnls3(G: np.ndarray, h: np.ndarray) -> np.ndarray:
    """argmin θᵀGθ − 2hᵀθ over θ ≥ 0 for each of K 3×3 problems: the best feasible active-set solution."""
    K = len(G)
    best, best_q = np.zeros((K, 3)), np.full(K, np.inf)
    scale = np.maximum(np.einsum("kii->k", G), 1e-300)
    for s in SUBSETS:
        idx = np.array(s)
        sub = G[:, idx[:, None], idx[None, :]] + 1e-13 * scale[:, None, None] * np.eye(len(idx))
        theta_s = np.linalg.solve(sub, h[:, idx, None])[..., 0]
        q = -np.einsum("ki,ki->k", h[:, idx], theta_s)  # θᵀGθ − 2hᵀθ at the subset's solution
        ok = np.all(theta_s >= 0, axis=1) & (q < best_q)
        best[ok] = 0.0
        best[np.ix_(ok, idx)] = theta_s[ok]
        best_q[ok] = q[ok]
    return best


def profile(points: Points, alphas: np.ndarray, betas: np.ndarray, delta: float = HUBER_DELTA):
    """For every (α, β) pair: E, A, B ≥ 0 minimising the Huber objective, and that objective.

    Returns (coefficients [K, 3] as (E, A, B), objective [K]); the objective is the weighted sum.
    """
    use = points.weight > 0
    w, logL = points.weight[use], np.log(points.loss[use])
    logN, logD = np.log(points.N[use]), np.log(points.D[use])
    # columns scaled to a maximum of 1 per cell, so that the 3×3 systems are well conditioned
    x = np.exp(-np.multiply.outer(alphas, logN - logN.min()))
    y = np.exp(-np.multiply.outer(betas, logD - logD.min()))
    L = np.exp(logL)
    K = len(alphas)
    theta = np.zeros((K, 3))
    fitted = np.broadcast_to(L, x.shape)
    r = np.zeros_like(x)
    f = np.full(K, np.inf)
    for _ in range(IRLS_STEPS):
        previous = f.copy()
        omega = w * np.minimum(1.0, delta / np.maximum(np.abs(r), 1e-300))
        columns = (1.0 / fitted, x / fitted, y / fitted)
        z = 1.0 - r
        G = np.empty((K, 3, 3))
        for i, j in itertools.combinations_with_replacement(range(3), 2):
            G[:, i, j] = G[:, j, i] = np.einsum("kp,kp->k", columns[i] * omega, columns[j])
        h = np.stack([np.einsum("kp,kp->k", c * omega, z) for c in columns], axis=1)
        target = _nnls3(G, h)
        step = np.ones(K)
        accepted = np.zeros(K, bool)
        for _ in range(HALVINGS):
            trial = theta + step[:, None] * (target - theta)
            fit_t = trial[:, :1] + trial[:, 1:2] * x + trial[:, 2:3] * y
            with np.errstate(divide="ignore", invalid="ignore"):
                r_t = np.log(fit_t) - logL
            finite = np.all(np.isfinite(r_t), axis=1)
            f_t = np.where(finite, _huber(np.where(np.isfinite(r_t), r_t, 0.0), w, delta), np.inf)
            better = ~accepted & (f_t < f)
            theta[better], f[better] = trial[better], f_t[better]
            accepted |= better
            if accepted.all():
                break
            step = np.where(accepted, step, 0.5 * step)
        fitted = theta[:, :1] + theta[:, 1:2] * x + theta[:, 2:3] * y
        with np.errstate(divide="ignore"):
            r = np.log(np.maximum(fitted, 1e-300)) - logL
        if not np.any(accepted & (f < (1.0 - IRLS_RTOL) * previous)):
            break
    scale = np.stack([np.ones(K), np.exp(alphas * logN.min()), np.exp(betas * logD.min())], axis=1)
    return theta * scale, f


def vpnls_starts(points: Points, delta: float = HUBER_DELTA, k: int = N_POLISH) -> tuple[np.ndarray, int]:
    """The ``k`` best distinct grid cells as natural θ rows (a, b, e, α, β), and the number of cells."""
    alphas, betas = (g.ravel() for g in np.meshgrid(EXPONENTS, EXPONENTS, indexing="ij"))
    coef, f = profile(points, alphas, betas, delta)
    floor = FLOOR * float(np.median(points.loss))
    logs = np.log(
        np.maximum(
            coef, floor * np.stack([np.ones_like(alphas), points.N.min() ** alphas, points.D.min() ** betas], axis=1)
        )
    )
    theta = np.stack([logs[:, 1], logs[:, 2], logs[:, 0], alphas, betas], axis=1)
    order = [i for i in np.argsort(f) if np.isfinite(f[i])]
    chosen: list[int] = []
    for i in order:  # distinct: not a grid neighbour of one already taken
        if all(abs(np.log(alphas[i] / alphas[j])) > 0.2 or abs(np.log(betas[i] / betas[j])) > 0.2 for j in chosen):
            chosen.append(i)
        if len(chosen) == k:
            break
    return theta[chosen], len(alphas)


def fit_vpnls(points: Points, *, huber_reduce: str = "sum", delta: float = HUBER_DELTA) -> ChinchillaFit:
    """Approach 3 from the profile's best cells; ``n_starts`` counts the (α, β) cells searched."""
    check_points(points, "approach 3")
    starts, cells = vpnls_starts(points, delta)
    objective = HuberObjective(points.N, points.D, points.loss, points.weight, delta=delta, reduce=huber_reduce)
    best = fit_from_starts(objective, starts, "approach 3 (vpnls)", polish=TIGHT)
    return ChinchillaFit.from_theta(
        best.theta,
        best.objective,
        huber_delta=delta,
        huber_reduce=huber_reduce,
        n_starts=cells,
        n_converged=best.n_converged,
        candidates=best.candidates,
        method="vpnls",
    )


def fit_approach3(
    points: Points,
    method: str = DEFAULT_METHOD,
    *,
    huber_reduce: str = "sum",
    progress: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> ChinchillaFit:
    """Approach 3 by ``method``: "vpnls" (the default) or "grid" (the 4500 Chinchilla starts).

    Both cost (starts or cells) x points, so past ``LARGE`` points the start search runs on a subsample of
    ``START_POINTS`` (the same for any run: a fixed seed), and its best distinct optima are refined on all
    points by L-BFGS to the tight tolerance: the answer is a stationary point of the full objective, reached
    from where the subsample's search ended. Each stage is reported through ``progress``."""
    if method not in METHODS:
        raise UserError(f"--method: must be one of {', '.join(METHODS)}, got {method!r}")
    fit = fit_vpnls if method == "vpnls" else fit_chinchilla
    if len(points) <= LARGE:
        return fit(points, huber_reduce=huber_reduce)
    check_points(points, "approach 3")
    started = time.monotonic()
    used = np.flatnonzero(points.weight > 0)
    sample = points.take(np.sort(np.random.default_rng(0).choice(used, min(START_POINTS, len(used)), replace=False)))
    what = f"approach 3 ({method})"
    progress(f"{what}: {len(points):,} points: searching for starts on {len(sample):,} of them")
    coarse = fit(sample, huber_reduce=huber_reduce)
    progress(
        f"{what}: starts found in {time.monotonic() - started:.1f} s; refining the {len(coarse.candidates)} best "
        f"on all {len(points):,} points"
    )
    objective = HuberObjective(points.N, points.D, points.loss, points.weight, reduce=huber_reduce)
    best = fit_from_starts(objective, coarse.candidates, what, polish=TIGHT)
    progress(f"{what}: done in {time.monotonic() - started:.1f} s, objective {best.objective:.6g}")
    return ChinchillaFit.from_theta(
        best.theta,
        best.objective,
        huber_delta=HUBER_DELTA,
        huber_reduce=huber_reduce,
        n_starts=coarse.n_starts,
        n_converged=best.n_converged,
        candidates=best.candidates,
        method=method,
        start_points=len(sample),
    )
