"""``ladder fit --points TRAIN --predict TARGETS``: the interface others rely on, on a TRAIN/TARGETS split of
published runs, and one-line errors for bad input."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from launcher.analysis.fit.cli import main
from launcher.analysis.fit.registry import LAWS
from launcher.analysis.fitting import fit_main
from launcher.errors import UserError

DATA = Path(__file__).parent / "data" / "scaling"
MUENNIGHOFF = DATA / "muennighoff2023_datablations_val_losses.csv"
COLUMNS = ["--n-col", "params_N", "--d-col", "tokens_D", "--loss-col", "val_loss"]


def read_rows(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def write_csv(path: Path, rows: list[dict], fieldnames=None) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fieldnames or list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def split(tmp_path: Path) -> tuple[Path, Path, list[dict]]:
    """Muennighoff et al.'s single-epoch runs: TRAIN up to 1e20 FLOPs (22 runs), TARGETS beyond (19 runs, to 9e21)."""
    rows = [r for r in read_rows(MUENNIGHOFF) if float(r["tokens_D"]) <= float(r["unique_tokens_U"])]
    flops = [6 * float(r["params_N"]) * float(r["tokens_D"]) for r in rows]
    train = [r for r, c in zip(rows, flops) if c <= 1e20]
    targets = [r for r, c in zip(rows, flops) if c > 1e20]
    return write_csv(tmp_path / "train.csv", train), write_csv(tmp_path / "targets.csv", targets), targets


def run_json(argv: list[str], capsys) -> dict:
    assert main(argv + ["--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_predict_json_on_a_split_of_published_runs(split, capsys):
    train, targets, rows = split
    out = run_json(
        [
            "--points",
            str(train),
            "--approach",
            "3",
            *COLUMNS,
            "--predict",
            str(targets),
            "--n-boot",
            "100",
            "--seed",
            "1",
        ],
        capsys,
    )
    predictions = out["predictions"]
    assert [p["run_name"] for p in predictions] == [r["run_name"] for r in rows]  # one per row, in order
    for p, row in zip(predictions, rows):
        assert {"loss", "lo", "hi", "observed", "rel_error", "inside"} <= set(p)
        assert set(row) <= set(p)  # the row's own columns, carried through
        assert p["params_N"] == float(row["params_N"]) and p["lo"] <= p["loss"] <= p["hi"]
        assert p["observed"] == float(row["val_loss"]) == p["val_loss"]
    errors = np.abs([p["rel_error"] for p in predictions])
    # 3x-90x past the training runs' FLOPs; 8b712b12b and 3b926b26b reached far worse losses than
    # the runs around them (an under-trained 8.7B model, a 3.9B model off the trend) and are missed
    assert np.median(errors) < 0.03
    assert sum(p["inside"] for p in predictions) >= 15
    assert out["bootstrap"] == {"n_boot": 100, "n_ok": 100, "level": 0.95, "seed": 1, "resampled": "rows"}


def test_predict_is_seeded_and_prints_a_table_without_json(split, capsys):
    train, targets, _ = split
    argv = ["--points", str(train), "--approach", "overtrain", *COLUMNS, "--predict", str(targets), "--n-boot", "30"]
    first, second = run_json(argv, capsys), run_json(argv, capsys)
    assert first["predictions"] == second["predictions"]
    other = run_json(argv + ["--seed", "7"], capsys)
    assert [p["lo"] for p in other["predictions"]] != [p["lo"] for p in first["predictions"]]
    assert main(argv) == 0
    text = capsys.readouterr().out
    header = text.split("predictions:\n")[1].splitlines()[0].split()
    assert header[:6] == list(read_rows(targets)[0]) and header[6:] == [
        "loss",
        "lo",
        "hi",
        "observed",
        "rel_error",
        "inside",
    ]


def test_a_metric_column_is_fitted_and_predicted_as_a_metric(split, capsys):
    train, targets, _ = split
    out = run_json(
        [
            "--points",
            str(train),
            "--approach",
            "3",
            "--n-col",
            "params_N",
            "--d-col",
            "tokens_D",
            "--metric-col",
            "val_loss",
            "--method",
            "vpnls",
            "--predict",
            str(targets),
            "--n-boot",
            "0",
        ],
        capsys,
    )
    assert out["metric_col"] == "val_loss" and out["method"] == "vpnls"
    p = out["predictions"][0]
    assert "metric" in p and "loss" not in p and p["lo"] is None and p["observed"] == p["val_loss"]


def test_two_stage_and_datacon_on_the_command_line(tmp_path, capsys):
    rng = np.random.default_rng(0)
    N, D = np.exp(rng.uniform(16, 22, 40)), np.exp(rng.uniform(18, 25, 40))
    L = 1.82 + 482 / N**0.35 + 2085 / D**0.37
    acc = 0.25 + 0.6 / (1 + np.exp(6 * (L - 2.6)))
    train = write_csv(tmp_path / "t.csv", [{"N": a, "D": b, "L": c, "acc": d} for a, b, c, d in zip(N, D, L, acc)])
    targets = write_csv(tmp_path / "x.csv", [{"name": "big", "N": 3e10, "D": 6e11}])
    out = run_json(
        [
            "--points",
            str(train),
            "--approach",
            "two_stage",
            "--n-col",
            "N",
            "--d-col",
            "D",
            "--loss-col",
            "L",
            "--metric-col",
            "acc",
            "--link",
            "sigmoid",
            "--method",
            "vpnls",
            "--predict",
            str(targets),
            "--n-boot",
            "10",
        ],
        capsys,
    )
    (p,) = out["predictions"]
    assert p["name"] == "big" and {"metric", "lo", "hi", "loss"} <= set(p) and 0.25 < p["metric"] < 0.85
    assert out["metric_law"]["bounds"] == [0.0, 1.0] and out["loss_approach"] == "3"
    runs = write_csv(tmp_path / "m.csv", read_rows(MUENNIGHOFF))
    base = ",".join(
        f"{k}={v!r}"
        for k, v in dict(
            E=math.exp(0.6254804), A=math.exp(6.255414), B=math.exp(7.3049974), alpha=0.3526596, beta=0.3526596
        ).items()
    )
    out = run_json(
        ["--points", str(runs), "--approach", "datacon", *COLUMNS, "--unique-col", "unique_tokens_U", "--base", base],
        capsys,
    )
    assert out["base"] == "given" and {"R_D_star", "R_N_star", "optima"} <= set(out)


@pytest.mark.parametrize("approach", ["1", "2"])
def test_approaches_1_and_2_refuse_to_predict(split, approach):
    train, targets, _ = split
    with pytest.raises(
        UserError,
        match=rf"^--predict: approach {approach} predicts compute-optimal N_opt and D_opt, "
        r"not a value at given \(N, D\); approaches that predict: 3, kaplan, bnsl, "
        r"overtrain, datacon, two_stage$",
    ):
        main(["--points", str(train), "--approach", approach, *COLUMNS, "--predict", str(targets)])


def bad_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.csv"
    path.write_text("N,D,L\n1e8,1e9,3.0\n2e8,2e9,2.9\n" + text)
    return path


@pytest.mark.parametrize(
    "text, message",
    [
        ("3e8,3e9\n", r"bad.csv line 4: 2 fields, the header has 3$"),
        ("3e8,3e9,2.8,7\n", r"bad.csv line 4: 4 fields, the header has 3$"),
        ("3e8,lots,2.8\n", r"bad.csv line 4: column 'D' is not a number: 'lots'$"),
        ("3e8,3e9,nan\n", r"bad.csv line 4: column 'L' is not finite: 'nan'$"),
        ("3e8,inf,2.8\n", r"bad.csv line 4: column 'D' is not finite: 'inf'$"),
        ("-3e8,3e9,2.8\n", r"bad.csv line 4: column 'N' must be positive: '-3e8'$"),
        ("3e8,3e9,2.8\n", r"^overtrain: needs at least 5 weighted points with 2\+ distinct N and D, got 3 points$"),
    ],
)
def test_bad_rows_and_too_few_points_are_one_line_errors(tmp_path, text, message):
    path = bad_file(tmp_path, text)
    with pytest.raises(UserError, match=message) as info:
        main(["--points", str(path), "--approach", "overtrain", "--n-col", "N", "--d-col", "D", "--loss-col", "L"])
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--approach", "datacon"], r"^--approach datacon: needs --unique-col"),
        (["--approach", "two_stage"], r"^--approach two_stage: needs --loss-col and --metric-col$"),
        (["--approach", "3", "--metric-col", "L"], r"^--metric-col: fits that column instead of --loss-col"),
        (["--approach", "datacon", "--unique-col", "U"], r"^--unique-col: no column 'U' in .*; available: N, D, L$"),
        (["--approach", "datacon", "--unique-col", "D", "--base", "E=1.8,A=lots"], r"^--base: A is not a number"),
        (["--approach", "two_stage", "--metric-col", "L", "--metric-range", "0-1"], r"^--metric-range: expected"),
        (["--approach", "3", "--predict", "/nonexistent.csv"], r"^--predict: no such file: /nonexistent.csv$"),
    ],
)
def test_bad_flags_are_one_line_errors(tmp_path, extra, message):
    path = bad_file(tmp_path, "")
    with pytest.raises(UserError, match=message) as info:
        main(["--points", str(path), "--n-col", "N", "--d-col", "D", "--loss-col", "L", *extra])
    assert "\n" not in str(info.value)


def test_targets_need_the_input_columns(split, tmp_path):
    train, _, rows = split
    targets = write_csv(tmp_path / "targets.csv", [{"params_N": r["params_N"]} for r in rows[:2]])
    with pytest.raises(UserError, match=r"^--d-col: no column 'tokens_D' in .*targets.csv; available: params_N$"):
        main(["--points", str(train), "--approach", "3", *COLUMNS, "--predict", str(targets)])


@pytest.mark.parametrize("argv", [["--points", "x.csv", "--help"], ["--help"]])
def test_help_names_every_approach_and_flag(argv, capsys):
    """Both ``ladder fit --points FILE --help`` and the sweep fitter's ``ladder fit --help`` (its epilog)."""
    with pytest.raises(SystemExit):
        fit_main(argv)
    text = capsys.readouterr().out
    for name, law in LAWS.items():
        assert f"  {name:<9}  {law.summary}" in text, name
    for word in (
        "1",
        "2",
        "3",
        "kaplan",
        "bnsl",
        "overtrain",
        "datacon",
        "two_stage",
        "--predict",
        "--metric-col",
        "--unique-col",
        "--link",
        "--loss-approach",
        "--method",
        "--base",
        "--metric-range",
        "--n-boot",
        "--seed",
        "--points",
        "--n-col",
        "--d-col",
        "--c-col",
        "--loss-col",
        "--weight-col",
        "--budget-col",
        "--huber-reduce",
        "--json",
    ):
        assert word in text, word
