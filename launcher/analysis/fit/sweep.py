"""Everything fit.json holds for one sweep: every law the data supports, bootstrap intervals, the
compute-optimal recommendation, an extrapolation check and what the report draws.

The schema is documented in ``launcher.analysis.fit`` (the package docstring).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np

from launcher.analysis.fit.bnsl import fit_bnsl
from launcher.analysis.fit.bootstrap import LEVEL, percentile_interval, resample_counts
from launcher.analysis.fit.chinchilla import ChinchillaFit, compute_optimal, predicted_loss, refit_weighted
from launcher.analysis.fit.diagnostics import diagnose
from launcher.analysis.fit.envelope import EnvelopeFit, envelope_points, fit_envelope
from launcher.analysis.fit.isoflop import IsoflopFit, budget_minimum, fit_isoflop
from launcher.analysis.fit.kaplan import fit_kaplan
from launcher.analysis.fit.laws import DEFAULT_METHOD, METHODS
from launcher.analysis.fit.points import Points, as_points, budgets
from launcher.analysis.fit.vpnls import fit_approach3
from launcher.errors import UserError

SCHEMA = "scaleladder.fit/1"
GRID_POINTS = 25
WARM_STARTS = 8  # distinct optima of the full approach-3 fit that start each bootstrap refit


def jsonable(value):
    """Plain JSON types: numpy scalars and arrays unpacked, non-finite floats as None."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _attempt(fit: Callable, *args, **kwargs):
    """(result, None) or (None, {"error": message}) when the data does not support the fit."""
    try:
        return fit(*args, **kwargs), None
    except UserError as exc:
        return None, {"error": str(exc)}


def _strata(points: Points) -> list[np.ndarray]:
    """Runs grouped by budget for resampling; runs outside every budget form one more group."""
    groups = [b.index for b in budgets(points)]
    grouped = np.zeros(len(points), bool)
    for g in groups:
        grouped[g] = True
    if not grouped.all():
        groups.append(np.flatnonzero(~grouped))
    return groups


def _band(name: str, point, replicates) -> dict:
    lo, hi = percentile_interval(replicates)
    return {name: point, f"{name}_lo": lo, f"{name}_hi": hi}


def _non_embedding(final_points: list[dict], finals: Points) -> Points:
    """Kaplan et al.'s laws use non-embedding parameters: swap them in where every run has them."""
    values = [p.get("N_non_embedding") for p in final_points]
    if all(isinstance(v, (int, float)) and v > 0 for v in values):
        return dataclasses.replace(finals, N=np.array(values, float))
    return finals


class SweepFitter:
    """Fits one sweep's runs; each method adds one part of fit.json."""

    def __init__(
        self,
        final_points: list[dict],
        curve_points: list[dict],
        budget_flops: float | None,
        n_boot: int,
        seed: int,
        method: str = DEFAULT_METHOD,
        holdout: list[dict] | None = None,
    ):
        self.held = as_points(holdout) if holdout else None  # runs predicted, not fitted (sweep.holdout)
        self.method = method  # approach 3's; its bootstrap refits start from this fit's distinct optima
        self.final_points = list(final_points)
        self.finals = as_points(self.final_points)
        self.curves = as_points(curve_points) if curve_points else None
        self.k = self.finals.flops_per_param_token
        # beyond the compute of every run, fitted or held out, the fit is a projection: nothing checks it
        self.beyond_C = max(self.finals.C.max(), self.held.C.max() if self.held is not None else 0.0)
        self.budget_flops = budget_flops
        self.n_boot = n_boot
        self.rng = np.random.default_rng(seed)
        self.seed = seed
        top = max(self.finals.C.max(), budget_flops or 0.0)
        grid = np.geomspace(self.finals.C.min(), top, GRID_POINTS)
        self.grid = np.unique(np.r_[grid, [budget_flops] if budget_flops else []])

    def run(self) -> dict:
        envelope, env_err = (
            _attempt(fit_envelope, self.curves)
            if self.curves is not None
            else (None, {"error": "approach 1: no curve points"})
        )
        iso, iso_err = _attempt(fit_isoflop, self.finals, optima=False)
        chin, chin_err = _attempt(fit_approach3, self.finals, self.method)
        out = {
            "schema": SCHEMA,
            "n_runs": len(self.finals),
            "n_curve_points": 0 if self.curves is None else len(self.curves),
            "flops_per_param_token": self.k,
            "approach1": envelope.as_dict() if envelope else env_err,
            "approach2": iso.as_dict() if iso else iso_err,
            "approach3": self.approach3(chin) if chin else chin_err,
            "kaplan": fit_kaplan(_non_embedding(self.final_points, self.finals)),
            "bnsl": self.bnsl(),
        }
        boot = self.bootstrap(envelope, iso, chin)
        out["bootstrap"] = boot["summary"]
        out["frontier"] = self.frontier(envelope, iso, chin, boot)
        out["recommendation"] = self.recommendation(iso, chin, boot)
        out["extrapolation"] = self.extrapolation()
        out["holdout"] = self.holdout(chin, boot)
        out["projection"] = {
            "beyond_C": self.beyond_C,
            "frontier": [bool(c > self.beyond_C) for c in out["frontier"]["C"]],
        }
        out["diagnostics"] = diagnose(out, chin, self.finals)
        return jsonable(out)

    def holdout(self, chin: ChinchillaFit | None, boot: dict) -> dict:
        """Held-out runs as predictions of approach 3, checked against what they reached."""
        if self.held is None:
            return {"approach": "approach3", "runs": []}
        if chin is None:
            return {"error": "holdout: approach 3 could not be fitted, so the held-out runs are not predicted"}
        h = self.held
        pred = chin.loss(h.N, h.D)
        lo, hi = percentile_interval(predicted_loss(boot["approach3"], h.N, h.D))
        runs = [
            {
                "name": h.name[i],
                "N": h.N[i],
                "D": h.D[i],
                "C": h.C[i],
                "budget": h.budget[i],
                "loss": h.loss[i],
                "predicted_loss": pred[i],
                "lo": lo[i],
                "hi": hi[i],
                "rel_error": pred[i] / h.loss[i] - 1.0,
                "inside": bool(lo[i] <= h.loss[i] <= hi[i]),
                "kind": "prediction",
            }
            for i in range(len(h))
        ]
        errors = np.abs(pred / h.loss - 1.0)
        return {
            "approach": "approach3",
            "runs": runs,
            "median_abs_rel_error": float(np.median(errors)),
            "worst_abs_rel_error": float(errors.max()),
            "n_inside": sum(r["inside"] for r in runs),
        }

    def approach3(self, fit: ChinchillaFit) -> dict:
        p = self.finals
        pred = fit.loss(p.N, p.D)
        runs = [
            {
                "name": p.name[i],
                "N": p.N[i],
                "D": p.D[i],
                "C": p.C[i],
                "budget": p.budget[i],
                "loss": p.loss[i],
                "predicted_loss": pred[i],
            }
            for i in range(len(p))
        ]
        return {**fit.as_dict(), "method": fit.method, "runs": runs}

    def bnsl(self) -> dict:
        """A one-break BNSL through the loss/FLOPs envelope of the curves (or of the final points)."""
        source = self.curves if self.curves is not None else self.finals
        env = envelope_points(source, n_bins=60)
        fit, err = _attempt(fit_bnsl, source.C[env], source.loss[env], n_breaks=1)
        return {"x": "C", **fit.as_dict()} if fit else err

    def bootstrap(self, envelope: EnvelopeFit | None, iso: IsoflopFit | None, chin: ChinchillaFit | None) -> dict:
        counts = resample_counts(_strata(self.finals), len(self.finals), self.n_boot, self.rng)
        summary: dict = {"n_boot": self.n_boot, "level": LEVEL, "seed": self.seed, "resampled": "runs within budgets"}
        result: dict = {"summary": summary}
        if iso is not None:
            laws = np.full((self.n_boot, 6), np.nan)
            for r, c in enumerate(counts):
                fit, _ = _attempt(fit_isoflop, self.finals.with_weight(c), optima=False)
                if fit is not None:
                    laws[r] = [fit.a, fit.b, fit.N_law.coef, fit.D_law.coef, fit.loss_law.coef, fit.loss_law.exponent]
            result["approach2"] = laws
            summary["approach2"] = self._summarise(laws, ("a", "b", "N_coef", "D_coef", "loss_coef", "loss_exponent"))
        if chin is not None:
            theta, _ = refit_weighted(self.finals, counts, chin.candidates[:WARM_STARTS])
            result["approach3"] = theta
            a, b, e, alpha, beta = theta.T
            derived = np.stack(
                [np.exp(e), np.exp(a), np.exp(b), alpha, beta, beta / (alpha + beta), alpha / (alpha + beta)], axis=1
            )
            summary["approach3"] = {
                **self._summarise(derived, ("E", "A", "B", "alpha", "beta", "a", "b")),
                "warm_started_from": f"{len(chin.candidates[:WARM_STARTS])} optima of the {chin.method} fit",
            }
        curve_weights = self._curve_weights(counts) if envelope is not None else None
        if curve_weights is not None and self.curves is not None:  # weights come from curves
            laws = np.full((self.n_boot, 4), np.nan)
            for r, w in enumerate(curve_weights):
                fit, _ = _attempt(fit_envelope, self.curves.with_weight(w))
                if fit is not None:
                    laws[r] = [fit.a, fit.b, fit.N_law.coef, fit.D_law.coef]
            result["approach1"] = laws
            summary["approach1"] = self._summarise(laws, ("a", "b", "N_coef", "D_coef"))
        return result

    @staticmethod
    def _summarise(samples: np.ndarray, names) -> dict:
        lo, hi = percentile_interval(samples)
        ok = int(np.all(np.isfinite(samples), axis=1).sum())
        return {"n_ok": ok, "ci": {n: [lo[i], hi[i]] for i, n in enumerate(names)}}

    def _curve_weights(self, counts: np.ndarray) -> np.ndarray | None:
        """Each curve point weighted by its run's resampling count; None when a curve has no known run."""
        assert self.curves is not None  # asked only when approach 1 was fitted, from curves
        index = {name: i for i, name in enumerate(self.finals.name) if name is not None}
        runs = [index.get(name) for name in self.curves.name]
        if any(r is None for r in runs):
            return None
        return counts[:, np.array(runs)]

    def frontier(self, envelope, iso, chin, boot) -> dict:
        C = self.grid
        out: dict = {"C": C}
        if chin is not None:
            N, D = chin.compute_optimal(C, self.k)
            Nb, Db = compute_optimal(boot["approach3"], C, self.k)
            out["approach3"] = {
                **_band("N_opt", N, Nb),
                **_band("D_opt", D, Db),
                **_band("loss", chin.loss(N, D), predicted_loss(boot["approach3"], Nb, Db)),
            }
        if iso is not None:
            laws = boot["approach2"]
            Nb = laws[:, 2, None] * C ** laws[:, 0, None]
            Db = laws[:, 3, None] * C ** laws[:, 1, None]
            Lb = laws[:, 4, None] * C ** laws[:, 5, None]
            N, D, L = iso.optimum(C)
            out["approach2"] = {**_band("N_opt", N, Nb), **_band("D_opt", D, Db), **_band("loss", L, Lb)}
        if envelope is not None:
            N, D = envelope.N_law(C), envelope.D_law(C)
            if "approach1" in boot:
                laws = boot["approach1"]
                out["approach1"] = {
                    **_band("N_opt", N, laws[:, 2, None] * C ** laws[:, 0, None]),
                    **_band("D_opt", D, laws[:, 3, None] * C ** laws[:, 1, None]),
                }
            else:
                out["approach1"] = {"N_opt": N, "D_opt": D}
        return out

    def recommendation(self, iso, chin, boot) -> dict:
        C = self.budget_flops
        if not C:
            return {"error": "no target budget (budget_flops) given"}
        options = {}
        if chin is not None:
            N, D = chin.compute_optimal(C, self.k)
            Nb, Db = compute_optimal(boot["approach3"], C, self.k)
            Lb = predicted_loss(boot["approach3"], Nb[:, None], Db[:, None])[:, 0]
            options["approach3"] = self._option(C, N, D, chin.loss(N, D), Nb, Db, Lb)
        if iso is not None:
            laws = boot["approach2"]
            N, D, L = iso.optimum(C)
            options["approach2"] = self._option(
                C, N, D, L, laws[:, 2] * C ** laws[:, 0], laws[:, 3] * C ** laws[:, 1], laws[:, 4] * C ** laws[:, 5]
            )
        if not options:
            return {"error": "neither approach 2 nor approach 3 could be fitted"}
        # a degenerate law (e.g. an exponent near 0 on a handful of runs) has no finite optimum at C
        options = {k: v for k, v in options.items() if np.isfinite([v["N_opt"], v["D_opt"]]).all()}
        if not options:
            return {"error": f"no fitted law has a finite compute-optimal N and D at C = {C:.3g}"}
        source = "approach3" if "approach3" in options else "approach2"
        return {
            **options[source],
            "source": source,
            "kind": "projection" if C > self.beyond_C else "within the runs",
            "alternatives": {k: v for k, v in options.items() if k != source},
        }

    @staticmethod
    def _option(C, N, D, loss, Nb, Db, Lb) -> dict:
        return {
            "C": C,
            "N_opt": float(N),
            "D_opt": float(D),
            "tokens_per_param": float(D / N),
            "N_opt_ci": list(percentile_interval(Nb)),
            "D_opt_ci": list(percentile_interval(Db)),
            "predicted_loss": float(loss),
            "predicted_loss_ci": list(percentile_interval(Lb)),
        }

    def extrapolation(self) -> dict:
        """Fit without the largest budget, predict its optimum, compare with what it measured."""
        groups = budgets(self.finals)
        if len(groups) < 3:
            return {"error": f"extrapolation: needs 3+ isoFLOP budgets, got {len(groups)}"}
        held = groups[-1]
        observed, _ = _attempt(budget_minimum, self.finals, held)
        if observed is not None:
            seen = {"N_opt": observed.N_opt, "loss_opt": observed.loss_opt, "from": "parabola"}
        else:
            i = held.index[np.argmin(self.finals.loss[held.index])]
            seen = {"N_opt": self.finals.N[i], "loss_opt": self.finals.loss[i], "from": "best run"}
        weight = self.finals.weight.copy()
        weight[held.index] = 0.0
        train = self.finals.with_weight(weight)
        out = {"held_out_budget": held.label, "C": held.C, "observed": seen}
        iso, err = _attempt(fit_isoflop, train, optima=False)
        if iso is not None:
            N, _, L = iso.optimum(held.C)
            out["approach2"] = self._prediction(N, L, seen)
        else:
            out["approach2"] = err
        chin, err = _attempt(fit_approach3, train, self.method)
        if chin is not None:
            N, D = chin.compute_optimal(held.C, self.k)
            out["approach3"] = self._prediction(N, chin.loss(N, D), seen)
        else:
            out["approach3"] = err
        return out

    @staticmethod
    def _prediction(N, loss, seen) -> dict:
        return {
            "N_opt": float(N),
            "loss_opt": float(loss),
            "rel_error_N_opt": float(N / seen["N_opt"] - 1.0),
            "rel_error_loss": float(loss / seen["loss_opt"] - 1.0),
        }


def fit_sweep(
    final_points: list[dict],
    curve_points: list[dict],
    budget_flops: float | None,
    n_boot: int = 100,
    seed: int = 0,
    method: str = DEFAULT_METHOD,
    holdout: list[dict] | None = None,
) -> dict:
    """The content of fit.json for one sweep (schema in ``launcher.analysis.fit``)."""
    if n_boot < 1:
        raise UserError(f"n_boot: must be 1 or more, got {n_boot}")
    if budget_flops is not None and not (math.isfinite(budget_flops) and budget_flops > 0):
        raise UserError(f"budget_flops: must be a positive number of FLOPs, got {budget_flops!r}")
    if method not in METHODS:
        raise UserError(f"method: must be one of {', '.join(METHODS)}, got {method!r}")
    return SweepFitter(final_points, curve_points, budget_flops, n_boot, seed, method, holdout).run()
