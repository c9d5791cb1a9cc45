"""The verdict in fit.json: a clean synthetic sweep agrees; sweeps built to disagree are flagged, in words."""

from __future__ import annotations

import pytest

from launcher.analysis.fit import fit_sweep
from launcher.analysis.fit.chinchilla import ChinchillaFit
from launcher.analysis.fit.diagnostics import diagnose
from launcher.analysis.fit.points import as_points
from launcher.analysis.fitting import summary_lines, trusted_recommendation
from test_fit_sweep import sweep


def fit(finals, curves):
    return fit_sweep(finals, curves, budget_flops=1e19, n_boot=50, seed=0)


@pytest.fixture(scope="module")
def clean():
    return fit(*sweep())  # sizes 0.4x-3.2x around each budget's true optimum


def test_a_clean_sweep_agrees_and_trusts_the_recommendation(clean):
    d = clean["diagnostics"]
    assert d["verdict"] == "agree" and d["reasons"] == []
    assert set(d["approaches"]) == {"approach1", "approach2", "approach3"}
    for info in d["approaches"].values():
        lo, hi = info["a_ci"]
        assert lo <= info["a"] <= hi and info["flags"] == []
    assert [b["position"] for b in d["budgets"]] == ["inside"] * 3
    assert d["approach3"]["at_bound"] == [] and 1 < d["approach3"]["condition_number"] < 1e4
    assert d["residuals"]["approach3"]["rms_rel"] < 0.01  # 0.3% noise
    assert len(d["residuals"]["approach3"]["runs"]) == 12
    assert (
        d["trusted"] == clean["recommendation"]["source"] and trusted_recommendation(clean) == clean["recommendation"]
    )
    lines = summary_lines(clean)
    assert lines[1].startswith("verdict: agree") and lines[2].startswith("trusted: approach3: N_opt = ")
    assert lines[3] == "next:" and "add a budget beyond the largest" in lines[4]


def test_sizes_all_above_the_optimum_disagree_and_say_where_to_run():
    d = fit(*sweep(sizes=(3, 6, 12, 24)))["diagnostics"]  # every budget's minimum lies below its smallest size
    assert d["verdict"] == "disagree"
    assert [b["position"] for b in d["budgets"]] == ["below"] * 3
    assert any(
        "approach 2: budget 1e+17: the parabola's minimum lies below the smallest size run" == r for r in d["reasons"]
    )
    assert d["approaches"]["approach2"]["flags"] and d["trusted"] != "approach2"
    assert all("add sizes down to about" in step for step in d["next_runs"][:3])
    assert all(b["N_opt"] < b["N_min"] for b in d["budgets"])


def test_e_pinned_at_zero_is_flagged_as_an_unidentified_floor(clean):
    finals, _ = sweep()
    law = clean["approach3"]  # the default sweep: E pinned at 1.7e-16 by the fit
    pinned = ChinchillaFit(1.7e-16, law["A"], law["B"], law["alpha"], law["beta"], 0.0, 1e-3, "sum", 1, 1)
    d = diagnose(clean, pinned, as_points(finals))
    assert d["verdict"] == "disagree" and d["approach3"]["E_over_min_loss"] < 1e-15
    assert any(
        r.startswith("approach 3: E = 1.7e-16 is at its bound 0: the irreducible loss is not identified")
        for r in d["reasons"]
    )
    assert any("so that E is identified" in step for step in d["next_runs"])
    assert d["trusted"] == "approach2"  # the unflagged approach the report then leads with


def test_disjoint_exponents_are_a_reason_in_words(clean):
    finals, _ = sweep()
    fake = {
        **clean,
        "approach1": {**clean["approach1"], "a": 0.1},
        "bootstrap": {**clean["bootstrap"], "approach1": {"ci": {"a": [0.05, 0.15]}}},
    }
    d = diagnose(fake, None, as_points(finals))
    assert d["verdict"] == "disagree"
    assert any(
        r.startswith("the approaches' intervals of a do not overlap: approach 1 a = 0.1 [0.05, 0.15]")
        for r in d["reasons"]
    )
