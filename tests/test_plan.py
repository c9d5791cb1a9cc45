"""The sweep planner: exact N, D in whole batches, C from the FLOP formula, hashes, budget refusal."""

from __future__ import annotations

import json
import math

import pytest

from launcher.cli import main as ladder
from launcher.config.run import load_run_config
from launcher.errors import UserError
from launcher.identity import config_hash
from launcher.sweep.calibrate import calibrated_plan
from launcher.sweep.plan import Budget, merge_overrides
from models import gpt_neox


def plan(*overrides: str, calibrate: bool = False):
    return calibrated_plan(list(overrides), calibrate=calibrate)


def test_isoflop_runs_have_exact_counts_whole_batches_and_exact_flops(tmp_path):
    p = plan("sweep=tiny", f"sweeps_root={tmp_path}")
    assert len(p.runs) >= 6 and len({r.budget for r in p.runs}) == 2
    for r in p.runs:
        # the run's own `ladder train` overrides compose to the model the plan counted
        run = load_run_config(r.overrides(p.sweep_dir))
        cfg = gpt_neox.GPTNeoXConfig(**{k: v for k, v in run.model.items() if k != "family"})
        assert (r.N, r.N_non_embedding) == gpt_neox.param_counts(cfg)
        fpt = gpt_neox.flops_per_token(cfg)
        assert (
            fpt
            == 6 * r.N_non_embedding + 12 * cfg.n_layer * cfg.seq_len * cfg.d_model + 6 * cfg.d_model * cfg.padded_vocab
        )
        assert run.train.tokens == r.D and run.train.max_steps is None
        assert run.train.global_batch_tokens == r.global_batch_tokens == 1024
        assert r.D == r.steps * r.global_batch_tokens
        assert r.C == fpt * r.D
        # isoFLOP: D = budget / flops_per_token, rounded to the nearest whole global batch
        assert r.steps == round(r.budget / fpt / r.global_batch_tokens)
        assert abs(r.C - r.budget) <= fpt * r.global_batch_tokens / 2
        assert run.run_dir == str(p.sweep_dir / "runs" / r.name)
        assert (run.wandb.group, run.wandb.job_type, run.wandb.name) == ("tiny", "gpt_neox", r.name)
        assert r.config_hash == config_hash(run)  # the hash of the resolved run config itself
    assert len({r.name for r in p.runs}) == len({r.config_hash for r in p.runs}) == len(p.runs)


def test_shapes_come_from_the_solver_at_the_sweep_aspect_ratio():
    p = plan("sweep=tiny")
    for r in p.runs:
        assert r.shape["d_model"] % 16 == 0 and r.shape["d_model"] // r.shape["n_heads"] == 16
        assert r.shape["d_model"] / r.shape["n_layer"] == pytest.approx(16, rel=0.5)
    sizes = sorted({r.N for r in p.runs})
    assert len(sizes) == 3 and sizes[0] < sizes[1] < sizes[2]


def test_config_hash_is_stable_and_names_do_not_count(tmp_path):
    first = {r.name: r.config_hash for r in plan("sweep=tiny").runs}
    assert first == {r.name: r.config_hash for r in plan("sweep=tiny").runs}
    renamed = plan("sweep=tiny", "sweep.name=tiny_again", f"sweeps_root={tmp_path}")
    assert sorted(first.values()) == sorted(r.config_hash for r in renamed.runs)
    other_lr = plan("sweep=tiny", "train.lr=1e-3")
    assert not set(first.values()) & {r.config_hash for r in other_lr.runs}
    other_cluster = plan("sweep=tiny", "cluster.max_parallel_runs=1", "cluster.allocation_node_hours=5")
    assert sorted(first.values()) == sorted(r.config_hash for r in other_cluster.runs)


def test_grid_ladder_and_clip_kinds():
    grid = plan("sweep=grid")
    assert len(grid.runs) == len({r.N for r in grid.runs}) * len({r.steps for r in grid.runs}) == 9
    for r in grid.runs:
        assert r.steps == round(r.D / 4096) and r.budget is None
        assert min(abs(r.D - t) for t in (2e5, 6e5, 1.8e6)) <= 4096 / 2
    ladder = plan("sweep=kaplan_ladder")
    assert {r.D for r in ladder.runs} == {round(2e6 / 4096) * 4096}
    targets = sorted(ladder.sweep.params)
    assert [r.N_non_embedding for r in sorted(ladder.runs, key=lambda r: r.N)] == sorted(
        r.N_non_embedding for r in ladder.runs
    )
    assert all(
        abs(math.log(r.N_non_embedding / t)) < 0.6 for r, t in zip(sorted(ladder.runs, key=lambda r: r.N), targets)
    )
    proportional = plan("sweep=kaplan_ladder", "sweep.tokens=[]", "sweep.tokens_per_param=20")
    for r in proportional.runs:
        assert abs(r.D - 20 * r.N_non_embedding) <= 4096 / 2
    clip = plan("sweep=clip_tiny")
    assert {r.family for r in clip.runs} == {"clip"} and len(clip.runs) == 6
    from models import clip as clip_model

    for r in clip.runs:
        run = load_run_config(r.overrides(clip.sweep_dir))
        cfg = clip_model.CLIPConfig(**{k: v for k, v in run.model.items() if k != "family"})
        assert (r.N, r.N_non_embedding) == clip_model.param_counts(cfg)
        assert r.C == clip_model.flops_per_sample(cfg) * r.D and r.D in (2048, 4096, 8192)


def test_min_steps_drops_runs_and_says_why():
    p = plan("sweep=tiny", "sweep.min_steps=20")
    assert all(r.steps >= 20 for r in p.runs)
    assert p.dropped and all("steps < sweep.min_steps=20" in why for why in p.dropped)


@pytest.mark.parametrize(
    "override, message",
    [
        ("sweep.kind=spiral", "sweep.kind: 'spiral' is not allowed; allowed: grid, isoflop, ladder, clip"),
        ("sweep.shapes=[{n_layer: 2}]", "sweep: give the model sizes in exactly one of params, shapes"),
        ("sweep.budgets=[]", "sweep.budgets: required for kind isoflop"),
        ("sweep.params=[-5]", "sweep.params: every value must be > 0"),
        ("sweep.shapes=[{n_layer: 2, d_model: 30}]", "model.n_heads: must divide d_model=30"),
    ],
)
def test_bad_sweeps_are_one_line_errors(override, message):
    extra = ["sweep.params=[]"] if override.startswith("sweep.shapes=[{n_layer: 2,") else []
    with pytest.raises(UserError) as err:
        plan("sweep=tiny", override, *extra)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_holdout_selectors_mark_runs_and_keep_their_identity():
    base = plan("sweep=tiny", "sweep.params_per_budget=[[20000,60000],[20000,60000,150000]]", "sweep.params=[]")
    p = plan(
        "sweep=tiny",
        "sweep.params_per_budget=[[20000,60000],[20000,60000,150000]]",
        "sweep.params=[]",
        "sweep.holdout=[{budget: 2.0e+10, params: 150000}, {params: 20000, budget: 1.0e+10}]",
    )
    held = [(r.budget, r.N) for r in p.runs if r.holdout]
    largest = max(r.N for r in p.runs)
    smallest = min(r.N for r in p.runs)
    assert sorted(held) == [(1e10, smallest), (2e10, largest)]
    # holding a run out changes nothing about the run itself (same config, same hash, same name)
    assert [(r.name, r.config_hash) for r in p.runs] == [(r.name, r.config_hash) for r in base.runs]
    assert sum(r.to_json()["holdout"] for r in p.runs) == 2


@pytest.mark.parametrize(
    "holdout, message",
    [
        (
            "[{budget: 3.0e+10}]",
            "sweep.holdout[0]: {'budget': 30000000000.0} matches no planned run; select by "
            "params, shape, budget, tokens, samples",
        ),
        (
            "[{size: 1}]",
            "sweep.holdout[0]: must be a mapping of one or more of params, shape, budget, tokens, samples, "
            "got {'size': 1.0}",
        ),
        (
            "[{budget: 1.0e+10}, {budget: 2.0e+10}]",
            "sweep.holdout: holds out all 6 runs; at least one must stay in the fit",
        ),
    ],
)
def test_bad_holdouts_are_one_line_errors(holdout, message):
    with pytest.raises(UserError) as err:
        plan("sweep=tiny", f"sweep.holdout={holdout}")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_unknown_sweep_names_the_choices(capsys):
    assert ladder(["plan", "sweep=nope", "--no-calibrate"]) == 2
    assert "sweep=nope: no such sweep; allowed: " in capsys.readouterr().err


PEAK = ["cluster.device_peak_flops=1e9", "cluster.assumed_mfu=0.5", "cluster.devices_per_node=4"]


def test_node_hours_from_the_peak_and_budget_refusal(capsys, tmp_path):
    p = plan("sweep=tiny", *PEAK)
    for r in p.runs:  # per node: 4 devices x 1e9 x 0.5
        assert r.est_node_hours == pytest.approx(r.C / (4 * 1e9 * 0.5) / 3600)
    total = p.total_node_hours
    argv = ["plan", "sweep=tiny", f"sweeps_root={tmp_path}", *PEAK, f"cluster.allocation_node_hours={total / 2}"]
    assert ladder(argv) == 2
    out = capsys.readouterr()
    assert "c1e10-" in out.out  # the table is shown before the refusal
    (line,) = out.err.strip().splitlines()
    assert f"the plan needs {total:.4g} node-hours, more than the {total / 2:.4g} left" in line
    assert "cluster.allocation_node_hours" in line and "--over-budget-ok" in line
    assert ladder([*argv, "--over-budget-ok"]) == 0
    assert ladder([*argv, "sweep.allow_over_budget=true"]) == 0
    assert ladder(["plan", "sweep=tiny", *PEAK, f"cluster.allocation_node_hours={total * 2}"]) == 0
    assert not (tmp_path / "tiny").exists()  # planning with a known peak writes nothing


def test_plan_json_lists_every_run(capsys):
    assert ladder(["plan", "sweep=tiny", "--no-calibrate", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["runs"]) >= 6
    assert set(data["runs"][0]) >= {
        "name",
        "family",
        "N",
        "N_non_embedding",
        "D",
        "C",
        "budget",
        "steps",
        "global_batch_tokens",
        "nodes",
        "ranks_per_run",
        "est_node_hours",
        "config_hash",
    }
    assert data["total_node_hours"] is None and data["throughput"] is None  # no peak, no calibration


def test_the_budget_is_decided_once_and_plan_json_names_its_source(capsys):
    assert plan("sweep=tiny", "sweep.budget_flops=1e12").budget == Budget(1e12, "sweep.budget_flops")
    bought = plan("sweep=tiny", *PEAK, "cluster.allocation_node_hours=2").budget  # a node: 4 x 1e9 x 0.5 FLOP/s
    assert bought.flops == pytest.approx(2 * 3600 * 2e9)
    assert bought.source == "cluster.allocation_node_hours 2 x 3600 s x 2e+09 FLOP/s per node, peak x assumed MFU"
    unknown = plan("sweep=tiny")  # the local profile: 1 node-hour left, no peak, no calibration
    assert unknown.budget == Budget(
        10 * max(r.C for r in unknown.runs),
        "10 x the largest run's C (speed unknown: no device_peak_flops and no calibration)",
    )
    assert ladder(["plan", "sweep=tiny", "--no-calibrate", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["budget_flops"], data["budget_source"]) == (unknown.budget.flops, unknown.budget.source)


def test_calibration_measures_and_is_cached(tmp_path):
    """No peak on this CPU: short real `ladder train` runs measure FLOP/s, once."""
    p = plan("sweep=tiny", f"sweeps_root={tmp_path}", calibrate=True)
    cache = tmp_path / "tiny" / "calibration.json"
    measured = json.loads(cache.read_text())
    assert len(measured) == 2  # the smallest and the largest model
    assert all(m["flops_per_s"] > 1e6 and m["steps"] == 8 for m in measured.values())
    assert p.throughput.source == "measured"
    assert all(r.est_node_hours > 0 for r in p.runs) and p.total_node_hours > 0
    stamp = cache.stat().st_mtime_ns
    again = plan("sweep=tiny", f"sweeps_root={tmp_path}", calibrate=True)
    assert cache.stat().st_mtime_ns == stamp
    assert [r.est_node_hours for r in again.runs] == [r.est_node_hours for r in p.runs]


def test_merge_overrides_keeps_the_last_value_per_key():
    assert merge_overrides(["a=1", "b=2"], ["+a=3", "c=4"]) == ["b=2", "+a=3", "c=4"]


def test_frontier_isoflop_plan_from_the_profile_peak():
    p = plan("sweep=isoflop_frontier", "cluster=frontier", "cluster.allocation_node_hours=100")
    assert p.throughput.source == "peak" and len({r.budget for r in p.runs}) == 3
    for r in p.runs:  # node-hours: C over 8 GCDs x 191.5 TFLOP/s x 0.3 MFU, whatever the run's node count
        assert r.est_node_hours == pytest.approx(r.C / (8 * 191.5e12 * 0.3) / 3600)
        assert r.global_batch_tokens == 2097152 and r.D % 2097152 == 0 and r.steps >= 200
        assert (r.nodes, r.ranks_per_run) == (8, 64)
        assert "data=token_bin" in r.overrides("x") and "cluster=frontier" in r.overrides("x")
    assert 70e6 < min(r.N for r in p.runs) < max(r.N for r in p.runs) < 3e9
    with pytest.raises(UserError, match="more than the 100 left in the allocation"):
        p.check_budget()
