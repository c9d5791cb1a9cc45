"""Datasets for both families: offline built-ins that work on any machine, and the real formats.

Every batch is ADDRESSABLE: the i-th batch of a split is a pure function of (seed, split, i,
batch_size). The runtime resumes exactly by remembering a batch index, and ranks draw distinct
batches by asking for distinct indices; nothing here keeps an iterator's state.

LM: byte-level text of this Python's own standard library (``BytesData``), or token files as
written by nanoGPT and gpt-neox preprocessing (``TokenBinData``). CLIP: scikit-learn's bundled
handwritten digits with generated captions (``DigitsData``), or webdataset tar shards
(``WebDatasetData``).
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import io
import os
import struct
import sysconfig
import tarfile
import zlib
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F

SPLITS = {"train": 0, "val": 1}
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # the image statistics open_clip normalises with
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def batch_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of batch ``index`` of ``split``: independent streams for every (seed, split, index)."""
    if split not in SPLITS:
        raise ValueError(f"split: {split!r} is not allowed; allowed: {', '.join(SPLITS)}")
    if index < 0:
        raise ValueError(f"batch index must be >= 0, got {index}")
    return np.random.default_rng([seed, SPLITS[split], index])


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError(f"data.{name}: must be in (0, 1), got {value}")


# ---------------------------------------------------------------------------------------- data configs


@dataclasses.dataclass
class AutoData:
    """The model family's built-in offline set: stdlib bytes for gpt_neox, digits for clip."""


@dataclasses.dataclass
class BytesData:
    """Byte-level text of the Python standard library's own sources (vocab 256)."""

    max_bytes: int = 4_000_000
    val_fraction: float = 0.05  # the last 5% of the corpus
    cache_dir: Optional[str] = None  # default: $SCALELADDER_CACHE or ~/.cache/scaleladder

    def __post_init__(self):
        if self.max_bytes < 1024:
            raise ValueError(f"data.max_bytes: must be >= 1024, got {self.max_bytes}")
        _check_fraction("val_fraction", self.val_fraction)


@dataclasses.dataclass
class TokenBinData:
    """A flat token file (nanoGPT's train.bin, gpt-neox/Megatron's <prefix>.bin), memory-mapped."""

    path: Optional[str] = None
    dtype: Literal["uint16", "uint32", "int32", "auto"] = "uint16"  # auto: read from <prefix>.idx
    val_path: Optional[str] = None  # e.g. nanoGPT's val.bin; when null, the last val_fraction of path
    val_fraction: float = 0.05

    def __post_init__(self):
        if not self.path:
            raise ValueError("data.path: required: a .bin token file")
        _check_fraction("val_fraction", self.val_fraction)


@dataclasses.dataclass
class DigitsData:
    """scikit-learn's 1,797 bundled 8x8 handwritten digits, captioned from templates."""

    val_fraction: float = 0.1

    def __post_init__(self):
        _check_fraction("val_fraction", self.val_fraction)


@dataclasses.dataclass
class WebDatasetData:
    """webdataset tar shards: ``key.jpg|png`` beside ``key.txt``; the split hashes the key."""

    shards: Optional[str] = None  # a glob, e.g. /data/cc3m/{00000..00099}.tar is written /data/cc3m/*.tar
    val_fraction: float = 0.05

    def __post_init__(self):
        if not self.shards:
            raise ValueError("data.shards: required: a glob of .tar shards")
        _check_fraction("val_fraction", self.val_fraction)


# ---------------------------------------------------------------------------------------------- tokens


class TokenWindows:
    """Random (T+1)-token windows of a flat token array; train and val are disjoint ranges or files."""

    def __init__(self, train: np.ndarray, val: np.ndarray):
        self.arrays = {"train": train, "val": val}

    @classmethod
    def split_tail(cls, tokens: np.ndarray, val_fraction: float) -> TokenWindows:
        boundary = len(tokens) - int(len(tokens) * val_fraction)
        return cls(tokens[:boundary], tokens[boundary:])

    def batch(self, seed: int, split: str, index: int, batch_size: int, seq_len: int) -> dict[str, torch.Tensor]:
        rng = batch_rng(seed, split, index)
        tokens = self.arrays[split]
        if len(tokens) < seq_len + 1:
            raise ValueError(
                f"data: the {split} split has {len(tokens)} tokens, fewer than seq_len + 1 = {seq_len + 1}"
            )
        starts = rng.integers(0, len(tokens) - seq_len, size=batch_size)
        windows = torch.from_numpy(np.stack([tokens[s : s + seq_len + 1] for s in starts]).astype(np.int64))
        return {"input_ids": windows[:, :-1], "labels": windows[:, 1:]}


def _cache_dir(configured: Optional[str]) -> Path:
    return Path(configured or os.environ.get("SCALELADDER_CACHE") or Path.home() / ".cache" / "scaleladder")


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def stdlib_corpus(max_bytes: int, cache_dir: Optional[str] = None) -> np.ndarray:
    """The first ``max_bytes`` of this Python's stdlib sources (sorted paths), memory-mapped from a cache.

    The same Python install always gives the same bytes; the cache file is named by their hash, so
    every rank on every node maps identical data and a changed install never reads a stale file.
    """
    chunks, size = [], 0
    for path in _sorted_sources(Path(sysconfig.get_paths()["stdlib"])):
        if size >= max_bytes:
            break
        chunks.append(path.read_bytes() + b"\n")
        size += len(chunks[-1])
    data = b"".join(chunks)[:max_bytes]
    cached = _cache_dir(cache_dir) / f"stdlib-{hashlib.sha256(data).hexdigest()[:16]}.bin"
    if not cached.exists():
        _atomic_write(cached, data)
    return np.memmap(cached, dtype=np.uint8, mode="r")


def _sorted_sources(directory: Path):
    """``*.py`` files depth-first in name order, skipping installed packages: stops reading when asked."""
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        if entry.is_dir(follow_symlinks=False):
            if entry.name not in ("site-packages", "dist-packages", "__pycache__"):
                yield from _sorted_sources(Path(entry.path))
        elif entry.name.endswith(".py") and entry.is_file():
            yield Path(entry.path)


_IDX_MAGIC = b"MMIDIDX\x00\x00"  # gpt-neox / Megatron <prefix>.idx: magic, <Q version, <B dtype code
_IDX_DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 8: np.uint16}


def idx_dtype(bin_path: str) -> np.dtype:
    """The token dtype recorded in the Megatron-format index beside a gpt-neox ``.bin``."""
    idx_path = Path(bin_path).with_suffix(".idx")
    if not idx_path.exists():
        raise ValueError(
            f"data.dtype: 'auto' needs the index {idx_path} beside {bin_path}; "
            "or set data.dtype to uint16, uint32 or int32"
        )
    with open(idx_path, "rb") as f:
        header = f.read(len(_IDX_MAGIC) + 9)
    if header[: len(_IDX_MAGIC)] != _IDX_MAGIC or len(header) < len(_IDX_MAGIC) + 9:
        raise ValueError(f"data.dtype: {idx_path} is not a Megatron/gpt-neox index (bad magic)")
    code = struct.unpack("<B", header[-1:])[0]
    if code not in _IDX_DTYPES:
        raise ValueError(f"data.dtype: {idx_path} records dtype code {code}, not an integer token type")
    return np.dtype(_IDX_DTYPES[code])


def memmap_tokens(path: str, dtype: str) -> np.ndarray:
    """A flat token file as a read-only memmap; its length is the file size over the dtype's size."""
    if not Path(path).is_file():
        raise ValueError(f"data.path: no such file: {path}")
    np_dtype = idx_dtype(path) if dtype == "auto" else np.dtype(dtype)
    size = Path(path).stat().st_size
    if size == 0 or size % np_dtype.itemsize:
        raise ValueError(f"data.dtype: {path} has {size} bytes, not a whole number of {np_dtype} tokens")
    return np.memmap(path, dtype=np_dtype, mode="r")


def open_tokens(cfg: BytesData | TokenBinData) -> TokenWindows:
    if isinstance(cfg, BytesData):
        return TokenWindows.split_tail(stdlib_corpus(cfg.max_bytes, cfg.cache_dir), cfg.val_fraction)
    assert cfg.path is not None  # required (TokenBinData.__post_init__)
    tokens = memmap_tokens(cfg.path, cfg.dtype)
    if cfg.val_path:
        return TokenWindows(tokens, memmap_tokens(cfg.val_path, cfg.dtype))
    return TokenWindows.split_tail(tokens, cfg.val_fraction)


# ------------------------------------------------------------------------------------- images and text


class ByteTokenizer:
    """Bytes 0-255, then start-of-text and end-of-text as the two largest ids (CLIP pools at argmax)."""

    def __init__(self, vocab_size: int, context_length: int):
        if vocab_size < 258:
            raise ValueError(f"model.vocab_size: the byte tokenizer needs >= 258, got {vocab_size}")
        if context_length < 3:
            raise ValueError(f"model.context_length: must be >= 3, got {context_length}")
        self.sot, self.eot, self.context_length = vocab_size - 2, vocab_size - 1, context_length

    def __call__(self, texts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)  # 0 pads
        for row, text in enumerate(texts):
            ids = [self.sot, *text.encode("utf-8")[: self.context_length - 2], self.eot]
            out[row, : len(ids)] = torch.tensor(ids)
        return out


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """[B, 3, S, S] in [0, 1] -> normalised with CLIP's statistics."""
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def epoch_positions(seed: int, split: str, index: int, batch_size: int, n: int) -> np.ndarray:
    """Sample ids of batch ``index``: batches tile a stream of per-epoch permutations of range(n)."""
    batch_rng(seed, split, index)  # validates split and index
    positions = np.arange(index * batch_size, (index + 1) * batch_size)
    epochs = positions // n
    out = np.empty(batch_size, dtype=np.int64)
    for epoch in np.unique(epochs):
        perm = np.random.default_rng([seed, SPLITS[split], 2**32 + int(epoch)]).permutation(n)
        mask = epochs == epoch
        out[mask] = perm[positions[mask] % n]
    return out


DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
DIGIT_TEMPLATES = [
    "the digit {}.",
    "a handwritten {}.",
    "{}, written by hand.",
    "a photo of a {}.",
    "a blurry {}.",
]  # short: the tiny model's 40-byte context never cuts the name off


class DigitsSource:
    """scikit-learn's digits as (image, caption, label); a fixed split independent of the run seed."""

    def __init__(self, cfg: DigitsData):
        from sklearn.datasets import load_digits

        digits = load_digits()
        self.images = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)  # [n, 1, 8, 8]
        self.labels = torch.from_numpy(digits.target.astype(np.int64))
        order = np.random.default_rng(0).permutation(len(self.labels))
        n_val = int(len(order) * cfg.val_fraction)
        self.ids = {"val": np.sort(order[:n_val]), "train": np.sort(order[n_val:])}

    def size(self, split: str) -> int:
        return len(self.ids[split])

    def class_prompts(self) -> list[list[str]]:
        return [[t.format(name) for t in DIGIT_TEMPLATES] for name in DIGIT_NAMES]

    def items(self, split: str, positions: np.ndarray, rng: np.random.Generator, image_size: int):
        ids = torch.from_numpy(self.ids[split][positions])
        labels = self.labels[ids]
        templates = rng.integers(0, len(DIGIT_TEMPLATES), size=len(ids))
        captions = [DIGIT_TEMPLATES[t].format(DIGIT_NAMES[c]) for t, c in zip(templates, labels.tolist())]
        images = self.images[ids]
        if images.shape[-1] != image_size:
            images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
        return images.expand(-1, 3, -1, -1), captions, labels


_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp")


class WebDatasetSource:
    """Samples of webdataset tar shards, indexed once by header scan; members are read on demand."""

    def __init__(self, cfg: WebDatasetData):
        assert cfg.shards is not None  # required (WebDatasetData.__post_init__)
        shards = sorted(glob.glob(cfg.shards))
        if not shards:
            raise ValueError(f"data.shards: no file matches {cfg.shards!r}")
        self.ids: dict[str, list] = {"train": [], "val": []}
        for shard in shards:
            with tarfile.open(shard, "r:") as tar:
                members: dict[str, dict[str, tarfile.TarInfo]] = {}
                for info in tar.getmembers():
                    if info.isfile():
                        base = os.path.basename(info.name)
                        key = os.path.join(os.path.dirname(info.name), base.split(".", 1)[0])
                        members.setdefault(key, {})["." + base.split(".", 1)[-1].lower()] = info
            for key, parts in members.items():  # dicts keep the tar's order: deterministic
                image = next((parts[e] for e in _IMAGE_EXTS if e in parts), None)
                if image is None or ".txt" not in parts:
                    continue
                split = "val" if zlib.crc32(f"{shard}/{key}".encode()) % 10_000 < cfg.val_fraction * 10_000 else "train"
                self.ids[split].append((shard, image, parts[".txt"]))
        for split, items in self.ids.items():
            if not items:
                raise ValueError(
                    f"data.shards: no {split} sample (image + .txt pair) in {cfg.shards!r}; "
                    "add samples or change data.val_fraction"
                )
        self._open: dict[str, tarfile.TarFile] = {}

    def size(self, split: str) -> int:
        return len(self.ids[split])

    def class_prompts(self) -> None:  # captions only: no classes for zero-shot evaluation
        return None

    def _read(self, shard: str, info: tarfile.TarInfo) -> bytes:
        if shard not in self._open:
            self._open[shard] = tarfile.open(shard, "r:")
        member = self._open[shard].extractfile(info)
        assert member is not None  # the index holds regular files only
        return member.read()

    def items(self, split: str, positions: np.ndarray, rng: np.random.Generator, image_size: int):
        from PIL import Image

        images, captions = [], []
        for pos in positions:
            shard, image_info, text_info = self.ids[split][pos]
            with Image.open(io.BytesIO(self._read(shard, image_info))) as im:
                images.append(_center_square(im.convert("RGB"), image_size))
            captions.append(self._read(shard, text_info).decode("utf-8").strip())
        return torch.stack(images), captions, torch.full((len(positions),), -1, dtype=torch.long)


def _center_square(image, size: int) -> torch.Tensor:
    """The central square of a PIL image, resized to ``size``, as a [3, size, size] tensor in [0, 1]."""
    from PIL import Image

    w, h = image.size
    s = min(w, h)
    box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
    image = image.resize((size, size), Image.Resampling.BICUBIC, box=box)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)


class ImageTextBatches:
    """Addressable CLIP batches {"images", "texts", "labels"} (labels: class id, -1 where none)."""

    def __init__(self, source: DigitsSource | WebDatasetSource, tokenizer: ByteTokenizer, image_size: int):
        self.source, self.tokenizer, self.image_size = source, tokenizer, image_size

    def batch(self, seed: int, split: str, index: int, batch_size: int) -> dict[str, torch.Tensor]:
        positions = epoch_positions(seed, split, index, batch_size, self.source.size(split))
        images, captions, labels = self.source.items(split, positions, batch_rng(seed, split, index), self.image_size)
        return {"images": normalize_images(images), "texts": self.tokenizer(captions), "labels": labels}


def open_image_text(cfg: DigitsData | WebDatasetData, tokenizer: ByteTokenizer, image_size: int) -> ImageTextBatches:
    source = DigitsSource(cfg) if isinstance(cfg, DigitsData) else WebDatasetSource(cfg)
    return ImageTextBatches(source, tokenizer, image_size)
