"""Consecutive 2-rank ``ladder train`` runs: how many exit 0 (the gloo exit-134 hunt, issue 13).

Each run is ``ladder train model=gpt_neox/tiny nproc=2 train.max_steps=2 run_dir=<scratch>/<i>
wandb.mode=disabled`` (plus any extra Hydra overrides given after the options), one after the other,
never two at once. A rank whose gloo worker thread still frees a collective's tensors when the
interpreter finalizes aborts at exit ("terminate called without an active exception", exit 134)
although its run completed, so the run's
own state.json is read too: a run that says "completed" but exits non-zero is the bug this loop
counts. Prints ``K/N exited 0``, the distribution of exit codes (and of state.json statuses for the
runs that did not exit 0), the wall time, and the last lines of the first failing run's log.

    .venv/bin/python bench/gloo_exit_loop.py [--runs 100] [--mpirun] [--keep DIR] [hydra overrides]

``--mpirun`` starts the ranks with ``mpirun --allow-run-as-root --oversubscribe -np 2`` around
``ladder train`` (as a cluster's job step does) instead of letting ``nproc=2`` start them. Not part of
the test suite: a run takes 6-7 s on an idle 2-core machine (100 runs: about 11 minutes), several
times that on a busy one. ``tests/test_gloo_exit.py`` checks the cause (no gloo thread outlives a
rank's shutdown) on every run instead.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LADDER = Path(sys.executable).with_name("ladder")
RUN = ["model=gpt_neox/tiny", "train.max_steps=2", "wandb.mode=disabled"]


def command(run_dir: Path, use_mpirun: bool, overrides: list[str]) -> list[str]:
    train = [str(LADDER), "train", *RUN, f"run_dir={run_dir}", *overrides]
    if use_mpirun:
        mpirun = shutil.which("mpirun")
        if mpirun is None:
            raise SystemExit("--mpirun: no mpirun on PATH")
        return [
            mpirun,
            "--allow-run-as-root",
            "--oversubscribe",
            "--bind-to",
            "none",
            "-np",
            "2",
            "-x",
            "OMP_NUM_THREADS",
            *train,
        ]
    return [*train, "nproc=2"]


def status_of(run_dir: Path) -> str:
    try:
        return json.loads((run_dir / "state.json").read_text())["status"]
    except (OSError, ValueError, KeyError):
        return "no state.json"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100, help="consecutive runs (default 100)")
    parser.add_argument("--mpirun", action="store_true", help="start the ranks with mpirun -np 2 around ladder train")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds one run may take")
    parser.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="keep every run folder and log here (default: a temporary folder, failures' logs kept)",
    )
    parser.add_argument("--progress", action="store_true", help="one line per run as it ends")
    args, overrides = parser.parse_known_args(argv)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    scratch = args.keep or Path(tempfile.mkdtemp(prefix="gloo_exit_loop."))
    scratch.mkdir(parents=True, exist_ok=True)
    codes: collections.Counter[int] = collections.Counter()
    failed_statuses: collections.Counter[str] = collections.Counter()
    first_failure: tuple[int, Path] | None = None
    started, load_start = time.perf_counter(), os.getloadavg()[0]
    try:
        for i in range(args.runs):
            run_dir = scratch / str(i)
            log = scratch / f"{i}.log"
            t = time.perf_counter()
            with log.open("w") as out:
                try:
                    code = subprocess.run(
                        command(run_dir, args.mpirun, overrides),
                        cwd=REPO,
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        timeout=args.timeout,
                    ).returncode
                except subprocess.TimeoutExpired:
                    code = -1  # counted as "timeout" below
            codes[code] += 1
            if code != 0:
                failed_statuses[status_of(run_dir)] += 1
                if first_failure is None:
                    first_failure = (i, log)
            if args.progress:
                print(
                    f"run {i}: exit {code if code >= 0 else 'timeout'} ({status_of(run_dir)}) "
                    f"in {time.perf_counter() - t:.1f} s",
                    flush=True,
                )
            if args.keep is None:
                shutil.rmtree(run_dir, ignore_errors=True)
                if code == 0:
                    log.unlink()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    wall = time.perf_counter() - started
    done = sum(codes.values())
    how = "mpirun -np 2 ladder train" if args.mpirun else "ladder train nproc=2"
    print(f"{codes[0]}/{done} exited 0 ({how}, {' '.join([*RUN, *overrides])})")
    print("exit codes: " + ", ".join(f"{'timeout' if c < 0 else c}: {n}" for c, n in sorted(codes.items())))
    if failed_statuses:
        print(
            "state.json of the runs that did not exit 0: "
            + ", ".join(f"{s}: {n}" for s, n in failed_statuses.most_common())
        )
    print(
        f"wall time {wall:.0f} s ({wall / max(done, 1):.1f} s per run; load average {load_start:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end, {os.cpu_count()} cores)"
    )
    if first_failure is not None:
        i, log = first_failure
        tail = log.read_text(errors="replace").splitlines()[-8:]
        print(f"first failure: run {i}, log {log}\n  " + "\n  ".join(tail))
    if args.keep is None and first_failure is None:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0 if codes[0] == done == args.runs else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
