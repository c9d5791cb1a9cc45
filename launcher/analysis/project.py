"""``ladder project``: from a sweep's fitted law to the target run and the node-hours to ask for.

Given a target (``--target-flops C``, or ``--node-hours H``, which buys C = H x the speed of a node)
and a site profile, the projection is:

- the law's compute-optimal N, D and loss at C: fit.json's recommendation. When fit.json was fitted
  for another budget, the sweep is fitted again for C (as ``ladder fit --budget-flops C`` does), so
  fit.json, the report's frontier and the projection always agree; the loss is a projection beyond
  the sweep, with the fit's bootstrap interval.
- a shape of about N parameters from the family's shape solver (``models.family``, with the sweep's
  aspect ratio and head size), trained on D = C / flops_per_token(shape) tokens in whole global
  batches of the sweep's size: training FLOPs by the family's exact count beside 6·N·D.
- the speed of one node at K nodes: measured by ``ladder scaling-study`` (``scaling.json``: the
  weak-scaling point at K nodes, else the largest measured one, as FLOP/s of the study's model, with
  its per-step spread), or the profile's ``device_peak_flops x assumed_mfu`` with perfect scaling,
  said so in ``speed_source``.
- node-hours = exact FLOPs / (3600 x FLOP/s per node), with an interval that joins the speed's
  spread and the law's uncertainty: the compute that reaches the projected loss when the frontier's
  loss is at its band's edge, at the frontier's local slope d ln L / d ln C around C
  (C_edge = C x (L / L_edge)^(1 / slope)).
- wall time at K nodes, and the jobs that is in the queue bin of K nodes: each job trains for its
  walltime less the warning, the job's set-up and the run's restart (``PackPolicy``), and continues.
- the checkpoint (weights at the profile's precision, an fp32 master copy when that is not fp32, and
  Adam's two fp32 moments: 12 or 14 bytes per parameter), the time to write it at the write speed of
  one node (``--write-gb-s`` when given; else measured on the profile: the scaling study's runs, else
  the sweep's own runs when it ran on that profile, each from the writes its state.json records; else
  an assumed 1 GB/s, said so in ``write_speed_source``), and how many such writes fit in the walltime
  warning's window.
- the sweep's own cost so far: the FLOPs its runs computed and the node-hours the plan estimated
  for the part of each run that was done.

``projection.json`` holds all of it (keys ``N``, ``D``, ``loss``, ``loss_lo``, ``loss_hi``, ``node_hours``,
``node_hours_lo``, ``node_hours_hi``, ``jobs``, ``flops`` are a contract), and ``proposal.md`` the same
as text a consortium can paste, with the report's figures.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path
from typing import Optional

from launcher.analysis.collect import Collected, collect_sweep, resolve_sweep_dir
from launcher.analysis.fitting import FIT_FILE, fit_sweep_dir
from launcher.analysis.report import PLOTS_DIR, write_report
from launcher.arguments import command_parser
from launcher.config.cluster import ClusterProfile
from launcher.config.compose import compose
from launcher.config.run import load_run_config
from launcher.config.validate import validate
from launcher.errors import UserError
from launcher.files import atomic_write, atomic_write_json
from launcher.numbers import sci, si
from launcher.run.checkpoint import write_speed
from launcher.run.state import read_state
from launcher.sweep.pack import PackPolicy
from launcher.sweep.plan import SweepConfig, merge_overrides, read_plan

PROJECTION_FILE = "projection.json"
PROPOSAL_FILE = "proposal.md"
SCALING_FILE = "scaling.json"
SCHEMA = "scaleladder.projection/1"
WRITE_GB_S = 1.0  # assumed checkpoint write bandwidth of one node to the parallel file system, GB/s
BYTES_PER_PARAM = {"fp32": 4, "bf16": 2, "fp16": 2}  # the weights as trained
OPTIMIZER_BYTES_PER_PARAM = 8  # Adam's two fp32 moments
MASTER_BYTES_PER_PARAM = 4  # the fp32 master copy mixed precision keeps


# --------------------------------------------------------------------------------------------- speed


@dataclasses.dataclass(frozen=True)
class NodeSpeed:
    """Training FLOP/s of one node when the run spans ``nodes`` nodes, with its spread, and where it came from."""

    flops_per_s: float
    lo: float
    hi: float
    source: str

    @classmethod
    def from_scaling(cls, scaling: dict, nodes: int, path: Path) -> NodeSpeed:
        """The weak-scaling point at ``nodes`` (else the largest measured below it) of a scaling study."""
        weak = sorted(
            (p for p in scaling.get("points", []) if p.get("mode") == "weak" and p.get("tokens_per_s")),
            key=lambda p: p["nodes"],
        )
        fpt = scaling.get("flops_per_token")
        if not weak or not fpt:
            raise UserError(
                f"{path}: no weak-scaling point with tokens_per_s and no flops_per_token; "
                f"run ladder scaling-study again"
            )
        below = [p for p in weak if p["nodes"] <= nodes] or weak[:1]
        point = below[-1]
        per_node = fpt / point["nodes"]
        where = f"measured at {point['nodes']} nodes" + (
            "" if point["nodes"] == nodes else f" (the largest measured up to {nodes}; assumed to hold at {nodes})"
        )
        return cls(
            point["tokens_per_s"] * per_node,
            point.get("tokens_per_s_lo", point["tokens_per_s"]) * per_node,
            point.get("tokens_per_s_hi", point["tokens_per_s"]) * per_node,
            f"scaling study {path} ({scaling.get('model')}): {where}; the target is assumed to reach the "
            f"study model's FLOP/s",
        )

    @classmethod
    def from_peak(cls, cluster: ClusterProfile) -> NodeSpeed:
        if cluster.device_peak_flops is None:
            raise UserError(
                f"cluster.device_peak_flops: profile {cluster.name} has none and there is no "
                f"{SCALING_FILE}; run ladder scaling-study or give the peak"
            )
        value = cluster.devices_per_node * cluster.device_peak_flops * cluster.assumed_mfu
        return cls(
            value,
            value,
            value,
            f"assumed: {cluster.devices_per_node} x device_peak_flops "
            f"{sci(cluster.device_peak_flops)} x assumed_mfu {cluster.assumed_mfu:g} "
            f"per node, perfect scaling; not measured",
        )


def checkpoint_write_speed(
    cluster: ClusterProfile, scaling_path: Optional[Path], sweep_dir: Path, plan: dict, given: Optional[float]
) -> tuple[float, str]:
    """The checkpoint write speed of one node in GB/s and where it came from (module docstring)."""
    if given is not None:
        return given, "given (--write-gb-s)"
    scaling = json.loads(scaling_path.read_text()) if scaling_path is not None and scaling_path.exists() else {}
    study = scaling.get("checkpoint_write")
    if study:
        return study["bytes_per_s_per_node"] / 1e9, (
            f"measured on {cluster.name}: the median of {study['runs']} scaling-study runs ({study['writes']} writes)"
        )
    if (plan.get("cluster") or {}).get("name") == cluster.name:
        swept = write_speed(
            (read_state(sweep_dir / "runs" / r["name"], warn=True), r.get("nodes", 1)) for r in plan.get("runs") or []
        )
        if swept:
            return swept["bytes_per_s_per_node"] / 1e9, (
                f"measured on {cluster.name}: the median of the sweep's {swept['runs']} runs ({swept['writes']} writes)"
            )
    return WRITE_GB_S, f"assumed ({WRITE_GB_S:g} GB/s per node; not measured on {cluster.name})"


def node_speed(cluster: ClusterProfile, nodes: int, scaling_path: Optional[Path]) -> NodeSpeed:
    """Measured where a scaling study of this profile exists, else the profile's assumption."""
    if scaling_path is not None and scaling_path.exists():
        scaling = json.loads(scaling_path.read_text())
        if scaling.get("cluster") not in (None, cluster.name):
            raise UserError(
                f"--scaling: {scaling_path} was measured on cluster {scaling.get('cluster')}, not {cluster.name}"
            )
        return NodeSpeed.from_scaling(scaling, nodes, scaling_path)
    return NodeSpeed.from_peak(cluster)


# ------------------------------------------------------------------------------------------ the law


def law_at(sweep_dir: Path, C: float, collected: Collected) -> dict:
    """fit.json's recommendation at C, fitting the sweep again for C when fit.json was fitted for another budget."""
    try:
        fit = json.loads((sweep_dir / FIT_FILE).read_text())
    except (OSError, ValueError):
        fit = {}
    rec = fit.get("recommendation") or {}
    inputs = fit.get("inputs") or {}
    if "error" in fit or rec.get("C") is None or not math.isclose(rec["C"], C, rel_tol=1e-9):
        fit = fit_sweep_dir(
            sweep_dir, C, n_boot=inputs.get("n_boot", 100), seed=inputs.get("seed", 0), collected=collected
        )
        rec = fit.get("recommendation") or {}
    if "error" in fit or "error" in rec:
        raise UserError(
            f"sweep {sweep_dir.name}: the fit gives no recommendation at C = {sci(C)}: "
            f"{fit.get('error') or rec.get('error')}"
        )
    return fit


def frontier_slope(fit: dict, C: float) -> float:
    """d ln(loss) / d ln C of the recommending law's frontier at C (the grid segment ending at C)."""
    frontier = fit["frontier"]
    grid, loss = frontier["C"], frontier[fit["recommendation"]["source"]]["loss"]
    pairs = [(c, y) for c, y in zip(grid, loss) if c is not None and y is not None and c <= C * (1 + 1e-9)]
    if len(pairs) < 2:
        raise UserError(f"fit.json: the frontier has fewer than 2 points up to C = {sci(C)}")
    (c0, l0), (c1, l1) = pairs[-2], pairs[-1]
    return math.log(l1 / l0) / math.log(c1 / c0)


def compute_for_loss(C: float, loss: float, edge: Optional[float], slope: float) -> Optional[float]:
    """The compute at which a frontier whose loss at C is ``edge`` reaches ``loss`` (local power law)."""
    if edge is None or slope >= 0:
        return None
    return C * (loss / edge) ** (1.0 / slope)


# ------------------------------------------------------------------------------------------ the run


@dataclasses.dataclass(frozen=True)
class TargetShape:
    """The solved model of the target run and its exact counts."""

    model: str
    shape: dict
    N: int
    N_non_embedding: int
    flops_per_token: int
    global_batch_tokens: int


def solve_target(plan: dict, N_opt: float) -> TargetShape:
    """A shape of about ``N_opt`` parameters of the sweep's model family, with the sweep's solver settings."""
    from models.family import FAMILIES, model_config  # torch: only when a shape is solved

    runs = plan.get("runs") or []
    if not runs:
        raise UserError("plan.json: no runs; the projection needs the sweep's model (plan the sweep first)")
    first = runs[0]
    defaults = {f.name: f.default for f in dataclasses.fields(SweepConfig) if f.default is not dataclasses.MISSING}
    sweep = {**defaults, **(plan.get("sweep") or {})}
    model = first["model"]  # the base model option every run of the sweep overrides
    run = load_run_config(merge_overrides([f"model={model}"], first.get("base_overrides") or []))
    base = {k: v for k, v in run.model.items() if k != "family"}
    entry = FAMILIES[run.model["family"]]
    try:
        shape = entry.solve(int(round(N_opt)), base, sweep["aspect_ratio"], sweep["head_size"], sweep["count"])
        cfg = model_config({**run.model, **shape})
    except ValueError as exc:
        raise UserError(str(exc)) from None
    total, non_embedding = entry.param_counts(cfg)
    return TargetShape(
        model, shape, total, non_embedding, entry.flops_per_token(cfg), int(first["global_batch_tokens"])
    )


def checkpoint_bytes(N: int, precision: str) -> int:
    """Weights as trained, the fp32 master copy of mixed precision, Adam's two moments."""
    master = 0 if precision == "fp32" else MASTER_BYTES_PER_PARAM
    return N * (BYTES_PER_PARAM[precision] + master + OPTIMIZER_BYTES_PER_PARAM)


def jobs_for(wall_h: float, nodes: int, cluster: ClusterProfile) -> dict:
    """How many jobs of the queue bin of ``nodes`` nodes the run takes, each continuing the last."""
    policy = PackPolicy.from_profile(cluster)
    bin_ = policy.bin_for(nodes)
    train_h = policy.lane_hours(bin_) - policy.run_overhead_h
    if train_h <= 0:
        raise UserError(
            f"cluster.queue_bins: a {nodes}-node job of {policy.walltime_min(bin_)} min leaves no time "
            "to train after the warning, the job's set-up and the run's restart"
        )
    return {
        "bin": {"max_nodes": bin_.max_nodes, "max_walltime_min": bin_.max_walltime_min},
        "walltime_min": policy.walltime_min(bin_),
        "train_hours_per_job": train_h,
        "jobs": max(1, math.ceil(wall_h / train_h - 1e-9)),
    }


def sweep_cost(collected: Collected, plan: dict) -> dict:
    """What the sweep has spent: FLOPs its runs computed and the plan's node-hours for the part done."""
    planned = {r["name"]: r for r in plan.get("runs") or []}
    flops = sum(r.C or 0.0 for r in collected.runs)
    hours = 0.0
    for r in collected.runs:
        spec = planned.get(r.name) or {}
        if spec.get("est_node_hours") and spec.get("D"):
            hours += spec["est_node_hours"] * min(1.0, (r.D or 0.0) / spec["D"])
    return {
        "flops": flops,
        "est_node_hours": hours if any(p.get("est_node_hours") for p in planned.values()) else None,
        "runs": len(collected.runs),
    }


def project(
    sweep_dir: Path,
    cluster: ClusterProfile,
    *,
    target_flops: Optional[float] = None,
    node_hours: Optional[float] = None,
    nodes: int = 1,
    scaling_path: Optional[Path] = None,
    write_gb_s: Optional[float] = None,
) -> dict:
    """The projection (module docstring) as projection.json's content."""
    if (target_flops is None) == (node_hours is None):
        raise UserError("give exactly one of --target-flops C or --node-hours H")
    for name, value in (("--target-flops", target_flops), ("--node-hours", node_hours), ("--write-gb-s", write_gb_s)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise UserError(f"{name}: must be a positive number, got {value}")
    if nodes < 1:
        raise UserError(f"--nodes: must be >= 1, got {nodes}")
    speed = node_speed(cluster, nodes, scaling_path)
    if target_flops is not None:
        C = target_flops
    else:
        assert node_hours is not None  # exactly one of the two, checked above
        C = node_hours * 3600.0 * speed.flops_per_s
    plan = read_plan(sweep_dir)
    collected = collect_sweep(sweep_dir)
    fit = law_at(sweep_dir, C, collected)
    rec = fit["recommendation"]
    target = solve_target(plan, rec["N_opt"])
    batches = max(1, round(C / target.flops_per_token / target.global_batch_tokens))
    D = batches * target.global_batch_tokens
    flops = target.flops_per_token * D
    loss, (loss_lo, loss_hi) = rec["predicted_loss"], rec["predicted_loss_ci"]
    slope = frontier_slope(fit, C)
    c_lo, c_hi = (compute_for_loss(C, loss, edge, slope) for edge in (loss_lo, loss_hi))
    hours = flops / speed.flops_per_s / 3600.0
    hours_lo = flops * (c_lo or C) / C / speed.hi / 3600.0
    hours_hi = flops * (c_hi or C) / C / speed.lo / 3600.0
    wall_h = hours / nodes
    queue = jobs_for(wall_h, nodes, cluster)
    ckpt = checkpoint_bytes(target.N, cluster.precision)
    write_gb_s, write_source = checkpoint_write_speed(cluster, scaling_path, sweep_dir, plan, write_gb_s)
    write_s = ckpt / (write_gb_s * 1e9 * nodes)
    return {
        "schema": SCHEMA,
        "sweep": sweep_dir.name,
        "cluster": cluster.name,
        "nodes": nodes,
        "C": C,
        "target": "flops" if target_flops is not None else "node_hours",
        "N": target.N,
        "N_non_embedding": target.N_non_embedding,
        "N_opt": rec["N_opt"],
        "N_opt_ci": rec["N_opt_ci"],
        "D_opt": rec["D_opt"],
        "D_opt_ci": rec["D_opt_ci"],
        "model": target.model,
        "shape": target.shape,
        "global_batch_tokens": target.global_batch_tokens,
        "D": D,
        "tokens_per_param": D / target.N,
        "flops_per_token": target.flops_per_token,
        "flops": flops,
        "flops_6nd": 6.0 * target.N * D,
        "loss": loss,
        "loss_lo": loss_lo,
        "loss_hi": loss_hi,
        "law": rec["source"],
        "loss_is": "beyond the sweep's largest run"
        if C > max((r.C or 0.0) for r in collected.in_fit)
        else "within the sweep's compute",
        "frontier_slope": slope,
        "compute_for_loss_lo": c_lo,
        "compute_for_loss_hi": c_hi,
        "speed_source": speed.source,
        "node_flops_per_s": speed.flops_per_s,
        "node_flops_per_s_lo": speed.lo,
        "node_flops_per_s_hi": speed.hi,
        "node_hours": hours,
        "node_hours_lo": hours_lo,
        "node_hours_hi": hours_hi,
        "wall_hours": wall_h,
        **queue,
        "checkpoint_bytes": ckpt,
        "checkpoint_write_s": write_s,
        "write_gb_s_per_node": write_gb_s,
        "write_speed_source": write_source,
        "signal_before_s": cluster.signal_before,
        "checkpoints_in_warning": math.floor(cluster.signal_before / write_s),
        "sweep_cost": sweep_cost(collected, plan),
    }


# --------------------------------------------------------------------------------------- proposal


def _hours(value: Optional[float]) -> str:
    return f"{value:,.4g}" if value is not None else "n/a"


def proposal_text(p: dict, figures: list[tuple[str, str]]) -> str:
    """proposal.md: the projection in sentences, each number beside where it came from."""
    cost = p["sweep_cost"]
    spent = f"{sci(cost['flops'])} FLOPs over {cost['runs']} runs" + (
        f", about {_hours(cost['est_node_hours'])} node-hours as planned" if cost["est_node_hours"] is not None else ""
    )
    lines = [
        f"# Compute request: {p['sweep']} on {p['cluster']}",
        "",
        "## Science case",
        "",
        f"A scaling-law sweep ({p['sweep']}: {spent}) was fitted with the {p['law']} law. At a training budget of "
        f"C = {sci(p['C'])} FLOPs it puts the compute-optimal model at N_opt = {si(p['N_opt'])} parameters "
        f"(95% bootstrap interval {si(p['N_opt_ci'][0])} to {si(p['N_opt_ci'][1])}) on D_opt = {si(p['D_opt'])} "
        f"tokens. We propose to train a {p['model']} of N = {p['N']:,} parameters (shape "
        f"{', '.join(f'{k}={v}' for k, v in p['shape'].items())}) on D = {p['D']:,} tokens "
        f"({p['tokens_per_param']:.3g} tokens per parameter).",
        "",
        f"**Projected loss: {p['loss']:.4g}** (95% interval {p['loss_lo']:.4g} to {p['loss_hi']:.4g}); "
        f"this is a projection of the fitted law, {p['loss_is']}, not a measurement.",
        "",
        "## Compute",
        "",
        f"- Training FLOPs: {sci(p['flops'])} by the model's exact count ({sci(p['flops_per_token'])} FLOPs per "
        f"token x D); 6ND gives {sci(p['flops_6nd'])}.",
        f"- Speed: {sci(p['node_flops_per_s'])} FLOP/s per node ({p['speed_source']}).",
        f"- Node-hours: **{_hours(p['node_hours'])}** (interval {_hours(p['node_hours_lo'])} to "
        f"{_hours(p['node_hours_hi'])}: the speed's spread and the compute at which the law's loss band "
        f"reaches the projected loss, at the frontier's local slope {p['frontier_slope']:.3g}).",
        f"- At {p['nodes']} nodes: {p['wall_hours']:.3g} h of wall time, {p['jobs']} jobs of "
        f"{p['walltime_min']} min in the queue bin of up to {p['bin']['max_nodes']} nodes, each continuing the "
        f"last from its checkpoint ({p['train_hours_per_job']:.3g} h of training per job).",
        f"- Checkpoint: {si(p['checkpoint_bytes'], 'B', giga='G')} (weights, optimizer state); at "
        f"{p['write_gb_s_per_node']:.3g} GB/s per node ({p['write_speed_source']}) it takes "
        f"{p['checkpoint_write_s']:.3g} s to write, "
        f"{p['checkpoints_in_warning']} such writes fit in the {p['signal_before_s']} s between the walltime "
        f"warning and the walltime"
        + (
            "."
            if p["checkpoints_in_warning"]
            else f": **none does**; the warning must come at least "
            f"{math.ceil(p['checkpoint_write_s'])} s before the walltime (cluster.signal_before_s), or the "
            "writes be faster, for a job to end on a checkpoint."
        ),
        f"- Already spent on the ladder: {spent}.",
        "",
    ]
    if figures:
        lines += ["## Figures", ""] + [f"![{title}]({path})" for title, path in figures] + [""]
    lines += ["Every number above is in projection.json beside this file; fit.json holds the law it comes from.", ""]
    return "\n".join(lines)


def write_projection(sweep_dir: Path, projection: dict, scaling_path: Optional[Path]) -> tuple[Path, Path]:
    """projection.json, the report's figures refreshed, the scaling figure copied in, proposal.md."""
    write_report(sweep_dir, wandb_mode="disabled")
    plots = sweep_dir / PLOTS_DIR
    if scaling_path is not None and (scaling_path.parent / PLOTS_DIR / "scaling.png").exists():
        shutil.copyfile(scaling_path.parent / PLOTS_DIR / "scaling.png", plots / "scaling.png")
    figures = [
        (title, f"{PLOTS_DIR}/{name}.png")
        for name, title in (
            ("scaling", "Throughput and parallel efficiency against nodes"),
            ("isoflop", "IsoFLOP curves"),
            ("frontier", "Compute-optimal frontier with 95% bands"),
        )
        if (plots / f"{name}.png").exists()
    ]
    atomic_write_json(sweep_dir / PROJECTION_FILE, projection)
    atomic_write(sweep_dir / PROPOSAL_FILE, proposal_text(projection, figures))
    return sweep_dir / PROJECTION_FILE, sweep_dir / PROPOSAL_FILE


def main(argv: list[str]) -> int:
    parser = command_parser(
        "ladder project",
        "project the target run and its node-hours from a sweep's fit",
        [("--json", "print projection.json")],
        overrides_help="sweep=<name> cluster=<profile> [cluster.<field>=...] [sweeps_root=<dir>]",
    )
    parser.add_argument("--target-flops", type=float, help="the target run's training FLOPs C")
    parser.add_argument("--node-hours", type=float, help="the node-hours to spend (C = H x a node's speed)")
    parser.add_argument("--nodes", type=int, default=1, help="nodes the target run spans (default 1)")
    parser.add_argument("--scaling", type=Path, help=f"a {SCALING_FILE} (default: the sweep's, when it has one)")
    parser.add_argument(
        "--write-gb-s",
        type=float,
        help=f"checkpoint write bandwidth per node, GB/s (default: measured by the runs, else {WRITE_GB_S:g} assumed)",
    )
    args = parser.parse(argv)
    values, cluster_overrides = {}, []
    for item in args.overrides:
        key, eq, value = item.partition("=")
        if eq and key in ("sweep", "sweeps_root"):
            values[key] = value
        elif eq and key.lstrip("+").split(".")[0] == "cluster":
            cluster_overrides.append(item)
        else:
            raise UserError(
                f"{item}: unknown argument; allowed: sweep=<name>, cluster=<profile>, "
                "cluster.<field>=<value>, sweeps_root=<dir>"
            )
    sweep_dir = resolve_sweep_dir(values.get("sweep", ""), values.get("sweeps_root"))
    cluster = validate(ClusterProfile, compose(cluster_overrides)["cluster"], "cluster")
    if args.scaling is not None and not args.scaling.exists():
        raise UserError(f"--scaling: no such file {args.scaling}")
    scaling = args.scaling or sweep_dir / SCALING_FILE
    projection = project(
        sweep_dir,
        cluster,
        target_flops=args.target_flops,
        node_hours=args.node_hours,
        nodes=args.nodes,
        scaling_path=scaling,
        write_gb_s=args.write_gb_s,
    )
    paths = write_projection(sweep_dir, projection, scaling if scaling.exists() else None)
    if args.json:
        print(json.dumps(projection, indent=1))
    else:
        print((sweep_dir / PROPOSAL_FILE).read_text(), end="")
        print(f"-> {paths[0]}\n-> {paths[1]}")
    return 0
