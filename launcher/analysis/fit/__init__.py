"""Scaling-law fits: Chinchilla approaches 1-3, Kaplan, broken neural scaling laws, bootstrap.

Two entry points; both return plain JSON types (NaN and inf become null).

``fit_points(points, approach, *, huber_reduce="sum", weights=None)`` fits one law to a point set:
points are dicts (or numpy structured rows) with N, D, loss and optionally C (default 6·N·D),
budget (isoFLOP label) and name. ``weights`` (one per point) are 1/σ² weights in every least
squares: per point in the approach-2 parabolas, approach 3's Huber sum and the Kaplan/BNSL
residuals; in approach 2 a budget weighs its points' total in the power-law step, so a set of
published per-budget optima with weights 1/σ²(log n*) gives Porian et al.'s weighted fit. Approach 2
takes a point set in which every budget holds one point as those optima; any other set as runs,
whose budgets with fewer than 3 distinct N are skipped (``fit_sweep``'s runs are always runs).
Approaches: "1" (envelope; pass curve points), "2" (isoFLOP parabolas), "3" (parametric
L = E + A/N^α + B/D^β), "kaplan", "bnsl" (loss against C, one break).

``fit_sweep(final_points, curve_points, budget_flops, n_boot=100, seed=0)`` returns fit.json:

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
                           n_converged, runs: [{name, N, D, C, budget, loss, predicted_loss}]}
                           a = β/(α+β), b = α/(α+β): exponents of N_opt, D_opt in C
    kaplan                {L_N: {Nc, alpha_N, r2, n_points}, L_D: {Dc, alpha_D, r2, n_points},
                           L_ND: {Nc, Dc, alpha_N, alpha_D, rmse_log}}     N is non-embedding where given
    bnsl                  {x: "C", a, b, c0, breaks: [{c, d, f}], rmse_log}  on the loss/FLOPs envelope
    bootstrap             {n_boot, level, seed, resampled,
                           approach1|approach2|approach3: {n_ok, ci: {param: [lo, hi]}}}
    frontier              {C: [grid], approach1|approach2|approach3: {N_opt, N_opt_lo, N_opt_hi,
                           D_opt, D_opt_lo, D_opt_hi, loss, loss_lo, loss_hi}}   (approach 1 has no loss)
    recommendation        {C, N_opt, D_opt, tokens_per_param, N_opt_ci: [lo, hi], D_opt_ci: [lo, hi],
                           predicted_loss, predicted_loss_ci, source: "approach3"|"approach2",
                           alternatives: {approach2: {...same keys}}}
    extrapolation         {held_out_budget, C, observed: {N_opt, loss_opt, from: "parabola"|"best run"},
                           approach2|approach3: {N_opt, loss_opt, rel_error_N_opt, rel_error_loss}}
    inputs                {sweep, runs, final_points, curve_points_logged, curve_points_fitted, budget_flops,
                           budget_source, n_boot, seed, skipped: [{run, reason}], warnings, fingerprint}
                           added by ``launcher.analysis.fitting`` when it writes fit.json (also beside a whole-fit
                           error); fingerprint: sha1 of the fit's inputs, so a report can tell a stale fit

Any part the data cannot support is {"error": "..."} instead (e.g. approach 2 with fewer than 2
budgets of 3+ distinct sizes, the extrapolation check with fewer than 3 budgets, the recommendation
without a budget).
Intervals are bootstrap percentiles over runs resampled within their budget.
"""
from __future__ import annotations

from launcher.errors import UserError
from launcher.analysis.fit.bnsl import fit_bnsl
from launcher.analysis.fit.chinchilla import fit_chinchilla
from launcher.analysis.fit.envelope import fit_envelope
from launcher.analysis.fit.isoflop import fit_isoflop
from launcher.analysis.fit.kaplan import fit_kaplan
from launcher.analysis.fit.points import as_points
from launcher.analysis.fit.sweep import fit_sweep, jsonable

APPROACHES = ("1", "2", "3", "kaplan", "bnsl")

__all__ = ["APPROACHES", "fit_points", "fit_sweep"]


def fit_points(points, approach: str, *, huber_reduce: str = "sum", weights=None) -> dict:
    """Fit one law to ``points`` (see the module docstring for keys and weights)."""
    approach = str(approach)
    if approach not in APPROACHES:
        raise UserError(f"approach: must be one of {', '.join(APPROACHES)}, got {approach!r}")
    pts = as_points(points, weights)
    if approach == "1":
        result = fit_envelope(pts).as_dict()
    elif approach == "2":
        result = fit_isoflop(pts).as_dict()
    elif approach == "3":
        result = fit_chinchilla(pts, huber_reduce=huber_reduce).as_dict()
    elif approach == "kaplan":
        result = fit_kaplan(pts)
    else:
        result = {"x": "C", **fit_bnsl(pts.C, pts.loss, weights=pts.weight).as_dict()}
    return jsonable({"approach": approach, "n_points": len(pts), **result})
