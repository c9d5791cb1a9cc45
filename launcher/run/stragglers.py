"""Stragglers: at every metrics record each rank tells rank 0 its training time since the last record.

One ``all_gather_object`` per logging interval (not per step) is cheap next to the steps it covers.
The slowest rank, its host and its time over the median rank's go into the record, so that a node that
is consistently slow shows in the curve, ``ladder status`` and ``ladder watch``.
"""
from __future__ import annotations

import socket
import statistics


def gather(busy_s: float, world: int) -> dict:
    """``slowest_rank``, ``slowest_host`` and ``straggler_ratio`` (slowest / median) over every rank;
    every rank calls it at the same step."""
    import torch.distributed as dist

    times: list = [None] * world
    dist.all_gather_object(times, (busy_s, socket.gethostname()))
    slowest = max(range(world), key=lambda r: times[r][0])
    median = statistics.median(t for t, _ in times)
    return {"slowest_rank": slowest, "slowest_host": times[slowest][1],
            "straggler_ratio": times[slowest][0] / median if median > 0 else None}
