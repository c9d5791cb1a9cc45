"""The law registry and the laws beyond Chinchilla's: over-training, data-constrained, two-stage, and
approach 3 by variable projection. Known laws are synthetic with stated parameters; published
numbers come from the authors' data and notebook (tests/data/scaling/README.md)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

import launcher.analysis.fit as fit_module
from launcher.analysis.fit import APPROACHES, LAWS, fit_points, predict_points
from launcher.analysis.fit.chinchilla import fit_chinchilla
from launcher.analysis.fit.laws import LawFamily
from launcher.analysis.fit.points import as_points
from launcher.analysis.fit.vpnls import fit_vpnls
from launcher.errors import UserError
from test_fit_sweep import sweep

DATA = Path(__file__).parent / "data" / "scaling"
# Besiroglu et al. (2024)'s replication of Chinchilla's approach 3
CHINCHILLA = dict(E=1.82, A=482.0, B=2085.0, alpha=0.35, beta=0.37)
# Muennighoff et al. 2023's base law (their notebook: a, b, e, alpha, beta = 6.255414, 7.3049974, 0.6254804,
# 0.3526596, 0.3526596, fitted with alpha = beta to Chinchilla's C4 IsoFLOP points) and their fit of it
MUENNIGHOFF_BASE = dict(
    E=math.exp(0.6254804), A=math.exp(6.255414), B=math.exp(7.3049974), alpha=0.3526596, beta=0.3526596
)
PUBLISHED_R_D, PUBLISHED_R_N, PUBLISHED_OBJECTIVE = 15.387756, 5.309743, 0.015825936570763588


def read_csv(name: str) -> list[dict]:
    with (DATA / name).open(newline="") as fh:
        return list(csv.DictReader(fh))


def chinchilla_loss(N, D):
    c = CHINCHILLA
    return c["E"] + c["A"] / np.asarray(N) ** c["alpha"] + c["B"] / np.asarray(D) ** c["beta"]


# ---------------------------------------------------------------------------------------------- registry


class Constant(LawFamily):
    name = "constant"
    summary = "the mean loss, everywhere"
    parameters = ("L",)

    def fit(self, points, options, warm=None):
        return float(np.average(points.loss, weights=points.weight))

    def result(self, fit):
        return {"L": fit}

    def predict(self, fit, targets):
        return np.full(len(targets), fit)


def test_every_approach_is_a_registered_family_and_fit_points_dispatches_by_name(monkeypatch):
    assert APPROACHES == ("1", "2", "3", "kaplan", "bnsl", "overtrain", "datacon", "two_stage")
    for name, law in LAWS.items():
        assert law.name == name and law.summary and law.parameters
    assert [n for n, law in LAWS.items() if not law.predicts] == ["1", "2"]
    monkeypatch.setitem(LAWS, "constant", Constant())
    points = [{"N": 1e8, "D": 1e9, "loss": 3.0}, {"N": 2e8, "D": 2e9, "loss": 2.0}]
    assert fit_points(points, "constant") == {"approach": "constant", "n_points": 2, "L": 2.5}
    out = predict_points(points, [{"N": 1e9, "D": 1e10, "name": "big"}], "constant", n_boot=20)
    assert out["predictions"][0]["name"] == "big" and out["predictions"][0]["loss"] == 2.5
    assert fit_module.LAWS is LAWS


# ---------------------------------------------------------------------------------------------- overtrain

# Gadre et al.'s form L(C, M) = E + (a·M^η + b·M^-η)·C^-η, C = 6ND, M = D/N, with these parameters
GADRE = dict(E=1.9, a=680.0, b=2030.0, eta=0.17)


def overtrained_points(seed: int, noise: float = 0.002) -> list[dict]:
    """Six sizes, each from 5 to 320 tokens per parameter (16x over-trained at the top)."""
    rng = np.random.default_rng(seed)
    N = np.repeat(np.geomspace(2e7, 1e9, 6), 6)
    M = np.tile([5.0, 20.0, 40.0, 80.0, 160.0, 320.0], 6)
    D, g = M * N, GADRE
    C = 6 * N * D
    loss = (g["E"] + (g["a"] * M ** g["eta"] + g["b"] * M ** -g["eta"]) * C ** -g["eta"]) * np.exp(
        rng.normal(0, noise, N.size)
    )
    return [{"N": n, "D": d, "loss": y} for n, d, y in zip(N, D, loss)]


@pytest.mark.parametrize("seed", [0, 1])
def test_overtrain_recovers_gadre_parameters(seed):
    fit = fit_points(overtrained_points(seed), "overtrain")
    assert fit["E"] == pytest.approx(GADRE["E"], rel=0.02)
    assert fit["eta"] == pytest.approx(GADRE["eta"], abs=0.005)
    assert fit["a"] == pytest.approx(GADRE["a"], rel=0.15)
    assert fit["b"] == pytest.approx(GADRE["b"], rel=0.15)
    # the same law in Chinchilla's parameters: one exponent 2η for N and D, A = a·6^-η
    assert fit["alpha"] == fit["beta"] == pytest.approx(2 * fit["eta"])
    assert fit["A"] == pytest.approx(fit["a"] * 6 ** -fit["eta"])
    assert fit["n_starts"] == 900


def test_overtrain_predicts_an_over_trained_run_far_beyond_the_ladder():
    """1.4e9 parameters at M = 640 (32x over-trained), ~300x the largest training run's FLOPs."""
    g = GADRE
    N, M = 1.4e9, 640.0
    C = 6 * N * (M * N)
    truth = g["E"] + (g["a"] * M ** g["eta"] + g["b"] * M ** -g["eta"]) * C ** -g["eta"]
    out = predict_points(overtrained_points(0), [{"N": N, "D": M * N}], "overtrain", n_boot=50)
    (p,) = out["predictions"]
    assert p["loss"] == pytest.approx(truth, rel=0.01)
    assert p["lo"] <= truth <= p["hi"]
    assert out["bootstrap"]["n_ok"] == 50


# ---------------------------------------------------------------------------------------------- datacon


def muennighoff_points(names: set[str] | None = None) -> list[dict]:
    return [
        {
            "N": float(r["params_N"]),
            "D": float(r["tokens_D"]),
            "U": float(r["unique_tokens_U"]),
            "loss": float(r["val_loss"]),
            "name": r["run_name"],
        }
        for r in read_csv("muennighoff2023_datablations_val_losses.csv")
        if names is None or r["run_name"] in names
    ]


def paper_runs() -> set[str]:
    return {r["run_name"] for r in read_csv("muennighoff2023_paper_fit_runs.csv")}


def test_datacon_reproduces_muennighoff_decay_constants():
    """Their runs, their base law, their optimiser and starts: the headline is the published
    (R_D*, R_N*) at their objective. The objective's lower minimum near (47, 2.3), 0.12% lower and
    out of float32's reach (see datacon's docstring), is reported among the optima, not as the result."""
    points = muennighoff_points(paper_runs())
    assert len(points) == 182
    fit = fit_points(points, "datacon", base=MUENNIGHOFF_BASE)
    assert fit["base"] == "given" and fit["n_starts"] == 9 and fit["n_converged"] == 9
    assert fit["R_D_star"] == pytest.approx(PUBLISHED_R_D, rel=0.1)
    assert fit["R_N_star"] == pytest.approx(PUBLISHED_R_N, rel=0.1)
    assert fit["objective"] == pytest.approx(PUBLISHED_OBJECTIVE, rel=1e-5)
    lower, *_ = fit["optima"]
    assert lower["objective"] < fit["objective"] * 0.9995
    assert lower["R_D_star"] > 2 * PUBLISHED_R_D and lower["R_N_star"] < 0.6 * PUBLISHED_R_N


def test_datacon_fits_its_base_to_single_epoch_runs_and_predicts_repeated_data():
    points = muennighoff_points()
    fit = fit_points(points, "datacon")
    single = sum(p["D"] <= p["U"] for p in points)
    assert fit["base"] == f"fitted with alpha = beta to {single} runs with D <= U" and single == 41
    assert fit["alpha"] == fit["beta"] and all(fit[k] > 0 for k in ("R_D_star", "R_N_star", "E", "A", "B"))
    # repeating the same 100M unique tokens: more epochs help less and less (D' saturates)
    targets = [{"N": 1.465e8, "D": d, "U": 1e8} for d in (1e8, 4e8, 1.6e9, 6.4e9)]
    loss = [p["loss"] for p in predict_points(points, targets, "datacon", n_boot=0)["predictions"]]
    gains = -np.diff(loss)
    assert np.all(gains > 0) and np.all(np.diff(gains) < 0)


@pytest.mark.parametrize(
    "points, message",
    [
        ([{"N": 1e8, "D": 1e9, "loss": 3.0}] * 6, r"datacon: needs each point's unique tokens \(U; --unique-col\)"),
        (
            [{"N": n, "D": 1e9, "U": 2e9, "loss": 3.0 - n / 1e9} for n in (1e7, 2e7, 4e7, 8e7, 1.6e8, 3.2e8)],
            r"datacon: R_D\* is undetermined: no run has D > U",
        ),
    ],
)
def test_datacon_bad_input_is_a_one_line_error(points, message):
    with pytest.raises(UserError, match=message) as info:
        fit_points(points, "datacon", base=MUENNIGHOFF_BASE)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------- two_stage


def sigmoid(L, a, b, k, L0):
    return a / (1 + np.exp(-k * (L - L0))) + b


def two_stage_points(metric, seed: int = 3, n: int = 60, noise: float = 0.004) -> list[dict]:
    rng = np.random.default_rng(seed)
    N = np.exp(rng.uniform(np.log(1e7), np.log(3e9), n))
    D = np.exp(rng.uniform(np.log(1e8), np.log(1e11), n))
    loss = chinchilla_loss(N, D) * np.exp(rng.normal(0, 0.003, n))
    values = metric(loss) + rng.normal(0, noise, n)
    return [{"N": a, "D": b, "loss": c, "metric": m} for a, b, c, m in zip(N, D, loss, values)]


TARGETS = [{"N": 3e10, "D": 6e11, "name": "30B"}, {"N": 7e10, "D": 1.4e12, "name": "70B"}]
ACCURACY = dict(a=0.6, b=0.25, k=-6.0, L0=2.6)  # chance 0.25, rising as the loss falls


def test_two_stage_sigmoid_recovers_the_link_and_predicts_with_both_stages_uncertainty():
    points = two_stage_points(lambda L: sigmoid(L, **ACCURACY))
    out = predict_points(points, TARGETS, "two_stage", n_boot=60, value_key="metric", method="vpnls")
    fit, law = out, out["metric_law"]
    assert fit["loss_approach"] == "3" and fit["loss_law"]["alpha"] == pytest.approx(CHINCHILLA["alpha"], abs=0.05)
    assert law["bounds"] == [0.0, 1.0]  # every value in [0, 1]: fitted as bounded
    for key, tol in (("a", 0.03), ("b", 0.02), ("k", 0.8), ("L0", 0.03)):
        assert law[key] == pytest.approx(ACCURACY[key], abs=tol), key
    truth = sigmoid(chinchilla_loss([t["N"] for t in TARGETS], [t["D"] for t in TARGETS]), **ACCURACY)
    for p, true in zip(out["predictions"], truth):
        assert p["metric"] == pytest.approx(true, abs=0.01)
        assert p["lo"] <= true <= p["hi"]
        assert p["loss"] == pytest.approx(chinchilla_loss(p["N"], p["D"]), rel=0.02)
    # the interval carries step 1's uncertainty: at least what step 1's loss interval maps to through the link
    loss_only = predict_points(points, TARGETS, "3", n_boot=60, method="vpnls")["predictions"]
    fitted = {k: law[k] for k in ACCURACY}
    for p, q in zip(out["predictions"], loss_only):
        mapped = abs(sigmoid(q["lo"], **fitted) - sigmoid(q["hi"], **fitted))
        assert p["hi"] - p["lo"] >= 0.8 * mapped > 0


def test_two_stage_fits_a_metric_that_gets_worse_with_scale_without_clipping():
    inverse = dict(a=0.5, b=0.2, k=4.0, L0=2.8)  # falls as the loss falls (inverse scaling)
    points = two_stage_points(lambda L: sigmoid(L, **inverse))
    out = predict_points(points, TARGETS, "two_stage", n_boot=0, value_key="metric", method="vpnls")
    assert out["metric_law"]["k"] > 0
    lowest = min(p["metric"] for p in points)
    assert all(p["metric"] < lowest for p in out["predictions"])  # beyond the data, in the trend's direction


def test_two_stage_keeps_a_bounded_metric_within_its_bounds():
    saturating = dict(a=0.8, b=0.2, k=-9.0, L0=3.0)  # approaches 1.0 at low loss
    points = two_stage_points(lambda L: sigmoid(L, **saturating), noise=0.01)
    for p in points:
        p["metric"] = min(p["metric"], 1.0)
    out = predict_points(points, [{"N": 1e12, "D": 1e14}], "two_stage", n_boot=0, value_key="metric", method="vpnls")
    law = out["metric_law"]
    assert law["b"] >= 0 and law["a"] + law["b"] <= 1.0 + 1e-12
    assert out["predictions"][0]["metric"] <= 1.0


def test_two_stage_exponential_link_for_top1_error():
    """Gadre et al.'s err = ε − k·exp(−γ·L) through loss from a Kaplan-law first step."""
    eps, k, gamma = 0.75, 0.5, 0.8
    points = two_stage_points(lambda L: eps - k * np.exp(-gamma * L), noise=0.002)
    fit = fit_points(points, "two_stage", link="exp", loss_approach="kaplan")
    assert fit["loss_approach"] == "kaplan" and fit["metric_law"]["link"] == "exp"
    out = predict_points(points, TARGETS, "two_stage", link="exp", n_boot=0, value_key="metric")
    L = chinchilla_loss([t["N"] for t in TARGETS], [t["D"] for t in TARGETS])
    assert [p["metric"] for p in out["predictions"]] == pytest.approx(eps - k * np.exp(-gamma * L), abs=0.02)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(link="cubic"), "--link: must be one of sigmoid, exp"),
        (dict(loss_approach="2"), "--loss-approach: must be one of 3, kaplan, bnsl, overtrain, datacon"),
        (dict(metric_range=(0.5, 0.9)), r"--metric-range: observed metric values lie outside \[0.5, 0.9\]"),
    ],
)
def test_two_stage_bad_options_are_one_line_errors(options, message):
    points = two_stage_points(lambda L: sigmoid(L, **ACCURACY), n=20)
    with pytest.raises(UserError, match=message) as info:
        fit_points(points, "two_stage", **options)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------- vpnls


def porian(source: str, row: str) -> list[dict]:
    return [
        {"N": float(r["n"]), "D": float(r["t"]), "C": float(r["flops"]), "loss": float(r["loss"])}
        for r in read_csv("porian2024_isoflop_points.csv")
        if r["source"] == source and r["row"] == row
    ]


def synthetic(n: int, noise: float, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    N = np.exp(rng.uniform(np.log(1e7), np.log(1e10), n))
    D = np.exp(rng.uniform(np.log(1e8), np.log(1e11), n))
    return [
        {"N": a, "D": b, "loss": c} for a, b, c in zip(N, D, chinchilla_loss(N, D) * np.exp(rng.normal(0, noise, n)))
    ]


def muennighoff_single_epoch() -> list[dict]:
    return [p for p in muennighoff_points() if p["D"] <= p["U"]]


DATASETS = {
    "porian-kaplan": lambda: porian("summary_df", "0"),
    "porian-tuned": lambda: porian("summary_df", "4"),
    "porian-owt2": lambda: porian("summary_df_owt2", "0"),
    "muennighoff-single-epoch": muennighoff_single_epoch,
    "synthetic-80": lambda: synthetic(80, 0.005, 1),
    "synthetic-250": lambda: synthetic(250, 0.01, 0),
    "sweep-12": lambda: sweep()[0],  # tests/test_fit_sweep.py's runs: fit_sweep fits approach 3 by the default
}


@pytest.mark.parametrize("name", DATASETS)
def test_vpnls_reaches_the_grid_objective(name):
    """Same objective: vpnls ends no higher than the 4500-start grid (1e-12 relative: rounding)."""
    points = as_points(DATASETS[name]())
    grid, vp = fit_chinchilla(points), fit_vpnls(points)
    assert vp.objective <= grid.objective * (1 + 1e-12)
    assert vp.alpha == pytest.approx(grid.alpha, abs=1e-4) and vp.beta == pytest.approx(grid.beta, abs=1e-4)


def test_vpnls_sum_and_mean_reach_the_same_optimum():
    points = synthetic(60, 0.01, 2)
    total = fit_points(points, "3", method="vpnls", huber_reduce="sum")
    mean = fit_points(points, "3", method="vpnls", huber_reduce="mean")
    assert total["objective"] == pytest.approx(len(points) * mean["objective"], rel=1e-8)
    for key in ("E", "A", "B", "alpha", "beta"):
        assert mean[key] == pytest.approx(total[key], rel=1e-5), key


def test_vpnls_is_the_default_and_grid_stays_selectable():
    points = synthetic(40, 0.01, 4)
    default, grid = fit_points(points, "3"), fit_points(points, "3", method="grid")
    assert default["method"] == "vpnls" and default["n_starts"] == 28 * 28
    assert grid["method"] == "grid" and grid["n_starts"] == 4500
    assert default["objective"] <= grid["objective"] * (1 + 1e-12)


def test_unknown_method_is_a_user_error():
    with pytest.raises(UserError, match="--method: must be one of grid, vpnls"):
        fit_points(synthetic(10, 0.01, 0), "3", method="newton")
