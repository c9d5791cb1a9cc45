"""Train-step throughput of models.gpt_neox against Hugging Face's GPTNeoXForCausalLM, on this CPU.

Same config, same weights, same batch, same AdamW; each computes the mean next-token cross-entropy
its own way: ours through ``model(input_ids, labels)`` (the training path: output layer fused with
the loss, chunked), Hugging Face's as ``F.cross_entropy`` of its logits (what ``labels=`` does inside
it, less the shift). The two are timed in alternation (the order flips every repeat), so that load
from other processes falls on both. Prints tokens/s of each and the ratio ours / HF (goal >= 1.10).

    OMP_NUM_THREADS=2 .venv/bin/python bench/lm_vs_hf.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from models.gpt_neox import GPTNeoX, GPTNeoXConfig, load_hf_state_dict


def hf_model(cfg: GPTNeoXConfig):
    import transformers

    hf_cfg = transformers.GPTNeoXConfig(
        vocab_size=cfg.padded_vocab,
        hidden_size=cfg.d_model,
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_heads,
        intermediate_size=cfg.d_ff,
        rotary_pct=cfg.rotary_pct,
        rotary_emb_base=cfg.rotary_base,
        max_position_embeddings=cfg.seq_len,
        layer_norm_eps=cfg.layernorm_eps,
        hidden_act="gelu" if cfg.gelu == "exact" else "gelu_pytorch_tanh",
        use_parallel_residual=True,
        attn_implementation="sdpa",
        use_cache=False,
    )
    return transformers.GPTNeoXForCausalLM(hf_cfg)


def train_step(model, opt, input_ids, labels, loss_of) -> None:
    loss = loss_of(model, input_ids, labels)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab", type=int, default=50304)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=8)
    args = p.parse_args()

    cfg = GPTNeoXConfig(
        vocab_size=args.vocab, seq_len=args.seq_len, n_layer=args.n_layer, d_model=args.d_model, n_heads=args.n_heads
    )
    torch.manual_seed(0)
    hf = hf_model(cfg).train()
    ours = GPTNeoX(cfg).train()
    load_hf_state_dict(ours, hf.state_dict())
    window = torch.randint(0, cfg.vocab_size, (args.batch, cfg.seq_len + 1))
    input_ids, labels = window[:, :-1], window[:, 1:]
    runs = {
        "ours": (ours, torch.optim.AdamW(ours.parameters(), lr=1e-4), lambda m, x, y: m(x, y)),
        "hf": (
            hf,
            torch.optim.AdamW(hf.parameters(), lr=1e-4),
            lambda m, x, y: F.cross_entropy(m(input_ids=x).logits.flatten(0, 1), y.flatten()),
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    for repeat in range(args.warmup + args.repeats):
        for name in list(runs) if repeat % 2 == 0 else list(reversed(runs)):
            model, opt, loss_of = runs[name]
            start = time.perf_counter()
            train_step(model, opt, input_ids, labels, loss_of)
            if repeat >= args.warmup:
                times[name].append(time.perf_counter() - start)
    tokens = args.batch * cfg.seq_len
    rate = {name: tokens / statistics.median(t) for name, t in times.items()}
    print(
        f"config: vocab {cfg.padded_vocab}, seq {cfg.seq_len}, layers {cfg.n_layer}, d {cfg.d_model}, "
        f"heads {cfg.n_heads}, batch {args.batch}, threads {torch.get_num_threads()}, "
        f"{args.repeats} timed steps after {args.warmup} warm-up"
    )
    for name in runs:
        print(
            f"{name:>5}: {rate[name]:10.1f} tokens/s  (median step {statistics.median(times[name]) * 1e3:.1f} ms, "
            f"best {min(times[name]) * 1e3:.1f} ms)"
        )
    best_ratio = min(times["hf"]) / min(times["ours"])
    print(f"ratio ours/hf: {rate['ours'] / rate['hf']:.3f} on medians, {best_ratio:.3f} on best steps  (goal >= 1.10)")


if __name__ == "__main__":
    main()
