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
steps logged after that checkpoint by the interrupted attempt appear twice: ``latest_attempt`` is the one
rule every reader applies (``read_metrics`` here, ``launcher.analysis.collect``'s vectorised reader): keep the records
of the latest attempt (a step that goes back starts a new attempt and drops what it repeats).
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

if TYPE_CHECKING:
    from launcher.config.run import WandbMode

METRICS_FILE = "metrics.jsonl"


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


def latest_attempt(steps: Sequence[int] | np.ndarray) -> np.ndarray:
    """Indices, in file order, of the records the latest attempts wrote: a record is dropped when a later
    one's step is not after it (a resume logs again the steps after its checkpoint)."""
    step = np.asarray(steps)
    later_min = np.minimum.accumulate(step[::-1])[::-1]
    keep = np.ones(len(step), dtype=bool)
    keep[:-1] = step[:-1] < later_min[1:]
    return np.flatnonzero(keep)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The curve of a run as its latest attempts wrote it (``latest_attempt``): one record per step, in step
    order. A bad line (torn by a kill, not JSON, not an object, no integer ``step``) is skipped on its own,
    never a reason to drop the lines around it; ``read_metrics_counted`` also says how many."""
    return read_metrics_counted(path)[0]


def read_metrics_counted(path: Path) -> tuple[list[dict[str, Any]], int]:
    """``read_metrics`` and the number of bad lines it skipped."""
    records: list[dict[str, Any]] = []
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
            else:
                bad += 1
    return [records[i] for i in latest_attempt([r["step"] for r in records]).tolist()], bad


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
