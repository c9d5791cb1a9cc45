"""Scaling-law fits recover known laws and reproduce published fits (tests/data/scaling/README.md)."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from launcher.analysis.fit import fit_points
from launcher.analysis.fit.bnsl import fit_bnsl
from launcher.analysis.fit.bootstrap import resample_counts
from launcher.analysis.fit.chinchilla import HuberObjective, chinchilla_grid
from launcher.analysis.fit.lbfgs import minimize_lbfgs_batched
from launcher.errors import UserError

DATA = Path(__file__).parent / "data" / "scaling"
# Besiroglu et al. (2024)'s replication of Chinchilla's approach 3
TRUE = dict(E=1.82, A=482.0, B=2085.0, alpha=0.35, beta=0.37)


def chinchilla_points(n: int, noise: float, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    N = np.exp(rng.uniform(np.log(1e7), np.log(1e10), n))
    D = np.exp(rng.uniform(np.log(1e8), np.log(1e11), n))
    loss = TRUE["E"] + TRUE["A"] / N ** TRUE["alpha"] + TRUE["B"] / D ** TRUE["beta"]
    loss *= np.exp(rng.normal(0.0, noise, n))
    return [{"N": a, "D": b, "loss": c} for a, b, c in zip(N, D, loss)]


def read_csv(name: str) -> list[dict]:
    with (DATA / name).open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_approach3_recovers_a_known_law_and_beats_the_truth():
    points = chinchilla_points(80, noise=0.005, seed=1)
    fit = fit_points(points, "3", method="grid")  # the Epoch-style grid; the default vpnls: tests/test_laws.py
    assert fit["alpha"] == pytest.approx(TRUE["alpha"], abs=0.05)
    assert fit["beta"] == pytest.approx(TRUE["beta"], abs=0.05)
    assert fit["E"] == pytest.approx(TRUE["E"], rel=0.05)
    assert fit["n_starts"] == 4500 == len(chinchilla_grid())
    # the optimiser found a minimum at least as good as the generating parameters
    N, D, L = (np.array([p[k] for p in points]) for k in ("N", "D", "loss"))
    objective = HuberObjective(N, D, L)
    truth = np.array([[np.log(TRUE["A"]), np.log(TRUE["B"]), np.log(TRUE["E"]), TRUE["alpha"], TRUE["beta"]]])
    assert fit["objective"] <= objective(objective.to_internal(truth))[0][0]
    json.dumps(fit, allow_nan=False)


def test_huber_sum_and_mean_reach_the_same_optimum():
    points = chinchilla_points(60, noise=0.01, seed=2)
    total = fit_points(points, "3", huber_reduce="sum", method="grid")
    mean = fit_points(points, "3", huber_reduce="mean", method="grid")
    # the mean objective is ~1e-5: an absolute tolerance like scipy's default would stop at once
    assert mean["objective"] < 1e-4
    assert total["objective"] == pytest.approx(len(points) * mean["objective"], rel=1e-8)
    for key in ("E", "A", "B", "alpha", "beta"):
        assert mean[key] == pytest.approx(total[key], rel=1e-5), key


def test_objective_gradient_matches_finite_differences():
    points = chinchilla_points(30, noise=0.01, seed=3)
    N, D, L = (np.array([p[k] for p in points]) for k in ("N", "D", "loss"))
    weights = np.random.default_rng(0).uniform(0.5, 2.0, len(L))
    objective = HuberObjective(N, D, L, weights, reduce="mean")
    theta = objective.to_internal(
        np.array([[6.0, 7.5, 0.6, 0.35, 0.37], [2.0, 9.0, 0.1, 0.8, 0.2], [300.0, 5.0, 0.5, 40.0, 0.3]])
    )  # third: terms 700+ e-folds apart
    f, grad = objective(theta)
    h = 1e-6
    for i in range(5):
        step = np.zeros(5)
        step[i] = h
        numeric = (objective(theta + step)[0] - objective(theta - step)[0]) / (2 * h)
        np.testing.assert_allclose(grad[:, i], numeric, rtol=1e-5, atol=1e-9 * np.abs(f).max())


def test_batched_lbfgs_solves_many_rosenbrocks_at_once():
    def rosenbrock(x, rows):
        a, b = x[:, 0], x[:, 1]
        f = (1 - a) ** 2 + 100 * (b - a * a) ** 2
        g = np.stack([-2 * (1 - a) - 400 * a * (b - a * a), 200 * (b - a * a)], axis=1)
        return f, g

    starts = np.random.default_rng(0).uniform(-2, 2, (50, 2))
    result = minimize_lbfgs_batched(rosenbrock, starts, rtol=1e-12)
    np.testing.assert_allclose(result.x, 1.0, atol=1e-4)
    assert result.converged.all()


def isoflop_points(budgets, seed: int, noise: float = 0.003) -> list[dict]:
    rng = np.random.default_rng(seed)
    E, A, B, alpha, beta = (TRUE[k] for k in ("E", "A", "B", "alpha", "beta"))
    G = (alpha * A / (beta * B)) ** (1 / (alpha + beta))
    points = []
    for C in budgets:
        n_opt = G * (C / 6) ** (beta / (alpha + beta))
        for factor in np.exp(np.linspace(-1.5, 1.5, 7)):
            N = n_opt * factor
            D = C / (6 * N)
            loss = (E + A / N**alpha + B / D**beta) * np.exp(rng.normal(0, noise))
            points.append({"N": N, "D": D, "C": C, "loss": loss})
    return points


def test_approach2_recovers_the_compute_optimal_exponents():
    fit = fit_points(isoflop_points([1e18, 3e18, 1e19, 3e19, 1e20], seed=4), "2")
    alpha, beta = TRUE["alpha"], TRUE["beta"]
    assert fit["a"] == pytest.approx(beta / (alpha + beta), abs=0.02)
    assert fit["b"] == pytest.approx(alpha / (alpha + beta), abs=0.02)
    assert len(fit["budgets"]) == 5 and all(b["interior"] for b in fit["budgets"])
    c2, c1, c0 = fit["budgets"][0]["parabola_lnN"]
    assert c2 > 0 and np.exp(-c1 / (2 * c2)) == pytest.approx(fit["budgets"][0]["N_opt"])


def porian_optima() -> dict[tuple, list[dict]]:
    groups = defaultdict(list)
    for row in read_csv("porian2024_isoflop_optima.csv"):
        if row["n_star_std"] and row["t_star_std"]:  # the authors' fits leave these budgets out
            groups[row["source"], row["row"]].append(row)
    return groups


WEIGHTED = [r for r in read_csv("porian2024_fit_results.csv") if r["fit"] == "weighted"]


@pytest.mark.parametrize("published", WEIGHTED, ids=lambda r: f"{r['source']}-{r['row']}")
def test_porian_weighted_isoflop_exponents(published):
    rows = porian_optima()[published["source"], published["row"]]
    points = [
        {"N": float(r["n_star"]), "D": float(r["t_star"]), "C": float(r["flops"]), "loss": float(r["loss_star"])}
        for r in rows
    ]
    by_n = fit_points(points, "2", weights=[1 / float(r["n_star_std"]) ** 2 for r in rows])
    by_t = fit_points(points, "2", weights=[1 / float(r["t_star_std"]) ** 2 for r in rows])
    assert by_n["a"] == pytest.approx(float(published["n_exponent"]), abs=1e-3)
    assert by_n["N_coef"] == pytest.approx(float(published["n_coef"]), rel=1e-3)
    assert by_t["b"] == pytest.approx(float(published["t_exponent"]), abs=1e-3)


def test_approach2_takes_single_points_as_optima_only_when_every_budget_is_one():
    points = isoflop_points([1e18, 3e18, 1e19], seed=1)
    optima = [min((p for p in points if p["C"] == C), key=lambda p: p["loss"]) for C in (1e18, 3e18, 1e19)]
    assert [b["n_points"] for b in fit_points(optima, "2")["budgets"]] == [1, 1, 1]
    raw = [p for p in points if p["C"] != 1e19] + optima[2:]  # the largest budget ran one size
    fit = fit_points(raw, "2")
    assert [b["n_points"] for b in fit["budgets"]] == [7, 7]
    assert fit["skipped_budgets"] == [
        {"budget": 1e19, "error": "budget 1e+19: a parabola needs runs of 3+ distinct sizes, got 1"}
    ]
    two_sizes = [p for C in (3e18, 1e19) for p in [q for q in points if q["C"] == C][2:4]]
    with pytest.raises(
        UserError,
        match=r"^approach 2: needs optima at 2\+ isoFLOP budgets, got 1 \(budget 3e\+18: "
        r"a parabola needs runs of 3\+ distinct sizes, got 2; budget 1e\+19: ",
    ):
        fit_points([p for p in points if p["C"] == 1e18] + two_sizes, "2")


def test_porian_named_configurations_are_among_those_checked():
    labels = {r["paper_label"]: float(r["n_exponent"]) for r in WEIGHTED}
    assert labels["Reproducing Kaplan et al."] == pytest.approx(0.8353, abs=1e-4)
    assert labels["Optimizer tuning (no decay)"] == pytest.approx(0.4969, abs=1e-4)


@pytest.mark.parametrize("label", ["Cosine decay", "Optimizer tuning (no decay)"])
def test_approach2_parabolas_on_porian_isoflop_curves(label):
    """Parabolas through the raw IsoFLOP points land near the authors' interpolated minima."""
    published = next(
        r
        for r in read_csv("porian2024_fit_results.csv")
        if r["paper_label"] == label and r["fit"] == "basic" and r["source"] == "summary_df"
    )
    points = [
        {"N": float(r["n"]), "D": float(r["t"]), "C": float(r["flops"]), "loss": float(r["loss"]), "budget": r["flops"]}
        for r in read_csv("porian2024_isoflop_points.csv")
        if r["source"] == published["source"] and r["row"] == published["row"]
    ]
    fit = fit_points(points, "2")
    assert fit["a"] == pytest.approx(float(published["n_exponent"]), abs=0.03)


def test_approach1_envelope_of_training_curves():
    rng = np.random.default_rng(5)
    E, A, B, alpha, beta = (TRUE[k] for k in ("E", "A", "B", "alpha", "beta"))
    curves = [
        {"N": N, "D": D, "loss": (E + A / N**alpha + B / D**beta) * np.exp(rng.normal(0, 0.001))}
        for N in np.geomspace(1e7, 1e10, 16)
        for D in np.geomspace(1e8, 2e11, 60)
    ]
    fit = fit_points(curves, "1")
    assert fit["a"] == pytest.approx(beta / (alpha + beta), abs=0.05)
    assert fit["a"] + fit["b"] == pytest.approx(1.0, abs=1e-6)  # C = 6ND along the envelope
    assert np.all(np.diff(fit["envelope"]["loss"]) < 0)


def test_kaplan_recovers_the_joint_law():
    rng = np.random.default_rng(6)
    Nc, Dc, alpha_n, alpha_d = 8.8e13, 5.4e13, 0.076, 0.095
    points = [
        {"N": N, "D": D, "loss": ((Nc / N) ** (alpha_n / alpha_d) + Dc / D) ** alpha_d * np.exp(rng.normal(0, 0.002))}
        for N in np.geomspace(1e6, 1e9, 8)
        for D in np.geomspace(1e8, 1e11, 8)
    ]
    fit = fit_points(points, "kaplan")
    joint = fit["L_ND"]
    assert joint["alpha_N"] == pytest.approx(alpha_n, rel=0.05)
    assert joint["alpha_D"] == pytest.approx(alpha_d, rel=0.05)
    assert joint["Nc"] == pytest.approx(Nc, rel=0.5)
    # the best loss per N is N-limited here (D up to 1e11), so L(N) alone finds α_N too
    assert fit["L_N"]["alpha_N"] == pytest.approx(alpha_n, rel=0.05)


def test_bnsl_finds_the_break():
    rng = np.random.default_rng(7)
    x = np.geomspace(1e15, 1e21, 40)
    y = 0.5 + 10 * x**-0.05 * (1 + (x / 1e18) ** (1 / 0.3)) ** (-0.2 * 0.3) * np.exp(rng.normal(0, 0.002, x.size))
    fit = fit_bnsl(x, y)
    (brk,) = fit.breaks
    assert brk["d"] == pytest.approx(1e18, rel=0.5)
    assert brk["c"] == pytest.approx(0.2, abs=0.05)
    assert fit.c0 == pytest.approx(0.05, abs=0.02)
    assert fit(x) == pytest.approx(y, rel=0.01)


def muennighoff_points(single_epoch: bool) -> list[dict]:
    rows = read_csv("muennighoff2023_datablations_val_losses.csv")
    return [
        {"N": float(r["params_N"]), "D": float(r["tokens_D"]), "loss": float(r["val_loss"])}
        for r in rows
        if not single_epoch or float(r["tokens_D"]) <= float(r["unique_tokens_U"])
    ]


def test_muennighoff_runs_through_approach_3():
    """Runs that see each token once follow the Chinchilla form: α≈0.35, β≈0.37 as the paper reports.
    With repeated epochs D overstates the data (repeats are worth less), which the Chinchilla form
    does not model: fitted to all runs it stays finite and plausible but its α moves well away."""
    single = fit_points(muennighoff_points(single_epoch=True), "3")
    assert single["alpha"] == pytest.approx(0.35, abs=0.05)
    assert single["beta"] == pytest.approx(0.37, abs=0.05)
    everything = fit_points(muennighoff_points(single_epoch=False), "3")
    assert everything["n_points"] == 296
    assert all(np.isfinite(everything[k]) for k in ("E", "A", "B", "alpha", "beta"))
    assert 0.1 < everything["alpha"] < 1.0 and 0.1 < everything["beta"] < 1.0 and 1.0 < everything["E"] < 2.5
    assert abs(everything["alpha"] - single["alpha"]) > 0.05


@pytest.mark.parametrize(
    "points, approach, message",
    [
        ([{"N": 1e8, "D": 1e9}], "3", "missing loss"),
        ([{"N": -1.0, "D": 1e9, "loss": 3.0}], "3", "N must be a positive finite number"),
        ([{"N": 1e8, "D": 1e9, "loss": 3.0}], "4", "approach: must be one of"),
        ([{"N": 1e8, "D": 1e9, "loss": 3.0}] * 3, "3", "approach 3: needs at least 5"),
        ([{"N": 1e8, "D": 1e9, "loss": 3.0, "C": 6e17}], "2", "approach 2: needs optima at 2+"),
    ],
)
def test_bad_points_are_one_line_user_errors(points, approach, message):
    with pytest.raises(UserError, match=message) as info:
        fit_points(points, approach)
    assert "\n" not in str(info.value)


def test_structured_array_points_and_budget_labels():
    rows = isoflop_points([1e18, 4e18, 1.6e19], seed=8)
    table = np.array(
        [(p["N"], p["D"], p["loss"], f"{p['C']:g}") for p in rows],
        dtype=[("N", float), ("D", float), ("loss", float), ("budget", "U8")],
    )
    fit = fit_points(table, "2")
    assert [b["budget"] for b in fit["budgets"]] == ["1e+18", "4e+18", "1.6e+19"]
    assert [b["C"] for b in fit["budgets"]] == [1e18, 4e18, 1.6e19]  # numeric labels are the budgets' FLOPs


def test_bootstrap_resamples_runs_within_their_budget():
    strata = [np.array([0, 1, 2]), np.array([3, 4, 5, 6])]
    counts = resample_counts(strata, 7, 200, np.random.default_rng(0))
    assert np.all(counts[:, :3].sum(axis=1) == 3) and np.all(counts[:, 3:].sum(axis=1) == 4)
    assert counts.min() == 0 and counts.max() >= 3  # real resampling, not a permutation
