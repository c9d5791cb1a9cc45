"""Data: addressable batches, disjoint splits, token files, the stdlib corpus, digits, webdataset shards."""

import dataclasses
import io
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from models import DATA_CONFIGS, build_family
from models.data import (
    CLIP_MEAN,
    CLIP_STD,
    DIGIT_NAMES,
    BytesData,
    ByteTokenizer,
    DigitsData,
    DigitsSource,
    epoch_positions,
    stdlib_corpus,
)

TINY_LM = {"family": "gpt_neox", "vocab_size": 256, "seq_len": 16, "n_layer": 1, "d_model": 32, "n_heads": 2}
TINY_CLIP = {"family": "clip", "image_size": 8, "patch_size": 4, "context_length": 32}


def caption(ids: torch.Tensor) -> str:
    """The bytes between start- and end-of-text (the two largest ids)."""
    ids = ids.tolist()
    return bytes(ids[1 : ids.index(max(ids))]).decode()


def write_tokens(path, tokens, dtype):
    np.asarray(tokens, dtype=dtype).tofile(path)
    return str(path)


def lm(data, seed=0, **model):
    return build_family({**TINY_LM, **model}, data, seed)


def test_lm_batches_are_a_pure_function_of_seed_split_index(tmp_path):
    data = {"kind": "bytes", "max_bytes": 100_000, "cache_dir": str(tmp_path)}
    a, b = lm(data), lm(data)
    first = a.batch("train", 7, 4)
    assert first["input_ids"].shape == (4, 16) and first["input_ids"].dtype == torch.long
    assert torch.equal(first["input_ids"], b.batch("train", 7, 4)["input_ids"])  # a fresh family, same batch
    assert torch.equal(first["input_ids"], a.batch("train", 7, 4)["input_ids"])  # no hidden iterator state
    assert not torch.equal(first["input_ids"], a.batch("train", 8, 4)["input_ids"])
    assert not torch.equal(first["input_ids"], lm(data, seed=1).batch("train", 7, 4)["input_ids"])
    assert torch.equal(first["input_ids"][:, 1:], first["labels"][:, :-1])  # next-token targets
    with pytest.raises(ValueError, match="split"):
        a.batch("test", 0, 4)


@pytest.mark.parametrize("dtype,top", [("uint16", 60_000), ("uint32", 100_000)])
def test_token_bin_roundtrip_and_disjoint_split(tmp_path, dtype, top):
    tokens = np.arange(top)  # every token is its own position: windows reveal where they came from
    path = write_tokens(tmp_path / "train.bin", tokens, dtype)
    family = lm({"kind": "token_bin", "path": path, "dtype": dtype, "val_fraction": 0.1}, vocab_size=top)
    boundary = top - top // 10
    for split in ("train", "val"):
        for i in range(5):
            windows = torch.cat(
                [family.batch(split, i, 8)["input_ids"], family.batch(split, i, 8)["labels"][:, -1:]], dim=1
            )
            starts = windows[:, :1]
            assert torch.equal(windows, starts + torch.arange(17))  # contiguous runs of the file, exact values
            if split == "train":
                assert windows.max() < boundary
            else:
                assert windows.min() >= boundary


def test_token_bin_separate_val_file_and_idx_dtype(tmp_path):
    train = write_tokens(tmp_path / "pile_train.bin", np.arange(1000), np.uint16)
    val = write_tokens(tmp_path / "pile_val.bin", np.arange(5000, 5100), np.uint16)
    for prefix in ("pile_train", "pile_val"):  # Megatron/gpt-neox index header: magic, version 1, dtype code 8
        (tmp_path / f"{prefix}.idx").write_bytes(b"MMIDIDX\x00\x00" + struct.pack("<Q", 1) + struct.pack("<B", 8))
    family = lm({"kind": "token_bin", "path": train, "val_path": val, "dtype": "auto"}, vocab_size=6000)
    assert family.batch("train", 0, 4)["input_ids"].max() < 1000
    assert family.batch("val", 0, 4)["input_ids"].min() >= 5000


def test_token_bin_errors_name_the_field(tmp_path):
    odd = tmp_path / "odd.bin"
    odd.write_bytes(b"\x00" * 7)
    with pytest.raises(ValueError, match=r"^data\.dtype:"):
        lm({"kind": "token_bin", "path": str(odd), "dtype": "uint16"})
    with pytest.raises(ValueError, match=r"^data\.path: no such file"):
        lm({"kind": "token_bin", "path": str(tmp_path / "missing.bin")})
    with pytest.raises(ValueError, match=r"^data\.dtype: 'auto' needs the index"):
        lm({"kind": "token_bin", "path": write_tokens(tmp_path / "x.bin", np.arange(100), np.uint16), "dtype": "auto"})
    big = write_tokens(tmp_path / "big.bin", np.full(100, 1000), np.uint16)
    with pytest.raises(ValueError, match=r"^model\.vocab_size: the data holds token id 1000"):
        lm({"kind": "token_bin", "path": big}).batch("train", 0, 2)
    with pytest.raises(ValueError, match=r"^data\.val_fraction:"):
        lm({"kind": "token_bin", "path": big, "val_fraction": 1.5})


def test_stdlib_corpus_is_cached_by_content(tmp_path):
    first = stdlib_corpus(50_000, str(tmp_path))
    cached = list(tmp_path.glob("stdlib-*.bin"))
    assert len(cached) == 1 and cached[0].stat().st_size == 50_000 == len(first)
    mtime = cached[0].stat().st_mtime_ns
    again = stdlib_corpus(50_000, str(tmp_path))
    assert np.array_equal(first, again) and cached[0].stat().st_mtime_ns == mtime
    text = bytes(first).decode("utf-8", errors="replace")
    assert "def " in text and "import " in text  # Python source
    assert len(list(tmp_path.glob("stdlib-*.bin"))) == 1
    stdlib_corpus(60_000, str(tmp_path))  # other bytes, another file
    assert len(list(tmp_path.glob("stdlib-*.bin"))) == 2


def test_bytes_split_is_the_tail(tmp_path):
    family = lm({"kind": "bytes", "max_bytes": 40_000, "val_fraction": 0.05, "cache_dir": str(tmp_path)})
    corpus = bytes(stdlib_corpus(40_000, str(tmp_path)))
    val_text = corpus[38_000:]
    for i in range(3):
        row = bytes(family.batch("val", i, 2)["input_ids"][0].tolist())
        assert row in val_text
    assert BytesData().max_bytes >= 1_000_000


def test_epoch_positions_cover_every_sample_once_per_epoch():
    n, b = 50, 8
    ids = np.concatenate([epoch_positions(3, "train", i, b, n) for i in range(25)])  # 200 = 4 epochs
    for epoch in range(4):
        assert sorted(ids[epoch * n : (epoch + 1) * n]) == list(range(n))
    assert not np.array_equal(ids[:n], ids[n : 2 * n])  # reshuffled every epoch
    assert np.array_equal(epoch_positions(3, "train", 4, b, n), ids[32:40])


def test_digits_split_is_disjoint_and_batches_are_captioned(tmp_path):
    source = DigitsSource(DigitsData(val_fraction=0.1))
    train, val = set(source.ids["train"].tolist()), set(source.ids["val"].tolist())
    assert not train & val and len(train | val) == 1797 and len(val) == 179
    family = build_family(TINY_CLIP, {"kind": "digits"}, seed=0)
    batch = family.batch("train", 2, 32)
    assert batch["images"].shape == (32, 3, 8, 8) and batch["texts"].shape == (32, 32)
    assert torch.equal(batch["texts"], family.batch("train", 2, 32)["texts"])
    for text, label in zip(batch["texts"], batch["labels"]):
        assert text[0] == 256 and text.max() == 257  # start- and end-of-text of the 258-id byte tokenizer
        assert DIGIT_NAMES[label] in caption(text)


def test_byte_tokenizer_keeps_end_of_text_when_truncating():
    tok = ByteTokenizer(vocab_size=300, context_length=6)
    ids = tok(["hi", "a long caption"])
    assert ids[0].tolist() == [298, ord("h"), ord("i"), 299, 0, 0]
    assert ids[1].tolist() == [298, *b"a lo", 299]


def write_shard(path, samples):
    with tarfile.open(path, "w") as tar:
        for key, image, ext, caption in samples:
            buf = io.BytesIO()
            image.save(buf, format={"png": "PNG", "jpg": "JPEG"}[ext])
            for name, data in ((f"{key}.{ext}", buf.getvalue()), (f"{key}.txt", caption.encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_webdataset_shards_read_images_with_their_captions(tmp_path):
    samples = []
    for k in range(60):  # solid colours whose red channel names the sample; sizes vary; png and jpg
        image = Image.new("RGB", (12 + k % 5, 10), (4 * k, 100, 200))
        samples.append((f"s{k:04d}", image, "png" if k % 3 else "jpg", f"sample {k}"))
    write_shard(tmp_path / "shard-000.tar", samples[:30])
    write_shard(tmp_path / "shard-001.tar", samples[30:])
    family = build_family(
        TINY_CLIP, {"kind": "webdataset", "shards": str(tmp_path / "shard-*.tar"), "val_fraction": 0.2}, seed=0
    )
    seen = {}
    for split in ("train", "val"):
        n = family.data.source.size(split)
        batch = family.batch(split, 0, n)  # one epoch: every sample of the split once
        assert batch["images"].shape == (n, 3, 8, 8)
        red = batch["images"][:, 0] * CLIP_STD[0] + CLIP_MEAN[0]
        for text, r in zip(batch["texts"], red):
            k = int(caption(text).split()[1])
            assert r.mean().item() * 255 == pytest.approx(4 * k, abs=3)  # the image belongs to the caption
            seen.setdefault(split, set()).add(k)
    assert not seen["train"] & seen["val"] and seen["train"] | seen["val"] == set(range(60))
    torch.manual_seed(0)
    metrics = family.evaluate(family.build(), max_batches=1, batch_size=4)
    assert set(metrics) == {"val_loss"}  # captions only: no classes to score zero-shot


def test_webdataset_errors_name_the_field(tmp_path):
    with pytest.raises(ValueError, match=r"^data\.shards: no file matches"):
        build_family(TINY_CLIP, {"kind": "webdataset", "shards": str(tmp_path / "*.tar")}, 0)
    with pytest.raises(ValueError, match=r"^data\.shards: required"):
        build_family(TINY_CLIP, {"kind": "webdataset"}, 0)


@pytest.mark.parametrize("kind", sorted(DATA_CONFIGS))
def test_hydra_yaml_spells_out_every_data_field(kind):
    path = Path(__file__).resolve().parent.parent / "hydra_configs" / "data" / f"{kind}.yaml"
    text = path.read_text()
    assert text.startswith("# @package data")
    values = yaml.safe_load(text)
    assert values.pop("kind") == kind
    defaults = {f.name: f.default for f in dataclasses.fields(DATA_CONFIGS[kind])}
    assert values == defaults
