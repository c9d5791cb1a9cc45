"""Strict validation of plain dicts against dataclasses: one line naming the field and what is allowed.

We validate ourselves (rather than OmegaConf structured configs) because a user must get one line naming
the field and what is allowed, not a traceback, and because the model group holds one of several
families whose schema lives in ``models/``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from typing import Annotated, Any, Literal, Optional, get_args, get_origin

from launcher.errors import UserError


@dataclasses.dataclass(frozen=True)
class Range:
    """The interval a number field allows, declared beside the field; None bounds are open."""

    ge: Optional[float] = None
    gt: Optional[float] = None
    le: Optional[float] = None
    lt: Optional[float] = None

    def check(self, value: Any, path: str) -> None:
        if (
            (self.ge is not None and not value >= self.ge)
            or (self.gt is not None and not value > self.gt)
            or (self.le is not None and not value <= self.le)
            or (self.lt is not None and not value < self.lt)
        ):
            raise UserError(f"{path}: must be {self.describe()}, got {value!r}")

    def describe(self) -> str:
        parts = [
            f"{op} {bound}"
            for op, bound in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
            if bound is not None
        ]
        return " and ".join(parts)


@dataclasses.dataclass(frozen=True)
class PathComponent:
    """A name that becomes one folder or file name: no separators, no ``..``, nothing a shell or a
    scheduler reads specially (letters, digits, ``._-``, not starting with a dot or a dash)."""

    PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,199}")

    def check(self, value: Any, path: str) -> None:
        if not isinstance(value, str) or not self.PATTERN.fullmatch(value):
            raise UserError(
                f"{path}: {value!r} is not a safe folder name; allowed: letters, digits and ._- "
                "(not first: . or -), at most 200 characters"
            )


# the seeds torch.manual_seed and numpy's SeedSequence both take
SEED_RANGE = Range(ge=0, le=2**63 - 1)


def validate(cls: type, data: Any, path: str):
    """Build dataclass ``cls`` from ``data``, checking every field's name and type.

    Raises UserError("path.field: ...") naming the first bad field and what is allowed.
    """
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        data = dataclasses.asdict(data)
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of fields, got {data!r}")
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        near = difflib.get_close_matches(str(key), fields, n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        raise UserError(f"{_join(path, key)}: unknown field{hint}; allowed: {', '.join(sorted(fields))}")
    values = {}
    for name, field in fields.items():
        if name in data:
            values[name] = _check(hints[name], data[name], _join(path, name))
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise UserError(f"{_join(path, name)}: required field is missing")
    try:
        return cls(**values)
    except (ValueError, TypeError) as exc:  # a dataclass's own __post_init__ checks
        message = str(exc)
        raise UserError(message if message.startswith(path) else f"{path}: {message}") from None


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _check(tp: Any, value: Any, path: str):
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return value
    if origin is Annotated:
        checked = _check(args[0], value, path)
        for mark in tp.__metadata__:
            if hasattr(mark, "check"):
                mark.check(checked, path)
        return checked
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check(arg, value, path)
            except UserError as exc:
                errors.append(str(exc))
        raise UserError(errors[0] if len(errors) == 1 else f"{path}: expected {_describe(tp)}, got {value!r}")
    if origin is Literal:
        if value in args:
            return value
        raise UserError(f"{path}: {value!r} is not allowed; allowed: {', '.join(map(str, args))}")
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return validate(tp, value, path)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{path}: expected a list, got {value!r}")
        item = args[0] if args else Any
        return [_check(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{path}: expected a mapping, got {value!r}")
        item = args[1] if len(args) == 2 else Any
        return {k: _check(item, v, _join(path, k)) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, str):
            try:
                value = float(value)  # YAML reads 1e-3 without a dot as a string
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not _finite(value):
                raise UserError(f"{path}: must be a finite number, got {value!r}")
            return float(value)
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif isinstance(tp, type):
        if isinstance(value, tp):
            return value
    else:
        return value
    raise UserError(f"{path}: expected {_describe(tp)}, got {value!r}")


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an int beyond any float
        return False


def _describe(tp: Any) -> str:
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        return _describe(args[0])
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))
