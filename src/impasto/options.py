"""Helpers shared by every method's frozen ``Options`` dataclass.

A field is declared with :func:`option`, which keeps its help text next to its default so the
CLI (and later the service schema) is generated from the dataclass, never written twice.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

from impasto.errors import InvalidOptionError, suggest

T = TypeVar("T")


def option(default: Any, help: str) -> Any:  # noqa: A002 - 'help' reads best at call sites
    """A dataclass field with a default and a help text (shown by ``--help``)."""
    return dataclasses.field(default=default, metadata={"help": help})


def field_help(f: dataclasses.Field) -> str:
    return str(f.metadata.get("help", ""))


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
