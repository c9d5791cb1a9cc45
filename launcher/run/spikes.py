"""Loss spikes, and PaLM's remedy: rewind to the checkpoint before the spike and skip the batches that led to it.

A step's training loss is a spike when it exceeds median + ``train.spike_threshold`` x MAD (scaled to a
normal's sigma) of the last ``train.spike_window`` non-spike losses, once that window is full. After
``train.spike_patience`` spikes in a row the runtime rewinds: it loads the latest checkpoint (none is
written during a streak of spikes, so that checkpoint predates the first of them) and moves the run's
data offset past every batch read since that checkpoint. Batches are addressed by index
(``BatchPlan.index``), so the offset, kept in the checkpoint's ``TrainState.data_offset``, is the whole
remedy; a resumed run reads exactly what the rewound one would have. After ``train.max_rewinds``
rewinds, the next streak ends the run as diverged.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
from collections import deque
from typing import Optional

MAD_TO_SIGMA = 1.4826  # MAD x this estimates a normal's standard deviation
# test-only: comma-separated data steps (step + data offset) whose batches get every label set to 0, a
# byte the tiny LM never sees, so that their loss spikes (tests/test_spikes.py); never set in production
CORRUPT_ENV = "SCALELADDER_TEST_CORRUPT_STEPS"


@dataclasses.dataclass
class SpikeDetector:
    """Running robust bound over recent losses; ``observe`` says whether the run should rewind now."""

    window: int
    threshold: float
    patience: int
    history: deque = dataclasses.field(default_factory=deque)
    streak: list[int] = dataclasses.field(default_factory=list)  # steps of the current run of spikes

    def bound(self) -> Optional[float]:
        """The loss above which a step is a spike; None until the window is full."""
        if len(self.history) < self.window:
            return None
        median = statistics.median(self.history)
        mad = statistics.median(abs(x - median) for x in self.history)
        return median + self.threshold * MAD_TO_SIGMA * mad

    def observe(self, step: int, loss: float) -> tuple[bool, bool]:
        """(is this step a spike, has the streak reached the patience)."""
        bound = self.bound()
        if bound is not None and loss > bound:
            self.streak.append(step)
            return True, len(self.streak) >= self.patience
        self.streak.clear()
        self.history.append(loss)
        while len(self.history) > self.window:
            self.history.popleft()
        return False, False

    @property
    def in_streak(self) -> bool:
        return bool(self.streak)

    def reset(self) -> None:
        """After a rewind: the streak is gone; the history of good losses stays."""
        self.streak.clear()


def corrupt_steps(environ=os.environ) -> frozenset[int]:
    """The data steps the test-only hook corrupts (empty outside tests)."""
    return frozenset(int(s) for s in environ.get(CORRUPT_ENV, "").split(",") if s.strip())


def corrupted(batch: dict, data_step: int, steps: frozenset[int]) -> dict:
    """The batch, or, for a data step the test-only hook names, the batch with every label set to 0."""
    if data_step not in steps or "labels" not in batch:
        return batch
    return dict(batch, labels=batch["labels"].clone().zero_())
