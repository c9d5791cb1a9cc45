"""Rendering job scripts: golden Frontier scripts, shellcheck on every script, quoting, site validation.

UPDATE_GOLDEN=1 pytest tests/test_render.py rewrites tests/golden/frontier/ from the current templates.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from launcher.config.cluster import ClusterProfile
from launcher.config.compose import compose
from launcher.config.validate import validate
from launcher.errors import UserError
from launcher.schedulers import get_scheduler
from launcher.schedulers.base import Dependency, Step, quote_with_variables
from launcher.sweep.submit import JobContext, build_jobs, render_main

GOLDEN = Path(__file__).parent / "golden" / "frontier"
SWEEP_DIR = Path("/lustre/orion/abc123/proj-shared/sweeps/golden")
WORKDIR = Path("/lustre/orion/abc123/proj-shared/scaleladder")
SETUP = "source /lustre/orion/abc123/proj-shared/venvs/ladder/bin/activate"


def profile(name: str, *overrides: str) -> ClusterProfile:
    return validate(ClusterProfile, compose([f"cluster={name}", *overrides])["cluster"], "cluster")


def frontier(*overrides: str) -> ClusterProfile:
    return profile(
        "frontier", "cluster.account=ABC123", "cluster.ladder_command=ladder", f"cluster.setup=[{SETUP!r}]", *overrides
    )


def steps(n: int, hours, nodes: int = 1, ranks: int = 1, prefix: str = "n") -> list[Step]:
    out = []
    for i in range(n):
        name = f"{prefix}{20 + 10 * i}M-d{i + 1}G"
        run_dir = SWEEP_DIR / "runs" / name
        overrides = (
            "model=gpt_neox/pythia_160m",
            f"model.n_layer={2 + i % 4}",
            f"model.d_model={256 + 64 * i}",
            f"train.tokens={(i + 1) * 10**9}",
            "train.max_steps=null",
            f"run_dir={run_dir}",
            "wandb.group=golden",
            f"wandb.name={name}",
            "cluster=frontier",
        )
        out.append(
            Step(
                index=0,
                name=name,
                config_hash=f"{i:016x}",
                run_dir=str(run_dir),
                overrides=overrides,
                nodes=nodes,
                ranks=ranks,
                hours=hours[i] if isinstance(hours, list) else hours,
                tries=3,
            )
        )
    return out


def render_all(p: ClusterProfile, runs: list[Step], **ctx) -> dict[str, str]:
    scheduler = get_scheduler(p)
    jobs = build_jobs(scheduler, runs, JobContext("golden", SWEEP_DIR, WORKDIR, p, **ctx))
    scheduler.validate(jobs)
    return {job.name: scheduler.render(job) for job in jobs}


SCENARIOS = {
    # 24 one-GCD runs: packed into lanes on whole nodes
    "packed": lambda: render_all(frontier(), steps(24, [0.4 + 0.07 * i for i in range(24)])),
    # runs over 2 nodes x 8 GCDs: RCCL's network settings for those steps only
    "multinode": lambda: render_all(frontier(), steps(3, 1.0, nodes=2, ranks=16, prefix="m")),
    # one run per array task, at most 4 at once
    "array": lambda: render_all(frontier("cluster.submission=array"), steps(5, [0.5, 1.0, 1.5, 0.2, 0.1])),
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_frontier_scripts_match_golden(scenario):
    rendered = SCENARIOS[scenario]()
    for name, text in rendered.items():
        path = GOLDEN / f"{scenario}-{name}.sbatch"
        if os.environ.get("UPDATE_GOLDEN"):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        assert path.exists(), f"no golden file {path}; run with UPDATE_GOLDEN=1"
        assert text == path.read_text(), f"{path} differs from the rendered script (UPDATE_GOLDEN=1 rewrites)"
    stale = {p.name for p in GOLDEN.glob(f"{scenario}-*.sbatch")} - {f"{scenario}-{n}.sbatch" for n in rendered}
    assert not stale, f"golden files no scenario renders: {stale}"


def shellcheck(text: str, tmp_path: Path, name: str) -> None:
    assert shutil.which("shellcheck"), "shellcheck is needed (apt-get install shellcheck; make setup does it)"
    path = tmp_path / name
    path.write_text(text)
    done = subprocess.run(["shellcheck", "--shell=bash", "--severity=style", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0


def test_every_rendered_script_passes_shellcheck(tmp_path):
    rendered = {f"{s}-{n}": t for s, make in SCENARIOS.items() for n, t in make().items()}
    for site in ("slurm", "dev_slurm"):
        for submission in ("packed", "array"):
            p = profile(
                site,
                f"cluster.submission={submission}",
                "cluster.partition=gpu",
                "cluster.qos=normal",
                "cluster.directives=['--constraint=a100']",
                "cluster.step_args=['--mpi=pmix']",
            )
            runs = steps(6, 0.2, nodes=2 if site == "slurm" else 1, ranks=2)
            rendered.update({f"{site}-{submission}-{n}": t for n, t in render_all(p, runs).items()})
    rendered.update(
        {
            f"continuation-{n}": t
            for n, t in render_all(
                frontier(),
                steps(2, 0.3),
                dependency=Dependency("afterany", ("123",)),
                continuation_of="123",
                parent="golden-001",
            ).items()
        }
    )
    assert len(rendered) >= 9
    for name, text in rendered.items():
        shellcheck(text, tmp_path, f"{name}.sbatch")


def test_frontier_scripts_follow_olcf():
    (packed,) = SCENARIOS["packed"]().values()
    (multi,) = SCENARIOS["multinode"]().values()
    for text in (packed, multi):
        assert "torchrun" not in text
        assert "#SBATCH --account=ABC123" in text and "#SBATCH --partition=batch" in text
        assert "#SBATCH --signal=B:USR2@600" in text
        assert 'export NCCL_SOCKET_IFNAME="hsn0"' in text
        assert 'export MIOPEN_USER_DB_PATH="/tmp/$USER-miopen-$SLURM_JOB_ID"' in text
        assert 'srun --nodes="$SLURM_NNODES" --ntasks-per-node=1 mkdir -p "$MIOPEN_USER_DB_PATH"' in text
        assert "module load rccl-net-plugin" in text and SETUP in text
        assert re.search(r"--cpus-per-task=7 --gpus-per-task=1 --gpu-bind=closest", text)
    srun_single = [line for line in packed.splitlines() if "cmd=(" in line]
    assert srun_single and all("--nodes=1 --ntasks=1" in line for line in srun_single)
    assert "NCCL_NET" not in packed and "disable_rdzv_get" not in packed  # one node: RCCL's plugin must stay off
    srun_multi = [line for line in multi.splitlines() if "cmd=(" in line]
    assert srun_multi and all(
        line.count("--network=disable_rdzv_get") == 1
        and "cmd=(env " in line
        and ' NCCL_NET="OFI" ' in line
        and "--nodes=2 --ntasks=16" in line
        for line in srun_multi
    )
    lanes = int(re.search(r"for _ in \$\(seq (\d+)\)", packed).group(1))
    nodes = int(re.search(r"#SBATCH --nodes=(\d+)", packed).group(1))
    assert lanes == 8 * nodes  # whole nodes, one lane per GCD
    assert "sleep 1.0" in packed  # OLCF: a second between srun launches


def test_values_reach_the_script_quoted(tmp_path):
    hostile = "$(touch PWNED) `touch PWNED2` ; rm -rf / 'x\" \\ ${HOME}"
    base = frontier()
    p = dataclasses.replace(
        base, account="my account", env={**base.env, "EVIL": hostile}, ladder_command="'/opt/my ladder/bin/ladder'"
    )
    runs = steps(2, 0.2)
    runs[0] = dataclasses.replace(runs[0], overrides=(*runs[0].overrides, f"model.tag={hostile}"))
    (text,) = render_all(p, runs).values()
    shellcheck(text, tmp_path, "hostile.sbatch")
    assert "#SBATCH --account='my account'" in text
    assert "LADDER=('/opt/my ladder/bin/ladder')" in text
    # run the script's own lines that define the environment and the commands: nothing may execute
    lines = [line for line in text.splitlines() if line.startswith("export EVIL=") or " cmd=(" in line][:2]
    probe = tmp_path / "probe.sh"
    probe.write_text(
        "\n".join(line.strip().removesuffix(" ;;") for line in lines)
        + '\nprintf "%s\\n" "$EVIL"\nprintf "%s\\n" "${cmd[-1]}"\n'
    )
    done = subprocess.run(
        ["bash", str(probe)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"HOME": "/home/me", "PATH": os.environ["PATH"]},
    )
    assert done.returncode == 0, done.stderr
    evil, tag = done.stdout.splitlines()
    assert evil == hostile.replace("${HOME}", "/home/me")  # variables expand, nothing else does
    assert tag == f"model.tag={hostile}"  # overrides are literal words
    assert not list(tmp_path.glob("PWNED*"))


def test_env_values_expand_only_variables():
    assert quote_with_variables("/tmp/$USER-x-${SLURM_JOB_ID}") == '"/tmp/$USER-x-${SLURM_JOB_ID}"'
    assert quote_with_variables('$(id) `id` ${X:-y} "q"') == '"\\$(id) \\`id\\` \\${X:-y} \\"q\\""'


def test_directives_refuse_what_sbatch_cannot_read():
    with pytest.raises(UserError, match="SBATCH"):
        render_all(dataclasses.replace(frontier(), account="it's"), steps(1, 0.1))
    with pytest.raises(UserError, match="cluster.env"):
        render_all(dataclasses.replace(frontier(), env={"BAD-NAME": "1"}), steps(1, 0.1))


def test_site_policy_is_enforced_before_submission():
    with pytest.raises(UserError, match=r"cluster.walltime_min: 180 min is more than the 120 min"):
        render_all(frontier("cluster.walltime_min=180"), steps(2, 0.5))  # 1 node: bin 5 allows 2 h
    with pytest.raises(UserError, match="cluster.max_queued_jobs"):
        render_all(frontier("cluster.submission=array"), steps(101, 0.5))
    with pytest.raises(UserError, match="forbids torchrun"):
        frontier("cluster.step_launcher=torchrun")
    with pytest.raises(UserError, match="cluster.step_launcher: 'mpirun' cannot start job steps under slurm"):
        get_scheduler(frontier("cluster.step_launcher=mpirun"))
    with pytest.raises(UserError, match="cluster.scheduler: 'local'"):
        get_scheduler(profile("local"))


def test_ladder_render_writes_the_scripts_a_submission_would_use(tmp_path, capsys):
    out = tmp_path / "out"
    assert render_main(["sweep=tiny", "cluster=frontier", f"sweeps_root={tmp_path / 'sweeps'}", f"out={out}"]) == 0
    scripts = sorted(out.glob("*.sbatch"))
    assert scripts and [str(p) for p in scripts] == capsys.readouterr().out.split()
    assert all((out / f"{p.stem}.json").exists() for p in scripts)
    assert not (tmp_path / "sweeps").exists() or not list((tmp_path / "sweeps").rglob("*.sbatch"))  # nothing submitted
    for path in scripts:
        text = path.read_text()
        assert f"--manifest {tmp_path / 'sweeps' / 'tiny' / 'jobs' / path.stem}.json" in text
        shellcheck(text, tmp_path, path.name)
    with pytest.raises(UserError, match="out=DIR"):
        render_main(["sweep=tiny", "cluster=frontier"])
