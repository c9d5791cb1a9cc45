"""A run's faults that were not crashes, as its ``state.json`` keeps them across attempts: hangs
(``launcher.run.heartbeat.record_hang``) and rewinds after loss spikes (``Trainer._rewind``), one row
each, for ``ladder status`` and the report."""

from __future__ import annotations

import dataclasses
from typing import Optional


@dataclasses.dataclass(frozen=True)
class Fault:
    kind: str  # "hang" or "rewind"
    attempt: Optional[int]  # hang: the try of the ranks that hung (the job step's start in a batch job)
    step: Optional[int]  # hang: where the stuck ranks stopped; rewind: the step of the last spike
    where: str  # hang: the stuck ranks and their hosts; rewind: the spikes and the step rewound to
    skipped: Optional[tuple[int, int]] = None  # rewind: the data steps [first, end) skipped

    def text(self) -> str:
        """One line: ``hang in attempt 1 at step 23: rank(s) 1 on n2`` ..."""
        attempt = f" in attempt {self.attempt}" if self.attempt is not None else ""
        skipped = f", data steps [{self.skipped[0]}, {self.skipped[1]}) skipped" if self.skipped else ""
        return f"{self.kind}{attempt} at step {self.step}: {self.where}{skipped}"


def run_faults(state: Optional[dict]) -> list[Fault]:
    """The hangs, then the rewinds, of a run's ``state.json`` (None or an old file without them: none)."""
    state = state or {}
    hangs = [
        Fault(
            "hang",
            hang.get("attempt"),
            hang.get("step"),
            f"rank(s) {', '.join(map(str, hang.get('ranks', [])))} on {', '.join(hang.get('hosts') or ['?'])}"
            f" silent {hang.get('silent_s')} s",
        )
        for hang in state.get("hangs") or []
    ]
    rewinds = [
        Fault(
            "rewind",
            None,
            rewind.get("from_step"),
            f"loss spikes at steps {rewind.get('spikes')}, back to step {rewind.get('to_step')}",
            tuple(rewind["skipped_data_steps"]) if rewind.get("skipped_data_steps") else None,
        )
        for rewind in state.get("rewinds") or []
    ]
    return hangs + rewinds
