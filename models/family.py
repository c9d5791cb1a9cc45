"""The one interface between a model family and the training runtime.

The runtime knows nothing of GPT-NeoX or CLIP: it asks a ``ModelFamily`` for a module, for batch
number i of a split, for a loss and for an evaluation, and for the parameter and FLOP counts it
logs beside every curve. ``build_family`` turns the plain dicts of the Hydra groups ``model`` and
``data`` into one, through registries rather than branches: a new family is one registry entry.
"""
from __future__ import annotations

import contextlib
import dataclasses
import types
import typing
from typing import Any, Callable, ClassVar, Literal, Protocol, Union

import torch
import torch.nn.functional as F

from models import clip, gpt_neox
from models.clip import CLIPConfig
from models.data import (AutoData, ByteTokenizer, BytesData, DigitsData, ImageTextBatches, TokenBinData,
                         TokenWindows, WebDatasetData, open_image_text, open_tokens)
from models.gpt_neox import GPTNeoXConfig


class ModelFamily(Protocol):
    """What the runtime uses. Every method is deterministic given the torch RNG state and the seed.

    Batches are CPU tensors; ``loss`` and ``evaluate`` move them to the model's device. Distinct
    ``index`` values give independent batches: data-parallel ranks should ask for distinct indices
    (e.g. ``index = micro_step * world_size + rank``), and resuming needs only the next index.
    ``evaluate`` is rank-local (no collectives besides ZeRO-3's own), gives the same numbers on every
    rank, and must be called on every rank when parameters are sharded.
    """

    name: str  # "gpt_neox" | "clip"
    tokens_per_sample: int  # LM: seq_len; CLIP: 1 (a sample counts as one token of the sweep)

    def build(self) -> torch.nn.Module: ...  # initialised from the current torch RNG state
    def batch(self, split: str, index: int, batch_size: int) -> dict[str, torch.Tensor]: ...
    def loss(self, model: torch.nn.Module, batch: dict) -> torch.Tensor: ...
    def evaluate(self, model: torch.nn.Module, max_batches: int, batch_size: int) -> dict[str, float]: ...
    def param_counts(self) -> tuple[int, int]: ...  # (total, non_embedding)
    def flops_per_token(self) -> int: ...  # training FLOPs per token (per sample for CLIP)


def _to_device(batch: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    device = next(model.parameters()).device
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@contextlib.contextmanager
def _evaluating(model: torch.nn.Module):
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


@dataclasses.dataclass
class GPTNeoXFamily:
    """Next-token prediction on windows of a token array."""

    cfg: GPTNeoXConfig
    data: TokenWindows
    seed: int
    name: ClassVar[str] = "gpt_neox"

    @property
    def tokens_per_sample(self) -> int:
        return self.cfg.seq_len

    def build(self) -> torch.nn.Module:
        return gpt_neox.GPTNeoX(self.cfg)

    def batch(self, split: str, index: int, batch_size: int) -> dict[str, torch.Tensor]:
        batch = self.data.batch(self.seed, split, index, batch_size, self.cfg.seq_len)
        top = int(torch.maximum(batch["input_ids"].max(), batch["labels"].max()))
        if top >= self.cfg.vocab_size:
            raise ValueError(f"model.vocab_size: the data holds token id {top}, the model has only "
                             f"{self.cfg.vocab_size} ids")
        return batch

    def loss(self, model: torch.nn.Module, batch: dict) -> torch.Tensor:
        batch = _to_device(batch, model)
        return model(batch["input_ids"], batch["labels"])

    def evaluate(self, model: torch.nn.Module, max_batches: int, batch_size: int) -> dict[str, float]:
        with _evaluating(model):
            losses = [self.loss(model, self.batch("val", i, batch_size)).item() for i in range(max_batches)]
        return {"val_loss": sum(losses) / len(losses)}

    def param_counts(self) -> tuple[int, int]:
        return gpt_neox.param_counts(self.cfg)

    def flops_per_token(self) -> int:
        return gpt_neox.flops_per_token(self.cfg)


@dataclasses.dataclass
class CLIPFamily:
    """Contrastive image-text training; a sample is one "token" of the sweep."""

    cfg: CLIPConfig
    data: ImageTextBatches
    seed: int
    name: ClassVar[str] = "clip"
    tokens_per_sample: ClassVar[int] = 1

    def build(self) -> torch.nn.Module:
        return clip.CLIP(self.cfg)

    def batch(self, split: str, index: int, batch_size: int) -> dict[str, torch.Tensor]:
        return self.data.batch(self.seed, split, index, batch_size)

    def loss(self, model: torch.nn.Module, batch: dict) -> torch.Tensor:
        """This rank's share of the global-batch loss (all ranks' features are all-gathered)."""
        batch = _to_device(batch, model)
        image_features, text_features, logit_scale = model(batch["images"], batch["texts"])
        return clip.contrastive_loss(image_features, text_features, logit_scale)

    def evaluate(self, model: torch.nn.Module, max_batches: int, batch_size: int) -> dict[str, float]:
        """val_loss over rank-local batches; zero_shot_acc over their images when the data has classes."""
        prompts = self.data.source.class_prompts()
        losses, correct, seen = [], 0, 0
        with _evaluating(model):
            if prompts is not None:
                tokens = self.data.tokenizer([p for per_class in prompts for p in per_class])
                _, text_features, _ = model(texts=_to_device({"t": tokens}, model)["t"])
                classes = F.normalize(text_features.float().view(len(prompts), -1, text_features.shape[-1])
                                      .mean(dim=1), dim=-1)
            for i in range(max_batches):
                batch = _to_device(self.batch("val", i, batch_size), model)
                image_features, text_features, logit_scale = model(batch["images"], batch["texts"])
                losses.append(clip.contrastive_loss(image_features, text_features, logit_scale, gather=False).item())
                if prompts is not None:
                    predicted = (image_features.float() @ classes.T).argmax(dim=-1)
                    correct += int((predicted == batch["labels"]).sum())
                    seen += len(predicted)
        metrics = {"val_loss": sum(losses) / len(losses)}
        if prompts is not None:
            metrics["zero_shot_acc"] = correct / seen
        return metrics

    def param_counts(self) -> tuple[int, int]:
        return clip.param_counts(self.cfg)

    def flops_per_token(self) -> int:
        return clip.flops_per_sample(self.cfg)


# ------------------------------------------------------------------------------------------- registry


def _lm_family(cfg: GPTNeoXConfig, data: Any, seed: int) -> GPTNeoXFamily:
    if isinstance(data, BytesData) and cfg.vocab_size < 256:
        raise ValueError(f"model.vocab_size: byte data needs >= 256, got {cfg.vocab_size}")
    return GPTNeoXFamily(cfg, open_tokens(data), seed)


def _clip_family(cfg: CLIPConfig, data: Any, seed: int) -> CLIPFamily:
    tokenizer = ByteTokenizer(cfg.vocab_size, cfg.context_length)
    return CLIPFamily(cfg, open_image_text(data, tokenizer, cfg.image_size), seed)


@dataclasses.dataclass(frozen=True)
class _Family:
    config: type
    data_kinds: tuple[str, ...]  # the first is what data.kind=auto means
    make: Callable[[Any, Any, int], ModelFamily]


MODEL_CONFIGS: dict[str, type] = {"gpt_neox": GPTNeoXConfig, "clip": CLIPConfig}
DATA_CONFIGS: dict[str, type] = {"auto": AutoData, "bytes": BytesData, "token_bin": TokenBinData,
                                 "digits": DigitsData, "webdataset": WebDatasetData}
_FAMILIES: dict[str, _Family] = {
    "gpt_neox": _Family(GPTNeoXConfig, ("bytes", "token_bin"), _lm_family),
    "clip": _Family(CLIPConfig, ("digits", "webdataset"), _clip_family),
}


def build_family(model: dict, data: dict, seed: int) -> ModelFamily:
    """The family named by ``model["family"]``, fed by ``data["kind"]``; ValueError names a bad field."""
    model, data = dict(model), dict(data)
    family, kind = model.pop("family", None), data.pop("kind", None)
    if family not in _FAMILIES:
        raise ValueError(f"model.family: {family!r} is not allowed; allowed: {', '.join(_FAMILIES)}")
    entry = _FAMILIES[family]
    cfg = from_dict(entry.config, model, "model")
    if kind not in DATA_CONFIGS:
        raise ValueError(f"data.kind: {kind!r} is not allowed; allowed: {', '.join(DATA_CONFIGS)}")
    if kind == "auto":
        from_dict(AutoData, data, "data")
        kind, data = entry.data_kinds[0], {}
    elif kind not in entry.data_kinds:
        raise ValueError(f"data.kind: {kind!r} cannot feed model family {family}; "
                         f"allowed: auto, {', '.join(entry.data_kinds)}")
    return entry.make(cfg, from_dict(DATA_CONFIGS[kind], data, "data"), seed)


def from_dict(cls: type, values: dict, path: str):
    """``cls(**values)`` after checking names and types; ValueError("path.field: ...") otherwise."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key, value in values.items():
        if key not in hints:
            raise ValueError(f"{path}.{key}: unknown field; allowed: {', '.join(names) or '(none)'}")
        if not _is_instance(value, hints[key]):
            raise ValueError(f"{path}.{key}: expected {_describe(hints[key])}, got {value!r}")
    values = {k: float(v) if hints[k] is float else v for k, v in values.items()}
    return cls(**values)


def _is_instance(value: Any, tp: Any) -> bool:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return any(_is_instance(value, arg) for arg in args)
    if origin is Literal:
        return value in args
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    return "null" if tp is type(None) else tp.__name__
