"""CLIP: exact accounting, the multi-rank contrastive loss, pooling, logit scale, zero-shot evaluation."""

import dataclasses
import math
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from models import build_family
from models.clip import CLIP, NAMED, CLIPConfig, contrastive_loss, flops_per_sample, param_counts

CONFIG_DIR = Path(__file__).resolve().parent.parent / "hydra_configs"


def meta_count(cfg) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in CLIP(cfg).parameters())


@pytest.mark.parametrize("name,published", [("vit_b32", 151_277_313), ("vit_b16", 149_620_737)])
def test_vit_b_counts_are_the_published_ones(name, published):
    """OpenAI's CLIP ViT-B/32 and ViT-B/16 (and open_clip's ViT-B-32/16) parameter counts."""
    total, non_embedding = param_counts(NAMED[name])
    assert total == published == meta_count(NAMED[name])
    cfg = NAMED[name]
    assert (
        total - non_embedding
        == (cfg.vocab_size + cfg.context_length) * cfg.text_width + (cfg.grid**2 + 2) * cfg.vision_width
    )


@pytest.mark.parametrize(
    "cfg", [*NAMED.values(), CLIPConfig(mlp_ratio=2.5, image_size=12, patch_size=4)], ids=[*NAMED, "odd"]
)
def test_analytic_count_equals_module(cfg):
    assert param_counts(cfg)[0] == meta_count(cfg)


@pytest.mark.parametrize("name,published_gflops", [("vit_b32", 14.78), ("vit_b16", 41.09)])
def test_forward_flops_match_open_clip_profile(name, published_gflops):
    """open_clip's docs/model_profile.csv (torch FlopCounterMode, one sample) lists forward GFLOPs."""
    assert flops_per_sample(NAMED[name]) / 3 / 1e9 == pytest.approx(published_gflops, rel=0.005)


def test_flops_per_sample_matches_counted_matmuls():
    """The counter sees matmuls and the patch conv; the formula adds 2 FLOPs per block bias/LayerNorm
    parameter per token (its documented multiply-add approximation); backward = 2 x forward."""
    cfg = CLIPConfig(mlp_ratio=2.5)
    model = CLIP(cfg)
    b = 3
    images, texts = torch.randn(b, 3, cfg.image_size, cfg.image_size), torch.randint(0, 256, (b, cfg.context_length))
    texts[:, -1] = cfg.vocab_size - 1
    vector = {
        tower: sum(p.numel() for blk in getattr(model, f"{tower}_blocks") for p in blk.parameters() if p.ndim == 1)
        for tower in ("vision", "text")
    }
    approximation = 2 * ((cfg.grid**2 + 1) * vector["vision"] + cfg.context_length * vector["text"])
    with sdpa_kernel(SDPBackend.MATH):
        with FlopCounterMode(display=False) as forward:
            image_features, text_features, _ = model(images, texts)
        with FlopCounterMode(display=False) as backward:
            (image_features.sum() + text_features.sum()).backward()
    assert forward.get_total_flops() == b * (flops_per_sample(cfg) // 3 - approximation)
    assert (
        backward.get_total_flops()
        == 2 * forward.get_total_flops() - 2 * b * 3 * cfg.patch_size**2 * cfg.vision_width * cfg.grid**2
    )  # no gradient for the input images


def test_logit_scale_starts_at_one_over_007_and_is_clamped_at_100():
    model = CLIP(NAMED["tiny"])
    images, texts = torch.randn(2, 3, 8, 8), torch.randint(0, 256, (2, 40))
    assert model(images, texts)[2].item() == pytest.approx(1 / 0.07)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    image_features, text_features, scale = model(images, texts)
    assert scale.item() == pytest.approx(100.0)
    contrastive_loss(image_features, text_features, scale).backward()
    assert model.logit_scale.grad.item() == 0.0  # past the clamp, the scale stops learning


def test_text_is_pooled_at_end_of_text():
    torch.manual_seed(0)
    cfg = NAMED["tiny"]
    model = CLIP(cfg).eval()
    texts = torch.zeros(1, cfg.context_length, dtype=torch.long)
    texts[0, :6] = torch.tensor([cfg.vocab_size - 2, 72, 105, 33, 10, cfg.vocab_size - 1])
    after_eot, before_eot = texts.clone(), texts.clone()
    after_eot[0, 10] = 65  # causal attention: what follows the end-of-text token cannot matter
    before_eot[0, 2] = 65
    with torch.no_grad():
        base = model(texts=texts)[1]
        assert torch.equal(model(texts=after_eot)[1], base)
        assert not torch.allclose(model(texts=before_eot)[1], base)
        assert base.norm(dim=-1).item() == pytest.approx(1.0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_loss_and_grads(rank: int, world: int, port: int, batch: dict, out: str):
    """One rank: its half of the batch through CLIPFamily.loss (all-gather with gradients), then the
    data-parallel average of gradients and losses, as DeepSpeed does."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        family = build_family({"family": "clip"}, {"kind": "digits"}, seed=0)
        torch.manual_seed(0)
        model = family.build()
        local = {k: v.chunk(world)[rank] for k, v in batch.items()}
        loss = family.loss(model, local)
        loss.backward()
        grads = {}
        for name, p in model.named_parameters():
            dist.all_reduce(p.grad)
            grads[name] = p.grad / world
        dist.all_reduce(loss.detach())
        if rank == 0:
            torch.save({"loss": loss.detach() / world, "grads": grads}, out)
    finally:
        dist.destroy_process_group()


def test_two_rank_loss_and_gradients_equal_the_global_batch(tmp_path):
    family = build_family({"family": "clip"}, {"kind": "digits"}, seed=0)
    batch = family.batch("train", 0, 16)
    out = str(tmp_path / "rank0.pt")
    mp.spawn(_rank_loss_and_grads, args=(2, _free_port(), batch, out), nprocs=2, join=True)
    distributed = torch.load(out)

    torch.manual_seed(0)
    model = family.build()
    loss = family.loss(model, batch)  # no process group: the plain global-batch loss
    loss.backward()
    assert distributed["loss"].item() == pytest.approx(loss.item(), rel=1e-6)
    for name, p in model.named_parameters():
        scale = p.grad.abs().max().item()  # float sums in another order: compare to the tensor's scale
        torch.testing.assert_close(
            distributed["grads"][name], p.grad, rtol=1e-4, atol=1e-5 * scale, msg=lambda m, name=name: f"{name}: {m}"
        )
    assert model.logit_scale.grad.abs().item() > 0


def test_clip_family_learns_digits_zero_shot():
    family = build_family({"family": "clip", **dataclasses.asdict(NAMED["tiny"])}, {"kind": "auto"}, seed=0)
    assert family.name == "clip" and family.tokens_per_sample == 1
    assert family.flops_per_token() == flops_per_sample(NAMED["tiny"])
    torch.manual_seed(0)
    model = family.build()
    before = family.evaluate(model, max_batches=2, batch_size=64)
    assert set(before) == {"val_loss", "zero_shot_acc"} and 0.0 <= before["zero_shot_acc"] <= 1.0
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    for i in range(100):
        loss = family.loss(model, family.batch("train", i, 64))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = family.evaluate(model, max_batches=2, batch_size=64)
    assert after["val_loss"] < before["val_loss"] - 0.3
    assert after["zero_shot_acc"] > 0.3  # chance is 0.1
    assert math.isfinite(after["val_loss"]) and model.training


def test_invalid_config_names_the_field():
    with pytest.raises(ValueError, match=r"^model\.patch_size:"):
        CLIPConfig(image_size=8, patch_size=3)
    with pytest.raises(ValueError, match=r"^model\.vocab_size: the byte tokenizer"):
        build_family({"family": "clip", "vocab_size": 100}, {"kind": "auto"}, 0)
