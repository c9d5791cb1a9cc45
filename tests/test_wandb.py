"""The W&B summary run, written offline for real and read back from its .wandb file; ``ladder wandb-sync``."""

from __future__ import annotations

import json
import struct

import pytest

from launcher import cli
from launcher.analysis.fitting import fit_sweep_dir
from launcher.analysis.report import write_report
from launcher.analysis.wandb_sync import SUMMARY_JOB_TYPE, log_summary_run, offline_run_dirs, summary_run_id
from test_collect import curve_records, isoflop_specs, make_sweep, write_metrics

BLOCK, HEADER = 32768, 7  # the .wandb file is a LevelDB-style log: 32 KiB blocks of (crc, length, type) chunks


def wandb_records(path):
    """Every protobuf Record of an offline run's .wandb file."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    offset, pending = 7, b""
    while offset + HEADER <= len(data):
        room = BLOCK - offset % BLOCK
        if room < HEADER:
            offset += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[offset : offset + HEADER])
        if kind == 0 and length == 0:
            offset += room
            continue
        chunk = data[offset + HEADER : offset + HEADER + length]
        offset += HEADER + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            yield record
            pending = b""


@pytest.fixture
def offline_env(monkeypatch, tmp_path):
    """W&B strictly offline, its caches and settings inside the test's directory, no credentials anywhere."""
    for key in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL"):
        monkeypatch.delenv(key, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("NETRC", str(home / ".netrc"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    for key in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(key, str(tmp_path / key.lower()))
    return home


def test_summary_run_offline_read_back(tmp_path, offline_env):
    specs = isoflop_specs("wb", budgets=(1e16, 1e17, 1e18), per_budget=4, steps=20)
    sweep_dir = make_sweep(tmp_path, "wb", specs, budget_flops=1e19)
    for i, s in enumerate(specs):
        write_metrics(sweep_dir / "runs" / s.name, curve_records(s, seed=i))
    fit = fit_sweep_dir(sweep_dir, n_boot=5)
    log_summary_run(sweep_dir, fit, [], {})  # an earlier summary run, replaced by the report's
    write_report(sweep_dir)
    runs = list((sweep_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and runs[0].name.endswith(summary_run_id(sweep_dir))
    assert offline_run_dirs(sweep_dir) == runs

    (path,) = runs[0].glob("run-*.wandb")
    records = list(wandb_records(path))
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (run.run_group, run.job_type, run.display_name) == ("wb", SUMMARY_JOB_TYPE, "wb-summary")
    config = {i.key: json.loads(i.value_json) for i in run.config.update}
    assert config["sweep"] == "wb"
    assert config["recommendation"]["N_opt"] == fit["recommendation"]["N_opt"]
    history: dict = {}  # media items arrive flattened: nested_key = [name, field]
    for r in records:
        if r.WhichOneof("record_type") == "history":
            for i in r.history.item:
                name, *field = [i.key] if i.key else list(i.nested_key)
                if field:
                    history.setdefault(name, {})[field[0]] = json.loads(i.value_json)
    assert history["fit"]["_type"] == "table-file" and history["flop_ledger"]["nrows"] == len(specs)
    for name in ("loss_curves", "isoflop", "frontier", "predicted_vs_observed"):
        image = history[f"plots/{name}"]
        assert image["_type"] == "image-file" and (runs[0] / "files" / image["path"]).stat().st_size > 1000
    table = json.loads((runs[0] / "files" / history["fit"]["path"]).read_text())
    assert table["columns"] == ["law", "parameter", "value", "ci_lo", "ci_hi"]
    rows = {(law, name): (value, lo, hi) for law, name, value, lo, hi in table["data"]}
    assert rows[("approach3", "alpha")][0] == fit["approach3"]["alpha"]
    assert list(rows[("approach3", "alpha")][1:]) == fit["bootstrap"]["approach3"]["ci"]["alpha"]
    assert rows[("recommendation", "N_opt")] == (fit["recommendation"]["N_opt"], *fit["recommendation"]["N_opt_ci"])


def test_wandb_sync_without_a_key_is_one_line(tmp_path, offline_env, capsys):
    sweep_dir = make_sweep(tmp_path, "nokey", isoflop_specs("nokey", budgets=(1e16,), per_budget=1))
    offline = sweep_dir / "runs" / "r" / "wandb" / "offline-run-20260101_000000-abc"
    offline.mkdir(parents=True)
    assert cli.main(["wandb-sync", "sweep=nokey", f"sweeps_root={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ladder wandb-sync: error: no W&B API key configured")
    assert cli.main(["wandb-sync", "sweep=nokey", f"sweeps_root={tmp_path}", "--dry-run"]) == 0
    assert capsys.readouterr().out.strip() == str(offline)
    assert list(offline_env.iterdir()) == []  # nothing written to the home directory (no netrc, no settings)
