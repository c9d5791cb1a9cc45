"""``ladder propose sweep=NAME [--target-flops C] [--runs K]``: the next round of an isoFLOP sweep.

It reads the sweep's ``fit.json`` (its ``diagnostics``) and ``plan.json`` and writes
``<sweep_dir>/proposal.yaml`` (``launcher.sweep.proposal``). The rule:

1. Edges first (a biased vertex is worse than a wide interval): a budget whose parabola's minimum lies
   outside the sizes it ran is re-centred with two sizes beyond that edge, a factor 2 and 4 past it;
   a budget with no minimum gets one size past each edge.
2. The rest, one at a time, by how much each candidate shrinks the variance of ln N_opt at the target
   budget (``--target-flops``, else the recommendation's) per node-hour: the delta method on approach
   3's fit, the linear stand-in for bootstrap refits of simulated outcomes (``informative_runs``).
   Candidates: sizes around each budget's optimum and past its edges, and budgets 2, 4 and 8 x the
   largest. Without an approach-3 fit: a budget 4x beyond the largest (at most the target) with sizes
   1/2, 1 and 2 x its N_opt predicted by approach 2.

bench/propose_value.py checks the rule against random runs and a denser grid at equal node-hours.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import numpy as np

from launcher.analysis.fit.chinchilla import compute_optimal, log_loss_jacobian, log_n_opt_gradient
from launcher.arguments import command_parser
from launcher.errors import UserError
from launcher.files import atomic_write
from launcher.numbers import sci
from launcher.sweep.plan import Throughput, compose_sweep, read_plan
from launcher.sweep.proposal import PROPOSAL_FILE, Proposal, ProposedRun

DEFAULT_RUNS = 6
BEYOND_FACTOR = 4.0  # the new budget: at most this many times the largest
NEW_BUDGET_FACTORS = (2.0, 4.0, 8.0)  # candidate budgets beyond the largest, times the largest
RIDGE = 1e-9  # of the information matrix's trace, added to its diagonal
RULE = (
    "edges first: a budget whose minimum lies outside its sizes gets sizes 2x and 4x beyond that edge; "
    "then the runs that shrink the variance of ln N_opt at the target the most per node-hour (the delta "
    "method on approach 3's fit), chosen one at a time"
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


def candidates(fit: dict, theta: np.ndarray, sizes: dict[float, list[float]], largest: float) -> list[ProposedRun]:
    """Runs ``informative_runs`` chooses from: at each budget run, sizes 1/4 to 4 x its optimum (approach
    3's) and 2 and 4 x past its edges; at 2, 4 and 8 x the largest budget, 1/2, 1 and 2 x the optimum there."""
    k = fit.get("flops_per_param_token") or 6.0
    out = []
    for C in sorted(sizes):
        N = float(compute_optimal(theta, C, k)[0])
        lo, hi = min(sizes[C]), max(sizes[C])
        out += [ProposedRun(N * f, C, f"budget {sci(C)}: {f:g} x its N_opt ≈ {sci(N)}") for f in (0.25, 0.5, 1, 2, 4)]
        out += [ProposedRun(lo / f, C, f"budget {sci(C)}: {f:g}x below its smallest size {sci(lo)}") for f in (2, 4)]
        out += [ProposedRun(hi * f, C, f"budget {sci(C)}: {f:g}x above its largest size {sci(hi)}") for f in (2, 4)]
    for factor in NEW_BUDGET_FACTORS:
        C = factor * largest
        N = float(compute_optimal(theta, C, k)[0])
        out += [
            ProposedRun(N * f, C, f"a budget {factor:g}x the largest ({sci(largest)}): {f:g} x N_opt ≈ {sci(N)}")
            for f in (0.5, 1, 2)
        ]
    return out


def informative_runs(
    fit: dict, sizes: dict[float, list[float]], target: float, k: int, cost: Callable[[ProposedRun], float]
) -> Optional[list[ProposedRun]]:
    """``k`` candidates chosen one at a time by how much each shrinks the variance of ln N_opt at ``target``
    per node-hour, by the delta method on approach 3's fit; None when approach 3 was not fitted or its law has
    no finite N_opt to aim at (an exponent <= 0) or a parameter at 0 (no log-parameter to differentiate).

    With J the rows d ln L / dθ of the runs fitted (``log_loss_jacobian``) and g = d ln N_opt / dθ, the
    variance is σ² gᵀ(JᵀJ)⁻¹g; a run with row j at its predicted loss lowers it by
    σ² (gᵀ(JᵀJ)⁻¹j)² / (1 + jᵀ(JᵀJ)⁻¹j) (Sherman-Morrison), whatever σ, the noise of one run.
    """
    part = fit.get("approach3") or {}
    if "error" in part or not part.get("runs"):
        return None
    if min(part["A"], part["B"], part["E"], part["alpha"], part["beta"]) <= 0:
        return None
    theta = np.array([math.log(part["A"]), math.log(part["B"]), math.log(part["E"]), part["alpha"], part["beta"]])
    flops_per_token = fit.get("flops_per_param_token") or 6.0
    J = log_loss_jacobian(theta, [r["N"] for r in part["runs"]], [r["D"] for r in part["runs"]])
    info = J.T @ J
    info += RIDGE * np.trace(info) * np.eye(5)  # directions no run informs stay finite, and expensive to fix
    g = log_n_opt_gradient(theta, target, flops_per_token)
    pool = candidates(fit, theta, sizes, max(sizes) if sizes else max(r["C"] for r in part["runs"]))
    chosen: list[ProposedRun] = []
    while pool and len(chosen) < k:
        inverse = np.linalg.inv(info)
        rows = log_loss_jacobian(
            theta, [r.params for r in pool], [r.budget / (flops_per_token * r.params) for r in pool]
        )
        gain = (rows @ inverse @ g) ** 2 / (1 + np.einsum("ij,jk,ik->i", rows, inverse, rows))
        best = int(np.argmax(gain / np.array([cost(r) for r in pool])))
        info += np.outer(rows[best], rows[best])
        chosen.append(pool.pop(best))
    return chosen


def next_round(
    fit: dict,
    sizes: dict[float, list[float]],
    target: Optional[float],
    k: int,
    cost: Callable[[ProposedRun], float] = lambda run: run.budget,
) -> list[ProposedRun]:
    """The rule above: ``k`` runs from a fit (fit.json's content) and the sizes each budget ran; ``cost``
    of a run in node-hours (by default its FLOPs, for one throughput at every size)."""
    largest = max(sizes) if sizes else max(r["C"] for r in fit["approach3"].get("runs", []))
    edges = edge_runs(fit["diagnostics"]["budgets"], sizes)[:k]
    goal = target or (fit.get("recommendation") or {}).get("C") or BEYOND_FACTOR * largest
    rest = informative_runs(fit, sizes, goal, k - len(edges), cost) if k > len(edges) else []
    return edges + (rest if rest is not None else beyond_runs(fit, largest, target)[: k - len(edges)])


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
    if not plan.get("throughput"):
        return Proposal(sweep_name, RULE, next_round(fit, sizes, target, k), target)
    speed = Throughput(**{**plan["throughput"], "points": tuple(map(tuple, plan["throughput"]["points"]))})
    runs = next_round(fit, sizes, target, k, cost=lambda run: speed.node_hours_of(run.params, run.budget))
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
