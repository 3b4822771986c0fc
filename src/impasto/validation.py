"""The one validation layer every method and command goes through.

- :func:`check_fields`: every field of an ``Options`` dataclass has its declared type, every number is
  finite and inside the ``Range`` declared next to its default (``options.option(..., range=...)``).
- :func:`check_memory`: a size against an estimate of the memory the run will take, refused with
  the largest size that would fit before any work starts.
- :func:`check_image_side`: an image too thin for the encoder's poolings is refused with the
  method's minimum side.
- :func:`check_output`: an output never replaces one of the run's inputs, and is never a directory.

Messages name the option as the command line spells it (``--size``), the value, what is allowed
and how to fix it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

from impasto.errors import ImageSizeError, InvalidOptionError
from impasto.options import MIN_SIDE, Range, field_range


def flag(name: str) -> str:
    """An option field as the command line spells it, with the library's name when it differs:
    ``size`` -> ``--size``, ``style_scale`` -> ``--style-scale (style_scale)``."""
    spelt = "--" + name.replace("_", "-")
    return spelt if "_" not in name else f"{spelt} ({name})"


@lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(annotation: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(annotation, str(annotation))


def _check_value(name: str, value: Any, annotation: Any, rng: Range | None) -> None:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None:
            return
        annotation, origin = args[0], typing.get_origin(args[0])
    if origin is tuple:
        if not isinstance(value, tuple):
            raise InvalidOptionError(f"{flag(name)} must be a list, got {value!r}")
        inner = typing.get_args(annotation)
        for k, item in enumerate(value):
            item_type = inner[0] if len(inner) == 2 and inner[1] is Ellipsis else inner[k] if k < len(inner) else Any
            _check_value(name, item, item_type, rng)
        return
    if annotation is bool:
        if not isinstance(value, bool):
            raise InvalidOptionError(f"{flag(name)} must be true or false, got {value!r}")
        return
    if annotation in (int, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if annotation is int and not isinstance(value, int):
            ok = False
        if not ok:
            allowed = f" {rng.text()}" if rng else ""
            raise InvalidOptionError(f"{flag(name)} must be {_type_name(annotation)}{allowed}, got {value!r}")
        if not math.isfinite(value):
            raise InvalidOptionError(f"{flag(name)} must be a finite number, got {value}"
                                     + (f"; allowed: {rng.text()}" if rng else ""))
        if rng is not None and value not in rng:
            raise InvalidOptionError(f"{flag(name)} must be {rng.text()}, got {value:g}")
        return
    if annotation is str and not isinstance(value, str):
        raise InvalidOptionError(f"{flag(name)} must be a string, got {value!r}")


def check_fields(options: Any) -> None:
    """Type, finiteness and range of every field of an Options instance; raises InvalidOptionError."""
    hints = _hints(type(options))
    for f in dataclasses.fields(options):
        _check_value(f.name, getattr(options, f.name), hints[f.name], field_range(f))


def numeric_fields_without_range(cls: type) -> list[str]:
    """Names of numeric fields that declare no Range (a test keeps this empty)."""
    hints = _hints(cls)
    missing = []
    for f in dataclasses.fields(cls):
        ann = hints[f.name]
        if typing.get_origin(ann) in (typing.Union, types.UnionType):
            ann = next(a for a in typing.get_args(ann) if a is not type(None))
        if typing.get_origin(ann) is tuple:
            args = typing.get_args(ann)
            ann = args[0] if len(args) == 2 and args[1] is Ellipsis else None
        if ann in (int, float) and field_range(f) is None:
            missing.append(f.name)
    return missing


# ------------------------------------------------------------------ memory

def available_memory() -> int:
    """Bytes this process may still use: MemAvailable (Linux), else physical memory; never 0."""
    limit = os.environ.get("IMPASTO_MEMORY_LIMIT_MB")
    if limit:
        try:
            return max(1, int(float(limit) * 2**20))
        except ValueError:
            raise InvalidOptionError(f"IMPASTO_MEMORY_LIMIT_MB must be a number of megabytes, got '{limit}'") from None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def _gb(n: float) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB"


FIXED_BYTES = 600 * 2**20  # weights, the framework and a margin (measured: ~230 MB before any image)


def check_memory(what: str, option: str, value: float, pixels: Iterable[float], bytes_per_pixel: float) -> None:
    """Refuse a run whose estimated peak memory exceeds what is available, before any work.

    ``pixels``: the pixel counts the run processes at once (output, style images...) at
    ``option = value``; they scale with the square of that option. ``bytes_per_pixel``: the
    method's measured peak per pixel. The message gives the largest value that would fit.
    """
    total = float(sum(pixels))
    need = FIXED_BYTES + total * bytes_per_pixel
    have = available_memory()
    if need <= have:
        return
    room = max(have - FIXED_BYTES, 0)
    fits = value * math.sqrt(room / (total * bytes_per_pixel)) if total else 0
    fix = (f"the largest {option} that fits is about {int(fits * 0.95):g}" if fits >= 1
           else "close other programs or use a machine with more memory")
    raise InvalidOptionError(f"{what} with {option} {value:g} would need about {_gb(need)} of memory, "
                             f"but {_gb(have)} is available; {fix}")


# ------------------------------------------------------------------ images and paths

def check_image_side(height: int, width: int, what: str, method: str, min_side: int = MIN_SIDE, hint: str = "") -> None:
    """Raise ImageSizeError when an image (as the method will process it) is thinner than ``min_side``."""
    if min(height, width) < min_side:
        raise ImageSizeError(
            f"{what} is {width}x{height} px as processed, but --method {method} needs at least {min_side} px "
            f"on each side (the encoder pools four times); {hint or 'crop or pad the image, or raise --size'}",
            which=what)


def _same(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return a.samefile(b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def check_output(output: str | os.PathLike[str], inputs: Iterable[tuple[str, str | os.PathLike[str] | None]],
                 *, overwrite: bool = False, folder: bool = False) -> None:
    """Refuse an output that is one of the inputs (or inside an input folder) unless ``overwrite``.

    ``inputs``: (what, path) pairs, e.g. ("content image", "photo.jpg"); non-path inputs are None.
    ``folder``: the output is a folder of frames (else a file, which must not be an existing folder).
    """
    out = Path(output)
    if not folder and out.is_dir():
        raise InvalidOptionError(f"-o {output} is a folder; give a file name such as {out / 'out.png'}")
    if folder and out.exists() and not out.is_dir():
        raise InvalidOptionError(f"-o {output} is a file; give a folder for the frames")
    for what, path in inputs:
        if path is None:
            continue
        src = Path(path)
        clash = _same(out, src)
        if not clash and src.is_dir():
            try:
                clash = out.resolve().is_relative_to(src.resolve())
            except OSError:
                clash = False
        if clash and not overwrite:
            where = "is" if _same(out, src) else "is inside"
            raise InvalidOptionError(f"-o {output} {where} the {what} {path}; writing there would destroy or mix with "
                                     "your input. Choose another output (or add --overwrite if you really mean it)")


def why_not_a_file(path: str | os.PathLike[str]) -> str:
    """'does not exist', 'is a folder', 'is a named pipe (FIFO)' ... for a path that is not a regular file."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "does not exist"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    for test, what in ((stat.S_ISDIR, "is a folder"), (stat.S_ISFIFO, "is a named pipe (FIFO)"),
                       (stat.S_ISSOCK, "is a socket"), (stat.S_ISCHR, "is a character device"),
                       (stat.S_ISBLK, "is a block device")):
        if test(mode):
            return f"{what}, not a regular file"
    return "is not a regular file"
