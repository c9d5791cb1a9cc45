"""L-BFGS run on many starting points at once, each with its own history and line search.

A grid of thousands of starts for a 5-parameter law is a few numpy operations on a
[starts, points] array per step instead of thousands of Python-level optimiser loops. Every
decision is invariant to scaling the objective (the first step has unit length in parameter
space, the stopping test is relative to the objective), so a sum and a mean of the same losses
follow the same path and stop at the same optimum.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# fun(x [k, n], rows [k]) -> (f [k], grad [k, n]); ``rows`` says which starts x belongs to.
BatchedObjective = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class BatchResult:
    x: np.ndarray          # [starts, n] final parameters
    fun: np.ndarray        # [starts] final objective
    n_iter: np.ndarray     # [starts] iterations taken
    converged: np.ndarray  # [starts] stopped by the relative tolerance (not by max_iter or a failed search)


def _two_loop(g, s_hist, y_hist, rho, gamma):
    """H·g for each start from its (s, y) pairs, oldest first along axis 1; empty pairs have rho = 0."""
    q = g.copy()
    m = s_hist.shape[1]
    alpha = np.empty((g.shape[0], m))
    for i in range(m - 1, -1, -1):
        alpha[:, i] = rho[:, i] * np.einsum("ij,ij->i", s_hist[:, i], q)
        q -= alpha[:, i, None] * y_hist[:, i]
    r = gamma[:, None] * q
    for i in range(m):
        beta = rho[:, i] * np.einsum("ij,ij->i", y_hist[:, i], r)
        r += s_hist[:, i] * (alpha[:, i] - beta)[:, None]
    return r


def minimize_lbfgs_batched(fun: BatchedObjective, x0: np.ndarray, *, rtol: float = 1e-10,
                           max_iter: int = 2000, memory: int = 10, c1: float = 1e-4,
                           max_backtracks: int = 40, patience: int = 3) -> BatchResult:
    """Minimise ``fun`` from every row of ``x0``.

    A start stops when its objective has decreased by at most ``rtol``·|f| for ``patience``
    consecutive steps (the Huber objective has long flat stretches where one small step says
    little), when no step along its direction decreases it, or after ``max_iter`` steps.
    Steps come from a backtracking Armijo search with quadratic interpolation.
    """
    x = np.array(x0, dtype=float)
    S, n = x.shape
    f, g = fun(x, np.arange(S))
    s_hist = np.zeros((S, memory, n))
    y_hist = np.zeros((S, memory, n))
    rho = np.zeros((S, memory))
    gamma = np.zeros(S)  # 0 means "no curvature pair yet": take a unit-length steepest-descent step
    n_iter = np.zeros(S, dtype=int)
    quiet = np.zeros(S, dtype=int)
    converged = np.zeros(S, dtype=bool)
    active = np.isfinite(f)
    for _ in range(max_iter):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        gi = g[idx]
        gnorm = np.linalg.norm(gi, axis=1)
        fresh = gamma[idx] <= 0
        d = -_two_loop(gi, s_hist[idx], y_hist[idx], rho[idx], np.where(fresh, 1.0, gamma[idx]))
        d[fresh] = -gi[fresh] / np.maximum(gnorm[fresh], 1e-300)[:, None]
        slope = np.einsum("ij,ij->i", gi, d)
        uphill = ~(slope < 0)
        if uphill.any():  # a stale history gave no descent direction: forget it
            u = idx[uphill]
            rho[u] = 0.0
            gamma[u] = 0.0
            d[uphill] = -gi[uphill] / np.maximum(gnorm[uphill], 1e-300)[:, None]
            slope[uphill] = -gnorm[uphill]

        step = np.ones(idx.size)
        x_new, f_new, g_new = x[idx].copy(), f[idx].copy(), gi.copy()
        pending = slope < 0
        for _ in range(max_backtracks):
            p = np.flatnonzero(pending)
            if p.size == 0:
                break
            xt = x[idx[p]] + step[p, None] * d[p]
            ft, gt = fun(xt, idx[p])
            f0 = f[idx[p]]
            ok = np.isfinite(ft) & (ft <= f0 + c1 * step[p] * slope[p])
            acc = p[ok]
            x_new[acc], f_new[acc], g_new[acc] = xt[ok], ft[ok], gt[ok]
            pending[acc] = False
            rej = p[~ok]
            if rej.size:
                t, sl = step[rej], slope[rej]
                excess = np.where(np.isfinite(ft[~ok]), ft[~ok] - f0[~ok] - sl * t, np.inf)
                t_quad = -sl * t * t / (2.0 * np.maximum(excess, 1e-300))
                step[rej] = np.clip(np.nan_to_num(t_quad, nan=0.1 * t), 0.1 * t, 0.5 * t)

        moved = ~pending
        stuck = idx[pending]
        active[stuck] = False
        converged[stuck] = True  # no decrease along a descent direction: as good as it gets here

        j = idx[moved]
        s = x_new[moved] - x[j]
        y = g_new[moved] - g[j]
        decrease = f[j] - f_new[moved]
        x[j], f[j], g[j] = x_new[moved], f_new[moved], g_new[moved]
        n_iter[j] += 1

        sy = np.einsum("ij,ij->i", s, y)
        yy = np.einsum("ij,ij->i", y, y)
        curved = (sy > 1e-12 * np.linalg.norm(s, axis=1) * np.sqrt(yy)) & (yy > 1e-300)
        jc = j[curved]
        s_hist[jc] = np.roll(s_hist[jc], -1, axis=1)
        y_hist[jc] = np.roll(y_hist[jc], -1, axis=1)
        rho[jc] = np.roll(rho[jc], -1, axis=1)
        s_hist[jc, -1], y_hist[jc, -1], rho[jc, -1] = s[curved], y[curved], 1.0 / sy[curved]
        gamma[jc] = sy[curved] / yy[curved]

        small = decrease <= rtol * np.abs(f[j])
        quiet[j] = np.where(small, quiet[j] + 1, 0)
        done = j[quiet[j] >= patience]
        active[done] = False
        converged[done] = True
    return BatchResult(x, f, n_iter, converged)
