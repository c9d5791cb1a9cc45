"""y = coef · x^exponent by (weighted) least squares in log-log space: the last step of approaches 1 and 2."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from launcher.errors import UserError


@dataclass(frozen=True)
class PowerLaw:
    coef: float
    exponent: float
    r2: float

    def __call__(self, x):
        return self.coef * np.asarray(x, dtype=float) ** self.exponent

    def as_dict(self, prefix: str = "") -> dict:
        return {f"{prefix}coef": self.coef, f"{prefix}exponent": self.exponent, f"{prefix}r2": self.r2}


def fit_power_law(x, y, weights=None, *, what: str = "power law") -> PowerLaw:
    """Weighted OLS of log y on log x; ``weights`` are 1/σ² of log y (e.g. Porian et al.'s bootstrap std)."""
    lx, ly = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    w = np.ones_like(lx) if weights is None else np.asarray(weights, float)
    use = w > 0
    if np.unique(lx[use]).size < 2:
        raise UserError(
            f"{what}: needs at least 2 distinct x values with positive weight, got {np.unique(lx[use]).size}"
        )
    sw = np.sqrt(w[use])
    X = np.stack([np.ones(use.sum()), lx[use]], axis=1)
    (intercept, slope), *_ = np.linalg.lstsq(X * sw[:, None], ly[use] * sw, rcond=None)
    resid = ly[use] - intercept - slope * lx[use]
    mean = np.average(ly[use], weights=w[use])
    total = np.sum(w[use] * (ly[use] - mean) ** 2)
    r2 = 1.0 - np.sum(w[use] * resid**2) / total if total > 0 else 1.0
    return PowerLaw(float(np.exp(intercept)), float(slope), float(r2))
