"""``ladder fit sweep=<name>``: collect a sweep, fit every law the data supports, write ``fit.json``.

The fit itself is ``launcher.analysis.fit.fit_sweep``; this module feeds it a sweep directory: the completed
runs' final points, their curves (thinned to log-spaced points per run: approach 1 bins the curves
by log C, so a thousand points per run add time and no information), and the budget to recommend a
size for. That budget is the sweep's own (``plan.json``), else what the rest of the allocation buys:
allocation_node_hours x 3600 x devices_per_node x the FLOP/s a device achieved in the sweep's runs.
``fit.json`` also records its inputs, so the report can tell whether it is stale.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
import sys
from pathlib import Path
from typing import Optional

from launcher.analysis.collect import Collected, collect_sweep, parse_sweep_args
from launcher.errors import UserError
from launcher.files import atomic_write

FIT_FILE = "fit.json"
CURVE_POINTS_PER_RUN = 200
N_BOOT = 100
BUDGET_ARGUMENT = "given by the caller (--budget-flops)"  # fit.json's budget_source when none was looked up


def _read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def achieved_flops_per_device(collected: Collected, plan: dict) -> Optional[float]:
    """Median over runs of logged tokens/s x FLOPs per token / devices the run used."""
    ranks = {r.get("name"): r.get("ranks_per_run") or 1 for r in plan.get("runs", [])}
    rates = [r.tokens_per_s * r.meta.flops_per_token / ranks.get(r.name, 1)
             for r in collected.runs if r.tokens_per_s and r.tokens_per_s > 0]
    return statistics.median(rates) if rates else None


def default_budget_flops(sweep_dir: Path, collected: Collected) -> tuple[Optional[float], str]:
    """The budget to recommend N_opt, D_opt for, and where it came from."""
    plan = _read_json(sweep_dir / "plan.json") or {}
    if plan.get("budget_flops"):
        return float(plan["budget_flops"]), "plan.json budget_flops"
    cluster = plan.get("cluster") or {}
    hours, devices = cluster.get("allocation_node_hours"), cluster.get("devices_per_node") or 1
    if not hours:
        return None, "no budget: plan.json has neither budget_flops nor cluster.allocation_node_hours"
    per_device = achieved_flops_per_device(collected, plan)
    how = "FLOP/s per device achieved by the runs"
    if per_device is None and cluster.get("device_peak_flops"):
        per_device = cluster["device_peak_flops"] * cluster.get("assumed_mfu", 1.0)
        how = "device_peak_flops x assumed_mfu"
    if per_device is None:
        return None, "no budget: no run logged its throughput and the cluster profile has no device_peak_flops"
    return (hours * 3600.0 * devices * per_device,
            f"allocation_node_hours {hours:g} x 3600 x {devices} devices x {per_device:.3g} {how}")


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
    payload = json.dumps([final_points, n_curve_points, budget_flops, n_boot, seed], sort_keys=True, default=str)
    return hashlib.sha1(payload.encode()).hexdigest()


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
        budget_flops, source = default_budget_flops(sweep_dir, collected)
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


def _g(value, spec: str = ".3g") -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


def percent(fraction, spec: str = "+.1f") -> str:
    """A relative error as a percentage; "n/a" where the fitter could not give one."""
    return _g(None if fraction is None else 100 * fraction, spec) + ("" if fraction is None else "%")


def _ci(ci, spec: str = ".3g") -> str:
    if not ci or ci[0] is None or ci[1] is None:
        return ""
    return f" [{_g(ci[0], spec)}, {_g(ci[1], spec)}]"


def reason(part: dict, label: str) -> str:
    """A part's error without the label the fitter put in front of it (the line already names the part)."""
    error = str(part.get("error", ""))
    return error[len(label) + 2:] if error.lower().startswith(label.lower() + ": ") else error


def _param(fit: dict, approach: str, name: str) -> str:
    value = (fit.get(approach) or {}).get(name)
    ci = (((fit.get("bootstrap") or {}).get(approach) or {}).get("ci") or {}).get(name)
    return f"{name} = {_g(value)}{_ci(ci)}"


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
        lines += [f"budget C = {_g(rec.get('C'))} FLOPs ({inputs.get('budget_source', '')})",
                  f"  N_opt = {_g(rec.get('N_opt'))}{_ci(rec.get('N_opt_ci'))} parameters",
                  f"  D_opt = {_g(rec.get('D_opt'))}{_ci(rec.get('D_opt_ci'))} tokens "
                  f"({_g(rec.get('tokens_per_param'))} tokens per parameter)",
                  f"  predicted loss = {_g(rec.get('predicted_loss'), '.4g')}{_ci(rec.get('predicted_loss_ci'), '.4g')} "
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
                                   else f"{exponent} = {_g(part.get(exponent))}"))
    lines.append("kaplan: " + "; ".join(parts))
    bnsl = fit.get("bnsl") or {}
    lines.append("bnsl: " + (reason(bnsl, "bnsl") if "error" in bnsl else f"rmse(log loss) = {_g(bnsl.get('rmse_log'))}, "
                                                                  f"{len(bnsl.get('breaks') or [])} break(s)"))
    ext = fit.get("extrapolation") or {}
    if "error" in ext:
        lines.append(f"extrapolation: {reason(ext, 'extrapolation')}")
    else:
        lines.append(f"extrapolation to the held-out largest budget C = {_g(ext.get('C'))} "
                     f"(observed N_opt {_g((ext.get('observed') or {}).get('N_opt'))} from the "
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
