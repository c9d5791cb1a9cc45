"""Collect 10,000 curves of 1,000 points into curves.parquet (goal: <= 5 s on 2 cores), beside the former
curves.csv path and the runtime's own reader as baselines.

Writes a synthetic sweep into a temporary directory: plan.json plus runs/<name>/metrics.jsonl in the
runtime's line format (compact JSON, validation every 20 steps), then times ``collect_sweep`` (every file
parsed, curves.parquet written), the same with ``curves="csv"`` (curves.csv, the path ``ladder collect``
took before) and ``launcher.run.metrics.read_metrics`` (json.loads per line) on a sample of the same
files, extrapolated to all of them. ``--cores`` pins this process and its workers to that many cores.
Usage: python bench/collect_curves.py [--runs 10000] [--points 1000] [--cores 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from launcher.analysis.collect import collect_sweep
from launcher.run.metrics import read_metrics

GOAL_S = 5.0
DISTINCT = 64  # distinct curves written; run i gets curve i % DISTINCT (parsing cost does not depend on it)


def _cpu_s() -> float:
    """CPU seconds of this process and its finished children (the collector's worker processes)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def curve_text(rng: np.random.Generator, points: int, n_params: int) -> bytes:
    """One run's metrics.jsonl as ``ladder train`` writes it."""
    flops_per_token = 6 * n_params
    t0 = 1.79e9 + rng.uniform(0, 1e5)
    lines = []
    for step in range(1, points + 1):
        tokens = step * 4096
        record = {
            "step": step,
            "tokens": tokens,
            "flops": tokens * flops_per_token,
            "train_loss": 2.0 + 5.0 * step**-0.3 + rng.normal(0, 0.01),
            "lr": 3e-3 * rng.uniform(0.1, 1),
            "tokens_per_s": rng.uniform(1e4, 2e4),
            "mfu": None,
            "time": t0 + 0.25 * step,
        }
        if step % 20 == 0 or step == points:
            record["val_loss"] = 2.05 + 5.0 * step**-0.3
        lines.append(json.dumps(record, allow_nan=False, separators=(",", ":")))
    return ("\n".join(lines) + "\n").encode()


def make_sweep(root: Path, runs: int, points: int) -> Path:
    rng = np.random.default_rng(0)
    sweep = root / "bench-sweep"
    sizes = [int(n) for n in np.geomspace(1e5, 1e8, DISTINCT)]
    texts = [curve_text(rng, points, n) for n in sizes]
    plan_runs = []
    for i in range(runs):
        name = f"run{i:05d}"
        run_dir = sweep / "runs" / name
        run_dir.mkdir(parents=True)
        (run_dir / "metrics.jsonl").write_bytes(texts[i % DISTINCT])
        (run_dir / "state.json").write_text('{"status": "completed", "exit_code": 0}')
        n = sizes[i % DISTINCT]
        plan_runs.append(
            {
                "name": name,
                "family": "gpt_neox",
                "N": n,
                "N_non_embedding": int(0.9 * n),
                "D": points * 4096,
                "C": 6 * n * points * 4096,
                "budget": None,
            }
        )
    (sweep / "plan.json").write_text(json.dumps({"runs": plan_runs}))
    return sweep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--points", type=int, default=1_000)
    parser.add_argument("--baseline-sample", type=int, default=200, help="files the baseline reads")
    parser.add_argument("--cores", type=int, default=2, help="cores to run on (0: as many as allowed)")
    args = parser.parse_args()
    if args.cores:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.cores])
    root = Path(tempfile.mkdtemp(prefix="collect-bench-"))
    try:
        t = time.perf_counter()
        sweep = make_sweep(root, args.runs, args.points)
        print(
            f"wrote {args.runs} runs x {args.points} points in {time.perf_counter() - t:.1f} s "
            f"({sum(p.stat().st_size for p in sweep.glob('runs/*/metrics.jsonl')) / 1e9:.2f} GB)"
        )

        timed = {}
        for fmt in ("parquet", "csv"):
            t, cpu = time.perf_counter(), _cpu_s()
            collected = collect_sweep(sweep, curves=fmt)
            timed[fmt] = (time.perf_counter() - t, _cpu_s() - cpu, collected.curves_path.stat().st_size)
            n_points = sum(len(c) for c in collected.curves.values())
            assert len(collected.runs) == args.runs and n_points == args.runs * args.points, (
                len(collected.runs),
                n_points,
            )
            assert not collected.skipped, collected.skipped[:3]
        ours, ours_cpu, size = timed["parquet"]
        csv_s, csv_cpu, csv_size = timed["csv"]

        sample = sorted(sweep.glob("runs/*/metrics.jsonl"))[: args.baseline_sample]
        t, cpu = time.perf_counter(), _cpu_s()
        for path in sample:
            read_metrics(path)
        scale = args.runs / len(sample)
        baseline, baseline_cpu = (time.perf_counter() - t) * scale, (_cpu_s() - cpu) * scale
        cores = len(os.sched_getaffinity(0))
        print(
            f"collect_sweep -> curves.parquet: {ours:.2f} s wall, {ours_cpu:.2f} s CPU (all processes) on {cores} "
            f"cores for {args.runs} curves ({n_points} points, {size / 1e9:.3f} GB); goal <= {GOAL_S:.0f} s: "
            f"{'met' if ours <= GOAL_S else 'NOT met'}"
        )
        print(
            f"collect_sweep -> curves.csv (the former path): {csv_s:.2f} s wall, {csv_cpu:.2f} s CPU "
            f"({csv_size / 1e9:.3f} GB); parquet/csv: {ours / csv_s:.2f}x the time, {size / csv_size:.2f}x the size"
        )
        print(
            f"baseline (launcher.run.metrics.read_metrics, json.loads per line, no CSV; {len(sample)} files "
            f"extrapolated): {baseline:.2f} s wall, {baseline_cpu:.2f} s CPU; speed-up {baseline / ours:.1f}x wall, "
            f"{baseline_cpu / ours_cpu:.1f}x CPU"
        )
        load = os.getloadavg()[0]
        if load > os.cpu_count():
            print(
                f"note: load average {load:.1f} on {os.cpu_count()} cores: other processes share the CPUs, "
                f"wall times are inflated"
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
