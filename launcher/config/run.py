"""The typed configuration of one run: what ``ladder train`` executes on every rank.

Hydra composes the run from the groups in ``hydra_configs/`` (launcher/config/compose.py); ``validate``
turns the plain dict into these dataclasses, and the model and data sections into ``models/``'s schemas.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Literal, Optional

from launcher.config.cluster import ClusterProfile
from launcher.config.compose import compose
from launcher.config.validate import SEED_RANGE, Range, validate
from launcher.errors import UserError


@dataclasses.dataclass
class TrainConfig:
    """Optimisation and bookkeeping of one run (tokens are samples for CLIP)."""

    tokens: Optional[Annotated[int, Range(ge=1)]] = None  # D; the LR schedule spans it (Chinchilla-style)
    max_steps: Optional[Annotated[int, Range(ge=1)]] = (
        None  # stop after K optimizer steps; the schedule still spans `tokens`
    )
    global_batch_tokens: int = 4096  # reached with gradient accumulation over ranks x micro-batches
    micro_batch_size: int = 8  # samples per rank per micro-step
    lr: Annotated[float, Range(gt=0)] = 1e-3
    min_lr_ratio: Annotated[float, Range(ge=0, le=1)] = 0.1  # the schedule decays to 10% of the peak
    warmup_fraction: float = 0.05
    warmup_tokens: Optional[int] = None  # absolute warm-up, replacing warmup_fraction: a WSD trunk and its
    #                                      branches of different lengths share it
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"  # after the warm-up (launcher.run.runtime.Schedule)
    decay_fraction: float = 0.2  # wsd: the last fraction of the run's steps decays to min_lr_ratio x lr
    decay_shape: Literal["linear", "sqrt", "cosine"] = "sqrt"  # wsd: 1 - p, 1 - sqrt(p) (Hägele et al. 2024), cosine
    init_from: Optional[str] = None  # a checkpoint tag folder (<run_dir>/checkpoints/step_XXXXXXXX) of another
    #                                  run to start from when this run has no checkpoint yet: a WSD branch's trunk
    checkpoint_steps: list[int] = dataclasses.field(default_factory=list)  # also checkpoint at these steps and
    #                                  keep them (a trunk's branch points)
    weight_decay: Annotated[float, Range(ge=0)] = 0.1
    beta1: Annotated[float, Range(ge=0, lt=1)] = 0.9
    beta2: Annotated[float, Range(ge=0, lt=1)] = 0.95
    grad_clip: Annotated[float, Range(ge=0)] = 1.0
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    log_every: int = 1
    val_every: int = 20
    val_batches: int = 4
    checkpoint_every: int = 50
    # loss spikes (launcher/run/spikes.py): a loss over median + spike_threshold x MAD (in sigmas) of the
    # last spike_window losses is a spike; spike_patience in a row rewind to the checkpoint before them
    # and skip their data; the streak after max_rewinds rewinds ends the run as diverged
    spike_window: int = 50
    spike_threshold: float = 6.0
    spike_patience: int = 3
    max_rewinds: int = 3

    def __post_init__(self):
        for name in (
            "global_batch_tokens",
            "micro_batch_size",
            "log_every",
            "val_every",
            "val_batches",
            "checkpoint_every",
            "spike_window",
            "spike_patience",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name}: must be >= 1, got {getattr(self, name)}")
        if self.spike_threshold <= 0:
            raise ValueError(f"train.spike_threshold: must be > 0, got {self.spike_threshold}")
        if self.max_rewinds < 0:
            raise ValueError(f"train.max_rewinds: must be >= 0, got {self.max_rewinds}")
        if self.tokens is None and self.max_steps is None:
            raise ValueError("train: set train.tokens (the run's D) or train.max_steps")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError(f"train.warmup_fraction: must be in [0, 1), got {self.warmup_fraction}")
        if self.warmup_tokens is not None and self.warmup_tokens < 0:
            raise ValueError(f"train.warmup_tokens: must be >= 0, got {self.warmup_tokens}")
        if not 0.0 < self.decay_fraction <= 1.0:
            raise ValueError(f"train.decay_fraction: must be in (0, 1], got {self.decay_fraction}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"train.min_lr_ratio: must be in [0, 1], got {self.min_lr_ratio}")
        if any(step < 1 for step in self.checkpoint_steps):
            raise ValueError(f"train.checkpoint_steps: steps must be >= 1, got {self.checkpoint_steps}")


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


WandbMode = Literal["offline", "online", "disabled"]


@dataclasses.dataclass
class WandbConfig:
    """W&B mirror of metrics.jsonl: offline on compute nodes, synced later from a login node."""

    mode: WandbMode = "offline"
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
            raise ValueError(
                f"rendezvous.port_base: [{self.port_base}, {self.port_base + self.port_span}) must lie "
                f"within [1024, 65536) with port_span >= 1"
            )


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
    seed: Annotated[int, SEED_RANGE] = 0
    resume: bool = True  # continue from run_dir's last checkpoint when there is one
    sweep: Optional[dict] = None  # present in the composed config; read by the planner, not by a run
    sweeps_root: str = "sweeps"  # where the planner puts <sweeps_root>/<sweep.name>/; not read by a run


def load_run_config(overrides: list[str]) -> RunConfig:
    """Compose and validate a run; the model and data sections are checked by ``models.family``, their home."""
    from models.family import checked_data, checked_model

    raw = compose(overrides)
    run = validate(RunConfig, raw, "")
    try:
        run.model, run.data = checked_model(run.model), checked_data(run.data)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if run.nproc < 1:
        raise UserError(f"nproc: must be >= 1, got {run.nproc}")
    return run
