"""``ladder submit --target``: the projection (``ladder project``) turned into one run of the same sweep.

The run is the projection's shape (the family's shape solver at the law's N_opt) trained for the
projection's compute C, with these rules, each anchored at the sweep's largest run (the reference:
the batch and learning rate the ladder trained with at the largest compute it has):

- global batch B = B_ref x (C / C_ref)^0.3271 and peak learning rate lr = lr_ref x (C / C_ref)^-0.125:
  the exponents of the compute-optimal batch and learning-rate laws of DeepSeek LLM (Bi et al. 2024,
  B_opt = 0.292 C^0.3271, lr_opt = 0.3118 C^-0.125); B rounds to whole micro-batches of every rank
  (at least one), and D = C / flops_per_token rounds to whole batches of B;
- the schedule: the sweep's (cosine; one whole WSD run when the sweep is a WSD sweep);
- the checkpoint interval: Young's optimal interval sqrt(2 x write time x interval between failures)
  (Young 1974), with the checkpoint's write time of the projection (measured, or assumed and said
  so) and one failure per job's training time: the walltime warning saves the run at every job's end,
  periodic checkpoints bound what a crash inside a job loses. In steps at the projected step time.

The run is recorded in the sweep's job database with role ``target`` (collect keeps it out of every
fit), submitted like any run (packed, with continuations, ``launcher.sweep.submit``), logged to the
sweep's W&B group, and described in ``target.json`` (the run, the rules' numbers, the projection it
came from), which the report reads to show the run's final loss beside the projected loss and interval.
Submitting again continues the recorded target run; a different ``--target-flops`` makes a new one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Optional

from launcher.analysis.project import PROJECTION_FILE, SCALING_FILE, project, write_projection
from launcher.analysis.report import TARGET_FILE
from launcher.config.cluster import ClusterProfile
from launcher.config.run import load_run_config
from launcher.errors import UserError
from launcher.files import atomic_write_json
from launcher.identity import config_hash, content_hash
from launcher.numbers import si
from launcher.schedulers import REGISTRY
from launcher.schedulers.base import BatchJob
from launcher.sweep.jobdb import JobDB
from launcher.sweep.plan import RunSpec, compose_sweep, merge_overrides, read_plan
from launcher.sweep.submit import submit_runs

BATCH_EXPONENT = 0.3271  # B_opt ∝ C^0.3271 (DeepSeek LLM, Bi et al. 2024)
LR_EXPONENT = -0.1250  # lr_opt ∝ C^-0.125 (same fit)


def reference_run(plan: dict) -> dict:
    """The sweep's planned run of the largest compute (a WSD trunk has no point; a target is not the ladder)."""
    runs = [r for r in plan.get("runs") or [] if r.get("role", "run") in ("run", "branch")]
    if not runs:
        raise UserError("plan.json: no runs; the target run is scaled from the sweep's runs (plan the sweep first)")
    return max(runs, key=lambda r: r["C"])


def target_spec(sweep_name: str, sweep_dir: Path, plan: dict, projection: dict, cluster: ClusterProfile) -> dict:
    """The target run (module docstring) as target.json's content: its RunSpec and each rule's numbers."""
    from models.family import FAMILIES, model_config  # torch: only when a run is made

    ref = reference_run(plan)
    base = merge_overrides([f"model={ref['model']}"], ref.get("base_overrides") or [])
    run = load_run_config(base)
    entry = FAMILIES[run.model["family"]]
    cfg = model_config({**run.model, **projection["shape"]})
    N, N_non_embedding = entry.param_counts(cfg)
    fpt = entry.flops_per_token(cfg)
    nodes = int(projection["nodes"])
    ranks = nodes * cluster.devices_per_node
    C, C_ref = float(projection["C"]), float(ref["C"])
    quantum = ranks * run.train.micro_batch_size * entry.tokens_per_sample(cfg)
    batch_raw = ref["global_batch_tokens"] * (C / C_ref) ** BATCH_EXPONENT
    batch = max(quantum, round(batch_raw / quantum) * quantum)
    steps = max(1, round(C / fpt / batch))
    lr = run.train.lr * (C / C_ref) ** LR_EXPONENT
    step_s = batch * fpt / (projection["node_flops_per_s"] * nodes)
    job_s = projection["train_hours_per_job"] * 3600.0
    interval_s = math.sqrt(2.0 * projection["checkpoint_write_s"] * job_s)
    checkpoint_every = max(1, min(steps, math.floor(interval_s / step_s)))
    schedule = (plan.get("sweep") or {}).get("schedule") or "cosine"
    train = [f"train.lr={lr!r}", f"train.checkpoint_every={checkpoint_every}"]
    train += ["train.schedule=wsd"] if schedule == "wsd" else []
    D = steps * batch
    name = f"target-n{si(N, giga='G')}-d{si(D, giga='G')}"
    draft = RunSpec(
        name=name,
        sweep=sweep_name,
        family=entry.name,
        model=ref["model"],
        shape=dict(projection["shape"]),
        N=N,
        N_non_embedding=N_non_embedding,
        D=D,
        C=fpt * D,
        flops_per_token=fpt,
        budget=C,
        steps=steps,
        global_batch_tokens=batch,
        nodes=nodes,
        ranks_per_run=ranks,
        base_overrides=tuple(merge_overrides(base, train)),
        config_hash="",
        est_node_hours=projection["node_hours"] * fpt * D / projection["flops"],
        role="target",
    )
    resolved = load_run_config(draft.overrides(sweep_dir))
    spec = dataclasses.replace(draft, config_hash=content_hash([config_hash(resolved), ranks]))
    return {
        "run": spec.to_json(),
        "rules": {
            "reference_run": ref["name"],
            "reference_C": C_ref,
            "reference_global_batch_tokens": ref["global_batch_tokens"],
            "reference_lr": run.train.lr,
            "batch_exponent": BATCH_EXPONENT,
            "lr_exponent": LR_EXPONENT,
            "global_batch_tokens_unrounded": batch_raw,
            "batch_quantum_tokens": quantum,
            "lr": lr,
            "schedule": "wsd" if schedule == "wsd" else run.train.schedule,
            "step_time_s": step_s,
            "checkpoint_write_s": projection["checkpoint_write_s"],
            "train_s_per_job": job_s,
            "checkpoint_interval_s": interval_s,
            "checkpoint_every": checkpoint_every,
        },
        "projection": projection,
    }


def recorded_target(sweep_dir: Path, cluster: ClusterProfile, target_flops: Optional[float]) -> Optional[dict]:
    """target.json when it describes the target asked for (same profile, same C or none given)."""
    try:
        record = json.loads((sweep_dir / TARGET_FILE).read_text())
    except (OSError, ValueError):
        return None
    projection = record.get("projection") or {}
    same_c = target_flops is None or math.isclose(projection.get("C") or 0.0, target_flops, rel_tol=1e-9)
    return record if same_c and projection.get("cluster") == cluster.name else None


def submit_target(overrides: list[str], target_flops: Optional[float], nodes: int) -> list[tuple[BatchJob, str]]:
    """Make (or take up again) the sweep's target run and submit it with continuations."""
    sweep, cluster, sweep_dir = compose_sweep(overrides)
    if cluster.scheduler not in REGISTRY:
        raise UserError(
            f"cluster: the target run is submitted to a batch scheduler; profile {cluster.name} has "
            f"scheduler {cluster.scheduler} (allowed: {', '.join(sorted(REGISTRY))})"
        )
    sweep_dir = sweep_dir.resolve()
    plan = read_plan(sweep_dir)
    record = recorded_target(sweep_dir, cluster, target_flops)
    if record is None:
        if target_flops is None:
            projection_path = sweep_dir / PROJECTION_FILE
            if not projection_path.exists():
                raise UserError(
                    f"--target-flops: sweep {sweep.name} has no {PROJECTION_FILE}; run ladder project "
                    "first or give the target's FLOPs"
                )
            projection = json.loads(projection_path.read_text())
            if projection.get("cluster") != cluster.name:
                raise UserError(
                    f"cluster: {projection_path} projects the run on {projection.get('cluster')}, not "
                    f"{cluster.name}; run ladder project for {cluster.name} or give --target-flops"
                )
        else:
            scaling = sweep_dir / SCALING_FILE
            projection = project(sweep_dir, cluster, target_flops=target_flops, nodes=nodes, scaling_path=scaling)
            write_projection(sweep_dir, projection, scaling if scaling.exists() else None)
        record = target_spec(sweep.name, sweep_dir, plan, projection, cluster)
        atomic_write_json(sweep_dir / TARGET_FILE, record)
    spec = RunSpec.from_json(record["run"], f"{sweep_dir / TARGET_FILE}: run")
    with JobDB(sweep_dir / "jobdb.sqlite") as db:
        recorded = db.sweep_config(sweep.name) or plan
    runs_on = (recorded.get("cluster") or {}).get("scheduler")
    sweep_record = recorded if runs_on in REGISTRY else {**recorded, "cluster": dataclasses.asdict(cluster)}
    rules = record["rules"]
    print(
        f"target run {spec.name}: N = {spec.N:,}, D = {spec.D:,} tokens in {spec.steps} steps of "
        f"{spec.global_batch_tokens} tokens, lr {rules['lr']:.4g}, checkpoint every {rules['checkpoint_every']} "
        f"steps, {spec.ranks_per_run} ranks on {spec.nodes} nodes",
        file=sys.stderr,
    )
    return submit_runs(sweep.name, sweep_dir, cluster, [spec], sweep_record)
