"""``ladder fit sweep=NAME metric=KEY``: any key the runs log, fitted in two steps, on synthetic curves
written as metrics.jsonl (a real CLIP sweep is not cheap enough here: tests/test_clip.py trains CLIP)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from launcher import cli
from launcher.analysis.collect import final_metric
from launcher.analysis.fitting import fit_sweep_dir
from launcher.analysis.report import PLOTS_DIR, write_report
from test_collect import curve_records, isoflop_specs, law_loss, make_sweep, write_metrics

# zero_shot_acc = a / (1 + exp(-k (L - L0))) + b, falling as the loss rises (k < 0)
LINK = dict(a=0.8, b=0.1, k=-3.0, L0=4.6)  # L0 amid the runs' losses (3.9-6.0): every parameter shows


def accuracy(loss):
    return LINK["a"] / (1 + np.exp(-LINK["k"] * (np.asarray(loss) - LINK["L0"]))) + LINK["b"]


@pytest.fixture(scope="module")
def clip_like(tmp_path_factory):
    """An isoFLOP sweep whose runs log zero_shot_acc at every validation (the largest budget held out)."""
    root = tmp_path_factory.mktemp("metric")
    specs = [dataclasses.replace(s, holdout=s.budget == 3e17) for s in isoflop_specs("m", per_budget=5, steps=40)]
    sweep_dir = make_sweep(root, "m", specs, budget_flops=1e19)
    for i, s in enumerate(specs):
        records = curve_records(s, seed=i)
        for r in records:
            if "val_loss" in r:
                r["zero_shot_acc"] = float(accuracy(r["val_loss"]))
        records.append({"step": s.steps, "tokens_per_s_mean": 1.0})  # an end-of-run record without the key
        write_metrics(sweep_dir / "runs" / s.name, records)
    plan = json.loads((sweep_dir / "plan.json").read_text())
    plan["sweep"] = {"name": "m", "metrics": ["zero_shot_acc"]}  # as clip_tiny.yaml's sweep.metrics
    (sweep_dir / "plan.json").write_text(json.dumps(plan))
    return sweep_dir, specs


def test_final_metric_is_the_last_logged_value(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        '{"step": 1, "acc": 0.1}\n{"step": 2, "acc": 0.3}\n{"step": 3, "acc": null}\n{"step": 4, "other": 1}\n'
    )
    assert final_metric(path, "acc") == (0.3, 2)
    assert final_metric(path, "nope") is None and final_metric(tmp_path / "missing.jsonl", "acc") is None


def test_metric_key_is_fitted_in_two_steps_with_holdout_predictions(clip_like, capsys):
    sweep_dir, specs = clip_like
    assert cli.main(["fit", f"sweep={sweep_dir}", "metric=zero_shot_acc", "--n-boot", "30", "--json"]) == 0
    fit = json.loads(capsys.readouterr().out)
    part = fit["metrics"]["zero_shot_acc"]
    assert part["key"] == "zero_shot_acc" and part["approach"] == "two_stage" and part["not_logged"] == []
    law = part["metric_law"]
    assert law["link"] == "sigmoid" and law["bounds"] == [0.0, 1.0]
    for name in ("a", "b", "k", "L0"):
        assert law[name] == pytest.approx(LINK[name], rel=0.02), name
    by_kind = {}
    for p in part["predictions"]:
        by_kind.setdefault(p["kind"], []).append(p)
    held = {s.name for s in specs if s.holdout}
    assert {p["name"] for p in by_kind["prediction"]} == held
    assert len(by_kind["fitted"]) == len(specs) - len(held)
    for p in by_kind["fitted"] + by_kind["prediction"]:  # observed: the link at the run's val_loss
        s = next(x for x in specs if x.name == p["name"])
        assert p["observed"] == pytest.approx(float(accuracy(law_loss(s.N, s.D) + 0.01)), abs=1e-9)
        assert abs(p["metric"] - p["observed"]) < 0.02 and p["lo"] <= p["metric"] <= p["hi"]
    (rec,) = by_kind["projection"]
    assert rec["name"] == "recommendation" and rec["N"] == fit["recommendation"]["N_opt"]
    assert rec["metric"] == pytest.approx(float(accuracy(rec["loss"])), abs=0.01)


def test_a_key_no_run_logged_is_an_error_part_and_the_loss_key_is_the_ordinary_fit(clip_like, capsys):
    sweep_dir, _ = clip_like
    fit = fit_sweep_dir(sweep_dir, n_boot=5, metric="bleu")
    assert list(fit["metrics"]) == ["zero_shot_acc", "bleu"]  # the sweep config's, then the one asked for
    assert fit["metrics"]["bleu"] == {"error": "metric bleu: no completed run logged it in metrics.jsonl"}
    assert list(fit_sweep_dir(sweep_dir, n_boot=5, metric="val_loss")["metrics"]) == ["zero_shot_acc"]
    assert cli.main(["fit", f"sweep={sweep_dir}", "metrc=x"]) == 2
    assert (
        "metrc=x: unknown argument; allowed: sweep=<name>, sweeps_root=<dir>, metric=<metric>"
        in capsys.readouterr().err
    )


def test_the_report_shows_the_two_step_fit(clip_like):
    sweep_dir, specs = clip_like
    write_report(sweep_dir, wandb_mode="disabled")
    page, summary = (sweep_dir / "report.html").read_text(), (sweep_dir / "summary.txt").read_text()
    assert "<h2>Downstream metrics</h2>" in page and "then loss → zero_shot_acc by the sigmoid link" in page
    assert (sweep_dir / PLOTS_DIR / "metric_zero_shot_acc.png").stat().st_size > 0
    assert 'alt="zero_shot_acc against loss"' in page
    assert "metric zero_shot_acc: (N, D) -> loss by approach 3, loss -> zero_shot_acc by the sigmoid link" in summary
    held = [s.name for s in specs if s.holdout]
    assert all(f"  {name} (held out): predicted " in summary for name in held)
    assert "  at the recommendation (projection): " in summary
