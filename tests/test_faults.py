"""Hangs and rewinds where people look: ``ladder status`` (table and --json) and the report, for a real
run of a recorded sweep that hung (rank 1 stopped with SIGSTOP) and, after its retry, rewound past two
corrupted batches (the test-only data hook of tests/test_spikes.py)."""

from __future__ import annotations

import json
import os
import signal
import socket
import time

from launcher.cli import main as ladder
from launcher.run.heartbeat import read_beats
from launcher.run.spikes import CORRUPT_ENV
from launcher.sweep.jobdb import read_state_file
from test_hang import start_train
from test_status import recorded_sweep

STOP_AT = 6


def test_a_run_that_hung_and_rewound_shows_both_in_status_and_report(tmp_path, capsys):
    plan = recorded_sweep(tmp_path)
    spec = next(s for s in plan.runs if 24 <= s.steps <= 40)  # long enough for a hang, then the spikes
    run_dir = spec.run_dir(plan.sweep_dir)
    proc = start_train(
        run_dir,
        *spec.overrides(plan.sweep_dir),
        "train.micro_batch_size=8",  # two ranks of 8 x 64 tokens: the sweep's 1024-token batch
        "train.checkpoint_every=4",
        "train.spike_window=8",
        "train.spike_patience=2",
        "train.val_every=1000",
        env={CORRUPT_ENV: "16,17"},
    )
    deadline = time.monotonic() + 240
    while (beat := read_beats(run_dir).get(1)) is None or beat.step < STOP_AT:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.02)
    os.kill(beat.pid, signal.SIGSTOP)
    output = proc.communicate(timeout=400)[0]
    assert proc.returncode == 0, output
    state = read_state_file(run_dir)
    [hang], [rewind] = state["hangs"], state["rewinds"]
    assert hang["attempt"] == 1 and hang["ranks"] == [1] and hang["hosts"] == [socket.gethostname()]
    assert rewind["skipped_data_steps"] == [16, 18] and rewind["to_step"] == 16

    assert ladder(["status", "sweep=tiny", f"sweeps_root={tmp_path}", "--json"]) == 0
    runs = {r["name"]: r for r in json.loads(capsys.readouterr().out)["runs"]}
    assert runs[spec.name]["hangs"] == [hang] and runs[spec.name]["rewinds"] == [rewind]
    assert all(r["hangs"] == r["rewinds"] == [] for name, r in runs.items() if name != spec.name)
    assert ladder(["status", "sweep=tiny", f"sweeps_root={tmp_path}"]) == 0
    lines = " ".join(capsys.readouterr().out.split())  # the console wraps long lines
    assert f"{spec.name}: hang in attempt 1 at step {hang['step']}: rank(s) 1 on {socket.gethostname()}" in lines
    assert (
        f"{spec.name}: rewind at step 18: loss spikes at steps [17, 18], back to step 16, data steps [16, 18)" in lines
    )

    assert ladder(["report", "sweep=tiny", f"sweeps_root={tmp_path}", "--wandb-mode", "disabled"]) == 0
    page = (plan.sweep_dir / "report.html").read_text()
    section = page[page.index("<h2>Hangs and rewinds</h2>") :]
    section = section[: section.index("<h2>", 5)]
    assert section.count(f'<td class="l">{spec.name}</td>') == 2
    assert f'<td>1</td><td>{hang["step"]}</td><td class="l">rank(s) 1 on {socket.gethostname()}' in section
    assert "<td>18</td>" in section and "<td>[16, 18)</td>" in section
