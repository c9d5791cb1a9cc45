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
from collections.abc import Mapping
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


IDENTITY_SECTIONS = ("model", "data", "train", "deepspeed", "seed")  # what decides a run's result


def run_hash(model: dict, data: dict, train: dict, deepspeed: dict, seed: int) -> str:
    """A run's identity from its resolved sections (the planner has them as dicts, one per run)."""
    return content_hash(dict(zip(IDENTITY_SECTIONS, (model, data, train, deepspeed, seed))))


def identity_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """The fields of a run's identity (``IDENTITY_SECTIONS``) that differ between two resolved configs, as
    (dotted name, old, new), sorted; names, folders, W&B, the cluster and the launch never count."""
    changes: list[tuple[str, Any, Any]] = []

    def walk(name: str, a: Any, b: Any) -> None:
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            for key in sorted(set(a) | set(b), key=str):
                walk(f"{name}.{key}", a.get(key, _ABSENT), b.get(key, _ABSENT))
        elif _canonical(a) != _canonical(b):
            changes.append((name, a, b))

    for section in IDENTITY_SECTIONS:
        walk(section, old.get(section, _ABSENT), new.get(section, _ABSENT))
    return changes


class _Absent:
    def __repr__(self) -> str:
        return "(absent)"


_ABSENT = _Absent()


def _canonical(value: Any) -> str:
    """A value as the hash sees it (a YAML round trip turns tuples into lists; JSON reads both alike)."""
    return json.dumps(value, sort_keys=True, default=str)


def config_hash(run: RunSections) -> str:
    """A resolved run config's identity: ``run_hash`` of its sections."""
    return run_hash(run.model, run.data, dataclasses.asdict(run.train), dataclasses.asdict(run.deepspeed), run.seed)
