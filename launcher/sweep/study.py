"""``ladder scaling-study``: the throughput of one model from one node to many, the proposal's scaling figure.

One short run per node count and mode, each a few timed steps after a warm-up:

- weak scaling: the global batch grows with the nodes (the batch of the smallest node count, times
  nodes / smallest), so every rank does the same work per step;
- strong scaling: the global batch stays that of the smallest node count, split over more ranks.

Each run spans its nodes with every device of each (``devices_per_node`` ranks per node). The runs
are a plan like any sweep's (``launcher.sweep.plan.Plan``) and go through the same paths: on a batch
profile the packing, submission, continuation and status of ``launcher.sweep.submit``; on a local
profile the local runner. The runtime times them: ``tokens_per_s`` of every logged step in
metrics.jsonl (validation and checkpoints excluded; rank 0 logs after the step's all-reduce, so a
step's time is that of the slowest rank). The steady steps (after the warm-up) give the point's
median and its spread (min, max).

``scaling.json`` (in ``<sweeps_root>/<study name>/``): schema, model, cluster, flops_per_token,
device_peak_flops, warmup_steps, steps, and ``points``: one per (nodes, mode) with ``nodes``, ``mode``,
``ranks``, ``global_batch_tokens``, ``tokens_per_s`` (median of the steady steps), ``tokens_per_s_lo``,
``tokens_per_s_hi``, ``step_time_s``, ``mfu`` (null without a peak) and ``efficiency``: tokens/s per node
relative to the smallest node count's (weak), or speed-up over the node ratio (strong); and
``checkpoint_write``: the runs' measured checkpoint write speed per node (each run saves once, at its
end; ``launcher.run.checkpoint.write_speed``), null when none was recorded. Beside it
``plots/scaling.png``: tokens/s and parallel efficiency against nodes.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

from launcher.arguments import command_parser
from launcher.config.run import RunConfig, load_run_config
from launcher.errors import UserError
from launcher.files import atomic_write_json
from launcher.identity import content_hash, run_hash
from launcher.policy import ACTIVE
from launcher.run.checkpoint import write_speed
from launcher.run.metrics import METRICS_FILE, read_metrics
from launcher.run.state import read_state
from launcher.schedulers import get_scheduler
from launcher.schedulers.base import FINISHED_JOB_STATES
from launcher.sweep.jobdb import JobDB
from launcher.sweep.plan import Plan, RunSpec, SweepConfig, make_console, override_key
from launcher.sweep.submit import submit_plan, sync

SCALING_FILE = "scaling.json"
SCHEMA = "scaleladder.scaling/1"
MODES = ("weak", "strong")
STUDY_OVERRIDES = (
    "train.log_every=1",
    "train.val_every=1000000",
    "train.val_batches=1",
    "train.checkpoint_every=1000000",
    "wandb.mode=disabled",
)  # time steps, not evaluations


@dataclasses.dataclass(frozen=True)
class Study:
    """What a scaling study measures: one model, its node counts, the steps timed after the warm-up."""

    name: str
    model: str
    nodes: tuple[int, ...]
    steps: int
    warmup: int
    overrides: tuple[str, ...]  # the user's run and cluster overrides

    def __post_init__(self):
        if not self.nodes or any(n < 1 for n in self.nodes) or len(set(self.nodes)) != len(self.nodes):
            raise UserError(f"nodes: give distinct node counts >= 1 (e.g. nodes=1,2,4), got {list(self.nodes)}")
        if self.steps < 1 or self.warmup < 0:
            raise UserError(f"--steps: must be >= 1 and --warmup >= 0, got {self.steps} and {self.warmup}")


def run_name(mode: str, nodes: int, smallest: int) -> str:
    """The run of a point; the smallest node count's is both modes' baseline."""
    return f"base-n{nodes}" if nodes == smallest else f"{mode}-n{nodes}"


def plan_study(study: Study, sweeps_root: str) -> tuple[Plan, RunConfig]:
    """The study's runs as a plan: one per (node count, mode), with its batch and time estimate."""
    from models.family import FAMILIES, model_config  # torch: only when runs are planned

    base = [f"model={study.model}", *STUDY_OVERRIDES, *study.overrides]
    run = load_run_config(base)
    cluster = run.cluster
    entry = FAMILIES[run.model["family"]]
    cfg = model_config(run.model)
    N, N_ne = entry.param_counts(cfg)
    fpt = entry.flops_per_token(cfg)
    smallest = min(study.nodes)
    specs = []
    for mode in MODES:
        for nodes in sorted(study.nodes):
            if mode != MODES[0] and nodes == smallest:
                continue  # both modes start from the same run
            batch = run.train.global_batch_tokens * (nodes // smallest if mode == "weak" else 1)
            if mode == "weak" and nodes % smallest:
                raise UserError(f"nodes: weak scaling needs multiples of the smallest count {smallest}, got {nodes}")
            ranks = nodes * cluster.devices_per_node
            total_steps = study.warmup + study.steps
            D = total_steps * batch
            train = {**dataclasses.asdict(run.train), "tokens": D, "max_steps": None, "global_batch_tokens": batch}
            digest = content_hash(
                [run_hash(run.model, run.data, train, dataclasses.asdict(run.deepspeed), run.seed), nodes, ranks]
            )  # the same config at another world size is another point
            hours = None
            if cluster.device_peak_flops is not None:
                hours = (
                    cluster.run_overhead_min / 60
                    + fpt * D / (ranks * cluster.device_peak_flops * cluster.assumed_mfu) / 3600
                ) * nodes
            specs.append(
                RunSpec(
                    name=run_name(mode, nodes, smallest),
                    sweep=study.name,
                    family=run.model["family"],
                    model=study.model,
                    shape={},
                    N=N,
                    N_non_embedding=N_ne,
                    D=D,
                    C=fpt * D,
                    flops_per_token=fpt,
                    budget=None,
                    steps=total_steps,
                    global_batch_tokens=batch,
                    nodes=nodes,
                    ranks_per_run=ranks,
                    base_overrides=tuple(base),
                    config_hash=digest,
                    est_node_hours=hours,
                )
            )
    sweep = SweepConfig(
        name=study.name,
        kind="ladder",
        model=study.model,
        params=[float(N)],
        tokens=[float(specs[0].D)],
        budget_flops=float(max(s.C for s in specs)),
        calibration_steps=1,
    )
    return Plan(sweep, cluster, Path(sweeps_root) / study.name, specs, []), run


def run_study(plan: Plan, timeout_s: float, echo=lambda line: print(line, file=sys.stderr)) -> None:
    """Train the study's runs: submitted and waited for on a batch profile, by the local runner otherwise."""
    if plan.cluster.scheduler == "local":
        from launcher.sweep.local import run_local_sweep

        end = run_local_sweep(plan, make_console(), over_budget_ok=True)
        if end.stop_signal is not None:
            raise UserError("the scaling study was interrupted; run it again to continue")
        return
    for job, job_id in submit_plan(plan):
        echo(f"submitted {job_id} {job.name}: {len(job.steps)} runs on {job.nodes} nodes")
    scheduler = get_scheduler(plan.cluster)
    deadline = time.monotonic() + timeout_s
    with JobDB(plan.sweep_dir / "jobdb.sqlite") as db:
        while True:
            sync(db, plan.sweep.name, plan.sweep_dir, scheduler)
            runs = db.runs(plan.sweep.name)
            if not any(r.state in ACTIVE for r in runs) and all(
                j.state in FINISHED_JOB_STATES for j in db.jobs(plan.sweep.name)
            ):
                return
            if time.monotonic() > deadline:
                raise UserError(
                    f"--timeout: the study's runs did not end within {timeout_s:g} s "
                    f"({', '.join(f'{r.name} {r.state}' for r in runs)}); `ladder scaling-study` again "
                    "collects them once they end"
                )
            time.sleep(2.0)


def measure(plan: Plan, warmup: int) -> list[dict]:
    """Each run's steady throughput from its metrics.jsonl, and its parallel efficiency."""
    peak = plan.cluster.device_peak_flops
    specs = {spec.name: spec for spec in plan.runs}
    smallest = min(spec.nodes for spec in plan.runs)
    points = []
    for mode, spec in (
        (m, specs[run_name(m, n, smallest)]) for m in MODES for n in sorted({s.nodes for s in plan.runs})
    ):
        path = spec.run_dir(plan.sweep_dir) / METRICS_FILE
        records = read_metrics(path) if path.exists() else []
        steady = [r["tokens_per_s"] for r in records if r["step"] > warmup and r.get("tokens_per_s")]
        if not steady or records[-1]["step"] < spec.steps:
            raise UserError(
                f"run {spec.name}: no steady steps measured ({path}); see its log under {plan.sweep_dir / 'jobs'}"
            )
        tps = statistics.median(steady)
        points.append(
            {
                "nodes": spec.nodes,
                "mode": mode,
                "run": spec.name,
                "ranks": spec.ranks_per_run,
                "global_batch_tokens": spec.global_batch_tokens,
                "tokens_per_s": tps,
                "tokens_per_s_lo": min(steady),
                "tokens_per_s_hi": max(steady),
                "n_steps": len(steady),
                "step_time_s": spec.global_batch_tokens / tps,
                "mfu": tps * spec.flops_per_token / (spec.ranks_per_run * peak) if peak else None,
            }
        )
    for mode in MODES:
        mine = sorted((p for p in points if p["mode"] == mode), key=lambda p: p["nodes"])
        base = mine[0]
        for p in mine:
            p["efficiency"] = (p["tokens_per_s"] / p["nodes"]) / (base["tokens_per_s"] / base["nodes"])
    return points


def plot_scaling(path: Path, points: list[dict], title: str) -> None:
    """Tokens/s (with the ideal line) and parallel efficiency against nodes, weak and strong."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (speed, eff) = plt.subplots(1, 2, figsize=(11, 4.5))
    try:
        for mode, colour in zip(MODES, ("tab:blue", "tab:orange")):
            mine = sorted((p for p in points if p["mode"] == mode), key=lambda p: p["nodes"])
            nodes = [p["nodes"] for p in mine]
            tps = [p["tokens_per_s"] for p in mine]
            err = [
                [t - p["tokens_per_s_lo"] for t, p in zip(tps, mine)],
                [p["tokens_per_s_hi"] - t for t, p in zip(tps, mine)],
            ]
            speed.errorbar(nodes, tps, yerr=err, fmt="o-", color=colour, capsize=3, label=f"{mode} scaling")
            speed.plot(nodes, [tps[0] * n / nodes[0] for n in nodes], ":", color=colour, label=f"{mode}: ideal")
            eff.plot(nodes, [100 * p["efficiency"] for p in mine], "o-", color=colour, label=f"{mode} scaling")
        for ax in (speed, eff):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("nodes")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
        speed.set_yscale("log")
        speed.set_ylabel("training tokens/s (median of steady steps; bars: min-max)")
        eff.set_ylabel("parallel efficiency (%)")
        eff.set_ylim(0, 110)
        speed.set_title(title)
        eff.set_title("Parallel efficiency")
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)


def write_scaling(plan: Plan, run: RunConfig, study: Study, points: list[dict]) -> Path:
    path = plan.sweep_dir / SCALING_FILE
    atomic_write_json(
        path,
        {
            "schema": SCHEMA,
            "model": study.model,
            "cluster": plan.cluster.name,
            "flops_per_token": plan.runs[0].flops_per_token,
            "params": plan.runs[0].N,
            "device_peak_flops": plan.cluster.device_peak_flops,
            "devices_per_node": plan.cluster.devices_per_node,
            "precision": run.train.precision,
            "warmup_steps": study.warmup,
            "steps": study.steps,
            "points": points,
            "checkpoint_write": write_speed(
                (read_state(spec.run_dir(plan.sweep_dir), warn=True), spec.nodes) for spec in plan.runs
            ),
        },
    )
    plot_scaling(plan.sweep_dir / "plots" / "scaling.png", points, f"{study.model} on {plan.cluster.name}: throughput")
    return path


def main(argv: list[str]) -> int:
    parser = command_parser(
        "ladder scaling-study",
        "Time one model's training from one node to many "
        "(weak and strong scaling) and write scaling.json and its plot.",
        [("--json", "print scaling.json")],
        overrides_help="model=<option> cluster=<profile> nodes=1,2,4 [name=<study>] "
        "[sweeps_root=<dir>] [run overrides]",
    )
    parser.add_argument("--steps", type=int, default=5, help="timed steps after the warm-up (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="steps left out of the timing (default 2)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for a batch study's runs")
    args = parser.parse(argv)
    own = {"nodes": None, "name": None, "model": None, "sweeps_root": None}
    rest = []
    for item in args.overrides:
        key = override_key(item)
        if key in own and "=" in item:
            own[key] = item.split("=", 1)[1]
        else:
            rest.append(item)
    if not own["model"] or not own["nodes"]:
        raise UserError("model and nodes: give model=<option> and nodes=<list>, e.g. model=gpt_neox/tiny nodes=1,2,4")
    try:
        nodes = tuple(int(n) for n in own["nodes"].strip("[]").split(","))
    except ValueError:
        raise UserError(
            f"nodes: a comma-separated list of node counts, e.g. nodes=1,2,4; got {own['nodes']!r}"
        ) from None
    cluster = next((o.split("=", 1)[1] for o in rest if override_key(o) == "cluster"), "local")
    name = own["name"] or f"scaling-{cluster}-{own['model'].replace('/', '_')}"
    study = Study(name, own["model"], nodes, args.steps, args.warmup, tuple(rest))
    root = own["sweeps_root"] or load_run_config([]).sweeps_root
    plan, run = plan_study(study, root)
    run_study(plan, args.timeout)
    path = write_scaling(plan, run, study, measure(plan, study.warmup))
    data = json.loads(path.read_text())
    if args.json:
        print(json.dumps(data, indent=1))
    else:
        for p in data["points"]:
            print(
                f"{p['mode']:>6} {p['nodes']:>4} nodes: {p['tokens_per_s']:.4g} tokens/s "
                f"[{p['tokens_per_s_lo']:.4g}, {p['tokens_per_s_hi']:.4g}], efficiency {100 * p['efficiency']:.1f}%"
            )
        print(f"-> {path}")
    return 0
