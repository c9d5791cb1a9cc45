"""Whether a run can fit at all: lower bounds on one device's memory, checked before anything runs.

Two floors, each one that no ZeRO stage, offload-free setting or recomputation gets under:
  model states   16 bytes per parameter (weights, gradients and Adam's two moments: fp32 4 + 4 + 8, or
                 mixed precision 2 + 2 + 12), sharded over every rank of the run at best (ZeRO-3)
  one step       a micro-batch's activations the backward needs at the least (the family's
                 ``kept_per_sample``: every block's input), at the training precision
A run over either is refused in one line naming the field to change, by ``ladder plan`` (before a shape is
even solved for an absurd ``sweep.params``) and by ``ladder train`` (before any rank starts). Without
``cluster.device_memory_bytes`` nothing is checked.
"""

from __future__ import annotations

from typing import Optional

from launcher.errors import UserError

MODEL_STATE_BYTES = 16
PRECISION_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


def _gb(n: float) -> str:
    return f"{n / 1e9:.3g} GB"


def check_model_states(params: float, ranks: int, device_memory: Optional[float], field: str) -> None:
    """Refuse ``params`` parameters whose weights, gradients and Adam states exceed ``ranks`` devices."""
    if device_memory is None:
        return
    need = MODEL_STATE_BYTES * params / max(1, ranks)
    if need > device_memory:
        raise UserError(
            f"{field}: {params:.3g} parameters need at least {_gb(need)} per device for weights, gradients and "
            f"Adam states even sharded over all {ranks} rank(s) (ZeRO-3), more than a device's "
            f"{_gb(device_memory)} (cluster.device_memory_bytes); allowed: at most "
            f"{device_memory * max(1, ranks) / MODEL_STATE_BYTES:.3g} parameters"
        )


def check_step(micro_batch_size: int, kept_per_sample: int, precision: str, device_memory: Optional[float]) -> None:
    """Refuse a micro-batch whose least activations exceed a device."""
    if device_memory is None:
        return
    need = micro_batch_size * kept_per_sample * PRECISION_BYTES[precision]
    if need > device_memory:
        most = int(device_memory // (kept_per_sample * PRECISION_BYTES[precision]))
        raise UserError(
            f"train.micro_batch_size: a micro-batch of {micro_batch_size:,} samples keeps at "
            f"least {_gb(need)} of activations for the backward, more than a device's {_gb(device_memory)} "
            f"(cluster.device_memory_bytes); allowed: at most {most:,} (the global batch stays: accumulation "
            "makes it up)"
        )
