"""Stragglers: at every metrics record each rank tells the others its compute time since the last record.

The time compared is the ranks' forward passes: a whole step takes as long on every rank, since the
fast ones wait for the slow one in the gradient all-reduce. One small all-reduce per logging interval
(not per step) is cheap next to the steps it covers.
The slowest rank, its host and its time over the median rank's go into the record, so that a node that
is consistently slow shows in the curve, ``ladder status`` and ``ladder watch``.
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path

from launcher.run.heartbeat import read_beats

# test-only: "<rank>:<seconds>" makes that rank sleep so long in every forward, a node that is slow for
# tests/test_spikes.py to find; never set in production
SLOW_ENV = "SCALELADDER_TEST_SLOW_RANK"


def test_delay(rank: int, environ=os.environ) -> float:
    """Seconds the test-only hook adds to each forward of this rank (0 outside tests)."""
    slow_rank, _, seconds = environ.get(SLOW_ENV, "").partition(":")
    return float(seconds) if slow_rank.strip() == str(rank) else 0.0


def gather(compute_s: float, rank: int, world: int, run_dir: Path) -> dict:
    """``slowest_rank``, ``slowest_host`` and ``straggler_ratio`` (slowest / median) over every rank;
    every rank calls it at the same step. The times travel in one all-reduce (each rank fills its own
    slot; no pickled objects, whose buffers would outlive the groups at exit), the host comes from the
    slowest rank's heartbeat."""
    import torch
    import torch.distributed as dist

    from launcher.run.rendezvous import collective_device

    times = torch.zeros(world, dtype=torch.float64, device=collective_device())
    times[rank] = compute_s
    dist.all_reduce(times)
    slowest = int(times.argmax())
    median = statistics.median(times.tolist())
    beat = read_beats(run_dir).get(slowest)
    return {
        "slowest_rank": slowest,
        "slowest_host": beat.host if beat else None,
        "straggler_ratio": float(times[slowest]) / median if median > 0 else None,
    }


CONSISTENT_RECORDS = 10  # the last this many records decide ...
CONSISTENT_SHARE = 0.8  # ... a host slowest in at least this share of them ...
CONSISTENT_RATIO = 1.2  # ... at least this much slower than the median rank is consistently slow


def consistent_straggler(records: list[dict]) -> str | None:
    """ "host (rank r, x1.35)" when one host was the slowest, and clearly slow, in most of the last records."""
    recent = [r for r in records[-CONSISTENT_RECORDS:] if r.get("straggler_ratio") is not None]
    if len(recent) < CONSISTENT_RECORDS // 2:
        return None
    hosts = [r["slowest_host"] for r in recent]
    host = max(set(hosts), key=hosts.count)
    mine = [r for r in recent if r["slowest_host"] == host]
    ratio = statistics.median(r["straggler_ratio"] for r in mine)
    if len(mine) < CONSISTENT_SHARE * len(recent) or ratio < CONSISTENT_RATIO:
        return None
    return f"{host} (rank {mine[-1]['slowest_rank']}, x{ratio:.2f})"
