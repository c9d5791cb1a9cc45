"""Kaplan et al. (2020) laws, fitted in log space.

L(N) = (Nc/N)^αN and L(D) = (Dc/D)^αD are straight lines in log-log space, fitted to the best
loss reached with at most N parameters (resp. D tokens), i.e. the Pareto front of (N, loss)
and (D, loss): the points that are limited by N (resp. D) rather than by the other.
L(N, D) = [(Nc/N)^(αN/αD) + Dc/D]^αD is fitted to all points by least squares on log L.
Kaplan et al. count non-embedding parameters; pass those as N where available.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares

from launcher.analysis.fit.points import Points, pareto_front
from launcher.analysis.fit.powerlaw import fit_power_law
from launcher.errors import UserError


@dataclass(frozen=True)
class KaplanFit:
    Nc: float
    Dc: float
    alpha_N: float
    alpha_D: float
    rmse_log: float  # root mean square of log L_pred − log L_obs

    def loss(self, N, D):
        N, D = np.asarray(N, float), np.asarray(D, float)
        return np.exp(
            _log_loss(np.array([np.log(self.Nc), np.log(self.Dc), self.alpha_N, self.alpha_D]), np.log(N), np.log(D))
        )


def _log_loss(p: np.ndarray, lnN: np.ndarray, lnD: np.ndarray) -> np.ndarray:
    lnc_n, lnc_d, alpha_n, alpha_d = p
    return alpha_d * np.logaddexp(alpha_n / alpha_d * (lnc_n - lnN), lnc_d - lnD)


def fit_single(x: np.ndarray, loss: np.ndarray, w: np.ndarray, what: str) -> dict:
    """(xc, α) of L = (xc/x)^α on the Pareto front of (x, loss)."""
    front = pareto_front(x, loss)
    if front.size < 2:
        raise UserError(f"kaplan L({what}): needs 2+ points where more {what} gave lower loss, got {front.size}")
    law = fit_power_law(x[front], loss[front], w[front], what=f"kaplan L({what})")
    alpha = -law.exponent
    return {
        f"{what}c": float(law.coef ** (1.0 / alpha)) if alpha > 0 else None,
        f"alpha_{what}": alpha,
        "r2": law.r2,
        "n_points": int(front.size),
    }


def fit_joint(points: Points, starts: list[np.ndarray]) -> KaplanFit:
    """Least squares on log L from the single-variable fits and a few spreads of the exponents."""
    use = points.weight > 0
    lnN, lnD, lnL = np.log(points.N[use]), np.log(points.D[use]), np.log(points.loss[use])
    sw = np.sqrt(points.weight[use])
    if use.sum() < 5 or np.unique(lnN).size < 2 or np.unique(lnD).size < 2:
        raise UserError(f"kaplan L(N, D): needs 5+ points with 2+ distinct N and D, got {int(use.sum())}")

    def residual(p):
        return sw * (_log_loss(p, lnN, lnD) - lnL)

    best = None
    for p0 in starts:
        try:
            r = least_squares(residual, p0, bounds=([-np.inf, -np.inf, 1e-4, 1e-4], np.inf), method="trf")
        except ValueError:
            continue
        if np.all(np.isfinite(r.x)) and (best is None or r.cost < best.cost):
            best = r
    if best is None:
        raise UserError("kaplan L(N, D): the fit failed from every start")
    lnc_n, lnc_d, alpha_n, alpha_d = best.x
    rmse = float(np.sqrt(np.sum(best.fun**2) / np.sum(sw**2)))
    return KaplanFit(float(np.exp(lnc_n)), float(np.exp(lnc_d)), float(alpha_n), float(alpha_d), rmse)


def fit_kaplan(points: Points) -> dict:
    """L(N), L(D) and L(N, D); a part that the data cannot support records {"error": ...}."""
    out: dict = {}
    for what, x in (("N", points.N), ("D", points.D)):
        try:
            out[f"L_{what}"] = fit_single(x, points.loss, points.weight, what)
        except UserError as exc:
            out[f"L_{what}"] = {"error": str(exc)}
    lnL = np.log(points.loss)
    starts = []
    for alpha_n in (0.05, 0.1, 0.3):
        for alpha_d in (0.05, 0.1, 0.3):
            # place Nc, Dc so that each term alone would explain the largest loss
            starts.append(
                np.array(
                    [
                        np.log(points.N.min()) + lnL.max() / alpha_n,
                        np.log(points.D.min()) + lnL.max() / alpha_d,
                        alpha_n,
                        alpha_d,
                    ]
                )
            )
    single = [out[k] for k in ("L_N", "L_D")]
    if all("error" not in s and s.get(f"{k}c") for s, k in zip(single, "ND")):
        starts.insert(
            0, np.array([np.log(single[0]["Nc"]), np.log(single[1]["Dc"]), single[0]["alpha_N"], single[1]["alpha_D"]])
        )
    try:
        joint = fit_joint(points, starts)
        out["L_ND"] = {
            "Nc": joint.Nc,
            "Dc": joint.Dc,
            "alpha_N": joint.alpha_N,
            "alpha_D": joint.alpha_D,
            "rmse_log": joint.rmse_log,
        }
    except UserError as exc:
        out["L_ND"] = {"error": str(exc)}
    return out
