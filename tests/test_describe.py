"""``ladder describe``: exact counts from the family's accounting, without building the model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from launcher import cli
from launcher.config.run import load_run_config
from launcher.run.runtime import make_family

REPO = Path(__file__).resolve().parent.parent


def describe_json(*overrides: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "launcher.cli", "describe", *overrides, "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("model", ["gpt_neox/tiny", "clip/tiny"])
def test_json_counts_match_the_built_model(model):
    numbers = describe_json(f"model={model}")
    assert set(numbers) == {"params_total", "params_non_embedding", "flops_per_token"}
    family = make_family(load_run_config([f"model={model}"]))
    assert numbers["params_total"] == sum(p.numel() for p in family.build().parameters())
    assert (numbers["params_total"], numbers["params_non_embedding"]) == family.param_counts()
    assert numbers["flops_per_token"] == family.flops_per_token()
    assert 0 < numbers["params_non_embedding"] < numbers["params_total"]
    assert numbers["flops_per_token"] >= 6 * numbers["params_non_embedding"]  # at least forward + backward


def test_a_12b_model_is_described_without_allocating_it():
    code = (
        "import json, resource, sys\n"
        "from launcher import cli\n"
        "assert cli.main(['describe', 'model=gpt_neox/pythia_12b', '--json']) == 0\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    numbers = json.loads(proc.stdout)
    assert numbers["params_total"] > 11e9
    assert int(proc.stderr.split()[-1]) * 1024 < 2e9  # 12e9 fp32 parameters would take 48 GB


def test_text_output_and_overrides(capsys):
    assert cli.main(["describe", "model.n_layer=4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    four = make_family(load_run_config(["model.n_layer=4"]))
    assert [line.split()[0] for line in lines] == ["params_total", "params_non_embedding", "flops_per_token"]
    assert int(lines[0].split()[1].replace(",", "")) == four.param_counts()[0]


def test_unknown_option_is_one_line(capsys):
    assert cli.main(["describe", "--jsn"]) == 2
    assert capsys.readouterr().err.splitlines() == ["ladder describe: error: --jsn: unknown option; allowed: --json"]
