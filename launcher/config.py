"""Hydra composition plus strict validation of every field against dataclasses.

Hydra composes the run from the groups in ``hydra_configs/``; the result is a plain dict that
``validate`` turns into typed dataclasses. We validate ourselves (rather than OmegaConf structured
configs) because a user must get one line naming the field and what is allowed, not a traceback,
and because the model group holds one of several families whose schema lives in ``models/``.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Optional, get_args, get_origin

from launcher.cluster import ClusterProfile
from launcher.errors import UserError

CONFIG_DIR = Path(os.environ.get("SCALELADDER_CONFIG_DIR", Path(__file__).resolve().parent.parent / "hydra_configs"))


def compose(overrides: list[str], config_name: str = "config") -> dict:
    """Compose ``config_name`` with Hydra overrides into a plain, resolved dict.

    Value overrides are applied with Hydra's ``++`` (set or add): a field that a YAML file does not list
    (say ``cluster.max_retries`` on a short profile) is as settable as one it does, and a typo reaches
    ``validate``, whose message names the field, the nearest real one and every allowed one.
    """
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
            cfg = hydra_compose(config_name=config_name, overrides=[_set_or_add(o) for o in overrides])
        return OmegaConf.to_container(cfg, resolve=True)
    except (HydraException, OmegaConfBaseException) as exc:
        raise UserError(_explain(str(exc))) from None


def _set_or_add(override: str) -> str:
    """``key=value`` becomes ``++key=value`` unless it picks a config group option (``model=clip/tiny``)."""
    key, sep, _ = override.partition("=")
    if not sep or key.startswith(("+", "~")) or (CONFIG_DIR / key).is_dir():
        return override
    return "++" + override


def _explain(text: str) -> str:
    """Hydra's message as one line naming the group and what is allowed."""
    missing = re.search(r"Could not find '([^'/]+)/([^']+)'", text)
    if missing and (CONFIG_DIR / missing.group(1)).is_dir():
        group, option = missing.groups()
        return f"{group}: {option!r} is not an option; allowed: {', '.join(group_options(group))}"
    return _first_line(text)


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else text


def group_options(group: str) -> list[str]:
    """The options a config group offers (``model`` -> ``gpt_neox/tiny``, ...), for help and errors."""
    root = CONFIG_DIR / group
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


def validate(cls: type, data: Any, path: str):
    """Build dataclass ``cls`` from ``data``, checking every field's name and type.

    Raises UserError("path.field: ...") naming the first bad field and what is allowed.
    """
    if dataclasses.is_dataclass(data):
        data = dataclasses.asdict(data)
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of fields, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        near = difflib.get_close_matches(str(key), fields, n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        raise UserError(f"{_join(path, key)}: unknown field{hint}; allowed: {', '.join(sorted(fields))}")
    values = {}
    for name, field in fields.items():
        if name in data:
            values[name] = _check(hints[name], data[name], _join(path, name))
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise UserError(f"{_join(path, name)}: required field is missing")
    try:
        return cls(**values)
    except (ValueError, TypeError) as exc:  # a dataclass's own __post_init__ checks
        message = str(exc)
        raise UserError(message if message.startswith(path) else f"{path}: {message}") from None


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _check(tp: Any, value: Any, path: str):
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check(arg, value, path)
            except UserError as exc:
                errors.append(str(exc))
        raise UserError(errors[0] if len(errors) == 1 else f"{path}: expected {_describe(tp)}, got {value!r}")
    if origin is Literal:
        if value in args:
            return value
        raise UserError(f"{path}: {value!r} is not allowed; allowed: {', '.join(map(str, args))}")
    if dataclasses.is_dataclass(tp):
        return validate(tp, value, path)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{path}: expected a list, got {value!r}")
        item = args[0] if args else Any
        return [_check(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{path}: expected a mapping, got {value!r}")
        item = args[1] if len(args) == 2 else Any
        return {k: _check(item, v, _join(path, k)) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML reads 1e-3 without a dot as a string
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif isinstance(tp, type):
        if isinstance(value, tp):
            return value
    else:
        return value
    raise UserError(f"{path}: expected {_describe(tp)}, got {value!r}")


def _describe(tp: Any) -> str:
    origin, args = get_origin(tp), get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))



@dataclasses.dataclass
class TrainConfig:
    """Optimisation and bookkeeping of one run (tokens are samples for CLIP)."""

    tokens: Optional[int] = None  # D; the LR schedule spans it (Chinchilla-style)
    max_steps: Optional[int] = None  # stop after K optimizer steps; the schedule still spans `tokens`
    global_batch_tokens: int = 4096  # reached with gradient accumulation over ranks x micro-batches
    micro_batch_size: int = 8  # samples per rank per micro-step
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decay to 10% of the peak
    warmup_fraction: float = 0.05
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    log_every: int = 1
    val_every: int = 20
    val_batches: int = 4
    checkpoint_every: int = 50

    def __post_init__(self):
        for name in ("global_batch_tokens", "micro_batch_size", "log_every", "val_every", "val_batches",
                     "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name}: must be >= 1, got {getattr(self, name)}")
        if self.tokens is None and self.max_steps is None:
            raise ValueError("train: set train.tokens (the run's D) or train.max_steps")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError(f"train.warmup_fraction: must be in [0, 1), got {self.warmup_fraction}")


@dataclasses.dataclass
class DeepSpeedConfig:
    """The ZeRO stage and offload; the runtime turns it into DeepSpeed's JSON."""

    stage: Literal[0, 1, 2, 3] = 0
    offload_optimizer: Literal["none", "cpu", "nvme"] = "none"
    offload_param: Literal["none", "cpu", "nvme"] = "none"
    nvme_path: Optional[str] = None
    initial_scale_power: int = 16  # fp16 dynamic loss scaling starts at 2**16
    loss_scale_window: int = 1000
    hysteresis: int = 2
    min_loss_scale: int = 1  # DeepSpeed takes an integer floor for the dynamic loss scale

    def __post_init__(self):
        if self.offload_param != "none" and self.stage != 3:
            raise ValueError(f"deepspeed.offload_param: needs stage 3, got stage {self.stage}")
        if self.offload_optimizer != "none" and self.stage == 0:
            raise ValueError("deepspeed.offload_optimizer: needs stage 1, 2 or 3, got stage 0")
        if "nvme" in (self.offload_optimizer, self.offload_param) and not self.nvme_path:
            raise ValueError("deepspeed.nvme_path: required when offloading to nvme")


@dataclasses.dataclass
class WandbConfig:
    """W&B mirror of metrics.jsonl: offline on compute nodes, synced later from a login node."""

    mode: Literal["offline", "online", "disabled"] = "offline"
    project: str = "scaleladder"
    entity: Optional[str] = None
    group: Optional[str] = None  # the sweep's name
    job_type: Optional[str] = None  # the model family
    name: Optional[str] = None
    tags: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class RendezvousConfig:
    """How ranks find each other when neither torchrun nor the scheduler names a master."""

    timeout_s: float = 120.0
    interface: Optional[str] = None  # default: the cluster profile's network_interface
    port_base: int = 29500  # ports derived from job/step ids land in [port_base, port_base + port_span)
    port_span: int = 20000

    def __post_init__(self):
        if self.timeout_s <= 0:
            raise ValueError(f"rendezvous.timeout_s: must be > 0, got {self.timeout_s}")
        if not (1024 <= self.port_base and self.port_span >= 1 and self.port_base + self.port_span <= 65536):
            raise ValueError(f"rendezvous.port_base: [{self.port_base}, {self.port_base + self.port_span}) must lie "
                             f"within [1024, 65536) with port_span >= 1")



@dataclasses.dataclass
class RunConfig:
    """One training run, fully resolved: what ``ladder train`` executes on every rank."""

    model: dict
    data: dict
    train: TrainConfig
    deepspeed: DeepSpeedConfig
    cluster: ClusterProfile
    wandb: WandbConfig = dataclasses.field(default_factory=WandbConfig)
    rendezvous: RendezvousConfig = dataclasses.field(default_factory=RendezvousConfig)
    run_dir: Optional[str] = None
    nproc: int = 1  # local ranks `ladder train` starts when no launcher started it
    seed: int = 0
    resume: bool = True  # continue from run_dir's last checkpoint when there is one
    sweep: Optional[dict] = None  # present in the composed config; read by the planner, not by a run
    sweeps_root: str = "sweeps"  # where the planner puts <sweeps_root>/<sweep.name>/; not read by a run


def load_run_config(overrides: list[str]) -> RunConfig:
    """Compose and validate a run; the model and data groups are checked against ``models/``'s schemas."""
    from models import DATA_CONFIGS, MODEL_CONFIGS

    raw = compose(overrides)
    run = validate(RunConfig, raw, "")
    run.model = _validate_choice(run.model, "model", "family", MODEL_CONFIGS)
    run.data = _validate_choice(run.data, "data", "kind", DATA_CONFIGS)
    if run.nproc < 1:
        raise UserError(f"nproc: must be >= 1, got {run.nproc}")
    return run


def _validate_choice(section: dict, path: str, key: str, schemas: dict) -> dict:
    """Check a section whose schema is picked by one of its keys (model.family, data.kind)."""
    choice = section.get(key)
    if choice not in schemas:
        raise UserError(f"{path}.{key}: {choice!r} is not allowed; allowed: {', '.join(sorted(schemas))}")
    fields = {k: v for k, v in section.items() if k != key}
    checked = validate(schemas[choice], fields, path)
    return {key: choice, **dataclasses.asdict(checked)}
