"""Bad input as a user hits it: generated bad values for config fields and CSV cells, run through ``ladder``
in-process. Each must end in one line on stderr, exit 2, no traceback and no file written; an unexpected
failure is one line pointing at a log that holds the traceback."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from launcher import cli
from launcher.config.validate import PathComponent
from launcher.policy import ExitCode

SETTINGS = settings(
    max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])


def floats_outside(lo: float | None = None, hi: float | None = None, lo_open=False, hi_open=False):
    """Finite floats outside [lo, hi] (an open end includes the bound itself), or a non-finite one."""
    parts = [NON_FINITE]
    if lo is not None:
        parts.append(st.floats(max_value=lo, exclude_max=not lo_open, allow_nan=False, allow_infinity=False))
    if hi is not None:
        parts.append(st.floats(min_value=hi, exclude_min=not hi_open, allow_nan=False, allow_infinity=False))
    return st.one_of(parts)


def ints_outside(lo: int | None = None, hi: int | None = None):
    parts = []
    if lo is not None:
        parts.append(st.integers(max_value=lo - 1))
    if hi is not None:
        parts.append(st.integers(min_value=hi + 1))
    return st.one_of(parts)


# field -> values it refuses (the ranges declared beside the fields)
TRAIN_FIELDS = {
    "train.lr": floats_outside(lo=0.0),
    "train.beta1": floats_outside(lo=0.0, hi=1.0, hi_open=True),
    "train.max_steps": ints_outside(lo=1),
    "train.tokens": ints_outside(lo=1),
    "seed": ints_outside(lo=0, hi=2**63 - 1),
    "model.layernorm_eps": floats_outside(lo=0.0),
    "cluster.device_peak_flops": floats_outside(lo=0.0),
    "cluster.allocation_node_hours": floats_outside(lo=0.0, lo_open=True).filter(lambda v: not v == 0.0),
    "cluster.cores_per_task": ints_outside(lo=1, hi=2),  # the local profile's node has 2 cores
}


def hydra_value(value) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def files_under(root: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in root.rglob("*")}


def assert_one_line_refusal(code: int, captured, command: str) -> str:
    assert code == ExitCode.USAGE, captured.err
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ladder {command}: error: "), captured.err
    assert "Traceback" not in captured.err + captured.out
    return lines[0]


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return tmp_path


@pytest.mark.parametrize("field", list(TRAIN_FIELDS))
def test_ladder_train_refuses_bad_field_values_in_one_line(field, workdir, capsys):
    @SETTINGS
    @given(value=TRAIN_FIELDS[field])
    def check(value):
        before = files_under(workdir)
        overrides = {"train.max_steps": "1", "run_dir": str(workdir / "run"), field: hydra_value(value)}
        code = cli.main(["train", *(f"{k}={v}" for k, v in overrides.items())])
        line = assert_one_line_refusal(code, capsys.readouterr(), "train")
        assert field.split(".")[-1] in line
        assert files_under(workdir) == before and not (workdir / "run").exists()

    check()


@SETTINGS
@given(name=st.text(min_size=1, max_size=30).filter(lambda s: not PathComponent.PATTERN.fullmatch(s)))
def test_ladder_plan_refuses_unsafe_sweep_names(name, workdir, capsys):
    before = files_under(workdir)
    quoted = "'" + name.replace("\\", "\\\\").replace("'", "\\'") + "'"
    code = cli.main(["plan", "--no-calibrate", "sweep=tiny", f"sweep.name={quoted}", f"sweeps_root={workdir}"])
    assert_one_line_refusal(code, capsys.readouterr(), "plan")
    assert files_under(workdir) == before


@SETTINGS
@given(budget=floats_outside(lo=0.0))
def test_ladder_plan_refuses_bad_budgets(budget, workdir, capsys):
    before = files_under(workdir)
    code = cli.main(
        ["plan", "--no-calibrate", "sweep=tiny", f"sweep.budgets=[1e15,{budget!r}]", f"sweeps_root={workdir}"]
    )
    line = assert_one_line_refusal(code, capsys.readouterr(), "plan")
    assert "sweep.budgets" in line
    assert files_under(workdir) == before


def fit_points(path: Path, capsys) -> tuple[int, object]:
    code = cli.main(
        ["fit", "--points", str(path), "--approach", "3", "--n-col", "N", "--d-col", "D", "--loss-col", "loss"]
    )
    return code, capsys.readouterr()


@SETTINGS
@given(data=st.binary(max_size=400))
def test_fit_points_refuses_binary_garbage(data, workdir, capsys):
    path = workdir / "points.csv"
    path.write_bytes(data)
    before = files_under(workdir)
    assert_one_line_refusal(*fit_points(path, capsys), "fit")
    assert files_under(workdir) == before


BAD_CELLS = st.one_of(
    st.sampled_from(["", "nan", "inf", "-1", "0", "1e400", "abc", "3,1"]),
    st.text(alphabet="éçñ\x00\t ;x", min_size=1, max_size=8),
)


@SETTINGS
@given(
    column=st.sampled_from(["N", "D", "loss"]),
    row=st.integers(0, 3),
    cell=BAD_CELLS,
    encoding=st.sampled_from(["utf-8", "latin-1"]),
)
def test_fit_points_names_the_bad_row_and_column(column, row, cell, encoding, workdir, capsys):
    rows = [{"N": 1e6 * 2**i, "D": 2e7 * 3**i, "loss": 3.0 - 0.1 * i} for i in range(4)]
    rows[row][column] = cell
    text = "N,D,loss\n" + "".join(f"{r['N']},{r['D']},{r['loss']}\n" for r in rows)
    path = workdir / "points.csv"
    path.write_bytes(text.encode(encoding, errors="replace"))
    line = assert_one_line_refusal(*fit_points(path, capsys), "fit")
    assert f"line {row + 2}" in line  # the header is line 1


def test_fit_points_short_row_and_constant_losses(workdir, capsys):
    short = workdir / "short.csv"
    short.write_text("N,D,loss\n1e6,2e7,3.1\n2e6\n")
    assert "line 3: 1 fields" in assert_one_line_refusal(*fit_points(short, capsys), "fit")
    flat = workdir / "flat.csv"
    flat.write_text("N,D,loss\n" + "".join(f"{1e6 * 2**i},{2e7 * 2**i},3.1\n" for i in range(5)))
    assert "holds one value" in assert_one_line_refusal(*fit_points(flat, capsys), "fit")


def test_yaml_syntax_error_in_a_profile_names_the_file(workdir, capsys):
    site = workdir / "site" / "cluster"
    site.mkdir(parents=True)
    (site / "broken.yaml").write_text("name: broken\nscheduler: [local\n")
    code = cli.main(
        [
            "plan",
            "--no-calibrate",
            "sweep=tiny",
            f"site_dir={workdir / 'site'}",
            "cluster=broken",
            f"sweeps_root={workdir}",
        ]
    )
    line = assert_one_line_refusal(code, capsys.readouterr(), "plan")
    assert f"{site / 'broken.yaml'}:3:1: not valid YAML" in line


@pytest.mark.parametrize("run_dir", ["/proc/scaleladder/run", "a_file", "a_file/below"])
def test_run_dir_that_cannot_be_a_folder(run_dir, workdir, capsys):
    (workdir / "a_file").write_text("not a folder\n")
    code = cli.main(["train", "train.max_steps=1", f"run_dir={run_dir}"])
    assert "run_dir:" in assert_one_line_refusal(code, capsys.readouterr(), "train")


# ------------------------------------------------------------------- the handler of unexpected failures


def crash(argv):
    raise RuntimeError("a bug\nover two lines")


@pytest.fixture()
def crashing_command(monkeypatch):
    monkeypatch.setitem(cli.COMMANDS, "crash", (f"{__name__}:crash", "raises"))


def test_unexpected_error_is_one_line_and_a_log(workdir, crashing_command, capsys, monkeypatch):
    monkeypatch.delenv("SCALELADDER_DEBUG", raising=False)
    assert cli.main(["crash", "x=1"]) == ExitCode.FAILED
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("ladder crash: internal error: RuntimeError: a bug over two lines (traceback in ")
    logs = list((workdir / "state" / "scaleladder" / "logs").glob("crash-*.log"))
    assert len(logs) == 1 and str(logs[0]) in err
    text = logs[0].read_text()
    assert text.startswith("ladder crash x=1\n") and "Traceback" in text and "RuntimeError: a bug" in text


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback(how, workdir, crashing_command, capsys, monkeypatch):
    monkeypatch.setenv("SCALELADDER_DEBUG", "1" if how == "env" else "0")
    argv = ["--debug", "crash"] if how == "flag" else ["crash"]
    assert cli.main(argv) == ExitCode.FAILED
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: a bug" in err
    assert not (workdir / "state").exists()


def test_unknown_command_is_usage(capsys):
    assert cli.main(["nosuch"]) == ExitCode.USAGE == 2
    assert len(capsys.readouterr().err.splitlines()) == 1


# ------------------------------------------------------------------------ a failed fit loses nothing


@pytest.fixture()
def fitted_sweep(tmp_path):
    from launcher.analysis.fitting import fit_sweep_dir
    from test_collect import curve_records, isoflop_specs, make_sweep, write_metrics

    specs = isoflop_specs("hostile", budgets=(1e16, 1e17, 1e18), per_budget=4, steps=20)
    sweep_dir = make_sweep(tmp_path, "hostile", specs, budget_flops=1e19)
    for i, s in enumerate(specs):
        write_metrics(sweep_dir / "runs" / s.name, curve_records(s, seed=i))
    fit_sweep_dir(sweep_dir, n_boot=2)
    return sweep_dir, specs


def test_fit_with_a_negative_n_boot_writes_nothing(fitted_sweep, capsys):
    sweep_dir, _ = fitted_sweep
    before = {p: p.read_bytes() for p in sweep_dir.rglob("*") if p.is_file()}
    code = cli.main(["fit", f"sweep={sweep_dir}", "--n-boot=-1"])
    assert "--n-boot: must be >= 0" in assert_one_line_refusal(code, capsys.readouterr(), "fit")
    assert {p: p.read_bytes() for p in sweep_dir.rglob("*") if p.is_file()} == before


def test_a_failed_fit_keeps_the_good_one_and_writes_its_error_beside_it(fitted_sweep, capsys):
    from launcher.analysis.fitting import fit_sweep_dir

    sweep_dir, specs = fitted_sweep
    good = (sweep_dir / "fit.json").read_text()
    assert "error" not in json.loads(good)
    for s in specs:  # every curve gone: nothing left to fit
        os.remove(sweep_dir / "runs" / s.name / "metrics.jsonl")
    failed = fit_sweep_dir(sweep_dir, n_boot=2)
    assert "no completed run to fit" in failed["error"]
    assert (sweep_dir / "fit.json").read_text() == good
    assert json.loads((sweep_dir / "fit.error.json").read_text())["error"] == failed["error"]


# ------------------------------------------------------------------------------- metrics.jsonl lines


@pytest.mark.parametrize(
    "stray",
    [b"not json\n", b"[1, 2]\n", b'{"loss": 1}\n', b'{"step": "3"}\n', b"\xff\xfe latin-1 \xe9\n", b'{"step": 4, "tok'],
)
def test_a_bad_metrics_line_is_skipped_and_counted(stray, tmp_path):
    from launcher.run.metrics import read_metrics, read_metrics_counted

    good = [{"step": s, "tokens": 64 * s, "train_loss": 3.0 / s} for s in range(1, 6)]
    lines = [json.dumps(r).encode() + b"\n" for r in good]
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b"".join(lines[:2]) + stray + (b"\n" if not stray.endswith(b"\n") else b"") + b"".join(lines[2:]))
    assert read_metrics_counted(path) == (good, 1)
    assert read_metrics(path) == good


# ------------------------------------------------------------- hostile files in a finished sweep folder


def _first_run_file(name: str):
    return lambda d: sorted((d / "runs").iterdir())[0] / name


HOSTILE_FILES = {  # case -> (what is done to a finished sweep, exit of collect/fit/report, what the line says)
    "state.json holds []": (lambda d: _first_run_file("state.json")(d).write_text("[]"), 0, None),
    "state.json is binary": (lambda d: _first_run_file("state.json")(d).write_bytes(b"\xff\x00"), 0, None),
    "plan.json holds []": (lambda d: (d / "plan.json").write_text("[]"), 2, "plan.json: expected a JSON object"),
    "plan.json runs without keys": (
        lambda d: (d / "plan.json").write_text('{"runs": [{"name": "x"}]}'),
        2,
        "runs[0]: expected an object with name, family, N",
    ),
    "plan.json negative budget": (
        lambda d: (d / "plan.json").write_text('{"budget_flops": -1}'),
        2,
        "budget_flops: expected a number > 0",
    ),
    "jobdb.sqlite truncated": (
        lambda d: (d / "jobdb.sqlite").write_bytes((d / "jobdb.sqlite").read_bytes()[:1000]),
        2,
        "jobdb.sqlite: not a usable job database",
    ),
    "jobdb.sqlite garbage": (
        lambda d: (d / "jobdb.sqlite").write_bytes(b"garbage" * 100),
        2,
        "jobdb.sqlite: not a usable job database",
    ),
    "a metrics line not JSON": (lambda d: open(_first_run_file("metrics.jsonl")(d), "a").write("oops\n"), 0, None),
    "fit.json holds []": (lambda d: (d / "fit.json").write_text("[]"), 0, None),
}


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    from launcher.analysis.fitting import fit_sweep_dir
    from test_collect import curve_records, isoflop_specs, make_sweep, write_metrics

    root = tmp_path_factory.mktemp("finished")
    specs = isoflop_specs("done", budgets=(1e16, 1e17, 1e18), per_budget=4, steps=20)
    sweep_dir = make_sweep(root, "done", specs, budget_flops=1e19)
    for i, s in enumerate(specs):
        write_metrics(sweep_dir / "runs" / s.name, curve_records(s, seed=i))
        (sweep_dir / "runs" / s.name / "state.json").write_text(json.dumps({"status": "completed", "step": 20}))
    fit_sweep_dir(sweep_dir, n_boot=2)
    return sweep_dir


@pytest.mark.parametrize("case", list(HOSTILE_FILES))
def test_hostile_files_in_a_finished_sweep(case, finished_sweep, tmp_path, capsys, monkeypatch):
    import shutil

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    sweep_dir = tmp_path / "done"
    shutil.copytree(finished_sweep, sweep_dir)
    damage, expected, says = HOSTILE_FILES[case]
    damage(sweep_dir)
    for command in (["collect"], ["fit", "--n-boot=2"], ["report"]):
        before = {p: p.read_bytes() for p in sweep_dir.rglob("*") if p.is_file()}
        code = cli.main([command[0], f"sweep={sweep_dir}", *command[1:]])
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err + captured.out and "internal error" not in captured.err
        if expected == ExitCode.USAGE:
            assert says in assert_one_line_refusal(code, captured, command[0])
            assert {p: p.read_bytes() for p in sweep_dir.rglob("*") if p.is_file()} == before
        else:
            assert code == 0, captured.err
    if expected == 0:
        fit = json.loads((sweep_dir / "fit.json").read_text())
        assert fit["n_runs"] == 12  # every run still fitted: one bad line or file loses no run


# ------------------------------------------------------------------------------------- job manifests


@pytest.mark.parametrize(
    "content, says",
    [
        (b"[]", "expected a mapping of fields"),
        (b"\xff", "not JSON"),
        (b'{"name": "j"}', ": sweep: required field is missing"),
        (b"{}", ": name: required field is missing"),
    ],
)
def test_a_continuation_refuses_a_manifest_that_is_not_one(content, says, workdir, capsys):
    path = workdir / "job.json"
    path.write_bytes(content)
    code = cli.main(["submit", "--continue-from", "123", "--manifest", str(path)])
    line = assert_one_line_refusal(code, capsys.readouterr(), "submit")
    assert f"{path}" in line and says in line


def test_a_manifest_run_of_the_wrong_shape_names_its_field(tmp_path):
    from launcher.errors import UserError
    from launcher.sweep.submit import JobManifest, read_manifest

    good = {
        "name": "j",
        "sweep": "s",
        "sweep_dir": "d",
        "workdir": "w",
        "scheduler": "slurm",
        "profile": {},
        "array": False,
        "script": "x.sbatch",
        "steps_log": "x.steps",
        "nodes": 1,
        "lanes": 1,
        "walltime_min": 10,
        "written": 1.0,
        "job_id": 77,
        "runs": [{"name": "r", "config_hash": "h", "run_dir": "d/r", "overrides": [], "nodes": 1, "ranks": 1}],
    }
    path = tmp_path / "j.json"
    path.write_text(json.dumps(good))
    with pytest.raises(UserError, match=r"j\.json: runs\[0\]\.hours: required field is missing"):
        read_manifest(path)
    good["runs"][0].update(hours=0.5, tries=2)
    path.write_text(json.dumps(good))
    manifest = read_manifest(path)
    assert isinstance(manifest, JobManifest) and manifest.job_id == "77" and manifest.runs[0].tries == 2


# ---------------------------------------------------------------- metrics.jsonl: steps that go back


def _record(step: int, loss: float) -> dict:
    return {"step": step, "tokens": 64 * step, "flops": 1e6 * step, "train_loss": loss}


def _write_lines(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


def _both_readers(path: Path) -> tuple[list[tuple[int, float]], int, list[str]]:
    """(step, loss) of the curve by the runtime's reader, checked equal to collect's, and what each counted."""
    from launcher.analysis.collect import parse_metrics
    from launcher.run.metrics import read_metrics_counted

    records, skipped = read_metrics_counted(path)
    parsed = parse_metrics(path)
    assert parsed.curve is not None
    curve = [(r["step"], r["train_loss"]) for r in records]
    assert list(zip(parsed.curve.step.tolist(), parsed.curve.train_loss.tolist())) == curve
    return curve, skipped, parsed.issues


def test_a_valid_line_whose_step_goes_back_without_a_resume_is_skipped_and_counted(tmp_path):
    good = [_record(s, 3.0 - 0.1 * s) for s in range(1, 11)]
    stray = _record(3, 9.9)  # valid JSON, a step already logged, and no resume marker before it
    path = _write_lines(tmp_path / "metrics.jsonl", [*good[:6], stray, *good[6:]])
    curve, skipped, issues = _both_readers(path)
    assert curve == [(r["step"], r["train_loss"]) for r in good]  # nothing around it lost, nothing replaced
    assert skipped == 1
    assert issues == ["1 record(s) whose step went back with no resume marker: skipped"]


def test_a_resume_marker_restarts_the_steps_and_the_latest_attempt_wins(tmp_path):
    first = [_record(s, 3.0 - 0.1 * s) for s in range(1, 9)]  # killed after step 8, checkpoint at 5
    second = [_record(s, 2.0 - 0.1 * s) for s in range(6, 13)]
    stray = _record(7, 9.9)  # inside the second attempt, going back: skipped like any stray line
    lines = [*first, {"resumed_from": 5, "time": 1.0}, *second[:4], stray, *second[4:]]
    curve, skipped, issues = _both_readers(_write_lines(tmp_path / "metrics.jsonl", lines))
    assert curve == [(s, 3.0 - 0.1 * s) for s in range(1, 6)] + [(s, 2.0 - 0.1 * s) for s in range(6, 13)]
    assert skipped == 1
    assert "3 record(s) repeated by a resume: kept the latest attempt's" in issues


def test_a_restart_from_step_zero_and_a_rewind_both_start_over_where_their_marker_says(tmp_path):
    lines = [
        *[_record(s, 5.0) for s in (1, 2, 3)],
        {"resumed_from": 0, "time": 1.0},  # no checkpoint yet: the attempt starts again from step 0
        *[_record(s, 4.0) for s in (1, 2, 3, 4, 5, 6)],
        {"resumed_from": 4, "time": 2.0},  # a rewind after loss spikes at 5 and 6
        *[_record(s, 3.0) for s in (5, 6, 7)],
    ]
    curve, skipped, _ = _both_readers(_write_lines(tmp_path / "metrics.jsonl", lines))
    assert curve == [(1, 4.0), (2, 4.0), (3, 4.0), (4, 4.0), (5, 3.0), (6, 3.0), (7, 3.0)] and skipped == 0
    from launcher.run.metrics import read_attempts

    assert [(start, [r["step"] for r in records]) for start, records in read_attempts(tmp_path / "metrics.jsonl")] == [
        (0, [1, 2, 3]),
        (0, [1, 2, 3, 4, 5, 6]),
        (4, [5, 6, 7]),
    ]


# ------------------------------------------------------------------------------------ bounded work


def test_a_plan_of_an_absurd_model_is_refused_before_any_shape_is_solved(workdir, capsys):
    import time

    before = files_under(workdir)
    started = time.monotonic()
    code = cli.main(["plan", "--no-calibrate", "sweep=tiny", "sweep.params=[1e15]", f"sweeps_root={workdir}"])
    line = assert_one_line_refusal(code, capsys.readouterr(), "plan")
    assert time.monotonic() - started < 30  # the shape solver alone would take hours at 1e15
    assert "sweep.params: 1e+15 parameters need at least" in line and "cluster.device_memory_bytes" in line
    assert files_under(workdir) == before


@pytest.mark.parametrize(
    "overrides, says",
    [
        (["train.micro_batch_size=1000000000", "train.global_batch_tokens=64000000000"], "train.micro_batch_size: "),
        (["model.d_model=8192", "model.n_heads=64", "model.n_layer=96"], "model: "),
    ],
)
def test_a_run_beyond_a_device_is_refused_before_any_rank_starts(overrides, says, workdir, capsys):
    before = files_under(workdir)
    code = cli.main(["train", "train.max_steps=1", f"run_dir={workdir / 'run'}", *overrides])
    line = assert_one_line_refusal(code, capsys.readouterr(), "train")
    assert line.startswith(f"ladder train: error: {says}") and "cluster.device_memory_bytes" in line
    assert files_under(workdir) == before and not (workdir / "run").exists()
