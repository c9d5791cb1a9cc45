"""ZeRO-3 against ZeRO-0: bytes of parameters, gradients and optimizer state each rank holds (2 ranks),
in fp32 and in bf16 mixed precision (what sweeps on GPUs run: cluster profiles slurm, lsf, frontier).

Every run uses ``ladder train``'s own engine (``launcher.run.runtime.build_engine``: same DeepSpeed config,
same AdamW) on a GPT-NeoX wide enough that ZeRO-3 partitions its matrices (DeepSpeed keeps tensors
under 1e5 elements whole on every rank). After one full step (so AdamW's state exists) and the
backward pass of a second (so gradients exist), each rank adds up the storages it holds, each storage
once: module parameters and ZeRO-3's partitions, the flat 16/32-bit groups, the fp32 master copies,
gradient buffers, the optimizer's state, and any other tensor the DeepSpeed optimizer keeps. Prints
both per rank and, per precision, the ratio ZeRO-3 / ZeRO-0 of the larger rank against that
precision's own ZeRO-0 baseline (goal <= 0.6).

In fp32 ZeRO-0 holds 16 bytes per parameter (weights, gradients, two Adam moments) and ZeRO-3 holds
20 / world: DeepSpeed 0.19's stage 3 keeps a separate fp32 master partition even when the weights are
already fp32 (it compares the partition's torch.device with the accelerator's device *name*, a
string, so it never reuses the partition), hence 0.625 on 2 ranks and 0.31 on 4. In bf16 both keep
an fp32 master copy on purpose: ZeRO-0 holds 2 + 2 + 4 + 8 = 16 bytes per parameter (bf16 weights and
gradients, fp32 master, Adam moments), ZeRO-3 16 / world, hence 0.5 on 2 ranks.

    .venv/bin/python bench/zero_memory.py [hydra overrides]
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from launcher.config.run import load_run_config
from launcher.run import local_launch, rendezvous

MODEL = [
    "model=gpt_neox/tiny",
    "model.d_model=512",
    "model.n_layer=4",
    "model.n_heads=8",
    "model.seq_len=32",
    "train.micro_batch_size=2",
    "train.global_batch_tokens=128",
    "train.max_steps=2",
]
GOAL = 0.6
PRECISIONS = {"fp32": "fp32", "bf16": "bf16 mixed precision"}
# Where DeepSpeed's optimizers keep each kind of state (stages 1/2, stage 3 and the 16-bit wrapper of
# stage 0 name them differently); any other tensor the optimizer holds counts as "other".
OPTIMIZER_PARTS = {
    "parameters": ("bit16_groups_flat", "fp16_partitioned_groups_flat"),
    "fp32 master": ("single_partition_of_fp32_groups", "fp32_partitioned_groups_flat", "fp32_groups"),
    "gradients": ("averaged_gradients", "grad_partitions_flat_buffer"),
}


def tensors_in(value) -> list:
    import torch

    if isinstance(value, torch.Tensor):
        return [value, *([value.grad] if value.grad is not None else [])]
    if isinstance(value, dict):
        return [t for v in value.values() for t in tensors_in(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in tensors_in(v)]
    return []


def held_bytes(engine) -> dict[str, int]:
    """Bytes per kind of state this rank holds; a storage shared by several tensors counts once."""
    seen: set[int] = set()
    totals: dict[str, int] = {}

    def add(kind: str, tensors: list) -> None:
        for tensor in tensors:
            storage = tensor.untyped_storage()
            if storage.nbytes() and storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                totals[kind] = totals.get(kind, 0) + storage.nbytes()

    params = list(engine.module.parameters())
    add("parameters", [p.data for p in params] + [p.ds_tensor for p in params if hasattr(p, "ds_tensor")])
    optimizer = engine.optimizer
    for kind, names in OPTIMIZER_PARTS.items():
        add(kind, [t for name in names for t in tensors_in(getattr(optimizer, name, None))])
    add("gradients", [p.grad for p in params if p.grad is not None])
    inner = getattr(optimizer, "optimizer", optimizer)
    add("optimizer state", [t for state in inner.state.values() for t in tensors_in(state)])
    add("other", [t for value in vars(optimizer).values() for t in tensors_in(value)])
    return totals


def worker(overrides: list[str], out: Path) -> int:
    """One rank: join, build the engine as ``ladder train`` does, one step and one backward, then count."""
    from launcher.run.runtime import build_engine, find_ranks

    run = load_run_config(overrides)
    dist = find_ranks(run)
    rendezvous.connect(dist, run.cluster.dist_backend, run.rendezvous.timeout_s, log=lambda _: None)
    family, plan, engine = build_engine(run, dist.rank, dist.world_size)
    for step in range(2):
        for micro in range(plan.accum):
            loss = family.loss(engine, family.batch("train", plan.index(step, micro, dist.rank), plan.micro_batch_size))
            engine.backward(loss)
            if step == 0:
                engine.step()
    (out / f"rank{dist.rank}.json").write_text(json.dumps(held_bytes(engine)))
    return 0


def measure(precision: str, stage: int, overrides: list[str], scratch: Path) -> list[dict[str, int]]:
    out = scratch / f"{precision}-zero{stage}"
    out.mkdir()
    command = [
        sys.executable,
        __file__,
        "--worker",
        str(out),
        *MODEL,
        *overrides,
        f"train.precision={precision}",
        f"deepspeed=zero{stage}",
        "wandb.mode=disabled",
    ]
    code = local_launch.launch(2, command)
    if code:
        raise SystemExit(f"{precision} ZeRO-{stage} ranks failed with exit code {code}")
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def report(precision: str, results: dict[int, list[dict[str, int]]]) -> float:
    """Prints one precision's table and ratio line; returns the ratio."""
    kinds = sorted({k for ranks in results.values() for r in ranks for k in r})
    print(
        f"{PRECISIONS[precision]}\n{'MiB per rank':<16}"
        + "".join(f"{f'ZeRO-{s} r{r}':>12}" for s in results for r in range(2))
    )
    for kind in kinds + ["total"]:
        cells = [sum(r.values()) if kind == "total" else r.get(kind, 0) for s in results for r in results[s]]
        print(f"{kind:<16}" + "".join(f"{c / 2**20:>12.2f}" for c in cells))
    worst = {s: max(sum(r.values()) for r in ranks) for s, ranks in results.items()}
    ratio = worst[3] / worst[0]
    verdict = "met" if ratio <= GOAL else "MISSED"
    print(
        f"{precision}: ZeRO-3 / ZeRO-0 bytes per rank (2 ranks, against {precision} ZeRO-0): {ratio:.3f} "
        f"(goal <= {GOAL}: {verdict})\n"
    )
    return ratio


def main(argv: list[str]) -> int:
    if argv[:1] == ["--worker"]:
        return worker(argv[2:], Path(argv[1]))
    ratios = {}
    with tempfile.TemporaryDirectory() as scratch:
        for precision in PRECISIONS:
            results = {stage: measure(precision, stage, argv, Path(scratch)) for stage in (0, 3)}
            ratios[precision] = report(precision, results)
    met = [p for p, r in ratios.items() if r <= GOAL]
    print(
        f"goal ZeRO-3 <= {GOAL} x ZeRO-0 met in: {', '.join(PRECISIONS[p] for p in met) or 'neither'}"
        + "".join(f"; missed in {PRECISIONS[p]} ({r:.3f})" for p, r in ratios.items() if p not in met)
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main(sys.argv[1:]))
