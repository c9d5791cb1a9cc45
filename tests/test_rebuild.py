"""`ladder status --rebuild`: the job database of a finished real sweep, lost or broken, made again from
plan.json and the runs' own state.json and metrics.jsonl; and the typed state.json reader every reader uses."""

from __future__ import annotations

import json
import shutil

import pytest

from launcher.cli import main as ladder
from launcher.policy import ExitCode
from launcher.run.state import StateFileError, read_state
from launcher.sweep.jobdb import JobDB

SWEEP = ["sweep=tiny", "sweep.budgets=[1e10]"]  # three real tiny runs


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A real local sweep, trained to the end, and what `ladder status --json` said of it."""
    root = tmp_path_factory.mktemp("rebuild")
    assert ladder(["sweep", "--no-report", "--no-calibrate", *SWEEP, f"sweeps_root={root}"]) == 0
    return root


def status(root, capsys, *flags):
    code = ladder(["status", *SWEEP, f"sweeps_root={root}", "--json", *flags])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 else None), captured.err


def view(data):
    return [(r["name"], r["state"], r["step"], r["N"], r["D"], r["config_hash"]) for r in data["runs"]]


@pytest.fixture()
def sweep(finished, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    root = tmp_path / "copy"
    shutil.copytree(finished, root)
    code, before, _ = status(root, capsys)
    assert code == 0 and before["counts"] == {"completed": 3}
    return root, before


def damage_garbage(db):
    db.write_bytes(b"garbage" * 100)


def damage_truncated(db):
    db.write_bytes(db.read_bytes()[:1000])


@pytest.mark.parametrize("damage", [damage_garbage, damage_truncated])
def test_a_corrupt_database_says_how_to_rebuild_and_rebuild_restores_every_run(damage, sweep, capsys):
    root, before = sweep
    db = root / "tiny" / "jobdb.sqlite"
    for companion in root.glob("tiny/jobdb.sqlite-*"):
        companion.unlink()
    damage(db)
    code, _, err = status(root, capsys)
    assert code == ExitCode.USAGE and len(err.splitlines()) == 1
    assert "not a usable job database" in err and "--rebuild" in err
    code, after, err = status(root, capsys, "--rebuild")
    assert code == 0, err
    assert "rebuilt the job database" in err and "3 completed" in err
    assert view(after) == view(before)
    assert [p.name.split("-")[0] for p in root.glob("tiny/jobdb.sqlite.broken-*")] == ["jobdb.sqlite.broken"]


def test_a_deleted_database_is_rebuilt_on_request(sweep, capsys):
    root, before = sweep
    for path in root.glob("tiny/jobdb.sqlite*"):
        path.unlink()
    code, _, err = status(root, capsys)
    assert code == ExitCode.USAGE and "--rebuild" in err
    code, after, _ = status(root, capsys, "--rebuild")
    assert code == 0 and view(after) == view(before)


def test_an_empty_database_beside_finished_runs_is_rebuilt_by_itself(sweep, capsys):
    root, before = sweep
    for path in root.glob("tiny/jobdb.sqlite*"):
        path.unlink()
    JobDB(root / "tiny" / "jobdb.sqlite").close()  # a new, empty database: "no runs" would be wrong
    code, after, err = status(root, capsys)
    assert code == 0 and "rebuilt the job database" in err
    assert view(after) == view(before)


def test_rebuild_keeps_where_an_unfinished_run_stopped(sweep, capsys):
    """A run that stopped part way (its state.json says running, no process) is ready to continue, not done."""
    root, before = sweep
    first = root / "tiny" / "runs" / before["runs"][0]["name"]
    state = json.loads((first / "state.json").read_text())
    (first / "state.json").write_text(json.dumps({**state, "status": "running", "exit_code": None, "step": 4}))
    lines = (first / "metrics.jsonl").read_text().splitlines(keepends=True)
    (first / "metrics.jsonl").write_text("".join(lines[:1]))
    code, after, _ = status(root, capsys, "--rebuild")
    assert code == 0
    assert [r["state"] for r in after["runs"]] == ["timed_out", "completed", "completed"]


@pytest.mark.parametrize(
    "content, says",
    [
        (b"[]", "expected a JSON object (a run's state), got list"),
        (b"\xff\x00", "not JSON"),
        (b'{"status": "done"}', "status: 'done' is not a run status"),
        (b'{"status": "completed", "step": "7"}', "step: expected int"),
        (b'{"status": "completed", "hangs": 3}', "hangs: expected a list"),
        (b'{"status": "completed", "colour": 3}', "colour: unknown field"),
    ],
)
def test_state_file_of_the_wrong_shape_is_refused_naming_file_and_field(content, says, tmp_path, capsys):
    (tmp_path / "state.json").write_bytes(content)
    with pytest.raises(StateFileError) as caught:
        read_state(tmp_path)
    assert str(caught.value).startswith(f"{tmp_path / 'state.json'}: ") and says in str(caught.value)
    assert read_state(tmp_path, warn=True) is None
    err = capsys.readouterr().err
    assert err.startswith(f"warning: {tmp_path / 'state.json'}: ") and says in err and err.count("\n") == 1
    assert read_state(tmp_path / "absent") is None
