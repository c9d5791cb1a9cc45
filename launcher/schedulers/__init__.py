"""Scheduler adapters, found by ``cluster.scheduler`` through a registry rather than by site name.

A new scheduler is one module with a ``launcher.schedulers.base.Scheduler`` subclass and one line here.
"""

from __future__ import annotations

import importlib

from launcher.config.cluster import ClusterProfile
from launcher.errors import UserError
from launcher.schedulers.base import Scheduler

# cluster.scheduler -> "module:class", imported only when used
REGISTRY: dict[str, str] = {
    "slurm": "launcher.schedulers.slurm:SlurmScheduler",
    "lsf": "launcher.schedulers.lsf:LsfScheduler",
}


def get_scheduler(profile: ClusterProfile) -> Scheduler:
    """The adapter for ``profile.scheduler``."""
    target = REGISTRY.get(profile.scheduler)
    if target is None:
        raise UserError(
            f"cluster.scheduler: {profile.scheduler!r} has no batch-scheduler adapter; allowed: "
            f"{', '.join(sorted(REGISTRY))} (cluster=local runs sweeps with `ladder sweep`)"
        )
    module_name, class_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), class_name, None)
    if cls is None:
        raise UserError(f"cluster.scheduler: {profile.scheduler!r}: {target} is not available in this install")
    return cls(profile)
