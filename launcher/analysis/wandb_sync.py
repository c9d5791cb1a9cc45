"""W&B for a whole sweep: its summary run, and ``ladder wandb-sync`` to upload everything from a login node.

Every run mirrors its curve to W&B offline (``launcher.run.metrics.WandbMirror``: group = the sweep,
job_type = the model family, config with N, N_non_embedding, D, C). The report adds one summary run
per sweep (group = the sweep, job_type = "summary") holding the fit and the FLOP ledger as tables and
the plots as images, offline unless the sweep's wandb.mode says otherwise; its id is derived from the
sweep directory, so a report written again replaces it.

Compute nodes are often offline, so ``ladder wandb-sync`` runs ``wandb sync`` over the sweep's offline
run directories from a machine that can reach W&B. It needs an API key from the environment or a
netrc file, checks only that one exists, and never writes it anywhere.
"""

from __future__ import annotations

import hashlib
import json
import netrc
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, cast
from urllib.parse import urlparse

from launcher.analysis.collect import parse_sweep_args
from launcher.errors import UserError

if TYPE_CHECKING:
    from launcher.config.run import WandbMode

SUMMARY_JOB_TYPE = "summary"
DEFAULT_HOST = "https://api.wandb.ai"


# ------------------------------------------------------------------------------------- summary run


def sweep_wandb_config(sweep_dir: Path) -> dict:
    """The sweep's wandb section: the defaults with the wandb.* overrides its runs were given."""
    from launcher.config.compose import compose

    config = dict(compose([]).get("wandb") or {})
    try:
        runs = json.loads((sweep_dir / "plan.json").read_text()).get("runs") or []
    except (OSError, ValueError):
        runs = []
    for override in (runs[0].get("base_overrides") or []) if runs else []:
        key, _, value = str(override).lstrip("+~").partition("=")
        if key.startswith("wandb.") and key != "wandb.tags":
            config[key[len("wandb.") :]] = None if value == "null" else value.strip("'\"")
    return config


def summary_run_id(sweep_dir: Path) -> str:
    return "summary-" + hashlib.sha1(str(sweep_dir.resolve()).encode()).hexdigest()[:12]


def fit_rows(fit: dict) -> list[list]:
    """[law, parameter, value, ci_lo, ci_hi] for every fitted parameter and the recommendation."""
    rows = []
    boot = fit.get("bootstrap") or {}
    for approach, names in (
        ("approach1", ("a", "b", "N_coef", "D_coef")),
        ("approach2", ("a", "b", "N_coef", "D_coef", "loss_coef", "loss_exponent")),
        ("approach3", ("E", "A", "B", "alpha", "beta", "a", "b")),
    ):
        part = fit.get(approach) or {}
        ci = (boot.get(approach) or {}).get("ci") or {}
        for name in names:
            if part.get(name) is not None:
                lo, hi = ci.get(name) or (None, None)
                rows.append([approach, name, part[name], lo, hi])
    rec = fit.get("recommendation") or {}
    for name in ("C", "N_opt", "D_opt", "tokens_per_param", "predicted_loss"):
        if rec.get(name) is not None:
            lo, hi = rec.get(f"{name}_ci") or (None, None)
            rows.append(["recommendation", name, rec[name], lo, hi])
    return rows


PREDICTION_COLUMNS: list[str | int] = [
    "run",
    "kind",
    "N",
    "D",
    "C",
    "observed_loss",
    "predicted_loss",
    "lo",
    "hi",
    "rel_error",
    "inside",
]


def prediction_rows(fit: dict) -> list[list]:
    """One row per held-out run (a prediction checked against the run), then the recommendation (a projection
    when its C lies beyond every run): the fit's claims, each labelled by what backs it."""
    rows = [
        [
            r["name"],
            r["kind"],
            r["N"],
            r["D"],
            r["C"],
            r["loss"],
            r["predicted_loss"],
            r["lo"],
            r["hi"],
            r["rel_error"],
            r["inside"],
        ]
        for r in (fit.get("holdout") or {}).get("runs") or []
    ]
    rec = fit.get("recommendation") or {}
    if rec.get("kind"):
        lo, hi = rec.get("predicted_loss_ci") or (None, None)
        rows.append(
            [
                "recommendation",
                rec["kind"],
                rec["N_opt"],
                rec["D_opt"],
                rec["C"],
                None,
                rec["predicted_loss"],
                lo,
                hi,
                None,
                None,
            ]
        )
    return rows


def log_summary_run(
    sweep_dir: Path, fit: dict, ledger: list, plots: dict[str, Path], mode: Optional[str] = None
) -> Optional[Path]:
    """The sweep's W&B summary run; returns its local run directory (None when W&B is disabled or failed).

    ``mode``: the argument, else $WANDB_MODE, else the sweep's wandb.mode. A W&B failure is a warning:
    the report on disk is what matters.
    """
    sweep_dir = Path(sweep_dir)
    mode = mode or os.environ.get("WANDB_MODE")
    if mode == "disabled":
        return None
    config = sweep_wandb_config(sweep_dir)
    mode = mode or config.get("mode") or "offline"
    if mode == "disabled":
        return None
    run_id = summary_run_id(sweep_dir)
    for old in (sweep_dir / "wandb").glob(f"offline-run-*-{run_id}"):  # superseded by this one
        shutil.rmtree(old, ignore_errors=True)
    try:
        import wandb

        rec = fit.get("recommendation") or {}
        # $WANDB_MODE or the sweep's config: any string; W&B itself rejects an unknown mode
        run = wandb.init(
            mode=cast("WandbMode", mode),
            dir=str(sweep_dir),
            id=run_id,
            resume="allow",
            project=config.get("project") or "scaleladder",
            entity=config.get("entity"),
            group=sweep_dir.name,
            job_type=SUMMARY_JOB_TYPE,
            name=f"{sweep_dir.name}-summary",
            config={
                "sweep": sweep_dir.name,
                "inputs": fit.get("inputs"),
                "fit_error": fit.get("error"),
                "recommendation": {k: v for k, v in rec.items() if k != "alternatives"},
            },
            settings=wandb.Settings(console="off", silent=True, x_disable_stats=True),
        )
        try:
            columns: list[str | int] = ["law", "parameter", "value", "ci_lo", "ci_hi"]
            payload: dict[str, Any] = {
                "fit": wandb.Table(columns=columns, data=fit_rows(fit)),
                "flop_ledger": wandb.Table(
                    columns=["run", "state", "N", "D", "C_exact", "six_N_D", "C_over_6ND", "final_loss"],
                    data=[[r.name, r.state, r.N, r.D, r.C, r.six_nd, r.ratio, r.loss] for r in ledger],
                ),
                "predictions": wandb.Table(columns=PREDICTION_COLUMNS, data=prediction_rows(fit)),
            }
            payload.update({f"plots/{name}": wandb.Image(str(path)) for name, path in plots.items()})
            run.log(payload)
            run.summary.update({f"{law}/{name}": value for law, name, value, *_ in fit_rows(fit)})
            held = fit.get("holdout") or {}
            run.summary.update(
                {
                    "recommendation/kind": rec.get("kind"),
                    **{
                        f"holdout/{k}": held.get(k)
                        for k in ("median_abs_rel_error", "worst_abs_rel_error", "n_inside")
                        if k in held
                    },
                    "holdout/n_runs": len(held.get("runs") or []),
                }
            )
            run_dir = Path(run.dir).parent
        finally:
            run.finish()
            wandb.teardown()  # finish() returns before the offline file is flushed; the service's end flushes it
        return run_dir
    except Exception as exc:  # noqa: BLE001 - W&B must never cost the report
        print(
            f"warning: W&B summary run not written: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}",
            file=sys.stderr,
        )
        return None


# -------------------------------------------------------------------------------------------- sync


def offline_run_dirs(sweep_dir: Path) -> list[Path]:
    """Every offline W&B run of the sweep: each run's (one per attempt) and the summary run."""
    return sorted(sweep_dir.glob("runs/*/wandb/offline-run-*")) + sorted(sweep_dir.glob("wandb/offline-run-*"))


def api_key_source() -> Optional[str]:
    """Where W&B would find credentials (environment or netrc), without reading the key out."""
    if os.environ.get("WANDB_API_KEY"):
        return "WANDB_API_KEY"
    if os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return "WANDB_IDENTITY_TOKEN_FILE"
    host = urlparse(os.environ.get("WANDB_BASE_URL") or DEFAULT_HOST).hostname or ""
    path = Path(os.environ.get("NETRC") or Path.home() / ".netrc")
    try:
        entry = netrc.netrc(path).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return None
    return str(path) if entry and entry[2] else None


def sync(sweep_dir: Path, dry_run: bool = False) -> int:
    """``wandb sync`` over the sweep's offline runs; the exit status of wandb."""
    dirs = offline_run_dirs(sweep_dir)
    if dry_run:
        print("\n".join(str(d) for d in dirs) or "nothing to sync")
        return 0
    if api_key_source() is None:
        host = urlparse(os.environ.get("WANDB_BASE_URL") or DEFAULT_HOST).hostname
        raise UserError(
            f"no W&B API key configured for {host}: set WANDB_API_KEY or run `wandb login` on this "
            f"login node, then run `ladder wandb-sync` again"
        )
    if not dirs:
        raise UserError(f"{sweep_dir}: no offline W&B runs to sync (runs/*/wandb/offline-run-*, wandb/offline-run-*)")
    wandb_cli = Path(sys.executable).with_name("wandb")
    command = [str(wandb_cli) if wandb_cli.exists() else "wandb", "sync", *map(str, dirs)]
    env = {**os.environ, "WANDB_MODE": "online"}
    done = subprocess.run(command, env=env)
    if done.returncode:
        print(f"ladder wandb-sync: wandb sync exited with status {done.returncode}", file=sys.stderr)
    return done.returncode


def main(argv: list[str]) -> int:
    def options(parser):
        parser.add_argument("--dry-run", action="store_true", help="list the offline runs; upload nothing")

    args, sweep_dir = parse_sweep_args(argv, "ladder wandb-sync", "upload a sweep's offline W&B runs", options)
    return sync(sweep_dir, args.dry_run)
