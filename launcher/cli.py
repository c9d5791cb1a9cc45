"""The ``ladder`` command: one entry point, one module per subcommand.

Each subcommand is ``module:function`` taking the remaining argv and returning an exit code, imported
only when used so that ``ladder fit`` never pays for torch and DeepSpeed. Bad input raises UserError,
which becomes one line on stderr and exit status 2.
"""
from __future__ import annotations

import importlib
import sys

from launcher.errors import UserError

COMMANDS = {
    "train": ("launcher.run.runtime:main", "train one run (Hydra overrides; nproc=N starts N local ranks)"),
    "describe": ("launcher.run.describe:main", "exact parameters and training FLOPs per token of a model"),
    "show": ("launcher.config.show:main", "a cluster profile resolved, and the file each group option came from"),
    "plan": ("launcher.commands:plan_main", "show a sweep's runs, node-hours and budget without submitting"),
    "sweep": ("launcher.commands:sweep_main", "run a sweep on this machine, then collect, fit and report"),
    "submit": ("launcher.sweep.submit:main", "record a sweep in the job database and submit it to the scheduler"),
    "status": ("launcher.sweep.status:main", "a sweep's runs and states, reconciled with the scheduler"),
    "cancel": ("launcher.sweep.submit:cancel_main", "cancel a sweep's queued and running jobs"),
    "render": ("launcher.sweep.submit:render_main", "write the job scripts a submission would use"),
    "collect": ("launcher.analysis.collect:main", "gather every run's metrics.jsonl into one table of curves"),
    "fit": ("launcher.analysis.fitting:fit_main", "fit scaling laws to a sweep or to a CSV of points"),
    "report": ("launcher.analysis.report:main", "write report.html and plots for a sweep"),
    "watch": ("launcher.analysis.watch:main", "follow a sweep's runs live; sync their offline W&B runs (login node)"),
    "wandb-sync": ("launcher.analysis.wandb_sync:main", "upload a sweep's offline W&B runs (from a login node)"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: ladder <command> [hydra overrides | options]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"ladder: unknown command '{name}'; allowed: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module_name, function_name = COMMANDS[name][0].split(":")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
        return int(function(rest) or 0)
    except UserError as exc:
        print(f"ladder {name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ladder {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
