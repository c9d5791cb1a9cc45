"""GPT-NeoX / Pythia language model in one file, with its exact parameter and FLOP accounting.

Architecture of EleutherAI's gpt-neox as used for Pythia: parallel residual with two untied
LayerNorms, ``x + attn(ln_attn(x)) + mlp(ln_mlp(x))``; partial rotary embeddings (rotate-half) on the
first ``rotary_pct`` of every head; one fused, head-interleaved QKV projection with bias (the layout of
gpt-neox checkpoints, so Hugging Face weights load by renaming alone); untied input and output
embeddings; a final LayerNorm. Training calls ``model(input_ids, labels)``, which fuses the output
layer with the cross-entropy (``linear_cross_entropy``). The accounting (``param_counts``,
``flops_per_token``) lives here, beside the model it describes, and every FLOP number in
scaleladder comes from ``flops_per_token``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

VOCAB_MULTIPLE = 128  # gpt-neox pads the vocabulary so the embedding matmuls tile well


@dataclasses.dataclass
class GPTNeoXConfig:
    """Shape and initialisation of one GPT-NeoX model (the fields of hydra_configs/model/gpt_neox/*)."""

    vocab_size: int = 256
    seq_len: int = 64
    n_layer: int = 2
    d_model: int = 64
    n_heads: int = 4
    intermediate_size: Optional[int] = None  # None: 4 * d_model
    rotary_pct: float = 0.25  # fraction of each head's dims that get rotary embeddings
    rotary_base: float = 10000.0
    gelu: Literal["exact", "tanh"] = "exact"
    init: Literal["small_wang", "normal"] = "small_wang"
    init_std: float = 0.02  # used by init="normal" only
    layernorm_eps: float = 1e-5

    def __post_init__(self):
        for name in ("vocab_size", "seq_len", "n_layer", "d_model", "n_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name}: must be >= 1, got {getattr(self, name)}")
        if self.layernorm_eps <= 0:
            raise ValueError(f"model.layernorm_eps: must be > 0, got {self.layernorm_eps}")
        if self.d_model % self.n_heads:
            raise ValueError(f"model.n_heads: must divide d_model={self.d_model}, got {self.n_heads}")
        if self.intermediate_size is not None and self.intermediate_size < 1:
            raise ValueError(f"model.intermediate_size: must be >= 1 or null, got {self.intermediate_size}")
        if not 0.0 <= self.rotary_pct <= 1.0:
            raise ValueError(f"model.rotary_pct: must be in [0, 1], got {self.rotary_pct}")
        if self.rotary_dim % 2:
            raise ValueError(f"model.rotary_pct: rotary dims per head must be even, got {self.rotary_dim}")
        if self.gelu not in ("exact", "tanh"):
            raise ValueError(f"model.gelu: {self.gelu!r} is not allowed; allowed: exact, tanh")
        if self.init not in ("small_wang", "normal"):
            raise ValueError(f"model.init: {self.init!r} is not allowed; allowed: small_wang, normal")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.rotary_pct)

    @property
    def d_ff(self) -> int:
        return self.intermediate_size or 4 * self.d_model

    @property
    def padded_vocab(self) -> int:
        return -(-self.vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def _pythia(n_layer: int, d_model: int, n_heads: int, vocab_size: int = 50304) -> GPTNeoXConfig:
    # vocab_size as in the released checkpoints (the 50,277-token tokenizer, padded for tensor parallelism)
    return GPTNeoXConfig(vocab_size=vocab_size, seq_len=2048, n_layer=n_layer, d_model=d_model, n_heads=n_heads)


PYTHIA: dict[str, GPTNeoXConfig] = {
    "pythia_14m": _pythia(6, 128, 4),
    "pythia_70m": _pythia(6, 512, 8),
    "pythia_160m": _pythia(12, 768, 12),
    "pythia_410m": _pythia(24, 1024, 16),
    "pythia_1b": _pythia(16, 2048, 8),
    "pythia_1.4b": _pythia(24, 2048, 16),
    "pythia_2.8b": _pythia(32, 2560, 32),
    "pythia_6.9b": _pythia(32, 4096, 32, vocab_size=50432),
    "pythia_12b": _pythia(36, 5120, 40, vocab_size=50688),
}
NAMED: dict[str, GPTNeoXConfig] = {"tiny": GPTNeoXConfig(), **PYTHIA}  # tiny: bytes, trains in seconds on a CPU


# ----------------------------------------------------------------------------------------------- model


class Attention(nn.Module):
    """Causal self-attention with gpt-neox's head-interleaved fused QKV and partial rotary embeddings."""

    def __init__(self, cfg: GPTNeoXConfig):
        super().__init__()
        self.n_heads, self.head_dim, self.rotary_dim = cfg.n_heads, cfg.head_dim, cfg.rotary_dim
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)  # output viewed as [n_heads, (q|k|v), head_dim]
        self.out = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        qk, v = self.qkv(x).view(B, T, self.n_heads, 3, self.head_dim).split([2, 1], dim=3)
        if self.rotary_dim:
            # q and k together, through split/chunk/cat only: their backward is a cat, never a zero-filled
            # copy of the whole qkv per slice (which is what indexing would cost on the way back)
            rot, keep = qk.split([self.rotary_dim, self.head_dim - self.rotary_dim], dim=-1)
            x1, x2 = rot.chunk(2, dim=-1)  # rotate-half: (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)
            qk = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin, keep), dim=-1)
        q, k = qk.unbind(dim=3)
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.squeeze(3).transpose(1, 2), is_causal=True
        )
        return self.out(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, cfg: GPTNeoXConfig):
        super().__init__()
        self.up = nn.Linear(cfg.d_model, cfg.d_ff)
        self.down = nn.Linear(cfg.d_ff, cfg.d_model)
        self.approximate = "tanh" if cfg.gelu == "tanh" else "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x), approximate=self.approximate))


class Block(nn.Module):
    """Parallel residual: attention and MLP read the same input through their own LayerNorms."""

    def __init__(self, cfg: GPTNeoXConfig):
        super().__init__()
        self.ln_attn = nn.LayerNorm(cfg.d_model, eps=cfg.layernorm_eps)
        self.ln_mlp = nn.LayerNorm(cfg.d_model, eps=cfg.layernorm_eps)
        self.attn = Attention(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return x + self.attn(self.ln_attn(x), cos, sin) + self.mlp(self.ln_mlp(x))


class LMHead(nn.Module):
    """embed_out: logits, or with labels the mean cross-entropy without ever holding all the logits."""

    def __init__(self, d_model: int, vocab: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab, d_model))

    def forward(self, h: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        if labels is None:
            return F.linear(h, self.weight)
        return linear_cross_entropy(h.flatten(0, -2), self.weight, labels.flatten())


class GPTNeoX(nn.Module):
    """``forward(input_ids [B, T]) -> logits [B, T, padded_vocab]``; with ``labels`` [B, T], the mean loss.

    The loss path is what training uses: it fuses the output layer with the cross-entropy
    (``linear_cross_entropy``), so [B, T, vocab] logits never exist at once.
    """

    cos: torch.Tensor  # rotary tables, registered as buffers
    sin: torch.Tensor

    def __init__(self, cfg: GPTNeoXConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_in = nn.Embedding(cfg.padded_vocab, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model, eps=cfg.layernorm_eps)
        self.embed_out = LMHead(cfg.d_model, cfg.padded_vocab)
        cos, sin = rotary_tables(cfg)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """gpt-neox's init: small_init everywhere, wang_init on the two projections back into the residual."""
        cfg = self.cfg
        if cfg.init == "small_wang":
            std, out_std = math.sqrt(2 / (5 * cfg.d_model)), 2 / cfg.n_layer / math.sqrt(cfg.d_model)
        else:
            std = out_std = cfg.init_std
        for name, p in self.named_parameters():
            if p.ndim == 1:  # biases, LayerNorm shifts and scales
                p.fill_(1.0 if re.search(r"ln_\w+\.weight$", name) else 0.0)
            else:
                p.normal_(0.0, out_std if re.search(r"(attn\.out|mlp\.down)\.weight$", name) else std)

    def forward(self, input_ids: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        T = input_ids.shape[1]
        x = self.embed_in(input_ids)
        # tables are [T, 1, 1, rotary_dim / 2]: they broadcast over (batch, ..., heads, q|k)
        cos, sin = self.cos[:T].to(x.dtype), self.sin[:T].to(x.dtype)
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.embed_out(self.ln_f(x), labels)


LOGITS_CHUNK_ELEMENTS = 2**27  # logits the fused loss holds at once (512 MiB in fp32): few grad_w passes


def linear_cross_entropy(
    h: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk_elements: int = LOGITS_CHUNK_ELEMENTS
) -> torch.Tensor:
    """``F.cross_entropy(h @ weight.T, labels)`` (mean over tokens, every label counts), a chunk of
    tokens at a time: memory O(chunk x vocab) instead of O(tokens x vocab), and no zero-filled
    [tokens, vocab] gradient buffer. When a gradient is needed it is computed while each chunk's
    softmax is at hand, kept, and scaled in backward."""
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(h, weight, labels, chunk_elements)
    return _chunked_cross_entropy(h, weight, labels, chunk_elements, with_grad=False)[0] / h.shape[0]


def _chunked_cross_entropy(h, weight, labels, chunk_elements: int, with_grad: bool):
    """Sum of token losses of logits ``h @ weight.T``; with_grad: also its gradients wrt h and weight.

    Each chunk's logits are turned into the softmax in place (max, subtract, exp, sum, divide): no
    [chunk, vocab] temporaries besides the logits themselves.
    """
    device = h.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else h.dtype
    h_c, w_c = h.to(dtype), weight.to(dtype)  # the casts autocast would make, made once
    chunk = max(1, chunk_elements // weight.shape[0])
    total = torch.zeros((), dtype=torch.float32, device=h.device)
    grad_h, grad_w = [], None
    with torch.autocast(device, enabled=False):
        for start in range(0, h.shape[0], chunk):
            hs, ys = h_c[start : start + chunk], labels[start : start + chunk]
            logits = (hs @ w_c.T).float()
            top = logits.amax(dim=-1, keepdim=True)
            target = logits.gather(1, ys[:, None])
            denominator = logits.sub_(top).exp_().sum(dim=-1, keepdim=True)
            total += (denominator.log() + top - target).sum()  # log-sum-exp minus the target's logit
            if with_grad:
                probs = logits.div_(denominator)  # softmax
                probs[torch.arange(len(ys), device=h.device), ys] -= 1.0  # d(token loss) / d(logits)
                g = probs.to(dtype)
                grad_h.append(g @ w_c)
                if grad_w is None:
                    grad_w = (g.T @ hs).float()
                elif g.dtype == grad_w.dtype:
                    grad_w.addmm_(g.T, hs)
                else:
                    grad_w += (g.T @ hs).float()
    if not with_grad:
        return total, None, None
    return total, (grad_h[0] if len(grad_h) == 1 else torch.cat(grad_h)).to(h.dtype), grad_w


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, labels, chunk_elements):
        total, grad_h, grad_w = _chunked_cross_entropy(h, weight, labels, chunk_elements, with_grad=True)
        ctx.save_for_backward(grad_h, grad_w)
        ctx.n, ctx.weight_dtype = h.shape[0], weight.dtype
        return total / h.shape[0]

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_w = ctx.saved_tensors
        scale = grad_loss / ctx.n
        return grad_h * scale.to(grad_h.dtype), (grad_w * scale).to(ctx.weight_dtype), None, None


def rotary_tables(cfg: GPTNeoXConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotary angles for positions < seq_len, shaped [T, 1, 1, rotary_dim / 2].

    Rotate-half pairs dim i with dim i + rotary_dim/2 under the same angle, so half the table suffices.
    """
    r = cfg.rotary_dim
    inv_freq = 1.0 / (cfg.rotary_base ** (torch.arange(0, r, 2, dtype=torch.float32) / max(r, 1)))
    angles = torch.outer(torch.arange(cfg.seq_len, dtype=torch.float32), inv_freq)[:, None, None, :]
    return angles.cos(), angles.sin()


# --------------------------------------------------------------------------------------------- loading

_HF_NAMES = [  # (Hugging Face GPTNeoXForCausalLM name, ours)
    (r"^gpt_neox\.embed_in\.", "embed_in."),
    (r"^gpt_neox\.final_layer_norm\.", "ln_f."),
    (r"^gpt_neox\.layers\.(\d+)\.input_layernorm\.", r"blocks.\1.ln_attn."),
    (r"^gpt_neox\.layers\.(\d+)\.post_attention_layernorm\.", r"blocks.\1.ln_mlp."),
    (r"^gpt_neox\.layers\.(\d+)\.attention\.query_key_value\.", r"blocks.\1.attn.qkv."),
    (r"^gpt_neox\.layers\.(\d+)\.attention\.dense\.", r"blocks.\1.attn.out."),
    (r"^gpt_neox\.layers\.(\d+)\.mlp\.dense_h_to_4h\.", r"blocks.\1.mlp.up."),
    (r"^gpt_neox\.layers\.(\d+)\.mlp\.dense_4h_to_h\.", r"blocks.\1.mlp.down."),
    (r"^(embed_out|lm_head)\.", "embed_out."),  # "embed_out" in checkpoints, "lm_head" in transformers 5
]
_HF_BUFFERS = re.compile(r"(rotary_emb|attention\.bias|attention\.masked_bias|inv_freq)")


def load_hf_state_dict(model: GPTNeoX, hf_state_dict: dict[str, torch.Tensor]) -> None:
    """Copy a Hugging Face ``GPTNeoXForCausalLM`` state dict (e.g. a Pythia checkpoint) into ``model``.

    The weights need no reshaping: both keep gpt-neox's head-interleaved QKV layout, so the mapping is
    a renaming (``_HF_NAMES``). Old checkpoints' cached buffers (rotary inv_freq, causal masks) are
    skipped. The vocabulary must already match ``padded_vocab`` (Pythia checkpoints are padded).
    """
    ours = {}
    for key, value in hf_state_dict.items():
        if _HF_BUFFERS.search(key):
            continue
        for pattern, repl in _HF_NAMES:
            new, n = re.subn(pattern, repl, key)
            if n:
                ours[new] = value
                break
        else:
            raise KeyError(f"no GPT-NeoX parameter corresponds to Hugging Face key {key!r}")
    model.load_state_dict(ours, strict=True)


# ------------------------------------------------------------------------------------------ accounting


def kept_activations(cfg: GPTNeoXConfig) -> int:
    """Activation values one sample's backward needs at the least: every block's input (what even activation
    recomputation keeps), so a micro-batch that cannot hold these cannot run."""
    return cfg.seq_len * cfg.d_model * cfg.n_layer


def param_counts(cfg: GPTNeoXConfig) -> tuple[int, int]:
    """(total, non_embedding) parameters, exactly as the module has them.

    non_embedding = total - embed_in - embed_out (Kaplan et al.'s N; it keeps the final LayerNorm).
    """
    d, f, v = cfg.d_model, cfg.d_ff, cfg.padded_vocab
    per_layer = (d * 3 * d + 3 * d) + (d * d + d) + (d * f + f) + (f * d + d) + 2 * (2 * d)
    non_embedding = cfg.n_layer * per_layer + 2 * d
    return non_embedding + 2 * v * d, non_embedding


def flops_per_token(cfg: GPTNeoXConfig) -> int:
    """Training FLOPs per token: the one definition behind every FLOP number in scaleladder.

    train = 3 x forward (the backward pass costs twice the forward), with

        forward = 2 * N_non_embedding            every non-embedding parameter: one multiply-add
                + 2 * 2 * n_layer * seq_len * d   attention scores Q K^T and the weighted sum A V
                + 2 * d_model * padded_vocab      the output layer (embed_out)

    so flops_per_token = 6 N_ne + 12 L T d + 6 d V. The attention term is NOT halved for causality:
    it counts the full T x T score matrix, as the hardware computes it and as Chinchilla and most MFU
    reports do. Embedding lookups cost nothing; biases, LayerNorms and GELU are counted inside 2 N_ne
    as if they were multiply-adds (the usual approximation, < 1% at any real size).
    """
    _, non_embedding = param_counts(cfg)
    attention = 2 * 2 * cfg.n_layer * cfg.seq_len * cfg.d_model
    output = 2 * cfg.d_model * cfg.padded_vocab
    return 3 * (2 * non_embedding + attention + output)


def solve_shape(
    target_params: int,
    *,
    aspect_ratio: float = 64.0,
    head_dim: int = 64,
    vocab_size: int = 50304,
    seq_len: int = 2048,
    count: Literal["total", "non_embedding"] = "total",
    tolerance: float = 0.02,
    **fields,
) -> GPTNeoXConfig:
    """A shape (n_layer, d_model, n_heads) for ``target_params`` at a fixed aspect ratio and head size.

    Candidates: every depth, with d_model a multiple of ``head_dim`` (heads are ``head_dim`` wide) and
    d_model / n_layer within a factor 2 of ``aspect_ratio``. Of those whose exact count is within
    ``tolerance`` of the target, the one nearest the aspect ratio wins (Kaplan et al. and Pythia hold
    the shape, not the count, fixed); when none is that close (tiny models move in big steps), the
    closest count wins. ``count`` picks which count is matched; ``fields`` go to GPTNeoXConfig.
    """
    if target_params < 1 or aspect_ratio <= 0 or head_dim < 1:
        raise ValueError("solve_shape: target_params, aspect_ratio and head_dim must be positive")
    which = {"total": 0, "non_embedding": 1}[count]
    candidates = []  # (relative count error, aspect deviation, config)
    n_layer = 1
    while True:
        lowest = max(1, math.ceil(aspect_ratio * n_layer / 2 / head_dim))
        for units in range(lowest, max(lowest, math.floor(2 * aspect_ratio * n_layer / head_dim)) + 1):
            cfg = GPTNeoXConfig(
                vocab_size=vocab_size,
                seq_len=seq_len,
                n_layer=n_layer,
                d_model=units * head_dim,
                n_heads=units,
                **fields,
            )
            n = param_counts(cfg)[which]
            candidates.append(
                (abs(n - target_params) / target_params, abs(math.log(cfg.d_model / n_layer / aspect_ratio)), cfg)
            )
            if n > target_params:  # wider is farther still
                if units == lowest:  # and so is every deeper shape: its narrowest is wider than this
                    close = [c for c in candidates if c[0] <= tolerance]
                    return min(close, key=lambda c: (c[1], c[0]))[2] if close else min(candidates)[2]
                break
        n_layer += 1
