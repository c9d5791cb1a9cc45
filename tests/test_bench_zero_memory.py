"""bench/zero_memory.py counts what a rank really holds, here bf16 mixed precision under ZeRO-0 on one rank."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from launcher.config.run import load_run_config
from launcher.run.runtime import make_family

REPO = Path(__file__).resolve().parent.parent
MODEL = [
    "model=gpt_neox/tiny",
    "model.d_model=64",
    "model.n_layer=2",
    "model.n_heads=4",
    "model.seq_len=32",
    "train.micro_batch_size=2",
    "train.global_batch_tokens=128",
]


def test_bf16_zero0_holds_16_bytes_per_parameter_fp32_master_included(tmp_path):
    command = [
        sys.executable,
        "bench/zero_memory.py",
        "--worker",
        str(tmp_path),
        *MODEL,
        "train.precision=bf16",
        "deepspeed=zero0",
        "wandb.mode=disabled",
    ]
    proc = subprocess.run(
        command, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    held = json.loads((tmp_path / "rank0.json").read_text())
    family = make_family(load_run_config(MODEL))
    n, _ = family.param_counts()
    tensors = len(list(family.build().parameters()))
    assert (held["parameters"], held["gradients"], held["fp32 master"]) == (2 * n, 2 * n, 4 * n)
    assert 8 * n <= held["optimizer state"] <= 8 * n + 8 * tensors  # two fp32 moments, and a step count each
    assert held.get("other", 0) < 64
