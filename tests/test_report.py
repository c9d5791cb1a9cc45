"""fit_sweep_dir end to end on curves drawn from a known law, and the report built from it."""

from __future__ import annotations

import base64
import json
import re
import shutil

import numpy as np
import pytest

from launcher import cli
from launcher.analysis.fitting import BUDGET_ARGUMENT, NO_BUDGET, fit_sweep_dir, reason, summary_lines
from launcher.analysis.report import PLOTS_DIR, write_report
from launcher.numbers import sci, si
from test_collect import LAW, curve_records, isoflop_specs, make_sweep, spec, write_metrics

N_BOOT = 20


def true_optimum(C: float) -> tuple[float, float]:
    """N_opt, D_opt of LAW at C = 6 N D (Hoffmann et al.'s closed form)."""
    a = LAW["beta"] / (LAW["alpha"] + LAW["beta"])
    G = (LAW["alpha"] * LAW["A"] / (LAW["beta"] * LAW["B"])) ** (1 / (LAW["alpha"] + LAW["beta"]))
    N = G * (C / 6) ** a
    return N, C / (6 * N)


@pytest.fixture(scope="module")
def law_sweep(tmp_path_factory):
    """An isoFLOP sweep following LAW with noisy curves, fitted once (budget from plan.json)."""
    root = tmp_path_factory.mktemp("law")
    specs = isoflop_specs("law", per_budget=5, steps=40)
    sweep_dir = make_sweep(root, "law", specs, budget_flops=1e19)
    rng = np.random.default_rng(1)
    for i, s in enumerate(specs):
        records = curve_records(s, seed=i)
        records[-1]["val_loss"] *= float(np.exp(rng.normal(0, 0.002)))  # the fits see a little noise
        write_metrics(sweep_dir / "runs" / s.name, records)
    fit = fit_sweep_dir(sweep_dir, n_boot=N_BOOT)
    return sweep_dir, specs, fit


def test_fit_sweep_dir_recovers_the_law(law_sweep):
    sweep_dir, specs, fit = law_sweep
    assert json.loads((sweep_dir / "fit.json").read_text()) == fit
    assert fit["inputs"]["budget_flops"] == 1e19 and fit["inputs"]["budget_source"] == "plan.json budget_flops"
    assert fit["n_runs"] == len(specs) and fit["inputs"]["curve_points_logged"] == 40 * len(specs)
    law3 = fit["approach3"]
    assert law3["alpha"] == pytest.approx(LAW["alpha"], abs=0.03)
    assert law3["beta"] == pytest.approx(LAW["beta"], abs=0.03)
    a_true = LAW["beta"] / (LAW["alpha"] + LAW["beta"])
    assert fit["approach2"]["a"] == pytest.approx(a_true, abs=0.03)
    rec = fit["recommendation"]
    n_true, d_true = true_optimum(1e19)
    assert rec["C"] == 1e19
    assert rec["N_opt"] == pytest.approx(n_true, rel=0.25) and rec["D_opt"] == pytest.approx(d_true, rel=0.25)
    assert rec["N_opt_ci"][0] <= rec["N_opt"] <= rec["N_opt_ci"][1]
    assert "error" not in fit["extrapolation"]


def test_the_fit_takes_the_budget_and_its_source_from_plan_json(tmp_path):
    specs = isoflop_specs("alloc", budgets=(1e16, 3e16, 1e17), per_budget=3, steps=20)
    sweep_dir = make_sweep(tmp_path, "alloc", specs, budget_flops=None)
    for i, s in enumerate(specs):
        write_metrics(sweep_dir / "runs" / s.name, curve_records(s, seed=i))
    fit = fit_sweep_dir(sweep_dir, n_boot=5)  # plan.json records no budget: nothing is made up here
    assert fit["inputs"]["budget_flops"] is None and fit["inputs"]["budget_source"] == NO_BUDGET
    assert "error" in fit["recommendation"]
    plan = json.loads((sweep_dir / "plan.json").read_text())
    source = "cluster.allocation_node_hours 1 x 3600 s x 1e+14 FLOP/s per node, measured by calibration"
    (sweep_dir / "plan.json").write_text(json.dumps({**plan, "budget_flops": 3.6e17, "budget_source": source}))
    fit = fit_sweep_dir(sweep_dir, n_boot=5)
    assert (fit["recommendation"]["C"], fit["inputs"]["budget_source"]) == (3.6e17, source)
    assert f"budget C = 3.6e+17 FLOPs ({source})" in summary_lines(fit)


def test_ladder_fit_cli(law_sweep, tmp_path, capsys):
    shutil.copytree(law_sweep[0], tmp_path / "copy")
    assert (
        cli.main(["fit", "sweep=copy", f"sweeps_root={tmp_path}", "--json", "--n-boot", "5", "--budget-flops", "1e18"])
        == 0
    )
    fit = json.loads(capsys.readouterr().out)
    assert fit["recommendation"]["C"] == 1e18 and fit["inputs"]["budget_source"] == BUDGET_ARGUMENT
    csv = tmp_path / "points.csv"
    csv.write_text("N,D,loss\n" + "".join(f"{n},{20 * n},{2 + 100 / n**0.3}\n" for n in (1e6, 1e7, 1e8)))
    assert (
        cli.main(
            [
                "fit",
                "--points",
                str(csv),
                "--approach",
                "kaplan",
                "--n-col",
                "N",
                "--d-col",
                "D",
                "--loss-col",
                "loss",
                "--json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["approach"] == "kaplan"


def test_report_is_self_contained_and_shows_the_data(law_sweep):
    sweep_dir, specs, fit = law_sweep
    path = write_report(sweep_dir, wandb_mode="disabled")
    page = path.read_text()
    assert json.loads((sweep_dir / "fit.json").read_text())["inputs"]["fingerprint"] == fit["inputs"]["fingerprint"]
    # self-contained: no external reference of any kind, every image inline and identical to plots/*.png
    assert not re.search(r'(src|href)\s*=\s*["\']?\s*(https?:)?//', page, re.I)
    assert "<script" not in page and "<link" not in page and "url(" not in page
    images = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([^"]+)"', page)
    plots = sorted((sweep_dir / PLOTS_DIR).glob("*.png"))
    assert [p.stem for p in plots] == ["compute_spent", "frontier", "isoflop", "loss_curves", "predicted_vs_observed"]
    assert sorted(base64.b64decode(i) for i in images) == sorted(p.read_bytes() for p in plots)
    # the ledger: every run and the sweep's totals, computed here from the metrics files themselves
    last = [json.loads((sweep_dir / "runs" / s.name / "metrics.jsonl").read_text().splitlines()[-1]) for s in specs]
    total_c = sum(r["flops"] for r in last)
    total_6nd = sum(6 * s.N * r["tokens"] for s, r in zip(specs, last))
    assert f"<td>{sci(total_c)}</td><td>{sci(total_6nd)}</td><td>{total_c / total_6nd:.3f}</td>" in page
    for s in specs:
        assert f'<td class="l">{s.name}</td><td class="l">completed</td><td>{si(s.N)}</td>' in page
    rec = fit["recommendation"]
    assert si(rec["N_opt"]) in page and si(rec["D_opt"]) in page
    summary = (sweep_dir / "summary.txt").read_text()
    for name in ("a", "b", "alpha", "beta", "E"):
        assert f"{name} = {fit['approach3'][name]:.3g}" in summary
    assert f"N_opt = {rec['N_opt']:.3g} [{rec['N_opt_ci'][0]:.3g}, {rec['N_opt_ci'][1]:.3g}]" in summary
    assert f"approach3: N_opt error {100 * fit['extrapolation']['approach3']['rel_error_N_opt']:+.1f}%" in summary
    assert summary.strip() in page.replace("&#x27;", "'")
    # both open with the verdict, the trusted approach's recommendation and what to run next
    verdict = fit["diagnostics"]["verdict"]
    lines = summary.splitlines()
    assert lines[1].startswith(f"verdict: {verdict}") and any(line == "next:" for line in lines[:12])
    assert page.index("<h2>Verdict</h2>") < page.index("<h2>Recommendation</h2>") < page.index("<h2>Fitted laws</h2>")


def test_report_when_the_fit_fails(tmp_path, capsys):
    """Two runs of one size cannot be fitted: the page says why, and still shows the curves and the ledger."""
    a = spec("f", "a", 30_000, 10**6, steps=30, flops_per_token=int(6 * 30_000 * 1.25))
    b = spec("f", "b", 30_000, 2 * 10**6, steps=30, flops_per_token=int(6 * 30_000 * 1.25))
    c = spec("f", "c", 60_000, 10**6, steps=30)
    sweep_dir = make_sweep(tmp_path, "f", [a, b, c], {"c": "diverged"})
    for i, s in enumerate((a, b, c)):
        write_metrics(sweep_dir / "runs" / s.name, curve_records(s, seed=i))
    path = write_report(sweep_dir, wandb_mode="disabled")
    page = path.read_text()
    fit = json.loads((sweep_dir / "fit.json").read_text())
    assert "error" in fit["approach3"]
    assert f"<b>Predicted vs observed loss:</b> not drawn: {fit['approach3']['error']}" in page
    assert (sweep_dir / PLOTS_DIR / "loss_curves.png").exists()
    assert not (sweep_dir / PLOTS_DIR / "predicted_vs_observed.png").exists()
    assert '<td class="l">c</td><td class="l">diverged</td>' in page
    assert "<td>1.250</td>" in page  # a's and b's exact FLOPs are 1.25 x 6ND
    summary = (sweep_dir / "summary.txt").read_text()
    assert f"approach 3 (L = E + A/N^alpha + B/D^beta): {reason(fit['approach3'], 'approach 3')}" in summary
    assert "approach 3: approach 3" not in summary

    # nothing completed at all: fit.json holds the error, the page shows it
    make_sweep(tmp_path, "e", [spec("e", "x", 10_000, 10**5)], {"x": "running"})
    assert cli.main(["report", "sweep=e", f"sweeps_root={tmp_path}", "--wandb-mode", "disabled"]) == 0
    assert capsys.readouterr().out.startswith("sweep e: 0 completed runs fitted")
    page = (tmp_path / "e" / "report.html").read_text()
    assert '<div class="error"><b>The fit failed:</b> no completed run to fit' in page
    assert "not drawn" in page


def test_summary_when_the_extrapolation_has_no_error_to_give():
    """A held-out budget whose optimum could not be located leaves its relative errors null (CLIP sweeps)."""
    fit = {
        "inputs": {"sweep": "clip_tiny"},
        "recommendation": {"error": "no law"},
        "extrapolation": {
            "C": 1e12,
            "observed": {"N_opt": 5e4, "from": "runs"},
            "approach2": {"N_opt": 4e4, "rel_error_N_opt": None, "loss_opt": None, "rel_error_loss": None},
            "approach3": {"N_opt": 6e4, "rel_error_N_opt": 0.2, "loss_opt": 2.0, "rel_error_loss": -0.01},
        },
    }
    lines = summary_lines(fit)
    assert "  approach2: N_opt error n/a, loss error n/a" in lines
    assert "  approach3: N_opt error +20.0%, loss error -1.00%" in lines


def test_holdout_runs_of_plan_json_are_predicted_and_the_report_labels_predictions_and_projections(tmp_path):
    """plan.json marks the largest budget's runs holdout: collect carries the mark, the fit leaves them out
    and predicts them, and the report, summary and W&B rows say which claims are checked and which projected."""
    import dataclasses

    from launcher.analysis.collect import collect_sweep
    from launcher.analysis.wandb_sync import prediction_rows
    from test_collect import law_loss

    specs = [dataclasses.replace(s, holdout=s.budget == 3e17) for s in isoflop_specs("h", per_budget=5, steps=40)]
    held = {s.name for s in specs if s.holdout}
    sweep_dir = make_sweep(tmp_path, "h", specs, budget_flops=1e19)
    for i, s in enumerate(specs):
        write_metrics(sweep_dir / "runs" / s.name, curve_records(s, seed=i))
    assert {p["name"] for p in collect_sweep(sweep_dir).final_points if p["holdout"]} == held
    fit = fit_sweep_dir(sweep_dir, n_boot=N_BOOT)
    assert fit["n_runs"] == len(specs) - len(held) and fit["inputs"]["final_points"] == len(specs)
    assert held.isdisjoint(r["name"] for r in fit["approach3"]["runs"])
    runs = fit["holdout"]["runs"]
    assert {r["name"] for r in runs} == held
    for r in runs:  # curve_records' val_loss is the law + 0.01
        s = next(x for x in specs if x.name == r["name"])
        assert r["loss"] == pytest.approx(float(law_loss(s.N, s.D)) + 0.01)
        assert abs(r["rel_error"]) < 0.02
    assert fit["recommendation"]["kind"] == "projection" and fit["projection"]["beyond_C"] == max(r["C"] for r in runs)
    write_report(sweep_dir, wandb_mode="disabled")
    page, summary = (sweep_dir / "report.html").read_text(), (sweep_dir / "summary.txt").read_text()
    assert "<h2>Held-out runs</h2>" in page and "<b>A projection:</b>" in page
    for r in runs:
        assert f'<td class="l">{r["name"]}</td>' in page
    assert f"holdout: {len(runs)} run(s) predicted by approach 3 from the others" in summary
    assert "a projection: C lies beyond every run" in summary
    rows = prediction_rows(fit)
    assert [row[:2] for row in rows] == [[r["name"], "prediction"] for r in runs] + [["recommendation", "projection"]]
