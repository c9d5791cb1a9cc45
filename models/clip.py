"""CLIP (open_clip style): a ViT image tower, a causal text transformer and the contrastive loss.

Image: patch conv (no bias), class token, learned positions, ln_pre, pre-LN blocks, ln_post on the
class token, projection. Text: token + learned positions, causal pre-LN blocks, ln_final, pooled at
the end-of-text token (the largest id in every sequence, so ``argmax`` finds it), projection. Both
features are L2-normalised; the logit scale starts at ln(1/0.07) and is clamped at ln(100) where it
is used. The parameter and FLOP accounting lives beside the model; for CLIP a sweep "token" is a sample.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

INIT_LOGIT_SCALE = math.log(1 / 0.07)
MAX_LOGIT_SCALE = math.log(100.0)


@dataclasses.dataclass
class CLIPConfig:
    """Shapes of both towers (the fields of hydra_configs/model/clip/*)."""

    embed_dim: int = 32
    image_size: int = 8
    patch_size: int = 2
    vision_width: int = 64
    vision_layers: int = 2
    vision_heads: int = 4
    context_length: int = 40
    vocab_size: int = 258  # byte tokenizer: 256 bytes, start- and end-of-text
    text_width: int = 64
    text_heads: int = 4
    text_layers: int = 2
    mlp_ratio: float = 4.0
    layernorm_eps: float = 1e-5

    def __post_init__(self):
        for name in (
            "embed_dim",
            "image_size",
            "patch_size",
            "vision_width",
            "vision_layers",
            "vision_heads",
            "context_length",
            "vocab_size",
            "text_width",
            "text_heads",
            "text_layers",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name}: must be >= 1, got {getattr(self, name)}")
        if self.layernorm_eps <= 0:
            raise ValueError(f"model.layernorm_eps: must be > 0, got {self.layernorm_eps}")
        if self.image_size % self.patch_size:
            raise ValueError(f"model.patch_size: must divide image_size={self.image_size}, got {self.patch_size}")
        if self.vision_width % self.vision_heads:
            raise ValueError(
                f"model.vision_heads: must divide vision_width={self.vision_width}, got {self.vision_heads}"
            )
        if self.text_width % self.text_heads:
            raise ValueError(f"model.text_heads: must divide text_width={self.text_width}, got {self.text_heads}")
        if self.mlp_ratio <= 0:
            raise ValueError(f"model.mlp_ratio: must be > 0, got {self.mlp_ratio}")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


NAMED: dict[str, CLIPConfig] = {
    "tiny": CLIPConfig(),  # 8x8 digits, trains in seconds on a CPU
    "vit_b32": CLIPConfig(
        embed_dim=512,
        image_size=224,
        patch_size=32,
        vision_width=768,
        vision_layers=12,
        vision_heads=12,
        context_length=77,
        vocab_size=49408,
        text_width=512,
        text_heads=8,
        text_layers=12,
    ),
    "vit_b16": CLIPConfig(
        embed_dim=512,
        image_size=224,
        patch_size=16,
        vision_width=768,
        vision_layers=12,
        vision_heads=12,
        context_length=77,
        vocab_size=49408,
        text_width=512,
        text_heads=8,
        text_layers=12,
    ),
}


# ----------------------------------------------------------------------------------------------- model


class Block(nn.Module):
    """Pre-LN residual attention block, as in open_clip's ResidualAttentionBlock."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, eps: float, causal: bool):
        super().__init__()
        self.heads, self.causal = heads, causal
        hidden = int(width * mlp_ratio)
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.qkv = nn.Linear(width, 3 * width)  # [q | k | v], like nn.MultiheadAttention's in_proj
        self.out = nn.Linear(width, width)
        self.ln_2 = nn.LayerNorm(width, eps=eps)
        self.fc = nn.Linear(width, hidden)
        self.proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln_1(x)).view(B, T, 3, self.heads, C // self.heads).unbind(dim=2)
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=self.causal
        )
        x = x + self.out(y.transpose(1, 2).reshape(B, T, C))
        return x + self.proj(F.gelu(self.fc(self.ln_2(x))))


def _tower(width: int, layers: int, heads: int, cfg: CLIPConfig, causal: bool) -> nn.ModuleList:
    return nn.ModuleList(Block(width, heads, cfg.mlp_ratio, cfg.layernorm_eps, causal) for _ in range(layers))


class CLIP(nn.Module):
    """``forward(images=None, texts=None) -> (image_features | None, text_features | None, logit_scale)``.

    Features are L2-normalised; ``logit_scale`` is the clamped exp(logit_scale) to multiply similarities
    with. Either input may be left out (zero-shot evaluation encodes class prompts alone).
    """

    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.cfg = cfg
        vw, tw = cfg.vision_width, cfg.text_width
        self.conv1 = nn.Conv2d(3, vw, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.empty(vw))
        self.vision_positional_embedding = nn.Parameter(torch.empty(cfg.grid**2 + 1, vw))
        self.ln_pre = nn.LayerNorm(vw, eps=cfg.layernorm_eps)
        self.vision_blocks = _tower(vw, cfg.vision_layers, cfg.vision_heads, cfg, causal=False)
        self.ln_post = nn.LayerNorm(vw, eps=cfg.layernorm_eps)
        self.vision_proj = nn.Parameter(torch.empty(vw, cfg.embed_dim))

        self.token_embedding = nn.Embedding(cfg.vocab_size, tw)
        self.text_positional_embedding = nn.Parameter(torch.empty(cfg.context_length, tw))
        self.text_blocks = _tower(tw, cfg.text_layers, cfg.text_heads, cfg, causal=True)
        self.ln_final = nn.LayerNorm(tw, eps=cfg.layernorm_eps)
        self.text_proj = nn.Parameter(torch.empty(tw, cfg.embed_dim))

        self.logit_scale = nn.Parameter(torch.empty(1))  # not 0-d: DeepSpeed broadcasts bf16 as a byte view
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """open_clip's text-tower init, applied to both towers (residual projections scaled by depth)."""
        cfg = self.cfg
        for width, layers, blocks in (
            (cfg.vision_width, cfg.vision_layers, self.vision_blocks),
            (cfg.text_width, cfg.text_layers, self.text_blocks),
        ):
            attn_std, proj_std, fc_std = width**-0.5, width**-0.5 * (2 * layers) ** -0.5, (2 * width) ** -0.5
            for block in blocks:
                assert isinstance(block, Block)  # a ModuleList yields Modules
                for linear, std in (
                    (block.qkv, attn_std),
                    (block.out, proj_std),
                    (block.fc, fc_std),
                    (block.proj, proj_std),
                ):
                    nn.init.normal_(linear.weight, std=std)
                    nn.init.zeros_(linear.bias)
                for ln in (block.ln_1, block.ln_2):
                    ln.reset_parameters()
        for ln in (self.ln_pre, self.ln_post, self.ln_final):
            ln.reset_parameters()
        vscale = cfg.vision_width**-0.5
        self.conv1.reset_parameters()
        nn.init.normal_(self.class_embedding, std=vscale)
        nn.init.normal_(self.vision_positional_embedding, std=vscale)
        nn.init.normal_(self.vision_proj, std=vscale)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.text_positional_embedding, std=0.01)
        nn.init.normal_(self.text_proj, std=cfg.text_width**-0.5)
        self.logit_scale.fill_(INIT_LOGIT_SCALE)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        x = self.conv1(images.to(self.conv1.weight.dtype)).flatten(2).transpose(1, 2)  # [B, grid^2, width]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = self.ln_pre(torch.cat((cls, x), dim=1) + self.vision_positional_embedding)
        for block in self.vision_blocks:
            x = block(x)
        return F.normalize(self.ln_post(x[:, 0]) @ self.vision_proj, dim=-1)

    def encode_text(self, texts: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(texts) + self.text_positional_embedding[: texts.shape[1]]
        for block in self.text_blocks:
            x = block(x)
        x = self.ln_final(x)
        pooled = x[torch.arange(x.shape[0], device=x.device), texts.argmax(dim=-1)]  # end-of-text has the top id
        return F.normalize(pooled @ self.text_proj, dim=-1)

    def forward(self, images: torch.Tensor | None = None, texts: torch.Tensor | None = None):
        image_features = None if images is None else self.encode_image(images)
        text_features = None if texts is None else self.encode_text(texts)
        return image_features, text_features, self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()


# ------------------------------------------------------------------------------------------------ loss


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward hands each rank the sum over ranks of the gradient of its own rows."""

    @staticmethod
    def forward(ctx, local: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, local.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)  # every rank's loss depends on every rank's rows
        b = grad.shape[0] // dist.get_world_size()
        return grad[dist.get_rank() * b : (dist.get_rank() + 1) * b]


def contrastive_loss(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor, gather: bool = True
) -> torch.Tensor:
    """Symmetric InfoNCE of this rank's pairs against the global batch.

    With ``gather`` and torch.distributed initialised with world > 1, the features of all ranks are
    all-gathered WITH gradients (the backward sums every rank's gradient into the owner's features),
    and this rank scores its own b rows against all world*b columns, its positives at
    ``rank * b + i``. The value returned is this rank's share: the mean over ranks is the loss of the
    global batch, and the data-parallel gradient average is exactly that loss's gradient.
    """
    b = image_features.shape[0]
    if gather and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        all_images, all_texts = _GatherWithGrad.apply(image_features), _GatherWithGrad.apply(text_features)
        offset = dist.get_rank() * b
    else:
        all_images, all_texts, offset = image_features, text_features, 0
    labels = torch.arange(offset, offset + b, device=image_features.device)
    logits_per_image = logit_scale * image_features @ all_texts.T
    logits_per_text = logit_scale * text_features @ all_images.T
    return (F.cross_entropy(logits_per_image.float(), labels) + F.cross_entropy(logits_per_text.float(), labels)) / 2


# ------------------------------------------------------------------------------------------ accounting


def _block_params(width: int, mlp_ratio: float) -> int:
    hidden = int(width * mlp_ratio)
    return (
        (3 * width * width + 3 * width)
        + (width * width + width)
        + (width * hidden + hidden)
        + (hidden * width + width)
        + 2 * (2 * width)
    )


def kept_activations(cfg: CLIPConfig) -> int:
    """Activation values one image-caption pair's backward needs at the least: every block's input in both
    towers (patches and the class token; the caption's tokens)."""
    patches = (cfg.image_size // cfg.patch_size) ** 2 + 1
    return patches * cfg.vision_width * cfg.vision_layers + cfg.context_length * cfg.text_width * cfg.text_layers


def param_counts(cfg: CLIPConfig) -> tuple[int, int]:
    """(total, non_embedding) parameters, exactly as the module has them.

    non_embedding leaves out the token embedding and the learned positional embeddings of both
    towers and the class token (Kaplan et al.'s convention: no vocabulary or position tables).
    """
    vw, tw, e = cfg.vision_width, cfg.text_width, cfg.embed_dim
    embeddings = cfg.vocab_size * tw + cfg.context_length * tw + (cfg.grid**2 + 1) * vw + vw
    vision = (
        3 * cfg.patch_size**2 * vw + 2 * vw + cfg.vision_layers * _block_params(vw, cfg.mlp_ratio) + 2 * vw + vw * e
    )
    text = cfg.text_layers * _block_params(tw, cfg.mlp_ratio) + 2 * tw + tw * e
    non_embedding = vision + text + 1  # + logit_scale
    return non_embedding + embeddings, non_embedding


def _tower_forward_flops(tokens: int, width: int, layers: int, mlp_ratio: float) -> int:
    return 2 * tokens * layers * _block_params(width, mlp_ratio) + 2 * 2 * layers * tokens * tokens * width


def flops_per_sample(cfg: CLIPConfig) -> int:
    """Training FLOPs per (image, text) pair; a sample is one "token" of a CLIP sweep.

    train = 3 x forward, forward = image tower + text tower, each tower (T tokens, L layers, width w)

        2 * T * (block parameters)        every block parameter: one multiply-add per token
        + 2 * 2 * L * T^2 * w             attention scores and weighted sum, full T x T (no causal halving)
        + 2 * w * embed_dim               the projection of the pooled token

    plus the patch embedding, 2 * grid^2 * (3 * patch^2 * w), on the image side. T is grid^2 + 1
    for images and context_length for texts (padding included: it is computed). The B x B similarity
    matrix of the loss depends on the batch, not the sample, and is left out (< 0.1% at B <= 32k).
    Embedding lookups, ln_pre/ln_post/ln_final and the class token cost nothing here.
    """
    tv = cfg.grid**2 + 1
    image = (
        _tower_forward_flops(tv, cfg.vision_width, cfg.vision_layers, cfg.mlp_ratio)
        + 2 * cfg.grid**2 * 3 * cfg.patch_size**2 * cfg.vision_width
        + 2 * cfg.vision_width * cfg.embed_dim
    )
    text = (
        _tower_forward_flops(cfg.context_length, cfg.text_width, cfg.text_layers, cfg.mlp_ratio)
        + 2 * cfg.text_width * cfg.embed_dim
    )
    return 3 * (image + text)
