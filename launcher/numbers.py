"""How numbers are written, once: run names, the plan table, the fit summary and the report agree.

Every formatter writes "n/a" (or ``missing``) for a value that is absent or not a finite number, so a
fit that could not give a number still prints a readable line.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Optional

_SCALES = (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def si(value: Any, unit: str = "", *, giga: str = "B") -> str:
    """1.23e8 -> '123M'. People read counts in billions ('B'); run names keep the 'G' they were given."""
    if not _finite(value):
        return "n/a"
    for suffix, scale in _SCALES:
        if abs(value) >= scale:
            return f"{value / scale:.3g}{giga if suffix == 'G' else suffix}{unit}"
    return f"{value:.3g}{unit}"


def sci(value: Any, spec: str = ".3g", missing: str = "n/a") -> str:
    """FLOPs and fitted parameters: ``format(value, spec)``, 1.23e+18 by default."""
    return format(value, spec) if _finite(value) else missing


def percent(fraction: Any, spec: str = "+.1f") -> str:
    """A relative error as a percentage: 0.012 -> '+1.2%'."""
    return sci(fraction * 100 if _finite(fraction) else None, spec) + ("%" if _finite(fraction) else "")


def interval(ci: Optional[Sequence[Any]], spec: str = ".3g") -> str:
    """' [lo, hi]' after a value, or nothing when the bootstrap gave no interval."""
    if not ci or ci[0] is None or ci[1] is None:
        return ""
    return f" [{sci(ci[0], spec)}, {sci(ci[1], spec)}]"


def budget_tag(flops: float) -> str:
    """A FLOP budget in a run name: 1e+18 -> '1e18' (no '+': names become directory names)."""
    return f"{flops:.3g}".replace("e+", "e")
