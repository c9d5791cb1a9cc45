"""Calibration: short real ``ladder train`` runs that measure how fast a sweep's runs train here.

The planner (``launcher.sweep.plan``) starts nothing; when the cluster profile gives no device peak,
the commands that need node-hours (``ladder plan``, ``ladder sweep``, ``ladder submit``, ``ladder render``)
plan through ``calibrated_plan``, which hands the planner ``measure_throughput``.
"""

from __future__ import annotations

import functools
import json
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from launcher.errors import UserError
from launcher.files import atomic_write_json
from launcher.run.metrics import METRICS_FILE, read_metrics
from launcher.schedulers.local import LocalProcess, parallel_slots
from launcher.sweep.plan import Plan, RunSpec, SweepSetup, Throughput, build_plan, merge_overrides


def calibrated_plan(overrides: list[str], calibrate: bool = True, echo: Callable[[str], None] = print) -> Plan:
    """``build_plan``, measuring the speed with calibration runs when the profile has no peak and ``calibrate``."""
    return build_plan(overrides, functools.partial(measure_throughput, echo=echo) if calibrate else None)


CALIBRATION_FILE = "calibration.json"


def measure_throughput(setup: SweepSetup, specs: list[RunSpec], echo: Callable[[str], None] = print) -> Throughput:
    """Measure one run's FLOP/s with short ``ladder train`` runs of the smallest and largest model.

    Results are cached in ``<sweep_dir>/calibration.json`` by the run's config hash, the profile and
    the cores per run, so planning again costs nothing. The calibration runs use the sweep's own
    parallelism (``max_parallel_runs``), so the speed is the one a busy node gives.
    """
    cluster, sweep = setup.cluster, setup.sweep
    slots = parallel_slots(cluster.max_parallel_runs, cluster.cores_per_run)
    starts = [s for s in specs if s.parent is None]  # a branch needs its trunk's checkpoint
    probes = {s.config_hash: s for s in (min(starts, key=lambda s: s.N), max(starts, key=lambda s: s.N))}
    cache_path = setup.sweep_dir / CALIBRATION_FILE
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    keys = {h: f"{h}-{cluster.name}-{cluster.cores_per_run}c-{sweep.calibration_steps}s" for h in probes}
    todo = [spec for h, spec in probes.items() if keys[h] not in cache]
    for start in range(0, len(todo), slots):
        batch = todo[start : start + slots]
        echo(f"calibrating: {', '.join(s.name for s in batch)} ({sweep.calibration_steps} steps each)")
        procs = []
        for spec in batch:
            run_dir = setup.sweep_dir / "calibration" / spec.name
            shutil.rmtree(run_dir, ignore_errors=True)  # a stale measurement (another config): a run_dir holds one run
            overrides = merge_overrides(
                spec.overrides(setup.sweep_dir),
                [
                    f"run_dir={run_dir}",
                    f"train.max_steps={sweep.calibration_steps}",
                    "resume=false",
                    "wandb.mode=disabled",
                    f"train.val_every={10**9}",
                    f"train.checkpoint_every={10**9}",
                ],
            )
            log = setup.sweep_dir / "calibration" / f"{spec.name}.log"
            procs.append(
                (
                    spec,
                    run_dir,
                    log,
                    time.monotonic(),
                    LocalProcess.start(overrides, log, cluster.cores_per_run, spec.ranks_per_run),
                )
            )
        for spec, run_dir, log, began, proc in procs:
            code = proc.wait()
            wall = time.monotonic() - began
            if code != 0:
                raise UserError(
                    f"calibration run {spec.name} failed (exit {code}); see {log}, or plan with --no-calibrate"
                )
            cache[keys[spec.config_hash]] = {"N": spec.N, **_calibration_result(spec, run_dir, wall)}
        atomic_write_json(cache_path, cache)
    measured = [cache[keys[h]] for h in probes]
    return Throughput(
        "measured",
        tuple((m["N"], m["flops_per_s"]) for m in measured),
        runs_per_node=float(slots),
        overhead_s=max(m["overhead_s"] for m in measured),
    )


def _calibration_result(spec: RunSpec, run_dir: Path, wall_s: float) -> dict:
    """FLOP/s over the steady steps (the first step pays for warm-up) and the run's fixed overhead."""
    path = run_dir / METRICS_FILE
    records = read_metrics(path) if path.exists() else []
    steady = [r for r in records if r.get("step", 0) > 1 and r.get("tokens_per_s")]
    if not steady:
        raise UserError(
            f"calibration run {spec.name}: metrics.jsonl has no steady steps to measure; raise sweep.calibration_steps"
        )
    tokens_per_s = statistics.median(r["tokens_per_s"] for r in steady)
    train_s = spec.global_batch_tokens * len(records) / tokens_per_s
    return {
        "tokens_per_s": tokens_per_s,
        "flops_per_s": tokens_per_s * spec.flops_per_token,
        "overhead_s": max(0.0, wall_s - train_s),
        "wall_s": wall_s,
        "steps": len(records),
    }
