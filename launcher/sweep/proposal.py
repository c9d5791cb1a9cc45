"""``proposal.yaml``: the next round of a sweep, written by ``ladder propose`` and read back by the planner.

A proposal lists isoFLOP points (a size and a budget) with why each was proposed and what it should
cost. ``ladder sweep sweep=NAME proposal=FILE`` (and ``ladder submit``) plan the sweep with these points
added (``extend_sweep``): the runs already there keep their config hashes, so the job database repeats
none of them and records only the new ones.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

from launcher.config.validate import validate
from launcher.errors import UserError

PROPOSAL_FILE = "proposal.yaml"


@dataclasses.dataclass
class ProposedRun:
    params: float  # the target parameter count (solved into a shape like the sweep's own sizes)
    budget: float  # the isoFLOP budget C it joins (a new one when it is not the sweep's)
    reason: str = ""
    est_node_hours: Optional[float] = None


@dataclasses.dataclass
class Proposal:
    sweep: str
    rule: str  # the rule that chose the runs, in words
    runs: list[ProposedRun]
    target_flops: Optional[float] = None

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(dataclasses.asdict(self), sort_keys=False, allow_unicode=True)


def read_proposal(path: str | Path) -> Proposal:
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise UserError(f"proposal: cannot read {path}: {exc.strerror}") from None
    return validate(Proposal, raw, "proposal")


def extend_sweep(sweep, proposal: Proposal):
    """The sweep config with the proposal's points added, per budget (an isoflop sweep only).

    In a WSD sweep a proposed size of its own is a new trunk with its branches; one that solves to the
    shape of a size already run lengthens that size's trunk, which (a trunk is identified by its length
    and forks) makes the trunk and its branches new runs."""
    if sweep.kind != "isoflop" or sweep.shapes:
        raise UserError(
            f"proposal: only isoflop sweeps sized by params take proposals; sweep {sweep.name} "
            f"is {sweep.kind}{' sized by shapes' if sweep.shapes else ''}"
        )
    per_budget = {
        b: list(sweep.params_per_budget[i] if sweep.params_per_budget else sweep.params)
        for i, b in enumerate(sweep.budgets)
    }
    for run in proposal.runs:
        sizes = per_budget.setdefault(next((b for b in per_budget if abs(b / run.budget - 1) < 1e-6), run.budget), [])
        if not any(abs(p / run.params - 1) < 1e-6 for p in sizes):
            sizes.append(run.params)
    budgets = sorted(per_budget)
    return dataclasses.replace(
        sweep, params=[], budgets=budgets, params_per_budget=[sorted(per_budget[b]) for b in budgets]
    )
