"""What a rank's heartbeat costs its training steps: step time with heartbeats over step time without.

One small GPT-NeoX (models.gpt_neox) trains with plain AdamW on this CPU in three ways, timed in
alternating blocks so that load from other processes falls on all three: no heartbeat (the baseline),
a heartbeat written after every step (``heartbeat_interval_s=0``: an atomic replace with fsync per step,
what ranks did before the throttle), and the default throttle (``cluster.heartbeat_interval_s``: written
at most that often; with the defaults each way trains for several of its intervals, and its first beat
is written at once, as at a rank's resume). Both heartbeat ways also run the alive thread. Prints the
mean step time of each and its ratio to the baseline, and, steadier on a loaded machine, the beat calls'
own time over the baseline's step time (goal: the default's overhead under 1%, ratio <= 1.01). ``--dir``
puts the heartbeat files on the file system to measure (a parallel one costs more per fsync than a disk).

    OMP_NUM_THREADS=1 .venv/bin/python bench/heartbeat_cost.py [--dir /lustre/scratch/me/hb]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from launcher.config.cluster import ClusterProfile
from launcher.run.heartbeat import Heartbeat, clear
from models.gpt_neox import GPTNeoX, GPTNeoXConfig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, default=None, help="where the heartbeat files go (default: a temporary folder)")
    p.add_argument("--n-layer", type=int, default=2)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=200, help="steps per timed block")
    p.add_argument("--rounds", type=int, default=6, help="blocks of each way, in alternation")
    args = p.parse_args()

    cfg = GPTNeoXConfig(
        vocab_size=256,
        seq_len=args.seq_len,
        n_layer=args.n_layer,
        d_model=args.d_model,
        n_heads=max(1, args.d_model // 16),
    )
    torch.manual_seed(0)
    model = GPTNeoX(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    window = torch.randint(0, cfg.vocab_size, (args.batch, cfg.seq_len + 1))
    input_ids, labels = window[:, :-1], window[:, 1:]
    default_s = ClusterProfile().heartbeat_interval_s
    ways: dict[str, Optional[float]] = {"none": None, "every step": 0.0, f"every {default_s:g} s": default_s}
    times: dict[str, list[float]] = {name: [] for name in ways}
    beat_times: dict[str, list[float]] = {name: [] for name in ways}  # the beat() calls alone
    step = 0
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.dir or Path(tmp)
        # one writer per way for the whole run (as a rank has), each under its own rank number
        writers = {
            name: None if interval is None else Heartbeat(run_dir, rank, interval)
            for rank, (name, interval) in enumerate(ways.items())
        }
        for repeat in range(args.rounds + 1):  # the first round warms up
            order = list(ways) if repeat % 2 == 0 else list(reversed(ways))
            for name in order:
                beats = writers[name]
                for _ in range(args.steps):
                    start = time.perf_counter()
                    loss = model(input_ids, labels)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    step += 1
                    if beats is not None:
                        beat_start = time.perf_counter()
                        beats.beat(step)
                        if repeat:
                            beat_times[name].append(time.perf_counter() - beat_start)
                    if repeat:
                        times[name].append(time.perf_counter() - start)
        for beats in writers.values():
            if beats is not None:
                beats.close()
        clear(run_dir)
    base = statistics.mean(times["none"])  # means: a write every 10 s is rare, and a median would hide it
    print(
        f"config: layers {cfg.n_layer}, d {cfg.d_model}, seq {cfg.seq_len}, batch {args.batch}, threads "
        f"{torch.get_num_threads()}; {args.rounds} blocks of {args.steps} steps per way; heartbeats in {run_dir}"
    )
    for name, found in times.items():
        mean = statistics.mean(found)
        beat = statistics.mean(beat_times[name]) if beat_times[name] else 0.0
        print(
            f"{name:>12}: mean step {mean * 1e3:7.2f} ms, ratio vs none {mean / base:.4f}; beat calls alone "
            f"{beat * 1e3:.3f} ms a step, (none + beat) / none = {(base + beat) / base:.4f}"
        )
    default = f"every {default_s:g} s"
    blocks, calls = statistics.mean(times[default]) / base, 1 + statistics.mean(beat_times[default]) / base
    print(
        f"step-time overhead ratio of the default ({default}): {blocks:.4f} measured in alternating blocks, "
        f"{calls:.4f} from its beat calls (goal <= 1.01)"
    )


if __name__ == "__main__":
    main()
