"""The LSF adapter's parsers and commands, against recorded LSF outputs.

IBM LSF cannot be installed here. Its outputs are recorded in tests/data/lsf/ from IBM's and OLCF's
documented formats (README.md there cites the pages), and small stand-ins for bsub, bjobs, bkill and
brequeue (tests/data/lsf/bin/recorded) print them from PATH: an honest substitute for a scheduler that
cannot run here, which checks our parsing and command lines, not LSF itself.
"""
from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import pytest

from launcher.errors import UserError
from launcher.schedulers.lsf import (LsfCommands, LsfRecord, directive_arg, parse_bjobs_json, parse_bjobs_plain,
                                     parse_bsub, parse_signal_output, walltime)

DATA = Path(__file__).parent / "data" / "lsf"


def recorded(name: str) -> str:
    return (DATA / name).read_text()


class FakeLsf:
    """Puts the recorded-output stand-ins on PATH; ``answer`` picks what each command prints."""

    def __init__(self, tmp_path: Path, monkeypatch):
        self.dir = tmp_path / "fake-lsf"
        bin_dir = self.dir / "bin"
        bin_dir.mkdir(parents=True)
        for name in ("bsub", "bjobs", "bkill", "brequeue"):
            (bin_dir / name).symlink_to(DATA / "bin" / "recorded")
        monkeypatch.setenv("PATH", f"{bin_dir}:{shutil.os.environ['PATH']}")
        monkeypatch.setenv("FAKE_LSF_DIR", str(self.dir))

    def answer(self, command: str, out: str | None = None, err: str | None = None, rc: int = 0) -> None:
        for suffix, name in (("out", out), ("err", err)):
            path = self.dir / f"{command}.{suffix}"
            path.unlink(missing_ok=True)
            if name:
                shutil.copy(DATA / name, path)
        (self.dir / f"{command}.rc").write_text(str(rc))

    def calls(self) -> list[list[str]]:
        log = self.dir / "calls.log"
        return [shlex.split(line) for line in log.read_text().splitlines()] if log.exists() else []

    def stdin(self, command: str) -> str:
        return (self.dir / f"{command}.stdin").read_text()


@pytest.fixture
def fake_lsf(tmp_path, monkeypatch) -> FakeLsf:
    return FakeLsf(tmp_path, monkeypatch)


# --- bsub ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,job_id", [("bsub_submitted.txt", "4242"), ("bsub_submitted_default_queue.txt", "4243")])
def test_bsub_job_id(name, job_id):
    assert parse_bsub(recorded(name)) == job_id


@pytest.mark.parametrize("name,field,hint", [
    ("bsub_no_such_queue.txt", "cluster.queue", "unknown queue"),
    ("bsub_queue_closed.txt", "cluster.queue", "closed"),
    ("bsub_job_limit.txt", "cluster.max_queued_jobs", "job limit"),
    ("bsub_bad_project.txt", "cluster.account", "project"),
])
def test_bsub_refusals_name_the_field_and_quote_lsf(name, field, hint):
    with pytest.raises(UserError) as info:
        parse_bsub("", recorded(name))
    message = str(info.value)
    assert message.startswith(f"{field}: bsub refused the job:") and hint in message
    assert "Job not submitted" in message and "\n" not in message


def test_bsub_unexplained_refusal_still_raises():
    with pytest.raises(UserError, match="bsub refused the job: Bad argument. Job not submitted."):
        parse_bsub("", "Bad argument. Job not submitted.\n")


# --- bjobs --------------------------------------------------------------------------------------------

def test_bjobs_json_maps_every_lsf_state():
    records = parse_bjobs_json(recorded("bjobs_json.txt"))
    states = {job_id: record.state for job_id, record in records.items()}
    assert states == {
        "4242": "running", "4243": "queued", "4244": "completed", "4245": "failed",
        "4246": "timed_out",  # TERM_RUNLIMIT
        "4247": "cancelled",  # TERM_OWNER (bkill)
        "4248": "timed_out",  # exit 75: checkpointed, continue
        "4249": "queued", "4250": "running", "4251": "running", "4252": "running", "4253": "cancelled",
        "4300[1]": "completed", "4300[2]": "running",
    }
    assert "999" not in records  # "Job <999> is not found": unknown to LSF, not a state
    assert records["4246"] == LsfRecord("4246", "EXIT", 140, "TERM_RUNLIMIT: job killed after reaching LSF run time limit")
    assert records["4242"].exit_code is None


@pytest.mark.parametrize("name", ["bjobs_plain.txt", "bjobs_plain_noheader.txt"])
def test_bjobs_plain_with_and_without_header(name):
    records = parse_bjobs_plain(recorded(name))
    assert {j: r.stat for j, r in records.items()} == {
        "4242": "RUN", "4243": "PEND", "4245": "EXIT", "4300[1]": "DONE", "4300[2]": "RUN"}


def test_bjobs_json_refuses_plain_text():
    with pytest.raises(ValueError):
        parse_bjobs_json(recorded("bjobs_plain.txt"))


# --- bkill / brequeue ---------------------------------------------------------------------------------

def test_signal_output():
    assert parse_signal_output(recorded("bkill.txt")) == {
        "4242": "is being terminated", "4244": "Job has already finished", "999": "No matching job found"}
    assert parse_signal_output(recorded("brequeue.txt")) == {"4242": "is being requeued"}


# --- the commands, with the stand-ins on PATH ---------------------------------------------------------

def test_submit_by_argument_and_by_stdin(fake_lsf, tmp_path):
    script = tmp_path / "job.lsf"
    script.write_text("#!/bin/bash\n#BSUB -nnodes 1\ntrue\n")
    fake_lsf.answer("bsub", out="bsub_submitted.txt")
    lsf = LsfCommands()
    assert lsf.submit(script, via_stdin=False) == "4242"
    assert fake_lsf.calls()[-1] == ["bsub", str(script)]
    assert lsf.submit(script, via_stdin=True, dependency="4000") == "4242"
    assert fake_lsf.calls()[-1] == ["bsub", "-w", "ended(4000)"]
    assert fake_lsf.stdin("bsub") == script.read_text()


def test_submit_refused(fake_lsf, tmp_path):
    fake_lsf.answer("bsub", err="bsub_no_such_queue.txt", rc=255)
    with pytest.raises(UserError, match="cluster.queue"):
        LsfCommands().submit(tmp_path / "job.lsf", via_stdin=False)


def test_submit_without_lsf_on_path(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError, match="bsub: not found on PATH"):
        LsfCommands().submit(tmp_path / "job.lsf", via_stdin=False)


def test_status_asks_for_json_once_per_job(fake_lsf):
    fake_lsf.answer("bjobs", out="bjobs_json.txt")
    records = LsfCommands().status(["4300[1]", "4300[2]", "4242"])
    assert records["4300[2]"].state == "running"
    assert fake_lsf.calls() == [["bjobs", "-a", "-o", "jobid jobindex stat exit_code exit_reason", "-json",
                                 "4242", "4300"]]


def test_status_falls_back_to_the_plain_table(fake_lsf):
    fake_lsf.answer("bjobs", out="bjobs_plain.txt", err="bjobs_not_found_stderr.txt", rc=255)
    records = LsfCommands().status(["4242", "999"])
    assert records["4242"].state == "running" and "999" not in records
    assert [call[:3] for call in fake_lsf.calls()] == [["bjobs", "-a", "-o"], ["bjobs", "-a", "-w"]]


def test_cancel_is_idempotent_but_not_silent(fake_lsf):
    fake_lsf.answer("bkill", out="bkill.txt", rc=255)
    said = LsfCommands().cancel(["4242", "4244", "999"])
    assert said["4242"] == "is being terminated"
    fake_lsf.answer("bkill", err="bkill_denied.txt", rc=255)
    with pytest.raises(UserError, match="job 4242: User permission denied"):
        LsfCommands().cancel(["4242"])


def test_requeue(fake_lsf):
    fake_lsf.answer("brequeue", out="brequeue.txt")
    assert LsfCommands().requeue(["4242"]) == {"4242": "is being requeued"}
    assert fake_lsf.calls() == [["brequeue", "4242"]]


# --- quoting and times in #BSUB lines -----------------------------------------------------------------

def test_directive_quoting_follows_lsf_script_parser():
    assert directive_arg("ended(4242)") == '"ended(4242)"'
    assert directive_arg("sweep[1-8]%4") == '"sweep[1-8]%4"'
    assert directive_arg('say "hi"') == "'say \"hi\"'"
    for bad in ("a\"b'c", "two\nlines"):
        with pytest.raises(UserError):
            directive_arg(bad)


@pytest.mark.parametrize("minutes,text", [(1, "0:01"), (59, "0:59"), (120, "2:00"), (1440, "24:00"), (725, "12:05")])
def test_walltime(minutes, text):
    assert walltime(minutes) == text
