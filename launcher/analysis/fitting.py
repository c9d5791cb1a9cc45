"""``ladder fit sweep=<name>``: collect a sweep, fit every law the data supports, write ``fit.json``.

The fit itself is ``launcher.analysis.fit.fit_sweep``; this module feeds it a sweep directory: the completed
runs' final points, their curves (thinned to log-spaced points per run: approach 1 bins the curves
by log C, so a thousand points per run add time and no information), and the budget to recommend a
size for: the caller's (``--budget-flops``), else the one the planner decided and ``plan.json`` records
with its source (``launcher.sweep.plan.recommendation_budget``). ``fit.json`` also records its inputs
and where the budget came from, so the report can tell whether it is stale and the summary says why.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Optional

from launcher.analysis.collect import Collected, collect_sweep, final_metric, parse_sweep_args
from launcher.errors import UserError
from launcher.files import write_outcome
from launcher.identity import content_hash
from launcher.numbers import interval, percent, sci
from launcher.run.metrics import METRICS_FILE
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
    """Up to ``per_run`` points of each fitted (not held-out) run's curve, log-spaced in step, always with its
    last point (a WSD sweep: each branch's cooldown end only, see ``Collected.curve_indices``)."""
    out = []
    for run in collected.in_fit:
        if run.meta.holdout:  # predicted, not fitted: its curve stays out of approach 1 too
            continue
        curve = collected.curves[run.name]
        for i in collected.curve_indices(run, per_run).tolist():
            out.append(
                {
                    "name": run.name,
                    "N": run.meta.N,
                    "D": float(curve.D[i]),
                    "C": float(curve.C[i]),
                    "loss": float(curve.train_loss[i]),
                }
            )
    return out


LOSS_KEYS = ("val_loss", "train_loss", "loss")  # metric=KEY naming the loss is the ordinary fit


def sweep_metrics(sweep_dir: Path, asked: Optional[str]) -> list[str]:
    """The metrics to fit besides the loss: the sweep config's (plan.json) and the one asked for, in order."""
    keys = [*(read_plan(sweep_dir).get("sweep") or {}).get("metrics", []), *([asked] if asked else [])]
    return [k for k in dict.fromkeys(keys) if k not in LOSS_KEYS]


def fit_metric(
    collected: Collected,
    key: str,
    final_points: list[dict],
    recommendation: dict,
    *,
    n_boot: int,
    seed: int,
    link: str = "sigmoid",
) -> dict:
    """A metric the runs log, fitted in two steps: (N, D) -> loss by approach 3, loss -> metric by ``link``.

    Every completed run that logged ``key`` is a point (its last value); held-out runs are predicted and
    checked, the recommendation's (N_opt, D_opt) is projected. Intervals carry both steps' uncertainty.
    """
    from launcher.analysis.fit import predict_points

    dirs = {r.name: r.meta.run_dir for r in collected.runs}
    logged = {p["name"]: final_metric(dirs[p["name"]] / METRICS_FILE, key) for p in final_points}
    values = {name: found[0] for name, found in logged.items() if found is not None}
    points = [
        {k: p[k] for k in ("name", "N", "D", "C", "loss", "budget")}
        | {"metric": values[p["name"]], "holdout": p.get("holdout", False)}
        for p in final_points
        if p["name"] in values
    ]
    fitted = [p for p in points if not p["holdout"]]
    missing = [p["name"] for p in final_points if logged[p["name"]] is None]
    if not fitted:
        return {"error": f"metric {key}: no completed run logged it in {METRICS_FILE}"}
    targets = [
        {
            "name": p["name"],
            "N": p["N"],
            "D": p["D"],
            "C": p["C"],
            "metric": p["metric"],
            "kind": "prediction" if p["holdout"] else "fitted",
        }
        for p in points
    ]
    if "N_opt" in recommendation:
        targets.append(
            {
                "name": "recommendation",
                "N": recommendation["N_opt"],
                "D": recommendation["D_opt"],
                "kind": recommendation.get("kind", "projection"),
            }
        )
    try:
        out = predict_points(
            [{k: p[k] for k in ("name", "N", "D", "C", "loss", "budget", "metric")} for p in fitted],
            targets,
            "two_stage",
            n_boot=n_boot,
            seed=seed,
            value_key="metric",
            carry=[{k: t[k] for k in ("name", "kind", "N", "D")} for t in targets],
            loss_approach="3",
            link=link,
        )
    except UserError as exc:
        return {"error": f"metric {key}: {exc}"}
    return {"key": key, **out, "not_logged": missing}


def fingerprint(final_points: list[dict], n_curve_points: int, budget_flops, n_boot: int, seed: int) -> str:
    """Identifies a fit's inputs; a report refits when the sweep's data no longer match it."""
    return content_hash([final_points, n_curve_points, budget_flops, n_boot, seed], length=40)


def fit_inputs(collected: Collected, budget_flops: Optional[float], n_boot: int = N_BOOT, seed: int = 0):
    """(final points, curve points, the ``inputs`` record of fit.json) for a collected sweep."""
    curve_points = thinned_curve_points(collected)
    logged = sum(len(collected.curves[r.name]) for r in collected.in_fit)
    inputs = {
        "sweep": collected.sweep_dir.name,
        "runs": len(collected.runs),
        "final_points": len(collected.final_points),
        "curve_points_logged": logged,
        "curve_points_fitted": len(curve_points),
        "budget_flops": budget_flops,
        "n_boot": n_boot,
        "seed": seed,
        "skipped": [{"run": n, "reason": why} for n, why in collected.skipped],
        "warnings": collected.warnings,
        "fingerprint": fingerprint(collected.final_points, logged, budget_flops, n_boot, seed),
    }
    return collected.final_points, curve_points, inputs


def fit_sweep_dir(
    sweep_dir: str | os.PathLike,
    budget_flops: Optional[float] = None,
    *,
    n_boot: int = N_BOOT,
    seed: int = 0,
    collected: Optional[Collected] = None,
    metric: Optional[str] = None,
) -> dict:
    """collect -> ``launcher.analysis.fit.fit_sweep`` -> ``<sweep_dir>/fit.json`` (atomically); returns its content.

    A sweep the fitters cannot use at all (no completed run, say) gets its error in fit.error.json, and in
    fit.json only where there is no earlier good fit there to keep (the report says why either way).
    ``metric``: a key the runs log, fitted besides the sweep config's ``metrics`` (fit.json ``metrics``:
    {key: two-step fit}).
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
            raise UserError(
                f"no completed run to fit ({len(collected.runs)} collected, {len(collected.skipped)} skipped)"
            )
        fitted = [p for p in final_points if not p.get("holdout")]
        if not fitted:
            raise UserError(f"every completed run is a holdout run ({len(final_points)}); none left to fit")
        fit = fit_sweep(
            fitted,
            curve_points,
            budget_flops,
            n_boot=n_boot,
            seed=seed,
            holdout=[p for p in final_points if p.get("holdout")],
        )
        keys = sweep_metrics(sweep_dir, metric)
        if keys:
            fit["metrics"] = {
                k: fit_metric(collected, k, final_points, fit.get("recommendation") or {}, n_boot=n_boot, seed=seed)
                for k in keys
            }
    except UserError as exc:
        fit = {"schema": SCHEMA, "error": str(exc)}
    fit["inputs"] = inputs
    write_outcome(sweep_dir / FIT_FILE, None if "error" in fit else fit, fit if "error" in fit else None)
    return fit


# ------------------------------------------------------------------------------------------ summary


def reason(part: dict, label: str) -> str:
    """A part's error without the label the fitter put in front of it (the line already names the part)."""
    error = str(part.get("error", ""))
    return error[len(label) + 2 :] if error.lower().startswith(label.lower() + ": ") else error


def _param(fit: dict, approach: str, name: str) -> str:
    value = (fit.get(approach) or {}).get(name)
    ci = (((fit.get("bootstrap") or {}).get(approach) or {}).get("ci") or {}).get(name)
    return f"{name} = {sci(value)}{interval(ci)}"


def trusted_recommendation(fit: dict) -> Optional[dict]:
    """The recommendation of the approach the verdict trusts (``diagnostics.trusted``), None when none."""
    rec, trusted = fit.get("recommendation") or {}, (fit.get("diagnostics") or {}).get("trusted")
    if "error" in rec or trusted is None:
        return None
    if rec.get("source") == trusted:
        return rec
    alternative = (rec.get("alternatives") or {}).get(trusted)
    return None if alternative is None else {**alternative, "source": trusted}


def verdict_lines(fit: dict) -> list[str]:
    """The verdict first: agree or disagree and why, the trusted approach's N_opt and D_opt, what to run next."""
    diagnostics = fit.get("diagnostics")
    if not diagnostics:
        return []
    lines = [
        f"verdict: {diagnostics['verdict']}"
        + (" (the approaches' exponents agree and none is flagged)" if diagnostics["verdict"] == "agree" else "")
    ]
    lines += [f"  - {why}" for why in diagnostics["reasons"]]
    rec = trusted_recommendation(fit)
    if rec is None:
        lines.append("trusted: none of the approaches: no recommendation can be trusted from this sweep")
    else:
        lines.append(
            f"trusted: {diagnostics['trusted']}: N_opt = {sci(rec['N_opt'])}{interval(rec.get('N_opt_ci'))}, "
            f"D_opt = {sci(rec['D_opt'])}{interval(rec.get('D_opt_ci'))} at C = {sci(rec['C'])} FLOPs"
        )
    lines += ["next:"] + [f"  - {step}" for step in diagnostics["next_runs"]]
    return lines


def summary_lines(fit: dict) -> list[str]:
    """The fit in plain text: exponents with 95% bootstrap intervals, the recommendation, the extrapolation."""
    inputs = fit.get("inputs") or {}
    lines = [
        f"sweep {inputs.get('sweep', '?')}: {inputs.get('final_points', 0)} completed runs fitted, "
        f"{inputs.get('curve_points_fitted', 0)} curve points ({inputs.get('curve_points_logged', 0)} logged), "
        f"{len(inputs.get('skipped', []))} runs skipped"
    ]
    if "error" in fit:
        return lines + [f"fit failed: {fit['error']}"]
    lines += verdict_lines(fit)
    level = int(round(100 * (fit.get("bootstrap") or {}).get("level", 0.95)))
    lines.append(
        f"intervals: {level}% bootstrap percentiles over {(fit.get('bootstrap') or {}).get('n_boot', '?')} "
        f"resamples of the runs"
    )
    rec = fit.get("recommendation") or {}
    if "error" in rec:
        lines.append(f"recommendation: {reason(rec, 'recommendation')}")
    else:
        lines += [
            f"budget C = {sci(rec.get('C'))} FLOPs ({inputs.get('budget_source', '')})",
            f"  N_opt = {sci(rec.get('N_opt'))}{interval(rec.get('N_opt_ci'))} parameters",
            f"  D_opt = {sci(rec.get('D_opt'))}{interval(rec.get('D_opt_ci'))} tokens "
            f"({sci(rec.get('tokens_per_param'))} tokens per parameter)",
            f"  predicted loss = {sci(rec.get('predicted_loss'), '.4g')}"
            f"{interval(rec.get('predicted_loss_ci'), '.4g')} "
            f"(from {rec.get('source')})",
        ]
        if rec.get("kind") == "projection":
            lines.append(
                f"  a projection: C lies beyond every run (largest C = "
                f"{sci((fit.get('projection') or {}).get('beyond_C'))})"
            )
    for approach, title, names in (
        ("approach1", "approach 1 (training-curve envelope)", ("a", "b")),
        ("approach2", "approach 2 (isoFLOP parabolas)", ("a", "b")),
        ("approach3", "approach 3 (L = E + A/N^alpha + B/D^beta)", ("a", "b")),
        ("approach3", "  its law", ("alpha", "beta", "E", "A", "B")),
    ):
        part = fit.get(approach) or {}
        if "error" in part and names != ("a", "b"):
            continue
        body = (
            reason(part, approach.replace("approach", "approach "))
            if "error" in part
            else ", ".join(_param(fit, approach, n) for n in names)
        )
        lines.append(f"{title}: {body}")
    kaplan = fit.get("kaplan") or {}
    parts = []
    for key, exponent in (("L_N", "alpha_N"), ("L_D", "alpha_D")):
        part = kaplan.get(key) or {}
        parts.append(
            f"{key}: "
            + (reason(part, f"kaplan L({key[-1]})") if "error" in part else f"{exponent} = {sci(part.get(exponent))}")
        )
    lines.append("kaplan: " + "; ".join(parts))
    bnsl = fit.get("bnsl") or {}
    lines.append(
        "bnsl: "
        + (
            reason(bnsl, "bnsl")
            if "error" in bnsl
            else f"rmse(log loss) = {sci(bnsl.get('rmse_log'))}, {len(bnsl.get('breaks') or [])} break(s)"
        )
    )
    held = fit.get("holdout") or {}
    if "error" in held:
        lines.append(f"holdout: {reason(held, 'holdout')}")
    elif held.get("runs"):
        lines.append(
            f"holdout: {len(held['runs'])} run(s) predicted by approach 3 from the others: median |error| "
            f"{percent(held.get('median_abs_rel_error'), '.2f')}, "
            f"worst {percent(held.get('worst_abs_rel_error'), '.2f')}, "
            f"{held.get('n_inside')} inside the interval"
        )
    for key, part in (fit.get("metrics") or {}).items():
        lines += metric_lines(key, part)
    ext = fit.get("extrapolation") or {}
    if "error" in ext:
        lines.append(f"extrapolation: {reason(ext, 'extrapolation')}")
    else:
        lines.append(
            f"extrapolation to the held-out largest budget C = {sci(ext.get('C'))} "
            f"(observed N_opt {sci((ext.get('observed') or {}).get('N_opt'))} from the "
            f"{(ext.get('observed') or {}).get('from')}):"
        )
        for approach in ("approach2", "approach3"):
            part = ext.get(approach) or {}
            if "error" in part:
                lines.append(f"  {approach}: {reason(part, approach.replace('approach', 'approach '))}")
            else:
                lines.append(
                    f"  {approach}: N_opt error {percent(part.get('rel_error_N_opt'))}, "
                    f"loss error {percent(part.get('rel_error_loss'), '+.2f')}"
                )
    return lines


def metric_lines(key: str, part: dict) -> list[str]:
    """A metric's two-step fit in plain text: its link, its held-out predictions, the recommendation's projection."""
    if "error" in part:
        return [f"metric {key}: {reason(part, f'metric {key}')}"]
    law = part["metric_law"]
    lines = [
        f"metric {key}: (N, D) -> loss by approach {part.get('loss_approach')}, loss -> {key} by the "
        f"{law['link']} link ("
        + ", ".join(f"{k} = {sci(v)}" for k, v in law.items() if isinstance(v, (int, float)))
        + ")"
    ]
    for p in part.get("predictions") or []:
        if p.get("kind") == "prediction":
            lines.append(
                f"  {p['name']} (held out): predicted {sci(p['metric'], '.4g')}"
                f"{interval([p.get('lo'), p.get('hi')], '.4g')}, reached {sci(p.get('observed'), '.4g')} "
                f"({percent(p.get('rel_error'), '+.2f')}, {'inside' if p.get('inside') else 'outside'} the interval)"
            )
        elif p.get("kind") in ("projection", "within the runs"):
            lines.append(
                f"  at the recommendation ({p['kind']}): {sci(p['metric'], '.4g')}"
                f"{interval([p.get('lo'), p.get('hi')], '.4g')}"
            )
    return lines


def fit_main(argv: list[str]) -> int:
    """``ladder fit sweep=<name>``; with ``--points FILE.csv`` the CSV fitter (``launcher.analysis.fit.cli``)."""
    if any(a == "--points" or a.startswith("--points=") for a in argv):
        from launcher.analysis.fit.cli import main

        return main(argv)

    def options(parser):
        from launcher.analysis.fit.cli import points_help

        parser.formatter_class = argparse.RawDescriptionHelpFormatter
        parser.epilog = (
            f"metric=KEY: a key the runs log in metrics.jsonl (zero_shot_acc, a user's own eval), fitted "
            f"besides the sweep config's\nsweep.metrics in two steps, (N, D) -> loss -> KEY; runs the sweep "
            f"config's sweep.holdout selects are\npredicted from the others, not fitted.\n\n{points_help()}"
        )
        parser.add_argument("--json", action="store_true", help="print fit.json")
        parser.add_argument("--budget-flops", type=float, help="recommend N_opt, D_opt for this many FLOPs")
        parser.add_argument("--n-boot", type=int, default=N_BOOT, help="bootstrap resamples")
        parser.add_argument("--seed", type=int, default=0)

    args, sweep_dir = parse_sweep_args(
        argv,
        "ladder fit",
        "fit scaling laws to a sweep (or --points FILE.csv); metric=KEY also fits a key the runs log, in two steps",
        options,
        keys=("metric",),
    )
    if args.n_boot < 0:
        raise UserError(f"--n-boot: must be >= 0 (0: no bootstrap), got {args.n_boot}")
    if args.budget_flops is not None and not (math.isfinite(args.budget_flops) and args.budget_flops > 0):
        raise UserError(f"--budget-flops: must be a finite number > 0, got {args.budget_flops}")
    fit = fit_sweep_dir(sweep_dir, args.budget_flops, n_boot=args.n_boot, seed=args.seed, metric=args.metric)
    if args.json:
        print(json.dumps(fit, indent=1))
    else:
        print("\n".join(summary_lines(fit)))
        print(f"-> {sweep_dir / FIT_FILE}")
    if "error" in fit:
        print(f"ladder fit: error: {fit['error']}", file=sys.stderr)
        return 1
    return 0
