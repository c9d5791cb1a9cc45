"""Where scaleladder's data live: the shipped folders inside the package, and a site's own layers before them.

``hydra_configs/``, ``slurm/`` and ``lsf/`` are top-level folders of the source tree (admins read them
there); ``launcher/_shipped/`` links them into the package, so a wheel carries them and an editable
install finds them the same way. Nothing at run time looks for the source checkout.

A site keeps its own ``cluster/``, ``sweep/``, ``model/``, ``slurm/`` and ``lsf/`` files in one or more
folders named by ``SCALELADDER_SITE_DIR`` (``:``-separated, earlier wins) or by ``site_dir=`` on the
command line (before the environment's); they are searched before the shipped ones.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from launcher.errors import UserError

SHIPPED = Path(__file__).resolve().parent / "_shipped"
SITE_ENV = "SCALELADDER_SITE_DIR"
SITE_OVERRIDE = "site_dir"
SITE_FOLDERS = ("cluster", "sweep", "model", "slurm", "lsf")


def shipped(folder: str) -> Path:
    """One of the shipped folders: ``hydra_configs``, ``slurm`` or ``lsf``."""
    path = SHIPPED / folder
    if not path.is_dir():
        raise UserError(f"scaleladder's installation lacks its {folder}/ folder ({path}); reinstall the package")
    return path


def ladder_argv() -> tuple[str, ...]:
    """How to start ``ladder`` of this environment: the console script beside this Python.

    Not ``python -m launcher.cli``: ``-m`` puts the working folder first on ``sys.path``, so a job whose
    folder holds a source checkout would import that checkout instead of the installed package.
    """
    script = Path(sys.executable).parent / "ladder"
    return (str(script),) if script.is_file() else (sys.executable, "-m", "launcher.cli")


def split_site_override(overrides: list[str]) -> tuple[list[str], list[Path]]:
    """Take ``site_dir=A:B`` out of ``overrides``; return the rest and every site layer, earliest first."""
    rest, given = [], []
    for override in overrides:
        key, sep, value = override.lstrip("+").partition("=")
        if sep and key == SITE_OVERRIDE:
            given.extend(_split(value, SITE_OVERRIDE))
        else:
            rest.append(override)
    return rest, given + _split(os.environ.get(SITE_ENV, ""), SITE_ENV)


def _split(value: str, source: str) -> list[Path]:
    """The folders of a ``:``-separated list, each checked to be a site folder (``source`` names the field)."""
    return [_site_folder(part, source) for part in value.split(":") if part.strip()]


def _site_folder(part: str, source: str) -> Path:
    """A site folder must exist and hold at least one folder scaleladder reads (a typo'd path usually does not)."""
    path = Path(part).expanduser().resolve()
    wanted = f"give site folders holding {', '.join(f'{f}/' for f in SITE_FOLDERS)} (':'-separated, earlier wins)"
    if not path.is_dir():
        raise UserError(f"{source}: {part!r} is not a folder; {wanted}")
    known = {*SITE_FOLDERS, *(group.name for group in shipped("hydra_configs").iterdir() if group.is_dir())}
    if not any((path / name).is_dir() for name in known):
        raise UserError(f"{source}: {part!r} holds none of the folders scaleladder reads; {wanted}")
    return path
