"""Two-step prediction of a downstream metric (``--approach two_stage --metric-col COL --link L``).

Step 1 fits (N, D) → loss with any loss law that predicts (``--loss-approach``, approach 3 by
default). Step 2 fits loss → metric through a link, by least squares on the metric (weighted):

- ``sigmoid`` (Llama 3, the OLMo ladder): metric = a / (1 + exp(−k·(L − L0))) + b, a ≥ 0. The sign
  of k is free, so a metric that rises as loss falls (accuracy, k < 0) and one that falls with scale
  (inverse scaling, k > 0) are both fitted as they are, never clipped to the expected direction.
- ``exp`` (Gadre et al. 2024, top-1 error): err = ε − k·exp(−γ·L), as their code fits it
  (mlfoundations/scaling, scaling/shared.py: ``E - a * np.exp(-b * t)``).

A bounded metric is fitted as bounded: with bounds [lo, hi] the sigmoid's range (b, a + b) lies
within them (b = lo + (hi − lo)·s, a = (hi − b)·t, s, t ∈ [0, 1]) and the exponential's ceiling
ε (its value as loss grows) too. Bounds default to [0, 1] when every observed value lies there.
For fixed (k, L0) or γ the link is linear in the rest, so the starts are the best points of a
grid over those, each with its linear least squares.

A prediction is the link at the step-1 loss; its bootstrap interval refits both steps on the same
resampled runs, so it carries the uncertainty of both.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares

from launcher.analysis.fit.laws import LawFamily, Options
from launcher.analysis.fit.points import Points, Targets
from launcher.errors import UserError

SLOPES = (1.0, 3.0, 10.0, 30.0)  # |k|·range(L) and |γ|·range(L) of the start grid
CENTRES = np.linspace(-0.5, 1.5, 9)  # L0 = min(L) + c·range(L)
N_STARTS = 4
UNIT = (0.0, 1.0)


class Sigmoid:
    """metric = a / (1 + exp(−k·(L − L0))) + b; under bounds [lo, hi] fitted as (s, t, k, L0) with
    b = lo + (hi − lo)·s, a = (hi − b)·t, s, t ∈ [0, 1], so that the range (b, a + b) stays inside."""

    names = ("a", "b", "k", "L0")

    @staticmethod
    def value(p: Mapping[str, float], loss: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            return p["a"] / (1.0 + np.exp(-p["k"] * (loss - p["L0"]))) + p["b"]

    @staticmethod
    def params(x: np.ndarray, bounds) -> dict:
        if bounds is None:
            a, b, k, L0 = x
        else:
            lo, hi = bounds
            b = lo + (hi - lo) * x[0]
            a, k, L0 = (hi - b) * x[1], x[2], x[3]
        return {"a": float(a), "b": float(b), "k": float(k), "L0": float(L0)}

    @staticmethod
    def vector(p: Mapping[str, float], bounds) -> np.ndarray:
        if bounds is None:
            return np.array([p["a"], p["b"], p["k"], p["L0"]])
        lo, hi = bounds
        return np.array([(p["b"] - lo) / (hi - lo), p["a"] / max(hi - p["b"], 1e-12), p["k"], p["L0"]])

    def jac(self, x: np.ndarray, loss: np.ndarray, bounds) -> np.ndarray:
        p = self.params(x, bounds)
        with np.errstate(over="ignore"):
            s = 1.0 / (1.0 + np.exp(-p["k"] * (loss - p["L0"])))
        slope = p["a"] * s * (1.0 - s)
        d_k, d_L0 = slope * (loss - p["L0"]), -slope * p["k"]
        if bounds is None:
            return np.stack([s, np.ones_like(s), d_k, d_L0], axis=1)
        lo, hi = bounds
        return np.stack([(hi - lo) * (1.0 - x[1] * s), (hi - p["b"]) * s, d_k, d_L0], axis=1)

    @staticmethod
    def box(bounds) -> tuple[np.ndarray, np.ndarray]:
        if bounds is None:
            return np.array([0.0, -np.inf, -np.inf, -np.inf]), np.full(4, np.inf)
        return np.array([0.0, 0.0, -np.inf, -np.inf]), np.array([1.0, 1.0, np.inf, np.inf])

    def starts(self, loss: np.ndarray, metric: np.ndarray, sw: np.ndarray, bounds) -> list[tuple[float, np.ndarray]]:
        """(cost, vector) per (k, L0) of the grid, a and b from the linear least squares."""
        spread, out = max(float(np.ptp(loss)), 1e-12), []
        for slope, sign, c in itertools.product(SLOPES, (-1.0, 1.0), CENTRES):
            k, L0 = sign * slope / spread, loss.min() + c * spread
            (a, b), cost = _linear(1.0 / (1.0 + np.exp(-k * (loss - L0))), metric, sw)
            if a < 0:  # the same curve with a ≥ 0 runs the other way
                a, b, k = -a, a + b, -k
            if bounds is not None:
                b = float(np.clip(b, *bounds))
                a = float(np.clip(a, 0.0, bounds[1] - b))
            out.append((cost, self.vector({"a": a, "b": b, "k": k, "L0": L0}, bounds)))
        return out


class Exponential:
    """err = ε − k·exp(−γ·L); under bounds the ceiling ε (the value as the loss grows) stays inside."""

    names = ("epsilon", "k", "gamma")

    @staticmethod
    def value(p: Mapping[str, float], loss: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            return p["epsilon"] - p["k"] * np.exp(-p["gamma"] * loss)

    @staticmethod
    def params(x: np.ndarray, bounds) -> dict:
        return {"epsilon": float(x[0]), "k": float(x[1]), "gamma": float(x[2])}

    @staticmethod
    def vector(p: Mapping[str, float], bounds) -> np.ndarray:
        return np.array([p["epsilon"], p["k"], p["gamma"]])

    @staticmethod
    def jac(x: np.ndarray, loss: np.ndarray, bounds) -> np.ndarray:
        with np.errstate(over="ignore"):
            e = np.exp(-x[2] * loss)
        return np.stack([np.ones_like(e), -e, x[1] * loss * e], axis=1)

    @staticmethod
    def box(bounds) -> tuple[np.ndarray, np.ndarray]:
        if bounds is None:
            return np.full(3, -np.inf), np.full(3, np.inf)
        return np.array([bounds[0], -np.inf, -np.inf]), np.array([bounds[1], np.inf, np.inf])

    def starts(self, loss: np.ndarray, metric: np.ndarray, sw: np.ndarray, bounds) -> list[tuple[float, np.ndarray]]:
        """(cost, vector) per γ of the grid, ε and k from the linear least squares."""
        spread, out = max(float(np.ptp(loss)), 1e-12), []
        for slope, sign in itertools.product(SLOPES, (-1.0, 1.0)):
            gamma = sign * slope / spread
            (c, eps), cost = _linear(np.exp(-gamma * (loss - loss.min())), metric, sw)
            eps = float(np.clip(eps, *bounds)) if bounds is not None else eps
            out.append((cost, np.array([eps, -c * np.exp(gamma * loss.min()), gamma])))
        return out


KINDS: dict[str, Sigmoid | Exponential] = {"sigmoid": Sigmoid(), "exp": Exponential()}
LINKS = tuple(KINDS)


def _linear(basis: np.ndarray, metric: np.ndarray, sw: np.ndarray) -> tuple[np.ndarray, float]:
    """Weighted least squares of metric on [basis, 1]: (coefficients, cost)."""
    X = np.stack([basis, np.ones_like(basis)], axis=1)
    coef, *_ = np.linalg.lstsq(X * sw[:, None], metric * sw, rcond=None)
    return coef, float(np.sum((sw * (X @ coef - metric)) ** 2))


@dataclass(frozen=True)
class Link:
    """A fitted link: ``kind``, its parameters by name, the bounds it was held within, RMS residual."""

    kind: str
    params: dict
    bounds: tuple[float, float] | None
    rmse: float

    def __call__(self, loss) -> np.ndarray:
        return KINDS[self.kind].value(self.params, np.asarray(loss, float))

    def as_dict(self) -> dict:
        return {
            "link": self.kind,
            **self.params,
            "bounds": None if self.bounds is None else list(self.bounds),
            "rmse": self.rmse,
        }


def fit_link(loss, metric, weight, kind: str, bounds: tuple[float, float] | None, warm: Link | None = None) -> Link:
    """Least squares of the metric on the link of the loss, from the grid's best starts (or ``warm``)."""
    if kind not in KINDS:
        raise UserError(f"--link: must be one of {', '.join(LINKS)}, got {kind!r}")
    form = KINDS[kind]
    loss, metric, weight = (np.asarray(v, float) for v in (loss, metric, weight))
    use = weight > 0
    if np.unique(loss[use]).size <= len(form.names):
        raise UserError(
            f"two_stage: the {kind} link needs more than {len(form.names)} distinct losses, "
            f"got {np.unique(loss[use]).size}"
        )
    loss, metric, sw = loss[use], metric[use], np.sqrt(weight[use])
    lo, hi = form.box(bounds)
    if warm is None:
        starts = [x for _, x in sorted(form.starts(loss, metric, sw, bounds), key=lambda item: item[0])[:N_STARTS]]
    else:
        starts = [form.vector(warm.params, bounds)]
    best = None
    for x0 in starts:
        r = least_squares(
            lambda x: sw * (form.value(form.params(x, bounds), loss) - metric),
            np.clip(x0, lo, hi),
            jac=lambda x: sw[:, None] * form.jac(x, loss, bounds),
            bounds=(lo, hi),
            method="trf",
        )
        if np.all(np.isfinite(r.fun)) and (best is None or r.cost < best.cost):
            best = r
    if best is None:
        raise UserError(f"two_stage: the {kind} link could not be fitted from any start")
    return Link(kind, form.params(best.x, bounds), bounds, float(np.sqrt(2.0 * best.cost / np.sum(sw**2))))


def metric_bounds(metric: np.ndarray, given) -> tuple[float, float] | None:
    """``given`` ("auto": [0, 1] when every value lies there; None: unbounded; or (lo, hi))."""
    if given == "auto":
        return UNIT if np.all((metric >= 0.0) & (metric <= 1.0)) else None
    if given is None:
        return None
    lo, hi = map(float, given)
    if not lo < hi:
        raise UserError(f"--metric-range: needs LO < HI, got {lo}, {hi}")
    if np.any((metric < lo) | (metric > hi)):
        raise UserError(f"--metric-range: observed metric values lie outside [{lo}, {hi}]")
    return lo, hi


@dataclass(frozen=True)
class TwoStageFit:
    loss_law: LawFamily
    loss_fit: object
    link: Link


class TwoStage(LawFamily):
    name = "two_stage"
    summary = "(N, D) -> loss (--loss-approach), then loss -> metric (--metric-col, --link sigmoid|exp)"
    parameters = ("loss_law", "metric_law")

    def __init__(self, laws: Mapping[str, LawFamily]):
        self.laws = laws

    def loss_law(self, options: Options) -> LawFamily:
        law = self.laws.get(options.loss_approach)
        usable = [n for n, f in self.laws.items() if f.predicts and n != self.name]
        if law is None or not law.predicts or law is self:
            raise UserError(f"--loss-approach: must be one of {', '.join(usable)}, got {options.loss_approach!r}")
        return law

    def fit(self, points: Points, options: Options, warm: TwoStageFit | None = None) -> TwoStageFit:
        if points.metric is None:
            raise UserError("two_stage: needs each point's metric (--metric-col) besides its loss")
        law = self.loss_law(options)
        bounds = metric_bounds(points.metric, options.metric_range) if warm is None else warm.link.bounds
        link = fit_link(
            points.loss, points.metric, points.weight, options.link, bounds, warm=None if warm is None else warm.link
        )
        return TwoStageFit(law, law.fit(points, options, warm=None if warm is None else warm.loss_fit), link)

    def result(self, fit: TwoStageFit) -> dict:
        return {
            "loss_approach": fit.loss_law.name,
            "loss_law": fit.loss_law.result(fit.loss_fit),
            "metric_law": fit.link.as_dict(),
        }

    def stage_loss(self, fit: TwoStageFit, targets: Targets) -> np.ndarray:
        return fit.loss_law.predict(fit.loss_fit, targets)

    def predict(self, fit: TwoStageFit, targets: Targets) -> np.ndarray:
        return fit.link(self.stage_loss(fit, targets))

    def replicates(
        self, fit: TwoStageFit, points: Points, options: Options, counts: np.ndarray, targets: Targets
    ) -> np.ndarray:
        """Both steps refitted on each resample: the step-1 replicates' losses through that resample's link."""
        losses = fit.loss_law.replicates(fit.loss_fit, points, options, counts, targets)
        out = np.full_like(losses, np.nan)
        for r, c in enumerate(counts):
            try:
                link = fit_link(points.loss, points.metric, c, fit.link.kind, fit.link.bounds, warm=fit.link)
            except UserError:
                continue
            out[r] = link(losses[r])
        return out
