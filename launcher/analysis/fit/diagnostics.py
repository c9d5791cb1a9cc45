"""An honest verdict on a sweep's fit: do the three Chinchilla approaches tell one story, and if not, why.

``diagnose`` reads the parts of fit.json ``SweepFitter`` has built and returns its ``diagnostics``:

    approaches   {approach1|approach2|approach3: {a, a_ci, flags: [words]}}   (fitted approaches only)
    budgets      [{budget, C, N_opt, N_min, N_max, position: inside | below | above | none}]  (approach 2)
    approach3    {at_bound: [words], condition_number, E_over_min_loss}
    residuals    {approach3: {rms_rel, max_abs_rel, runs: [{name, residual_rel}]}}
    verdict      agree | disagree
    reasons      [words]: empty when the verdict is agree
    trusted      the approach whose recommendation the report leads with (None: none can be trusted)
    next_runs    [words]: what to run next to settle it

agree: at least two approaches fitted, their a intervals overlap and none is flagged. Flags: a budget
whose parabola's minimum lies outside the sizes it ran (the parabola extrapolates, Hoffmann et al.'s
own caveat), a budget without a minimum, approach-3 parameters at a bound (E ~ 0: the irreducible loss is
not identified at these sizes; alpha or beta near 0 or far above 1: a term is not identified), an
ill-conditioned approach-3 fit, and an exponent without a bootstrap interval.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

from launcher.analysis.fit.chinchilla import ChinchillaFit, log_loss_jacobian
from launcher.analysis.fit.points import Points, budgets
from launcher.numbers import sci

E_FLOOR = 1e-3  # E below this fraction of the smallest loss: pinned at its bound 0
EXPONENT_RANGE = (0.02, 2.5)  # alpha, beta outside: one term of the law is not identified
CONDITION_LIMIT = 1e4  # of the column-normalised Jacobian of log loss in θ = (ln A, ln B, ln E, alpha, beta)
TRUST_ORDER = ("approach2", "approach3")  # the approaches with a recommendation, in the order they are trusted
NEXT_BUDGET_FACTOR = 4.0  # "add a budget beyond the largest": this many times its C


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _a_and_interval(out: dict, approach: str) -> tuple[Optional[float], Optional[list[float]]]:
    part = out.get(approach) or {}
    ci = (((out.get("bootstrap") or {}).get(approach) or {}).get("ci") or {}).get("a")
    ci = [float(v) for v in ci] if ci is not None and all(_finite(float(v)) for v in ci) else None
    return (float(part["a"]) if _finite(part.get("a")) else None), ci


def budget_positions(finals: Points, iso: dict) -> list[dict]:
    """Where each budget's parabola minimum lies against the sizes that budget ran."""
    groups = {b.label: b.index for b in budgets(finals)}
    out = []
    for m in iso.get("budgets", []):
        sizes = finals.N[groups[m["budget"]]]
        lo, hi = float(sizes.min()), float(sizes.max())
        N = float(m["N_opt"])
        position = "inside" if lo <= N <= hi else "below" if N < lo else "above"
        out.append({"budget": m["budget"], "C": m["C"], "N_opt": N, "N_min": lo, "N_max": hi, "position": position})
    for skipped in iso.get("skipped_budgets", []):
        out.append(
            {
                "budget": skipped["budget"],
                "C": None,
                "N_opt": None,
                "N_min": None,
                "N_max": None,
                "position": "none",
                "error": skipped["error"],
            }
        )
    return out


def condition_number(fit: ChinchillaFit, finals: Points) -> float:
    """How much the data's noise is amplified into θ: cond of the column-normalised Jacobian of ln L̂."""
    J = log_loss_jacobian(fit.theta, finals.N, finals.D)[finals.weight > 0]
    norms = np.linalg.norm(J, axis=0)
    if np.any(norms == 0) or not np.all(np.isfinite(J)):
        return math.inf
    s = np.linalg.svd(J / norms, compute_uv=False)
    return float(s[0] / s[-1]) if s[-1] > 0 else math.inf


def approach3_checks(fit: ChinchillaFit, finals: Points) -> dict:
    at_bound = []
    floor = float(finals.loss.min())
    if fit.E < E_FLOOR * floor:
        at_bound.append(
            f"E = {sci(fit.E)} is at its bound 0: the irreducible loss is not identified at these "
            f"sizes (larger models would show where the loss levels off)"
        )
    for name in ("alpha", "beta"):
        value = getattr(fit, name)
        if not EXPONENT_RANGE[0] <= value <= EXPONENT_RANGE[1]:
            at_bound.append(
                f"{name} = {sci(value)} is outside [{EXPONENT_RANGE[0]}, {EXPONENT_RANGE[1]}]: the "
                f"{'N' if name == 'alpha' else 'D'} term is not identified"
            )
    return {"at_bound": at_bound, "condition_number": condition_number(fit, finals), "E_over_min_loss": fit.E / floor}


def residuals(fit: ChinchillaFit, finals: Points) -> dict:
    rel = finals.loss / fit.loss(finals.N, finals.D) - 1.0
    keep = finals.weight > 0
    return {
        "rms_rel": float(np.sqrt(np.mean(rel[keep] ** 2))),
        "max_abs_rel": float(np.abs(rel[keep]).max()),
        "runs": [{"name": finals.name[i], "residual_rel": float(rel[i])} for i in np.flatnonzero(keep)],
    }


def _overlap(intervals: dict[str, list[float]]) -> bool:
    return max(lo for lo, _ in intervals.values()) <= min(hi for _, hi in intervals.values())


def next_runs(positions: list[dict], at_bound: list[str], disjoint: bool, largest_C: float) -> list[str]:
    """What to run next, cheapest first: re-centre edge budgets, then a budget beyond the largest."""
    advice = []
    for b in positions:
        if b["position"] == "below":
            advice.append(
                f"budget {b['budget']}: its minimum (N ≈ {sci(b['N_opt'])}) lies below the smallest size "
                f"run ({sci(b['N_min'])}); add sizes down to about {sci(b['N_opt'] / 2)}"
            )
        elif b["position"] == "above":
            advice.append(
                f"budget {b['budget']}: its minimum (N ≈ {sci(b['N_opt'])}) lies above the largest size "
                f"run ({sci(b['N_max'])}); add sizes up to about {sci(b['N_opt'] * 2)}"
            )
        elif b["position"] == "none":
            advice.append(f"budget {b['budget']}: no minimum ({b['error']}); widen its range of sizes")
    if at_bound or disjoint or not advice:
        why = "so that E is identified" if at_bound else "to shrink the exponent's interval"
        advice.append(
            f"add a budget beyond the largest: C ≈ {sci(NEXT_BUDGET_FACTOR * largest_C)} FLOPs with 3-5 "
            f"sizes around its predicted N_opt, {why}"
        )
    return advice


def diagnose(out: dict, chin: Optional[ChinchillaFit], finals: Points) -> dict:
    """fit.json's ``diagnostics`` (see the module docstring) from the parts already in ``out``."""
    approaches: dict[str, dict[str, Any]] = {}
    reasons: list[str] = []
    for approach in ("approach1", "approach2", "approach3"):
        part = out.get(approach) or {}
        if "error" in part:
            reasons.append(f"{approach.replace('approach', 'approach ')} could not be fitted: {part['error']}")
            continue
        a, ci = _a_and_interval(out, approach)
        flags = [] if ci is not None else ["its exponent a has no bootstrap interval"]
        approaches[approach] = {"a": a, "a_ci": ci, "flags": flags}
    positions = budget_positions(finals, out["approach2"]) if "approach2" in approaches else []
    for b in positions:
        if b["position"] != "inside":
            where = {
                "below": "below the smallest size run",
                "above": "above the largest size run",
                "none": "nowhere (no minimum)",
            }[b["position"]]
            approaches["approach2"]["flags"].append(f"budget {b['budget']}: the parabola's minimum lies {where}")
    checks = approach3_checks(chin, finals) if chin is not None and "approach3" in approaches else None
    if checks is not None:
        approaches["approach3"]["flags"] += checks["at_bound"]
        if checks["condition_number"] > CONDITION_LIMIT:
            approaches["approach3"]["flags"].append(
                f"the fit is ill-conditioned (condition number {sci(checks['condition_number'])} > "
                f"{sci(CONDITION_LIMIT)}): its parameters trade off against each other"
            )
    for approach, info in approaches.items():
        reasons += [f"{approach.replace('approach', 'approach ')}: {flag}" for flag in info["flags"]]
    intervals = {k: v["a_ci"] for k, v in approaches.items() if v["a_ci"] is not None}
    disjoint = len(intervals) >= 2 and not _overlap(intervals)
    if disjoint:
        reasons.append(
            "the approaches' intervals of a do not overlap: "
            + "; ".join(
                f"{k.replace('approach', 'approach ')} a = {sci(approaches[k]['a'])} [{sci(lo)}, {sci(hi)}]"
                for k, (lo, hi) in intervals.items()
            )
        )
    if len(approaches) < 2:
        reasons.append(f"only {len(approaches)} approach fitted: nothing to compare")
    if reasons:  # the first approach with a recommendation and no flag of its own, if any
        trusted = next((k for k in TRUST_ORDER if k in approaches and not approaches[k]["flags"]), None)
    else:
        trusted = (out.get("recommendation") or {}).get("source")
    return {
        "approaches": approaches,
        "budgets": positions,
        "approach3": checks,
        "residuals": {"approach3": residuals(chin, finals)} if chin is not None and checks is not None else {},
        "verdict": "agree" if not reasons else "disagree",
        "reasons": reasons,
        "trusted": trusted,
        "next_runs": next_runs(positions, checks["at_bound"] if checks else [], disjoint, float(finals.C.max())),
    }
