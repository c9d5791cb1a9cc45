"""``ladder watch`` for real: a real W&B offline run folder, the real ``wandb sync`` pointed at a local
address that refuses connections. The watcher must report each failure and try again, never run two
syncs of one folder at once (not even across a kill and a restart: the killed watcher's sync holds its
lock), and leave alone a folder marked synced; the table shows every run, with or without W&B.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from launcher.analysis.watch import MARKER, SYNC_LOG, WATCH_DIR, mark_synced
from test_wandb import offline_env  # noqa: F401 - the fixture: W&B strictly offline inside the test's folder

REPO = Path(__file__).resolve().parent.parent
SYNC_TIMEOUT_S = 3  # wandb sync retries a refused connection for ever: each try is stopped after this


def make_run(sweep_dir: Path, name: str, status: str, with_wandb: bool) -> Path:
    run_dir = sweep_dir / "runs" / name
    run_dir.mkdir(parents=True)
    now = time.time()
    (run_dir / "state.json").write_text(
        json.dumps({"status": status, "step": 4, "total_steps": 4, "tokens": 8192, "updated_at": now})
    )
    (run_dir / "metrics.jsonl").write_text(
        "".join(
            json.dumps(
                {
                    "step": s,
                    "tokens": 2048 * s,
                    "train_loss": 5.0 / s,
                    "tokens_per_s": 1000.0,
                    "time": now,
                    "slowest_rank": 1,
                    "slowest_host": "node7",
                    "straggler_ratio": 1.5,
                }
            )
            + "\n"
            for s in range(1, 11)
        )
    )
    if with_wandb:
        import wandb

        run = wandb.init(
            mode="offline",
            dir=str(run_dir),
            project="watch-test",
            id=f"id-{name}",
            settings=wandb.Settings(console="off", silent=True, x_disable_stats=True),
        )
        for s in (1, 2, 3, 4):
            run.log({"train_loss": 5.0 / s}, step=s)
        run.finish()
    return run_dir


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def events(sweep_dir: Path) -> list[dict]:
    path = sweep_dir / WATCH_DIR / SYNC_LOG
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def watcher(sweep_dir: Path, env: dict, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "launcher.cli",
            "watch",
            f"sweep={sweep_dir}",
            "--interval",
            "1",
            "--sync-timeout",
            str(SYNC_TIMEOUT_S),
            *extra,
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_watch_table_without_sync(tmp_path):
    sweep_dir = tmp_path / "sw"
    make_run(sweep_dir, "r-done", "completed", with_wandb=False)
    make_run(sweep_dir, "r-live", "running", with_wandb=False)
    done = subprocess.run(
        [sys.executable, "-m", "launcher.cli", "watch", f"sweep={sweep_dir}", "--once", "--no-sync"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = {line.split()[1]: line for line in done.stdout.splitlines() if line.strip().startswith("│ r-")}
    assert set(lines) == {"r-done", "r-live"}
    assert "completed" in lines["r-done"] and "4/4" in lines["r-done"] and "0.5000" in lines["r-done"]
    assert "node7 (rank 1, x1.50)" in lines["r-live"]  # slowest in every record: a consistently slow node
    assert not (sweep_dir / WATCH_DIR).exists()  # without sync the watcher writes nothing


def test_failed_syncs_are_reported_retried_and_never_doubled_across_restarts(tmp_path, offline_env):  # noqa: F811
    sweep_dir = tmp_path / "sw"
    failing = make_run(sweep_dir, "r-fail", "completed", with_wandb=True)
    marked = make_run(sweep_dir, "r-marked", "completed", with_wandb=True)
    [marked_folder] = marked.glob("wandb/offline-run-*")
    mark_synced(marked_folder, time.time())
    [folder] = failing.glob("wandb/offline-run-*")
    env = dict(os.environ, WANDB_BASE_URL=f"http://127.0.0.1:{closed_port()}", WANDB_API_KEY="x" * 40)

    first = watcher(sweep_dir, env)
    deadline = time.monotonic() + 120
    while sum(e["event"] == "end" for e in events(sweep_dir)) < 2 or events(sweep_dir)[-1]["event"] != "start":
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.1)
    first.send_signal(signal.SIGKILL)  # while a sync is in flight
    first.communicate()
    orphan = events(sweep_dir)[-1]["pid"]
    second = watcher(sweep_dir, env)
    while alive(orphan):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    orphan_ended = time.time()
    while sum(e["event"] == "start" for e in events(sweep_dir) if e["time"] > orphan_ended) < 2:
        assert second.poll() is None and time.monotonic() < deadline, second.communicate()
        time.sleep(0.1)
    second.send_signal(signal.SIGTERM)
    stderr = second.communicate()[1]

    log = events(sweep_dir)
    assert {e["folder"] for e in log} == {str(folder)}  # the marked folder is left alone by both watchers
    ends = [e for e in log if e["event"] == "end"]
    assert ends and all(e["rc"] != 0 for e in ends) and not (folder / MARKER).exists()
    assert "wandb sync of" in stderr and "failed" in stderr and "retrying" in stderr
    # never two at once: each start comes after the previous sync's end (or the killed watcher's orphan's)
    ended_at = {e["pid"]: e["time"] for e in ends} | {orphan: orphan_ended}
    starts = [e for e in log if e["event"] == "start"]
    assert len(starts) >= 4
    for prev, nxt in zip(starts, starts[1:]):
        assert nxt["time"] >= ended_at[prev["pid"]], (prev, nxt)


def test_only_a_consistently_slow_node_is_named():
    from launcher.run.stragglers import consistent_straggler

    def records(hosts, ratio):
        return [{"slowest_rank": i % 2, "slowest_host": h, "straggler_ratio": ratio} for i, h in enumerate(hosts)]

    assert consistent_straggler(records(["a"] * 9 + ["b"], 1.5)) == "a (rank 0, x1.50)"
    assert consistent_straggler(records(["a", "b"] * 5, 1.5)) is None  # a different node each time: noise
    assert consistent_straggler(records(["a"] * 10, 1.05)) is None  # always a but hardly slower
    assert consistent_straggler(records(["a"] * 3, 2.0)) is None  # too few records to tell


def test_runs_keep_wandb_offline_where_compute_nodes_are_offline():
    from launcher.config.run import load_run_config
    from launcher.run.metrics import wandb_mode

    for cluster, expected in (
        ("frontier", "offline"),
        ("summit", "offline"),
        ("slurm", "offline"),
        ("lsf", "offline"),
        ("dev_slurm", "offline"),
        ("local", "online"),
    ):
        run = load_run_config([f"cluster={cluster}", "wandb.mode=online"])
        assert wandb_mode(run.wandb.mode, run.cluster.offline_compute) == expected, cluster
    assert wandb_mode("disabled", True) == "disabled"
