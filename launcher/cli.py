"""The ``ladder`` command: one entry point, one module per subcommand.

Each subcommand is ``module:function`` taking the remaining argv and returning an exit code, imported
only when used so that ``ladder fit`` never pays for torch and DeepSpeed. Bad input raises UserError,
which becomes one line on stderr and exit status 2 (``ExitCode.USAGE``). Any other exception is a bug or
an environment fault: one line on stderr and a pointer to a log file holding the traceback
(``crash_log_dir``), exit status 1; ``ladder --debug <command>`` or ``SCALELADDER_DEBUG=1`` prints the
traceback on the terminal instead.
"""

from __future__ import annotations

import datetime
import importlib
import os
import sys
import tempfile
import traceback
from pathlib import Path

from launcher.errors import UserError
from launcher.policy import ExitCode

COMMANDS = {
    "train": ("launcher.run.runtime:main", "train one run (Hydra overrides; nproc=N starts N local ranks)"),
    "hang-watch": ("launcher.run.heartbeat:watch_main", "watch one job step's heartbeats (the lane shells start it)"),
    "describe": ("launcher.run.describe:main", "exact parameters and training FLOPs per token of a model"),
    "show": ("launcher.config.show:main", "a cluster profile resolved, and the file each group option came from"),
    "plan": ("launcher.commands:plan_main", "show a sweep's runs, node-hours and budget without submitting"),
    "sweep": ("launcher.commands:sweep_main", "run a sweep on this machine, then collect, fit and report"),
    "submit": ("launcher.commands:submit_main", "submit a sweep (or --target: its target run) to the scheduler"),
    "status": ("launcher.sweep.status:main", "a sweep's runs and states, reconciled with the scheduler"),
    "cancel": ("launcher.sweep.submit:cancel_main", "cancel a sweep's queued and running jobs"),
    "render": ("launcher.sweep.submit:render_main", "write the job scripts a submission would use"),
    "scaling-study": ("launcher.sweep.study:main", "time one model from one node to many: scaling.json and its plot"),
    "collect": ("launcher.analysis.collect:main", "gather every run's metrics.jsonl into one table of curves"),
    "fit": ("launcher.analysis.fitting:fit_main", "fit scaling laws to a sweep or to a CSV of points"),
    "report": ("launcher.analysis.report:main", "write report.html and plots for a sweep"),
    "project": ("launcher.analysis.project:main", "the target run, its projected loss and node-hours, proposal.md"),
    "propose": ("launcher.analysis.propose:main", "propose a sweep's next runs from its fit (proposal.yaml)"),
    "watch": ("launcher.analysis.watch:main", "follow a sweep's runs live; sync their offline W&B runs (login node)"),
    "wandb-sync": ("launcher.analysis.wandb_sync:main", "upload a sweep's offline W&B runs (from a login node)"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: ladder <command> [hydra overrides | options]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def crash_log_dir() -> Path:
    """Where tracebacks go: ``$XDG_STATE_HOME/scaleladder/logs`` (default ``~/.local/state``): a user's own,
    persistent folder, not the terminal and not a run's folder (the failure may be that folder)."""
    state_home = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state_home) / "scaleladder" / "logs"


def write_crash_log(name: str, argv: list[str], exc: BaseException) -> Path:
    """The traceback in a new file under ``crash_log_dir`` (the temporary folder when that is not writable)."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    text = f"ladder {' '.join(argv)}\n\n" + "".join(traceback.format_exception(exc))
    for folder in (crash_log_dir(), Path(tempfile.gettempdir()) / "scaleladder-logs"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{name}-{stamp}-{os.getpid()}.log"
            path.write_text(text, errors="backslashreplace")
            return path
        except OSError:
            continue
    raise OSError("no writable folder for the traceback")


def debug_requested(argv: list[str]) -> tuple[bool, list[str]]:
    """``--debug`` as the first argument, or SCALELADDER_DEBUG=1; the argv without the flag."""
    if argv and argv[0] == "--debug":
        return True, argv[1:]
    return os.environ.get("SCALELADDER_DEBUG", "") not in ("", "0"), argv


def main(argv: list[str] | None = None) -> int:
    debug, argv = debug_requested(list(sys.argv[1:] if argv is None else argv))
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"ladder: unknown command '{name}'; allowed: {', '.join(COMMANDS)}", file=sys.stderr)
        return ExitCode.USAGE
    module_name, function_name = COMMANDS[name][0].split(":")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
        return int(function(rest) or 0)
    except UserError as exc:
        print(f"ladder {name}: error: {_one_line(str(exc))}", file=sys.stderr)
        return ExitCode.USAGE
    except KeyboardInterrupt:
        print(f"ladder {name}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the one place an unexpected failure is turned into a line
        if debug:
            traceback.print_exc()
            return ExitCode.FAILED
        summary = f"ladder {name}: internal error: {type(exc).__name__}: {_one_line(str(exc))}"
        try:
            where = f"traceback in {write_crash_log(name, argv, exc)}"
        except OSError:
            where = "no folder was writable for the traceback"
        print(f"{summary} ({where}; rerun with ladder --debug to see it here)", file=sys.stderr)
        return ExitCode.FAILED


def _one_line(text: str) -> str:
    """A message as one terminal line (a message quoting a file's bytes may hold newlines)."""
    return " ".join(text.split()) or "(no message)"


if __name__ == "__main__":
    sys.exit(main())
