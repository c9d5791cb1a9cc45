"""Chinchilla approach 1: the lower envelope of loss over FLOPs across every run's training curve.

Curve points (C so far, N, D so far, loss) of all runs are binned logarithmically in C; the
lowest-loss point of each bin that also beats every point at smaller C is the envelope, and
N_opt ∝ C^a, D_opt ∝ C^b are log-log least squares through the envelope's (C, N) and (C, D).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from launcher.analysis.fit.points import Points, pareto_front
from launcher.analysis.fit.powerlaw import PowerLaw, fit_power_law
from launcher.errors import UserError

N_BINS = 30


@dataclass(frozen=True)
class EnvelopeFit:
    C: np.ndarray
    N: np.ndarray
    D: np.ndarray
    loss: np.ndarray
    N_law: PowerLaw
    D_law: PowerLaw

    @property
    def a(self) -> float:
        return self.N_law.exponent

    @property
    def b(self) -> float:
        return self.D_law.exponent

    def as_dict(self) -> dict:
        return {
            "a": self.a,
            "b": self.b,
            "N_coef": self.N_law.coef,
            "D_coef": self.D_law.coef,
            "r2_N": self.N_law.r2,
            "r2_D": self.D_law.r2,
            "envelope": {"C": self.C.tolist(), "N": self.N.tolist(), "D": self.D.tolist(), "loss": self.loss.tolist()},
        }


def envelope_points(points: Points, n_bins: int = N_BINS) -> np.ndarray:
    """Indices of the envelope: per log-C bin the min-loss point, kept where it lowers the envelope."""
    idx = np.flatnonzero(points.weight > 0)
    logc = np.log(points.C[idx])
    edges = np.linspace(logc.min(), logc.max(), n_bins + 1)
    bin_of = np.clip(np.searchsorted(edges, logc, side="right") - 1, 0, n_bins - 1)
    order = np.lexsort((points.loss[idx], bin_of))
    first = np.r_[True, bin_of[order][1:] != bin_of[order][:-1]]
    best = idx[order[first]]
    return best[pareto_front(points.C[best], points.loss[best])]


def fit_envelope(points: Points, n_bins: int = N_BINS) -> EnvelopeFit:
    env = envelope_points(points, n_bins)
    if env.size < 3 or np.unique(points.N[env]).size < 2:
        raise UserError(
            f"approach 1: the loss/FLOPs envelope has {env.size} points from "
            f"{np.unique(points.N[env]).size} model sizes; needs 3+ points from 2+ sizes"
        )
    C, N, D, w = points.C[env], points.N[env], points.D[env], points.weight[env]
    return EnvelopeFit(
        C,
        N,
        D,
        points.loss[env],
        fit_power_law(C, N, w, what="approach 1 N_opt"),
        fit_power_law(C, D, w, what="approach 1 D_opt"),
    )
