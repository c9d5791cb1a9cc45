"""GPT-NeoX: equivalence with Hugging Face's implementation, exact accounting, shapes, the LM family."""

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from models import build_family
from models.clip import NAMED as CLIP_NAMED
from models.gpt_neox import (
    NAMED,
    GPTNeoX,
    GPTNeoXConfig,
    flops_per_token,
    linear_cross_entropy,
    load_hf_state_dict,
    param_counts,
    solve_shape,
)

CONFIG_DIR = Path(__file__).resolve().parent.parent / "hydra_configs"

# (total, non-embedding) parameters of the released Pythia checkpoints, from the Pythia model card
PYTHIA_PUBLISHED = {
    "pythia_70m": (70_426_624, 18_915_328),
    "pythia_160m": (162_322_944, 85_056_000),
    "pythia_410m": (405_334_016, 302_311_424),
    "pythia_1b": (1_011_781_632, 805_736_448),
    "pythia_1.4b": (1_414_647_808, 1_208_602_624),
    "pythia_2.8b": (2_775_208_960, 2_517_652_480),
    "pythia_6.9b": (6_857_302_016, 6_444_163_072),
    "pythia_12b": (11_846_072_320, 11_327_027_200),
}


def meta_count(cfg) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in GPTNeoX(cfg).parameters())


@pytest.mark.parametrize(
    "hidden_act,gelu,attn,rotary_pct",
    [
        ("gelu", "exact", "sdpa", 0.25),
        ("gelu", "exact", "eager", 0.25),
        ("gelu_new", "tanh", "sdpa", 0.25),
        ("gelu_pytorch_tanh", "tanh", "sdpa", 1.0),
    ],
)
def test_logits_match_hugging_face(hidden_act, gelu, attn, rotary_pct):
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.GPTNeoXConfig(
        vocab_size=256,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        hidden_act=hidden_act,
        rotary_pct=rotary_pct,
        rotary_emb_base=10000,
        max_position_embeddings=48,
        use_parallel_residual=True,
        layer_norm_eps=1e-5,
        attn_implementation=attn,
    )
    torch.manual_seed(0)
    hf = transformers.GPTNeoXForCausalLM(hf_cfg).eval()
    with torch.no_grad():  # far from init, so a swapped or mis-split weight cannot hide
        for name, p in hf.named_parameters():
            p.normal_(1.0 if "layernorm" in name or "layer_norm" in name else 0.0, 0.1)
    ours = GPTNeoX(
        GPTNeoXConfig(vocab_size=256, seq_len=48, n_layer=2, d_model=64, n_heads=4, rotary_pct=rotary_pct, gelu=gelu)
    ).eval()
    load_hf_state_dict(ours, hf.state_dict())
    ids = torch.randint(0, 256, (3, 48))
    with torch.no_grad():
        expected, got = hf(ids).logits, ours(ids)
    assert expected.abs().max() > 1.0
    assert (expected - got).abs().max().item() <= 1e-5


@pytest.mark.parametrize("chunk_elements", [7_000, 2**27])  # uneven chunks of 7 tokens; one chunk
def test_fused_loss_equals_cross_entropy_of_logits(chunk_elements):
    torch.manual_seed(0)
    h = torch.randn(300, 32, requires_grad=True)
    weight = torch.randn(1000, 32, requires_grad=True)
    labels = torch.randint(0, 1000, (300,))
    expected = F.cross_entropy(h @ weight.T, labels)
    got = linear_cross_entropy(h, weight, labels, chunk_elements)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    reference = torch.autograd.grad(3.0 * expected, [h, weight])
    for a, b in zip(reference, torch.autograd.grad(3.0 * got, [h, weight])):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    with torch.no_grad():
        assert linear_cross_entropy(h, weight, labels, chunk_elements).item() == pytest.approx(
            expected.item(), rel=1e-6
        )
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the GPU path: bf16 matmuls, fp32 softmax and sums
        low = linear_cross_entropy(h, weight, labels, chunk_elements)
        (grad_h,) = torch.autograd.grad(low, [h])
    assert low.dtype == torch.float32 and low.item() == pytest.approx(expected.item(), rel=2e-2)
    assert F.cosine_similarity(grad_h.flatten(), reference[0].flatten(), dim=0) > 0.99


def test_model_loss_path_equals_logits_path():
    torch.manual_seed(0)
    model = GPTNeoX(GPTNeoXConfig(vocab_size=300))
    ids, labels = torch.randint(0, 300, (2, 64)), torch.randint(0, 300, (2, 64))
    expected = F.cross_entropy(model(ids).flatten(0, 1), labels.flatten())
    assert model(ids, labels).item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("name", sorted(PYTHIA_PUBLISHED))
def test_pythia_counts_are_the_published_ones(name):
    cfg = NAMED[name]
    total, non_embedding = param_counts(cfg)
    assert (total, non_embedding) == PYTHIA_PUBLISHED[name]
    assert meta_count(cfg) == total


@pytest.mark.parametrize(
    "cfg",
    [
        *NAMED.values(),
        GPTNeoXConfig(vocab_size=1000, n_layer=3, d_model=96, n_heads=3, intermediate_size=200, rotary_pct=0.5),
    ],
    ids=[*NAMED, "odd"],
)
def test_analytic_count_equals_module(cfg):
    total, non_embedding = param_counts(cfg)
    assert meta_count(cfg) == total
    assert total - non_embedding == 2 * cfg.padded_vocab * cfg.d_model


def test_padded_vocab():
    assert GPTNeoXConfig(vocab_size=50277).padded_vocab == 50304
    assert GPTNeoXConfig(vocab_size=256).padded_vocab == 256
    assert GPTNeoXConfig(vocab_size=257).padded_vocab == 384


def test_flops_per_token_matches_counted_matmuls():
    """FlopCounterMode counts matmuls only, so the formula's 2 FLOPs per bias and LayerNorm parameter
    (its documented multiply-add approximation) are the only difference, and backward = 2 x forward."""
    cfg = GPTNeoXConfig(vocab_size=300, seq_len=32, n_layer=2, d_model=64, n_heads=4, intermediate_size=160)
    model = GPTNeoX(cfg)
    ids = torch.randint(0, cfg.vocab_size, (3, cfg.seq_len))
    tokens = ids.numel()
    vector_params = sum(p.numel() for p in model.parameters() if p.ndim == 1)
    with sdpa_kernel(SDPBackend.MATH):  # the math kernel is made of bmm's, which the counter sees
        with FlopCounterMode(display=False) as forward:
            logits = model(ids)
        with FlopCounterMode(display=False) as backward:
            logits.sum().backward()
    assert forward.get_total_flops() == flops_per_token(cfg) // 3 * tokens - 2 * vector_params * tokens
    assert backward.get_total_flops() == 2 * forward.get_total_flops()


def test_flops_formula_terms():
    cfg = NAMED["pythia_410m"]
    _, n = param_counts(cfg)
    expected = 6 * n + 12 * cfg.n_layer * cfg.seq_len * cfg.d_model + 6 * cfg.d_model * cfg.padded_vocab
    assert flops_per_token(cfg) == expected


@pytest.mark.parametrize(
    "target,vocab,head_dim",
    [(1e6, 256, 32), (3e6, 256, 32), (20e6, 50304, 64), (160e6, 50304, 64), (1e9, 50304, 64), (7e9, 50304, 128)],
)
def test_solve_shape_hits_target(target, vocab, head_dim):
    cfg = solve_shape(int(target), aspect_ratio=64, head_dim=head_dim, vocab_size=vocab)
    total, _ = param_counts(cfg)
    assert abs(total - target) / target < 0.05
    assert cfg.d_model % head_dim == 0 and cfg.head_dim == head_dim
    assert 0.5 <= cfg.d_model / cfg.n_layer / 64 <= 2.0


def test_solve_shape_prefers_the_aspect_ratio_within_tolerance():
    target = 85_000_000
    cfg = solve_shape(target, aspect_ratio=64, head_dim=64, count="non_embedding", tolerance=0.02)
    assert (cfg.n_layer, cfg.d_model, cfg.n_heads) == (12, 768, 12)  # Pythia-160m's non-embedding N
    # brute force: no shape within 2% of the target has an aspect ratio nearer 64
    deviation = abs(math.log(cfg.d_model / cfg.n_layer / 64))
    for layers in range(1, 60):
        for d in range(64, 4096, 64):
            other = GPTNeoXConfig(vocab_size=50304, seq_len=2048, n_layer=layers, d_model=d, n_heads=d // 64)
            if abs(param_counts(other)[1] - target) / target <= 0.02:
                assert abs(math.log(d / layers / 64)) >= deviation


def test_small_wang_init_statistics():
    torch.manual_seed(0)
    cfg = GPTNeoXConfig(vocab_size=512, n_layer=4, d_model=256, n_heads=4)
    model = GPTNeoX(cfg)
    small, wang = math.sqrt(2 / (5 * 256)), 2 / 4 / math.sqrt(256)
    block = model.blocks[1]
    for weight, std in [
        (block.attn.qkv.weight, small),
        (block.mlp.up.weight, small),
        (model.embed_in.weight, small),
        (block.attn.out.weight, wang),
        (block.mlp.down.weight, wang),
    ]:
        assert weight.std().item() == pytest.approx(std, rel=0.05)
    assert torch.all(block.ln_attn.weight == 1) and torch.all(block.attn.qkv.bias == 0)
    normal = GPTNeoX(dataclasses.replace(cfg, init="normal", init_std=0.01))
    assert normal.blocks[0].attn.out.weight.std().item() == pytest.approx(0.01, rel=0.05)


def test_invalid_config_names_the_field():
    with pytest.raises(ValueError, match=r"^model\.n_heads:"):
        GPTNeoXConfig(d_model=64, n_heads=5)
    with pytest.raises(ValueError, match=r"^model\.gelu:"):
        GPTNeoXConfig(gelu="relu")


FAMILY_NAMED = {"gpt_neox": NAMED, "clip": CLIP_NAMED}


@pytest.mark.parametrize(
    "path", sorted((CONFIG_DIR / "model").glob("*/*.yaml")), ids=lambda p: f"{p.parent.name}/{p.stem}"
)
def test_hydra_yaml_spells_out_the_named_config(path):
    text = path.read_text()
    assert text.startswith("# @package model")
    values = yaml.safe_load(text)
    family = path.parent.name
    assert values.pop("family") == family
    assert values == dataclasses.asdict(FAMILY_NAMED[family][path.stem])


@pytest.mark.parametrize("family", FAMILY_NAMED)
def test_every_named_config_has_a_yaml(family):
    assert {p.stem for p in (CONFIG_DIR / "model" / family).glob("*.yaml")} == set(FAMILY_NAMED[family])


def test_lm_family_trains_and_evaluates(tmp_path):
    family = build_family(
        {"family": "gpt_neox", **dataclasses.asdict(NAMED["tiny"])},
        {"kind": "bytes", "max_bytes": 200_000, "cache_dir": str(tmp_path)},
        seed=0,
    )
    assert family.name == "gpt_neox" and family.tokens_per_sample == 64
    assert family.param_counts() == param_counts(NAMED["tiny"])
    assert family.flops_per_token() == flops_per_token(NAMED["tiny"])
    torch.manual_seed(0)
    model = family.build()
    before = family.evaluate(model, max_batches=2, batch_size=8)["val_loss"]
    assert before == pytest.approx(math.log(256), rel=0.1)  # near-uniform at init
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for i in range(25):
        loss = family.loss(model, family.batch("train", i, 16))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = family.evaluate(model, max_batches=2, batch_size=8)
    assert set(after) == {"val_loss"} and after["val_loss"] < before - 1.0
    assert model.training  # evaluate restores the mode


def test_build_family_rejects_bad_fields():
    with pytest.raises(ValueError, match=r"^model\.n_layr: unknown field"):
        build_family({"family": "gpt_neox", "n_layr": 2}, {"kind": "auto"}, 0)
    with pytest.raises(ValueError, match=r"^model\.d_model: expected int"):
        build_family({"family": "gpt_neox", "d_model": "64"}, {"kind": "auto"}, 0)
    with pytest.raises(ValueError, match=r"^data\.kind: 'digits' cannot feed"):
        build_family({"family": "gpt_neox"}, {"kind": "digits"}, 0)
    with pytest.raises(ValueError, match=r"^model\.family:"):
        build_family({"family": "llama"}, {"kind": "auto"}, 0)
