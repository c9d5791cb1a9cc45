"""Collect: synthetic sweep directories with the files runs really leave behind, good and broken.

The helpers at the top build sweeps (job database, plan.json, run directories) for the report and W&B
tests too.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

from launcher import cli
from launcher.analysis import collect
from launcher.analysis.collect import (
    CSV_HEADER,
    CURVE_COLUMNS,
    _careful_columns,
    _fast_columns,
    collect_sweep,
    parse_metrics,
)
from launcher.run import metrics
from launcher.run.metrics import read_metrics
from launcher.sweep.jobdb import JobDB
from launcher.sweep.plan import RunSpec

# A Chinchilla-like law the synthetic runs follow: L(N, D) = E + A / N^alpha + B / D^beta.
LAW = dict(E=1.7, A=400.0, B=410.0, alpha=0.34, beta=0.28)


def law_loss(N, D, law=LAW):
    return law["E"] + law["A"] / np.asarray(N, float) ** law["alpha"] + law["B"] / np.asarray(D, float) ** law["beta"]


def spec(sweep: str, name: str, N: int, D: int, *, budget=None, steps=100, flops_per_token=None) -> RunSpec:
    fpt = flops_per_token or 6 * N
    return RunSpec(
        name=name,
        sweep=sweep,
        family="gpt_neox",
        model="gpt_neox/tiny",
        shape={},
        N=N,
        N_non_embedding=int(0.8 * N),
        D=D,
        C=fpt * D,
        flops_per_token=fpt,
        budget=budget,
        steps=steps,
        global_batch_tokens=max(1, D // steps),
        nodes=1,
        ranks_per_run=1,
        base_overrides=(),
        config_hash=hashlib.sha1(f"{sweep}/{name}".encode()).hexdigest()[:16],
    )


def curve_records(s: RunSpec, *, seed=0, val_every=20, noise=0.005, law=LAW) -> list[dict]:
    """The records ``ladder train`` would log for run ``s`` following ``law`` (plus a little noise)."""
    rng = np.random.default_rng(seed)
    records = []
    for step in range(1, s.steps + 1):
        tokens = step * s.D // s.steps
        record = {
            "step": step,
            "tokens": tokens,
            "flops": tokens * s.flops_per_token,
            "train_loss": float(law_loss(s.N, tokens, law) + rng.normal(0, noise)),
            "lr": 1e-3,
            "tokens_per_s": 1000.0 + step,
            "mfu": None,
            "time": 1.79e9 + step,
        }
        if step % val_every == 0 or step == s.steps:
            record["val_loss"] = float(law_loss(s.N, tokens, law) + 0.01)
        records.append(record)
    return records


def write_metrics(run_dir: Path, records: list[dict], *, compact=True) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "metrics.jsonl"
    sep = (",", ":") if compact else (", ", ": ")
    path.write_text("".join(json.dumps(r, separators=sep) + "\n" for r in records))
    return path


def make_sweep(
    root: Path, name: str, specs: list[RunSpec], states: dict[str, str] | None = None, budget_flops: float | None = None
) -> Path:
    """A sweep directory with a real job database and plan.json; runs end in ``states`` (default completed)."""
    sweep_dir = root / name
    sweep_dir.mkdir(parents=True)
    states = states or {}
    with JobDB(sweep_dir / "jobdb.sqlite") as db:
        db.add_sweep(name, "local", {"name": name})
        db.add_runs(name, specs, sweep_dir)
        for s in specs:
            state = states.get(s.name, "completed")
            if state == "planned":
                continue
            db.start(s.config_hash)
            if state != "running":
                db.finish(s.config_hash, state)
    plan = {
        "runs": [s.to_json() for s in specs],
        "budget_flops": budget_flops,
        "cluster": {"name": "local", "allocation_node_hours": 1.0, "devices_per_node": 1},
    }
    (sweep_dir / "plan.json").write_text(json.dumps(plan))
    return sweep_dir


def isoflop_specs(sweep: str, budgets=(1e16, 3e16, 1e17, 3e17), per_budget=5, steps=60) -> list[RunSpec]:
    """Runs around each budget's compute-optimal size under LAW (C = 6 N D)."""
    a = LAW["beta"] / (LAW["alpha"] + LAW["beta"])
    G = (LAW["alpha"] * LAW["A"] / (LAW["beta"] * LAW["B"])) ** (1 / (LAW["alpha"] + LAW["beta"]))
    specs = []
    for C in budgets:
        n_opt = G * (C / 6) ** a
        for N in np.geomspace(n_opt / 6, n_opt * 6, per_budget):
            N = int(N)
            D = int(C / (6 * N))
            specs.append(spec(sweep, f"c{C:.0e}-n{N}", N, D, budget=C, steps=steps))
    return specs


# ---------------------------------------------------------------------------------------------- tests


def read_curves(path) -> list[dict]:
    """curves.parquet as rows (an independent reader: pyarrow's, not the collector's)."""
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def test_clean_sweep_points_and_curves_file(tmp_path):
    specs = [spec("s", f"n{N}", N, 20 * N, steps=50) for N in (10_000, 30_000, 100_000)]
    sweep_dir = make_sweep(tmp_path, "s", specs)
    for i, s in enumerate(specs):
        write_metrics(sweep_dir / "runs" / s.name, curve_records(s, seed=i))
    collected = collect_sweep(sweep_dir)
    assert collected.skipped == [] and collected.warnings == []
    assert [p["name"] for p in collected.final_points] == [s.name for s in specs]
    for p, s in zip(collected.final_points, specs):
        assert (p["N"], p["N_non_embedding"], p["D"], p["C"]) == (s.N, s.N_non_embedding, s.D, s.C)
        assert p["loss_source"] == "val_loss"
        assert p["loss"] == pytest.approx(float(law_loss(s.N, s.D)) + 0.01)
    points = collected.curve_points
    assert len(points) == 150 and set(points["name"]) == {s.name for s in specs}
    last = points[points["name"] == specs[0].name][-1]
    assert (last["N"], last["D"], last["C"]) == (specs[0].N, specs[0].D, specs[0].C)
    assert collected.curves_path == sweep_dir / "curves.parquet"
    rows = read_curves(collected.curves_path)
    assert tuple(rows[0]) == CURVE_COLUMNS and len(rows) == 150
    first = curve_records(specs[0], seed=0)
    assert [r["train_loss"] for r in rows[:50]] == [r["train_loss"] for r in first]
    assert [(r["step"], r["D"], r["C"]) for r in rows[:50]] == [(r["step"], r["tokens"], r["flops"]) for r in first]
    assert [r["val_loss"] for r in rows[:50]].count(None) == 50 - 3
    assert rows[19]["val_loss"] == first[19]["val_loss"]
    assert {(r["run"], r["family"], r["N"], r["budget"], r["diverged"]) for r in rows[:50]} == {
        (specs[0].name, "gpt_neox", specs[0].N, None, False)
    }
    # the former CSV (the benchmark's baseline) holds the same points
    as_csv = collect_sweep(sweep_dir, curves="csv")
    with open(as_csv.curves_path, newline="") as fh:
        csv_rows = list(csv.DictReader(fh))
    assert ",".join(csv_rows[0].keys()) == CSV_HEADER and len(csv_rows) == 150
    assert [float(r["train_loss"]) for r in csv_rows] == [r["train_loss"] for r in rows]


def test_fast_path_agrees_with_json_per_line():
    s = spec("s", "a", 50_000, 10**6, steps=80)
    records = curve_records(s)
    records[7]["val_loss"] = None  # the runtime logs a non-finite loss as null
    as_floats = [dict(r, flops=r["flops"] * 1.0, tokens=r["tokens"] * 1.0) for r in records]  # "4096.0"
    for compact, shuffle, rows in [
        (True, False, records),
        (False, False, records),
        (True, True, records),
        (False, True, as_floats),
    ]:
        if shuffle:
            rows = [dict(reversed(list(r.items()))) for r in rows]
        sep = (",", ":") if compact else (", ", ": ")
        data = "".join(json.dumps(r, separators=sep) + "\n" for r in rows).encode()
        fast, careful = _fast_columns(data), _careful_columns(data, [])
        assert fast is not None
        np.testing.assert_array_equal(fast.numbers, careful.numbers)
        np.testing.assert_array_equal(fast.val, careful.val)
        np.testing.assert_array_equal(fast.val_logged, careful.val_logged)
        assert fast.rows == careful.rows
    assert fast.rows.startswith(b"1,12500.0,") and fast.val_logged.sum() == 5 and np.isnan(fast.val[7])


def joined(texts: list[bytes]) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Files one after another in one buffer, and where each lies in it."""
    at = np.r_[0, np.cumsum([len(t) for t in texts])].tolist()
    return np.frombuffer(b"".join(texts), np.uint8), list(zip(at[:-1], at[1:]))


def test_bulk_parse_agrees_with_json_per_line_and_leaves_to_it_what_it_cannot_vouch_for(tmp_path):
    """pyarrow parses many files in one call; a file with a null val_loss (logged but non-finite, which a
    parse cannot tell from not logged) or a bad line is read line by line, its neighbours kept and counted."""
    s = spec("s", "a", 50_000, 10**6, steps=80)
    records = curve_records(s)
    as_floats = [dict(r, flops=r["flops"] * 1.0, tokens=r["tokens"] * 1.0) for r in records]
    shuffled = [dict(reversed(list(r.items()))) for r in records]
    texts = [
        "".join(json.dumps(r, separators=sep) + "\n" for r in rows).encode()
        for rows, sep in [(records, (",", ":")), (records, (", ", ": ")), (shuffled, (",", ":")), (as_floats, None)]
    ]
    null = [dict(r) for r in records]
    null[7]["val_loss"] = None
    texts.append("".join(json.dumps(r) + "\n" for r in null).encode())
    schema = collect._bulk_schema()
    *vouched, refused = collect._bulk_columns(*joined(texts), schema)
    assert refused is None
    for text, bulk in zip(texts, vouched):
        careful = _careful_columns(text, [])
        np.testing.assert_array_equal(bulk.numbers, careful.numbers)
        np.testing.assert_array_equal(bulk.val, careful.val)
        np.testing.assert_array_equal(bulk.val_logged, careful.val_logged)

    lines = texts[0].decode().splitlines()
    lines[5] = "this is not json"
    bad = ("\n".join(lines) + "\n").encode()
    assert collect._bulk_columns(*joined([*texts[:4], bad]), schema) is None  # one bad line stops the joint parse
    paths = []
    for i, text in enumerate([*texts, bad, *texts[:3]]):
        paths.append(tmp_path / f"{i}.jsonl")
        paths[-1].write_bytes(text)
    parsed = collect._bulk_task([(p, None, math.nan, False) for p in paths], schema)
    for p, one in zip(paths, parsed):  # the same curves and reports as the file read on its own
        alone = parse_metrics(p)
        np.testing.assert_array_equal(one.curve.train_loss, alone.curve.train_loss)
        np.testing.assert_array_equal(one.curve.val_loss, alone.curve.val_loss)
        assert one.issues == alone.issues and one.nonfinite_step == alone.nonfinite_step and one.last == alone.last
    assert parsed[5].issues == ["1 bad line(s) dropped: line 6: not JSON"] and len(parsed[5].curve) == 79
    assert parsed[4].nonfinite_step == 8
    # values of another type than json.loads' reading takes: the joint parse refuses them, none slips through
    odd = ['"step": "3"', '"step": true', '"step": 2.0', '"tokens": "5"', '"train_loss": true', '"val_loss": "x"']
    for i, field in enumerate(odd):
        key = field.split(":")[0].strip('"')
        line = json.dumps({**{k: v for k, v in records[3].items() if k != key}}).replace("{", "{" + field + ", ", 1)
        text = texts[0] + (line + "\n").encode()
        assert collect._bulk_columns(*joined([text]), schema) is None, field
        path = tmp_path / f"odd{i}.jsonl"
        path.write_bytes(text)
        (one,) = collect._bulk_task([(path, None, math.nan, False)], schema)
        alone = parse_metrics(path)
        assert one.issues == alone.issues and len(one.curve) == len(alone.curve), field


def test_collect_and_the_runtime_reader_share_one_resume_rule(tmp_path):
    # one name and one rule, imported from launcher.run.metrics, not copies that could drift
    assert collect.METRICS_FILE is metrics.METRICS_FILE
    assert collect.latest_attempt is metrics.latest_attempt
    s = spec("s", "a", 50_000, 10**6, steps=30)
    records = curve_records(s)
    rng = np.random.default_rng(0)
    paths = []
    for trial in range(20):  # attempts that each resume from an earlier checkpoint, some past the last end
        log, step = [], 0
        for _ in range(rng.integers(1, 5)):
            step = int(rng.integers(0, step + 1))
            end = int(rng.integers(step + 1, s.steps + 1))
            log += [{"resumed_from": step, "time": 0.0}] if log else []  # what the runtime writes on a resume
            log += [dict(r, train_loss=r["train_loss"] + len(log)) for r in records[step:end]]
            step = end
        path = write_metrics(tmp_path / str(trial), log)
        expected = read_metrics(path)
        curve = parse_metrics(path).curve
        np.testing.assert_array_equal(curve.step, [r["step"] for r in expected])
        np.testing.assert_array_equal(curve.train_loss, [r["train_loss"] for r in expected])
        assert all(a < b for a, b in zip(curve.step, curve.step[1:]))
        paths.append(path)
    bulk = collect._bulk_task([(p, None, math.nan, False) for p in paths], collect._bulk_schema())
    for path, parsed in zip(paths, bulk):  # the many-files path keeps the same rule
        np.testing.assert_array_equal(parsed.curve.step, [r["step"] for r in read_metrics(path)])


def test_broken_files_are_skipped_or_cleaned_and_reported(tmp_path):
    names = [
        "good",
        "resumed",
        "truncated",
        "corrupt",
        "garbage",
        "empty",
        "missing",
        "nan",
        "null",
        "diverged",
        "running",
        "planned",
        "stale_val",
    ]
    specs = {n: spec("b", n, 20_000 + 1000 * i, 10**6, steps=40) for i, n in enumerate(names)}
    states = {"diverged": "diverged", "running": "running", "planned": "planned"}
    sweep_dir = make_sweep(tmp_path, "b", list(specs.values()), states)
    runs = sweep_dir / "runs"
    records = {n: curve_records(s) for n, s in specs.items()}
    for n in ("good", "diverged", "running"):
        write_metrics(runs / n, records[n])
    # a resume from the step-20 checkpoint after the first attempt reached step 30: steps 21-30 appear twice,
    # after the marker the runtime writes when it resumes
    second = [dict(r, train_loss=r["train_loss"] - 0.5) for r in records["resumed"][20:]]
    path = write_metrics(runs / "resumed", [*records["resumed"][:30], {"resumed_from": 20, "time": 0.0}, *second])
    text = "".join(json.dumps(r) + "\n" for r in records["truncated"])
    write_metrics(runs / "truncated", [])
    (runs / "truncated" / "metrics.jsonl").write_text(text + '{"step": 41, "tokens": 10')
    lines = [json.dumps(r) for r in records["corrupt"]]
    lines[5] = "this is not json"
    lines[9] = json.dumps({"step": 10, "tokens": 5})  # no train_loss
    lines[12] = "\x00" * 30
    write_metrics(runs / "corrupt", [])
    (runs / "corrupt" / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    write_metrics(runs / "garbage", [])
    (runs / "garbage" / "metrics.jsonl").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    write_metrics(runs / "empty", [])
    nan = records["nan"]
    nan[30]["train_loss"] = math.nan
    write_metrics(runs / "nan", nan, compact=False)
    null = records["null"]  # the runtime logs a non-finite loss as null
    null[19]["val_loss"] = None
    write_metrics(runs / "null", null)
    stale = [{k: v for k, v in r.items() if k != "val_loss" or r["step"] <= 20} for r in records["stale_val"]]
    write_metrics(runs / "stale_val", stale)

    collected = collect_sweep(sweep_dir)
    skipped = dict(collected.skipped)
    assert set(skipped) == {"garbage", "empty", "missing"}
    assert skipped["missing"] == "no metrics.jsonl"
    assert skipped["empty"] == "metrics.jsonl is empty"
    assert skipped["garbage"].startswith("metrics.jsonl has no valid record")
    warnings = "\n".join(collected.warnings)
    assert "truncated: 1 bad line(s) dropped: line 41: cut mid-record (last line)" in warnings
    assert (
        "corrupt: 3 bad line(s) dropped: line 6: not JSON; line 10: missing train_loss; line 13: not JSON" in warnings
    )
    assert "resumed: 10 record(s) repeated by a resume" in warnings
    assert "nan: diverged (non-finite loss at step 31)" in warnings
    assert "null: diverged (non-finite loss at step 20)" in warnings
    assert "diverged: diverged (state diverged)" in warnings
    assert "1 run(s) not started yet (planned)" in warnings
    assert "running running" in warnings

    finals = {p["name"]: p for p in collected.final_points}
    assert set(finals) == {"good", "resumed", "truncated", "corrupt", "stale_val"}
    assert finals["truncated"]["D"] == specs["truncated"].D
    assert finals["stale_val"]["loss_source"] == "mean of last 4 train_loss"
    assert finals["stale_val"]["loss"] == pytest.approx(np.mean([r["train_loss"] for r in stale[-4:]]))
    curves = collected.curves
    assert len(curves["corrupt"]) == 37 and len(curves["truncated"]) == 40
    # the resumed curve is what the runtime's own reader makes of the file: the second attempt's records
    expected = read_metrics(path)
    np.testing.assert_array_equal(curves["resumed"].step, [r["step"] for r in expected])
    np.testing.assert_array_equal(curves["resumed"].train_loss, [r["train_loss"] for r in expected])
    in_fit = set(collected.curve_points["name"])
    assert in_fit == {"good", "resumed", "truncated", "corrupt", "stale_val", "running"}
    rows = read_curves(collected.curves_path)
    assert {r["run"] for r in rows if r["diverged"]} == {"nan", "null", "diverged"}
    assert sum(r["run"] == "resumed" for r in rows) == 40


def test_state_json_end_wins_over_a_stale_database_and_unknown_runs_use_config(tmp_path):
    a = spec("u", "a", 30_000, 10**6, steps=30)
    sweep_dir = make_sweep(tmp_path, "u", [a], {"a": "running"})
    write_metrics(sweep_dir / "runs" / "a", curve_records(a))
    (sweep_dir / "runs" / "a" / "state.json").write_text(json.dumps({"status": "completed", "exit_code": 0}))
    # a run the database and plan.json never heard of: counts from its own config.yaml
    extra = sweep_dir / "runs" / "extra"
    model = {"family": "gpt_neox", "vocab_size": 256, "seq_len": 64, "n_layer": 2, "d_model": 64, "n_heads": 4}
    extra.mkdir(parents=True)
    (extra / "config.yaml").write_text(json.dumps({"model": model, "train": {"tokens": 40960}}))
    from models.gpt_neox import GPTNeoXConfig, flops_per_token, param_counts

    cfg = GPTNeoXConfig(**{k: v for k, v in model.items() if k != "family"})
    n_total, n_ne = param_counts(cfg)
    s = spec("u", "extra", n_total, 40960, steps=10, flops_per_token=flops_per_token(cfg))
    write_metrics(extra, curve_records(s))
    (extra / "state.json").write_text(json.dumps({"status": "completed"}))
    (sweep_dir / "runs" / "stray").mkdir()
    collected = collect_sweep(sweep_dir)
    assert [r.state for r in collected.runs] == ["completed", "completed"]
    finals = {p["name"]: p for p in collected.final_points}
    assert (finals["extra"]["N"], finals["extra"]["N_non_embedding"], finals["extra"]["C"]) == (
        n_total,
        n_ne,
        40960 * flops_per_token(cfg),
    )
    assert collected.skipped == [("stray", "not in the job database or plan.json, and no config.yaml")]


def test_ladder_collect_cli(tmp_path, capsys):
    a = spec("c", "a", 30_000, 10**6, steps=30)
    sweep_dir = make_sweep(tmp_path, "c", [a])
    write_metrics(sweep_dir / "runs" / "a", curve_records(a))
    assert cli.main(["collect", "sweep=c", f"sweeps_root={tmp_path}", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["final_points"][0]["name"] == "a" and out["curve_points"] == 30
    assert cli.main(["collect", "sweep=nope", f"sweeps_root={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sweep=nope: no sweep directory" in err


def test_a_plan_json_sweep_without_states(tmp_path):
    """No job database and no state.json (a sweep copied without them): a curve that reached D is complete."""
    done, cut = spec("p", "done", 20_000, 10**6, steps=30), spec("p", "cut", 40_000, 10**6, steps=30)
    sweep_dir = tmp_path / "p"
    write_metrics(sweep_dir / "runs" / "done", curve_records(done))
    write_metrics(sweep_dir / "runs" / "cut", curve_records(cut)[:20])
    (sweep_dir / "plan.json").write_text(json.dumps({"runs": [done.to_json(), cut.to_json()]}))
    collected = collect_sweep(sweep_dir)
    assert {r.name: r.state for r in collected.runs} == {"done": "completed", "cut": "unknown"}
    assert [p["name"] for p in collected.final_points] == ["done"]
    assert "done: no state recorded; its curve reached its 1e+06 tokens: completed" in collected.warnings
