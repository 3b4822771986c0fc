"""Helpers shared by every method's frozen ``Options`` dataclass.

A field is declared with :func:`option`, which keeps its help text next to its default so the
CLI (and later the service schema) is generated from the dataclass, never written twice.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar

from impasto.errors import InvalidOptionError, suggest

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Range:
    """The allowed values of a numeric option (for a tuple option: of each item).

    ``low``/``high`` are inclusive unless ``low_open``/``high_open``; None is unbounded. Every
    number must also be finite (NaN and infinities are never allowed).
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return True

    def text(self) -> str:
        """'in [0, 1)', '> 0', '>= 16' ... for error messages."""
        lo = None if self.low is None else f"{self.low:g}"
        hi = None if self.high is None else f"{self.high:g}"
        if lo is not None and hi is not None:
            return f"in {'(' if self.low_open else '['}{lo}, {hi}{')' if self.high_open else ']'}"
        if lo is not None:
            return f"{'>' if self.low_open else '>='} {lo}"
        if hi is not None:
            return f"{'<' if self.high_open else '<='} {hi}"
        return "finite"


# Ranges shared by several Options classes (one place, so every method checks the same way).
MAX_SIDE = 16384  # a hard cap on any requested side; the memory estimate usually refuses far earlier
MIN_SIDE = 16  # VGG's four poolings need 16 px for relu5_1
SIDE = Range(MIN_SIDE, MAX_SIDE)
SEED = Range(0, 2**32 - 1)
WEIGHT = Range(0, 1e12)  # loss weights and blend weights: >= 0, finite
UNIT = Range(0, 1)
POSITIVE = Range(0, None, low_open=True)


def option(default: Any, help: str | Callable[[], str], range: Range | None = None) -> Any:  # noqa: A002 - 'help' reads best at call sites
    """A dataclass field with a default, a help text (shown by ``--help``) and, for numbers, its allowed range.

    ``help`` may be a function, called each time the text is shown (a list that can grow, like the
    registered style losses)."""
    return dataclasses.field(default=default, metadata={"help": help, "range": range})


def field_range(f: dataclasses.Field) -> Range | None:
    return f.metadata.get("range")


def field_help(f: dataclasses.Field) -> str:
    text = f.metadata.get("help", "")
    return str(text() if callable(text) else text)


def _coerce(value: Any, annotation: Any, name: str) -> Any:
    """Convert JSON-ish values (lists) to the field's declared tuple types."""
    if value is None:
        return None
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _coerce(value, args[0], name) if len(args) == 1 else value
    if origin is tuple:
        args = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)):
            raise InvalidOptionError(f"option '{name}' must be a list, got {value!r}")
        inner = args[0] if args else Any
        return tuple(_coerce(v, inner, name) for v in value)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def options_from_dict(cls: type[T], values: dict[str, Any]) -> T:
    """Build ``cls`` from a (JSON) dict; an unknown key is an error naming the nearest valid one."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    for key in values:
        if key not in names:
            raise InvalidOptionError(f"unknown option '{key}'.{suggest(key, names)}")
    return cls(**{k: _coerce(v, hints[k], k) for k, v in values.items()})
