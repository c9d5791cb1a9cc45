"""Over-training law (Gadre et al. 2024, "Language models scale reliably with over-training and on
downstream tasks", arXiv:2403.08540), ``--approach overtrain``.

The paper writes the loss in training compute C = 6·N·D and token multiplier M = D/N as

    L(C, M) = E + (a·M^η + b·M^(−η))·C^(−η),

which is the Chinchilla form L = E + A/N^α + B/D^β with one exponent α = β for N and D,
reparameterised: N = (C/(6M))^½ and D = (C·M/6)^½ give η = α/2, a = A·6^η, b = B·6^η. The
authors' code (github.com/mlfoundations/scaling, scaling/laws.py: ``powlaw_ours``,
``curve_fit_powlaw_ours``) fits exactly this tied form in (N, M) with scipy ``curve_fit``
(least squares on L itself) from a grid of 4·4·2·4 = 128 starts, keeping the lowest RMS residual.

What is implemented: the same law, fitted as approach 3 is fitted (and as the issue asks): the
Huber loss (δ = 1e-3) of log L̂ − log L, summed or averaged, minimised by batched L-BFGS from a
grid of starts, the Chinchilla grid with β tied to α: a, b ∈ {0, 5, …, 25}, e ∈ {−1, −0.5, …, 1},
α ∈ {0, 0.5, …, 2} (6·6·5·5 = 900). The objective is approach 3's ``HuberObjective`` evaluated at
(a, b, e, α, α), its gradient in α the sum of the α and β components. Huber on log L rather than
least squares on L because it is what approach 3 does here, so the two laws differ only in the
tied exponent, and because a robust loss keeps one diverged run from moving the fit. The law is
evaluated in (N, D); a, b and η are reported for the paper's (C, M) form under C = 6·N·D.
"""

from __future__ import annotations

import itertools

import numpy as np

from launcher.analysis.fit import multistart
from launcher.analysis.fit.chinchilla import HUBER_DELTA, ChinchillaFit, HuberObjective, check_points, predicted_loss
from launcher.analysis.fit.laws import LawFamily, Options
from launcher.analysis.fit.points import Points, Targets

WARM_STARTS = 8


class TiedObjective:
    """Approach 3's objective over (a, b, e, α) with β = α: rows [k, 4] in the same centred coordinates."""

    def __init__(self, points: Points, weights, reduce: str, delta: float = HUBER_DELTA):
        self.inner = HuberObjective(points.N, points.D, points.loss, weights, delta=delta, reduce=reduce)
        self.centre = self.inner.centre

    def __call__(self, theta: np.ndarray, rows: np.ndarray | None = None):
        f, g = self.inner(np.concatenate([theta, theta[:, 3:]], axis=1), rows)
        return f, np.concatenate([g[:, :3], g[:, 3:4] + g[:, 4:]], axis=1)

    def to_internal(self, theta: np.ndarray) -> np.ndarray:
        out = np.array(theta, dtype=float, ndmin=2)
        out[:, 0] -= out[:, 3] * self.centre[0]
        out[:, 1] -= out[:, 3] * self.centre[1]
        return out

    def to_natural(self, internal: np.ndarray) -> np.ndarray:
        out = np.array(internal, dtype=float, ndmin=2)
        out[:, 0] += out[:, 3] * self.centre[0]
        out[:, 1] += out[:, 3] * self.centre[1]
        return out


def tied_grid() -> np.ndarray:
    """The 900 starts: the Chinchilla grid's axes with β = α, rows of (a, b, e, α)."""
    axes = (np.arange(0, 30, 5), np.arange(0, 30, 5), np.arange(-1, 1.5, 0.5), np.arange(0, 2.5, 0.5))
    return np.array(list(itertools.product(*axes)), dtype=float)


def untie(theta: np.ndarray) -> np.ndarray:
    """(a, b, e, α) rows as approach 3's (a, b, e, α, β = α)."""
    theta = np.atleast_2d(theta)
    return np.concatenate([theta, theta[:, 3:]], axis=1)


def fit_overtrain(points: Points, *, huber_reduce: str = "sum", starts: np.ndarray | None = None) -> ChinchillaFit:
    """The tied law from ``starts`` (rows of (a, b, e, α); the 900-start grid by default)."""
    check_points(points, "overtrain")
    objective = TiedObjective(points, points.weight, huber_reduce)
    best = multistart.fit_from_starts(objective, tied_grid() if starts is None else starts, "overtrain")
    return ChinchillaFit.from_theta(
        untie(best.theta)[0],
        best.objective,
        huber_delta=HUBER_DELTA,
        huber_reduce=huber_reduce,
        n_starts=best.n_starts,
        n_converged=best.n_converged,
        candidates=untie(best.candidates),
    )


def gadre_form(fit: ChinchillaFit) -> dict:
    """The fit in the paper's parameters (C = 6·N·D, M = D/N) beside the Chinchilla ones."""
    eta = fit.alpha / 2.0
    return {
        "E": fit.E,
        "a": fit.A * 6.0**eta,
        "b": fit.B * 6.0**eta,
        "eta": eta,
        "A": fit.A,
        "B": fit.B,
        "alpha": fit.alpha,
        "beta": fit.beta,
        **{k: getattr(fit, k) for k in ("objective", "huber_delta", "huber_reduce", "n_starts", "n_converged")},
    }


class Overtrain(LawFamily):
    name = "overtrain"
    summary = "Gadre et al. 2024: L(C, M) = E + (a·M^η + b·M^-η)·C^-η, Huber on log L"
    parameters = ("E", "a", "b", "eta")

    def fit(self, points: Points, options: Options, warm: ChinchillaFit | None = None) -> ChinchillaFit:
        starts = None if warm is None else warm.candidates[:WARM_STARTS, :4]
        return fit_overtrain(points, huber_reduce=options.huber_reduce, starts=starts)

    def result(self, fit: ChinchillaFit) -> dict:
        return gadre_form(fit)

    def predict(self, fit: ChinchillaFit, targets: Targets) -> np.ndarray:
        return fit.loss(targets.N, targets.D)

    def replicates(
        self, fit: ChinchillaFit, points: Points, options: Options, counts: np.ndarray, targets: Targets
    ) -> np.ndarray:
        theta, _ = multistart.refit_weighted(
            lambda w: TiedObjective(points, w, options.huber_reduce), counts, fit.candidates[:WARM_STARTS, :4]
        )
        return predicted_loss(untie(theta), targets.N, targets.D)
