"""Safe image decoding to float RGB tensors, and atomic image saving with an embedded recipe.

Contract
--------
* :func:`load_image` turns a path, ``PIL.Image``, numpy array or torch tensor into a float32,
  contiguous, CPU tensor of shape ``(1, 3, H, W)`` with values in ``[0, 1]``. Transparency is
  composited on white. Files are opened lazily and their pixel count is checked against a cap
  (``max_pixels=``, else the ``IMPASTO_MAX_PIXELS`` environment variable, else
  :data:`DEFAULT_MAX_PIXELS`) *before* any pixel data is decoded.
* :func:`count_frames` and :func:`iter_frames` do the same for every frame of a multi-frame file
  (animated GIF, WebP, APNG, multi-page TIFF), one frame at a time.
* Untrusted files: only regular files are opened (a FIFO, device, socket or directory is refused
  before ``open``, so nothing blocks); while impasto decodes, Pillow's own decompression-bomb guard
  is held to the same cap (see :func:`_pillow_limit`), so raising the cap really allows a larger
  image and no late size check in a Pillow plugin (GIF frames, ICO entries, TIFF tiles) lets a
  larger one through; and every failure, whatever Pillow, the OS or a codec raised, leaves as one
  of the typed errors below, naming the file and the fix.
* :func:`load_image_with_alpha` returns the straight (un-premultiplied, not composited) colour and
  the alpha channel ``(1, 1, H, W)``, or ``None`` when the source has no transparency.
* :func:`save_image` writes ``.png`` (8-bit RGB/RGBA), ``.jpg``/``.jpeg`` (8-bit RGB) or
  ``.tif``/``.tiff`` (16-bit RGB/RGBA, uncompressed) atomically, optionally embedding a JSON recipe
  that :func:`read_recipe` reads back.
* Every decoded file gets: EXIF orientation applied, an embedded ICC profile converted to sRGB
  (8-bit data only; silently skipped when LittleCMS cannot use the profile), 16-bit precision kept
  for grayscale ``I;16`` images and for uncompressed 16-bit RGB(A) TIFFs.

Errors: :class:`~impasto.errors.InvalidImageError` (also a ``ValueError``) for anything that cannot
be opened or decoded or has the wrong shape/dtype/range, :class:`~impasto.errors.ImageTooLargeError`
above the pixel cap, :class:`~impasto.errors.InvalidOptionError` for bad arguments (suffix,
quality, cap).

Known limits: Pillow decodes 16-bit *colour* PNGs and compressed 16-bit colour TIFFs at 8 bits, so
those lose their low byte; ICC conversion is not applied to 16-bit, ``I`` or ``F`` data.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import stat
import struct
import tempfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Union

import numpy as np
import torch
from PIL import Image, ImageOps, PngImagePlugin

from impasto.errors import ImageTooLargeError, InvalidImageError, InvalidOptionError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "MAX_PIXELS_ENV",
    "RECIPE_KEY",
    "SAVE_SUFFIXES",
    "ImageSource",
    "count_frames",
    "iter_frames",
    "load_image",
    "load_image_with_alpha",
    "read_recipe",
    "save_image",
    "to_pil",
]

DEFAULT_MAX_PIXELS: int = 64_000_000
"""Largest ``width * height`` decoded unless ``max_pixels=`` or ``IMPASTO_MAX_PIXELS`` says otherwise."""

MAX_PIXELS_ENV = "IMPASTO_MAX_PIXELS"
RECIPE_KEY = "impasto:recipe"

# suffix -> Pillow format name (TIFF is written by our own encoder, see _encode_tiff16).
SAVE_SUFFIXES: dict[str, str] = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}

ImageSource = Union[str, os.PathLike, Image.Image, np.ndarray, torch.Tensor]

_EXIF_ORIENTATION = 0x0112
_EXIF_IMAGE_DESCRIPTION = 0x010E
_TIFF_IMAGE_DESCRIPTION = 270
_SIXTEEN_BIT_GRAY = ("I;16", "I;16L", "I;16B", "I;16N")
# What Pillow raises for a damaged file in the places where a damaged part is skipped, not refused
# (EXIF, recipes, the 16-bit TIFF fast path). Everywhere else _decoding() translates any exception.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, TypeError)
# Said after a decode failure: what to do about a damaged file.
_DAMAGED_HINT = "the file is damaged or incomplete: export or download it again"
_READABLE = "an image file Pillow reads, such as PNG, JPEG, TIFF, WebP, GIF or BMP"
_VIDEO_HINT = "extract its frames first, e.g. 'ffmpeg -i clip.mp4 frames/%05d.png'"
# Leading bytes of common files that are not images, to say what arrived instead.
_NOT_IMAGE_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (4, b"ftyp", "an MP4/QuickTime video or HEIF image"),
    (0, b"\x1aE\xdf\xa3", "a WebM/Matroska video"),
    (8, b"AVI ", "an AVI video"),
    (0, b"%PDF", "a PDF document"),
    (0, b"PK\x03\x04", "a ZIP archive"),
)
# Leading bytes of common image formats: a file that starts like one but that no Pillow plugin
# could open is a damaged image, not a foreign file.
_IMAGE_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\x89PNG\r\n\x1a\n", "PNG"),
    (0, b"\xff\xd8\xff", "JPEG"),
    (0, b"GIF8", "GIF"),
    (8, b"WEBP", "WebP"),
    (0, b"II*\0", "TIFF"),
    (0, b"MM\0*", "TIFF"),
    (0, b"BM", "BMP"),
    (0, b"8BPS", "PSD"),
)
# Pillow's bomb messages start "Image size (N pixels) exceeds limit of ...".
_PILLOW_PIXELS = re.compile(r"\((\d+) pixels\)")
# Tolerance for float inputs that stray just outside [0, 1] through rounding.
_RANGE_TOLERANCE = 1e-4


# ----------------------------------------------------------------------------------------------
# pixel cap


def _resolve_max_pixels(max_pixels: int | None) -> int:
    """The effective cap: the argument, else ``$IMPASTO_MAX_PIXELS``, else the default.

    Raises:
        InvalidOptionError: the argument or the environment variable is not a positive integer.
    """
    if max_pixels is not None:
        if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels <= 0:
            raise InvalidOptionError(
                f"max_pixels must be a positive integer, got {max_pixels!r}"
            )
        return max_pixels
    raw = os.environ.get(MAX_PIXELS_ENV)
    if raw is None or raw.strip() == "":
        return DEFAULT_MAX_PIXELS
    try:
        value = int(raw.strip().replace("_", ""))
    except ValueError:
        value = 0
    if value <= 0:
        raise InvalidOptionError(
            f"{MAX_PIXELS_ENV} must be a positive integer, got {raw!r}; unset it to use the "
            f"default of {DEFAULT_MAX_PIXELS:,}"
        )
    return value


def _too_large(name: str, cap: int, pixels: int | None, size: str = "") -> ImageTooLargeError:
    """The over-the-cap error; ``size`` is ``"WxH = "`` when known, ``pixels`` None when unknown."""
    if pixels is None:
        return ImageTooLargeError(
            f"{name} has more pixels than the cap of {cap:,}; if you trust the file, allow it "
            f"with a larger max_pixels= or environment variable {MAX_PIXELS_ENV}"
        )
    return ImageTooLargeError(
        f"{name} is {size}{pixels:,} pixels, more than the cap of {cap:,}; if you trust the file, "
        f"allow it with max_pixels={pixels} or the environment variable {MAX_PIXELS_ENV}={pixels}"
    )


def _check_pixels(name: str, width: int, height: int, cap: int) -> None:
    """Raise :class:`ImageTooLargeError` when ``width * height`` exceeds ``cap``."""
    if width * height > cap:
        raise _too_large(name, cap, width * height, f"{width}x{height} = ")


# Pillow keeps its bomb limit in one process-wide variable; this lock keeps impasto's own decodes
# from changing it under each other (re-entrant: a decode may call another helper that takes it).
_PILLOW_LIMIT_LOCK = threading.RLock()


@contextlib.contextmanager
def _pillow_limit(cap: int) -> Iterator[None]:
    """While the body runs, Pillow's decompression-bomb guard enforces exactly ``cap`` pixels.

    Pillow checks sizes against ``Image.MAX_IMAGE_PIXELS`` (89 M by default) inside
    ``Image.open`` and again inside plugins (a GIF frame larger than its screen, an ICO entry,
    which Pillow decodes during ``open``, TIFF tiles, the WebP canvas); it warns above the limit
    and raises above twice it. Left alone, that guard refused images a raised
    ``IMPASTO_MAX_PIXELS`` allowed (above 179 M pixels), so the advice in our own message was
    false, and it let an ICO entry between our cap and 89 M pixels be decoded. So the limit is
    set to ``cap`` and its warning becomes an error; :func:`_decoding` maps both to
    :class:`ImageTooLargeError`. The variable and the warning filters are restored afterwards;
    other threads of the process see both meanwhile (the lock serialises impasto's decodes, not
    other Pillow users).
    """
    with _PILLOW_LIMIT_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        previous = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = cap
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = previous


@contextlib.contextmanager
def _decoding(name: str, cap: int) -> Iterator[None]:
    """Run Pillow under :func:`_pillow_limit` and turn whatever escapes into a typed error.

    A parser fed a hostile file may raise anything (OSError, SyntaxError, ValueError, KeyError,
    struct.error, ZeroDivisionError, RecursionError, MemoryError, ...); all of it means "this
    file cannot be decoded", so all of it leaves as :class:`InvalidImageError` naming the file,
    with the original chained as ``__cause__``. Our own typed errors pass through unchanged.
    """
    try:
        with _pillow_limit(cap):
            yield
    except InvalidImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        found = _PILLOW_PIXELS.search(str(exc))
        raise _too_large(name, cap, int(found.group(1)) if found else None) from exc
    except MemoryError as exc:
        raise InvalidImageError(
            f"cannot decode {name}: out of memory; free memory, or shrink the image, or lower "
            f"{MAX_PIXELS_ENV} so that images this large are refused up front"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - the decode boundary: see the docstring
        detail = str(exc) or type(exc).__name__
        raise InvalidImageError(f"cannot decode {name}: {detail}; {_DAMAGED_HINT}") from exc


def _describe_mode(mode: int) -> str | None:
    """What a non-regular file is, or ``None`` for a regular file."""
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    for test, kind in kinds:
        if test(mode):
            return kind
    return None if stat.S_ISREG(mode) else "not a regular file"


def _refuse_unless_regular(mode: int, name: str) -> None:
    kind = _describe_mode(mode)
    if kind is not None:
        fix = ("pass the path of an image file inside it" if kind == "a directory"
               else "save the image to a regular file first and pass that path")
        raise InvalidImageError(f"{name} is {kind}, not an image file; {fix}")


def _open_regular(path: Path, name: str) -> IO[bytes]:
    """Open ``path`` for binary reading, refusing anything but a non-empty regular file.

    The type is checked with ``stat`` *before* opening, because opening a FIFO blocks until a
    writer appears and a device may never end. The file is then opened non-blocking and checked
    again with ``fstat``, so a path swapped for a FIFO in between still cannot block.
    """
    try:
        _refuse_unless_regular(os.stat(path).st_mode, name)
        flags = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0)
        fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError as exc:
        raise InvalidImageError(f"no such file: {name}; check the path") from exc
    except PermissionError as exc:
        raise InvalidImageError(
            f"cannot read {name}: permission denied; check the file's permissions"
        ) from exc
    except OSError as exc:
        raise InvalidImageError(f"cannot read {name}: {exc.strerror or exc}") from exc
    try:
        info = os.fstat(fd)
        _refuse_unless_regular(info.st_mode, name)
        if info.st_size == 0:
            raise InvalidImageError(
                f"{name} is empty (0 bytes); expected {_READABLE}: it was probably not written "
                "completely, so export or download it again"
            )
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _unrecognised(name: str, fh: IO[bytes]) -> InvalidImageError:
    """The error for a file no Pillow plugin accepts, saying what it looks like when we can tell."""
    try:
        fh.seek(0)
        head = fh.read(16)
    except OSError:
        head = b""
    for offset, magic, kind in _IMAGE_SIGNATURES:
        if head[offset:offset + len(magic)] == magic:
            return InvalidImageError(
                f"cannot decode {name}: it starts like a {kind} file but its header cannot be "
                f"read; {_DAMAGED_HINT}"
            )
    what = hint = ""
    for offset, magic, kind in _NOT_IMAGE_SIGNATURES:
        if head[offset:offset + len(magic)] == magic:
            what = f" (it looks like {kind})"
            hint = f"; for a video, {_VIDEO_HINT}" if "video" in kind else ""
            break
    return InvalidImageError(
        f"cannot decode {name}: not a recognised image file{what}; expected {_READABLE}{hint}"
    )


# ----------------------------------------------------------------------------------------------
# decoding PIL images to numpy (straight colour + optional alpha)


def _orient_array(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1-8) to an ``(H, W, ...)`` array, as ``ImageOps.exif_transpose`` does."""
    if orientation == 2:
        return arr[:, ::-1]
    if orientation == 3:
        return arr[::-1, ::-1]
    if orientation == 4:
        return arr[::-1]
    if orientation == 5:
        return arr.swapaxes(0, 1)
    if orientation == 6:
        return np.rot90(arr, k=-1)
    if orientation == 7:
        return arr.swapaxes(0, 1)[::-1, ::-1]
    if orientation == 8:
        return np.rot90(arr, k=1)
    return arr


def _exif_orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(_EXIF_ORIENTATION, 1)
        return int(value) if int(value) in range(1, 9) else 1
    except Exception:  # broken EXIF must not make the pixels unusable
        return 1


def _read_raw_tiff16(im: Image.Image, fh: IO[bytes], name: str) -> np.ndarray | None:
    """Read an uncompressed 16-bit RGB(A) TIFF at full precision, or ``None`` if it is not one.

    Pillow has no 16-bit colour mode and would keep only the high byte, so we read the strips
    ourselves from the offsets Pillow parsed, through ``fh``, the file Pillow parsed. Returns
    ``(H, W, C)`` uint16 with C in {3, 4}, before orientation. Caller has already checked the
    pixel cap.
    """
    if im.format != "TIFF" or not im.tile:
        return None
    layouts = {"RGB;16L": ("<u2", 3), "RGB;16B": (">u2", 3),
               "RGBA;16L": ("<u2", 4), "RGBA;16B": (">u2", 4)}
    first = im.tile[0]
    rawmode = first[3][0] if isinstance(first[3], tuple) and first[3] else first[3]
    if rawmode not in layouts:
        return None
    dtype, channels = layouts[rawmode]
    width, height = im.size
    out = np.empty((height, width, channels), dtype=np.uint16)
    for tile in im.tile:
        codec, box, offset, args = tile[0], tile[1], tile[2], tile[3]
        if codec != "raw" or not isinstance(args, tuple) or args[0] != rawmode:
            return None
        stride = args[1] if len(args) > 1 else 0
        ystep = args[2] if len(args) > 2 else 1
        x0, y0, x1, y1 = box
        row_bytes = (x1 - x0) * channels * 2
        if ystep != 1 or stride not in (0, row_bytes):
            return None
        count = (x1 - x0) * (y1 - y0) * channels
        fh.seek(offset)
        data = fh.read(count * 2)
        if len(data) != count * 2:
            raise InvalidImageError(f"cannot decode {name}: image file is truncated; {_DAMAGED_HINT}")
        strip = np.frombuffer(data, dtype=dtype, count=count)
        out[y0:y1, x0:x1] = strip.reshape(y1 - y0, x1 - x0, channels)
    return out


def _apply_icc(colour: Image.Image, icc: bytes) -> Image.Image:
    """Convert ``colour`` (mode L, RGB or CMYK) from its embedded profile to sRGB, mode RGB.

    Falls back to the unconverted image when LittleCMS is missing or rejects the profile
    (e.g. an RGB profile attached to a grayscale image): raw values beat no image.
    """
    try:
        from PIL import ImageCms

        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        target = ImageCms.createProfile("sRGB")
        converted = ImageCms.profileToProfile(colour, source, target, outputMode="RGB")
        return converted if converted is not None else colour
    except Exception:
        return colour


def _pil_to_arrays(im: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """Decoded (loaded, upright) PIL image -> straight RGB ``(H, W, 3)`` float32 in [0, 1], alpha or None.

    Raises:
        InvalidImageError: unsupported mode, NaN in float data, float data outside [0, 1].
    """
    mode = im.mode
    if mode in _SIXTEEN_BIT_GRAY:
        gray = np.asarray(im).astype(np.float32) / 65535.0
        return _gray_to_rgb(gray), None
    if mode == "I":
        # 32-bit integer images are how Pillow has historically carried 16-bit samples.
        gray = np.clip(np.asarray(im, dtype=np.int64), 0, 65535).astype(np.float32) / 65535.0
        return _gray_to_rgb(gray), None
    if mode == "F":
        gray = _check_float_range(np.asarray(im, dtype=np.float32), "mode 'F' image")
        return _gray_to_rgb(gray), None

    icc = im.info.get("icc_profile")
    has_transparency = "transparency" in im.info
    if mode == "1":
        im, mode = im.convert("L"), "L"
    if mode in ("P", "PA"):
        mode = "RGBA" if (mode == "PA" or has_transparency) else "RGB"
        im = im.convert(mode)
    elif mode in ("L", "RGB") and has_transparency:
        im, mode = im.convert("RGBA"), "RGBA"
    elif mode == "RGBa":
        im, mode = im.convert("RGBA"), "RGBA"
    elif mode == "La":
        im, mode = im.convert("LA"), "LA"

    alpha: np.ndarray | None = None
    if mode == "LA":
        colour, a = im.split()
        alpha = np.asarray(a, dtype=np.float32) / 255.0
    elif mode == "RGBA":
        colour = im.convert("RGB")
        alpha = np.asarray(im.getchannel("A"), dtype=np.float32) / 255.0
    elif mode in ("L", "RGB", "CMYK"):
        colour = im
    else:
        try:
            colour = im.convert("RGB")
        except Exception as exc:
            raise InvalidImageError(
                f"unsupported image mode {mode!r}: expected L, LA, P, PA, RGB, RGBA, CMYK, 1, "
                f"I, I;16 or F ({exc}); convert it to RGB first"
            ) from exc

    if icc and colour.mode in ("L", "RGB", "CMYK"):
        colour = _apply_icc(colour, icc)
    if colour.mode == "L":
        rgb = _gray_to_rgb(np.asarray(colour, dtype=np.float32) / 255.0)
    else:
        rgb = np.asarray(colour.convert("RGB"), dtype=np.float32) / 255.0
    return rgb, alpha


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[:, :, None], 3, axis=2)


def _check_float_range(arr: np.ndarray, what: str) -> np.ndarray:
    """NaN/inf or values outside [0, 1] (beyond rounding noise) -> InvalidImageError; else clipped."""
    if arr.size and not np.isfinite(arr).all():
        raise InvalidImageError(f"{what} contains NaN or infinite values; expected floats in [0, 1]")
    if arr.size:
        lo, hi = float(arr.min()), float(arr.max())
        if lo < -_RANGE_TOLERANCE or hi > 1.0 + _RANGE_TOLERANCE:
            raise InvalidImageError(
                f"{what} has values in [{lo:g}, {hi:g}]; expected floats in [0, 1] "
                "(divide 8-bit data by 255)"
            )
    return np.clip(arr, 0.0, 1.0)


def _quote(path: Path | str) -> str:
    return f"'{path}'"


def _decode_loaded(im: Image.Image, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Load pixels, apply EXIF orientation, convert to arrays. Run it inside :func:`_decoding`."""
    im.load()
    try:
        upright = ImageOps.exif_transpose(im)
    except Exception:  # broken EXIF: keep the pixels as stored
        upright = im
    if upright is None:
        upright = im
    try:
        return _pil_to_arrays(upright)
    except InvalidImageError as exc:
        raise InvalidImageError(f"{name}: {exc}") from exc


def _decode_file(im: Image.Image, fh: IO[bytes], name: str, cap: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Check the current frame's size against ``cap`` (header only), then decode it."""
    width, height = im.size
    _check_pixels(name, width, height, cap)  # header only: nothing decoded yet
    try:
        raw16 = _read_raw_tiff16(im, fh, name)
    except InvalidImageError:
        raise
    except _DECODE_ERRORS:
        raw16 = None  # let Pillow try (and report) instead
    if raw16 is not None:
        arr = _orient_array(raw16, _exif_orientation(im)).astype(np.float32) / 65535.0
        alpha = arr[:, :, 3] if arr.shape[2] == 4 else None
        return arr[:, :, :3], alpha
    return _decode_loaded(im, name)


@contextlib.contextmanager
def _opened(path: Path, name: str, cap: int) -> Iterator[tuple[Image.Image, IO[bytes]]]:
    """A regular file opened lazily by Pillow (header parsed, no pixels decoded), closed on exit."""
    with _open_regular(path, name) as fh:
        with _decoding(name, cap):
            try:
                im = Image.open(fh)
            except Image.UnidentifiedImageError as exc:
                raise _unrecognised(name, fh) from exc
        with im:
            yield im, fh


def _open_path(path: Path, cap: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Open a file lazily, check the cap from its header, then decode."""
    name = _quote(path)
    with _opened(path, name, cap) as (im, fh), _decoding(name, cap):
        return _decode_file(im, fh, name, cap)


# ----------------------------------------------------------------------------------------------
# numpy / torch sources


_ARRAY_SHAPES = "(H, W), (H, W, 1), (H, W, 3) or (H, W, 4)"
_TENSOR_SHAPES = "(H, W), (1, H, W), (3, H, W), (4, H, W) or (1, C, H, W) with C in {1, 3, 4}"


def _array_to_arrays(arr: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray | None]:
    """``(H, W[, C])`` numpy array -> straight RGB float32 ``(H, W, 3)``, alpha ``(H, W)`` or None."""
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise InvalidImageError(f"{what} must have shape {_ARRAY_SHAPES}, got {tuple(arr.shape)}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InvalidImageError(f"{what} is empty: shape {tuple(arr.shape)}")
    if arr.dtype == np.bool_:
        data = arr.astype(np.float32)
    elif arr.dtype == np.uint8:
        data = arr.astype(np.float32) / 255.0
    elif arr.dtype == np.uint16:
        data = arr.astype(np.float32) / 65535.0
    elif np.issubdtype(arr.dtype, np.floating):
        data = _check_float_range(arr.astype(np.float32), what)
    else:
        raise InvalidImageError(
            f"{what} must be uint8, uint16, bool or float in [0, 1], got dtype {arr.dtype}"
        )
    alpha = data[:, :, 3] if data.shape[2] == 4 else None
    rgb = data[:, :, :3] if data.shape[2] >= 3 else np.repeat(data, 3, axis=2)
    return rgb, alpha


def _tensor_to_arrays(t: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
    """Tensor in one of :data:`_TENSOR_SHAPES` -> the same as :func:`_array_to_arrays`."""
    shape = tuple(t.shape)
    if t.dim() == 4:
        if shape[0] != 1:
            raise InvalidImageError(
                f"tensor image must have shape {_TENSOR_SHAPES} (batch of one), got {shape}"
            )
        t = t[0]
    if t.dim() == 2:
        t = t.unsqueeze(0)
    if t.dim() != 3 or t.shape[0] not in (1, 3, 4):
        raise InvalidImageError(f"tensor image must have shape {_TENSOR_SHAPES}, got {shape}")
    if t.dtype in (torch.uint8, torch.uint16, torch.bool) or t.is_floating_point():
        pass
    else:
        raise InvalidImageError(
            f"tensor image must be float in [0, 1], uint8, uint16 or bool, got dtype {t.dtype}"
        )
    t = t.detach().cpu()
    if t.is_floating_point() and t.dtype not in (torch.float32, torch.float64):
        t = t.float()  # numpy has no bfloat16
    arr = t.permute(1, 2, 0).numpy()
    return _array_to_arrays(arr, "tensor image")


# ----------------------------------------------------------------------------------------------
# public loading API


def _load_arrays(source: ImageSource, max_pixels: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    cap = _resolve_max_pixels(max_pixels)
    if isinstance(source, (str, os.PathLike)):
        return _open_path(Path(source), cap)
    if isinstance(source, Image.Image):
        name = _quote(source.filename) if getattr(source, "filename", "") else "PIL image"
        _check_pixels(name, source.width, source.height, cap)
        with _decoding(name, cap):
            return _decode_loaded(source, name)
    if isinstance(source, np.ndarray):
        rgb, alpha = _array_to_arrays(source, "numpy image")
    elif isinstance(source, torch.Tensor):
        rgb, alpha = _tensor_to_arrays(source)
    else:
        raise InvalidImageError(
            "image source must be a path (str or Path), PIL.Image, numpy array or torch tensor, "
            f"got {type(source).__name__}"
        )
    _check_pixels("in-memory image", rgb.shape[1], rgb.shape[0], cap)
    return rgb, alpha


def _composite_on_white(rgb: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    if alpha is not None:
        a = alpha[:, :, None]
        rgb = rgb * a + (1.0 - a)  # "over" a white background, straight alpha
    return np.clip(rgb, 0.0, 1.0)


def _to_tensor(arr: np.ndarray) -> torch.Tensor:
    """``(H, W, C)`` float -> contiguous float32 ``(1, C, H, W)``."""
    chw = np.ascontiguousarray(np.asarray(arr, dtype=np.float32).transpose(2, 0, 1))
    return torch.from_numpy(chw).unsqueeze(0).contiguous()


def load_image(source: ImageSource, *, max_pixels: int | None = None) -> torch.Tensor:
    """Decode ``source`` to float32 RGB of shape ``(1, 3, H, W)`` in ``[0, 1]`` (contiguous, CPU).

    Args:
        source: a path; a ``PIL.Image``; a numpy array ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)``
            or ``(H, W, 4)`` of uint8, uint16 (scaled by 1/65535), bool or float in [0, 1]; or a
            tensor ``(H, W)``, ``(1, H, W)``, ``(3, H, W)``, ``(1, 3, H, W)`` (also 4 = RGBA
            channels) of float in [0, 1], uint8, uint16 or bool.
        max_pixels: largest allowed ``H * W``; defaults to ``$IMPASTO_MAX_PIXELS`` or
            :data:`DEFAULT_MAX_PIXELS`. For files it is checked from the header, before decoding.

    Returns:
        The image, upright (EXIF orientation applied), in sRGB when an ICC profile was embedded,
        with any transparency composited on white.

    Raises:
        InvalidImageError: missing, empty, truncated, corrupt or non-image file; not a regular
            file (directory, FIFO, device, socket: refused before opening, so nothing blocks);
            bad array/tensor shape, dtype or range; NaN. Every message names the file.
        ImageTooLargeError: more pixels than the cap (header or any Pillow size check), before
            those pixels are decoded.
        InvalidOptionError: ``max_pixels`` or ``$IMPASTO_MAX_PIXELS`` is not a positive integer.
    """
    rgb, alpha = _load_arrays(source, max_pixels)
    return _to_tensor(_composite_on_white(rgb, alpha))


def load_image_with_alpha(
    source: ImageSource, *, max_pixels: int | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Like :func:`load_image` but keeps transparency apart instead of compositing it.

    Returns:
        ``(rgb, alpha)``: ``rgb`` float32 ``(1, 3, H, W)`` in [0, 1], straight (not premultiplied,
        not composited) colour; ``alpha`` float32 ``(1, 1, H, W)`` in [0, 1] when the source has
        transparency (LA, RGBA, PA, P or L/RGB with a transparency entry, 4-channel arrays), else
        ``None``.

    Raises:
        The same as :func:`load_image`.
    """
    rgb, alpha = _load_arrays(source, max_pixels)
    alpha_t = None if alpha is None else _to_tensor(alpha[:, :, None])
    return _to_tensor(rgb), alpha_t


def count_frames(path: str | os.PathLike, *, max_pixels: int | None = None) -> int:
    """Number of frames in an image file (1 for a still image), read from the frame headers.

    Raises:
        The same as :func:`load_image` for a path (the first frame's size is checked against the
        cap; :func:`iter_frames` checks each frame's).
    """
    target = Path(path)
    name = _quote(target)
    cap = _resolve_max_pixels(max_pixels)
    with _opened(target, name, cap) as (im, _), _decoding(name, cap):
        _check_pixels(name, im.width, im.height, cap)
        return int(getattr(im, "n_frames", 1))


def iter_frames(path: str | os.PathLike, *, max_pixels: int | None = None) -> Iterator[torch.Tensor]:
    """Yield every frame of an image file (animated GIF/WebP/PNG, multi-page TIFF; a still image
    gives one frame) as float32 ``(1, 3, H, W)`` in [0, 1], transparency composited on white,
    decoding one frame at a time.

    Each frame's size is checked against the cap before it is decoded (a GIF frame may grow the
    canvas). Frames after the first keep what the format composes them with (GIF disposal).

    Raises:
        The same as :func:`load_image`, naming the file and the frame.
    """
    target = Path(path)
    name = _quote(target)
    cap = _resolve_max_pixels(max_pixels)
    with _opened(target, name, cap) as (im, fh):
        index = 0
        while True:
            frame_name = name if index == 0 else f"{name} (frame {index + 1})"
            with _decoding(frame_name, cap):
                try:
                    im.seek(index)
                except EOFError:
                    return
                rgb, alpha = _decode_file(im, fh, frame_name, cap)
            # Yield outside _decoding: the consumer's work must not hold the Pillow limit lock.
            yield _to_tensor(_composite_on_white(rgb, alpha))
            index += 1


# ----------------------------------------------------------------------------------------------
# saving


def _image_to_hwc(image: torch.Tensor) -> np.ndarray:
    """``(1, 3, H, W)`` or ``(3, H, W)`` float tensor -> ``(H, W, 3)`` float64 clamped to [0, 1]."""
    if not isinstance(image, torch.Tensor):
        raise InvalidImageError(f"image must be a torch.Tensor, got {type(image).__name__}")
    shape = tuple(image.shape)
    t = image.detach()
    if t.dim() == 4 and shape[0] == 1:
        t = t[0]
    if t.dim() != 3 or t.shape[0] != 3:
        raise InvalidImageError(f"image to save must have shape (1, 3, H, W) or (3, H, W), got {shape}")
    if not t.is_floating_point():
        raise InvalidImageError(f"image to save must be a float tensor in [0, 1], got dtype {t.dtype}")
    t = t.cpu().double()
    if not torch.isfinite(t).all():
        raise InvalidImageError("image to save contains NaN or infinite values")
    return t.clamp(0.0, 1.0).permute(1, 2, 0).numpy()


def _alpha_to_hw(alpha: torch.Tensor, height: int, width: int) -> np.ndarray:
    """``(1, 1, H, W)``, ``(1, H, W)`` or ``(H, W)`` float tensor -> ``(H, W)`` float64 in [0, 1]."""
    if not isinstance(alpha, torch.Tensor) or not alpha.is_floating_point():
        raise InvalidImageError(
            f"alpha must be a float tensor in [0, 1], got {type(alpha).__name__}"
            + (f" of dtype {alpha.dtype}" if isinstance(alpha, torch.Tensor) else "")
        )
    shape = tuple(alpha.shape)
    a = alpha.detach().cpu().double().reshape(-1, *shape[-2:]) if alpha.dim() >= 2 else alpha
    if alpha.dim() not in (2, 3, 4) or a.shape[0] != 1 or tuple(a.shape[-2:]) != (height, width):
        raise InvalidImageError(
            f"alpha must have shape (1, 1, {height}, {width}), (1, {height}, {width}) or "
            f"({height}, {width}) to match the image, got {shape}"
        )
    if not torch.isfinite(a).all():
        raise InvalidImageError("alpha contains NaN or infinite values")
    return a[0].clamp(0.0, 1.0).numpy()


def _quantize(arr: np.ndarray, bits: int) -> np.ndarray:
    top = (1 << bits) - 1
    return np.rint(arr * top).astype(np.uint8 if bits == 8 else np.uint16)


def to_pil(image: torch.Tensor) -> Image.Image:
    """``(1, 3, H, W)`` or ``(3, H, W)`` float tensor (clamped to [0, 1]) -> 8-bit RGB ``PIL.Image``.

    Raises:
        InvalidImageError: wrong type, shape or dtype, or NaN.
    """
    return Image.fromarray(_quantize(_image_to_hwc(image), 8), mode="RGB")


def _recipe_text(recipe: dict[str, Any]) -> str:
    if not isinstance(recipe, dict):
        raise InvalidOptionError(f"recipe must be a dict, got {type(recipe).__name__}")
    try:
        # ASCII-only so it fits TIFF ASCII and EXIF ImageDescription unchanged.
        return json.dumps(recipe, ensure_ascii=True, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise InvalidOptionError(f"recipe must be JSON-serialisable: {exc}") from exc


def _encode_tiff16(pixels: np.ndarray, description: str | None = None, orientation: int = 1) -> bytes:
    """Baseline little-endian TIFF, uncompressed, one strip, 16 bits per sample, RGB or RGBA.

    Pillow cannot write 16-bit colour TIFFs (it has no such mode), so we write the few tags a
    baseline reader needs ourselves. ``pixels`` is ``(H, W, 3 or 4)`` uint16; RGBA is written with
    ExtraSamples = 2 (unassociated alpha).
    """
    height, width, channels = pixels.shape
    data = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    if len(data) > 0xFFFF_FFFF - (1 << 20):
        raise InvalidOptionError(
            f"image of {width}x{height} is too large for a classic TIFF (4 GiB); save as .png instead"
        )
    SHORT, LONG, RATIONAL, ASCII = 3, 4, 5, 2
    entries: list[tuple[int, int, int, bytes]] = []  # tag, type, count, value bytes

    def add(tag: int, typ: int, values: list[int] | bytes) -> None:
        if typ == ASCII:
            assert isinstance(values, bytes)
            entries.append((tag, typ, len(values), values))
        elif typ == SHORT:
            entries.append((tag, typ, len(values), struct.pack(f"<{len(values)}H", *values)))
        elif typ == LONG:
            entries.append((tag, typ, len(values), struct.pack(f"<{len(values)}I", *values)))
        else:  # RATIONAL given as [num, den]
            entries.append((tag, typ, 1, struct.pack("<2I", *values)))

    add(256, LONG, [width])
    add(257, LONG, [height])
    add(258, SHORT, [16] * channels)
    add(259, SHORT, [1])  # no compression
    add(262, SHORT, [2])  # RGB
    if description is not None:
        add(_TIFF_IMAGE_DESCRIPTION, ASCII, description.encode("ascii") + b"\0")
    add(273, LONG, [0])  # strip offset, patched below
    if orientation != 1:
        add(274, SHORT, [orientation])
    add(277, SHORT, [channels])
    add(278, LONG, [height])
    add(279, LONG, [len(data)])
    add(282, RATIONAL, [72, 1])
    add(283, RATIONAL, [72, 1])
    add(284, SHORT, [1])  # chunky
    add(296, SHORT, [2])  # inch
    if channels == 4:
        add(338, SHORT, [2])  # unassociated alpha
    entries.sort(key=lambda e: e[0])

    ifd_offset = 8
    ifd_size = 2 + 12 * len(entries) + 4
    extra = bytearray()
    extra_start = ifd_offset + ifd_size
    resolved: list[tuple[int, int, int, bytes]] = []
    for tag, typ, count, value in entries:
        if len(value) <= 4:
            resolved.append((tag, typ, count, value.ljust(4, b"\0")))
        else:
            if (extra_start + len(extra)) % 2:
                extra.append(0)  # values start on a word boundary
            resolved.append((tag, typ, count, struct.pack("<I", extra_start + len(extra))))
            extra += value
    pixel_offset = extra_start + len(extra)
    ifd = bytearray(struct.pack("<H", len(resolved)))
    for tag, typ, count, value in resolved:
        if tag == 273:
            value = struct.pack("<I", pixel_offset)
        ifd += struct.pack("<HHI", tag, typ, count) + value
    ifd += struct.pack("<I", 0)  # no next IFD
    return b"II" + struct.pack("<HI", 42, ifd_offset) + bytes(ifd) + bytes(extra) + data


def _write(fh: IO[bytes], fmt: str, rgb: np.ndarray, alpha: np.ndarray | None,
           recipe_json: str | None, quality: int, png_compression: int = 6) -> None:
    if fmt == "TIFF":
        pixels = rgb if alpha is None else np.concatenate([rgb, alpha[:, :, None]], axis=2)
        fh.write(_encode_tiff16(_quantize(pixels, 16), recipe_json))
        return
    if fmt == "PNG":
        if alpha is not None:
            pixels = _quantize(np.concatenate([rgb, alpha[:, :, None]], axis=2), 8)
            im = Image.fromarray(pixels, mode="RGBA")
        else:
            im = Image.fromarray(_quantize(rgb, 8), mode="RGB")
        info = PngImagePlugin.PngInfo()
        if recipe_json is not None:
            info.add_itxt(RECIPE_KEY, recipe_json)
        im.save(fh, format="PNG", pnginfo=info, compress_level=png_compression)
        return
    im = Image.fromarray(_quantize(rgb, 8), mode="RGB")
    kwargs: dict[str, Any] = {"quality": quality}
    if recipe_json is not None:
        exif = Image.Exif()
        exif[_EXIF_IMAGE_DESCRIPTION] = recipe_json
        kwargs["exif"] = exif.tobytes()
    try:
        im.save(fh, format="JPEG", **kwargs)
    except ValueError as exc:
        if recipe_json is not None and "EXIF" in str(exc).upper():
            raise InvalidOptionError(
                f"recipe is too large for a JPEG EXIF block ({len(recipe_json)} bytes): {exc}; "
                "save as .png or .tif instead"
            ) from exc
        raise


def save_image(
    image: torch.Tensor,
    path: str | os.PathLike,
    *,
    recipe: dict[str, Any] | None = None,
    alpha: torch.Tensor | None = None,
    quality: int = 95,
    png_compression: int = 6,
) -> Path:
    """Write ``image`` atomically and return the final path.

    Args:
        image: float tensor ``(1, 3, H, W)`` or ``(3, H, W)``; values are clamped to [0, 1].
        path: target; the suffix picks the format: ``.png`` (8-bit RGB, RGBA with ``alpha``),
            ``.jpg``/``.jpeg`` (8-bit RGB, ``alpha`` ignored), ``.tif``/``.tiff`` (16-bit RGB,
            RGBA with ``alpha``, uncompressed). Missing parent folders are created.
        recipe: JSON-serialisable dict embedded as JSON text (PNG iTXt ``impasto:recipe``,
            JPEG EXIF ImageDescription, TIFF ImageDescription); see :func:`read_recipe`.
        alpha: float tensor ``(1, 1, H, W)``, ``(1, H, W)`` or ``(H, W)``, straight alpha in [0, 1].
        quality: JPEG quality, 1-100.
        png_compression: zlib level of a PNG, 0-9 (1: several times faster to write, files about
            a third larger; what video frames use).

    The file is written to a temporary file in the same folder, flushed and then renamed over
    the target, so readers never see a partial file and a failed save leaves an existing target
    untouched.

    Raises:
        InvalidOptionError: unknown suffix, bad quality, recipe not JSON-serialisable / too large.
        InvalidImageError: wrong image or alpha type, shape or dtype, or NaN.
        OSError: the file system refused the write (nothing is left behind).
    """
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in SAVE_SUFFIXES:
        raise InvalidOptionError(
            f"cannot save {_quote(target)}: unknown suffix {target.suffix or '(none)'!r}; "
            f"expected one of {', '.join(SAVE_SUFFIXES)}"
        )
    fmt = SAVE_SUFFIXES[suffix]
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise InvalidOptionError(f"quality must be an integer from 1 to 100, got {quality!r}")
    if isinstance(png_compression, bool) or not isinstance(png_compression, int) or not 0 <= png_compression <= 9:
        raise InvalidOptionError(f"png_compression must be an integer from 0 to 9, got {png_compression!r}")
    rgb = _image_to_hwc(image)
    alpha_hw = None
    if alpha is not None and fmt != "JPEG":
        alpha_hw = _alpha_to_hw(alpha, rgb.shape[0], rgb.shape[1])
    recipe_json = None if recipe is None else _recipe_text(recipe)

    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.NamedTemporaryFile(
        delete=False, dir=parent, prefix=f".{target.name}.", suffix=f".tmp{suffix}"
    )
    tmp_path = Path(tmp.name)
    try:
        with tmp:
            _write(tmp, fmt, rgb, alpha_hw, recipe_json, quality, png_compression)
            tmp.flush()
            os.fsync(tmp.fileno())
        # NamedTemporaryFile creates 0600; give the result the permissions a plain open() would.
        mode = target.stat().st_mode & 0o777 if target.exists() else 0o644
        os.chmod(tmp_path, mode)
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return target


# ----------------------------------------------------------------------------------------------
# recipes


def _recipe_candidates(im: Image.Image) -> list[Any]:
    found: list[Any] = []
    if im.format == "PNG":
        found.append(im.info.get(RECIPE_KEY))
        if found[-1] is None:
            try:
                im.load()  # text chunks after the image data appear only once loaded
                found.append(getattr(im, "text", {}).get(RECIPE_KEY))
            except _DECODE_ERRORS:
                pass
    elif im.format == "TIFF":
        tags = getattr(im, "tag_v2", {})
        found.append(tags.get(_TIFF_IMAGE_DESCRIPTION))
    else:
        try:
            found.append(im.getexif().get(_EXIF_IMAGE_DESCRIPTION))
        except Exception:
            pass
    return found


def read_recipe(path: str | os.PathLike) -> dict[str, Any]:
    """Read the recipe :func:`save_image` embedded in a PNG, JPEG or TIFF file.

    Returns:
        The recipe dict.

    Raises:
        InvalidImageError: missing, unreadable or non-regular file, or the file holds no impasto
            recipe.
        ImageTooLargeError: the image has more pixels than the cap (as for :func:`load_image`).
    """
    target = Path(path)
    name = _quote(target)
    cap = _resolve_max_pixels(None)
    with _opened(target, name, cap) as (im, _), _decoding(name, cap):
        candidates = _recipe_candidates(im)
    for text in candidates:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        if not isinstance(text, str):
            continue
        try:
            value = json.loads(text.rstrip("\0"))
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    raise InvalidImageError(
        f"{name} holds no impasto recipe (expected JSON in the PNG '{RECIPE_KEY}' text chunk, "
        "or the JPEG/TIFF ImageDescription tag, as written by save_image(..., recipe=...))"
    )

