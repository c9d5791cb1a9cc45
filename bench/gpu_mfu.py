"""Training throughput and MFU of models.gpt_neox on one GPU (bf16 autocast, fused AdamW).

MFU = flops_per_token(cfg) * tokens/s / peak, with flops_per_token the same definition that every
FLOP number of a sweep uses (6 N + attention + output layer, see models.gpt_neox) and peak the
device's dense bf16 FLOP/s (989e12 for an H100 SXM; 312e12 for an A100). The baseline it names is
that peak. Without a GPU (or with --smoke) it runs a tiny model on the CPU so the script is known
to work everywhere:

    .venv/bin/python bench/gpu_mfu.py --model pythia_410m --micro-batch 8
    .venv/bin/python bench/gpu_mfu.py --smoke
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from models.gpt_neox import NAMED, GPTNeoX, flops_per_token, param_counts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="pythia_410m", choices=sorted(NAMED))
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--peak-flops", type=float, default=989e12, help="dense bf16 FLOP/s of the device")
    p.add_argument("--compile", action="store_true", help="torch.compile the model first")
    p.add_argument("--smoke", action="store_true", help="a tiny model on the CPU, to check the script runs")
    args = p.parse_args()

    if not args.smoke and not torch.cuda.is_available():
        print("no CUDA device: running --smoke on the CPU instead (MFU below is not a GPU number)")
        args.smoke = True
    if args.smoke:
        args.model, args.seq_len, args.micro_batch, args.warmup, args.steps = "tiny", 64, 4, 1, 3
    device = torch.device("cpu" if args.smoke else "cuda")
    cfg = dataclasses.replace(NAMED[args.model], seq_len=args.seq_len)

    torch.manual_seed(0)
    model = GPTNeoX(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    step_fn = torch.compile(model) if args.compile else model
    window = torch.randint(0, cfg.vocab_size, (args.micro_batch, cfg.seq_len + 1), device=device)
    input_ids, labels = window[:, :-1], window[:, 1:]

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = step_fn(input_ids, labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    seconds = (time.perf_counter() - start) / args.steps

    tokens_per_s = args.micro_batch * cfg.seq_len / seconds
    achieved = flops_per_token(cfg) * tokens_per_s
    total, non_embedding = param_counts(cfg)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu (smoke)"
    print(
        f"device: {name}; model {args.model}: {total / 1e6:.1f}M params ({non_embedding / 1e6:.1f}M non-embedding),"
        f" seq {cfg.seq_len}, micro-batch {args.micro_batch}, bf16 autocast, compile={args.compile}"
    )
    print(f"step {seconds * 1e3:.1f} ms, {tokens_per_s:,.0f} tokens/s, {achieved / 1e12:.2f} TFLOP/s")
    print(f"MFU = {achieved / args.peak_flops:.4f} of peak {args.peak_flops:.3g} FLOP/s")
    if device.type == "cuda":
        matmul = matmul_flops_per_s(device)
        print(
            f"measured here: bf16 8192^3 matmul {matmul / 1e12:.1f} TFLOP/s; model / matmul = {achieved / matmul:.4f}"
        )
        print(f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


def matmul_flops_per_s(device: torch.device, size: int = 8192, repeats: int = 10) -> float:
    """The device's dense bf16 rate as a plain matrix product reaches it: the baseline measured in this run."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return 2 * size**3 * repeats / (time.perf_counter() - start)


if __name__ == "__main__":
    main()
