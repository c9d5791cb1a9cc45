"""The command line every ``ladder`` command shares: ``[options] [hydra overrides]``, in any order.

A bad flag is bad input like a bad field: ``UserError``, so the CLI prints one line and exits 2.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence

from launcher.errors import UserError

OVERRIDES_HELP = "Hydra overrides, e.g. sweep=tiny cluster=frontier"


class CommandParser(argparse.ArgumentParser):
    """argparse that raises UserError instead of printing usage and exiting."""

    def error(self, message: str):
        raise UserError(message)

    def parse(self, argv: Sequence[str]) -> argparse.Namespace:
        """Options and positional overrides mixed freely (``sweep=tiny --json`` and ``--json sweep=tiny``)."""
        return self.parse_intermixed_args(list(argv))


def command_parser(
    prog: str, description: str, flags: Iterable[tuple[str, str]] = (), overrides_help: str | None = OVERRIDES_HELP
) -> CommandParser:
    """A parser for ``prog`` taking overrides (unless ``overrides_help`` is None) and the on/off ``flags``
    (``(flag, help)`` pairs); a command adds its other options to it."""
    parser = CommandParser(prog=prog, description=description)
    if overrides_help is not None:
        parser.add_argument("overrides", nargs="*", help=overrides_help)
    for flag, help_ in flags:
        parser.add_argument(flag, action="store_true", help=help_)
    return parser
