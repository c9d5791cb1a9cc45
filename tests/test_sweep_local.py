"""Real local sweeps: `ladder sweep` trains, is interrupted, continues, retries failures, skips divergence."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from launcher.run.metrics import read_metrics
from launcher.run.state import RunState, read_state
from launcher.sweep.jobdb import JobDB
from launcher.sweep.plan import build_plan

FAST = ["wandb.mode=disabled", "--no-calibrate"]  # neither changes a run's identity (config hash)


def ladder(*args: str) -> list[str]:
    return [sys.executable, "-m", "launcher.cli", *args]


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def wait_for(condition, timeout: float, proc: subprocess.Popen, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        assert proc.poll() is None, f"ladder sweep exited ({proc.returncode}) before {what}"
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def snapshot(db_path: Path) -> dict[str, tuple[str, int]]:
    with JobDB(db_path) as db:
        return {r.name: (r.state, r.attempts) for r in db.runs()}


def test_interrupted_sweep_continues_and_repeats_nothing(tmp_path):
    argv = ladder("sweep", "sweep=tiny", f"sweeps_root={tmp_path}", *FAST)
    sweep_dir = tmp_path / "tiny"
    db_path = sweep_dir / "jobdb.sqlite"
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env())

    def one_done_one_training():
        if not db_path.exists():
            return None
        runs = snapshot(db_path)
        reported = {n: read_state(sweep_dir / "runs" / n) or RunState() for n in runs}
        # past its first step, and far enough from its last that the interrupt cannot arrive after it
        training = [
            n
            for n, (state, _) in runs.items()
            if state == "running" and 1 <= (reported[n].step or 0) <= (reported[n].total_steps or 0) // 2
        ]
        return any(state == "completed" for state, _ in runs.values()) and training

    training = wait_for(one_done_one_training, 400, first, "a completed run and a run in training")
    first.send_signal(signal.SIGINT)
    assert first.wait(timeout=300) == 130, (tmp_path / "first.log").read_text()[-3000:]
    after_first = snapshot(db_path)
    done_first = {n for n, (state, _) in after_first.items() if state == "completed"}
    interrupted = {n for n, (state, _) in after_first.items() if state == "timed_out"}
    assert done_first and set(training) <= interrupted
    assert all(state in ("completed", "timed_out", "planned") for state, _ in after_first.values())
    checkpoints = {}
    for name in interrupted:
        state = read_state(sweep_dir / "runs" / name)
        if name in training:  # it was past step 1: SIGTERM made it checkpoint and exit 75
            assert state.status == "requeue" and state.exit_code == 75 and (state.checkpoint_step or 0) >= 1
        checkpoints[name] = state and state.checkpoint_step
    metrics_before = {n: (sweep_dir / "runs" / n / "metrics.jsonl").read_bytes() for n in done_first}

    second = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env(), text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:]
    for produced in ("report.html", "fit.json", "curves.parquet", "summary.txt"):
        assert (sweep_dir / produced).stat().st_size > 0
    assert "N_opt = " in second.stdout and "report: " in second.stdout
    fit = json.loads((sweep_dir / "fit.json").read_text())
    assert fit["n_runs"] == len(after_first)
    # the budget is the planner's, and the fit and its summary say where the planner got it
    planned = json.loads((sweep_dir / "plan.json").read_text())
    assert planned["budget_source"].startswith("10 x the largest run's C")  # --no-calibrate: no speed known
    assert (fit["inputs"]["budget_flops"], fit["inputs"]["budget_source"]) == (
        planned["budget_flops"],
        planned["budget_source"],
    )
    assert f"FLOPs ({planned['budget_source']})" in (sweep_dir / "summary.txt").read_text()
    assert "--budget-flops" not in (sweep_dir / "summary.txt").read_text()
    plan = build_plan([f"sweeps_root={tmp_path}", "sweep=tiny"])
    with JobDB(db_path) as db:
        runs = {r.name: r for r in db.runs()}
        attempts = {name: [(a.state, a.exit_code) for a in db.attempts(r.config_hash)] for name, r in runs.items()}
    assert set(runs) == {s.name for s in plan.runs}
    for spec in plan.runs:
        run = runs[spec.name]
        assert run.state == "completed" and run.config_hash == spec.config_hash
        if spec.name in interrupted:  # stopped by SIGTERM: 75 after a checkpoint, -15 if still starting up
            (first_state, first_code), last = attempts[spec.name]
            assert first_state == "timed_out" and last == ("completed", 0)
            assert first_code == 75 if spec.name in training else first_code in (75, -signal.SIGTERM)
        elif spec.name in done_first:  # one attempt; a run that ended its last step as the interrupt came is
            # completed, its process ended by the signal while closing down (the runner's rule for that case)
            assert attempts[spec.name] in ([("completed", 0)], [("completed", -signal.SIGTERM)])
        else:  # first started in the second invocation
            assert attempts[spec.name] == [("completed", 0)]
        records = read_metrics(sweep_dir / "runs" / spec.name / "metrics.jsonl")
        assert [r["step"] for r in records] == list(range(1, spec.steps + 1))
        assert records[-1]["tokens"] == spec.D
    for name in done_first:  # never trained again
        assert (sweep_dir / "runs" / name / "metrics.jsonl").read_bytes() == metrics_before[name]
    for name in training:  # continued from the checkpoint written when it was interrupted
        assert read_state(sweep_dir / "runs" / name).resumed_from == checkpoints[name]
    # a third start finds nothing to do
    third = subprocess.run(
        argv + ["--no-report"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env(), text=True, timeout=300
    )
    assert third.returncode == 0 and "starts" not in third.stdout
    assert snapshot(db_path) == {n: ("completed", len(a)) for n, a in attempts.items()}
    plan_json = json.loads((sweep_dir / "plan.json").read_text())
    assert [r["config_hash"] for r in plan_json["runs"]] == [s.config_hash for s in plan.runs]


def test_failed_runs_are_retried_and_diverged_runs_are_not(tmp_path):
    one_run = ["sweep=tiny", "sweep.budgets=[1e10]", "sweep.params=[60000]", f"sweeps_root={tmp_path}", *FAST]
    failing = subprocess.Popen(
        ladder(
            "sweep",
            *one_run,
            "sweep.name=failing",
            "++cluster.max_retries=2",
            "data=token_bin",
            f"data.path={tmp_path / 'missing.bin'}",
            "--no-report",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env(),
        text=True,
    )
    diverging = subprocess.run(
        ladder("sweep", *one_run, "sweep.name=diverging", "train.lr=1e30", "--no-report"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env(),
        text=True,
        timeout=300,
    )
    failed_out, _ = failing.communicate(timeout=300)
    assert failing.returncode == 1 and diverging.returncode == 1
    with JobDB(tmp_path / "failing" / "jobdb.sqlite") as db:
        (run,) = db.runs()
        assert (run.state, run.attempts, run.consecutive_failures) == ("failed", 2, 2)
        assert [a.state for a in db.attempts(run.name)] == ["failed", "failed"]
    assert "not retried (cluster.max_retries)" in failed_out
    with JobDB(tmp_path / "diverging" / "jobdb.sqlite") as db:
        (run,) = db.runs()
        assert (run.state, run.attempts, run.exit_code) == ("diverged", 1, 3)
