"""A packed sweep on LSF: the scripts `ladder render` writes for Summit, and a dry run of their bodies here.

The golden scripts (tests/golden/summit/, UPDATE_GOLDEN=1 rewrites them) pin what a Summit submission
looks like; every script passes shellcheck. The dry run submits a tiny sweep with the Summit profile's
steps started on this machine (cluster.step_launcher=local, the CPU, gloo) to the local LSF stand-in
(tests/data/lsf/bin/local-lsf, not LSF: it runs the job script with LSB_JOBID set and honours
`-w "ended(id)"`), sends the walltime warning, and follows the runs through their checkpoint, the
job's continuation and `ladder status`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import tree_progress, wait_while_progressing
from launcher.sweep.submit import render_sweep
from test_lsf import assert_golden, local_lsf, shellcheck  # noqa: F401 (local_lsf: a fixture)

SUMMIT = ["cluster=summit", "cluster.account=ABC123"]


@pytest.mark.parametrize(
    "name,overrides",
    [
        ("sweep_tiny.lsf", ["sweep=tiny", *SUMMIT]),  # 6 one-GPU runs: 6 lanes on one node
        ("sweep_multinode.lsf", ["sweep=tiny", "sweep.nodes=2", "sweep.ranks_per_run=12", *SUMMIT]),
        ("sweep_array.lsf", ["sweep=tiny", "cluster.submission=array", *SUMMIT]),
        ("sweep_generic_lsf.lsf", ["sweep=tiny", "cluster=lsf", "cluster.device_peak_flops=1.0e+14"]),
    ],
)
def test_render_writes_the_golden_scripts(name, overrides, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    [script] = render_sweep([*overrides, f"sweeps_root={tmp_path}/sweeps"], tmp_path / "out", calibrate=False)
    text = script.read_text()
    shellcheck(script)
    assert_golden(
        name,
        text,
        {str(tmp_path): "<TMP>", str(Path(sys.executable).parent / "ladder"): "<LADDER>", sys.executable: "<PYTHON>"},
    )
    manifest = json.loads(script.with_suffix(".json").read_text())
    directives = [line for line in text.splitlines() if line.startswith("#BSUB")]
    if "cluster=lsf" in overrides:
        assert "#BSUB -x" in directives and not any("-nnodes" in d or "-alloc_flags" in d for d in directives)
        return
    assert sum("-alloc_flags" in d for d in directives) == 1  # LSF reads only one
    assert f"#BSUB -nnodes {manifest['nodes']}" in directives
    runs = manifest["runs"]
    ranks = runs[0]["ranks"]
    assert text.count(f"jsrun -n{ranks} -a1 -c7 -g1 -r{min(ranks, 6)} -bpacked:7 ") == len(runs)


def ladder(*args: str, cwd: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "launcher.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_ladder_render_writes_bsub_scripts_into_out(tmp_path):
    printed = ladder(
        "render",
        "sweep=tiny",
        *SUMMIT,
        f"sweeps_root={tmp_path}/sweeps",
        f"out={tmp_path}/out",
        "--no-calibrate",
        cwd=tmp_path,
    )
    [script] = [Path(line) for line in printed.split()]
    assert script.parent == tmp_path / "out" and script.suffix == ".lsf"
    assert script.read_text().startswith('#!/bin/bash\n#BSUB -J "tiny-001"\n#BSUB -P "ABC123"\n')
    assert not (tmp_path / "sweeps" / "tiny" / "jobs").exists()  # rendering submits nothing


DRY_RUN = [
    "sweep=tiny",
    "sweep.budgets=[1.0e+10,2.0e+10]",
    "sweep.params=[60000]",
    "sweep.overrides=['train.micro_batch_size=8','train.val_every=1000','train.checkpoint_every=1000']",
    "cluster=summit",
    "cluster.step_launcher=local",
    "cluster.modules=[]",
    "cluster.device=cpu",
    "cluster.dist_backend=gloo",
    "cluster.precision=fp32",
    "cluster.network_interface=null",
]


def wait_for(what: str, check, root: Path):
    """``check()`` once true, for as long as the sweep and the LSF stand-in under ``root`` keep changing."""
    return wait_while_progressing(check, what, lambda: tree_progress(root), every=0.2)


def stat(lsf_dir: Path, job_id: str) -> str:
    path = lsf_dir / "jobs" / job_id / "elem-0.json"
    return json.loads(path.read_text())["stat"] if path.exists() else ""


@pytest.mark.slow
def test_dry_run_of_a_packed_summit_sweep(local_lsf, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    sweeps = tmp_path / "sweeps"
    overrides = [*DRY_RUN, f"sweeps_root={sweeps}"]
    out = ladder("submit", *overrides, "--no-calibrate", cwd=tmp_path)
    assert out.startswith("submitted 5000 tiny-001: 2 runs in 2 lanes on 1 nodes")
    script = (sweeps / "tiny" / "jobs" / "tiny-001.lsf").read_text()
    assert "#BSUB -nnodes 1" in script and "#BSUB -wa USR2" in script

    # the walltime warning, as LSF sends it, once both runs are training
    runs = sweeps / "tiny" / "runs"
    wait_for(
        "both runs to train", lambda: len([p for p in runs.glob("*/metrics.jsonl") if p.stat().st_size]) == 2, tmp_path
    )
    subprocess.run(["bkill", "-s", "USR2", "5000"], check=True, capture_output=True)

    # the runs checkpoint (exit 75); the job submits what is left, to start once it has ended
    wait_for(
        "the continuation to end",
        lambda: stat(local_lsf, "5000") == "DONE" and stat(local_lsf, "5001") == "DONE",
        tmp_path,
    )
    jobs = sweeps / "tiny" / "jobs"
    first = [line.split("\t") for line in (jobs / "tiny-001.steps").read_text().splitlines()]
    assert sorted(cells[3] for cells in first) == ["75", "75"]
    assert json.loads((local_lsf / "jobs" / "5001" / "meta.json").read_text())["opts"]["-w"] == "ended(5000)"
    second = [line.split("\t") for line in (jobs / "tiny-001.1.steps").read_text().splitlines()]
    assert sorted(cells[:2] for cells in second) == [["5001", name] for name in sorted(c[1] for c in first)]
    assert [cells[3] for cells in second] == ["0", "0"]
    assert not (local_lsf / "jobs" / "5002").exists()  # nothing left: no third job

    # each run resumed from its checkpoint and finished; `ladder status` folds it in through bjobs
    for state in runs.glob("*/state.json"):
        assert json.loads(state.read_text())["status"] == "completed"
    status = ladder("status", *overrides, cwd=tmp_path)
    assert "2 completed" in status
