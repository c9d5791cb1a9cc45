"""``ladder scaling-study`` on the real dev Slurm cluster: tiny GPT-NeoX over 1, 2 and 4 nodes, weak and strong."""

from __future__ import annotations

import json
import statistics

import pytest

from launcher import cli
from launcher.run.state import RunState, read_state
from launcher.sweep.jobdb import JobDB

pytestmark = pytest.mark.slurm
WARMUP, STEPS = 2, 3


def steady_tokens_per_s(metrics_path) -> list[float]:
    """The timed steps of one run, read here from its metrics.jsonl (one attempt: nothing to drop)."""
    records = [json.loads(line) for line in metrics_path.read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, WARMUP + STEPS + 1))
    return [r["tokens_per_s"] for r in records if r["step"] > WARMUP]


def test_weak_and_strong_scaling_over_1_2_4_nodes(dev_slurm, tmp_path, capsys):
    assert (
        cli.main(
            [
                "scaling-study",
                "model=gpt_neox/tiny",
                "cluster=dev_slurm",
                "nodes=1,2,4",
                "name=study",
                f"sweeps_root={tmp_path}",
                "--steps",
                str(STEPS),
                "--warmup",
                str(WARMUP),
                "--json",
                "--timeout",
                "900",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    study = tmp_path / "study"
    assert json.loads((study / "scaling.json").read_text()) == out
    assert out["cluster"] == "dev_slurm" and out["model"] == "gpt_neox/tiny"
    points = {(p["mode"], p["nodes"]): p for p in out["points"]}
    assert sorted(points) == [(m, n) for m in ("strong", "weak") for n in (1, 2, 4)]
    with JobDB(study / "jobdb.sqlite") as db:  # through Slurm: jobs with ids, runs completed in them
        runs = {r.name: r for r in db.runs("study")}
        assert {r.state for r in runs.values()} == {"completed"}
        jobs = db.jobs("study")
        assert jobs and all(j.scheduler == "slurm" and j.job_id.isdigit() for j in jobs)
    for mode in ("weak", "strong"):
        measured = {}
        for n in (1, 2, 4):
            run_dir = study / "runs" / ("base-n1" if n == 1 else f"{mode}-n{n}")  # one baseline run for both
            assert points[(mode, n)]["run"] == run_dir.name
            assert (read_state(run_dir) or RunState()).world_size == 2 * n  # 2 one-CPU "devices" per node
            steady = steady_tokens_per_s(run_dir / "metrics.jsonl")
            p = points[(mode, n)]
            assert p["tokens_per_s"] == pytest.approx(statistics.median(steady))
            assert (p["tokens_per_s_lo"], p["tokens_per_s_hi"]) == (min(steady), max(steady))
            measured[n] = p["tokens_per_s"]
        batches = [points[(mode, n)]["global_batch_tokens"] for n in (1, 2, 4)]
        assert batches == ([4096, 8192, 16384] if mode == "weak" else [4096] * 3)
        for n in (1, 2, 4):
            assert points[(mode, n)]["efficiency"] == pytest.approx(measured[n] / n / measured[1])
    assert (study / "plots" / "scaling.png").stat().st_size > 10_000
