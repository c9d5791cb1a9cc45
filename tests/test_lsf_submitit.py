"""submitit on LSF through the ``submitit`` entry points of scaleladder.

Two stand-ins for LSF, neither of which is LSF: the recorded one (tests/data/lsf/bin/recorded) prints
outputs written from IBM's documented formats, to check the script and the command line; the local one
(tests/data/lsf/bin/local-lsf) runs the job script's body on this machine, to check that a submitted
function really runs, returns its result, and survives a walltime warning by checkpoint and brequeue.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import pytest
import submitit

from launcher.errors import UserError
from launcher.schedulers.submitit_lsf import LsfExecutor, LsfInfoWatcher, LsfJob, LsfJobEnvironment, load_profile
from test_lsf import FakeLsf, assert_golden, local_lsf, shellcheck  # noqa: F401 (local_lsf: a fixture)


@pytest.fixture(autouse=True)
def fresh_watcher(monkeypatch):
    """A watcher per test: each test's LSF stand-in numbers its jobs from 5000 again."""
    monkeypatch.setattr(LsfJob, "watcher", LsfInfoWatcher(delay_s=60))


def add(a, b):
    return a + b


@pytest.fixture
def recorded_lsf(tmp_path, monkeypatch) -> FakeLsf:
    fake = FakeLsf(tmp_path, monkeypatch)
    fake.answer("bsub", out="bsub_submitted.txt")
    return fake


def final_state(job: LsfJob, timeout_s: float = 30.0) -> str:
    """The job's bjobs state once LSF has it finished (its result can appear before its process ends)."""
    deadline = time.time() + timeout_s
    while (state := job.watcher.get_state(job.job_id, mode="force")) not in ("DONE", "EXIT") and time.time() < deadline:
        time.sleep(0.2)
    return state


def summit_here():
    """Summit's profile with its steps started on this machine (no jsrun, no modules)."""
    return dataclasses.replace(load_profile("summit"), step_launcher="local", modules=[])


def test_autoexecutor_picks_the_lsf_plugin(recorded_lsf, tmp_path):
    executor = submitit.AutoExecutor(folder=tmp_path / "logs", cluster="lsf")
    assert isinstance(executor._executor, LsfExecutor)
    assert executor._executor.profile.name == "lsf"
    assert (
        submitit.AutoExecutor(folder=tmp_path / "logs", cluster="lsf", lsf_profile="summit")._executor.profile.name
        == "summit"
    )


def test_no_bsub_no_executor(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert LsfExecutor.affinity() == -1
    with pytest.raises(RuntimeError, match="bsub"):
        LsfExecutor(tmp_path)


def test_submission_script_matches_golden_and_job_id_is_parsed(recorded_lsf, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "logs" / "%j"
    executor = submitit.AutoExecutor(folder=folder, cluster="lsf", lsf_profile="summit")
    executor.update_parameters(
        name="probe",
        timeout_min=30,
        nodes=2,
        tasks_per_node=6,
        gpus_per_node=6,
        lsf_project="ABC123",
        lsf_signal_delay_min=3,
    )
    job = executor.submit(add, 1, 2)
    assert isinstance(job, LsfJob) and job.job_id == "4242"
    script = job.paths.submission_file
    command = recorded_lsf.calls()[-1]
    assert command[0] == "bsub" and Path(command[1]).resolve() == script.resolve()
    shellcheck(script)
    places = {str(tmp_path): "<TMP>", sys.executable: "<PYTHON>"}
    assert_golden("submitit_job.lsf", script.read_text(), places)

    jobs = executor.map_array(add, [1, 2, 3], [10, 20, 30])
    assert [j.job_id for j in jobs] == ["4242_0", "4242_1", "4242_2"]  # tasks from 0, LSF's elements 1-3
    assert all(j.paths.submitted_pickle.exists() for j in jobs)
    array_script = Path(recorded_lsf.calls()[-1][1]).resolve()  # one script for the whole array
    shellcheck(array_script)
    assert_golden("submitit_array.lsf", array_script.read_text(), places)


def test_bad_parameters_fail_at_update(recorded_lsf, tmp_path):
    executor = submitit.AutoExecutor(folder=tmp_path, cluster="lsf", lsf_profile="summit")
    with pytest.raises(ValueError, match="whole nodes"):
        executor.update_parameters(mem_gb=32)
    with pytest.raises(UserError, match="tasks_per_node"):
        executor.update_parameters(tasks_per_node=12, gpus_per_node=6)  # 12 ranks of 7 cores: 2 nodes, not 1
    assert executor._executor.parameters["tasks_per_node"] == 1  # the refused update left nothing behind
    with pytest.raises(UserError, match="lsf_profile"):
        LsfExecutor(tmp_path, profile="nowhere")


def test_a_dependency_becomes_the_scripts_wait_condition(recorded_lsf, tmp_path):
    """lsf_dependency (Slurm's spelling, as for sbatch through submitit) is rendered as #BSUB -w."""
    executor = submitit.AutoExecutor(folder=tmp_path / "logs", cluster="lsf", lsf_profile="summit")
    with pytest.raises(UserError, match="--dependency"):
        executor.update_parameters(lsf_dependency="when:4242")
    executor.update_parameters(lsf_dependency="afterok:4242:4300_1")
    job = executor.submit(add, 1, 2)
    assert '#BSUB -w "done(4242) && done(4300[2])"\n' in job.paths.submission_file.read_text()


def test_job_environment_reads_lsf_and_jsrun(monkeypatch, tmp_path):
    rankfile = tmp_path / "rankfile"
    rankfile.write_text("batch3\n" + "a01n01\n" * 6 + "a01n02\n" * 6)
    for name, value in {
        "SUBMITIT_EXECUTOR": "lsf",
        "LSB_JOBID": "4300",
        "LSB_JOBINDEX": "2",
        "JSM_NAMESPACE_SIZE": "12",
        "JSM_NAMESPACE_RANK": "7",
        "JSM_NAMESPACE_LOCAL_RANK": "1",
        "JSM_NAMESPACE_LOCAL_SIZE": "6",
        "LSB_DJOB_RANKFILE": str(rankfile),
    }.items():
        monkeypatch.setenv(name, value)
    env = submitit.JobEnvironment()
    assert isinstance(env, LsfJobEnvironment)
    assert (env.job_id, env.global_rank, env.local_rank, env.num_tasks, env.num_nodes, env.node) == (
        "4300_1",
        7,
        1,
        12,
        2,
        1,
    )  # element 2 of LSF's array is task 1
    assert env.hostnames == ["a01n01", "a01n02"]
    monkeypatch.setenv("LSB_JOBINDEX", "0")
    assert submitit.JobEnvironment().job_id == "4300"


def test_a_submitted_function_runs_and_returns(local_lsf, tmp_path):
    executor = submitit.AutoExecutor(folder=tmp_path / "logs", cluster="lsf", lsf_profile=summit_here())
    executor.update_parameters(timeout_min=5)
    job = executor.submit(add, 2, 3)
    assert job.result() == 5
    jobs = executor.map_array(add, [1, 2, 3], [10, 20, 30])
    assert [j.result() for j in jobs] == [11, 22, 33]
    assert final_state(jobs[1]) == "DONE"
    # each element's logs are where submitit reads them: named by its task from 0, not LSF's %I from 1
    assert all(f"JobEnvironment(job_id={j.job_id}," in (j.stdout() or "") for j in jobs), [j.paths.stdout for j in jobs]


def test_cancel_kills_the_job(local_lsf, tmp_path):
    executor = submitit.AutoExecutor(folder=tmp_path / "logs", cluster="lsf", lsf_profile=summit_here())
    job = executor.submit(time.sleep, 600)
    job.cancel()
    assert final_state(job) == "EXIT"
    assert job.watcher.get_info(job.job_id, mode="force")["ExitReason"].startswith("TERM_OWNER")


class Countdown(submitit.helpers.Checkpointable):
    """Counts to `target`; the first run stops one short and waits for the walltime warning (at most 60 s)."""

    def __init__(self, marker: str):
        self.marker = marker
        self.done = 0

    def __call__(self, target: int) -> tuple[int, int, int]:
        runs = len(list(Path(self.marker).parent.glob("run-*"))) + 1
        Path(self.marker).parent.joinpath(f"run-{runs}").touch()
        start, deadline = self.done, time.time() + 60
        while self.done < target:
            time.sleep(0.05)
            if runs > 1 or self.done < target - 1:
                self.done += 1
                Path(self.marker).write_text(str(self.done))
            elif time.time() > deadline:
                return -1, runs, start
        return self.done, runs, start


def test_walltime_warning_checkpoints_and_requeues(local_lsf, tmp_path):
    executor = submitit.AutoExecutor(folder=tmp_path / "logs", cluster="lsf", lsf_profile=summit_here())
    executor.update_parameters(timeout_min=60)
    runs = tmp_path / "count"
    runs.mkdir()
    job = executor.submit(Countdown(str(runs / "marker")), 10)
    deadline = time.time() + 60
    marker = runs / "marker"
    while time.time() < deadline and int((marker.exists() and marker.read_text()) or 0) < 3:
        time.sleep(0.1)
    job._interrupt()  # what LSF does -wt minutes before the walltime: USR2 to the job
    done, count, start = job.result()
    # the job checkpointed, put itself back with brequeue, and ran again from its checkpoint under its id
    assert (done, count) == (10, 2) and start > 0
    assert job.job_id == "5000" and final_state(job) == "DONE"
