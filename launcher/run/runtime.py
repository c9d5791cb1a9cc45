"""``ladder train``: one training run, one process per rank, any model family, ZeRO 0-3.

``ladder train <overrides>`` composes the run; without launcher variables and with ``nproc=N > 1``
it starts N local ranks of itself (``launcher.run.local_launch``), otherwise this process is one rank:
rendezvous (``launcher.run.rendezvous``), DeepSpeed over ``cluster.dist_backend``, the same initial
weights on every rank (``torch.manual_seed(seed)``), then the loop.

Data: micro-batch ``micro`` of optimizer step ``step`` on rank ``rank`` is the family's training batch
``((step + data_offset) * accum + micro) * world + rank``, so a resumed run reads exactly what an
uninterrupted one would; ``data_offset`` (0 unless a loss spike rewound the run past the batches that led
to it, ``launcher.run.spikes``) lives in the checkpoint. Gradient accumulation makes world x
micro_batch_size x tokens_per_sample x accum equal train.global_batch_tokens. The LR warms up linearly
over warmup_fraction of the schedule (or warmup_tokens), then follows train.schedule (``Schedule``): a
cosine to min_lr_ratio x lr, WSD (constant, then a decay over the last decay_fraction) or constant; the
schedule spans train.tokens (max_steps x global batch when tokens is null), and the run stops after
max_steps when it is set. A run with train.init_from and no checkpoint of its own starts from that
checkpoint of another run (a WSD branch from its trunk): weights, optimizer, data position and RNGs, as
if it had been resumed.

Validation runs on every rank (ZeRO-3 needs every rank in each forward; the family evaluates
rank-locally) every val_every steps and after the last step; the values logged are the mean over ranks.

Files in ``run_dir`` (rank 0 writes all but the checkpoints):
  config.yaml      the resolved config, written once
  metrics.jsonl    append-only curve, see ``launcher.run.metrics`` (a resumed or rewound run appends a resume
                   marker, then again from its checkpoint step + 1; readers keep the latest attempt's record
                   per step)
  checkpoints/     see ``launcher.run.checkpoint``; resume=true continues from the latest
  state.json       replaced atomically at start, every logged step, every checkpoint and at exit:
      status            "running" | "completed" | "diverged" | "requeue" | "failed"
      step, tokens, flops    progress (optimizer steps, cumulative tokens and training FLOPs)
      total_steps       the step the run stops at
      checkpoint_step   step of the latest complete checkpoint, or null
      resumed_from      checkpoint step this attempt started from, or null
      world_size        ranks of this attempt
      exit_code         null while running, else the process exit code (below)
      message           null, or one line on why the run stopped (error, non-finite loss, signal)
      param_digests     on completion: sha256 of the full parameters as each rank sees them
      hostname, pid     where rank 0 runs
      job_key, job_attempt   which step wrote it: the job's key (``123``, ``123_4`` for an array task)
                        and the start of the run in that job (1, 2, ... for retries), as the job's step
                        log names them (from SCALELADDER_JOB_KEY and SCALELADDER_JOB_ATTEMPT, which the
                        lane shell sets); null outside a batch job. ``ladder status`` matches a report
                        to the job database's attempt by these, never by clocks.
      started_at, updated_at, finished_at    unix seconds (finished_at null while running)
      rewinds           every rewind after loss spikes so far (from_step, to_step, spikes, skipped_data_steps,
                        data_offset, at), kept across attempts
      checkpoint_writes the last CHECKPOINT_WRITES_KEPT saves (step, bytes of the tag, seconds until every rank
                        had written its part), kept across attempts: the write speed ``ladder project`` uses
      hangs             every hang of the run so far (attempt, job_key, ranks, hosts, step, silent_s, at), kept
                        across attempts;
                        an attempt its supervisor found hung ends with status "hung" and hung_ranks, hung_hosts
                        (``launcher.run.heartbeat``)
  heartbeat/       rank<k>.json, each rank's step and time, replaced at most every cluster.heartbeat_interval_s
                   and at every resume, checkpoint and rewind (``launcher.run.heartbeat``)

Exit codes (``ExitCode``): 0 completed, 1 failed, 2 bad input (the CLI's UserError), 3 diverged
(non-finite training loss on any rank), 4 hung (set by the supervisor of the ranks), 75 requeue (SIGTERM
or SIGUSR2: checkpoint written, run again to continue; EX_TEMPFAIL).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import hashlib
import json
import math
import os
import signal
import socket
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Optional

from launcher.arguments import command_parser
from launcher.config.run import RunConfig, TrainConfig, load_run_config
from launcher.errors import UserError
from launcher.files import aside_path, atomic_write, make_dir
from launcher.identity import config_hash, identity_changes
from launcher.locks import LOCK_FILE, FolderLock
from launcher.policy import JOB_ATTEMPT_ENV, JOB_KEY_ENV, ExitCode, ending
from launcher.resources import ladder_argv
from launcher.run import rendezvous, spikes, stragglers
from launcher.run.checkpoint import Checkpointer, TrainState
from launcher.run.heartbeat import HangWatch, Heartbeat
from launcher.run.memory import check_model_states, check_step
from launcher.run.metrics import MetricsLog, WandbMirror, wandb_mode
from launcher.run.state import read_state, state_path

FORCE_NEW = ("--force-new", "start the run over in a run_dir that holds another config (the old run is moved aside)")


def main(argv: list[str]) -> int:
    stop = StopRequest()  # first: a signal during the slow imports is still honoured
    args = command_parser("ladder train", "Train one run (nproc=N starts N local ranks).", [FORCE_NEW]).parse(argv)
    argv = args.overrides  # the ranks and retries below resume what this process claimed: no --force-new
    run = load_run_config(argv)
    launched = rendezvous.discover(os.environ).world_size  # 1: no launcher; nproc=N starts the ranks here
    check_fits(run, run.nproc if launched == 1 else launched)
    with run_dir_lock(run):
        claim_run_dir(run, args.force_new)
        if run.nproc > 1 and launched == 1:
            from launcher.run import local_launch

            os.environ[LOCK_HELD_ENV] = str(Path(run_dir_of(run)).resolve())  # the ranks' own lock is ours
            watch = HangWatch(run_dir_of(run), run.nproc, run.cluster.hang_timeout_s)
            try:
                code = local_launch.launch(
                    run.nproc,
                    [*ladder_argv(), "train", *argv],
                    run.cluster.step_launcher,
                    watch=watch,
                    tries=run.cluster.max_retries,
                )
            finally:
                os.environ.pop(LOCK_HELD_ENV, None)
        else:
            code = Trainer(run, stop).run()
    stop.ignore_from_now()  # the supervisor of local ranks too: its end is recorded once they have ended
    return code


LOCK_HELD_ENV = "SCALELADDER_RUN_DIR_LOCKED"  # set for the local ranks of a `ladder train nproc=N`


def check_fits(run: RunConfig, world: int) -> None:
    """Refuse, before any rank starts or any file is written, a run that cannot work: a global batch the
    ranks cannot split, model states or a micro-batch beyond a device's memory (``launcher.run.memory``)."""
    from models.family import family, model_config

    entry, cfg = family(run.model["family"]), model_config(run.model)
    BatchPlan.make(run.train, world, make_family(run).tokens_per_sample)
    memory = run.cluster.device_memory_bytes
    check_model_states(entry.param_counts(cfg)[0], world, memory, "model")
    check_step(run.train.micro_batch_size, entry.kept_per_sample(cfg), run.train.precision, memory)


CONFIG_FILE = "config.yaml"
SHOWN_CHANGES = 6  # differing fields a refusal names before "and N more"


def claim_run_dir(run: RunConfig, force_new: bool) -> None:
    """A run_dir holds one run: the same resolved config resumes there; another one is refused in one line
    naming the fields that differ (``identity_changes``: what decides the result; folders, names, W&B and
    the cluster may change), unless ``--force-new``, which moves the old run's files into
    ``<run_dir>.replaced-<unix time>/`` (nothing is deleted) and starts over. Only the process holding the
    run_dir's lock moves anything; the other ranks of a multi-rank start only check."""
    import yaml

    run_dir = run_dir_of(run)
    path = run_dir / CONFIG_FILE
    try:
        old = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        return
    except (OSError, ValueError, yaml.YAMLError) as exc:
        old = f"unreadable ({type(exc).__name__})"
    changes = identity_changes(old, dataclasses.asdict(run)) if isinstance(old, dict) else [("config.yaml", old, "")]
    if not changes:
        return
    if force_new:
        if rendezvous.discover(os.environ).rank == 0:
            set_run_aside(run_dir)
        return
    shown = ", ".join(f"{name} {_shown(a)} -> {_shown(b)}" for name, a, b in changes[:SHOWN_CHANGES])
    more = f" and {len(changes) - SHOWN_CHANGES} more" if len(changes) > SHOWN_CHANGES else ""
    raise UserError(
        f"run_dir: {str(run_dir)!r} holds a run of another config ({shown}{more}); pass --force-new to start "
        "over there (the old run is moved aside) or give a new run_dir="
    )


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def set_run_aside(run_dir: Path) -> Path:
    """Move every file of the run (its lock stays, held by us) into a sibling folder; returns that folder."""
    aside = aside_path(run_dir, "replaced")
    aside.mkdir()
    for entry in run_dir.iterdir():
        if entry.name != LOCK_FILE:
            entry.rename(aside / entry.name)
    print(f"ladder train: --force-new: the old run in {run_dir} is now {aside}", file=sys.stderr, flush=True)
    return aside


def run_dir_of(run: RunConfig) -> Path:
    """The run's folder: run_dir, else the one its config hash names."""
    return Path(run.run_dir) if run.run_dir else default_run_dir(run)


def run_dir_lock(run: RunConfig):
    """The run_dir's lock (``launcher.locks``), taken once per run before any work: by rank 0, or by the
    ``ladder train nproc=N`` that starts local ranks (they find the folder in LOCK_HELD_ENV)."""
    run_dir = make_dir(run_dir_of(run), "run_dir")
    if os.environ.get(LOCK_HELD_ENV) == str(run_dir.resolve()) or rendezvous.discover(os.environ).rank != 0:
        return contextlib.nullcontext()
    return FolderLock(run_dir, "run_dir")


def make_family(run: RunConfig):
    from models import build_family

    try:
        return build_family(run.model, run.data, run.seed)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def default_run_dir(run: RunConfig) -> Path:
    """``runs/<family>-<config hash>``: the same training config always lands in the same place."""
    return Path("runs") / f"{run.model['family']}-{config_hash(run)}"


# ----------------------------------------------------------------------------------- plan and schedule


@dataclasses.dataclass(frozen=True)
class BatchPlan:
    """How the global batch splits over ranks and accumulation steps, and which batch each gets."""

    world: int
    micro_batch_size: int
    tokens_per_sample: int
    accum: int

    @classmethod
    def make(cls, train: TrainConfig, world: int, tokens_per_sample: int) -> BatchPlan:
        per_micro = world * train.micro_batch_size * tokens_per_sample
        if train.global_batch_tokens % per_micro:
            raise UserError(
                f"train.global_batch_tokens: {train.global_batch_tokens} is not a multiple of "
                f"world {world} x micro_batch_size {train.micro_batch_size} x tokens_per_sample "
                f"{tokens_per_sample} = {per_micro}"
            )
        return cls(world, train.micro_batch_size, tokens_per_sample, train.global_batch_tokens // per_micro)

    @property
    def samples_per_step(self) -> int:
        return self.world * self.micro_batch_size * self.accum

    @property
    def tokens_per_step(self) -> int:
        return self.samples_per_step * self.tokens_per_sample

    def index(self, step: int, micro: int, rank: int) -> int:
        return (step * self.accum + micro) * self.world + rank


DECAY_SHAPES: dict[str, Callable[[float], float]] = {  # progress p in [0, 1] -> fraction of (lr - min_lr) left
    "linear": lambda p: 1.0 - p,
    "sqrt": lambda p: 1.0 - math.sqrt(p),  # Hägele et al. 2024: the best WSD cooldown
    "cosine": lambda p: 0.5 * (1.0 + math.cos(math.pi * p)),
}


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Linear warm-up, then a decay to min_lr along ``decay_shape``: step ``s`` (0-based) is at progress
    p = (s - decay_start) / (decay_end - decay_start), clipped to [0, 1]; before the decay the LR is the peak.

    cosine (Chinchilla): from the warm-up's end to total_steps. wsd (Hägele et al. 2024): constant until
    the last decay_fraction of the steps (``wsd_decay_start``, where a branch forks off its trunk), then
    the cooldown's steps decay, its last one at min_lr, so a run of any length is a constant-LR trunk plus
    a cooldown. constant: no decay (a WSD trunk: every branch's steps before its cooldown)."""

    lr: float
    min_lr: float
    warmup_steps: int
    total_steps: int
    decay_start: int
    decay_end: int  # == decay_start: never decays
    decay_shape: str

    @classmethod
    def make(cls, train: TrainConfig) -> Schedule:
        total = schedule_steps(train)
        warmup = (
            round(train.warmup_fraction * total)
            if train.warmup_tokens is None
            else round(train.warmup_tokens / train.global_batch_tokens)
        )
        fork = wsd_decay_start(total, train.decay_fraction)
        if train.schedule == "wsd" and fork < warmup:
            raise UserError(
                f"train.decay_fraction: {train.decay_fraction} starts the decay at step {fork}, "
                f"before the warm-up ends at step {warmup} of {total}"
            )
        start, end, shape = {
            "cosine": (warmup, total, "cosine"),
            "constant": (total, total, "linear"),
            "wsd": (fork - 1, total - 1, train.decay_shape),
        }[train.schedule]
        return cls(train.lr, train.lr * train.min_lr_ratio, warmup, total, start, end, shape)

    def __call__(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based)."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if step <= self.decay_start or self.decay_end <= self.decay_start:
            return self.lr
        progress = min(1.0, (step - self.decay_start) / (self.decay_end - self.decay_start))
        return self.min_lr + (self.lr - self.min_lr) * DECAY_SHAPES[self.decay_shape](progress)


def wsd_decay_start(total_steps: int, decay_fraction: float) -> int:
    """The step a WSD run of ``total_steps`` starts its cooldown at: where its branch forks off the trunk."""
    return total_steps - round(decay_fraction * total_steps)


def schedule_steps(train: TrainConfig) -> int:
    tokens = train.tokens
    if tokens is None:
        assert train.max_steps is not None  # TrainConfig requires tokens or max_steps
        tokens = train.max_steps * train.global_batch_tokens
    return max(1, math.ceil(tokens / train.global_batch_tokens))


def run_steps(train: TrainConfig) -> int:
    return train.max_steps if train.max_steps is not None else schedule_steps(train)


# --------------------------------------------------------------------------------------- DeepSpeed


def deepspeed_config(run: RunConfig, plan: BatchPlan) -> dict[str, Any]:
    """DeepSpeed's JSON config for this run: batch split, ZeRO stage and offload, precision, clipping."""
    ds, precision = run.deepspeed, run.train.precision
    zero: dict[str, Any] = {"stage": ds.stage}
    for key, device in (("offload_optimizer", ds.offload_optimizer), ("offload_param", ds.offload_param)):
        if device != "none":
            zero[key] = {"device": device, "pin_memory": run.cluster.device != "cpu"}
            if device == "nvme":
                zero[key]["nvme_path"] = ds.nvme_path
    fp16: dict[str, Any] = {"enabled": precision == "fp16"}
    if precision == "fp16":  # dynamic loss scaling: loss_scale 0
        fp16.update(
            loss_scale=0,
            initial_scale_power=ds.initial_scale_power,
            loss_scale_window=ds.loss_scale_window,
            hysteresis=ds.hysteresis,
            min_loss_scale=ds.min_loss_scale,
        )
    return {
        "train_batch_size": plan.samples_per_step,
        "train_micro_batch_size_per_gpu": plan.micro_batch_size,
        "gradient_accumulation_steps": plan.accum,
        "gradient_clipping": run.train.grad_clip,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": fp16,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def param_groups(model, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only: not on biases, norms' gains or scalars such as CLIP's logit scale."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


def make_optimizer(run: RunConfig, model):
    """AdamW: torch's, or DeepSpeed's CPU Adam when the optimizer state lives on the CPU (offload)."""
    groups = param_groups(model, run.train.weight_decay)
    betas = (run.train.beta1, run.train.beta2)
    if run.deepspeed.offload_optimizer != "none":
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, lr=run.train.lr, betas=betas, adamw_mode=True)
    import torch

    return torch.optim.AdamW(groups, lr=run.train.lr, betas=betas)


def param_digest(engine, sharded: bool) -> str:
    """sha256 of every full parameter as this rank sees it (ZeRO-3 shards gathered one at a time)."""
    import deepspeed

    digest = hashlib.sha256()
    for param in engine.module.parameters():
        with deepspeed.zero.GatheredParameters([param], enabled=sharded):
            digest.update(param.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def find_ranks(run: RunConfig) -> rendezvous.DistEnv:
    """This rank's place and its master, under the run's rendezvous settings."""
    return rendezvous.resolve(
        os.environ,
        run.rendezvous.interface or run.cluster.network_interface,
        run.rendezvous.port_base,
        run.rendezvous.port_span,
    )


def extensions_dir() -> str:
    """DeepSpeed JIT-builds its shm comm op on every start: one cache per Python environment (the set-up
    step pre-builds it there), so two environments never rebuild each other's copy under a running job."""
    return str(Path(sys.prefix) / "torch_extensions")


def build_engine(run: RunConfig, rank: int, world: int):
    """(family, batch plan, DeepSpeed engine) on joined ranks: the same initial weights everywhere."""
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", extensions_dir())
    import deepspeed
    import torch
    from deepspeed.utils import logger as ds_logger

    ds_logger.setLevel("WARNING")
    # DeepSpeed still calls torch's older collective names; one warning per call would drown the log
    warnings.filterwarnings("ignore", message=r".*torch\.distributed\.\w+` is deprecated", category=FutureWarning)
    deepspeed.init_distributed(dist_backend=run.cluster.dist_backend)
    torch.manual_seed(run.seed)
    family = make_family(run)
    model = family.build()
    torch.manual_seed(run.seed * 100_003 + rank + 1)  # distinct dropout streams per rank
    plan = BatchPlan.make(run.train, world, family.tokens_per_sample)
    engine, *_ = deepspeed.initialize(
        model=model, optimizer=make_optimizer(run, model), config=deepspeed_config(run, plan)
    )
    return family, plan, engine


# ---------------------------------------------------------------------------------------- run state


class StopRequest:
    """SIGTERM/SIGUSR2 (scheduler warning before the walltime) ask for a checkpoint and a requeue.

    The handler only records the first signal: more of them (schedulers and launchers often send several)
    change nothing while the checkpoint is written. Interrupted system calls are restarted (SA_RESTART),
    so C code blocked in one (a collective's socket read, a file write) does not fail with EINTR mid-save.
    """

    def __init__(self):
        self.signum = 0
        for sig in (signal.SIGTERM, signal.SIGUSR2):
            signal.signal(sig, self._set)
            signal.siginterrupt(sig, False)

    def _set(self, signum, _frame) -> None:
        if not self.signum:
            self.signum = signum

    def ignore_from_now(self) -> None:
        """Once the run's end is recorded, a late warning (or a launcher's SIGTERM to a rank still exiting) has
        nothing left to save: ignored, it cannot turn an orderly end into a death by signal while the
        interpreter finalizes (which puts Python's own handlers back to the default, killing, action)."""
        for sig in (signal.SIGTERM, signal.SIGUSR2):
            signal.signal(sig, signal.SIG_IGN)


class RunStateFile:
    """``state.json``: rank 0's account of the run for the job database (schema in the module docstring)."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.path = state_path(run_dir)
        self.enabled = enabled
        now = time.time()
        self.state: dict[str, Any] = {
            "status": "running",
            "step": 0,
            "tokens": 0,
            "flops": 0,
            "total_steps": None,
            "checkpoint_step": None,
            "resumed_from": None,
            "world_size": None,
            "exit_code": None,
            "message": None,
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            **job_step(os.environ),
            "started_at": now,
            "updated_at": now,
            "finished_at": None,
            **(carried(run_dir) if enabled else {}),
        }

    def update(self, **fields: Any) -> None:
        if not self.enabled:
            return
        self.state.update(fields, updated_at=time.time())
        atomic_write(self.path, json.dumps(self.state, indent=1) + "\n")

    def finish(self, code: ExitCode, message: Optional[str] = None, **fields: Any) -> int:
        self.update(status=ending(code).status, exit_code=int(code), message=message, finished_at=time.time(), **fields)
        return int(code)


CARRIED = ("hangs", "rewinds", "checkpoint_writes")  # histories a new attempt's state.json keeps from the one before
CHECKPOINT_WRITES_KEPT = 20  # state.json is rewritten at every logged step: a bounded history


def carried(run_dir: Path) -> dict[str, list]:
    """The earlier attempts' hangs, rewinds and checkpoint writes, from the state.json this attempt replaces."""
    previous = read_state(run_dir, warn=True)
    return {key: list(getattr(previous, key)) if previous else [] for key in CARRIED}


def job_step(environ: Mapping[str, str]) -> dict[str, Any]:
    """Which step of which job this start is, as the lane shell told it (null fields outside a job)."""
    attempt = environ.get(JOB_ATTEMPT_ENV, "")
    return {
        "job_key": environ.get(JOB_KEY_ENV) or None,
        "job_attempt": int(attempt) if attempt.isdigit() else None,
    }


# ------------------------------------------------------------------------------------------- trainer


def import_before_joining() -> None:
    """Import DeepSpeed before the process group exists: its ``barrier(group=GroupMember.WORLD)`` binds
    the default group as a default argument at import, and bound to a live group that argument would
    keep it, and its gloo threads, alive after ``close_process_group``."""
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", extensions_dir())
    import deepspeed  # noqa: F401


def release_engine(engine) -> None:
    """Let the collector free a DeepSpeed engine, and with it the process groups it refers to.

    ``engine.destroy()`` removes the hooks DeepSpeed put on parameters and modules (torch holds them
    from C++, where the collector cannot see them). ZeRO-3 also keeps the model on a module-level stack
    (``parameter_offload.FWD_MODULE_STACK``) and its parameter coordinator, hence the engine, in the
    ``lru_cache`` of one of the coordinator's methods; both let go here."""
    if engine is None:
        return
    try:
        engine.destroy()
    except Exception as exc:  # noqa: BLE001 - a half-broken engine after a failure: free what can be freed
        print(f"note: DeepSpeed engine.destroy() failed ({type(exc).__name__}: {exc})", file=sys.stderr)
    stack = getattr(sys.modules.get("deepspeed.runtime.zero.parameter_offload"), "FWD_MODULE_STACK", None)
    if stack is not None:
        stack[:] = [module for module in stack if module is not engine.module]
    for cache in [o for o in gc.get_objects() if isinstance(o, functools._lru_cache_wrapper)]:
        if (getattr(cache, "__module__", None) or "").startswith("deepspeed."):
            cache.cache_clear()


def leave_together() -> None:
    """Every rank waits for the slowest (rank 0 closes W&B) before any exits: srun --kill-on-bad-exit kills a
    step's other ranks when one exits non-zero, so a rank ending with 75 first would kill rank 0 mid-exit
    and make a checkpointed run's step a death by signal."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def close_process_group() -> None:
    """Destroy every process group, and so end its worker threads, while the interpreter is whole.

    A gloo worker thread lets go of a finished collective a moment after the caller has its result;
    when the caller has dropped the collective's tensors first (the last ``all_gather_object``'s
    buffers), the worker frees their Python objects and takes the GIL to do it. Once the interpreter
    finalizes, taking the GIL ends the thread (pthread_exit) inside a noexcept frame and the rank
    aborts ("terminate called without an active exception", exit 134) after a completed run.
    ``destroy_process_group`` alone only unregisters the groups: a C++ group and its threads live on
    while anything refers to it - the engine and its optimizer (``data_parallel_group``...), DeepSpeed's
    group cache, default arguments bound at import (``import_before_joining``, ``rendezvous.connect``).
    The caller lets go of the engine first (``release_engine``); here the collector frees its cycles,
    DeepSpeed's ``destroy_process_group`` drops its cache, and the last reference going runs
    ProcessGroupGloo's destructor, which joins the workers with the GIL released: each finishes what it
    holds (a collective still in flight included) before the interpreter can begin to finalize."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return
    gc.collect()
    ds_comm = sys.modules.get("deepspeed.comm.comm")
    if ds_comm is not None and ds_comm.cdb is not None:
        ds_comm.destroy_process_group()
    else:
        dist.destroy_process_group()
    gc.collect()


class Trainer:
    """One rank of one run."""

    def __init__(self, run: RunConfig, stop: StopRequest):
        self.cfg = run
        self.run_dir = run_dir_of(run)
        self.stop = stop

    def run(self) -> int:
        run = self.cfg
        dist_env = find_ranks(run)
        self.rank, self.world = dist_env.rank, dist_env.world_size
        make_dir(self.run_dir, "run_dir")
        self.state_file = RunStateFile(self.run_dir, enabled=self.rank == 0)
        self.state_file.update(world_size=self.world)
        self.wandb: Optional[WandbMirror] = None
        ended_together = False
        try:
            import_before_joining()
            rendezvous.connect(dist_env, run.cluster.dist_backend, run.rendezvous.timeout_s)
            code = self._train()
            ended_together = True  # every end _train returns is reached by all ranks at the same step
            return code
        except UserError as exc:
            self.state_file.finish(ExitCode.USAGE, str(exc))
            raise
        except KeyboardInterrupt:
            self.state_file.finish(ExitCode.FAILED, "interrupted (SIGINT)")
            raise
        except Exception as exc:  # noqa: BLE001 - recorded, then the traceback for the log
            traceback.print_exc()
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            return self.state_file.finish(ExitCode.FAILED, f"{type(exc).__name__}: {first_line}")
        finally:
            if self.wandb is not None:
                self.wandb.finish(self.state_file.state["exit_code"])
            if "heartbeat" in self.__dict__:
                self.heartbeat.close()
            if ended_together:
                leave_together()
            release_engine(self.__dict__.pop("engine", None))
            close_process_group()

    def _setup(self) -> None:
        import torch

        run = self.cfg
        self.family, self.plan, self.engine = build_engine(run, self.rank, self.world)
        self.comm_device = rendezvous.collective_device()
        self.schedule = Schedule.make(run.train)
        self.total_steps = run_steps(run.train)
        self.flops_per_token = self.family.flops_per_token()
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(run.train.precision, torch.float32)
        self.checkpointer = Checkpointer(self.run_dir, self.rank, tuple(run.train.checkpoint_steps))
        self.metrics = MetricsLog(self.run_dir)
        self.heartbeat = Heartbeat(self.run_dir, self.rank, run.cluster.heartbeat_interval_s)
        train = run.train
        self.spikes = spikes.SpikeDetector(train.spike_window, train.spike_threshold, train.spike_patience)
        self.corrupt = spikes.corrupt_steps()  # test-only hook, empty otherwise
        self.delay = stragglers.test_delay(self.rank)  # test-only hook, 0 otherwise
        self.logged_tokens, self.busy_s, self.forward_s = 0, 0.0, 0.0  # since the last metrics record

    def _start_wandb(self) -> None:
        run = self.cfg
        total, non_embedding = self.family.param_counts()
        tokens = self.schedule.total_steps * self.plan.tokens_per_step
        config = dict(
            dataclasses.asdict(run), N=total, N_non_embedding=non_embedding, D=tokens, C=self.flops_per_token * tokens
        )
        run_id = hashlib.sha1(str(self.run_dir.resolve()).encode()).hexdigest()[:16]
        mode = wandb_mode(run.wandb.mode, run.cluster.offline_compute)
        self.wandb = WandbMirror(
            mode,
            self.run_dir,
            run_id,
            config,
            project=run.wandb.project,
            entity=run.wandb.entity,
            group=run.wandb.group,
            job_type=run.wandb.job_type or self.family.name,
            name=run.wandb.name,
            tags=run.wandb.tags,
        )

    def _write_config(self) -> None:
        import yaml

        path = self.run_dir / CONFIG_FILE
        if not path.exists():
            atomic_write(path, yaml.safe_dump(dataclasses.asdict(self.cfg), sort_keys=False))

    def _train(self) -> int:
        import torch.distributed as dist

        self._setup()
        state = self._resume()
        while state.step < self.total_steps:
            train_loss, lr, stop_asked = self._step(state)
            progress = {"step": state.step, "tokens": state.tokens, "flops": state.flops}
            if not math.isfinite(train_loss):
                return self.state_file.finish(
                    ExitCode.DIVERGED, f"non-finite training loss at step {state.step}", **progress
                )
            spike, rewind = self.spikes.observe(state.step, train_loss)
            if rewind:
                if state.rewinds >= self.cfg.train.max_rewinds:
                    return self.state_file.finish(
                        ExitCode.DIVERGED,
                        f"{len(self.spikes.streak)} loss spikes in a row at step {state.step} "
                        f"after {state.rewinds} rewinds (train.max_rewinds)",
                        **progress,
                    )
                state = self._rewind(state)
                continue
            last = state.step == self.total_steps
            evaluation = self._evaluate() if last or state.step % self.cfg.train.val_every == 0 else {}
            if last or evaluation or state.step % self.cfg.train.log_every == 0:
                self._log(state, train_loss, lr, evaluation, spike)
                self.state_file.update(**progress)
            stop_asked = stop_asked and not last
            periodic = state.step % self.cfg.train.checkpoint_every == 0 and not self.spikes.in_streak
            kept = state.step in self.cfg.train.checkpoint_steps  # a WSD trunk's branch points
            saved = stop_asked or last or periodic or kept  # no periodic checkpoint inside a streak of spikes
            if saved:
                write = dataclasses.asdict(self.checkpointer.save(self.engine, state))
                writes = [*self.state_file.state.get("checkpoint_writes", []), write][-CHECKPOINT_WRITES_KEPT:]
                self.state_file.update(checkpoint_step=state.step, checkpoint_writes=writes)
            if stop_asked:
                name = signal.Signals(self.stop.signum).name if self.stop.signum else "a signal on another rank"
                return self.state_file.finish(ExitCode.REQUEUE, f"stopped at step {state.step} by {name}", **progress)
            self.heartbeat.beat(state.step, milestone=saved)
        digests = [None] * self.world
        dist.all_gather_object(digests, param_digest(self.engine, self.cfg.deepspeed.stage == 3))
        return self.state_file.finish(
            ExitCode.COMPLETED, step=state.step, tokens=state.tokens, flops=state.flops, param_digests=digests
        )

    def _resume(self) -> TrainState:
        """The latest checkpoint's state (resume=true), else train.init_from's, else step 0; records the start
        in state.json."""
        state = TrainState(samples_per_step=self.plan.samples_per_step)
        own = self.checkpointer.load(self.engine, self.plan.samples_per_step) if self.cfg.resume else None
        if own is not None:
            state = own
        elif self.cfg.train.init_from:
            state = self.checkpointer.load_from(self.engine, self.cfg.train.init_from, self.plan.samples_per_step)
        if self.rank == 0:
            self._write_config()
            self._start_wandb()
            if self.metrics.path.exists() and self.metrics.path.stat().st_size:  # an earlier attempt logged
                self.metrics.mark_resume(state.step)
        resumed_from = state.step or None
        self.state_file.update(
            step=state.step,
            tokens=state.tokens,
            flops=state.flops,
            total_steps=self.total_steps,
            resumed_from=resumed_from,
            checkpoint_step=resumed_from,
        )
        self.heartbeat.beat(state.step, milestone=True)
        return state

    def _rewind(self, state: TrainState) -> TrainState:
        """Back to the latest checkpoint (it predates the streak of spikes), past every batch read since."""
        rewound = self.checkpointer.load(self.engine, self.plan.samples_per_step)
        if rewound is None:
            raise RuntimeError(f"loss spikes at steps {self.spikes.streak}: no checkpoint to rewind to")
        skipped = state.step - rewound.step
        rewound.data_offset, rewound.rewinds = state.data_offset + skipped, state.rewinds + 1
        rewound.data_index = self.plan.index(rewound.step + rewound.data_offset, 0, 0)
        first_data = rewound.step + state.data_offset
        record = {
            "from_step": state.step,
            "to_step": rewound.step,
            "spikes": list(self.spikes.streak),
            "skipped_data_steps": [first_data, first_data + skipped],
            "data_offset": rewound.data_offset,
            "at": time.time(),
        }
        if self.rank == 0:
            self.metrics.mark_resume(rewound.step)
            print(
                f"ladder train: loss spikes at steps {record['spikes']}: rewound to step {rewound.step}, "
                f"skipping data steps [{first_data}, {first_data + skipped})",
                file=sys.stderr,
                flush=True,
            )
        self.spikes.reset()
        self.logged_tokens, self.busy_s, self.forward_s = 0, 0.0, 0.0
        self.state_file.update(
            step=rewound.step,
            tokens=rewound.tokens,
            flops=rewound.flops,
            rewinds=[*self.state_file.state.get("rewinds", []), record],
        )
        self.heartbeat.beat(rewound.step, milestone=True)
        return rewound

    def _step(self, state: TrainState) -> tuple[float, float, bool]:
        """One optimizer step over every micro-batch; (mean loss over micro-batches and ranks, lr, stop?)."""
        import torch
        import torch.distributed as dist

        started = time.perf_counter()
        for group in self.engine.optimizer.param_groups:
            group["lr"] = self.schedule(state.step)
        lr = self.engine.get_lr()[0]  # what the optimizer will use, as DeepSpeed reports it
        loss_sum = torch.zeros((), device=self.comm_device)
        data_step = state.step + state.data_offset  # past the batches rewinds skipped
        for micro in range(self.plan.accum):
            index = self.plan.index(data_step, micro, self.rank)
            batch = spikes.corrupted(
                self.family.batch("train", index, self.plan.micro_batch_size), data_step, self.corrupt
            )
            batch = {k: v.to(self.dtype) if v.is_floating_point() else v for k, v in batch.items()}
            forward_started = time.perf_counter()
            loss = self.family.loss(self.engine, batch)
            time.sleep(self.delay)
            self.forward_s += time.perf_counter() - forward_started  # the LM's forward waits on no other rank
            self.engine.backward(loss)
            self.engine.step()
            loss_sum += loss.detach().float().to(self.comm_device)
        stop = torch.tensor(float(self.stop.signum != 0), device=self.comm_device)
        shared = torch.stack([loss_sum / self.plan.accum, stop])
        dist.all_reduce(shared)  # the mean loss and whether any rank was asked to stop, in one call
        state.step += 1
        state.tokens += self.plan.tokens_per_step
        state.flops += self.flops_per_token * self.plan.tokens_per_step
        state.data_index = self.plan.index(state.step + state.data_offset, 0, 0)
        self.busy_s += time.perf_counter() - started
        self.logged_tokens += self.plan.tokens_per_step
        return shared[0].item() / self.world, lr, shared[1].item() > 0

    def _evaluate(self) -> dict[str, float]:
        import torch
        import torch.distributed as dist

        values = self.family.evaluate(self.engine, self.cfg.train.val_batches, self.plan.micro_batch_size)
        keys = sorted(values)
        mean = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self.comm_device)
        dist.all_reduce(mean)
        return {k: v / self.world for k, v in zip(keys, mean.tolist())}

    def _log(self, state: TrainState, train_loss: float, lr: float, evaluation: dict[str, float], spike: bool) -> None:
        """Rank 0 appends the step's record; throughput counts training time since the last record only."""
        tokens_per_s = self.logged_tokens / self.busy_s
        slowest = stragglers.gather(self.forward_s, self.rank, self.world, self.run_dir)  # every rank, at the same step
        self.logged_tokens, self.busy_s, self.forward_s = 0, 0.0, 0.0
        if self.rank != 0:
            return
        peak = self.cfg.cluster.device_peak_flops
        record = {
            "step": state.step,
            "tokens": state.tokens,
            "flops": state.flops,
            "train_loss": train_loss,
            **evaluation,
            "lr": lr,
            "tokens_per_s": tokens_per_s,
            "mfu": tokens_per_s * self.flops_per_token / (peak * self.world) if peak else None,
            **slowest,
            "spike": spike,
            "rewinds": state.rewinds,
            "data_offset": state.data_offset,
            "time": time.time(),
        }
        record = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}
        self.metrics.append(record)
        assert self.wandb is not None  # rank 0 started it (_resume)
        self.wandb.log(record)
