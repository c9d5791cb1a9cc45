"""The one lane shell (launcher/schedulers/lane.sh.j2), run for real under both schedulers' base templates.

One packed job is rendered for Slurm (slurm/base.sbatch.j2) and for LSF (lsf/base.j2) and its lanes run
with bash on this machine: the scheduler's variables are faked in the environment, and stand-ins on
PATH (`srun`, `jsrun`: run the command after their options; `scancel`) and as the job's `ladder` (`train`
counts a start and exits with the code it is given; `submit` records the continuation) keep anything
real from being contacted. Both must start the same steps the same number of times for every exit
code class of launcher.policy, write the same step log, stop alike at the walltime warning, and run an
array task's own run under the same key.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from launcher.config.cluster import ClusterProfile
from launcher.config.compose import compose
from launcher.config.validate import validate
from launcher.policy import ExitCode
from launcher.schedulers import get_scheduler
from launcher.schedulers.base import BatchJob, Step
from launcher.schedulers.lsf import from_lsf
from test_lsf import shellcheck

TRIES = 3
LADDER = """#!/bin/bash
# `ladder train ... run_dir=D exit_code=N`: one start of run D (with the job key and attempt the lane
# shell gave it), then exit N; with exit_code=wait, run until USR2, then exit as a checkpointed run
# does; with exit_code=hang, the first start runs until it is killed (D/hanging says so), later ones
# complete; `ladder hang-watch --pid P --run-dir D ...`: while P runs, a hanging run is reported hung on
# host n7, and once P is gone, exit 4 as the watcher does; `ladder submit ...`: record the continuation
case $1 in
  train)
    for arg; do
      case $arg in run_dir=*) dir=${arg#run_dir=} ;; exit_code=*) code=${arg#exit_code=} ;; esac
    done
    mkdir -p "$dir" && echo "$SCALELADDER_JOB_KEY $SCALELADDER_JOB_ATTEMPT" >> "$dir/starts"
    if [ "$code" = wait ]; then
      trap 'exit REQUEUE' USR2
      echo $$ > "$LANES_STEPS/$$"
      while :; do sleep 0.05; done
    fi
    if [ "$code" = hang ]; then
      if [ "$(wc -l < "$dir/starts")" -eq 1 ]; then
        touch "$dir/hanging"
        while :; do sleep 0.05; done
      fi
      code=0
    fi
    exit "$code" ;;
  hang-watch)
    while [ $# -gt 0 ]; do
      case $1 in --pid) pid=$2 ;; --run-dir) dir=$2 ;; esac
      shift
    done
    while kill -0 "$pid" 2> /dev/null; do
      if [ -e "$dir/hanging" ]; then
        rm "$dir/hanging" && echo n7
        while kill -0 "$pid" 2> /dev/null; do sleep 0.05; done
        exit HUNG
      fi
      sleep 0.05
    done ;;
  submit) echo "$*" >> "$LANES_CALLS" ;;
  *) exit 99 ;;
esac
""".replace("REQUEUE", str(int(ExitCode.REQUEUE))).replace("HUNG", str(int(ExitCode.HUNG)))
# a step launcher's stand-in: record its words (in $LANES_LAUNCHES), drop its options (one word each, as the
# adapters write them) and run the rest with the signal dispositions a real launcher's task starts with (a
# lane may ignore USR2; a task does not)
LAUNCHER = """#!/usr/bin/env python3
import os, signal, sys
args = sys.argv[1:]
with open(os.environ["LANES_LAUNCHES"], "a") as log:
    log.write(" ".join(args) + "\\n")
while args[0].startswith("-"):
    args.pop(0)
signal.signal(signal.SIGUSR2, signal.SIG_DFL)
os.execvp(args[0], args)
"""
# Slurm's scancel --signal=USR2 <job>: USR2 to every running step
SCANCEL = """#!/bin/bash
echo "scancel $*" >> "$LANES_CALLS"
for file in "$LANES_STEPS"/*; do kill -s USR2 "$(cat "$file")"; done
"""
# the job's runs, one per exit code: the policy's (0 completed, 1 failed, 2 bad input, 3 diverged, 75
# checkpointed for the next job) and one it does not name (a failure); how many starts each gets
STARTS = {0: 1, 1: TRIES, 2: 1, 3: 1, 75: 1, 4: TRIES}
# the faked scheduler variables of a packed job, and its key in the step log
JOBS = {
    "slurm": ("111", {"SLURM_JOB_ID": "111", "SLURM_JOB_NODELIST": "n1"}),
    "summit": ("222", {"LSB_JOBID": "222", "LSB_JOBINDEX": "0"}),
}


def profile(name: str) -> ClusterProfile:
    return validate(
        ClusterProfile,
        compose([f"cluster={name}", "cluster.modules=[]", "cluster.setup=[]", "cluster.step_launch_delay_s=0"])[
            "cluster"
        ],
        "cluster",
    )


@pytest.fixture
def stand_ins(tmp_path: Path) -> Path:
    """A bin folder with the stand-ins; the job's `ladder` is bin/ladder."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("ladder", LADDER), ("srun", LAUNCHER), ("jsrun", LAUNCHER), ("scancel", SCANCEL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir


def packed_job(tmp_path: Path, ladder: Path, codes, lanes: int = 2, array: bool = False, nodes: int = 1) -> BatchJob:
    """The same job for both schedulers: a run per exit code in ``codes``, in lanes (or one per array task)."""
    sweep_dir = tmp_path / "sweep"
    steps = tuple(
        Step(
            index=i,
            name=f"exit{code}",
            config_hash=f"{i:016x}",
            run_dir=str(sweep_dir / "runs" / f"exit{code}"),
            overrides=(f"run_dir={sweep_dir / 'runs' / f'exit{code}'}", f"exit_code={code}"),
            nodes=1,
            ranks=1,
            hours=0.1,
            tries=TRIES,
        )
        for i, code in enumerate(codes)
    )
    jobs = sweep_dir / "jobs"
    return BatchJob(
        name="lanes-001",
        sweep="lanes",
        sweep_dir=str(sweep_dir),
        workdir=str(tmp_path),
        steps=steps,
        lanes=lanes,
        nodes=nodes,
        walltime_min=30,
        signal_s=600,
        ladder=(str(ladder),),
        manifest=str(jobs / "lanes-001.json"),
        output=str(jobs / "lanes-001-%j.out"),
        steps_log=str(jobs / "lanes-001.steps"),
        array=array,
        array_throttle=1,
    )


def start(name: str, job: BatchJob, scheduler_env: dict[str, str], bin_dir: Path, tmp_path: Path) -> subprocess.Popen:
    """Render ``job`` with profile ``name`` (shellcheck-clean) and start the script with bash, as its job would."""
    script = tmp_path / f"{name}.sh"
    script.write_text(get_scheduler(profile(name)).render(job))
    shellcheck(script)
    for old in (
        tmp_path / f"{name}.calls",
        tmp_path / f"{name}.launches",
        Path(job.steps_log),
        *(Path(s.run_dir) / "starts" for s in job.steps),
    ):
        old.unlink(missing_ok=True)
    (tmp_path / "steps").mkdir(exist_ok=True)
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "TMPDIR": str(tmp_path),
        "LANES_CALLS": str(tmp_path / f"{name}.calls"),
        "LANES_LAUNCHES": str(tmp_path / f"{name}.launches"),
        "LANES_STEPS": str(tmp_path / "steps"),
        **scheduler_env,
    }
    return subprocess.Popen(
        ["bash", str(script)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen, job: BatchJob) -> tuple[int, str, list[list[str]], dict[str, list[str]]]:
    """Wait for the script; (exit status, output, step log rows without the time, each run's starts)."""
    try:
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    log = Path(job.steps_log)
    rows = [line.split("\t")[:4] for line in log.read_text().splitlines()] if log.exists() else []
    starts = {
        s.name: (Path(s.run_dir) / "starts").read_text().splitlines()
        for s in job.steps
        if (Path(s.run_dir) / "starts").exists()
    }
    return proc.returncode, out, rows, starts


def run_script(name: str, job: BatchJob, scheduler_env: dict[str, str], bin_dir: Path, tmp_path: Path):
    """Run the job's script to its end."""
    return finish(start(name, job, scheduler_env, bin_dir, tmp_path), job)


def test_slurm_and_lsf_lanes_retry_alike(tmp_path, stand_ins):
    job = packed_job(tmp_path, stand_ins / "ladder", STARTS)
    runs = {}
    for name, (key, env) in JOBS.items():
        rc, out, rows, starts = run_script(name, job, env, stand_ins, tmp_path)
        assert rc == 1, out  # a run failed in the job
        assert {row[0] for row in rows} == {key}
        # every start got the step log's job key and attempt (what its state.json records)
        for step in job.steps:
            code = int(step.name.removeprefix("exit"))
            assert starts[step.name] == [f"{key} {attempt}" for attempt in range(1, STARTS[code] + 1)]
        calls = (tmp_path / f"{name}.calls").read_text().splitlines()
        assert calls == [f"submit --continue-from {key} --manifest {job.manifest}"]
        runs[name] = sorted(tuple(row[1:]) for row in rows)
    assert runs["slurm"] == runs["summit"]
    assert runs["slurm"] == sorted(
        (f"exit{code}", str(attempt), str(code)) for code, n in STARTS.items() for attempt in range(1, n + 1)
    )
    assert set(STARTS) >= {int(code) for code in ExitCode}


def test_the_walltime_warning_stops_both_alike(tmp_path, stand_ins):
    """USR2 to the batch shell: the running step checkpoints (75), no new run starts, the job continues."""
    job = packed_job(tmp_path, stand_ins / "ladder", ["wait", 0], lanes=1)
    for name, (key, env) in JOBS.items():
        proc = start(name, job, env, stand_ins, tmp_path)
        deadline = time.time() + 60
        while not list((tmp_path / "steps").iterdir()) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGUSR2)  # Slurm's --signal=B:USR2, LSF's -wa USR2 (to the batch shell)
        rc, out, rows, starts = finish(proc, job)
        for file in (tmp_path / "steps").iterdir():
            file.unlink()
        assert rc == 0, out
        assert rows == [[key, "exitwait", "1", str(int(ExitCode.REQUEUE))]] and list(starts) == ["exitwait"]
        calls = (tmp_path / f"{name}.calls").read_text().splitlines()
        assert calls[-1] == f"submit --continue-from {key} --manifest {job.manifest}"
        assert calls[:-1] == (["scancel --signal=USR2 111"] if name == "slurm" else [])


def test_an_array_task_runs_its_own_run_under_the_adapters_key(tmp_path, stand_ins):
    """Array task 1 (Slurm's SLURM_ARRAY_TASK_ID=1, LSF's element LSB_JOBINDEX=2) runs run 1 as <job>_1."""
    job = packed_job(tmp_path, stand_ins / "ladder", STARTS, array=True)
    for name, key, env in (
        (
            "slurm",
            "111_1",
            {
                "SLURM_JOB_ID": "112",
                "SLURM_ARRAY_JOB_ID": "111",
                "SLURM_ARRAY_TASK_ID": "1",
                "SLURM_JOB_NODELIST": "n1",
            },
        ),
        ("summit", from_lsf("222[2]"), {"LSB_JOBID": "222", "LSB_JOBINDEX": "2"}),
    ):
        rc, out, rows, starts = run_script(name, job, env, stand_ins, tmp_path)
        assert rc == 1, out  # run 1 exits 1 in every try
        assert key.endswith("_1") and list(starts) == [job.steps[1].name]
        assert rows == [[key, job.steps[1].name, str(attempt), "1"] for attempt in range(1, TRIES + 1)]


def test_a_hung_step_is_killed_and_retried_alike(tmp_path, stand_ins):
    """The step's hang watcher reports it hung on n7: the lane kills the step the scheduler's way (srun:
    SIGTERM, which a real srun turns into SIGKILL for every task; LSF: SIGKILL to the step's session), logs
    it as exit 4 and starts it again; Slurm's retry leaves n7 out (srun --exclude), the job having a node
    to spare; jsrun has no such option."""
    job = packed_job(tmp_path, stand_ins / "ladder", ["hang"], lanes=1, nodes=2)
    hung = str(int(ExitCode.HUNG))
    for name, (key, env) in JOBS.items():
        rc, out, rows, starts = run_script(name, job, env, stand_ins, tmp_path)
        assert rc == 0, out
        assert rows == [[key, "exithang", "1", hung], [key, "exithang", "2", "0"]], out
        assert starts == {"exithang": [f"{key} 1", f"{key} 2"]}
        assert "run exithang: step 2 starts (steps of this job hung on n7)" in out
        first, second = (tmp_path / f"{name}.launches").read_text().splitlines()
        assert "--exclude" not in first
        assert ("--exclude=n7" in second.split()) == (name == "slurm"), second
