"""Scaling-law fits: Chinchilla approaches 1-3, Kaplan, broken neural scaling laws, the over-training,
data-constrained and two-stage downstream laws, bootstrap intervals and predictions.

Three entry points; all return plain JSON types (NaN and inf become null).

``fit_points(points, approach, *, huber_reduce="sum", weights=None, **options)`` fits one law to a
point set: points are dicts (or numpy structured rows) with N, D, loss and optionally C (default
6·N·D), budget (isoFLOP label), name, U (unique tokens; datacon) and metric (two_stage). ``weights``
(one per point) are 1/σ² weights in every least squares: per point in the approach-2 parabolas, the
Huber sums of approach 3, overtrain and datacon, the Kaplan/BNSL residuals and the two-stage link;
in approach 2 a budget weighs its points' total in the power-law step, so a set of published
per-budget optima with weights 1/σ²(log n*) gives Porian et al.'s weighted fit. Approach 2 takes a
point set in which every budget holds one point as those optima; any other set as runs, whose
budgets with fewer than 3 distinct N are skipped (``fit_sweep``'s runs are always runs).
``options`` are the fields of ``laws.Options`` (method, base, loss_approach, link, metric_range).

Approaches, by name from ``registry.LAWS`` (``laws.LawFamily`` is the interface a family implements):
"1" (envelope; pass curve points), "2" (isoFLOP parabolas), "3" (parametric L = E + A/N^α + B/D^β;
``method`` "vpnls", variable projection (the default), or "grid", the 4500 Chinchilla starts), "kaplan", "bnsl"
(loss against C, one break), "overtrain" (Gadre et al. 2024: the form in C and M = D/N), "datacon"
(Muennighoff et al. 2023: R_D*, R_N* of repeated data and excess parameters; ``base`` fixes
E, A, B, alpha, beta), "two_stage" ((N, D) → loss by ``loss_approach``, loss → metric by ``link``
"sigmoid" or "exp", bounded by ``metric_range``: "auto", None or (lo, hi)). Approach 3's default
is "vpnls": it reaches an equal or lower objective than the grid on every data set the tests use
(tests/test_laws.py) in a third of the time; fit_sweep takes the same ``method``.

Result keys: approach, n_points, then the approach's own. 1, 2, 3, kaplan, bnsl: as in fit.json
below (3 adds method). overtrain: E, a, b, eta (the paper's form in C = 6·N·D and M = D/N), A, B,
alpha = beta (the same law in Chinchilla's form), objective, huber_delta, huber_reduce, n_starts,
n_converged. datacon: R_D_star, R_N_star (the authors' float32 L-BFGS procedure), E, A, B, alpha,
beta (the fixed base), base ("given" or how it was fitted), objective (at R_D_star, R_N_star),
huber_delta, huber_reduce, n_starts, n_converged (starts that ended finite), optima (every distinct
end point of a float64 search from the same starts: R_D_star, R_N_star, objective; best first).
two_stage: loss_approach, loss_law (that approach's keys), metric_law (link, then a, b, k, L0 or epsilon, k,
gamma, bounds, rmse).

``predict_points(points, targets, approach, *, n_boot=100, seed=0, huber_reduce="sum", weights=None,
**options)`` fits as ``fit_points`` does and adds ``predictions``: per target row (dicts with N, D,
optionally C, U and any other keys, which are carried through), the prediction under ``value_key``
("loss" by default), its bootstrap interval ``lo``, ``hi`` over ``n_boot`` refits on resampled
points (within budgets where labelled), and, where the row has the value itself, ``observed``,
``rel_error`` and ``inside``; plus ``bootstrap`` {n_boot, n_ok, level, seed, resampled}.
Approaches 1 and 2 predict optima, not a value at (N, D), and are refused.

``fit_sweep(final_points, curve_points, budget_flops, n_boot=100, seed=0, method="vpnls", holdout=None)``
returns fit.json (``holdout``: final points of the runs the sweep config holds out, not fitted):

    schema                "scaleladder.fit/1"
    n_runs, n_curve_points
    flops_per_param_token k = median C/(N·D) of the runs (6 under the 6ND convention); used in C = k·N·D
    approach1             {a, b, N_coef, D_coef, r2_N, r2_D,
                           envelope: {C: [], N: [], D: [], loss: []}}       N_opt = N_coef·C^a, D_opt = D_coef·C^b
    approach2             {a, b, N_coef, D_coef, r2_N, r2_D, loss_coef, loss_exponent,
                           budgets: [{budget, C, n_points, N_opt, D_opt, loss_opt, interior,
                                      parabola_lnN: [c2, c1, c0], parabola_lnD: [c2, c1, c0]}],
                           skipped_budgets: [{budget, error}]}
                           loss = c2·x² + c1·x + c0 with x = ln N (ln D); loss_opt ≈ loss_coef·C^loss_exponent
    approach3             {E, A, B, alpha, beta, G, a, b, objective, huber_delta, huber_reduce, n_starts,
                           n_converged, method ("vpnls"|"grid"), runs: [{name, N, D, C, budget, loss, predicted_loss}]}
                           a = β/(α+β), b = α/(α+β): exponents of N_opt, D_opt in C
    kaplan                {L_N: {Nc, alpha_N, r2, n_points}, L_D: {Dc, alpha_D, r2, n_points},
                           L_ND: {Nc, Dc, alpha_N, alpha_D, rmse_log}}     N is non-embedding where given
    bnsl                  {x: "C", a, b, c0, breaks: [{c, d, f}], rmse_log}  on the loss/FLOPs envelope
    bootstrap             {n_boot, level, seed, resampled,
                           approach1|approach2|approach3: {n_ok, ci: {param: [lo, hi]}}}
                           approach3 adds warm_started_from: the refits start from the full fit's best optima
    frontier              {C: [grid], approach1|approach2|approach3: {N_opt, N_opt_lo, N_opt_hi,
                           D_opt, D_opt_lo, D_opt_hi, loss, loss_lo, loss_hi}}   (approach 1 has no loss)
    recommendation        {C, N_opt, D_opt, tokens_per_param, N_opt_ci: [lo, hi], D_opt_ci: [lo, hi],
                           predicted_loss, predicted_loss_ci, source: "approach3"|"approach2",
                           kind: "projection" (C beyond every run) | "within the runs",
                           alternatives: {approach2: {...same keys}}}
    extrapolation         {held_out_budget, C, observed: {N_opt, loss_opt, from: "parabola"|"best run"},
                           approach2|approach3: {N_opt, loss_opt, rel_error_N_opt, rel_error_loss}}
    holdout               {approach: "approach3", runs: [{name, N, D, C, budget, loss, predicted_loss, lo, hi,
                           rel_error, inside, kind: "prediction"}], median_abs_rel_error, worst_abs_rel_error,
                           n_inside}    held-out runs predicted by the fit of the others ({runs: []} if none)
    projection            {beyond_C: the largest C of any run, frontier: [C > beyond_C per frontier C]}
    metrics               {KEY: {key, approach: "two_stage", loss_approach, loss_law, metric_law, bootstrap,
                           predictions: [{name, kind: "fitted"|"prediction" (held out)|"projection"|"within the runs"
                           (the recommendation), N, D, metric, lo, hi, loss (step 1), observed, rel_error, inside}],
                           not_logged: [run]}}   added by ``launcher.analysis.fitting`` for each key of the sweep
                           config's ``metrics`` and ``ladder fit metric=KEY`` (a key no run logged: {error})
    diagnostics           {approaches: {approachK: {a, a_ci, flags}}, budgets: [{budget, C, N_opt, N_min, N_max,
                           position: inside|below|above|none}], approach3: {at_bound, condition_number,
                           E_over_min_loss}, residuals, verdict: agree|disagree, reasons: [words], trusted,
                           next_runs: [words]}   (``launcher.analysis.fit.diagnostics``)
    inputs                {sweep, runs, final_points, curve_points_logged, curve_points_fitted, budget_flops,
                           budget_source, n_boot, seed, skipped: [{run, reason}], warnings, fingerprint}
                           added by ``launcher.analysis.fitting`` when it writes fit.json (also beside a whole-fit
                           error); fingerprint: a hash of the fit's inputs, so a report can tell a stale fit

Any part the data cannot support is {"error": "..."} instead (e.g. approach 2 with fewer than 2
budgets of 3+ distinct sizes, the extrapolation check with fewer than 3 budgets, the recommendation
without a budget).
Intervals are bootstrap percentiles over runs resampled within their budget.
"""

from __future__ import annotations

from typing import Any

from launcher.analysis.fit.bootstrap import LEVEL
from launcher.analysis.fit.laws import Options
from launcher.analysis.fit.points import as_points, as_targets
from launcher.analysis.fit.predict import entries, predict
from launcher.analysis.fit.registry import LAWS
from launcher.analysis.fit.sweep import fit_sweep, jsonable
from launcher.errors import UserError

APPROACHES = tuple(LAWS)
PREDICTING = tuple(name for name, law in LAWS.items() if law.predicts)

__all__ = ["APPROACHES", "LAWS", "PREDICTING", "fit_points", "fit_sweep", "predict_points"]


def _law(approach: str):
    approach = str(approach)
    if approach not in LAWS:
        raise UserError(f"approach: must be one of {', '.join(APPROACHES)}, got {approach!r}")
    return LAWS[approach]


def fit_points(points, approach: str, *, huber_reduce: str = "sum", weights=None, **options: Any) -> dict:
    """Fit one law to ``points`` (see the module docstring for keys, weights and options)."""
    law = _law(approach)
    pts = as_points(points, weights)
    opts = Options(huber_reduce=huber_reduce, **options)
    return jsonable({"approach": law.name, "n_points": len(pts), **law.result(law.fit(pts, opts))})


def predict_points(
    points,
    targets: list[dict],
    approach: str,
    *,
    n_boot: int = 100,
    seed: int = 0,
    huber_reduce: str = "sum",
    weights=None,
    value_key: str = "loss",
    carry: list[dict] | None = None,
    **options: Any,
) -> dict:
    """Fit ``points``, then predict at every target row with a bootstrap interval (module docstring).

    ``carry``: the columns each prediction carries (default: the target row without ``value_key``).
    """
    law = _law(approach)
    if not law.predicts:
        raise UserError(
            f"--predict: approach {law.name} predicts compute-optimal N_opt and D_opt, not a value "
            f"at given (N, D); approaches that predict: {', '.join(PREDICTING)}"
        )
    pts = as_points(points, weights)
    where = as_targets(targets)
    opts = Options(huber_reduce=huber_reduce, **options)
    fit = law.fit(pts, opts)
    prediction = predict(law, fit, pts, opts, where, n_boot, seed)
    observed = [row.get(value_key) for row in targets]
    carried = carry if carry is not None else [{k: v for k, v in row.items() if k != value_key} for row in targets]
    resampled = "rows within budgets" if any(b is not None for b in pts.budget) else "rows"
    return jsonable(
        {
            "approach": law.name,
            "n_points": len(pts),
            **law.result(fit),
            "bootstrap": {
                "n_boot": n_boot,
                "n_ok": prediction.n_ok,
                "level": LEVEL,
                "seed": seed,
                "resampled": resampled,
            },
            "predictions": entries(prediction, value_key, carried, observed),
        }
    )
