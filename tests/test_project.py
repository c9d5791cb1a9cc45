"""``ladder project`` on a fitted synthetic sweep: every number recomputed here from fit.json and scaling.json."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from launcher import cli
from models import gpt_neox
from models.gpt_neox import GPTNeoXConfig
from test_collect import curve_records, isoflop_specs, make_sweep, write_metrics

TINY = dict(vocab_size=256, seq_len=64)  # hydra_configs/model/gpt_neox/tiny.yaml's vocabulary and context
STUDY_FPT = 1_000_000  # FLOPs per token of the (made-up) scaling study's model
WEAK = {1: (2000.0, 1900.0, 2100.0), 2: (3800.0, 3600.0, 3900.0), 4: (7000.0, 6500.0, 7400.0)}


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """An isoFLOP sweep drawn from a known law with noisy final losses, fitted by the real ``ladder fit``."""
    root = tmp_path_factory.mktemp("project")
    specs = isoflop_specs("law", per_budget=5, steps=40)
    sweep_dir = make_sweep(root, "law", specs, budget_flops=1e19)
    rng = np.random.default_rng(3)
    for i, s in enumerate(specs):
        records = curve_records(s, seed=i)
        records[-1]["val_loss"] *= float(np.exp(rng.normal(0, 0.003)))
        write_metrics(sweep_dir / "runs" / s.name, records)
    assert cli.main(["fit", "sweep=law", f"sweeps_root={root}", "--n-boot", "20"]) == 0
    return root, sweep_dir, specs


def write_scaling(sweep_dir):
    points = [
        {
            "nodes": n,
            "mode": "weak",
            "tokens_per_s": t,
            "tokens_per_s_lo": lo,
            "tokens_per_s_hi": hi,
            "efficiency": t / (n * WEAK[1][0]),
        }
        for n, (t, lo, hi) in WEAK.items()
    ]
    points.append({"nodes": 2, "mode": "strong", "tokens_per_s": 3000.0, "efficiency": 0.75})
    (sweep_dir / "scaling.json").write_text(
        json.dumps({"cluster": "dev_slurm", "model": "made-up", "flops_per_token": STUDY_FPT, "points": points})
    )


def project(root, capsys, *args) -> dict:
    assert cli.main(["project", "sweep=law", f"sweeps_root={root}", "cluster=dev_slurm", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def expected_shape(N_opt: float) -> GPTNeoXConfig:
    """The solver's shape of the sweep's defaults (aspect ratio 64, head size 64), counted here on its own."""
    return gpt_neox.solve_shape(int(round(N_opt)), aspect_ratio=64.0, head_dim=64, count="total", **TINY)


def test_projection_at_the_fitted_budget_from_the_scaling_study(fitted, capsys):
    root, sweep_dir, specs = fitted
    write_scaling(sweep_dir)
    fit_before = json.loads((sweep_dir / "fit.json").read_text())
    p = project(root, capsys, "--target-flops", "1e19", "--nodes", "2")
    assert json.loads((sweep_dir / "projection.json").read_text()) == p
    assert json.loads((sweep_dir / "fit.json").read_text())["recommendation"] == fit_before["recommendation"]
    rec = fit_before["recommendation"]

    cfg = expected_shape(rec["N_opt"])
    N = gpt_neox.param_counts(cfg)[0]
    fpt = gpt_neox.flops_per_token(cfg)
    batch = specs[0].global_batch_tokens
    D = round(1e19 / fpt / batch) * batch
    assert (p["N"], p["D"], p["flops"]) == (N, D, fpt * D)
    assert p["shape"] == {"n_layer": cfg.n_layer, "d_model": cfg.d_model, "n_heads": cfg.n_heads}
    assert abs(N / rec["N_opt"] - 1) < 0.1 and abs(p["flops"] / 1e19 - 1) < 0.1
    assert p["flops_6nd"] == 6 * N * D
    assert (p["loss"], p["loss_lo"], p["loss_hi"]) == (rec["predicted_loss"], *rec["predicted_loss_ci"])
    assert p["loss_lo"] < p["loss"] < p["loss_hi"]
    assert "projection" not in p["loss_is"] and p["loss_is"].startswith("beyond")

    # speed: the weak point at 2 nodes, as FLOP/s of one node
    per_node = np.array(WEAK[2]) * STUDY_FPT / 2
    assert p["node_hours"] == pytest.approx(fpt * D / per_node[0] / 3600, rel=1e-12)
    # law: the compute at which the frontier's loss band reaches the projected loss, at the local slope
    front = fit_before["frontier"]
    i = front["C"].index(1e19)
    loss = front["approach3"]["loss"]
    slope = math.log(loss[i] / loss[i - 1]) / math.log(front["C"][i] / front["C"][i - 1])
    c_lo = 1e19 * (rec["predicted_loss"] / rec["predicted_loss_ci"][0]) ** (1 / slope)
    c_hi = 1e19 * (rec["predicted_loss"] / rec["predicted_loss_ci"][1]) ** (1 / slope)
    assert c_lo < 1e19 < c_hi
    assert p["node_hours_lo"] == pytest.approx(fpt * D * c_lo / 1e19 / per_node[2] / 3600, rel=1e-9)
    assert p["node_hours_hi"] == pytest.approx(fpt * D * c_hi / 1e19 / per_node[1] / 3600, rel=1e-9)

    # dev_slurm: one bin of 4 nodes x 60 min; the warning (1 min), job set-up (0.1) and restart (0.2) cost 1.3 min
    wall_h = p["node_hours"] / 2
    assert p["wall_hours"] == pytest.approx(wall_h)
    assert p["jobs"] == math.ceil(wall_h / ((60 - 1.3) / 60))
    assert p["checkpoint_bytes"] == 12 * N  # fp32 weights + Adam's two fp32 moments
    assert p["checkpoints_in_warning"] == math.floor(60 / (12 * N / (1e9 * 2)))
    total = sum(
        json.loads((sweep_dir / "runs" / s.name / "metrics.jsonl").read_text().splitlines()[-1])["flops"] for s in specs
    )
    assert p["sweep_cost"]["flops"] == pytest.approx(total, rel=1e-12) and p["sweep_cost"]["runs"] == len(specs)
    assert "scaling study" in p["speed_source"]

    text = (sweep_dir / "proposal.md").read_text()
    assert f"N = {N:,} parameters" in text and f"D = {D:,} tokens" in text
    assert f"**Projected loss: {p['loss']:.4g}**" in text and "projection of the fitted law" in text
    assert "](plots/isoflop.png)" in text and "](plots/frontier.png)" in text
    assert all((sweep_dir / "plots" / f"{n}.png").exists() for n in ("isoflop", "frontier"))


def test_node_hours_buy_a_budget_at_the_profiles_assumed_speed(fitted, capsys, tmp_path):
    root, sweep_dir, _ = fitted
    (sweep_dir / "scaling.json").unlink(missing_ok=True)
    p = project(root, capsys, "--node-hours", "1000", "--nodes", "4")
    per_node = 2 * 5.0e10 * 0.05  # dev_slurm: 2 devices x device_peak_flops x assumed_mfu
    C = 1000 * 3600 * per_node
    assert p["C"] == pytest.approx(C) and p["speed_source"].startswith("assumed")
    fit = json.loads((sweep_dir / "fit.json").read_text())  # fitted again for the budget the hours buy
    assert fit["recommendation"]["C"] == pytest.approx(C) and p["N_opt"] == fit["recommendation"]["N_opt"]
    assert p["N"] == gpt_neox.param_counts(expected_shape(p["N_opt"]))[0]
    assert p["node_hours"] == pytest.approx(p["flops"] / per_node / 3600, rel=1e-12)
    assert p["node_hours"] == pytest.approx(1000, rel=0.1)  # D rounds to whole global batches
    assert "within" in p["loss_is"]


def test_bad_input_is_one_line(fitted, capsys):
    root, _, _ = fitted
    base = ["project", "sweep=law", f"sweeps_root={root}", "cluster=dev_slurm"]
    assert cli.main(base + ["--target-flops", "1e19", "--node-hours", "5"]) == 2
    assert "exactly one of --target-flops C or --node-hours H" in capsys.readouterr().err
    assert cli.main(base + ["--target-flops", "-1"]) == 2
    assert "--target-flops: must be a positive number, got -1.0" in capsys.readouterr().err
    assert cli.main(base + ["--target-flops", "1e19", "--nodes", "8"]) == 2
    assert "larger than the largest queue bin" in capsys.readouterr().err
    assert cli.main(["project", "sweep=law", f"sweeps_root={root}", "cluster=local", "--target-flops", "1e19"]) == 2
    assert "cluster.device_peak_flops: profile local has none" in capsys.readouterr().err


def test_a_real_runs_checkpoint_write_speed_replaces_the_assumed_one(fitted, capsys, tmp_path):
    run_dir = tmp_path / "run"
    train = [sys.executable, "-m", "launcher.cli", "train", "model=gpt_neox/tiny", "train.max_steps=4"]
    train += ["train.checkpoint_every=2", "train.global_batch_tokens=512", "wandb.mode=disabled", f"run_dir={run_dir}"]
    done = subprocess.run(train, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    state = json.loads((run_dir / "state.json").read_text())
    writes = state["checkpoint_writes"]
    assert [w["step"] for w in writes] == [2, 4] and all(w["seconds"] > 0 for w in writes)
    last = run_dir / "checkpoints" / "step_00000004"  # counted here by walking the tag's files
    assert writes[-1]["bytes"] == sum(f.stat().st_size for f in last.rglob("*") if f.is_file()) > 0
    measured = sum(w["bytes"] for w in writes) / sum(w["seconds"] for w in writes)

    # the sweep ran on the profile projected for: its runs' own writes give the speed
    root, sweep_dir, specs = fitted
    copy = tmp_path / "copy" / "law"
    shutil.copytree(sweep_dir, copy)
    (copy / "scaling.json").unlink(missing_ok=True)
    assert project(tmp_path / "copy", capsys, "--target-flops", "1e19")["write_speed_source"].startswith("assumed")
    plan = json.loads((copy / "plan.json").read_text())
    (copy / "plan.json").write_text(json.dumps({**plan, "cluster": {**plan["cluster"], "name": "dev_slurm"}}))
    shutil.copyfile(run_dir / "state.json", copy / "runs" / specs[0].name / "state.json")
    p = project(tmp_path / "copy", capsys, "--target-flops", "1e19")
    assert p["write_gb_s_per_node"] == pytest.approx(measured / 1e9, rel=1e-12)
    assert p["write_speed_source"].startswith("measured on dev_slurm")
    assert p["checkpoint_write_s"] == pytest.approx(p["checkpoint_bytes"] / measured, rel=1e-12)
    assert "measured on dev_slurm" in (copy / "proposal.md").read_text()
