"""What a sweep's compute actually paid for: every attempt of every run, evaluations and calibration runs.

metrics.jsonl keeps every attempt's records (``launcher.run.metrics``): an attempt starts at a resume
marker, which names the step it continues from (a resume repeats the steps after its checkpoint), so
the FLOPs an attempt computed are its last record's cumulative FLOPs less those at that step; steps an
attempt computed after its last record and never logged (a kill between two records) are not counted, at
most one logging interval per attempt. The *useful* FLOPs are those of the curve the latest attempts left.

Evaluation is a forward pass (a third of a training step's FLOPs per token) over ``val_batches``
micro-batches on every rank, once per logged ``val_loss``. Calibration runs (``<sweep>/calibration/``)
are counted like runs. Not counted: work that logs nothing (data preparation, start-up, checkpoint
writes), fine-tuning and inference after the sweep.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from launcher.run.metrics import METRICS_FILE, read_attempts
from launcher.run.state import RunState, read_state

CALIBRATION_DIR = "calibration"
FORWARD_SHARE = 1.0 / 3.0  # a forward pass of a training step's FLOPs (backward is twice the forward)
THRESHOLDS = (1e25, 1e26)  # reporting thresholds: EU AI Act (systemic risk), US Executive Order 14110


@dataclasses.dataclass(frozen=True)
class Spent:
    """One run's compute: kept (``useful``), computed over all attempts (``training``) and in evaluations."""

    name: str
    kind: str  # run | calibration
    attempts: int
    useful: float
    training: float
    evaluation: float

    @property
    def recomputed(self) -> float:
        """FLOPs of failed attempts' lost steps and of steps a resume did again."""
        return self.training - self.useful

    @property
    def total(self) -> float:
        return self.training + self.evaluation


def _evaluation_flops(run_dir: Path, records: list[dict], flops_per_token: float) -> float:
    """Forward FLOPs of every logged evaluation, from the run's config.yaml and state.json (0 without them)."""
    import yaml

    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        world = (read_state(run_dir, warn=True) or RunState()).world_size or 1
        train = config["train"]
        tokens = train["val_batches"] * train["micro_batch_size"] * config["model"].get("seq_len", 1)  # CLIP: 1
    except (OSError, ValueError, KeyError, TypeError, AttributeError, yaml.YAMLError):
        return 0.0
    evaluations = sum(1 for r in records if r.get("val_loss") is not None)
    return evaluations * world * tokens * flops_per_token * FORWARD_SHARE


def spent_of(run_dir: Path, name: str, kind: str = "run") -> Optional[Spent]:
    """A run's compute from its metrics.jsonl; None when it logged nothing."""
    path = run_dir / METRICS_FILE
    found = read_attempts(path) if path.exists() else []
    tries = [(start, kept) for start, records in found if (kept := [r for r in records if r.get("flops") is not None])]
    if not tries:
        return None
    records = [r for _, t in tries for r in t]
    last = max(records, key=lambda r: r["step"])
    per_step = last["flops"] / last["step"] if last["step"] else 0.0
    training = sum(t[-1]["flops"] - start * per_step for start, t in tries)
    per_token = last["flops"] / last["tokens"] if last.get("tokens") else 0.0
    return Spent(
        name,
        kind,
        len(tries),
        float(tries[-1][1][-1]["flops"]),
        float(training),
        _evaluation_flops(run_dir, records, per_token),
    )


def sweep_spent(sweep_dir: Path, runs: list[tuple[str, Path]]) -> list[Spent]:
    """The runs' compute (``runs``: name and folder) and that of the sweep's calibration runs."""
    found = [spent_of(path, name) for name, path in runs]
    calibration = sweep_dir / CALIBRATION_DIR
    if calibration.is_dir():
        found += [spent_of(p, p.name, "calibration") for p in sorted(calibration.iterdir()) if p.is_dir()]
    return [s for s in found if s is not None]


def threshold_text(total: float) -> str:
    """The sweep's total against the reporting thresholds, and what the count leaves out."""
    shares = ", ".join(f"{total / t:.2g} of {t:.0e}" for t in THRESHOLDS)
    return (
        f"Everything this sweep computed: {total:.3g} FLOPs ({shares} FLOPs, the EU AI Act's and the "
        "US reporting thresholds). Thresholds count a model's training compute; this count covers the "
        "sweep's runs with their retries, evaluations and calibration, but not fine-tuning, inference, "
        "data preparation, the many candidate runs outside this sweep, nor the work of start-up and "
        "checkpoint writes."
    )


def plot_spent(ax, spent: Sequence[Spent], extra: dict[str, float] | None = None) -> None:
    """Bars of useful, recomputed, evaluation and calibration FLOPs (and e.g. a projected target run)
    on a log scale with the 1e25 and 1e26 thresholds as lines."""
    runs = [s for s in spent if s.kind == "run"]
    bars = {
        "useful training": sum(s.useful for s in runs),
        "recomputed (retries, resumes)": sum(s.recomputed for s in runs),
        "evaluation": sum(s.evaluation for s in spent),
        "calibration": sum(s.training for s in spent if s.kind == "calibration"),
        "sweep total": sum(s.total for s in spent),
        **(extra or {}),
    }
    names = [k for k, v in bars.items() if v > 0]
    ax.barh(names, [bars[k] for k in names], color="tab:blue")
    for threshold, colour in zip(THRESHOLDS, ("tab:orange", "tab:red")):
        ax.axvline(threshold, color=colour, ls="--", lw=1.5, label=f"{threshold:.0e} FLOPs")
    ax.set_xscale("log")
    low = min((bars[k] for k in names), default=1.0)
    ax.set_xlim(10 ** math.floor(math.log10(low)) if low > 0 else 1.0, 10 * max(THRESHOLDS))
    ax.set_xlabel("FLOPs")
    ax.set_title("Compute spent, beside the reporting thresholds")
    ax.legend(fontsize=8)
