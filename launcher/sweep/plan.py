"""The sweep planner: a sweep config becomes runs with exact N, D and C, node-hours and a budget check.

Model shapes come from the family's shape solver (or are given explicitly), tokens round to whole
global batches, and every FLOP number comes from the family's own ``flops_per_token`` (the registry in
``models.family``): an isoFLOP run trains on D = C / flops_per_token(shape) tokens, so its recorded C
is exact rather than 6·N·D. Planning starts nothing: a speed the profile does not give is measured
by ``launcher.sweep.calibrate``, which callers hand in as ``build_plan``'s ``measure``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, cast

from launcher.config.cluster import ClusterProfile
from launcher.config.compose import compose, config_layers, group_options
from launcher.config.run import RunConfig, load_run_config
from launcher.config.validate import PathComponent, Range, validate
from launcher.errors import UserError
from launcher.files import atomic_write_json
from launcher.identity import content_hash, run_hash
from launcher.numbers import budget_tag, sci, si
from launcher.resources import split_site_override
from launcher.run.memory import check_model_states, check_step
from launcher.sweep.proposal import extend_sweep, read_proposal

PLAN_FILE = "plan.json"


@dataclasses.dataclass
class SweepConfig:
    """One sweep (``hydra_configs/sweep/<name>.yaml``): which runs, how big, on how many nodes.

    Sizes are target parameter counts (``params``, solved into shapes) or explicit ``shapes`` (model
    field overrides of the base model). Kinds: ``grid`` every size × every ``tokens``; ``isoflop`` every
    size per FLOP budget (``budgets``), D = C / flops_per_token; ``ladder`` every size at one fixed D
    (``tokens``) or at D = ``tokens_per_param`` × N; ``clip`` every size × every ``samples`` (CLIP).

    ``holdout`` marks runs that are trained but left out of the fit: ``ladder fit`` predicts them from
    the other runs and checks the prediction against what they reached (error, inside the interval).
    Each entry selects runs by the values that plan them, every given key matching: ``params`` (a
    size as written in ``params``/``params_per_budget``), ``shape`` (an index into ``shapes``),
    ``budget``, ``tokens``, ``samples``; e.g. ``holdout: [{budget: 1.0e+20}]`` holds out the largest
    isoFLOP curve, ``[{params: 1.4e+9, budget: 1.0e+20}]`` one run. Planned runs carry
    ``holdout: true`` (plan.json); each selector must match a run, and one run at least stays in the fit.
    """

    name: Annotated[str, PathComponent()]  # the sweep directory <sweeps_root>/<name>/ and the W&B group
    kind: Literal["grid", "isoflop", "ladder", "clip"]
    model: str = "gpt_neox/tiny"  # the base model option: family, vocabulary, seq_len, every unsolved field
    data: Optional[str] = None  # a data option; null keeps config.yaml's
    params: list[float] = dataclasses.field(default_factory=list)
    shapes: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    count: Literal["total", "non_embedding"] = "total"  # which N `params` targets
    aspect_ratio: float = 64.0  # d_model / n_layer of solved shapes
    head_size: int = 64
    budgets: list[float] = dataclasses.field(default_factory=list)  # isoflop: FLOPs C of each curve
    params_per_budget: list[list[float]] = dataclasses.field(default_factory=list)  # isoflop: sizes per budget
    tokens: list[float] = dataclasses.field(default_factory=list)  # grid: D values; ladder: the one fixed D
    tokens_per_param: Optional[Annotated[float, Range(gt=0)]] = None  # ladder: D = tokens_per_param × N
    samples: list[float] = dataclasses.field(default_factory=list)  # clip: samples seen
    global_batch_tokens: Optional[int] = None  # default: train.global_batch_tokens (samples for CLIP)
    min_steps: int = 1  # drop runs with fewer optimizer steps (big models at small isoFLOP budgets)
    nodes: int = 1
    ranks_per_run: int = 1
    overrides: list[str] = dataclasses.field(default_factory=list)  # Hydra overrides of every run
    budget_flops: Optional[Annotated[float, Range(gt=0)]] = (
        None  # recommend N_opt, D_opt at this C; null: what the allocation buys
    )
    allow_over_budget: bool = False
    calibration_steps: int = 8
    holdout: list[dict[str, float]] = dataclasses.field(default_factory=list)  # runs predicted, not fitted
    # keys the runs log in metrics.jsonl besides the loss (zero_shot_acc, a user's eval), each fitted in
    # two steps by ``ladder fit``: (N, D) -> loss, then loss -> the metric (also: ladder fit metric=KEY)
    metrics: list[str] = dataclasses.field(default_factory=list)
    schedule: Literal["cosine", "wsd"] = "cosine"  # wsd: one constant-LR trunk per size, a cooldown branch per point

    def __post_init__(self):
        for name in ("min_steps", "nodes", "ranks_per_run", "head_size", "calibration_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"sweep.{name}: must be >= 1, got {getattr(self, name)}")
        if self.aspect_ratio <= 0:
            raise ValueError(f"sweep.aspect_ratio: must be > 0, got {self.aspect_ratio}")
        if self.global_batch_tokens is not None and self.global_batch_tokens < 1:
            raise ValueError(f"sweep.global_batch_tokens: must be >= 1, got {self.global_batch_tokens}")
        for name in ("params", "budgets", "tokens", "samples"):
            if any(v <= 0 for v in getattr(self, name)):
                raise ValueError(f"sweep.{name}: every value must be > 0, got {getattr(self, name)}")
        sizes = [name for name in ("params", "shapes", "params_per_budget") if getattr(self, name)]
        if len(sizes) != 1:
            raise ValueError(
                f"sweep: give the model sizes in exactly one of params, shapes, params_per_budget "
                f"(got {', '.join(sizes) or 'none'})"
            )
        if self.params_per_budget and self.kind != "isoflop":
            raise ValueError("sweep.params_per_budget: only for kind isoflop")
        need = {"grid": ["tokens"], "isoflop": ["budgets"], "clip": ["samples"], "ladder": []}[self.kind]
        for name in need:
            if not getattr(self, name):
                raise ValueError(f"sweep.{name}: required for kind {self.kind}")
        if self.params_per_budget and len(self.params_per_budget) != len(self.budgets):
            raise ValueError(
                f"sweep.params_per_budget: needs one list per budget ({len(self.budgets)}), "
                f"got {len(self.params_per_budget)}"
            )
        if self.kind == "ladder" and (len(self.tokens) == 1) == (self.tokens_per_param is not None):
            raise ValueError("sweep: kind ladder needs exactly one of tokens (one value) or tokens_per_param")
        for i, selector in enumerate(self.holdout):
            keys = set(selector) if isinstance(selector, dict) else set()
            if not keys or not keys <= set(HOLDOUT_KEYS):
                raise ValueError(
                    f"sweep.holdout[{i}]: must be a mapping of one or more of {', '.join(HOLDOUT_KEYS)}, "
                    f"got {selector!r}"
                )
            for key, value in selector.items():
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                    raise ValueError(f"sweep.holdout[{i}].{key}: must be a number >= 0, got {value!r}")


HOLDOUT_KEYS = ("params", "shape", "budget", "tokens", "samples")


def held_out(selectors: list[dict[str, float]], planned: dict[str, Optional[float]]) -> list[int]:
    """The indices of the ``holdout`` selectors that match a run planned from these values (see SweepConfig)."""

    def same(a: Optional[float], b: float) -> bool:
        return a is not None and math.isclose(float(a), float(b), rel_tol=1e-9)

    return [i for i, sel in enumerate(selectors) if all(same(planned.get(k), v) for k, v in sel.items())]


# --------------------------------------------------------------------------------------------- runs


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One planned run, fully resolved: exact counts, its ``ladder train`` overrides and its hash."""

    name: str
    sweep: str
    family: str  # model.family: gpt_neox | clip
    model: str  # the base model option, e.g. gpt_neox/tiny
    shape: dict[str, Any]  # model field overrides of the base model
    N: int  # total parameters
    N_non_embedding: int
    D: int  # training tokens (samples for CLIP): steps × global_batch_tokens
    C: int  # training FLOPs: flops_per_token × D
    flops_per_token: int
    budget: Optional[float]  # the isoFLOP budget it belongs to (None outside isoflop sweeps)
    steps: int
    global_batch_tokens: int
    nodes: int
    ranks_per_run: int
    base_overrides: tuple[str, ...]  # overrides shared by the sweep's runs (model, data, the sweep's own)
    config_hash: str  # of the resolved run config, not of the name: the run's identity
    est_node_hours: Optional[float] = None
    holdout: bool = False  # trained, then predicted by the fit of the other runs (sweep.holdout)
    role: Literal["run", "trunk", "branch"] = "run"  # a WSD sweep's trunks (no point) and cooldown branches
    parent: Optional[str] = None  # a branch's trunk (its name in the sweep)
    fork_step: Optional[int] = None  # the trunk step a branch starts from: wsd_decay_start(steps)
    schedule_overrides: tuple[str, ...] = ()  # train.schedule and friends of a trunk or a branch

    @property
    def trained_C(self) -> int:
        """FLOPs this run trains itself: a branch starts at its trunk's fork (its C is the full-run equivalent)."""
        return self.C - (self.fork_step or 0) * self.global_batch_tokens * self.flops_per_token

    def run_dir(self, sweep_dir: str | os.PathLike) -> Path:
        return Path(os.path.join(sweep_dir, "runs", self.name))

    def start_checkpoint(self, sweep_dir: str | os.PathLike) -> Optional[Path]:
        """The trunk checkpoint a branch starts from (it waits until that is complete); None for others."""
        from launcher.run.checkpoint import tag_dir

        if self.parent is None or self.fork_step is None:
            return None
        return tag_dir(Path(sweep_dir) / "runs" / self.parent, self.fork_step)

    def ready(self, sweep_dir: str | os.PathLike) -> bool:
        """Whether the run can start: a branch waits (planned) until its trunk's fork checkpoint is complete."""
        from launcher.run.checkpoint import checkpoint_complete

        start = self.start_checkpoint(sweep_dir)
        return start is None or checkpoint_complete(start)

    def overrides(self, sweep_dir: str | os.PathLike) -> list[str]:
        """The overrides of ``ladder train`` for this run."""
        start = self.start_checkpoint(sweep_dir)
        return [
            *self.base_overrides,
            *(f"model.{k}={_override_value(v)}" for k, v in self.shape.items()),
            f"train.tokens={self.D}",
            "train.max_steps=null",
            f"train.global_batch_tokens={self.global_batch_tokens}",
            *self.schedule_overrides,
            *([f"train.init_from={start}"] if start else []),
            f"run_dir={os.path.join(sweep_dir, 'runs', self.name)}",
            f"wandb.group={self.sweep}",
            f"wandb.job_type={self.family}",
            f"wandb.name={self.name}",
        ]

    def to_json(self) -> dict:
        return {
            **dataclasses.asdict(self),
            "base_overrides": list(self.base_overrides),
            "schedule_overrides": list(self.schedule_overrides),
        }

    @classmethod
    def from_json(cls, entry: Any, where: str) -> RunSpec:
        """A run as ``to_json`` wrote it into plan.json; a wrong shape is refused naming ``where`` and the field."""
        spec = validate(cls, entry, where)
        return dataclasses.replace(
            spec, base_overrides=tuple(spec.base_overrides), schedule_overrides=tuple(spec.schedule_overrides)
        )


def _override_value(value: Any) -> str:
    return "null" if value is None else json.dumps(value) if isinstance(value, str) else str(value)


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def merge_overrides(*groups: Iterable[str]) -> list[str]:
    """Concatenate override lists; a later override of the same key replaces an earlier one."""
    merged: dict[str, str] = {}
    for group in groups:
        for override in group:
            merged.pop(override_key(override), None)
            merged[override_key(override)] = override
    return list(merged.values())


# --------------------------------------------------------------------------------------------- plan


SPEED_SOURCES = {
    None: "unknown: no device_peak_flops and no calibration",
    "peak": "peak x assumed MFU",
    "measured": "measured by calibration",
}  # Throughput.source, in words


@dataclasses.dataclass(frozen=True)
class Throughput:
    """Achieved speed of one run: from the profile's peak × MFU, or measured by a calibration run.

    ``points`` are (N, FLOP/s of one run), interpolated in log N; ``runs_per_node`` is how many runs
    share a node (devices per node / ranks per run; the local runner's parallel runs).
    """

    source: Literal["peak", "measured"]
    points: tuple[tuple[int, float], ...]
    runs_per_node: float
    overhead_s: float = 0.0  # start-up, data loading and final checkpoint of one run

    def flops_per_s(self, N: float) -> float:
        points = sorted(self.points)
        if len(points) == 1 or N <= points[0][0]:
            return points[0][1]
        if N >= points[-1][0]:
            return points[-1][1]
        for (n0, f0), (n1, f1) in zip(points, points[1:]):
            if n0 <= N <= n1:
                t = math.log(N / n0) / math.log(n1 / n0)
                return math.exp((1 - t) * math.log(f0) + t * math.log(f1))
        raise AssertionError("unreachable")

    def node_hours(self, spec: RunSpec, flops: Optional[float] = None) -> float:
        """Node-hours of what ``spec`` trains itself (``flops``: of that many FLOPs instead)."""
        return self.node_hours_of(spec.N, spec.trained_C if flops is None else flops)

    def node_hours_of(self, N: float, flops: float) -> float:
        """Node-hours of a run of N parameters training ``flops`` FLOPs (a proposed run has no spec yet)."""
        return (self.overhead_s + flops / self.flops_per_s(N)) / self.runs_per_node / 3600.0

    def node_flops_per_s(self, N: int) -> float:
        return self.flops_per_s(N) * self.runs_per_node


@dataclasses.dataclass(frozen=True)
class Budget:
    """The FLOPs ``ladder fit`` recommends a size for, and in words where that number came from.

    The planner decides it once (``recommendation_budget``) and plan.json records both; the fit and
    its summary repeat them, or say that the caller gave the number (``--budget-flops``).
    """

    flops: float
    source: str


def recommendation_budget(
    sweep: SweepConfig, cluster: ClusterProfile, throughput: Optional[Throughput], runs: list[RunSpec]
) -> Budget:
    """The sweep's own budget; else what the allocation left buys at the plan's speed; else 10 x the largest run."""
    if sweep.budget_flops is not None:
        return Budget(sweep.budget_flops, "sweep.budget_flops")
    largest = max(runs, key=lambda r: r.C)
    hours = cluster.allocation_node_hours
    if throughput is not None and hours:
        per_node = throughput.node_flops_per_s(largest.N)
        return Budget(
            hours * 3600.0 * per_node,
            f"cluster.allocation_node_hours {hours:g} x 3600 s x "
            f"{sci(per_node)} FLOP/s per node, {SPEED_SOURCES[throughput.source]}",
        )
    why = "no allocation_node_hours" if not hours else f"speed {SPEED_SOURCES[None]}"
    return Budget(10.0 * largest.C, f"10 x the largest run's C ({why})")


@dataclasses.dataclass
class Plan:
    """A sweep's resolved runs with the profile they were estimated for."""

    sweep: SweepConfig
    cluster: ClusterProfile
    sweep_dir: Path
    runs: list[RunSpec]
    dropped: list[str]  # why planned points were left out
    throughput: Optional[Throughput] = None  # None: no peak and no calibration: node-hours unknown

    @property
    def total_node_hours(self) -> Optional[float]:
        if self.throughput is None:
            return None
        return sum(cast(float, r.est_node_hours) for r in self.runs)  # every run has hours when throughput is known

    @property
    def cosine_equivalent_node_hours(self) -> Optional[float]:
        """The same points as full runs of their own (cosine) schedule: what a WSD design saves against."""
        if self.throughput is None:
            return None
        return sum(self.throughput.node_hours(r, r.C) for r in self.runs if r.role != "trunk")

    @property
    def budget(self) -> Budget:
        """The compute budget to recommend N_opt, D_opt for, and where it came from (see ``Budget``)."""
        return recommendation_budget(self.sweep, self.cluster, self.throughput, self.runs)

    def to_json(self) -> dict:
        budget = self.budget
        return {
            "sweep": dataclasses.asdict(self.sweep),
            "cluster": dataclasses.asdict(self.cluster),
            "sweep_dir": str(self.sweep_dir),
            "runs": [r.to_json() for r in self.runs],
            "dropped": self.dropped,
            "throughput": None if self.throughput is None else dataclasses.asdict(self.throughput),
            "total_node_hours": self.total_node_hours,
            "node_hours_total": self.total_node_hours,
            "node_hours_cosine_equivalent": self.cosine_equivalent_node_hours,
            "allocation_node_hours": self.cluster.allocation_node_hours,
            "budget_flops": budget.flops,
            "budget_source": budget.source,
        }

    def check_budget(self, over_budget_ok: bool = False) -> None:
        """Refuse a plan that needs more node-hours than the allocation has left."""
        total, left = self.total_node_hours, self.cluster.allocation_node_hours
        if total is None or left is None or total <= left or over_budget_ok or self.sweep.allow_over_budget:
            return
        raise UserError(
            f"sweep {self.sweep.name}: the plan needs {total:.4g} node-hours, more than the "
            f"{left:.4g} left in the allocation (cluster.allocation_node_hours); shrink the sweep "
            f"or pass --over-budget-ok (sweep.allow_over_budget=true)"
        )


@dataclasses.dataclass
class SweepSetup:
    """A composed sweep: its config, the cluster profile, the base run config and where it lives."""

    sweep: SweepConfig
    cluster: ClusterProfile
    run: RunConfig
    base_overrides: list[str]
    sweep_dir: Path


def compose_sweep(overrides: list[str]) -> tuple[SweepConfig, ClusterProfile, Path]:
    """The sweep config, cluster profile and sweep directory that ``overrides`` select (``proposal=FILE``:
    with a proposal's runs added, see ``launcher.sweep.proposal``)."""
    proposals = [o.split("=", 1)[1] for o in overrides if override_key(o) == "proposal"]
    overrides = [o for o in overrides if override_key(o) != "proposal"]
    chosen = [o.split("=", 1)[1] for o in overrides if override_key(o) == "sweep" and "=" in o]
    options = group_options("sweep", config_layers(split_site_override(overrides)[1]))
    if chosen and chosen[-1] not in options:  # an optional default group skips a missing option silently
        raise UserError(f"sweep={chosen[-1]}: no such sweep; allowed: {', '.join(options)}")
    # any sweep field may be overridden, not only those its YAML spells out; validate() checks the names
    raw = compose([f"++{o.lstrip('+')}" if override_key(o).startswith("sweep.") else o for o in overrides])
    if not raw.get("sweep"):
        raise UserError(f"sweep: no sweep selected; pass sweep=<name>, one of: {', '.join(options)}")
    sweep = validate(SweepConfig, raw["sweep"], "sweep")
    for path in proposals:
        sweep = extend_sweep(sweep, read_proposal(path))
    cluster = validate(ClusterProfile, raw["cluster"], "cluster")
    return sweep, cluster, Path(raw.get("sweeps_root") or "sweeps") / sweep.name


def load_sweep(overrides: list[str]) -> SweepSetup:
    """Compose ``overrides`` (``sweep=<name>``, ``cluster=<site>``, run overrides) into a validated sweep."""
    sweep, cluster, sweep_dir = compose_sweep(overrides)
    user = [o for o in overrides if override_key(o).split(".")[0] not in ("sweep", "sweeps_root", "proposal")]
    base = merge_overrides(
        [f"model={sweep.model}"], [f"data={sweep.data}"] if sweep.data else [], sweep.overrides, user
    )
    run = load_run_config(base)
    return SweepSetup(sweep, cluster, run, base, sweep_dir)


def plan_runs(setup: SweepSetup) -> tuple[list[RunSpec], list[str]]:
    """The sweep's runs with exact counts (no estimates yet), and the points left out with the reason."""
    from models.family import FAMILIES, model_config  # torch: only when runs are planned

    sweep, run = setup.sweep, setup.run
    base_model = {k: v for k, v in run.model.items() if k != "family"}
    family = run.model["family"]
    entry = FAMILIES[family]  # load_run_config checked the name
    batch = sweep.global_batch_tokens or run.train.global_batch_tokens
    solved: dict[int, dict] = {}
    memory = setup.cluster.device_memory_bytes

    def shape_for(size: Any) -> dict:
        if isinstance(size, dict):
            return dict(size)
        target = int(round(size))
        if target not in solved:
            check_model_states(target, sweep.ranks_per_run, memory, "sweep.params")  # before a long solve
            try:
                solved[target] = entry.solve(target, base_model, sweep.aspect_ratio, sweep.head_size, sweep.count)
            except ValueError as exc:
                raise UserError(str(exc)) from None
        return solved[target]

    counted: dict[str, tuple[dict, int, int, int]] = {}

    def count(shape: dict) -> tuple[dict, int, int, int]:
        """(model dict, N, N_non_embedding, flops_per_token) of a shape, computed once per shape."""
        key = json.dumps(shape, sort_keys=True)
        if key not in counted:
            try:
                cfg = model_config({"family": family, **base_model, **shape})
            except ValueError as exc:
                raise UserError(str(exc)) from None
            n_total = entry.param_counts(cfg)[0]
            check_model_states(n_total, sweep.ranks_per_run, memory, "sweep.shapes" if sweep.shapes else "sweep.params")
            check_step(run.train.micro_batch_size, entry.kept_per_sample(cfg), run.train.precision, memory)
            counted[key] = (
                {"family": family, **dataclasses.asdict(cfg)},
                *entry.param_counts(cfg),
                entry.flops_per_token(cfg),
            )
        return counted[key]

    sizes = list(sweep.shapes or sweep.params)

    def planned(size: Any, **values: Optional[float]) -> dict[str, Optional[float]]:
        """The values a run is planned from, by the keys ``sweep.holdout`` selects on."""
        where = {"shape": float(sizes.index(size))} if isinstance(size, dict) else {"params": float(size)}
        return {**where, **values}

    # (shape, D target, budget, the values it is planned from)
    points: list[tuple[dict, Optional[float], Optional[float], dict]] = []
    if sweep.kind == "isoflop":
        for i, flops in enumerate(sweep.budgets):
            for size in sweep.params_per_budget[i] if sweep.params_per_budget else sizes:
                points.append((shape_for(size), None, flops, planned(size, budget=flops)))
    else:
        options: dict[str, list[Optional[float]]] = {
            "grid": list(sweep.tokens),
            "clip": list(sweep.samples),
            "ladder": [*sweep.tokens[:1]] or [None],
        }
        values = options[sweep.kind]
        key = "samples" if sweep.kind == "clip" else "tokens"
        points = [(shape_for(size), d, None, planned(size, **{key: d})) for size in sizes for d in values]

    train = dataclasses.asdict(run.train)
    deepspeed = dataclasses.asdict(run.deepspeed)
    seen: dict[str, str]
    specs, dropped, seen = [], [], {}
    matched: set[int] = set()
    for shape, target_d, budget, planned_from in points:
        model, n_total, n_ne, fpt = count(shape)
        if budget is not None:
            target_d = budget / fpt
        elif target_d is None:
            assert sweep.tokens_per_param is not None  # a ladder without tokens has it (SweepConfig)
            target_d = sweep.tokens_per_param * (n_total if sweep.count == "total" else n_ne)
        steps = max(1, round(target_d / batch))
        D = steps * batch
        label = f"N={si(n_total, giga='G')}, D={si(D, giga='G')}" + (f", C={budget_tag(budget)}" if budget else "")
        if steps < sweep.min_steps:
            dropped.append(f"{label}: {steps} steps < sweep.min_steps={sweep.min_steps}")
            continue
        digest = run_hash(
            model,
            run.data,
            {**train, "tokens": D, "max_steps": None, "global_batch_tokens": batch},
            deepspeed,
            run.seed,
        )
        if digest in seen:
            dropped.append(f"{label}: same run as {seen[digest]}")
            continue
        name = (
            (f"c{budget_tag(budget)}-" if budget else "")
            + f"n{si(n_total, giga='G')}-"
            + ("s" if sweep.kind == "clip" else "d")
            + si(D, giga="G")
        )
        seen[digest] = name
        selectors = held_out(sweep.holdout, planned_from)
        matched.update(selectors)
        specs.append(
            RunSpec(
                name=name,
                sweep=sweep.name,
                family=family,
                model=sweep.model,
                shape=shape,
                N=n_total,
                N_non_embedding=n_ne,
                D=D,
                C=fpt * D,
                flops_per_token=fpt,
                budget=budget,
                steps=steps,
                global_batch_tokens=batch,
                nodes=sweep.nodes,
                ranks_per_run=sweep.ranks_per_run,
                base_overrides=tuple(setup.base_overrides),
                config_hash=digest,
                holdout=bool(selectors),
            )
        )
    names = Counter(s.name for s in specs)
    specs = [dataclasses.replace(s, name=f"{s.name}-{s.config_hash[:6]}") if names[s.name] > 1 else s for s in specs]
    if sweep.schedule == "wsd":
        specs = wsd_design(specs, run, dropped)
    if not specs:
        raise UserError(f"sweep {sweep.name}: every planned run was left out ({'; '.join(dropped)})")
    for i, selector in enumerate(sweep.holdout):
        if i not in matched:
            raise UserError(
                f"sweep.holdout[{i}]: {selector} matches no planned run; select by "
                f"{', '.join(HOLDOUT_KEYS)} as the sweep config writes them"
            )
    if all(s.holdout for s in specs):
        raise UserError(f"sweep.holdout: holds out all {len(specs)} runs; at least one must stay in the fit")
    return specs, dropped


def wsd_design(points: list[RunSpec], run: RunConfig, dropped: list[str]) -> list[RunSpec]:
    """Each size's points as WSD cooldown branches of one constant-LR trunk (Hägele et al. 2024).

    The trunk trains to the longest fork its branches need and keeps a checkpoint at every fork
    D·(1 - train.decay_fraction) (``wsd_decay_start``); each branch starts there and cools down to D, so
    it trains what an uninterrupted WSD run of D trains. Trunk and branches share one warm-up
    (train.warmup_tokens, else warmup_fraction of the column's shortest D), so their LRs agree up to the fork.
    """
    from launcher.run.runtime import wsd_decay_start

    train = run.train
    columns: dict[str, list[RunSpec]] = {}
    for spec in points:
        columns.setdefault(json.dumps(spec.shape, sort_keys=True), []).append(spec)
    out: list[RunSpec] = []
    for column in columns.values():
        column.sort(key=lambda s: s.D)
        warmup = train.warmup_tokens if train.warmup_tokens is not None else round(train.warmup_fraction * column[0].D)
        shared = (f"train.warmup_tokens={warmup}",)
        forks = {s.name: wsd_decay_start(s.steps, train.decay_fraction) for s in column}
        kept = []
        for s in column:
            if forks[s.name] * s.global_batch_tokens < warmup or forks[s.name] < 1:
                dropped.append(
                    f"{s.name}: its cooldown would start at step {forks[s.name]}, before the "
                    f"{warmup}-token warm-up ends or at step 0"
                )
            else:
                kept.append(s)
        if not kept:
            continue
        first, steps = kept[0], max(forks[s.name] for s in kept)
        trunk_overrides = (
            *shared,
            "train.schedule=constant",
            f"train.checkpoint_steps=[{','.join(str(forks[s.name]) for s in kept)}]",
        )
        trunk_hash = content_hash({"wsd_trunk_of": first.config_hash, "steps": steps, "train": trunk_overrides})
        trunk = dataclasses.replace(
            first,
            name=f"n{si(first.N, giga='G')}-trunk",
            D=steps * first.global_batch_tokens,
            C=steps * first.global_batch_tokens * first.flops_per_token,
            budget=None,
            steps=steps,
            config_hash=trunk_hash,
            role="trunk",
            schedule_overrides=trunk_overrides,
        )
        out.append(trunk)
        for s in kept:
            branch_overrides = (*shared, "train.schedule=wsd")
            out.append(
                dataclasses.replace(
                    s,
                    config_hash=content_hash({"point": s.config_hash, "trunk": trunk_hash, "train": branch_overrides}),
                    role="branch",
                    parent=trunk.name,
                    fork_step=forks[s.name],
                    schedule_overrides=branch_overrides,
                )
            )
    return out


# Times a sweep's runs when the profile has no peak (``launcher.sweep.calibrate`` starts short runs)
Measure = Callable[["SweepSetup", list[RunSpec]], Throughput]


def build_plan(overrides: list[str], measure: Optional[Measure] = None) -> Plan:
    """Compose, plan, estimate: everything ``ladder plan`` shows and ``ladder sweep`` records.

    The speed is the profile's peak x MFU, else what ``measure`` finds, else unknown (no node-hours).
    """
    setup = load_sweep(overrides)
    specs, dropped = plan_runs(setup)
    throughput = peak_throughput(setup.cluster, setup.sweep)
    if throughput is None and measure is not None:
        throughput = measure(setup, specs)
    if throughput is not None:
        specs = [dataclasses.replace(s, est_node_hours=throughput.node_hours(s)) for s in specs]
    return Plan(setup.sweep, setup.cluster, setup.sweep_dir, specs, dropped, throughput)


def peak_throughput(cluster: ClusterProfile, sweep: SweepConfig) -> Optional[Throughput]:
    """Per-run speed from the profile's per-device peak × assumed MFU (None when the peak is unknown)."""
    if cluster.device_peak_flops is None:
        return None
    ranks = sweep.ranks_per_run
    return Throughput(
        "peak",
        ((1, ranks * cluster.device_peak_flops * cluster.assumed_mfu),),
        runs_per_node=cluster.devices_per_node / ranks,
    )


def write_plan(plan: Plan) -> Path:
    """``<sweep_dir>/plan.json``: the resolved plan, for the collector, the fit, the report and people."""
    path = plan.sweep_dir / PLAN_FILE
    atomic_write_json(path, plan.to_json())
    return path


PLAN_RUN_KEYS = ("name", "family", "N", "N_non_embedding", "D", "C")  # what the readers of plan.json take


def read_plan(sweep_dir: Path) -> dict:
    """A sweep's plan.json, or {} when there is none (a folder of runs copied without it) or it is not JSON;
    a JSON file of the wrong shape is refused, naming the file and what is wrong."""
    path = Path(sweep_dir) / PLAN_FILE
    try:
        plan = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(plan, dict):
        raise UserError(f"{path}: expected a JSON object (the plan), got {type(plan).__name__}")
    runs = plan.get("runs", [])
    if not isinstance(runs, list):
        raise UserError(f"{path}: runs: expected a list, got {type(runs).__name__}")
    for i, run in enumerate(runs):
        missing = [k for k in PLAN_RUN_KEYS if k not in run] if isinstance(run, dict) else list(PLAN_RUN_KEYS)
        if missing:
            raise UserError(
                f"{path}: runs[{i}]: expected an object with {', '.join(PLAN_RUN_KEYS)}; missing {', '.join(missing)}"
            )
        for key in ("N", "N_non_embedding", "D", "C"):
            if isinstance(run[key], bool) or not isinstance(run[key], (int, float)) or not run[key] > 0:
                raise UserError(f"{path}: runs[{i}].{key}: expected a number > 0, got {run[key]!r}")
    budget = plan.get("budget_flops")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget > 0):
        raise UserError(f"{path}: budget_flops: expected a number > 0 or null, got {budget!r}")
    return plan


# ------------------------------------------------------------------------------------------- output


def make_console():
    """A rich console; one wide enough for the run table when output goes to a file or a pipe."""
    from rich.console import Console

    console = Console(log_path=False)
    return console if console.is_terminal else Console(log_path=False, width=160)


def print_plan(plan: Plan, console=None) -> None:
    """The run table and the budget line."""
    from rich.table import Table

    console = console or make_console()
    table = Table(title=f"sweep {plan.sweep.name} ({plan.sweep.kind}, {plan.sweep.model}) on {plan.cluster.name}")
    for column in ("name", "N", "N_ne", "D", "C", "6ND", "steps", "nodes", "est. node-h"):
        table.add_column(column, justify="left" if column == "name" else "right")
    for r in plan.runs:
        table.add_row(
            r.name + (" (holdout)" if r.holdout else ""),
            si(r.N, giga="G"),
            si(r.N_non_embedding, giga="G"),
            si(r.D, giga="G"),
            sci(r.C),
            sci(6 * r.N * r.D),
            str(r.steps),
            str(r.nodes),
            sci(r.est_node_hours),
        )
    console.print(table)
    for reason in plan.dropped:
        console.print(f"left out: {reason}")
    held = [r.name for r in plan.runs if r.holdout]
    if held:
        console.print(f"holdout: {len(held)} run(s) trained but left out of the fit, predicted from the others")
    total, left = plan.total_node_hours, plan.cluster.allocation_node_hours
    speed = SPEED_SOURCES[plan.throughput.source if plan.throughput else None]
    console.print(f"{len(plan.runs)} runs, C total {sum(r.C for r in plan.runs):.3e} FLOPs; speed: {speed}")
    if total is not None:
        # this machine is the one node: its node-hours are the wall time of the local runner
        wall = f", about {total * 60:.1f} min of wall time" if plan.cluster.scheduler == "local" else ""
        left_text = "no allocation limit" if left is None else f"{left:.4g} node-hours left in the allocation"
        console.print(f"total {total:.4g} node-hours{wall}; {left_text}")
    if plan.sweep.schedule == "wsd" and total is not None:
        console.print(
            f"WSD design: {total:.4g} node-hours for what full cosine runs of the same points would "
            f"spend in {plan.cosine_equivalent_node_hours:.4g} (each branch counts only its cooldown)"
        )
    budget = plan.budget
    console.print(f"recommendation budget: C = {budget.flops:.3e} FLOPs ({budget.source})")
