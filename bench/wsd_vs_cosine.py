"""WSD cooldown branches vs cosine runs of the same (N, D) points, trained for real on this CPU.

3 sizes x 5 evenly spaced token counts, each point once as a cosine run and once as a WSD branch
(decay_fraction 0.2, sqrt cooldown) of its size's constant-LR trunk. Prints the mean relative difference
of the final validation loss, WSD against cosine (goal: within 1%, WSD not worse on average), and the
node-hours ratio WSD / cosine: measured (the runs' own training wall time, from their metrics, and the
processes' wall time from the job database, start-up included) beside the design's arithmetic
(0.8·5 + 0.2·15 over 15 = 0.47; goal <= 0.5).

    .venv/bin/python bench/wsd_vs_cosine.py [--sizes 20000,60000,150000] [--tokens 8192,16384,24576,32768,40960]
"""

from __future__ import annotations

import argparse
import io
import tempfile
from pathlib import Path

from rich.console import Console

from launcher.analysis.collect import collect_sweep
from launcher.run.metrics import read_metrics
from launcher.sweep.jobdb import JobDB
from launcher.sweep.local import run_local_sweep
from launcher.sweep.plan import build_plan

GOAL_LOSS, GOAL_RATIO = 0.01, 0.5


def run(schedule: str, root: Path, sizes: str, tokens: str) -> dict:
    plan = build_plan(
        [
            "sweep=wsd_tiny",
            f"sweep.name={schedule}",
            f"sweep.schedule={schedule}",
            f"sweep.params=[{sizes}]",
            f"sweep.tokens=[{tokens}]",
            "wandb.mode=disabled",
            f"sweeps_root={root}",
        ]
    )
    end = run_local_sweep(plan, Console(file=io.StringIO()))
    assert end.exit_code == 0, f"the {schedule} sweep did not complete"
    collected = collect_sweep(plan.sweep_dir, write_curves_file=False)
    with JobDB(plan.sweep_dir / "jobdb.sqlite") as db:
        process_s = sum(a.ended - a.started for a in db.attempts() if a.started and a.ended)
    train_s = 0.0
    for spec in plan.runs:  # training time: tokens over the logged throughput of each step
        records = read_metrics(spec.run_dir(plan.sweep_dir) / "metrics.jsonl")
        train_s += sum(spec.global_batch_tokens / r["tokens_per_s"] for r in records if r.get("tokens_per_s"))
    steps = sum(s.steps - (s.fork_step or 0) for s in plan.runs)
    return {
        "loss": {p["name"]: p["loss"] for p in collected.final_points},
        "process_s": process_s,
        "train_s": train_s,
        "steps": steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="20000,60000,150000")
    parser.add_argument("--tokens", default="8192,16384,24576,32768,40960")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cosine = run("cosine", Path(tmp), args.sizes, args.tokens)
        wsd = run("wsd", Path(tmp), args.sizes, args.tokens)
    diffs = [wsd["loss"][name] / loss - 1.0 for name, loss in cosine["loss"].items()]
    n_d = len(args.tokens.split(","))
    arithmetic = (0.8 * n_d + 0.2 * n_d * (n_d + 1) / 2) / (n_d * (n_d + 1) / 2)
    mean = sum(diffs) / len(diffs)
    print(
        f"{len(diffs)} points: final val loss WSD vs cosine: mean {100 * mean:+.2f}%, "
        f"mean |diff| {100 * sum(map(abs, diffs)) / len(diffs):.2f}%, worst {100 * max(diffs, key=abs):+.2f}% "
        f"(goal: |mean| <= {100 * GOAL_LOSS:g}%, WSD not worse on average)"
    )
    print(
        f"optimizer steps WSD / cosine: {wsd['steps']} / {cosine['steps']} = {wsd['steps'] / cosine['steps']:.3f} "
        f"(design arithmetic for evenly spaced D: {arithmetic:.3f})"
    )
    print(
        f"measured training time WSD / cosine: {wsd['train_s']:.1f} s / {cosine['train_s']:.1f} s = "
        f"{wsd['train_s'] / cosine['train_s']:.3f} (goal <= {GOAL_RATIO})"
    )
    print(
        f"measured process time (start-up included) WSD / cosine: {wsd['process_s']:.0f} s / "
        f"{cosine['process_s']:.0f} s = {wsd['process_s'] / cosine['process_s']:.3f}"
    )


if __name__ == "__main__":
    main()
