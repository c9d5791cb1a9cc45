"""The model-family registry: the one place the launcher learns what a model family is.

The runtime knows nothing of GPT-NeoX or CLIP: it asks a ``ModelFamily`` for a module, for batch
number i of a split, for a loss and for an evaluation, and for the parameter and FLOP counts it
logs beside every curve. The planner and collect ask the same registry entry (``FAMILIES``) for the
config schema, the exact counts and the shape solver, without building a model or opening data.
``model_config`` and ``data_config`` are the one check of the ``model`` and ``data`` sections;
``build_family`` turns those plain dicts into a ``ModelFamily``. A new family is one registry entry.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Callable
from typing import Any, ClassVar, Literal, Optional, Protocol, Union

import torch
import torch.nn.functional as F

from models import clip, gpt_neox
from models.clip import CLIPConfig
from models.data import (
    AutoData,
    BytesData,
    ByteTokenizer,
    DigitsData,
    ImageTextBatches,
    TokenBinData,
    TokenWindows,
    WebDatasetData,
    open_image_text,
    open_tokens,
)
from models.gpt_neox import GPTNeoXConfig


class ModelFamily(Protocol):
    """What the runtime uses. Every method is deterministic given the torch RNG state and the seed.

    Batches are CPU tensors; ``loss`` and ``evaluate`` move them to the model's device. Distinct
    ``index`` values give independent batches: data-parallel ranks should ask for distinct indices
    (e.g. ``index = micro_step * world_size + rank``), and resuming needs only the next index.
    ``evaluate`` is rank-local (no collectives besides ZeRO-3's own), gives the same numbers on every
    rank, and must be called on every rank when parameters are sharded.
    """

    @property
    def name(self) -> str: ...  # "gpt_neox" | "clip"
    @property
    def tokens_per_sample(self) -> int: ...  # LM: seq_len; CLIP: 1 (a sample counts as one token of the sweep)

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
            raise ValueError(
                f"model.vocab_size: the data holds token id {top}, the model has only {self.cfg.vocab_size} ids"
            )
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
                classes = F.normalize(
                    text_features.float().view(len(prompts), -1, text_features.shape[-1]).mean(dim=1), dim=-1
                )
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


Count = Literal["total", "non_embedding"]  # which parameter count a target size means


def _lm_family(cfg: GPTNeoXConfig, data: Any, seed: int) -> GPTNeoXFamily:
    if isinstance(data, BytesData) and cfg.vocab_size < 256:
        raise ValueError(f"model.vocab_size: byte data needs >= 256, got {cfg.vocab_size}")
    return GPTNeoXFamily(cfg, open_tokens(data), seed)


def _clip_family(cfg: CLIPConfig, data: Any, seed: int) -> CLIPFamily:
    tokenizer = ByteTokenizer(cfg.vocab_size, cfg.context_length)
    return CLIPFamily(cfg, open_image_text(data, tokenizer, cfg.image_size), seed)


def _solve_gpt_neox(target: int, base: dict, aspect_ratio: float, head_size: int, count: Count) -> dict:
    fixed = {k: v for k, v in base.items() if k not in ("n_layer", "d_model", "n_heads", "vocab_size", "seq_len")}
    cfg = gpt_neox.solve_shape(
        target,
        aspect_ratio=aspect_ratio,
        head_dim=head_size,
        vocab_size=base["vocab_size"],
        seq_len=base["seq_len"],
        count=count,
        **fixed,
    )
    return {"n_layer": cfg.n_layer, "d_model": cfg.d_model, "n_heads": cfg.n_heads}


# (target N, base model fields, aspect ratio, head size, which count) -> the model fields of that size
ShapeSolver = Callable[[int, dict, float, int, Count], dict]


@dataclasses.dataclass(frozen=True)
class Family:
    """Everything the launcher knows of one model family: the planner, collect and the runtime read it here."""

    name: str
    config: type  # the dataclass of the ``model`` section, less ``family``
    data_kinds: tuple[str, ...]  # the first is what data.kind=auto means
    make: Callable[[Any, Any, int], ModelFamily]  # (config, data config, seed) -> what the runtime trains
    param_counts: Callable[[Any], tuple[int, int]]  # config -> (total, non_embedding)
    flops_per_token: Callable[[Any], int]  # config -> training FLOPs per token (per sample for CLIP)
    kept_per_sample: Callable[[Any], int]  # config -> activation values one sample's backward needs at least
    solve_shape: Optional[ShapeSolver] = None  # None: sweeps give explicit shapes

    def solve(self, target: int, base: dict, aspect_ratio: float, head_size: int, count: Count) -> dict:
        """The model fields (a shape) of about ``target`` parameters; ValueError when the family has no solver."""
        if self.solve_shape is None:
            raise ValueError(f"sweep.params: model family {self.name} has no shape solver; give sweep.shapes")
        return self.solve_shape(target, base, aspect_ratio, head_size, count)


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "gpt_neox",
            GPTNeoXConfig,
            ("bytes", "token_bin"),
            _lm_family,
            gpt_neox.param_counts,
            gpt_neox.flops_per_token,
            gpt_neox.kept_activations,
            _solve_gpt_neox,
        ),
        Family(
            "clip",
            CLIPConfig,
            ("digits", "webdataset"),
            _clip_family,
            clip.param_counts,
            clip.flops_per_sample,
            clip.kept_activations,
        ),
    )
}
DATA_CONFIGS: dict[str, type] = {
    "auto": AutoData,
    "bytes": BytesData,
    "token_bin": TokenBinData,
    "digits": DigitsData,
    "webdataset": WebDatasetData,
}


def family(name: Any) -> Family:
    """The registry entry of ``model.family``; ValueError names the field and the families there are."""
    if name not in FAMILIES:
        raise ValueError(f"model.family: {name!r} is not allowed; allowed: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[name]


def model_config(model: dict) -> Any:
    """The family's config for a ``model`` section (``family`` and fields): the one check of a model config."""
    fields = {k: v for k, v in model.items() if k != "family"}
    return from_dict(family(model.get("family")).config, fields, "model")


def checked_model(model: dict) -> dict:
    """A ``model`` section checked and spelled out: every field, with its default where not given."""
    return {"family": model.get("family"), **dataclasses.asdict(model_config(model))}


def data_config(data: dict) -> Any:
    """The config for a ``data`` section (``kind`` and fields): the one check of a data config."""
    kind = data.get("kind")
    if kind not in DATA_CONFIGS:
        raise ValueError(f"data.kind: {kind!r} is not allowed; allowed: {', '.join(sorted(DATA_CONFIGS))}")
    return from_dict(DATA_CONFIGS[kind], {k: v for k, v in data.items() if k != "kind"}, "data")


def checked_data(data: dict) -> dict:
    """A ``data`` section checked and spelled out."""
    return {"kind": data.get("kind"), **dataclasses.asdict(data_config(data))}


def build_family(model: dict, data: dict, seed: int) -> ModelFamily:
    """The family named by ``model["family"]``, fed by ``data["kind"]``; ValueError names a bad field."""
    entry, cfg = family(model.get("family")), model_config(model)
    source, kind = data_config(data), data.get("kind")
    if kind == "auto":
        source = DATA_CONFIGS[entry.data_kinds[0]]()
    elif kind not in entry.data_kinds:
        raise ValueError(
            f"data.kind: {kind!r} cannot feed model family {entry.name}; allowed: auto, {', '.join(entry.data_kinds)}"
        )
    return entry.make(cfg, source, seed)


# ----------------------------------------------------------------------------------------- checking


def from_dict(cls: type, values: dict, path: str) -> Any:
    """``cls(**values)`` after checking names and types; ValueError("path.field: ...") otherwise.

    Numbers are taken as the field asks (an integral float for an int, a numeric string for a float:
    YAML reads 1e-3 without a dot as a string); a config's own checks speak for themselves.
    """
    hints = typing.get_type_hints(cls)
    names = sorted(f.name for f in dataclasses.fields(cls))
    checked = {}
    for key, value in values.items():
        if key not in hints:
            near = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            raise ValueError(f"{path}.{key}: unknown field{hint}; allowed: {', '.join(names) or '(none)'}")
        checked[key] = _coerce(value, hints[key], f"{path}.{key}")
    return cls(**checked)


_NOT_THIS = object()  # _convert's answer when a value is not of the type asked


def _coerce(value: Any, tp: Any, path: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        if value in args:
            return value
        raise ValueError(f"{path}: {value!r} is not allowed; allowed: {', '.join(map(str, args))}")
    for option in args if origin in (Union, types.UnionType) else (tp,):
        converted = _convert(value, option)
        if converted is not _NOT_THIS:
            return converted
    raise ValueError(f"{path}: expected {_describe(tp)}, got {value!r}")


def _convert(value: Any, tp: Any) -> Any:
    if tp is type(None):
        return None if value is None else _NOT_THIS
    if isinstance(value, bool):
        return value if tp is bool else _NOT_THIS
    if tp is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value if isinstance(value, int) else _NOT_THIS
    if tp is float:  # finite only: nan or inf in a shape or an epsilon is never meant
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                return _NOT_THIS
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else _NOT_THIS
    if tp is str:
        return str(value) if isinstance(value, (str, int, float)) else _NOT_THIS
    return value if isinstance(value, tp) else _NOT_THIS


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    if tp is float:
        return "float (finite)"
    return "null" if tp is type(None) else tp.__name__
