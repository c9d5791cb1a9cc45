"""Identities by content: the same inputs give the same id on any machine, in any later session.

``run_hash`` is a run's identity (the job database's key, the default run folder): it covers what
decides the run's result, model, data, optimisation, ZeRO stage and seed, and leaves out names,
folders, W&B fields and the cluster, so the same run planned again, or on another site, is never
repeated. ``content_hash`` is the primitive, also used to tell whether a fit's inputs changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Protocol


class RunSections(Protocol):
    """What ``config_hash`` reads of a run config (``launcher.config.run.RunConfig``)."""

    model: dict
    data: dict
    train: Any  # a dataclass
    deepspeed: Any  # a dataclass
    seed: int


def content_hash(value: Any, length: int = 16) -> str:
    """sha256 of ``value`` as canonical JSON (sorted keys; non-JSON values by ``str``), first ``length`` hex digits."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:length]


def run_hash(model: dict, data: dict, train: dict, deepspeed: dict, seed: int) -> str:
    """A run's identity from its resolved sections (the planner has them as dicts, one per run)."""
    return content_hash({"model": model, "data": data, "train": train, "deepspeed": deepspeed, "seed": seed})


def config_hash(run: RunSections) -> str:
    """A resolved run config's identity: ``run_hash`` of its sections."""
    return run_hash(run.model, run.data, dataclasses.asdict(run.train), dataclasses.asdict(run.deepspeed), run.seed)
