"""Chinchilla approach 3: L(N, D) = E + A/N^α + B/D^β fitted as Hoffmann et al. (2022) did.

Parameters θ = (a, b, e, α, β) with A = e^a, B = e^b, E = e^e. The objective is the Huber loss
(δ = 1e-3) of log L_pred − log L_obs, L_pred = LSE(a − α log N, b − β log D, e), summed (or
averaged) over points, minimised by L-BFGS from the published grid of 4500 starts
α, β ∈ {0, 0.5, 1, 1.5, 2}, e ∈ {−1, −0.5, 0, 0.5, 1}, a, b ∈ {0, 5, 10, 15, 20, 25},
keeping the best (the grid of Hoffmann et al.; 5·5·5·6·6 = 4500). All starts run together
(``lbfgs.minimize_lbfgs_batched``, screened then polished by ``multistart``) with the analytic
gradient; the stopping test is relative to the objective so that sum and mean agree. ``vpnls``
offers a two-dimensional search over (α, β) instead of the 4500 starts.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np

from launcher.analysis.fit import multistart
from launcher.analysis.fit.multistart import fit_from_starts
from launcher.analysis.fit.points import Points
from launcher.errors import UserError

HUBER_DELTA = 1e-3
REDUCTIONS = ("sum", "mean")
PARAMS = ("a", "b", "e", "alpha", "beta")
BLOCK_ELEMENTS = 1 << 15  # [rows, points] block evaluated at once: small enough to stay in cache


def chinchilla_grid() -> np.ndarray:
    """The 4500 starts of Hoffmann et al. (2022), rows of (a, b, e, α, β)."""
    axes = dict(
        a=np.arange(0, 30, 5),
        b=np.arange(0, 30, 5),
        e=np.arange(-1, 1.5, 0.5),
        alpha=np.arange(0, 2.5, 0.5),
        beta=np.arange(0, 2.5, 0.5),
    )
    return np.array(list(itertools.product(*(axes[p] for p in PARAMS))), dtype=float)


class HuberObjective:
    """Weighted Huber objective and its gradient for many parameter rows at once.

    ``weights`` is [points] (one weighting for every start) or [rows, points] (one per start,
    e.g. bootstrap resampling counts); ``rows`` passed at call time selects the weight rows.
    The optimiser works in centred coordinates (a − α·mean log N, b − β·mean log D, e, α, β),
    which removes most of the a–α and b–β correlation and so most of the iterations;
    ``to_internal``/``to_natural`` convert.
    """

    def __init__(self, N, D, loss, weights=None, *, delta: float = HUBER_DELTA, reduce: str = "sum"):
        if reduce not in REDUCTIONS:
            raise UserError(f"huber_reduce: must be one of {', '.join(REDUCTIONS)}, got {reduce!r}")
        logN, logD = np.log(N), np.log(D)
        self.centre = np.array([logN.mean(), logD.mean()])
        self.logN, self.logD = logN - self.centre[0], logD - self.centre[1]
        self.logL = np.log(loss)
        self.basisN = np.stack([np.ones_like(self.logN), self.logN], axis=1)
        self.basisD = np.stack([np.ones_like(self.logD), self.logD], axis=1)
        w = np.atleast_2d(np.ones_like(self.logL) if weights is None else np.asarray(weights, float))
        # the reduction is a per-row scale, folded into the weights once
        self.weights = w / w.sum(axis=1, keepdims=True) if reduce == "mean" else w
        self.delta = delta
        self._design_n, self._design_d = self.basisN.T.copy(), self.basisD.T.copy()
        self._range_n = (self.logN.min(), self.logN.max())
        self._range_d = (self.logD.min(), self.logD.max())
        self._work: list[np.ndarray] | None = None

    def to_internal(self, theta: np.ndarray) -> np.ndarray:
        out = np.array(theta, dtype=float, ndmin=2)
        out[:, 0] -= out[:, 3] * self.centre[0]
        out[:, 1] -= out[:, 4] * self.centre[1]
        return out

    def to_natural(self, internal: np.ndarray) -> np.ndarray:
        out = np.array(internal, dtype=float, ndmin=2)
        out[:, 0] += out[:, 3] * self.centre[0]
        out[:, 1] += out[:, 4] * self.centre[1]
        return out

    def __call__(self, theta: np.ndarray, rows: np.ndarray | None = None):
        """Objective [k] and gradient [k, 5] at internal parameter rows ``theta`` [k, 5], a cache-sized block at a
        time."""
        rows = np.arange(len(theta)) if rows is None else rows
        block = max(1, BLOCK_ELEMENTS // len(self.logL))
        if len(theta) <= block:
            return self._evaluate(theta, rows)
        parts = [self._evaluate(theta[i : i + block], rows[i : i + block]) for i in range(0, len(theta), block)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _buffers(self, k: int):
        """Five [k, P] work arrays, reused between calls: fresh large temporaries cost page faults."""
        if self._work is None or len(self._work[0]) < k:
            block = max(k, BLOCK_ELEMENTS // len(self.logL))
            self._work = [np.empty((block, len(self.logL))) for _ in range(5)]
        return [w[:k] for w in self._work]

    @np.errstate(over="ignore", invalid="ignore")  # absurd trial steps give inf/NaN, which the line search rejects
    def _evaluate(self, theta: np.ndarray, rows: np.ndarray):
        """log L_pred = LSE(a − α log N, b − β log D, e), then the Huber loss and its gradient.

        Terms are shifted by the row maximum m (known in closed form from the range of log N and
        log D) rather than per point, which saves an exponential per point; rows where a point's
        terms all lie 667+ e-folds below m (absurd parameters) are redone with per-point shifts.
        """
        e1, e2, total, r, c = self._buffers(len(theta))
        a, b, e, alpha, beta = theta.T
        lo_n, hi_n = self._range_n
        lo_d, hi_d = self._range_d
        span1 = np.stack([-alpha * lo_n, -alpha * hi_n])
        span2 = np.stack([-beta * lo_d, -beta * hi_d])
        m = np.maximum.reduce([a + span1.max(axis=0), b + span2.max(axis=0), e])
        for out, slope, intercept, span, design in (
            (e1, alpha, a, span1, self._design_n),
            (e2, beta, b, span2, self._design_d),
        ):
            np.matmul(np.stack([intercept - m, -slope], axis=1), design, out=out)  # (a − m) − α log N
            deep = np.flatnonzero(intercept - m + span.min(axis=0) < -700.0)
            if deep.size:  # exp underflowing to 0 takes numpy's slow path: stop at e^-700
                out[deep] = np.maximum(out[deep], -700.0)
            np.exp(out, out=out)
        np.add(e1, e2, out=total)
        total += np.exp(np.maximum(e - m, -700.0))[:, None]
        np.log(total, out=r)
        r += m[:, None]
        r -= self.logL
        low = np.flatnonzero(e - m < -660.0)  # elsewhere the e term alone keeps every total above 1e-287
        tiny = low[total[low].min(axis=1) < 1e-290]
        if tiny.size:
            t = theta[tiny]
            t1 = t[:, 0, None] - np.multiply.outer(t[:, 3], self.logN)
            t2 = t[:, 1, None] - np.multiply.outer(t[:, 4], self.logD)
            mp = np.maximum(np.maximum(t1, t2), t[:, 2, None])
            x1, x2, x3 = np.exp(t1 - mp), np.exp(t2 - mp), np.exp(t[:, 2, None] - mp)
            tot = x1 + x2 + x3
            r[tiny] = mp + np.log(tot) - self.logL
            e1[tiny], e2[tiny], total[tiny] = x1 / tot, x2 / tot, 1.0

        w = self.weights[0] if len(self.weights) == 1 else self.weights[rows]
        np.clip(r, -self.delta, self.delta, out=c)
        r *= 2.0
        r -= c
        r *= c  # 2·Huber = c·(2r − c), c = clip(r, −δ, δ)
        f = 0.5 * (r @ w if w.ndim == 1 else np.einsum("ij,ij->i", r, w))
        u = np.multiply(c, w, out=c)  # weighted dHuber/dr
        v = np.divide(u, total, out=total)
        e1 *= v
        e2 *= v
        ga, galpha = (e1 @ self.basisN).T
        gb, gbeta = (e2 @ self.basisD).T
        grad = np.stack([ga, gb, u.sum(axis=1) - ga - gb, -galpha, -gbeta], axis=1)
        return f, grad


@dataclass(frozen=True)
class ChinchillaFit:
    E: float
    A: float
    B: float
    alpha: float
    beta: float
    objective: float
    huber_delta: float
    huber_reduce: str
    n_starts: int
    n_converged: int
    # distinct optima found, best first, rows of natural θ: warm starts for bootstrap refits
    candidates: np.ndarray = field(default_factory=lambda: np.empty((0, 5)), repr=False, compare=False)
    method: str = "grid"  # how the starts were found: the Chinchilla grid or ``vpnls``
    start_points: int | None = None  # points the start search used, when a subsample (large inputs)

    @classmethod
    def from_theta(cls, theta, objective, **info) -> ChinchillaFit:
        a, b, e, alpha, beta = map(float, theta)
        return cls(float(np.exp(e)), float(np.exp(a)), float(np.exp(b)), alpha, beta, float(objective), **info)

    @property
    def theta(self) -> np.ndarray:
        return np.array([np.log(self.A), np.log(self.B), np.log(self.E), self.alpha, self.beta])

    def loss(self, N, D):
        return self.E + self.A / np.asarray(N, float) ** self.alpha + self.B / np.asarray(D, float) ** self.beta

    def compute_optimal(self, C, k: float = 6.0):
        """(N_opt, D_opt) minimising L under C = k·N·D (Hoffmann et al. eq. 4 with k for 6)."""
        return compute_optimal(self.theta, C, k)

    def as_dict(self) -> dict:
        out = {
            k: getattr(self, k)
            for k in (
                "E",
                "A",
                "B",
                "alpha",
                "beta",
                "objective",
                "huber_delta",
                "huber_reduce",
                "n_starts",
                "n_converged",
            )
        }
        if self.start_points is not None:
            out["start_points"] = self.start_points
        out["G"] = float(_G(self.theta)[0])
        out["a"] = self.beta / (self.alpha + self.beta)  # N_opt ∝ C^a
        out["b"] = self.alpha / (self.alpha + self.beta)  # D_opt ∝ C^b
        return out


def _G(theta: np.ndarray) -> np.ndarray:
    theta = np.atleast_2d(theta)
    a, b, alpha, beta = theta[:, 0], theta[:, 1], theta[:, 3], theta[:, 4]
    with np.errstate(all="ignore"):
        return np.exp((np.log(alpha / beta) + a - b) / (alpha + beta))


def compute_optimal(theta: np.ndarray, C, k: float = 6.0):
    """N_opt = G (C/k)^(β/(α+β)), D_opt = G⁻¹ (C/k)^(α/(α+β)); theta [n, 5] or [5], C scalar or [m]."""
    single = np.ndim(theta) == 1
    theta = np.atleast_2d(theta)
    alpha, beta = theta[:, 3, None], theta[:, 4, None]
    G = _G(theta)[:, None]
    logc = np.log(np.atleast_1d(np.asarray(C, float)) / k)[None, :]
    with np.errstate(all="ignore"):
        N = G * np.exp(logc * beta / (alpha + beta))
        D = np.exp(logc * alpha / (alpha + beta)) / G
    if single:
        N, D = N[0], D[0]
    if np.ndim(C) == 0:
        N, D = N[..., 0], D[..., 0]
    return N, D


def log_loss_jacobian(theta: np.ndarray, N, D) -> np.ndarray:
    """d ln L̂ / dθ at each (N, D), θ = (ln A, ln B, ln E, alpha, beta): [n, 5]. How a run's loss moves the
    fit, for the condition of a fit (``diagnostics``) and the value of a run not yet made (``propose``)."""
    ln_a, ln_b, ln_e, alpha, beta = map(float, theta)
    N, D = np.atleast_1d(np.asarray(N, float)), np.atleast_1d(np.asarray(D, float))
    terms = np.stack([np.exp(ln_a) * N**-alpha, np.exp(ln_b) * D**-beta, np.full_like(N, np.exp(ln_e))], axis=1)
    columns = [terms[:, 0], terms[:, 1], terms[:, 2], -np.log(N) * terms[:, 0], -np.log(D) * terms[:, 1]]
    return np.stack(columns, axis=1) / terms.sum(axis=1)[:, None]


def log_n_opt_gradient(theta: np.ndarray, C: float, k: float = 6.0) -> np.ndarray:
    """d ln N_opt(C) / dθ of ``compute_optimal``:
    ln N_opt = (ln(alpha/beta) + ln A - ln B + beta ln(C/k)) / (alpha + beta)."""
    ln_a, ln_b, _, alpha, beta = map(float, theta)
    s, u, L = alpha + beta, math.log(alpha / beta) + ln_a - ln_b, math.log(C / k)
    return np.array(
        [1 / s, -1 / s, 0.0, 1 / (alpha * s) - (u + beta * L) / s**2, -1 / (beta * s) - u / s**2 + alpha * L / s**2]
    )


def predicted_loss(theta: np.ndarray, N, D) -> np.ndarray:
    theta = np.atleast_2d(theta)
    a, b, e, alpha, beta = (theta[:, i, None] for i in range(5))
    N, D = np.atleast_1d(np.asarray(N, float)), np.atleast_1d(np.asarray(D, float))
    return np.exp(e) + np.exp(a) / N**alpha + np.exp(b) / D**beta


def fit_chinchilla(
    points: Points, *, huber_reduce: str = "sum", delta: float = HUBER_DELTA, starts: np.ndarray | None = None
) -> ChinchillaFit:
    """Best of the L-BFGS runs from every start (the Chinchilla grid by default; ``multistart``)."""
    check_points(points, "approach 3")
    objective = HuberObjective(points.N, points.D, points.loss, points.weight, delta=delta, reduce=huber_reduce)
    best = fit_from_starts(objective, chinchilla_grid() if starts is None else starts, "approach 3")
    return ChinchillaFit.from_theta(
        best.theta,
        best.objective,
        huber_delta=delta,
        huber_reduce=huber_reduce,
        n_starts=best.n_starts,
        n_converged=best.n_converged,
        candidates=best.candidates,
    )


def check_points(points: Points, what: str) -> None:
    """Five weighted points with 2+ distinct N and D: fewer leave a five-parameter law undetermined."""
    used = points.weight > 0
    if np.unique(points.N[used]).size < 2 or np.unique(points.D[used]).size < 2 or used.sum() < 5:
        raise UserError(
            f"{what}: needs at least 5 weighted points with 2+ distinct N and D, got {int(used.sum())} points"
        )


def refit_weighted(
    points: Points, weights: np.ndarray, starts: np.ndarray, *, huber_reduce: str = "sum", delta: float = HUBER_DELTA
) -> tuple[np.ndarray, np.ndarray]:
    """Refit under each row of ``weights`` [R, P] from the same few ``starts`` (``multistart.refit_weighted``)."""
    return multistart.refit_weighted(
        lambda w: HuberObjective(points.N, points.D, points.loss, w, delta=delta, reduce=huber_reduce), weights, starts
    )
