"""Checkpoints of a run: DeepSpeed's model and optimizer state plus the run's own position.

Layout under ``<run_dir>/checkpoints/``::

    step_00000050/            DeepSpeed's files for that step (one set per rank) + run_rank00000.pt ...
    latest                    the tag of the last complete checkpoint (DeepSpeed's own pointer format)

A tag is complete only when every rank has written its part: ``latest`` is replaced atomically by
rank 0 after a barrier, so a run killed mid-save resumes from the previous tag. The run's own state
(step, tokens, FLOPs, data position, torch/numpy/python RNG states) is saved per rank beside
DeepSpeed's files, because the RNG streams of ranks differ. Tags at ``keep_steps`` (a WSD trunk's branch
points) are never pruned; another run can start from one (``train.init_from``) once it is complete.

Each save is timed, from its first write until every rank has written (closed) its files, and its tag's
bytes counted (``CheckpointWrite``): the write speed the runs measure is what ``ladder project`` uses for
a target's checkpoint time instead of an assumed bandwidth.
"""

from __future__ import annotations

import dataclasses
import os
import random
import re
import shutil
import statistics
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Optional

from launcher.errors import UserError
from launcher.files import atomic_write
from launcher.run.state import RunState

LATEST = "latest"
KEEP = 2  # complete checkpoints kept: the newest and one before it, in case the newest is unreadable
_TAG = re.compile(r"step_(\d{8,})")


@dataclasses.dataclass
class TrainState:
    """Where a run stands; with ``data_index`` the next training batch is known exactly."""

    step: int = 0  # optimizer steps done
    tokens: int = 0  # training tokens seen (samples for CLIP)
    flops: int = 0  # training FLOPs spent (flops_per_token x tokens)
    data_index: int = 0  # index of the next training micro-batch of rank 0 (= (step + data_offset) x accum x world)
    samples_per_step: int = 0  # accum x world x micro_batch_size: the data order depends on it
    data_offset: int = 0  # steps of data skipped by rewinds (launcher/run/spikes.py): step s reads data step s + offset
    rewinds: int = 0  # rewinds after loss spikes so far


def rng_state() -> dict[str, Any]:
    import numpy
    import torch

    return {"torch": torch.get_rng_state(), "numpy": numpy.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy
    import torch

    torch.set_rng_state(state["torch"])
    numpy.random.set_state(state["numpy"])
    random.setstate(state["python"])


def tag_of(step: int) -> str:
    return f"step_{step:08d}"


def tag_dir(run_dir: Path | str, step: int) -> Path:
    """Where a run's checkpoint of ``step`` lives: what a branch's train.init_from names."""
    return Path(run_dir) / "checkpoints" / tag_of(step)


def checkpoint_complete(tag_path: Path | str) -> bool:
    """Whether every rank finished writing this tag: it exists and its run's ``latest`` is at or past it
    (``latest`` moves only after a complete save, and saves follow one another)."""
    tag_path = Path(tag_path)
    match, latest = _TAG.fullmatch(tag_path.name), Checkpointer(tag_path.parent.parent, 0).latest_tag()
    latest_match = _TAG.fullmatch(latest) if latest else None
    return bool(match and latest_match and tag_path.is_dir() and int(latest_match[1]) >= int(match[1]))


@dataclasses.dataclass(frozen=True)
class CheckpointWrite:
    """One save: its step, the bytes of its tag (every rank's files) and the seconds until all were on disk."""

    step: int
    bytes: int
    seconds: float


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def write_speed(runs: Iterable[tuple[Optional[RunState], int]]) -> Optional[dict]:
    """The checkpoint write speed of one node, from runs' state.json (``checkpoint_writes``) and node counts:
    each run's bytes over its seconds, per node, then the median over the runs; None when none wrote one."""
    per_node, writes = [], 0
    for state, nodes in runs:
        done = [w for w in (state.checkpoint_writes if state else []) if w.get("bytes") and w.get("seconds")]
        if done:
            per_node.append(sum(w["bytes"] for w in done) / sum(w["seconds"] for w in done) / max(1, nodes))
            writes += len(done)
    if not per_node:
        return None
    return {"bytes_per_s_per_node": statistics.median(per_node), "writes": writes, "runs": len(per_node)}


class Checkpointer:
    """Saves and restores one run's checkpoints; every rank calls ``save`` and ``load`` together."""

    def __init__(self, run_dir: Path, rank: int, keep_steps: tuple[int, ...] = ()):
        self.root = Path(run_dir) / "checkpoints"
        self.rank = rank
        self.keep = {tag_of(step) for step in keep_steps}

    def latest_tag(self) -> Optional[str]:
        try:
            tag = (self.root / LATEST).read_text().strip()
        except FileNotFoundError:
            return None
        return tag or None

    def save(self, engine, state: TrainState) -> CheckpointWrite:
        """Every rank's part of the step's tag, then the ``latest`` pointer; the write as rank 0 measured it
        (the bytes of the whole tag; other ranks count 0)."""
        import torch
        import torch.distributed as dist

        started = time.perf_counter()
        tag = tag_of(state.step)
        self.root.mkdir(parents=True, exist_ok=True)
        engine.save_checkpoint(
            str(self.root), tag=tag, client_state={"scaleladder": dataclasses.asdict(state)}, save_latest=False
        )
        own = self.root / tag / f"run_rank{self.rank:05d}.pt"
        tmp = own.with_name(own.name + ".tmp")
        torch.save({"state": dataclasses.asdict(state), "rng": rng_state()}, tmp)
        os.replace(tmp, own)
        dist.barrier()  # every rank's part is on disk before the pointer moves
        seconds = time.perf_counter() - started
        written = 0
        if self.rank == 0:
            written = tree_bytes(self.root / tag)
            atomic_write(self.root / LATEST, tag)
            self._prune(keep={tag} | self.keep)
        dist.barrier()
        return CheckpointWrite(state.step, written, seconds)

    def load(self, engine, samples_per_step: int) -> Optional[TrainState]:
        """Restore the latest complete checkpoint into ``engine`` and this process's RNGs; None if none."""
        tag = self.latest_tag()
        return None if tag is None else self._restore(engine, self.root / tag, samples_per_step)

    def load_from(self, engine, tag_path: Path | str, samples_per_step: int) -> TrainState:
        """Start from another run's complete checkpoint (``train.init_from``), as if resuming it."""
        if not checkpoint_complete(tag_path):
            raise UserError(
                f"train.init_from: {tag_path} is not a complete checkpoint (a folder "
                f"<run_dir>/checkpoints/step_XXXXXXXX at or before that run's 'latest')"
            )
        return self._restore(engine, Path(tag_path), samples_per_step)

    def _restore(self, engine, tag_path: Path, samples_per_step: int) -> TrainState:
        import torch

        tag = tag_path.name
        path, _ = engine.load_checkpoint(str(tag_path.parent), tag=tag)
        if path is None:
            raise RuntimeError(f"checkpoint {tag_path}: DeepSpeed could not load it")
        own = torch.load(tag_path / f"run_rank{self.rank:05d}.pt", weights_only=False)
        state = TrainState(**own["state"])
        if state.samples_per_step != samples_per_step:
            raise UserError(
                f"train.micro_batch_size: the checkpoint {tag} was written with "
                f"{state.samples_per_step} samples per step, this run has {samples_per_step}; "
                f"the data order would change"
            )
        set_rng_state(own["rng"])
        return state

    def _prune(self, keep: set[str]) -> None:
        tags = sorted((p.name for p in self.root.iterdir() if p.is_dir() and _TAG.fullmatch(p.name)), reverse=True)
        for name in tags[KEEP:]:
            if name not in keep:
                shutil.rmtree(self.root / name, ignore_errors=True)
