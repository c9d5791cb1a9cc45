"""A regular install works: the wheel carries every config and template, and jobs run its ``ladder``.

The wheel is built from a copy of the source tree, installed (not editable) into a fresh virtualenv,
and every command runs from a folder outside the checkout. The new environment sees the dev
environment's dependencies through a ``.pth`` line naming its site-packages (so nothing is installed
twice); a path in a ``.pth`` file is added to ``sys.path`` without running that folder's own ``.pth``
files, so the dev install's editable finder stays out, and ``import launcher`` must resolve inside the
new environment.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "launcher", "models", "hydra_configs", "slurm", "lsf")
PYTHIA_70M_PARAMS = 70426624  # GPT-NeoX pythia-70m, embeddings and untied output included


@dataclasses.dataclass(frozen=True)
class Installed:
    """The fresh environment holding the wheel, and a folder outside the checkout to work in."""

    venv: Path
    site_packages: Path
    work: Path

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def run(self, *argv: str | os.PathLike, timeout: float = 600, **extra: str) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SCALELADDER_SITE_DIR", "VIRTUAL_ENV")}
        env.update(
            OMP_NUM_THREADS="1", PYTHONNOUSERSITE="1", PATH=f"{self.venv / 'bin'}{os.pathsep}{env['PATH']}", **extra
        )
        done = subprocess.run(
            [str(a) for a in argv], check=False, cwd=self.work, env=env, capture_output=True, text=True, timeout=timeout
        )
        assert done.returncode == 0, f"{argv}: exit {done.returncode}\n{done.stderr[-3000:]}"
        return done

    def ladder(self, *args: str | os.PathLike, **extra: str) -> str:
        return self.run(self.venv / "bin" / "ladder", *args, **extra).stdout


def _copy_sources(dest: Path) -> Path:
    """The files the build reads, copied (links kept) so that building writes nothing into the checkout."""
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    dest.mkdir()
    for name in SOURCES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, symlinks=True, ignore=ignore)
        else:
            shutil.copy2(src, dest / name)
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    root = tmp_path_factory.mktemp("wheel")
    source = _copy_sources(root / "src")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", root / "dist", source],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (wheel,) = (root / "dist").glob("scaleladder-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=300)
    subprocess.run(
        [*pip, "--python", venv / "bin" / "python", "install", "--no-deps", wheel],
        check=True,
        capture_output=True,
        timeout=600,
    )
    site_packages = Path(
        subprocess.run(
            [venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    # after the install, or pip would take the dev environment's scaleladder for this one's
    (site_packages / "dev_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    (root / "work").mkdir()
    return Installed(venv, site_packages, root / "work")


def test_the_package_and_its_data_come_from_the_new_environment(installed):
    code = (
        "import json, sys, launcher, launcher.resources as r; print(json.dumps({'launcher': launcher.__file__, "
        "'shipped': str(r.SHIPPED.resolve()), 'path': sys.path, 'modules': sorted(sys.modules)}))"
    )
    seen = json.loads(installed.run(installed.python, "-c", code).stdout)
    assert Path(seen["launcher"]).is_relative_to(installed.site_packages)
    assert Path(seen["shipped"]).is_relative_to(installed.site_packages)  # real files, no links into the checkout
    assert not any(name.startswith("__editable__") for name in seen["modules"])
    assert str(REPO) not in seen["path"] and str(installed.work) not in seen["path"]


def test_describe(installed):
    numbers = json.loads(installed.ladder("describe", "model=gpt_neox/pythia_70m", "--json"))
    assert numbers["params_total"] == PYTHIA_70M_PARAMS


def test_plan_matches_the_checkout(installed):
    """The installed package plans exactly what the checkout plans from the same folder."""
    args = ("plan", "sweep=tiny", "cluster=frontier", "--json")
    plan = json.loads(installed.ladder(*args))
    checkout = subprocess.run(
        [sys.executable, "-m", "launcher.cli", *args],
        cwd=installed.work,
        check=True,
        capture_output=True,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        timeout=600,
    )
    assert plan == json.loads(checkout.stdout)
    assert len(plan["runs"]) == 6 and {r["budget"] for r in plan["runs"]} == {1.0e10, 2.0e10}  # sweep/tiny.yaml
    assert plan["cluster"]["name"] == "frontier"


@pytest.mark.parametrize(
    "site, suffix, marker",
    [
        ("frontier", ".sbatch", 'srun --nodes="$SLURM_NNODES" --ntasks-per-node=1 mkdir -p "$MIOPEN_USER_DB_PATH"'),
        ("summit", ".lsf", "#BSUB -nnodes 1"),
    ],
)
def test_render_and_the_scripts_run_the_ladder_of_this_environment(installed, site, suffix, marker):
    out = installed.work / f"scripts-{site}"
    printed = installed.ladder("render", "sweep=tiny", f"cluster={site}", f"out={out}").split()
    (script,) = [Path(p) for p in printed if p.endswith(suffix)]
    text = script.read_text()
    assert marker in text  # the site's own template, from the wheel
    (ladder_line,) = [line for line in text.splitlines() if line.startswith("LADDER=(")]
    assert ladder_line == f"LADDER=({installed.python.parent / 'ladder'})"  # the installed console script
    installed.run("bash", "-n", script)
    # what the job's steps start: the same command, from the job's folder, finds the installed package
    started = installed.run("bash", "-c", f'{ladder_line}; "${{LADDER[@]}}" describe model=gpt_neox/pythia_70m --json')
    assert json.loads(started.stdout)["params_total"] == PYTHIA_70M_PARAMS


def test_a_tiny_train(installed):
    run_dir = installed.work / "runs" / "tiny"
    # DeepSpeed's shm op, JIT-built per environment, is the dev environment's already-built one (same torch,
    # same Python): building it afresh takes minutes and tests DeepSpeed, not the install
    code = "from launcher.run.runtime import extensions_dir; print(extensions_dir())"
    prebuilt = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip()
    installed.ladder(
        "train", "model=gpt_neox/tiny", "train.max_steps=2", f"run_dir={run_dir}", TORCH_EXTENSIONS_DIR=prebuilt
    )
    steps = [json.loads(line).get("step") for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert max(s for s in steps if s is not None) == 2
