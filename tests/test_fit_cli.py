"""``ladder fit --points FILE.csv ...`` on real CSV files, in-process and as the installed command would run."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from launcher.analysis.fit.cli import main
from launcher.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def isoflop_csv(tmp_path: Path) -> Path:
    """Three isoFLOP budgets of five runs from L = 1.8 + 400/N^0.34 + 2000/D^0.36, C given exactly."""
    rows = []
    for budget in (1e18, 4e18, 1.6e19):
        for n in np.geomspace(2e7, 2e9, 5) * (budget / 1e18) ** 0.5:
            d = budget / (6.2 * n)  # the sweep's own FLOPs per parameter-token, not 6
            rows.append(
                {
                    "params": n,
                    "tokens": d,
                    "flops": 6.2 * n * d,
                    "budget": f"{budget:g}",
                    "val": 1.8 + 400 / n**0.34 + 2000 / d**0.36,
                }
            )
    return write_csv(tmp_path / "points.csv", rows)


def test_approach_2_prints_exponents_and_per_budget_optima(isoflop_csv, capsys):
    argv = [
        "--points",
        str(isoflop_csv),
        "--approach",
        "2",
        "--n-col",
        "params",
        "--d-col",
        "tokens",
        "--c-col",
        "flops",
        "--loss-col",
        "val",
        "--budget-col",
        "budget",
        "--json",
    ]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["a"] == pytest.approx(0.36 / (0.34 + 0.36), abs=0.03)
    assert [b["budget"] for b in out["budgets"]] == ["1e+18", "4e+18", "1.6e+19"]
    assert [b["C"] for b in out["budgets"]] == [1e18, 4e18, 1.6e19]


def test_readable_table_without_json(isoflop_csv, capsys):
    argv = [
        "--points",
        str(isoflop_csv),
        "--approach",
        "2",
        "--n-col",
        "params",
        "--d-col",
        "tokens",
        "--loss-col",
        "val",
    ]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0].split() == ["approach", "2"]
    assert "N_opt" in text and "loss_opt" in text


def test_c_defaults_to_6nd(isoflop_csv, capsys):
    base = [
        "--points",
        str(isoflop_csv),
        "--approach",
        "2",
        "--n-col",
        "params",
        "--d-col",
        "tokens",
        "--loss-col",
        "val",
        "--json",
    ]
    main(base)
    without = json.loads(capsys.readouterr().out)
    main(base + ["--c-col", "flops"])
    given = json.loads(capsys.readouterr().out)
    assert without["budgets"][0]["C"] == pytest.approx(given["budgets"][0]["C"] * 6 / 6.2, rel=1e-6)


def test_approach_3_json_with_huber_mean_and_weights(tmp_path, capsys):
    rng = np.random.default_rng(0)
    N, D = np.exp(rng.uniform(16, 23, 50)), np.exp(rng.uniform(18, 25, 50))
    L = (1.8 + 480 / N**0.35 + 2000 / D**0.37) * np.exp(rng.normal(0, 0.01, 50))
    w = rng.uniform(0.5, 2.0, 50)
    path = write_csv(tmp_path / "m.csv", [{"N": a, "D": b, "L": c, "w": d} for a, b, c, d in zip(N, D, L, w)])
    argv = [
        "--points",
        str(path),
        "--approach",
        "3",
        "--n-col",
        "N",
        "--d-col",
        "D",
        "--loss-col",
        "L",
        "--weight-col",
        "w",
        "--json",
    ]
    main(argv + ["--huber-reduce", "mean"])
    mean = json.loads(capsys.readouterr().out)
    main(argv)
    total = json.loads(capsys.readouterr().out)
    assert {"E", "A", "B", "alpha", "beta", "objective"} <= set(total)
    assert total["n_points"] == 50 and total["huber_reduce"] == "sum" and mean["huber_reduce"] == "mean"
    assert mean["alpha"] == pytest.approx(total["alpha"], rel=1e-5)
    assert total["objective"] == pytest.approx(w.sum() * mean["objective"], rel=1e-8)  # the weights were used


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"--n-col": "parameters"},
            "--n-col: no column 'parameters' in .*; available: params, tokens, flops, budget, val",
        ),
        ({"--points": "/nonexistent/points.csv"}, "--points: no such file"),
        ({"--approach": "4"}, "argument --approach: invalid choice"),
    ],
)
def test_bad_input_is_a_one_line_user_error(isoflop_csv, change, message):
    args = {
        "--points": str(isoflop_csv),
        "--approach": "2",
        "--n-col": "params",
        "--d-col": "tokens",
        "--loss-col": "val",
        **change,
    }
    with pytest.raises(UserError, match=message) as info:
        main([x for kv in args.items() for x in kv])
    assert "\n" not in str(info.value)


def test_too_few_points_and_non_numbers(tmp_path):
    few = write_csv(tmp_path / "few.csv", [{"N": 1e8, "D": 1e9, "L": 3.0}, {"N": 2e8, "D": 1e9, "L": 2.9}])
    with pytest.raises(UserError, match="approach 3: needs at least 5"):
        main(["--points", str(few), "--approach", "3", "--n-col", "N", "--d-col", "D", "--loss-col", "L"])
    bad = write_csv(tmp_path / "bad.csv", [{"N": "big", "D": 1e9, "L": 3.0}])
    with pytest.raises(UserError, match="bad.csv line 2: column 'N' is not a number: 'big'"):
        main(["--points", str(bad), "--approach", "3", "--n-col", "N", "--d-col", "D", "--loss-col", "L"])


def test_ladder_command_prints_the_error_without_traceback(isoflop_csv):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "launcher.cli",
            "fit",
            "--points",
            str(isoflop_csv),
            "--approach",
            "2",
            "--n-col",
            "nparams",
            "--d-col",
            "tokens",
            "--loss-col",
            "val",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "ladder fit: error: --n-col: no column 'nparams' in "
        + str(isoflop_csv)
        + "; available: params, tokens, flops, budget, val"
    ]


def test_approach_3_on_a_large_input_reports_progress_and_finds_the_law(tmp_path, capsys):
    """Past vpnls.LARGE points the start search runs on a subsample and each stage prints a line; the fit
    on every point still recovers the law the points were drawn from."""
    from launcher.analysis.fit.vpnls import LARGE, START_POINTS

    rng = np.random.default_rng(1)
    n = LARGE + 1000
    N = np.exp(rng.uniform(np.log(1e7), np.log(1e10), n))
    D = np.exp(rng.uniform(np.log(1e8), np.log(1e11), n))
    loss = (1.82 + 482.0 / N**0.35 + 2085.0 / D**0.37) * np.exp(rng.normal(0.0, 0.003, n))
    path = tmp_path / "large.csv"
    path.write_text("N,D,loss\n" + "".join(f"{a:.17g},{b:.17g},{c:.17g}\n" for a, b, c in zip(N, D, loss)))
    argv = ["--points", str(path), "--approach", "3", "--n-col", "N", "--d-col", "D", "--loss-col", "loss", "--json"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert lines[0] == f"approach 3 (vpnls): {n:,} points: searching for starts on {START_POINTS:,} of them"
    assert lines[1].startswith("approach 3 (vpnls): starts found in ") and f"on all {n:,} points" in lines[1]
    assert lines[2].startswith("approach 3 (vpnls): done in ") and len(lines) == 3
    fit = json.loads(captured.out)
    assert fit["n_points"] == n and fit["start_points"] == START_POINTS
    assert fit["alpha"] == pytest.approx(0.35, abs=0.01) and fit["beta"] == pytest.approx(0.37, abs=0.01)
    assert fit["E"] == pytest.approx(1.82, rel=0.02)
