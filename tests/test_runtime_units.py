"""The runtime's parts that need no second rank: schedule, batch split, DeepSpeed config, files, signals."""

from __future__ import annotations

import ctypes
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from launcher.config.run import load_run_config
from launcher.errors import UserError
from launcher.run import local_launch
from launcher.run.checkpoint import Checkpointer, atomic_write
from launcher.run.metrics import MetricsLog, read_metrics
from launcher.run.runtime import (
    BatchPlan,
    RunStateFile,
    Schedule,
    StopRequest,
    deepspeed_config,
    default_run_dir,
    make_family,
    param_groups,
    run_steps,
    schedule_steps,
    wsd_decay_start,
)


def train_config(*overrides: str):
    return load_run_config(list(overrides)).train


# -------------------------------------------------------------------------------------- schedule


def test_schedule_warms_up_linearly_then_decays_along_a_cosine_to_the_floor():
    train = train_config(
        "train.tokens=409600",
        "train.global_batch_tokens=4096",
        "train.lr=1e-3",
        "train.warmup_fraction=0.1",
        "train.min_lr_ratio=0.1",
    )
    schedule = Schedule.make(train)
    assert (schedule.total_steps, schedule.warmup_steps) == (100, 10)
    assert [schedule(s) for s in range(10)] == pytest.approx([1e-3 * (s + 1) / 10 for s in range(10)])
    decay = [schedule(s) for s in range(10, 101)]
    assert all(a > b for a, b in zip(decay, decay[1:]))
    assert schedule(55) == pytest.approx((1e-3 + 1e-4) / 2)  # halfway through the cosine
    assert schedule(100) == pytest.approx(1e-4) and schedule(150) == pytest.approx(1e-4)


WSD = (
    "train.tokens=409600",
    "train.global_batch_tokens=4096",
    "train.lr=1e-3",
    "train.warmup_tokens=40960",
    "train.min_lr_ratio=0.1",
)  # 100 steps, 10 of warm-up


@pytest.mark.parametrize(
    "shape, at_84, at_89",
    [
        ("linear", 1e-4 + 9e-4 * 0.75, 1e-4 + 9e-4 * 0.5),  # 1 - p
        ("sqrt", 1e-4 + 9e-4 * 0.5, 1e-4 + 9e-4 * (1 - 0.5**0.5)),  # 1 - sqrt(p): p = 0.25 -> 0.5
        ("cosine", 1e-4 + 9e-4 * 0.5 * (1 + 0.5**0.5), 1e-4 + 9e-4 * 0.5),  # cos(pi/4) = sqrt(2)/2
    ],
)
def test_wsd_is_constant_then_decays_over_the_last_fraction_along_its_shape(shape, at_84, at_89):
    schedule = Schedule.make(
        train_config(*WSD, "train.schedule=wsd", "train.decay_fraction=0.2", f"train.decay_shape={shape}")
    )
    assert (schedule.warmup_steps, wsd_decay_start(100, 0.2), schedule.total_steps) == (10, 80, 100)
    assert [schedule(s) for s in range(10)] == pytest.approx([1e-3 * (s + 1) / 10 for s in range(10)])
    assert [schedule(s) for s in range(10, 80)] == [1e-3] * 70  # stable: exactly the peak until the fork
    # the cooldown's 20 steps 80..99 are at p = (s - 79) / 20: step 84 at 0.25, step 89 at 0.5, step 99 at 1
    assert (schedule(84), schedule(89)) == pytest.approx((at_84, at_89), rel=1e-12)
    assert schedule(80) < 1e-3 and schedule(99) == pytest.approx(1e-4) and schedule(130) == pytest.approx(1e-4)


def test_a_constant_trunk_is_every_wsd_run_before_its_cooldown():
    trunk = Schedule.make(train_config(*WSD, "train.schedule=constant"))
    assert [trunk(s) for s in (0, 9, 10, 99, 100, 500)] == pytest.approx([1e-4, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3])
    for tokens in (204800, 307200, 409600):  # branches of 50, 75 and 100 steps share the trunk's warm-up
        branch = Schedule.make(train_config(*WSD, f"train.tokens={tokens}", "train.schedule=wsd"))
        fork = wsd_decay_start(branch.total_steps, 0.2)
        assert fork == tokens // 4096 - round(0.2 * tokens / 4096)
        assert [branch(s) for s in range(fork)] == [trunk(s) for s in range(fork)] and branch(fork) < trunk(fork)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.schedule=step", "train.schedule"),
        ("train.decay_shape=exp", "train.decay_shape"),
        ("train.decay_fraction=0", r"train.decay_fraction: must be in \(0, 1\], got 0"),
        ("train.decay_fraction=1.5", "train.decay_fraction"),
        ("train.warmup_tokens=-1", "train.warmup_tokens: must be >= 0"),
        ("train.checkpoint_steps=[0]", "train.checkpoint_steps"),
    ],
)
def test_schedule_fields_are_checked_in_one_line(override, message):
    with pytest.raises(UserError, match=message) as caught:
        train_config(*WSD, override)
    assert "\n" not in str(caught.value)


def test_a_decay_that_would_start_inside_the_warm_up_is_refused():
    with pytest.raises(UserError, match="train.decay_fraction: 0.95 starts the decay at step 5, before the warm-up"):
        Schedule.make(train_config(*WSD, "train.schedule=wsd", "train.decay_fraction=0.95"))


def test_schedule_spans_the_tokens_and_max_steps_only_stops_the_run():
    train = train_config("train.tokens=10000", "train.global_batch_tokens=4096", "train.max_steps=2")
    assert (schedule_steps(train), run_steps(train)) == (3, 2)
    train = train_config("train.tokens=null", "train.max_steps=7")
    assert (schedule_steps(train), run_steps(train)) == (7, 7)
    train = train_config("train.tokens=40960", "train.max_steps=null", "train.global_batch_tokens=4096")
    assert run_steps(train) == 10


# ------------------------------------------------------------------------------------ batch plan


def test_batch_plan_accumulates_to_the_global_batch():
    plan = BatchPlan.make(train_config("train.global_batch_tokens=4096", "train.micro_batch_size=8"), 2, 64)
    assert plan.accum == 4 and plan.tokens_per_step == 4096 and plan.samples_per_step == 64


def test_batch_plan_that_does_not_divide_names_the_numbers():
    train = train_config("train.global_batch_tokens=4000", "train.micro_batch_size=8")
    with pytest.raises(
        UserError,
        match=r"train.global_batch_tokens: 4000 is not a multiple of world 2 x "
        r"micro_batch_size 8 x tokens_per_sample 64 = 1024",
    ):
        BatchPlan.make(train, 2, 64)


def test_each_step_reads_a_fresh_contiguous_range_of_batches_whatever_the_split():
    """Same samples per step for 1 rank x 8 micro-batches and 4 ranks x 2: the data order is the same."""
    for world, accum in ((1, 8), (2, 4), (4, 2)):
        plan = BatchPlan(world, 8, 64, accum)
        for step in range(3):
            seen = sorted(plan.index(step, m, r) for m in range(accum) for r in range(world))
            assert seen == list(range(step * 8, step * 8 + 8))


# ----------------------------------------------------------------------------- DeepSpeed config


def test_deepspeed_config_is_accepted_by_deepspeed_with_offload_and_loss_scaling():
    from deepspeed.runtime.config import DeepSpeedConfig

    run = load_run_config(
        [
            "deepspeed=zero3_offload",
            "train.precision=fp16",
            "deepspeed.initial_scale_power=12",
            "deepspeed.loss_scale_window=500",
            "deepspeed.hysteresis=3",
            "deepspeed.min_loss_scale=2",
            "train.grad_clip=0.5",
        ]
    )
    plan = BatchPlan.make(run.train, 1, 64)
    parsed = DeepSpeedConfig(deepspeed_config(run, plan))
    zero = parsed.zero_config
    assert (zero.stage, zero.offload_optimizer.device, zero.offload_param.device) == (3, "cpu", "cpu")
    assert zero.offload_optimizer.pin_memory is False  # no pinned memory without a GPU
    fp16 = parsed.float16_config
    assert (
        fp16.enabled,
        fp16.loss_scale,
        fp16.initial_scale_power,
        fp16.loss_scale_window,
        fp16.hysteresis,
        fp16.min_loss_scale,
    ) == (True, 0, 12, 500, 3, 2)
    assert (parsed.train_batch_size, parsed.gradient_accumulation_steps, parsed.gradient_clipping) == (64, 8, 0.5)
    assert not parsed.bfloat16_config.enabled


def test_deepspeed_config_bf16_and_plain_stages():
    for stage in range(4):
        run = load_run_config([f"deepspeed=zero{stage}", "train.precision=bf16"])
        config = deepspeed_config(run, BatchPlan.make(run.train, 2, 64))
        assert config["zero_optimization"] == {"stage": stage}
        assert config["bf16"] == {"enabled": True} and config["fp16"] == {"enabled": False}


def test_no_weight_decay_on_biases_and_layernorms():
    run = load_run_config(["train.weight_decay=0.1"])
    model = make_family(run).build()
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {names[id(p)] for p in no_decay["params"]} == {
        n for n, p in model.named_parameters() if n.endswith("bias") or ".ln_" in n or n.startswith("ln_")
    }
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


# --------------------------------------------------------------------------------------- files


def test_read_metrics_keeps_the_latest_attempt(tmp_path):
    log = MetricsLog(tmp_path)
    for step in (1, 2, 3, 4, 5):  # first attempt, checkpointed at 3, killed after logging 5
        log.append({"step": step, "train_loss": 10.0 - step})
    log.mark_resume(3)  # what the resumed attempt writes first
    for step in (4, 5, 6):  # the resumed attempt redoes 4 and 5
        log.append({"step": step, "train_loss": 20.0 - step})
    with open(log.path, "a") as handle:
        handle.write('{"step": 7, "train_lo')  # torn by a kill
    records = read_metrics(log.path)
    assert [(r["step"], r["train_loss"]) for r in records] == [(1, 9), (2, 8), (3, 7), (4, 16), (5, 15), (6, 14)]


def test_metrics_refuse_nan_and_append_whole_lines(tmp_path):
    log = MetricsLog(tmp_path)
    log.append({"step": 1, "val_loss": None})
    with pytest.raises(ValueError):
        log.append({"step": 2, "train_loss": math.nan})
    assert log.path.read_text() == '{"step":1,"val_loss":null}\n'


def test_atomic_write_replaces_whole_files(tmp_path):
    path = tmp_path / "state.json"
    atomic_write(path, json.dumps({"status": "running"}))
    atomic_write(path, json.dumps({"status": "completed"}))
    assert json.loads(path.read_text()) == {"status": "completed"}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_state_file_names_the_job_step_that_wrote_it(tmp_path, monkeypatch):
    """The lane shell's job key and attempt (the step log's) go into state.json; outside a job, null."""
    monkeypatch.setenv("SCALELADDER_JOB_KEY", "4300_2")
    monkeypatch.setenv("SCALELADDER_JOB_ATTEMPT", "3")
    RunStateFile(tmp_path, enabled=True).update(step=1)
    state = json.loads((tmp_path / "state.json").read_text())
    assert (state["job_key"], state["job_attempt"], state["step"]) == ("4300_2", 3, 1)
    monkeypatch.delenv("SCALELADDER_JOB_KEY")
    monkeypatch.delenv("SCALELADDER_JOB_ATTEMPT")
    RunStateFile(tmp_path, enabled=True).update(step=2)
    state = json.loads((tmp_path / "state.json").read_text())
    assert (state["job_key"], state["job_attempt"]) == (None, None)


def test_no_checkpoint_yet(tmp_path):
    assert Checkpointer(tmp_path, 0).latest_tag() is None
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "latest").write_text("step_00000010\n")
    assert Checkpointer(tmp_path, 0).latest_tag() == "step_00000010"


def test_default_run_dir_follows_the_training_config_only():
    base = default_run_dir(load_run_config([]))
    assert base == default_run_dir(load_run_config(["nproc=2", "wandb.mode=disabled"]))
    assert base != default_run_dir(load_run_config(["model.n_layer=3"]))
    assert base.parent == Path("runs") and base.name.startswith("gpt_neox-")


# ------------------------------------------------------------------------------ local launching


def test_threads_per_rank():
    assert local_launch.threads_per_rank(2, {"OMP_NUM_THREADS": "3"}) == "3"
    cores = len(os.sched_getaffinity(0))
    assert local_launch.threads_per_rank(2, {}) == str(max(1, cores // 2))
    assert local_launch.threads_per_rank(64, {}) == "1"


def test_stop_request_records_the_first_signal_and_restarts_interrupted_system_calls():
    """A second signal (say while the checkpoint is written) changes nothing, and C code blocked in a system
    call (a collective's socket read in the checkpoint's barrier) sees it restarted, not failed with EINTR."""
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR2)}
    libc = ctypes.CDLL(None, use_errno=True)
    read_end, write_end = os.pipe()
    try:
        stop = StopRequest()
        main = threading.main_thread().ident
        threading.Timer(0.1, signal.pthread_kill, (main, signal.SIGUSR2)).start()
        threading.Timer(0.2, signal.pthread_kill, (main, signal.SIGTERM)).start()
        threading.Timer(0.4, os.write, (write_end, b"x")).start()
        buffer = ctypes.create_string_buffer(1)
        got = libc.read(read_end, buffer, 1)  # blocks in C while both signals arrive
        assert (got, buffer.raw) == (1, b"x"), f"read failed: {os.strerror(ctypes.get_errno())}"
        time.sleep(0.05)
        assert stop.signum == signal.SIGUSR2
    finally:
        os.close(read_end)
        os.close(write_end)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def python(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code])


def test_supervise_returns_the_first_failure_and_stops_the_rest():
    start = time.monotonic()
    procs = [python("import time; time.sleep(60)"), python("import sys; sys.exit(3)")]
    assert local_launch.supervise(procs, {}, grace_s=0.5) == 3
    assert time.monotonic() - start < 20 and procs[0].returncode == -signal.SIGKILL


def test_supervise_forwards_sigterm_as_asked():
    code = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGUSR2, lambda *_: sys.exit(75))\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    for proc in procs:
        assert proc.stdout.readline().strip() == "ready"
    before = signal.getsignal(signal.SIGTERM)
    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()
    assert local_launch.supervise(procs, {signal.SIGTERM: signal.SIGUSR2}) == 75
    assert [p.returncode for p in procs] == [75, 75]
    assert signal.getsignal(signal.SIGTERM) == before  # the supervisor's handlers are gone


def test_a_failing_wandb_warns_once_and_the_run_goes_on(tmp_path):
    """online without an API key: W&B refuses at init; the mirror says so once and logging is a no-op."""
    code = (
        "from launcher.run.metrics import WandbMirror\n"
        f"mirror = WandbMirror('online', {str(tmp_path)!r}, 'abc123', {{'N': 1}}, project='p')\n"
        "mirror.log({'step': 1, 'train_loss': 1.0})\n"
        "mirror.finish(0)\n"
        "print('run went on', mirror.run)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path), WANDB_CONFIG_DIR=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=120
    )
    assert proc.returncode == 0 and proc.stdout == "run went on None\n", proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning: W&B mirror disabled")]
    assert len(warnings) == 1, proc.stderr
