"""The WSD design on paper: trunks, branches, forks, node-hours, and which points approach 1 reads."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.analysis.collect import collect_sweep
from launcher.analysis.fitting import thinned_curve_points
from launcher.errors import UserError
from launcher.sweep.plan import build_plan
from test_collect import curve_records, make_sweep, spec, write_metrics

REPO = Path(__file__).resolve().parent.parent


def test_wsd_tiny_is_a_trunk_per_size_and_a_branch_per_point(tmp_path):
    plan = build_plan(["sweep=wsd_tiny", "cluster=frontier", f"sweeps_root={tmp_path}"])
    trunks = [r for r in plan.runs if r.role == "trunk"]
    branches = [r for r in plan.runs if r.role == "branch"]
    assert len(trunks) == 3 and len(branches) == 12 and {r.N for r in trunks} == {r.N for r in branches}
    for branch in branches:
        trunk = next(t for t in trunks if t.name == branch.parent)
        # 8, 16, 24, 32 steps of 1024 tokens fork at D (1 - 0.2): steps 6, 13, 19, 26
        assert branch.fork_step == {8: 6, 16: 13, 24: 19, 32: 26}[branch.steps] and trunk.steps == 26
        assert trunk.N == branch.N and trunk.shape == branch.shape
        overrides = branch.overrides(plan.sweep_dir)
        assert (
            f"train.init_from={plan.sweep_dir / 'runs' / trunk.name / 'checkpoints'}/step_{branch.fork_step:08d}"
            in overrides
            and "train.schedule=wsd" in overrides
        )
        assert branch.C == branch.flops_per_token * branch.D  # the point's C: the full run's
        assert branch.trained_C == branch.flops_per_token * (branch.steps - branch.fork_step) * 1024
    for trunk in trunks:
        overrides = trunk.overrides(plan.sweep_dir)
        assert "train.schedule=constant" in overrides and "train.checkpoint_steps=[6,13,19,26]" in overrides
        assert not any(o.startswith("train.init_from") for o in overrides)
    warmups = {o for r in plan.runs for o in r.overrides(plan.sweep_dir) if o.startswith("train.warmup_tokens=")}
    assert warmups == {"train.warmup_tokens=410"}  # 0.05 x the shortest D (8192), one for trunk and branches
    # node-hours count what each run trains: 26 trunk steps + 2 + 3 + 5 + 6 of cooldown per size vs 80 steps
    assert plan.total_node_hours / plan.cosine_equivalent_node_hours == pytest.approx(42 / 80)
    assert len({r.config_hash for r in plan.runs}) == 15


def test_ladder_plan_json_prints_both_node_hour_totals(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "launcher.cli",
            "plan",
            "sweep=wsd_tiny",
            "cluster=frontier",
            f"sweeps_root={tmp_path}",
            "--json",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    assert plan["node_hours_total"] == pytest.approx(42 / 80 * plan["node_hours_cosine_equivalent"])


def test_a_cosine_sweep_is_unchanged_and_the_schedule_key_is_checked(tmp_path):
    plan = build_plan(["sweep=tiny", "cluster=frontier", f"sweeps_root={tmp_path}"])
    assert {r.role for r in plan.runs} == {"run"} and not any(r.schedule_overrides for r in plan.runs)
    assert plan.total_node_hours == pytest.approx(plan.cosine_equivalent_node_hours)
    with pytest.raises(UserError, match="sweep.schedule"):
        build_plan(["sweep=tiny", "sweep.schedule=step", f"sweeps_root={tmp_path}"])


def test_approach_1_reads_branch_end_points_only_and_trunks_are_no_points(tmp_path):
    trunk = spec("w", "n1-trunk", 10_000, 80_000, steps=80)
    branches = [spec("w", f"n1-d{d}", 10_000, d * 1000, steps=d) for d in (50, 100)]
    runs = [
        dataclasses.replace(trunk, role="trunk"),
        *(dataclasses.replace(b, role="branch", parent="n1-trunk", fork_step=b.steps * 4 // 5) for b in branches),
    ]
    sweep_dir = make_sweep(tmp_path, "w", runs)
    for r in runs:
        records = curve_records(r)
        write_metrics(sweep_dir / "runs" / r.name, records[r.fork_step or 0 :])  # a branch logs its cooldown only
    collected = collect_sweep(sweep_dir)
    assert sorted(p["name"] for p in collected.final_points) == ["n1-d100", "n1-d50"]
    points = collected.curve_points
    assert sorted(points["name"]) == ["n1-d100", "n1-d50"]
    assert sorted(points["D"]) == [50_000, 100_000] and sorted(points["C"]) == [6e4 * 5e4, 6e4 * 1e5]
    assert sorted(p["D"] for p in thinned_curve_points(collected)) == [50_000, 100_000]
