"""The LSF adapter's parsers and commands, against recorded LSF outputs.

IBM LSF cannot be installed here. Its outputs are recorded in tests/data/lsf/ from IBM's and OLCF's
documented formats (README.md there cites the pages), and small stand-ins for bsub, bjobs, bkill and
brequeue (tests/data/lsf/bin/recorded) print them from PATH: an honest substitute for a scheduler that
cannot run here, which checks our parsing and command lines, not LSF itself.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from launcher.config.cluster import ClusterProfile
from launcher.config.compose import compose
from launcher.config.validate import validate
from launcher.errors import UserError
from launcher.schedulers import get_scheduler
from launcher.schedulers.base import Dependency
from launcher.schedulers.lsf import (
    LsfRecord,
    LsfScheduler,
    dependency_condition,
    directive_arg,
    element_id,
    from_lsf,
    job_key,
    key_path,
    parse_bjobs_json,
    parse_bjobs_plain,
    parse_bsub,
    parse_signal_output,
    to_lsf,
    walltime,
    warning_minutes,
)

DATA = Path(__file__).parent / "data" / "lsf"
GOLDEN = Path(__file__).parent / "golden" / "summit"


def assert_golden(name: str, text: str, replace: dict[str, str]) -> None:
    """Compare with tests/golden/summit/<name> after putting placeholders for this machine's paths."""
    for value, placeholder in sorted(replace.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(value, placeholder)
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs from the golden file (UPDATE_GOLDEN=1 rewrites it)"


def shellcheck(path: Path) -> None:
    done = subprocess.run(["shellcheck", "--shell=bash", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def recorded(name: str) -> str:
    return (DATA / name).read_text()


class FakeLsf:
    """Puts the recorded-output stand-ins on PATH; ``answer`` picks what each command prints."""

    def __init__(self, tmp_path: Path, monkeypatch):
        self.dir = tmp_path / "fake-lsf"
        bin_dir = self.dir / "bin"
        bin_dir.mkdir(parents=True)
        for name in ("bsub", "bjobs", "bkill", "brequeue", "bmod"):
            (bin_dir / name).symlink_to(DATA / "bin" / "recorded")
        monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
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


@pytest.fixture
def local_lsf(tmp_path, monkeypatch) -> Path:
    """The local LSF stand-in (tests/data/lsf/bin/local-lsf, which runs job scripts here) on PATH."""
    bin_dir = tmp_path / "local-lsf" / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("bsub", "bjobs", "bkill", "brequeue"):
        (bin_dir / name).symlink_to(DATA / "bin" / "local-lsf")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_LSF_DIR", str(tmp_path / "local-lsf"))
    monkeypatch.chdir(tmp_path)
    # jobs unpickle functions defined in the test modules: LSF passes the submission environment on
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    yield tmp_path / "local-lsf"
    for job_dir in (tmp_path / "local-lsf" / "jobs").glob("[0-9]*"):  # leave nothing running
        if any(json.loads(p.read_text())["stat"] in ("PEND", "RUN") for p in job_dir.glob("elem-*.json")):
            subprocess.run(["bkill", job_dir.name], capture_output=True)


# --- bsub ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,job_id", [("bsub_submitted.txt", "4242"), ("bsub_submitted_default_queue.txt", "4243")])
def test_bsub_job_id(name, job_id):
    assert parse_bsub(recorded(name)) == job_id


@pytest.mark.parametrize(
    "name,field,hint",
    [
        ("bsub_no_such_queue.txt", "cluster.queue", "unknown queue"),
        ("bsub_queue_closed.txt", "cluster.queue", "closed"),
        ("bsub_job_limit.txt", "cluster.max_queued_jobs", "job limit"),
        ("bsub_bad_project.txt", "cluster.account", "project"),
    ],
)
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
        "4242": "running",
        "4243": "queued",
        "4244": "completed",
        "4245": "failed",
        "4246": "timed_out",  # TERM_RUNLIMIT
        "4247": "cancelled",  # TERM_OWNER (bkill)
        "4248": "failed",  # a job's own exit code is not a run's: runs report theirs in state.json
        "4249": "queued",
        "4250": "running",
        "4251": "running",
        "4252": "running",
        "4253": "cancelled",
        "4300[1]": "completed",
        "4300[2]": "running",
    }
    assert "999" not in records  # "Job <999> is not found": unknown to LSF, not a state
    assert records["4246"] == LsfRecord(
        "4246", "EXIT", 140, "TERM_RUNLIMIT: job killed after reaching LSF run time limit"
    )
    assert records["4242"].exit_code is None


@pytest.mark.parametrize("name", ["bjobs_plain.txt", "bjobs_plain_noheader.txt"])
def test_bjobs_plain_with_and_without_header(name):
    records = parse_bjobs_plain(recorded(name))
    assert {j: r.stat for j, r in records.items()} == {
        "4242": "RUN",
        "4243": "PEND",
        "4245": "EXIT",
        "4300[1]": "DONE",
        "4300[2]": "RUN",
    }


def test_bjobs_json_refuses_plain_text():
    with pytest.raises(ValueError):
        parse_bjobs_json(recorded("bjobs_plain.txt"))


# --- bkill / brequeue ---------------------------------------------------------------------------------


def test_signal_output():
    assert parse_signal_output(recorded("bkill.txt")) == {
        "4242": "is being terminated",
        "4244": "Job has already finished",
        "999": "No matching job found",
    }
    assert parse_signal_output(recorded("brequeue.txt")) == {"4242": "is being requeued"}


# --- the commands, with the stand-ins on PATH ---------------------------------------------------------


def profile(name: str) -> ClusterProfile:
    return validate(ClusterProfile, compose([f"cluster={name}"])["cluster"], "cluster")


@pytest.fixture(scope="module")
def summit() -> LsfScheduler:
    scheduler = get_scheduler(profile("summit"))
    assert isinstance(scheduler, LsfScheduler)  # the registry finds the adapter by cluster.scheduler
    return scheduler


def test_submit_by_argument_and_by_stdin(fake_lsf, tmp_path, summit):
    script = tmp_path / "job.lsf"
    script.write_text("#!/bin/bash\n#BSUB -nnodes 1\ntrue\n")
    fake_lsf.answer("bsub", out="bsub_submitted.txt")
    assert summit.submit(script) == "4242"  # Summit parses #BSUB lines of a script given as argument
    assert fake_lsf.calls()[-1] == ["bsub", str(script)]
    generic = get_scheduler(profile("lsf"))  # elsewhere LSF reads them only from stdin
    assert generic.submit(script, Dependency("afterany", ("4000", "4001_2"))) == "4242"
    assert fake_lsf.calls()[-1] == ["bsub", "-w", "ended(4000) && ended(4001[3])"]
    assert fake_lsf.stdin("bsub") == script.read_text()


def test_submit_refused(fake_lsf, tmp_path, summit):
    fake_lsf.answer("bsub", err="bsub_no_such_queue.txt", rc=255)
    with pytest.raises(UserError, match="cluster.queue"):
        summit.submit(tmp_path / "job.lsf")


def test_submit_without_lsf_on_path(monkeypatch, tmp_path, summit):
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    with pytest.raises(UserError, match="bsub: not found on PATH"):
        summit.submit(tmp_path / "job.lsf")
    with pytest.raises(UserError, match="bjobs: not found on PATH"):
        summit.status(["4242"])


def test_status_asks_bjobs_once_and_reports_array_tasks_from_0(fake_lsf, summit):
    fake_lsf.answer("bjobs", out="bjobs_json.txt")
    states = summit.status(["4300", "4242", "4246", "999"])
    assert fake_lsf.calls() == [
        ["bjobs", "-a", "-o", "jobid jobindex stat exit_code exit_reason", "-json", "4242", "4246", "4300", "999"]
    ]
    assert states == {
        "4242": "running",
        "4246": "timed_out",
        "999": "ended",
        "4300": "running",
        "4300_0": "completed",
        "4300_1": "running",
    }


def test_status_falls_back_to_the_plain_table(fake_lsf, summit):
    fake_lsf.answer("bjobs", out="bjobs_plain.txt", err="bjobs_not_found_stderr.txt", rc=255)
    assert summit.status(["4242", "4245", "999"]) == {"4242": "running", "4245": "failed", "999": "ended"}
    assert [call[:3] for call in fake_lsf.calls()] == [["bjobs", "-a", "-o"], ["bjobs", "-a", "-w"]]


def test_cancel_is_idempotent_but_not_silent(fake_lsf, summit):
    fake_lsf.answer("bkill", out="bkill.txt", rc=255)
    summit.cancel(["4242", "4244", "999", "4300_0"])
    assert fake_lsf.calls()[-1] == ["bkill", "4242", "4244", "4300[1]", "999"]
    fake_lsf.answer("bkill", err="bkill_denied.txt", rc=255)
    with pytest.raises(UserError, match="job 4242: User permission denied"):
        summit.cancel(["4242"])


def test_requeue_and_signal(fake_lsf, summit):
    fake_lsf.answer("brequeue", out="brequeue.txt")
    assert summit.requeue(["4242"]) == {"4242": "is being requeued"}
    fake_lsf.answer("bkill", out="bkill.txt")
    summit.signal(["4242"], "USR2")
    assert fake_lsf.calls()[-2:] == [["brequeue", "4242"], ["bkill", "-s", "USR2", "4242"]]


def test_a_pending_jobs_dependency_is_changed_with_bmod(fake_lsf, summit):
    summit.set_dependency("4300_1", Dependency("afterok", ("4242",)))  # element 2 of array 4300
    assert fake_lsf.calls()[-1] == ["bmod", "-w", "done(4242)", "4300[2]"]


def test_queued_jobs_counts_unfinished_jobs_and_elements(fake_lsf, summit):
    fake_lsf.answer("bjobs", out="bjobs_jobid_noheader.txt")
    assert summit.queued_jobs() == 4
    assert fake_lsf.calls() == [["bjobs", "-o", "jobid", "-noheader"]]
    fake_lsf.answer("bjobs", err="bjobs_no_unfinished.txt", rc=255)
    assert summit.queued_jobs() == 0


def test_array_ids_between_the_adapter_and_lsf():
    assert to_lsf("4300_0") == "4300[1]" and to_lsf("4300") == "4300" and to_lsf("4300[2]") == "4300[2]"
    assert from_lsf("4300[1]") == "4300_0" and from_lsf("4300") == "4300"


def test_task_keys_and_lsf_elements_are_one_mapping():
    """bsub -J "name[1-n]" makes elements 1..n (LSB_JOBINDEX, bjobs "4300[k]", IBM's "Job arrays"); the
    job scripts' JOB_KEY, the adapter and submitit name them by task 0..n-1: element k is task k - 1."""
    from test_render import profile as render_profile, render_all, steps

    n = 3
    (script,) = render_all(render_profile("summit", "cluster.submission=array"), steps(n, 0.2)).values()
    assert '#BSUB -J "golden-001[1-3]%' in script  # LSF's documented 1-based index range
    [key_line] = [line for line in script.splitlines() if line.startswith('if [ "${LSB_JOBINDEX')]
    for element in (0, *range(1, n + 1)):  # 0: LSF's LSB_JOBINDEX outside an array
        environ = {"LSB_JOBID": "4300", "LSB_JOBINDEX": str(element)}
        done = subprocess.run(
            ["bash", "-c", f'{key_line}\necho "$JOB_KEY"'], env=environ, capture_output=True, text=True, check=True
        )
        key = "4300" if element == 0 else f"4300_{element - 1}"
        assert done.stdout.strip() == key == job_key(environ) == from_lsf(element_id("4300", element))
        assert to_lsf(key) == element_id("4300", element)


@pytest.mark.parametrize(
    "kind,condition",
    [("afterany", "ended(7)"), ("afterok", "done(7)"), ("afternotok", "exit(7)"), ("after", "started(7)")],
)
def test_dependency_conditions(kind, condition):
    assert dependency_condition(Dependency(kind, ("7",))) == condition


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


@pytest.mark.parametrize("seconds,minutes", [(600, "10"), (61, "2"), (30, "1"), (60, "1")])
def test_warning_time_in_whole_minutes(seconds, minutes):
    assert warning_minutes(seconds) == minutes


def test_key_path_expands_the_job_tags_and_nothing_else():
    word = key_path("/tmp/my $HOME `id` logs/%j/%A_%a.out")
    done = subprocess.run(
        ["bash", "-c", f'JOB_KEY=4300_2 LSB_JOBID=4300; printf "%s" {word}'], capture_output=True, text=True, check=True
    )
    assert done.stdout == "/tmp/my $HOME `id` logs/4300_2/4300_2.out"


# --- WSD branches after their trunks ------------------------------------------------------------------


def test_wsd_branches_are_submitted_after_their_trunks_job(fake_lsf, tmp_path):
    """A branch never shares a job with its trunk: its job waits on the trunk's (#BSUB -w and bsub -w),
    whether the trunk is submitted in the same call or is queued from an earlier one."""
    from launcher.sweep.jobdb import JobDB
    from launcher.sweep.submit import submit_sweep

    fake_lsf.answer("bsub", out="bsub_submitted.txt")  # every job is 4242
    overrides = ["cluster=summit", "sweep=wsd_tiny", f"sweeps_root={tmp_path}"]
    (trunks, trunk_id), (branches, _) = submit_sweep(overrides, calibrate=False)
    assert {s.name for s in trunks.steps} == {"n14.8k-trunk", "n54.6k-trunk", "n138k-trunk"}
    assert len(branches.steps) == 12 and not any(s.name.endswith("-trunk") for s in branches.steps)
    assert trunks.dependency is None and str(branches.dependency) == f"afterok:{trunk_id}"
    jobs = tmp_path / "wsd_tiny" / "jobs"
    assert "#BSUB -w " not in (jobs / f"{trunks.name}.lsf").read_text()
    assert '#BSUB -w "done(4242)"\n' in (jobs / f"{branches.name}.lsf").read_text()
    assert [c for c in fake_lsf.calls() if c[0] == "bsub"] == [
        ["bsub", str(jobs / f"{trunks.name}.lsf")],
        ["bsub", "-w", "done(4242)", str(jobs / f"{branches.name}.lsf")],
    ]
    with JobDB(tmp_path / "wsd_tiny" / "jobdb.sqlite") as db:
        for run in db.runs("wsd_tiny"):
            if run.role == "branch":
                db.finish(run.config_hash, "cancelled", detail="test")
    fake_lsf.answer("bjobs", out="bjobs_json.txt")  # 4242 is running
    ((again, _),) = submit_sweep(overrides, calibrate=False)
    assert len(again.steps) == 12 and str(again.dependency) == "afterok:4242"  # the queued trunk's job
    assert fake_lsf.calls()[-1] == ["bsub", "-w", "done(4242)", str(jobs / f"{again.name}.lsf")]
