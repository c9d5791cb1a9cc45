"""Plan and record a 10,000-run sweep: the planner plus one batched job-database transaction (goal <= 10 s).

Baseline, measured in the same run: recording the same runs with one transaction per run (what a
loop of single inserts costs). Prints both times and their ratio.

    .venv/bin/python bench/jobdb_plan.py [--runs 10000]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

from launcher.sweep.jobdb import JobDB
from launcher.sweep.plan import build_plan

GOAL_S = 10.0


def grid_overrides(n_runs: int, sweeps_root: Path) -> list[str]:
    """A grid sweep of ~sqrt(n) model sizes x token counts on the tiny byte-level GPT-NeoX."""
    side = math.ceil(math.sqrt(n_runs))
    tokens = [round(1e5 * 1.01**i) * 4096 for i in range(side)]
    shapes = [f"{{n_layer: {1 + i % 12}, d_model: {16 * (1 + i // 12)}, n_heads: {1 + i // 12}}}" for i in range(side)]
    return [
        "sweep=grid",
        f"sweeps_root={sweeps_root}",
        "sweep.name=bench",
        "sweep.params=[]",
        f"sweep.shapes=[{','.join(shapes)}]",
        f"sweep.tokens=[{','.join(map(str, tokens))}]",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        began = time.perf_counter()
        plan = build_plan(grid_overrides(args.runs, root))
        planned = time.perf_counter()
        with JobDB(plan.sweep_dir / "jobdb.sqlite") as db:
            db.add_sweep(plan.sweep.name, plan.cluster.name, plan.to_json()["sweep"])
            added = db.add_runs(plan.sweep.name, plan.runs, plan.sweep_dir)
            recorded = time.perf_counter()
            assert added == len(plan.runs) == len(db.runs(plan.sweep.name))
            again = db.add_runs(plan.sweep.name, plan.runs, plan.sweep_dir)
            again_s = time.perf_counter() - recorded
        assert again == 0
        with JobDB(root / "baseline.sqlite") as db:
            db.add_sweep(plan.sweep.name, plan.cluster.name, {})
            start = time.perf_counter()
            for spec in plan.runs:
                db.add_runs(plan.sweep.name, [spec], plan.sweep_dir)
            baseline_s = time.perf_counter() - start
    plan_s, record_s = planned - began, recorded - planned
    total = plan_s + record_s
    print(f"runs planned and recorded: {len(plan.runs)}")
    print(f"plan (compose, solve, count, hash): {plan_s:.2f} s")
    print(f"record (one transaction):           {record_s:.3f} s")
    print(f"re-record (all known, idempotent):  {again_s:.3f} s")
    print(f"total: {total:.2f} s (goal <= {GOAL_S:.0f} s: {'met' if total <= GOAL_S else 'MISSED'})")
    print(f"baseline, one transaction per run:  {baseline_s:.3f} s; batched is {baseline_s / record_s:.1f}x faster")


if __name__ == "__main__":
    main()
