"""What one proposed round buys: the N_opt interval at a target budget after ``ladder propose``'s K runs,
against the same node-hours spent on K runs at random or on a denser grid at the budgets already run.

Synthetic isoFLOP sweeps from a known law (Hoffmann et al. 2022: E=1.69, A=406.4, B=410.7, alpha=0.34,
beta=0.28) with log-normal noise (``--noise``, 1%), ``--seeds`` draws. The first round: budgets 1e18,
3e18, 1e19, four sizes each at 1/3, 2/3, 3/2 and 3 times a guessed optimum that drifts above the true
one with C (N_guess = N_opt (C/1e18)^0.15, as a sweep planned from a too-steep exponent has it), so
the largest budget's minimum sits near its small edge. It is fitted with the sweep fit (``fit_sweep``:
approaches 2 and 3, their bootstrap, the diagnostics), and then one more round is added three ways:

- proposed: ``launcher.analysis.propose.next_round`` (the rule ``ladder propose`` applies), K runs;
- random: K runs at budgets drawn from the ones run and 4x the largest, sizes log-uniform within 4x of
  the fitted optimum there, their budgets then scaled by one factor to the proposed round's node-hours;
- denser grid: sizes at the log-midpoints of each budget's sizes, then at the quarter points, largest
  budget first, while they fit in the proposed round's node-hours.

Node-hours are proportional to a run's FLOPs C (one throughput for every size). Each sweep is fitted
again and the width of approach 3's bootstrap interval of N_opt at the target (``--target``, 100x the
largest budget, the recommendation's) is compared: ln(N_hi / N_lo). Printed: the median width of
each, and the ratios proposed/random and proposed/denser grid. Goal: proposed <= 0.7x random.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread, before numpy loads its BLAS
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import math
import time

import numpy as np

from launcher.analysis.fit.sweep import fit_sweep
from launcher.analysis.propose import next_round

LAW = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)  # Hoffmann et al. 2022, approach 3
BUDGETS = (1e18, 3e18, 1e19)
FACTORS = (1 / 3, 2 / 3, 3 / 2, 3.0)
DRIFT = 0.15  # the first round's guessed optimum grows this much faster in C than the true one
GOAL = 0.7


def n_opt(C: float) -> float:
    """The law's compute-optimal N at C = 6ND."""
    a, b = LAW["alpha"], LAW["beta"]
    G = (a * LAW["A"] / (b * LAW["B"])) ** (1 / (a + b))
    return G * (C / 6) ** (b / (a + b))


def point(N: float, C: float, budget: float | None, noise: float, rng: np.random.Generator) -> dict:
    D = C / (6 * N)
    loss = LAW["E"] + LAW["A"] / N ** LAW["alpha"] + LAW["B"] / D ** LAW["beta"]
    return {"N": N, "D": D, "C": C, "budget": budget, "loss": loss * math.exp(rng.normal(0, noise))}


def first_round(noise: float, rng: np.random.Generator) -> list[dict]:
    return [point(n_opt(C) * (C / BUDGETS[0]) ** DRIFT * f, C, C, noise, rng) for C in BUDGETS for f in FACTORS]


def sizes_by_budget(points: list[dict]) -> dict[float, list[float]]:
    out: dict[float, list[float]] = {}
    for p in points:
        if p["budget"] is not None:
            out.setdefault(float(p["budget"]), []).append(p["N"])
    return out


def fitted_n_opt(fit: dict, C: float) -> float:
    """The fit's own optimum at C (approach 2's law, else the recommendation scaled by sqrt(C))."""
    iso = fit.get("approach2") or {}
    if "error" not in iso and iso.get("N_coef"):
        return iso["N_coef"] * C ** iso["a"]
    rec = fit["recommendation"]
    return rec["N_opt"] * math.sqrt(C / rec["C"])


def proposed(fit: dict, points: list[dict], target: float, k: int) -> list[tuple[float, float]]:
    return [(r.params, r.budget) for r in next_round(fit, sizes_by_budget(points), target, k)]


def random_round(fit: dict, k: int, spend: float, rng: np.random.Generator) -> list[tuple[float, float]]:
    budgets = [*BUDGETS, 4 * BUDGETS[-1]]
    runs = []
    for _ in range(k):
        C = budgets[rng.integers(len(budgets))]
        runs.append((fitted_n_opt(fit, C) * math.exp(rng.uniform(-math.log(4), math.log(4))), C))
    scale = spend / sum(C for _, C in runs)
    return [(N, C * scale) for N, C in runs]


def denser_round(points: list[dict], spend: float) -> list[tuple[float, float]]:
    sizes = sizes_by_budget(points)
    candidates = []
    for level in (2, 4):  # midpoints, then quarter points (in log N)
        for C in sorted(sizes, reverse=True):
            logs = np.log(sorted(sizes[C]))
            for lo, hi in zip(logs, logs[1:]):
                for j in range(1, level, 2 if level == 4 else 1):
                    candidates.append((math.exp(lo + (hi - lo) * j / level), C))
    runs, spent = [], 0.0
    for N, C in candidates:
        if spent + C <= spend:
            runs.append((N, C))
            spent += C
    return runs


def width(fit: dict) -> float:
    """ln(N_hi / N_lo) of approach 3's bootstrap interval of N_opt at the target budget."""
    rec = fit["recommendation"]
    options = {rec.get("source"): rec, **rec.get("alternatives", {})}
    lo, hi = options["approach3"]["N_opt_ci"]
    return math.log(hi / lo)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--noise", type=float, default=0.01)
    ap.add_argument("--runs", type=int, default=6, help="K: the proposed round's runs")
    ap.add_argument("--boot", type=int, default=100, help="bootstrap replicates of each fit")
    ap.add_argument("--target", type=float, default=100 * BUDGETS[-1])
    args = ap.parse_args()
    began = time.process_time()
    widths: dict[str, list[float]] = {"first round": [], "proposed": [], "random": [], "denser grid": []}
    spends = []
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        first = first_round(args.noise, rng)
        fit = fit_sweep(first, [], args.target, n_boot=args.boot, seed=seed)
        widths["first round"].append(width(fit))
        runs = proposed(fit, first, args.target, args.runs)
        spend = sum(C for _, C in runs)
        spends.append(spend / sum(p["C"] for p in first))
        rounds = {
            "proposed": runs,
            "random": random_round(fit, args.runs, spend, rng),
            "denser grid": denser_round(first, spend),
        }
        for name, added in rounds.items():
            labelled = name != "random"  # random runs' budgets are scaled: each is a budget of its own
            more = [point(N, C, C if labelled else None, args.noise, rng) for N, C in added]
            widths[name].append(width(fit_sweep(first + more, [], args.target, n_boot=args.boot, seed=seed)))
    median = {k: float(np.median(v)) for k, v in widths.items()}
    print(
        f"{args.seeds} synthetic sweeps (Hoffmann et al. 2022's law, {args.noise:.1%} noise), target C = "
        f"{args.target:.3g}; each second round costs {np.median(spends):.2f}x the first round's node-hours"
    )
    for name, value in median.items():
        print(f"  {name:12s} median ln(N_hi/N_lo) of N_opt = {value:.3f}  (x{math.exp(value):.2f} wide)")
    ratio_random = median["proposed"] / median["random"]
    ratio_dense = median["proposed"] / median["denser grid"]
    per_seed = np.array(widths["proposed"]) / np.array(widths["random"])
    print(
        f"proposed / random:      {ratio_random:.2f}x  (goal <= {GOAL}x; per sweep median {np.median(per_seed):.2f}x)"
    )
    print(f"proposed / denser grid: {ratio_dense:.2f}x")
    print(f"({time.process_time() - began:.0f} CPU s)")


if __name__ == "__main__":
    main()
