"""``ladder propose`` on a synthetic sweep whose largest budget ran only sizes above its optimum, and
``proposal=FILE`` adding the proposed runs to a sweep's plan without touching the runs already there."""

from __future__ import annotations

import numpy as np
import yaml

from launcher import cli
from launcher.analysis.fitting import fit_sweep_dir
from launcher.sweep.plan import build_plan
from test_collect import LAW, curve_records, make_sweep, spec, write_metrics


def n_opt(C: float) -> float:
    a = LAW["beta"] / (LAW["alpha"] + LAW["beta"])
    G = (LAW["alpha"] * LAW["A"] / (LAW["beta"] * LAW["B"])) ** (1 / (LAW["alpha"] + LAW["beta"]))
    return G * (C / 6) ** a


def test_a_minimum_at_the_small_edge_proposes_smaller_sizes_and_a_larger_budget(tmp_path, capsys):
    factors = {
        1e16: (0.25, 0.5, 1, 2, 4),
        3e16: (0.25, 0.5, 1, 2, 4),
        1e17: (0.25, 0.5, 1, 2, 4),
        3e17: (3, 6, 12, 24),
    }  # the largest budget's runs all lie above its optimum
    specs = [
        spec("tiny", f"c{C:.0e}-n{j}", int(n_opt(C) * f), int(C / (6 * int(n_opt(C) * f))), budget=C, steps=40)
        for C, fs in factors.items()
        for j, f in enumerate(fs)
    ]
    sweep_dir = make_sweep(tmp_path, "tiny", specs, budget_flops=1e19)
    for i, s in enumerate(specs):
        write_metrics(sweep_dir / "runs" / s.name, curve_records(s, seed=i))
    fit = fit_sweep_dir(sweep_dir, n_boot=20)
    edge = next(b for b in fit["diagnostics"]["budgets"] if b["budget"] == 3e17)
    assert edge["position"] == "below" and fit["diagnostics"]["verdict"] == "disagree"

    assert cli.main(["propose", "sweep=tiny", f"sweeps_root={tmp_path}", "--runs", "5"]) == 0
    proposal = yaml.safe_load((sweep_dir / "proposal.yaml").read_text())
    assert proposal["sweep"] == "tiny" and "edges first" in proposal["rule"] and len(proposal["runs"]) == 5
    smallest = min(s.N for s in specs if s.budget == 3e17)
    first, second, *beyond = proposal["runs"]
    assert (first["budget"], second["budget"]) == (3e17, 3e17)
    assert first["params"] == smallest / 2 and second["params"] == smallest / 4  # beyond the small edge
    ran = {(s.N, s.budget) for s in specs}
    assert len(beyond) == 3 and all((r["params"], r["budget"]) not in ran for r in beyond)  # each is new
    assert all(r["budget"] in factors or r["budget"] in (6e17, 1.2e18, 2.4e18) for r in beyond)  # a candidate
    assert "proposal.yaml" in capsys.readouterr().out


def test_a_proposal_adds_its_runs_to_the_sweep_and_keeps_the_others(tmp_path):
    before = build_plan(["sweep=tiny", f"sweeps_root={tmp_path}"])
    path = tmp_path / "proposal.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "sweep": "tiny",
                "rule": "by hand",
                "runs": [
                    {"params": 8000, "budget": 1e10, "reason": "below the small edge"},
                    {"params": 60000, "budget": 4e10, "reason": "a budget beyond the largest"},
                ],
            }
        )
    )
    after = build_plan(["sweep=tiny", f"proposal={path}", f"sweeps_root={tmp_path}"])
    old = {r.config_hash for r in before.runs}
    assert old < {r.config_hash for r in after.runs} and len(after.runs) == len(before.runs) + 2
    added = [r for r in after.runs if r.config_hash not in old]
    assert sorted(r.budget for r in added) == [1e10, 4e10]
    assert np.isclose(min(r.N for r in added if r.budget == 1e10), min(r.N for r in after.runs if r.budget == 1e10))


def test_a_proposal_to_a_wsd_sweep_adds_trunks_for_new_sizes_and_keeps_the_old_runs(tmp_path):
    before = build_plan(["sweep=default", f"sweeps_root={tmp_path}"])
    path = tmp_path / "proposal.yaml"
    runs = [{"params": 400000, "budget": 7.2e12, "reason": "beyond"}, {"params": 400000, "budget": 1.8e12}]
    path.write_text(yaml.safe_dump({"sweep": "default", "rule": "by hand", "runs": runs}))
    after = build_plan(["sweep=default", f"proposal={path}", f"sweeps_root={tmp_path}"])
    old = {r.config_hash for r in before.runs}
    added = [r for r in after.runs if r.config_hash not in old]
    assert old < {r.config_hash for r in after.runs}
    (trunk,) = [r for r in added if r.role == "trunk"]  # one new trunk serves both new points
    assert sorted((r.role, r.budget) for r in added if r.role == "branch") == [("branch", 1.8e12), ("branch", 7.2e12)]
    assert all(r.parent == trunk.name for r in added if r.role == "branch")
