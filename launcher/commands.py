"""The commands that chain rooms: each room only hands its output on, the top composes them.

``ladder plan``: plan a sweep, calibrating its speed when the profile has none. ``ladder sweep``: plan,
train on this machine (``launcher.sweep.local``), then collect, fit and report (``launcher.analysis``).
``ladder submit``: a sweep's runs to the scheduler (``launcher.sweep.submit``), or with ``--target`` the run
its projection recommends (``launcher.analysis.target``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from launcher.analysis.collect import collect_sweep
from launcher.analysis.fitting import FIT_FILE, fit_sweep_dir, summary_lines
from launcher.analysis.propose import DEFAULT_RUNS, propose, write_proposal
from launcher.analysis.report import write_report
from launcher.analysis.target import submit_target
from launcher.arguments import command_parser
from launcher.errors import UserError
from launcher.files import kept_on_failure
from launcher.locks import FolderLock
from launcher.numbers import sci
from launcher.sweep.calibrate import calibrated_plan
from launcher.sweep.local import run_local_sweep
from launcher.sweep.plan import PLAN_FILE, compose_sweep, make_console, print_plan
from launcher.sweep.submit import print_submitted, submit_from, submit_parser

OVER_BUDGET_OK = ("--over-budget-ok", "accept a plan over the allocation's remaining node-hours")
NO_CALIBRATE = ("--no-calibrate", "use the profile's assumed numbers; never run a calibration")


def plan_main(argv: list[str]) -> int:
    """``ladder plan``: the runs, node-hours and budget; submits nothing."""
    args = command_parser(
        "ladder plan",
        "Show a sweep's runs, node-hours and budget without submitting.",
        [OVER_BUDGET_OK, NO_CALIBRATE, ("--json", "print the plan as JSON")],
    ).parse(argv)
    plan = calibrated_plan(args.overrides, not args.no_calibrate, echo=lambda line: print(line, file=sys.stderr))
    if args.json:
        print(json.dumps(plan.to_json(), indent=1))
    else:
        print_plan(plan)
    plan.check_budget(args.over_budget_ok)
    return 0


def sweep_main(argv: list[str]) -> int:
    """``ladder sweep``: a local sweep, then (unless stopped or --no-report) collect, fit and report."""
    args = command_parser(
        "ladder sweep",
        "Run a sweep on this machine, then collect, fit and report.",
        [OVER_BUDGET_OK, NO_CALIBRATE, ("--no-report", "train only: skip collect, fit and report")],
    ).parse(argv)
    console = make_console()
    sweep_dir = compose_sweep(args.overrides)[2]
    with FolderLock(sweep_dir, "sweep"):  # before calibrating: one sweep per folder
        with kept_on_failure(sweep_dir / PLAN_FILE):  # a failed plan keeps the last plan.json, its error beside
            plan = calibrated_plan(args.overrides, not args.no_calibrate, echo=console.log)
        end = run_local_sweep(plan, console, args.over_budget_ok)
        if end.stop_signal is None and not args.no_report:
            analyse(plan.sweep_dir, console)
    return end.exit_code


def submit_main(argv: list[str]) -> int:
    """``ladder submit``: the sweep's runs, or (``--target``) its target run, as batch jobs with continuations."""
    parser = submit_parser()
    parser.add_argument("--target", action="store_true", help="submit the run the sweep's projection recommends")
    parser.add_argument("--target-flops", type=float, help="the target run's training FLOPs C (projected anew)")
    parser.add_argument("--nodes", type=int, help="with --target-flops: nodes the target spans (default 1)")
    args = parser.parse(argv)
    if not args.target and (args.target_flops is not None or args.nodes is not None):
        raise UserError("--target-flops, --nodes: only with --target")
    if args.target:
        if args.continue_from or args.dependency or args.over_budget_ok or args.no_calibrate:
            raise UserError("--target: takes only --target-flops and --nodes besides the sweep's overrides")
        print_submitted(submit_target(args.overrides, args.target_flops, args.nodes or 1))
    else:
        print_submitted(submit_from(args))
    return 0


def analyse(sweep_dir: Path, console) -> None:
    """collect -> fit -> report, then the fit's summary; the budget is the one plan.json records, with its source."""
    collected = collect_sweep(sweep_dir)
    console.log(f"collected {len(collected.runs)} runs -> {collected.curves_path}")
    fit = fit_sweep_dir(sweep_dir, collected=collected)
    report = write_report(sweep_dir, collected=collected)
    for line in summary_lines(fit):
        console.print(line, highlight=False)
    console.print(f"fit: {sweep_dir / FIT_FILE}\nreport: {report}")
    if "error" not in fit:
        print_proposal(sweep_dir, console)


def print_proposal(sweep_dir: Path, console, top: int = 3) -> None:
    """The next round's first runs (``ladder propose``), written to proposal.yaml; or why there is none."""
    try:
        proposal = propose(sweep_dir, sweep_dir.name, None, DEFAULT_RUNS)
    except UserError as exc:
        console.print(f"no proposal: {exc}", highlight=False)
        return
    path = write_proposal(sweep_dir, proposal)
    console.print(f"next round ({path}, {len(proposal.runs)} runs), first {top}:", highlight=False)
    for run in proposal.runs[:top]:
        console.print(f"  N = {sci(run.params)} at C = {sci(run.budget)}: {run.reason}", highlight=False)
