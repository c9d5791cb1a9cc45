"""Approach 3 on 200,000 points: the start search on a subsample, then refined on all points.

Goal: both methods (vpnls and the 4500-start grid) under 60 s wall on this 2-core machine, progress
printed on the way. Baseline, measured in the same run: the search on every point, which costs
(cells or starts) x points, at 20,000 points (at 200,000 it would need tens of GB and hours); printed:
its time over ours at the same size, and the gap between the two objectives (ours must be no higher,
1e-9 relative). Points: L = 1.82 + 482/N^0.35 + 2085/D^0.37 with 1% noise (``bench/fit_speed.py``).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fit_speed import make_points

from launcher.analysis.fit.chinchilla import fit_chinchilla
from launcher.analysis.fit.points import as_points
from launcher.analysis.fit.vpnls import fit_approach3, fit_vpnls

GOAL_S = 60.0
WHOLE = {"vpnls": fit_vpnls, "grid": fit_chinchilla}  # the search on every point


def points_of(n: int):
    N, D, loss = make_points(n, 0)
    return as_points([{"N": a, "D": b, "loss": c} for a, b, c in zip(N, D, loss)])


def timed(fit, *args, **kwargs):
    started = time.monotonic()
    result = fit(*args, **kwargs)
    return result, time.monotonic() - started


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--points", type=int, default=200_000)
    p.add_argument("--baseline-points", type=int, default=20_000)
    p.add_argument("--methods", default="vpnls,grid")
    args = p.parse_args()
    large, small = points_of(args.points), points_of(args.baseline_points)
    failures = 0
    for method in args.methods.split(","):
        ours, seconds = timed(fit_approach3, large, method)
        met = seconds < GOAL_S
        print(
            f"{method}: {args.points:,} points in {seconds:.1f} s wall (goal < {GOAL_S:.0f} s: "
            f"{'met' if met else 'NOT met'}); objective {ours.objective:.10g}, alpha {ours.alpha:.4f}, "
            f"beta {ours.beta:.4f}"
        )
        sub, sub_s = timed(fit_approach3, small, method, progress=lambda line: None)
        whole, whole_s = timed(WHOLE[method], small)
        gap = (sub.objective - whole.objective) / whole.objective
        print(
            f"  baseline at {args.baseline_points:,} points: every point {whole_s:.1f} s, subsample then refine "
            f"{sub_s:.1f} s: {whole_s / sub_s:.1f}x faster; objective gap {gap:+.1e} (goal <= 1e-9: "
            f"{'met' if gap <= 1e-9 else 'NOT met'})"
        )
        failures += (not met) + (gap > 1e-9)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
