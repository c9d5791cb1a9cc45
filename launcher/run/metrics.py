"""A run's curve: rank 0 appends one JSON line per logged step to ``metrics.jsonl``; W&B mirrors it.

Keys of a line: ``step`` (optimizer steps done), ``tokens`` and ``flops`` (cumulative training tokens
and FLOPs), ``train_loss`` (mean over micro-batches and ranks), ``lr`` (of that step, as the optimizer
had it), ``tokens_per_s`` (training throughput since the previous line, validation and checkpoints
excluded), ``mfu`` (flops/s over device_peak_flops x ranks; null without a peak), ``time`` (unix
seconds); ``slowest_rank``, ``slowest_host`` and ``straggler_ratio`` (the slowest rank's forward time
since the previous line over the median rank's, ``launcher.run.stragglers``); ``spike`` (the step's loss
was over the spike bound), ``rewinds`` and ``data_offset`` (rewinds so far and the data steps they skipped,
``launcher.run.spikes``); on validation steps also ``val_loss`` and whatever else the family evaluates
(CLIP: ``zero_shot_acc``). Non-finite values are written as null. W&B gets the numbers.

The file is append-only and the source of truth. A resumed run starts again after its checkpoint, so
steps logged after that checkpoint by the interrupted attempt appear twice. The runtime says so: an attempt
that starts with the file already there (a resume, or a restart from step 0), and a rewind past loss spikes,
first append a resume marker, ``{"resumed_from": <step it continues from>, "time": ...}``. ``latest_attempt``
is the one rule every reader applies (``read_metrics`` here, ``launcher.analysis.collect``'s vectorised
reader): a marker drops the earlier records past its step (the latest attempt's record of a step wins),
and a record whose step does not go forward without a marker before it (a stray or hand-appended line)
is skipped and counted, never a reason to rewrite the curve around it.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

if TYPE_CHECKING:
    from launcher.config.run import WandbMode

METRICS_FILE = "metrics.jsonl"
RESUME_KEY = "resumed_from"  # the key of a resume marker line
RESUME_NEEDLE = json.dumps(RESUME_KEY).encode()  # a file without it holds no marker


class MetricsLog:
    """Appends records, each flushed and fsynced, so a killed run loses at most the line being written."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / METRICS_FILE

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, allow_nan=False, separators=(",", ":"))
        with open(self.path, "a") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def mark_resume(self, step: int) -> None:
        """The records after this line continue from ``step`` (see the module docstring)."""
        self.append({RESUME_KEY: int(step), "time": time.time()})


def resume_step(record: Any) -> Optional[int]:
    """The step a resume marker continues from, or None when ``record`` is not a marker."""
    if not isinstance(record, dict) or "step" in record:
        return None
    step = record.get(RESUME_KEY)
    return step if isinstance(step, int) and not isinstance(step, bool) and step >= 0 else None


def latest_attempt(
    steps: Sequence[int] | np.ndarray, resumes: Sequence[tuple[int, int]] = ()
) -> tuple[np.ndarray, int]:
    """Indices, in file order (and so in step order), of the records that make the curve, and how many were
    skipped because their step did not go forward with no resume marker before them.

    ``resumes``: (position, step) of each marker, in file order; position is the index of the record that
    follows it. Between markers a record counts only when its step is past every step before it (and past
    the marker's step); a marker drops the earlier records past its step (the latest attempt's wins)."""
    step = np.asarray(steps, dtype=np.int64)
    n = len(step)
    keep = going_forward(step, resumes)
    backwards = n - int(keep.sum())
    if resumes:
        marker_steps = np.array([k for _, k in resumes], dtype=np.int64)
        limit = np.r_[np.minimum.accumulate(marker_steps[::-1])[::-1], np.iinfo(np.int64).max]
        segment_of = np.searchsorted(np.array([i for i, _ in resumes]), np.arange(n), side="right")
        keep &= step <= limit[segment_of]
    return np.flatnonzero(keep), backwards


def going_forward(step: np.ndarray, resumes: Sequence[tuple[int, int]]) -> np.ndarray:
    """Which records step past every record before them since the last resume marker (and past its step)."""
    starts = [0, *(i for i, _ in resumes), len(step)]
    keep = np.zeros(len(step), dtype=bool)
    for segment, floor in enumerate([-1, *(k for _, k in resumes)]):
        part = step[starts[segment] : starts[segment + 1]]
        if len(part):
            keep[starts[segment] : starts[segment + 1]] = part > np.maximum.accumulate(np.r_[floor, part[:-1]])
    return keep


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The curve of a run as its latest attempts wrote it (``latest_attempt``): one record per step, in step
    order. A bad line (torn by a kill, not JSON, not an object, no integer ``step``, a step going back with
    no resume marker) is skipped on its own, never a reason to drop the lines around it;
    ``read_metrics_counted`` also says how many."""
    return read_metrics_counted(path)[0]


def read_metrics_counted(path: Path) -> tuple[list[dict[str, Any]], int]:
    """``read_metrics`` and the number of lines it skipped as bad (resume markers are not bad lines)."""
    records, resumes, bad = read_lines(path)
    keep, backwards = latest_attempt([r["step"] for r in records], resumes)
    return [records[i] for i in keep.tolist()], bad + backwards


def read_attempts(path: Path) -> list[tuple[int, list[dict[str, Any]]]]:
    """Every attempt that logged, as (the step it started from, its records in file order): what each one
    computed, repeated steps included (``launcher.analysis.spent``). A resume marker starts an attempt;
    lines ``read_metrics`` skips are skipped here too."""
    records, resumes, _ = read_lines(path)
    keep = going_forward(np.array([r["step"] for r in records], dtype=np.int64), resumes)
    bounds = [(0, 0), *resumes, (len(records), -1)]
    out = []
    for (first, start), (stop, _) in zip(bounds, bounds[1:]):
        kept = [records[i] for i in range(first, stop) if keep[i]]
        if kept:
            out.append((start, kept))
    return out


def read_lines(path: Path) -> tuple[list[dict[str, Any]], list[tuple[int, int]], int]:
    """A metrics file's records (each an object with an integer step), its resume markers (index of the
    record after each, its step) and the number of other lines (bad: cut, not JSON, no step)."""
    records: list[dict[str, Any]] = []
    resumes: list[tuple[int, int]] = []
    bad = 0
    with open(path, "rb") as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:  # not JSON, or not UTF-8
                record = None
            step = record.get("step") if isinstance(record, dict) else None
            if isinstance(step, int) and not isinstance(step, bool):
                records.append(record)
            elif (resumed := resume_step(record)) is not None:
                resumes.append((len(records), resumed))
            else:
                bad += 1
    return records, resumes, bad


def wandb_mode(mode: WandbMode, offline_compute: bool) -> WandbMode:
    """The W&B mode a run uses: never online where the profile says compute nodes are offline
    (``cluster.offline_compute``): the call would hang or fail there; ``ladder watch`` syncs later."""
    if mode == "online" and offline_compute:
        print(
            "ladder train: wandb.mode online on a profile whose compute nodes are offline "
            "(cluster.offline_compute): W&B stays offline; sync with `ladder watch`",
            file=sys.stderr,
            flush=True,
        )
        return "offline"
    return mode


class WandbMirror:
    """Mirrors records to W&B (offline by default). Any W&B failure is reported once and the run goes on."""

    def __init__(self, mode: WandbMode, run_dir: Path, run_id: str, config: dict[str, Any], **init_kwargs: Any):
        self.run = None
        self.warned = False
        if mode == "disabled":
            return
        try:
            import wandb

            self.run = wandb.init(
                mode=mode,
                dir=str(run_dir),
                id=run_id,
                resume="allow",
                config=config,
                settings=wandb.Settings(console="off", silent=True, x_disable_stats=True),
                **init_kwargs,
            )
        except Exception as exc:  # noqa: BLE001 - W&B must never stop a run
            self._warn(exc)

    def _warn(self, exc: BaseException) -> None:
        if not self.warned:
            print(
                f"warning: W&B mirror disabled: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                file=sys.stderr,
                flush=True,
            )
            self.warned = True
        self.run = None

    def log(self, record: dict[str, Any]) -> None:
        if self.run is None:
            return
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.run.log(
                    {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))},
                    step=record["step"],
                )
        except Exception as exc:  # noqa: BLE001
            self._warn(exc)

    def finish(self, exit_code: Optional[int] = 0) -> None:
        if self.run is None:
            return
        try:
            self.run.finish(exit_code=exit_code)
        except Exception as exc:  # noqa: BLE001
            self._warn(exc)
        self.run = None
