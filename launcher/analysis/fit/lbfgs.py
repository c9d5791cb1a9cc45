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
    x: np.ndarray  # [starts, n] final parameters
    fun: np.ndarray  # [starts] final objective
    n_iter: np.ndarray  # [starts] iterations taken
    converged: np.ndarray  # [starts] stopped by a tolerance (not by max_iter)


class _History:
    """The last ``memory`` (s, y) pairs of every row in one ring shared by all rows.

    Every step writes one slot for every row; a row that had no usable pair writes an empty
    one (rho = 0), which the two-loop recursion skips. One shared position means no per-row
    gathers or rolls.
    """

    def __init__(self, rows: int, n: int, memory: int):
        self.s = np.zeros((rows, memory, n))
        self.y = np.zeros((rows, memory, n))
        self.rho = np.zeros((rows, memory))
        self.gamma = np.zeros(rows)  # 0: no pair yet, take a unit-length steepest-descent step
        self.pos = 0

    def keep(self, mask: np.ndarray) -> None:
        self.s, self.y, self.rho, self.gamma = self.s[mask], self.y[mask], self.rho[mask], self.gamma[mask]

    def forget(self, rows: np.ndarray) -> None:
        self.rho[rows] = 0.0
        self.gamma[rows] = 0.0

    def push(self, rows: np.ndarray, s: np.ndarray, y: np.ndarray, sy: np.ndarray, yy: np.ndarray) -> None:
        slot = self.pos
        self.s[:, slot] = 0.0
        self.y[:, slot] = 0.0
        self.rho[:, slot] = 0.0
        self.s[rows, slot], self.y[rows, slot], self.rho[rows, slot] = s, y, 1.0 / sy
        self.gamma[rows] = sy / yy
        self.pos = (slot + 1) % self.rho.shape[1]

    def direction(self, g: np.ndarray) -> np.ndarray:
        """−H·g by the two-loop recursion, newest pair first."""
        m = self.rho.shape[1]
        order = [(self.pos - 1 - i) % m for i in range(m)]
        q = g.copy()
        alpha = {}
        for i in order:
            alpha[i] = self.rho[:, i] * np.einsum("ij,ij->i", self.s[:, i], q)
            q -= alpha[i][:, None] * self.y[:, i]
        fresh = self.gamma <= 0
        q *= np.where(fresh, 1.0, self.gamma)[:, None]
        for i in reversed(order):
            beta = self.rho[:, i] * np.einsum("ij,ij->i", self.y[:, i], q)
            q += self.s[:, i] * (alpha[i] - beta)[:, None]
        q[fresh] = g[fresh] / np.maximum(np.linalg.norm(g[fresh], axis=1), 1e-300)[:, None]
        return -q


def minimize_lbfgs_batched(
    fun: BatchedObjective,
    x0: np.ndarray,
    *,
    rtol: float = 1e-10,
    max_iter: int = 2000,
    memory: int = 10,
    c1: float = 1e-4,
    max_backtracks: int = 40,
    patience: int = 3,
) -> BatchResult:
    """Minimise ``fun`` from every row of ``x0``.

    A start stops when its objective has decreased by at most ``rtol``·|f| for ``patience``
    consecutive steps (the Huber objective has long flat stretches where one small step says
    little), when no step along a descent direction decreases it, or after ``max_iter`` steps.
    Steps come from a backtracking Armijo search with quadratic interpolation. Finished rows
    stay in the working arrays (and out of objective calls) until a quarter of them are done,
    then the arrays are compacted.
    """
    S, n = np.shape(x0)
    out_x, out_f = np.array(x0, dtype=float), np.full(S, np.inf)
    out_iter, out_conv = np.zeros(S, dtype=int), np.zeros(S, dtype=bool)

    rows = np.arange(S)
    x = out_x.copy()
    f, g = fun(x, rows)
    hist = _History(S, n, memory)
    n_iter = np.zeros(S, dtype=int)
    quiet = np.zeros(S, dtype=int)
    converged = np.zeros(S, dtype=bool)
    live = np.isfinite(f) & np.all(np.isfinite(g), axis=1)

    def write_back(mask):
        r = rows[mask]
        out_x[r], out_f[r], out_iter[r], out_conv[r] = x[mask], f[mask], n_iter[mask], converged[mask]

    for _ in range(max_iter):
        if not live.any():
            break
        if live.sum() < 0.75 * len(rows):
            write_back(~live)
            rows, x, f, g, n_iter, quiet, converged = (a[live] for a in (rows, x, f, g, n_iter, quiet, converged))
            hist.keep(live)
            live = np.ones(len(rows), dtype=bool)

        idx = np.flatnonzero(live)
        d = hist.direction(g)[idx]
        gi = g[idx]
        slope = np.einsum("ij,ij->i", gi, d)
        uphill = ~(slope < 0)
        if uphill.any():  # a stale history gave no descent direction: forget it
            hist.forget(idx[uphill])
            gnorm = np.maximum(np.linalg.norm(gi[uphill], axis=1), 1e-300)
            d[uphill] = -gi[uphill] / gnorm[:, None]
            slope[uphill] = -gnorm

        step = np.ones(idx.size)
        x_new, f_new, g_new = x[idx].copy(), f[idx].copy(), gi.copy()
        pending = np.ones(idx.size, dtype=bool)
        for _ in range(max_backtracks):
            p = np.flatnonzero(pending)
            if p.size == 0:
                break
            xt = x[idx[p]] + step[p, None] * d[p]
            ft, gt = fun(xt, rows[idx[p]])
            f0 = f[idx[p]]
            ok = np.isfinite(ft) & np.all(np.isfinite(gt), axis=1) & (ft <= f0 + c1 * step[p] * slope[p])
            acc = p[ok]
            x_new[acc], f_new[acc], g_new[acc] = xt[ok], ft[ok], gt[ok]
            pending[acc] = False
            rej = p[~ok]
            if rej.size:
                t, sl = step[rej], slope[rej]
                excess = np.where(np.isfinite(ft[~ok]), ft[~ok] - f0[~ok] - sl * t, np.inf)
                t_quad = -sl * t * t / (2.0 * np.maximum(excess, 1e-300))
                step[rej] = np.clip(np.nan_to_num(t_quad, nan=0.1 * t), 0.1 * t, 0.5 * t)

        stuck = idx[pending]  # no decrease along a descent direction: as good as it gets here
        live[stuck] = False
        converged[stuck] = True

        moved = ~pending
        j = idx[moved]
        s = x_new[moved] - x[j]
        y = g_new[moved] - g[j]
        decrease = f[j] - f_new[moved]
        x[j], f[j], g[j] = x_new[moved], f_new[moved], g_new[moved]
        n_iter[j] += 1

        sy = np.einsum("ij,ij->i", s, y)
        yy = np.einsum("ij,ij->i", y, y)
        curved = (sy > 1e-12 * np.linalg.norm(s, axis=1) * np.sqrt(yy)) & (yy > 1e-300)
        hist.push(j[curved], s[curved], y[curved], sy[curved], yy[curved])

        small = decrease <= rtol * np.abs(f[j])
        quiet[j] = np.where(small, quiet[j] + 1, 0)
        done = j[quiet[j] >= patience]
        live[done] = False
        converged[done] = True
    write_back(np.ones(len(rows), dtype=bool))
    return BatchResult(out_x, out_f, out_iter, out_conv)
