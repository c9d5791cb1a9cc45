"""Bad input to ``ladder train``: exit 2 and one line on stderr naming the field and what is allowed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from launcher import cli
from launcher.config.run import load_run_config

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lr=abc", "train.lr: expected float, got 'abc'"),
        ("model.n_layerz=2", "model.n_layerz: unknown field (did you mean 'n_layer'?); allowed: d_model, gelu,"),
        (
            "cluster.max_retriez=2",
            "cluster.max_retriez: unknown field (did you mean 'max_retries'?); allowed: account,",
        ),
        ("deepspeed=zero9", "deepspeed: 'zero9' is not an option; allowed: zero0, zero1, zero2, zero3, zero3_offload"),
        ("nprocs=2", "nprocs: unknown field (did you mean 'nproc'?)"),
        ("train.precision=fp8", "train.precision: 'fp8' is not allowed; allowed: fp32, bf16, fp16"),
        ("deepspeed.offload_param=cpu", "deepspeed.offload_param: needs stage 3, got stage 0"),
        ("deepspeed.min_loss_scale=0.5", "deepspeed.min_loss_scale: expected int, got 0.5"),
        ("rendezvous.port_base=64000", "rendezvous.port_base: [64000, 84000) must lie within [1024, 65536)"),
        ("rendezvous.timeout_s=0", "rendezvous.timeout_s: must be > 0"),
        ("model=gpt_neox/nope", "model: 'gpt_neox/nope' is not an option; allowed: clip/tiny,"),
        ("nproc=0", "nproc: must be >= 1, got 0"),
    ],
)
def test_bad_override_is_one_line_naming_the_field(override, message, capsys):
    assert cli.main(["train", override]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ladder train: error: {message}"), captured.err


def test_global_batch_that_does_not_split_over_local_ranks_fails_before_any_rank_starts(capsys):
    assert cli.main(["train", "nproc=2", "train.global_batch_tokens=1000"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "ladder train: error: train.global_batch_tokens: 1000 is not a multiple of world 2 x "
        "micro_batch_size 8 x tokens_per_sample 64 = 1024"
    ]


def test_the_real_command_prints_no_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "launcher.cli", "train", "train.lr=abc"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == ["ladder train: error: train.lr: expected float, got 'abc'"]


def test_good_overrides_compose():
    run = load_run_config(
        [
            "deepspeed=zero3",
            "train.max_steps=3",
            "nproc=2",
            "run_dir=/tmp/x",
            "rendezvous.interface=hsn0",
            "deepspeed.min_loss_scale=2",
        ]
    )
    assert (run.deepspeed.stage, run.train.max_steps, run.nproc, run.run_dir) == (3, 3, 2, "/tmp/x")
    assert (run.rendezvous.interface, run.deepspeed.min_loss_scale) == ("hsn0", 2)


def test_a_field_its_yaml_does_not_list_is_settable():
    """The local profile's YAML is short; every ClusterProfile field can still be overridden."""
    assert "max_retries" not in (REPO / "hydra_configs" / "cluster" / "local.yaml").read_text()
    run = load_run_config(["cluster.max_retries=7", "model=clip/tiny", "model.embed_dim=48"])
    assert run.cluster.max_retries == 7 and run.model["family"] == "clip" and run.model["embed_dim"] == 48
