"""``ladder submit --target``: the projection of a fitted tiny sweep turned into one run, its rules recomputed
here, then trained on the real dev Slurm cluster through a walltime warning and a continuation."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from launcher import cli
from launcher.analysis.collect import collect_sweep
from launcher.analysis.project import project
from launcher.analysis.target import BATCH_EXPONENT, LR_EXPONENT, target_spec
from launcher.config.cluster import ClusterProfile
from launcher.config.compose import compose
from launcher.config.validate import validate
from launcher.run.metrics import read_metrics
from launcher.sweep.jobdb import JobDB
from launcher.sweep.plan import RunSpec
from models import gpt_neox
from test_collect import curve_records, isoflop_specs, make_sweep, write_metrics
from test_slurm_cluster import slurm_job, wait_until

SWEEP = ["sweep=tiny", "sweep.name=tgt"]  # status and submit compose the sweep; the folder is tgt's
SHAPE = {"aspect_ratio": 16, "head_size": 16}  # the default sweep's solver settings


@pytest.fixture
def fitted(tmp_path):
    """An isoFLOP sweep of gpt_neox/tiny drawn from a known law, fitted by the real ``ladder fit``."""
    specs = [  # trained with the default sweep's batch
        dataclasses.replace(s, global_batch_tokens=2048)
        for s in isoflop_specs("tgt", budgets=(1e10, 3e10, 1e11, 3e11), per_budget=5, steps=40)
    ]
    sweep_dir = make_sweep(tmp_path, "tgt", specs, budget_flops=3e11)
    plan = json.loads((sweep_dir / "plan.json").read_text())
    (sweep_dir / "plan.json").write_text(json.dumps({**plan, "sweep": SHAPE}))
    rng = np.random.default_rng(5)
    for i, s in enumerate(specs):
        records = curve_records(s, seed=i)
        records[-1]["val_loss"] *= float(np.exp(rng.normal(0, 0.003)))
        write_metrics(sweep_dir / "runs" / s.name, records)
    assert cli.main(["fit", "sweep=tgt", f"sweeps_root={tmp_path}", "--n-boot", "20"]) == 0
    return tmp_path, sweep_dir, specs


def expected_rules(record: dict, specs, devices_per_node: int = 2, micro_batch_size: int = 8, lr_ref: float = 3e-3):
    """The batch, LR, D and checkpoint interval of the module docstring's rules, from the projection alone
    (dev_slurm: 2 devices per node; hydra_configs/train/default.yaml: micro-batches of 8, lr 3e-3)."""
    p = record["projection"]
    ref = max(specs, key=lambda s: s.C)
    C = p["C"]
    cfg = gpt_neox.GPTNeoXConfig(vocab_size=256, seq_len=64, **p["shape"])
    fpt = gpt_neox.flops_per_token(cfg)
    quantum = p["nodes"] * devices_per_node * micro_batch_size * 64
    batch = max(quantum, round(ref.global_batch_tokens * (C / ref.C) ** 0.3271 / quantum) * quantum)
    steps = max(1, round(C / fpt / batch))
    step_s = batch * fpt / (p["node_flops_per_s"] * p["nodes"])
    interval_s = math.sqrt(2 * p["checkpoint_write_s"] * p["train_hours_per_job"] * 3600)  # Young (1974)
    every = max(1, min(steps, math.floor(interval_s / step_s)))
    return {"batch": batch, "steps": steps, "D": steps * batch, "lr": lr_ref * (C / ref.C) ** -0.125, "every": every}


def test_the_target_run_follows_its_rules_and_stays_out_of_the_fit(fitted, tmp_path):

    root, sweep_dir, specs = fitted
    assert (BATCH_EXPONENT, LR_EXPONENT) == (0.3271, -0.125)
    cluster = validate(ClusterProfile, compose(["cluster=dev_slurm"])["cluster"], "cluster")
    projection = project(sweep_dir, cluster, target_flops=1e12, nodes=2)
    record = target_spec("tgt", sweep_dir, json.loads((sweep_dir / "plan.json").read_text()), projection, cluster)
    spec = RunSpec.from_json(record["run"], "target.json: run")
    rules, want = record["rules"], expected_rules(record, specs)
    assert (spec.global_batch_tokens, spec.steps, spec.D) == (want["batch"], want["steps"], want["D"])
    assert rules["lr"] == pytest.approx(want["lr"], rel=1e-12) and rules["checkpoint_every"] == want["every"]
    assert spec.role == "target" and spec.ranks_per_run == 4 and spec.nodes == 2 and spec.shape == projection["shape"]
    overrides = spec.overrides(sweep_dir)
    assert f"train.lr={want['lr']!r}" in overrides and f"train.checkpoint_every={want['every']}" in overrides
    assert "wandb.group=tgt" in overrides and f"train.tokens={want['D']}" in overrides

    # recorded and trained (here: its curve written as a run would), it is collected but never fitted
    with JobDB(sweep_dir / "jobdb.sqlite") as db:
        db.add_runs("tgt", [spec], sweep_dir)
        db.start(spec.config_hash)
        db.finish(spec.config_hash, "completed")
    write_metrics(sweep_dir / "runs" / spec.name, curve_records(spec))
    collected = collect_sweep(sweep_dir)
    assert spec.name in {r.name for r in collected.runs}
    assert spec.name not in {r.name for r in collected.in_fit}
    assert spec.name not in {p["name"] for p in collected.final_points}
    assert len(collected.final_points) == len(specs)


# About 100 s of training of two ranks on an idle 2-core machine, more under load. 3-min jobs warned 120 s
# before their end: the controller checks every 30 s and may warn up to 30 s early, so the warning comes
# 30-60 s into a job, after the ranks have started (a warning before a rank sets its handler would kill it)
# and before this run can end.
TARGET_FLOPS = "8e12"
JOBS = ["cluster=dev_slurm", "cluster.walltime_min=3", "cluster.signal_before_s=120"]
JOBS += ["cluster.assumed_mfu=0.5"]  # about what this CPU reaches: steps of the right length for the interval rule


@pytest.mark.slurm
def test_the_target_run_trains_through_a_walltime_warning_on_dev_slurm(dev_slurm, fitted, capsys):
    root, sweep_dir, specs = fitted
    where = [*SWEEP, f"sweeps_root={root}"]
    assert cli.main(["submit", *where, *JOBS, "--target", "--target-flops", TARGET_FLOPS]) == 0
    record = json.loads((sweep_dir / "target.json").read_text())
    name, projection = record["run"]["name"], record["projection"]
    assert json.loads((sweep_dir / "projection.json").read_text()) == projection  # ladder project's file, refreshed
    first_id = capsys.readouterr().out.split()[1]

    def status() -> dict:  # no cluster= given: the sweep's recorded profile (the target's) reconciles
        assert cli.main(["status", *where, "--json"]) == 0
        return {r["name"]: r for r in json.loads(capsys.readouterr().out)["runs"]}

    wait_until(
        lambda: status()[name]["state"] in ("completed", "failed", "diverged", "cancelled"),
        300,
        "the target run to end",
        progress=lambda: frozenset(p.stat().st_size for p in (sweep_dir / "runs" / name).glob("*.json*")),
    )
    runs = status()
    assert runs[name]["state"] == "completed" and runs[name]["role"] == "target"
    assert all(runs[s.name]["state"] == "completed" for s in specs)
    with JobDB(sweep_dir / "jobdb.sqlite") as db:
        target = db.run(name)
        attempts = db.attempts(target.config_hash)
        jobs = [j for j in db.jobs("tgt") if target.config_hash in j.runs]
    assert target.role == "target"
    ids = [j.job_id for j in jobs]
    assert ids[0] == first_id and [(j.kind, j.depends_on) for j in jobs[1:]] == [
        ("continuation", f"afterany:{i}") for i in ids[:-1]
    ]
    print(f"target run {name}: {len(attempts)} attempts in jobs {ids}, rules {record['rules']}")
    assert [(a.job_id, a.state, a.exit_code) for a in attempts] == [(i, "timed_out", 75) for i in ids[:-1]] + [
        (ids[-1], "completed", 0)
    ]
    assert len(attempts) >= 2  # interrupted by the warning at least once (twice when both warnings came early)
    assert slurm_job(dev_slurm, first_id)["JobState"] == "COMPLETED"  # it ended itself after the warning
    job_name = json.loads(next((sweep_dir / "jobs").glob("*.json")).read_text())["name"]
    assert "walltime warning" in (sweep_dir / "jobs" / f"{job_name}-{first_id}.out").read_text()
    run_dir = sweep_dir / "runs" / name
    state = json.loads((run_dir / "state.json").read_text())
    assert 0 < state["resumed_from"] < state["total_steps"] == record["run"]["steps"]
    assert state["world_size"] == 2 and state["tokens"] == record["run"]["D"]
    assert "group: tgt" in (run_dir / "config.yaml").read_text()  # the sweep's W&B group

    assert cli.main(["report", "sweep=tgt", f"sweeps_root={root}", "--wandb-mode", "disabled"]) == 0
    html = (sweep_dir / "report.html").read_text()
    final = read_metrics(run_dir / "metrics.jsonl")[-1]["val_loss"]  # the run's last validation loss
    section = html[html.index("<h2>Target run</h2>") :]
    row = section[section.index(f">{name}<") : section.index("</table>")]
    assert ">completed<" in row and f"<td>{final:.4f}</td>" in row
    assert f"<td>{projection['loss']:.4f}</td>" in row
    assert f"{projection['loss_lo']:.4f} – {projection['loss_hi']:.4f}" in row


def test_bad_target_input_is_one_line(fitted, capsys):
    root, sweep_dir, _ = fitted
    base = ["submit", *SWEEP, f"sweeps_root={root}"]
    assert cli.main([*base, "cluster=dev_slurm", "--target-flops", "1e12"]) == 2
    assert "--target-flops, --nodes: only with --target" in capsys.readouterr().err
    assert cli.main([*base, "cluster=local", "--target", "--target-flops", "1e12"]) == 2
    assert "cluster: the target run is submitted to a batch scheduler; profile local has scheduler local" in (
        capsys.readouterr().err
    )
    assert cli.main([*base, "cluster=dev_slurm", "--target"]) == 2  # neither a projection nor a budget
    assert "--target-flops: sweep tgt has no projection.json; run ladder project first" in capsys.readouterr().err
    assert not (sweep_dir / "target.json").exists() and not (sweep_dir / "jobs").exists()
