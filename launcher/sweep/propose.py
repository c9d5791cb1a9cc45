"""``ladder propose sweep=NAME [--target-flops C] [--runs K]``: the next round of an isoFLOP sweep.

It reads the sweep's ``fit.json`` (its ``diagnostics``) and ``plan.json`` and writes
``<sweep_dir>/proposal.yaml`` (``launcher.sweep.proposal``). The rule is a cheap, documented one, not a
search over simulated refits:

1. A budget whose parabola's minimum lies outside the sizes it ran is re-centred: two sizes beyond that
   edge, a factor 2 and 4 past it (the parabola there is an extrapolation, and its vertex biases a).
   A budget with no minimum gets one size past each edge.
2. A budget beyond the largest (``--target-flops`` when it is larger, at most 4x the largest budget;
   else 4x the largest) with three sizes at 1/2, 1 and 2 times its predicted N_opt (approach 2's law,
   else the largest budget's optimum scaled by sqrt of the budget ratio): it lengthens the lever arm
   of the N_opt ∝ C^a fit, which is what shrinks the interval of N_opt at a target beyond the sweep.

Runs come in that order (edges first: a biased vertex is worse than a wide interval), K of them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

from launcher.arguments import command_parser
from launcher.errors import UserError
from launcher.files import atomic_write
from launcher.numbers import sci
from launcher.sweep.plan import Throughput, compose_sweep, read_plan
from launcher.sweep.proposal import PROPOSAL_FILE, Proposal, ProposedRun

DEFAULT_RUNS = 6
BEYOND_FACTOR = 4.0  # the new budget: at most this many times the largest
RULE = (
    "edges first: a budget whose minimum lies outside its sizes gets sizes 2x and 4x beyond that edge; "
    "then a budget beyond the largest with sizes 1/2, 1, 2 x its predicted N_opt"
)


def edge_runs(budgets: list[dict], sizes: dict[float, list[float]]) -> list[ProposedRun]:
    runs = []
    for b in budgets:
        C = float(b["C"] if b["C"] is not None else b["budget"])
        ran = sizes.get(C) or [b["N_min"], b["N_max"]]
        lo, hi = min(ran), max(ran)
        if b["position"] == "below":
            runs += [
                ProposedRun(
                    lo / f,
                    C,
                    f"budget {sci(C)}: its minimum (N ≈ {sci(b['N_opt'])}) lies below the smallest size {sci(lo)}",
                )
                for f in (2, 4)
            ]
        elif b["position"] == "above":
            runs += [
                ProposedRun(
                    hi * f,
                    C,
                    f"budget {sci(C)}: its minimum (N ≈ {sci(b['N_opt'])}) lies above the largest size {sci(hi)}",
                )
                for f in (2, 4)
            ]
        elif b["position"] == "none":
            runs += [
                ProposedRun(lo / 2, C, f"budget {sci(C)}: no minimum; below its sizes"),
                ProposedRun(hi * 2, C, f"budget {sci(C)}: no minimum; above its sizes"),
            ]
    return runs


def beyond_runs(fit: dict, largest: float, target: Optional[float]) -> list[ProposedRun]:
    C = min(target, BEYOND_FACTOR * largest) if target and target > largest else BEYOND_FACTOR * largest
    iso = fit.get("approach2") or {}
    if "error" not in iso and iso.get("N_coef"):
        N, how = iso["N_coef"] * C ** iso["a"], "approach 2's law"
    else:
        best = (
            min(fit["approach3"]["runs"], key=lambda r: (abs(r["C"] / largest - 1) > 0.05, r["loss"]))
            if "runs" in (fit.get("approach3") or {})
            else None
        )
        if best is None:
            raise UserError(
                "ladder propose: the fit has neither approach 2 nor approach 3; run more of the sweep first"
            )
        N, how = best["N"] * math.sqrt(C / largest), "the largest budget's best run scaled by sqrt(C ratio)"
    return [
        ProposedRun(
            N * f, C, f"a budget beyond the largest ({sci(largest)}): {f:g} x N_opt ≈ {sci(N)} predicted by {how}"
        )
        for f in (1, 0.5, 2)
    ]


def propose(sweep_dir: Path, sweep_name: str, target: Optional[float], k: int) -> Proposal:
    try:
        fit = json.loads((sweep_dir / "fit.json").read_text())
    except OSError:
        raise UserError(
            f"ladder propose: {sweep_dir / 'fit.json'} is missing; run `ladder fit sweep={sweep_name}` first"
        ) from None
    if "diagnostics" not in fit:
        raise UserError(
            f"ladder propose: {sweep_dir / 'fit.json'} has no diagnostics ({fit.get('error', 'an old fit')})"
            f"; fit the sweep again"
        )
    plan = read_plan(sweep_dir)
    sizes: dict[float, list[float]] = {}
    for r in plan.get("runs", []):
        if r.get("budget"):
            sizes.setdefault(float(r["budget"]), []).append(float(r["N"]))
    largest = max(sizes) if sizes else max(r["C"] for r in fit["approach3"].get("runs", []))
    runs = (edge_runs(fit["diagnostics"]["budgets"], sizes) + beyond_runs(fit, largest, target))[:k]
    if plan.get("throughput"):
        speed = Throughput(**{**plan["throughput"], "points": tuple(map(tuple, plan["throughput"]["points"]))})
        for run in runs:
            run.est_node_hours = speed.node_hours_of(run.params, run.budget)
    return Proposal(sweep_name, RULE, runs, target)


def write_proposal(sweep_dir: Path, proposal: Proposal) -> Path:
    path = sweep_dir / PROPOSAL_FILE
    atomic_write(path, proposal.to_yaml())
    return path


def main(argv: list[str]) -> int:
    parser = command_parser("ladder propose", "Propose the next runs of a sweep from its fit (proposal.yaml).")
    parser.add_argument("--target-flops", type=float, help="the budget whose N_opt interval should shrink")
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS, help="how many runs to propose")
    args = parser.parse(argv)
    if args.runs < 1:
        raise UserError(f"--runs: must be >= 1, got {args.runs}")
    if args.target_flops is not None and not (math.isfinite(args.target_flops) and args.target_flops > 0):
        raise UserError(f"--target-flops: must be a positive number of FLOPs, got {args.target_flops}")
    sweep, _, sweep_dir = compose_sweep(args.overrides)
    proposal = propose(sweep_dir, sweep.name, args.target_flops, args.runs)
    path = write_proposal(sweep_dir, proposal)
    for run in proposal.runs:
        print(f"N = {sci(run.params)} at C = {sci(run.budget)} ({sci(run.est_node_hours)} node-h): {run.reason}")
    print(f"-> {path}\nrun them: ladder sweep sweep={sweep.name} proposal={path}")
    return 0
