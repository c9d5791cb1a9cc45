"""``ladder fit sweep=<name>``: collect a sweep, fit every law the data supports, write ``fit.json``.

The fit itself is ``launcher.analysis.fit.fit_sweep``; this module feeds it a sweep directory: the completed
runs' final points, their curves (thinned to log-spaced points per run: approach 1 bins the curves
by log C, so a thousand points per run add time and no information), and the budget to recommend a
size for: the caller's (``--budget-flops``), else the one the planner decided and ``plan.json`` records
with its source (``launcher.sweep.plan.recommendation_budget``). ``fit.json`` also records its inputs
and where the budget came from, so the report can tell whether it is stale and the summary says why.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

from launcher.analysis.collect import Collected, collect_sweep, parse_sweep_args
from launcher.errors import UserError
from launcher.files import atomic_write
from launcher.identity import content_hash
from launcher.numbers import interval, percent, sci
from launcher.sweep.plan import Budget, read_plan

FIT_FILE = "fit.json"
CURVE_POINTS_PER_RUN = 200
N_BOOT = 100
BUDGET_ARGUMENT = "given by the caller (--budget-flops)"  # fit.json's budget_source when plan.json was not asked
NO_BUDGET = "no budget: plan.json records none; plan the sweep (ladder sweep, ladder submit) or pass --budget-flops"


def planned_budget(sweep_dir: Path) -> Budget | None:
    """The budget plan.json records with its source; None for a sweep folder without one."""
    plan = read_plan(sweep_dir)
    if plan.get("budget_flops") is None:
        return None
    return Budget(float(plan["budget_flops"]), plan.get("budget_source") or "plan.json budget_flops")


def thinned_curve_points(collected: Collected, per_run: int = CURVE_POINTS_PER_RUN) -> list[dict]:
    """Up to ``per_run`` points of each fitted run's curve, log-spaced in step, always with its last point."""
    out = []
    for run in collected.in_fit:
        curve = collected.curves[run.name]
        for i in curve.thinned(per_run).tolist():
            out.append({"name": run.name, "N": run.meta.N, "D": float(curve.D[i]), "C": float(curve.C[i]),
                        "loss": float(curve.train_loss[i])})
    return out


def fingerprint(final_points: list[dict], n_curve_points: int, budget_flops, n_boot: int, seed: int) -> str:
    """Identifies a fit's inputs; a report refits when the sweep's data no longer match it."""
    return content_hash([final_points, n_curve_points, budget_flops, n_boot, seed], length=40)


def fit_inputs(collected: Collected, budget_flops: Optional[float], n_boot: int = N_BOOT, seed: int = 0):
    """(final points, curve points, the ``inputs`` record of fit.json) for a collected sweep."""
    curve_points = thinned_curve_points(collected)
    logged = sum(len(collected.curves[r.name]) for r in collected.in_fit)
    inputs = {"sweep": collected.sweep_dir.name, "runs": len(collected.runs),
              "final_points": len(collected.final_points), "curve_points_logged": logged,
              "curve_points_fitted": len(curve_points), "budget_flops": budget_flops, "n_boot": n_boot, "seed": seed,
              "skipped": [{"run": n, "reason": why} for n, why in collected.skipped],
              "warnings": collected.warnings,
              "fingerprint": fingerprint(collected.final_points, logged, budget_flops, n_boot, seed)}
    return collected.final_points, curve_points, inputs


def fit_sweep_dir(sweep_dir: str | os.PathLike, budget_flops: Optional[float] = None, *, n_boot: int = N_BOOT,
                  seed: int = 0, collected: Optional[Collected] = None) -> dict:
    """collect -> ``launcher.analysis.fit.fit_sweep`` -> ``<sweep_dir>/fit.json`` (atomically); returns its content.

    A sweep the fitters cannot use at all (no completed run, say) still gets a fit.json, holding
    {"error": ...}, so that the report can say why.
    """
    from launcher.analysis.fit import fit_sweep
    from launcher.analysis.fit.sweep import SCHEMA

    sweep_dir = Path(sweep_dir)
    collected = collected or collect_sweep(sweep_dir)
    source = BUDGET_ARGUMENT
    if budget_flops is None:
        planned = planned_budget(sweep_dir)
        budget_flops, source = (planned.flops, planned.source) if planned else (None, NO_BUDGET)
    final_points, curve_points, inputs = fit_inputs(collected, budget_flops, n_boot, seed)
    inputs["budget_source"] = source
    try:
        if not final_points:
            raise UserError(f"no completed run to fit ({len(collected.runs)} collected, "
                            f"{len(collected.skipped)} skipped)")
        fit = fit_sweep(final_points, curve_points, budget_flops, n_boot=n_boot, seed=seed)
    except UserError as exc:
        fit = {"schema": SCHEMA, "error": str(exc)}
    fit["inputs"] = inputs
    atomic_write(sweep_dir / FIT_FILE, json.dumps(fit, indent=1, allow_nan=False))
    return fit


# ------------------------------------------------------------------------------------------ summary


def reason(part: dict, label: str) -> str:
    """A part's error without the label the fitter put in front of it (the line already names the part)."""
    error = str(part.get("error", ""))
    return error[len(label) + 2:] if error.lower().startswith(label.lower() + ": ") else error


def _param(fit: dict, approach: str, name: str) -> str:
    value = (fit.get(approach) or {}).get(name)
    ci = (((fit.get("bootstrap") or {}).get(approach) or {}).get("ci") or {}).get(name)
    return f"{name} = {sci(value)}{interval(ci)}"


def summary_lines(fit: dict) -> list[str]:
    """The fit in plain text: exponents with 95% bootstrap intervals, the recommendation, the extrapolation."""
    inputs = fit.get("inputs") or {}
    lines = [f"sweep {inputs.get('sweep', '?')}: {inputs.get('final_points', 0)} completed runs fitted, "
             f"{inputs.get('curve_points_fitted', 0)} curve points ({inputs.get('curve_points_logged', 0)} logged), "
             f"{len(inputs.get('skipped', []))} runs skipped"]
    if "error" in fit:
        return lines + [f"fit failed: {fit['error']}"]
    level = int(round(100 * (fit.get("bootstrap") or {}).get("level", 0.95)))
    lines.append(f"intervals: {level}% bootstrap percentiles over {(fit.get('bootstrap') or {}).get('n_boot', '?')} "
                 f"resamples of the runs")
    rec = fit.get("recommendation") or {}
    if "error" in rec:
        lines.append(f"recommendation: {reason(rec, 'recommendation')}")
    else:
        lines += [f"budget C = {sci(rec.get('C'))} FLOPs ({inputs.get('budget_source', '')})",
                  f"  N_opt = {sci(rec.get('N_opt'))}{interval(rec.get('N_opt_ci'))} parameters",
                  f"  D_opt = {sci(rec.get('D_opt'))}{interval(rec.get('D_opt_ci'))} tokens "
                  f"({sci(rec.get('tokens_per_param'))} tokens per parameter)",
                  f"  predicted loss = {sci(rec.get('predicted_loss'), '.4g')}"
                  f"{interval(rec.get('predicted_loss_ci'), '.4g')} "
                  f"(from {rec.get('source')})"]
    for approach, title, names in (("approach1", "approach 1 (training-curve envelope)", ("a", "b")),
                                   ("approach2", "approach 2 (isoFLOP parabolas)", ("a", "b")),
                                   ("approach3", "approach 3 (L = E + A/N^alpha + B/D^beta)", ("a", "b")),
                                   ("approach3", "  its law", ("alpha", "beta", "E", "A", "B"))):
        part = fit.get(approach) or {}
        if "error" in part and names != ("a", "b"):
            continue
        body = reason(part, approach.replace("approach", "approach ")) if "error" in part else \
            ", ".join(_param(fit, approach, n) for n in names)
        lines.append(f"{title}: {body}")
    kaplan = fit.get("kaplan") or {}
    parts = []
    for key, exponent in (("L_N", "alpha_N"), ("L_D", "alpha_D")):
        part = kaplan.get(key) or {}
        parts.append(f"{key}: " + (reason(part, f"kaplan L({key[-1]})") if "error" in part
                                   else f"{exponent} = {sci(part.get(exponent))}"))
    lines.append("kaplan: " + "; ".join(parts))
    bnsl = fit.get("bnsl") or {}
    lines.append("bnsl: " + (reason(bnsl, "bnsl") if "error" in bnsl
                             else f"rmse(log loss) = {sci(bnsl.get('rmse_log'))}, "
                                  f"{len(bnsl.get('breaks') or [])} break(s)"))
    ext = fit.get("extrapolation") or {}
    if "error" in ext:
        lines.append(f"extrapolation: {reason(ext, 'extrapolation')}")
    else:
        lines.append(f"extrapolation to the held-out largest budget C = {sci(ext.get('C'))} "
                     f"(observed N_opt {sci((ext.get('observed') or {}).get('N_opt'))} from the "
                     f"{(ext.get('observed') or {}).get('from')}):")
        for approach in ("approach2", "approach3"):
            part = ext.get(approach) or {}
            if "error" in part:
                lines.append(f"  {approach}: {reason(part, approach.replace('approach', 'approach '))}")
            else:
                lines.append(f"  {approach}: N_opt error {percent(part.get('rel_error_N_opt'))}, "
                             f"loss error {percent(part.get('rel_error_loss'), '+.2f')}")
    return lines


def fit_main(argv: list[str]) -> int:
    """``ladder fit sweep=<name>``; with ``--points FILE.csv`` the CSV fitter (``launcher.analysis.fit.cli``)."""
    if any(a == "--points" or a.startswith("--points=") for a in argv):
        from launcher.analysis.fit.cli import main

        return main(argv)

    def options(parser):
        parser.add_argument("--json", action="store_true", help="print fit.json")
        parser.add_argument("--budget-flops", type=float, help="recommend N_opt, D_opt for this many FLOPs")
        parser.add_argument("--n-boot", type=int, default=N_BOOT, help="bootstrap resamples")
        parser.add_argument("--seed", type=int, default=0)

    args, sweep_dir = parse_sweep_args(argv, "ladder fit", "fit scaling laws to a sweep (or --points FILE.csv)",
                                       options)
    fit = fit_sweep_dir(sweep_dir, args.budget_flops, n_boot=args.n_boot, seed=args.seed)
    if args.json:
        print(json.dumps(fit, indent=1))
    else:
        print("\n".join(summary_lines(fit)))
        print(f"-> {sweep_dir / FIT_FILE}")
    if "error" in fit:
        print(f"ladder fit: error: {fit['error']}", file=sys.stderr)
        return 1
    return 0
