"""Broken neural scaling laws (Caballero et al. 2023) for curves that bend.

y = a + b·x^(−c0)·Π_i (1 + (x/d_i)^(1/f_i))^(−c_i·f_i). With a = e^ã, b = e^b̃, d_i = e^{d̃_i},
f_i = e^{f̃_i}, the varying part is log-linear: ln(y − a) = b̃ − c0 ln x − Σ c_i f_i
softplus((ln x − d̃_i)/f_i), so ln y = logaddexp(ã, that). Least squares on ln y from several
starts; the best fit wins. Past break i the
log-log slope of y − a changes by −c_i.
Starts come from a grid over (a, d_i, f) on which the rest is linear (see ``_starts``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares

from launcher.errors import UserError

BREAK_QUANTILES = np.linspace(0.1, 0.9, 9)
SHARPNESS = (0.1, 0.3, 1.0)  # f_i: sharp to gentle breaks
FLOOR_FRACTIONS = (0.0, 0.25, 0.5, 0.75, 0.9)  # a as a fraction of min(y)
N_STARTS = 4


@dataclass(frozen=True)
class BnslFit:
    a: float
    b: float
    c0: float
    breaks: list[dict]  # [{"c": c_i, "d": d_i, "f": f_i}, ...] by increasing d
    rmse_log: float

    def __call__(self, x):
        return np.exp(_log_y(self.params, np.log(np.asarray(x, float))))

    @property
    def params(self) -> np.ndarray:
        p = [np.log(self.a) if self.a > 0 else -np.inf, np.log(self.b), self.c0]
        for br in self.breaks:
            p += [br["c"], np.log(br["d"]), np.log(br["f"])]
        return np.array(p)

    def as_dict(self) -> dict:
        return {"a": self.a, "b": self.b, "c0": self.c0, "breaks": self.breaks, "rmse_log": self.rmse_log}


def _log_y(p: np.ndarray, lnx: np.ndarray, jac: bool = False):
    """ln y at ln x, and with ``jac`` its derivatives [len(x), len(p)] in the parameters."""
    varying = p[1] - p[2] * lnx
    parts = []
    for c, lnd, lnf in p[3:].reshape(-1, 3):
        f = np.exp(lnf)
        z = (lnx - lnd) / f
        soft = np.logaddexp(0.0, z)
        varying = varying - c * f * soft
        if jac:
            sig = 0.5 * (1.0 + np.tanh(0.5 * z))
            parts += [-f * soft, c * sig, -c * f * (soft - z * sig)]
    log_y = np.logaddexp(p[0], varying)
    if not jac:
        return log_y
    floor_share = np.exp(p[0] - log_y)  # ∂ ln y/∂ã; the rest goes through the varying part
    rest = 1.0 - floor_share
    columns = [floor_share, rest, -rest * lnx] + [rest * d for d in parts]
    return log_y, np.stack(columns, axis=1)


def _starts(lnx: np.ndarray, lny: np.ndarray, sw: np.ndarray, n_breaks: int) -> list[np.ndarray]:
    """The best few grid points of (floor a, break locations d_i, sharpness f).

    For fixed a, d_i and f, ln(y − a) is linear in (b̃, c0, c_i), so each grid point costs one
    small linear least squares; only the best ``N_STARTS`` go on to the nonlinear fit.
    """
    ymin = np.exp(lny.min())
    scored = []
    for lnds in itertools.combinations(np.quantile(lnx, BREAK_QUANTILES), n_breaks):
        for f, frac in itertools.product(SHARPNESS, FLOOR_FRACTIONS):
            a = frac * ymin
            target = np.log(np.exp(lny) - a)
            columns = [np.ones_like(lnx), -lnx] + [-f * np.logaddexp(0.0, (lnx - lnd) / f) for lnd in lnds]
            X = np.stack(columns, axis=1)
            coef, *_ = np.linalg.lstsq(X * sw[:, None], target * sw, rcond=None)
            p = np.array(
                [np.log(max(a, 1e-6 * ymin)), *coef[:2]]
                + [v for c, lnd in zip(coef[2:], lnds) for v in (c, lnd, np.log(f))]
            )
            scored.append((float(np.sum((sw * (_log_y(p, lnx) - lny)) ** 2)), p))
    scored.sort(key=lambda item: item[0])
    return [p for _, p in scored[:N_STARTS]]


def fit_bnsl(x, y, *, n_breaks: int = 1, weights=None) -> BnslFit:
    """Fit y(x) with ``n_breaks`` breaks by least squares on ln y from many starts."""
    lnx, lny = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    w = np.ones_like(lnx) if weights is None else np.asarray(weights, float)
    use = w > 0
    lnx, lny, sw = lnx[use], lny[use], np.sqrt(w[use])
    n_params = 3 + 3 * n_breaks
    if n_breaks < 1:
        raise UserError(f"bnsl: n_breaks must be 1 or more, got {n_breaks}")
    if np.unique(lnx).size <= n_params:
        raise UserError(
            f"bnsl: {n_breaks} break(s) need more than {n_params} distinct x values, got {np.unique(lnx).size}"
        )

    def residual(p):
        return sw * (_log_y(p, lnx) - lny)

    def jacobian(p):
        return sw[:, None] * _log_y(p, lnx, jac=True)[1]

    lo = np.full(n_params, -np.inf)
    hi = np.full(n_params, np.inf)
    lo[5::3], hi[5::3] = np.log(1e-3), np.log(10.0)  # sharpness f_i within [1e-3, 10]
    best = None
    for p0 in _starts(lnx, lny, sw, n_breaks):
        p0 = np.clip(p0, lo + 1e-9, hi - 1e-9)
        r = least_squares(residual, p0, jac=jacobian, bounds=(lo, hi), method="trf", x_scale="jac", max_nfev=200)
        if np.all(np.isfinite(r.x)) and (best is None or r.cost < best.cost):
            best = r
    if best is None:
        raise UserError("bnsl: the fit failed from every start")
    p = best.x
    breaks = sorted(
        ({"c": float(c), "d": float(np.exp(lnd)), "f": float(np.exp(lnf))} for c, lnd, lnf in p[3:].reshape(-1, 3)),
        key=lambda br: br["d"],
    )
    rmse = float(np.sqrt(np.sum(best.fun**2) / np.sum(sw**2)))
    return BnslFit(float(np.exp(p[0])), float(np.exp(p[1])), float(p[2]), breaks, rmse)
