"""Broken and odd image files: every one loads as float RGB or is refused with a typed error.

Every file is generated here in ``tmp_path`` (no checked-in binaries). Categories: colour modes,
EXIF orientation, truncation (format x offset), header bombs (format x size), extreme aspect
ratios, non-regular files, renamed files, multi-frame files, Pillow's bomb limit, errors Pillow
should never raise, and the CLI. For each bad file: an ``InvalidImageError`` (an ``ImpastoError``)
whose message names the file, and the file's bytes unchanged.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import signal
import socket
import struct
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile, ImageSequence

from impasto.errors import ImageTooLargeError, ImpastoError, InvalidImageError
from impasto.io.image import (
    MAX_PIXELS_ENV,
    count_frames,
    iter_frames,
    load_image,
    load_image_with_alpha,
    read_recipe,
)

W, H = 8, 6


@pytest.fixture(autouse=True)
def _no_env_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MAX_PIXELS_ENV, raising=False)


# ------------------------------------------------------------------------------------------------
# helpers


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _refused(
    path: Path, error: type[InvalidImageError] = InvalidImageError, load: Callable[[Path], Any] = load_image
) -> str:
    """Assert that ``load(path)`` raises ``error`` naming the file and leaves its bytes alone."""
    before = _sha(path) if path.is_file() else None
    with pytest.raises(error) as info:
        load(path)
    assert isinstance(info.value, ImpastoError)
    message = str(info.value)
    assert path.name in message, message
    assert "\n" not in message
    if before is not None:
        assert _sha(path) == before
    return message


class PixelsDecoded(BaseException):
    """Raised instead of decoding pixels (a BaseException: load_image's translation must not hide it)."""


@pytest.fixture()
def forbid_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(self: object) -> None:
        raise PixelsDecoded("pixel data was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", boom)


class Blocked(BaseException):
    """Raised by _deadline; a BaseException so that no error handling under test can swallow it
    (TimeoutError is an OSError, which a loader may translate into a neat error)."""


@contextmanager
def _deadline(seconds: int) -> Iterator[None]:
    """Fail instead of hanging (a blocked open() of a FIFO is interrupted by SIGALRM)."""

    def expired(signum: int, frame: object) -> None:
        raise Blocked(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


needs_fifo = pytest.mark.skipif(
    not hasattr(os, "mkfifo") or not hasattr(signal, "SIGALRM"), reason="needs os.mkfifo and SIGALRM"
)


def _noise(size: tuple[int, int] = (32, 24), seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _encode(im: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------
# forged headers: a few bytes that claim width x height


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _forge_png(w: int, h: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _png_chunk(b"IEND", b""))


def _forge_gif(w: int, h: int) -> bytes:
    """Logical screen ``w x h``, one 1x1 frame."""
    return (b"GIF89a" + struct.pack("<HHBBB", w, h, 0, 0, 0)
            + b"," + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00;")


def _forge_bmp(w: int, h: int) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + 40 + 16, 0, 0, 54) + info + b"\0" * 16


def _forge_tiff(w: int, h: int) -> bytes:
    """Baseline 8-bit grayscale, one uncompressed strip of which 16 bytes are present."""
    entries = [(256, 4, w), (257, 4, h), (258, 3, 8), (259, 3, 1), (262, 3, 1),
               (273, 4, 8 + 2 + 12 * 9 + 4), (277, 3, 1), (278, 4, h), (279, 4, w * h)]
    out = b"II*\0" + struct.pack("<IH", 8, len(entries))
    for tag, typ, value in entries:
        packed = struct.pack("<HH", value, 0) if typ == 3 else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, typ, 1) + packed
    return out + struct.pack("<I", 0) + b"\0" * 16


def _forge_webp(w: int, h: int) -> bytes:
    """A real lossless 4x4 WebP whose VP8L header is patched to claim ``w x h`` (at most 16384)."""
    data = bytearray(_encode(Image.new("RGB", (4, 4), (9, 9, 9)), "WEBP", lossless=True))
    assert data[12:16] == b"VP8L" and data[20] == 0x2F
    bits = struct.unpack("<I", data[21:25])[0]
    data[21:25] = struct.pack("<I", (bits & ~0x0FFFFFFF) | (w - 1) | ((h - 1) << 14))
    return bytes(data)


def _forge_psd(w: int, h: int) -> bytes:
    return (b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, h, w, 8, 3) + struct.pack(">III", 0, 0, 0)
            + struct.pack(">H", 0) + b"\0" * 16)


def _forge_ico(w: int, h: int) -> bytes:
    """The directory says 256x256 (its largest); the embedded PNG says ``w x h``."""
    inner = _forge_png(w, h)
    return struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(inner), 22) + inner


def _forge_jpeg(w: int, h: int) -> bytes:
    data = bytearray(_encode(Image.new("RGB", (8, 8)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", h, w)
    return bytes(data)


def _forge_ppm(w: int, h: int) -> bytes:
    return f"P6\n{w} {h}\n255\n".encode() + b"\0" * 16


def _forge_tga(w: int, h: int) -> bytes:
    return struct.pack("<BBBHHBHHHHBB", 0, 0, 2, 0, 0, 0, 0, 0, w, h, 24, 0) + b"\0" * 16


FORGERS: dict[str, Callable[[int, int], bytes]] = {
    "png": _forge_png, "gif": _forge_gif, "bmp": _forge_bmp, "tif": _forge_tiff, "webp": _forge_webp,
    "psd": _forge_psd, "ico": _forge_ico, "jpg": _forge_jpeg, "ppm": _forge_ppm, "tga": _forge_tga,
}


@pytest.mark.filterwarnings("ignore:Image was not the expected size")  # the ICO directory says 256x256
@pytest.mark.parametrize("suffix", FORGERS)
def test_forged_headers_are_real_files_when_small(tmp_path: Path, suffix: str) -> None:
    """The forgers write what Pillow identifies as that format (so the bomb cases test the format)."""
    path = tmp_path / f"small.{suffix}"
    path.write_bytes(FORGERS[suffix](4, 4))
    with Image.open(path) as im:
        assert im.format in {"PNG", "GIF", "BMP", "TIFF", "WEBP", "PSD", "ICO", "JPEG", "PPM", "TGA"}
        assert suffix in {"ico"} or im.size == (4, 4)


# ------------------------------------------------------------------------------------------------
# colour modes


def _palette(mode: str) -> Image.Image:
    im = Image.new(mode, (W, H), (1, 255) if mode == "PA" else 1)
    im.putpalette([0, 0, 0, 10, 20, 30] + [0] * (256 * 3 - 6))
    return im


# (mode, how to make it, file format or None for an in-memory PIL image, expected RGB in [0, 1] or
#  None to compare with Pillow's own convert("RGB") of the image read back)
MODE_CASES: list[tuple[str, Callable[[], Image.Image], str | None, tuple[float, float, float] | None]] = [
    ("1", lambda: Image.new("1", (W, H), 1), "png", (1.0, 1.0, 1.0)),
    ("L", lambda: Image.new("L", (W, H), 77), "png", (77 / 255,) * 3),
    ("LA", lambda: Image.new("LA", (W, H), (77, 255)), "png", (77 / 255,) * 3),
    ("P", lambda: _palette("P"), "png", (10 / 255, 20 / 255, 30 / 255)),
    ("PA", lambda: _palette("PA"), "tif", (10 / 255, 20 / 255, 30 / 255)),
    ("RGB", lambda: Image.new("RGB", (W, H), (10, 20, 30)), "png", (10 / 255, 20 / 255, 30 / 255)),
    ("RGBA", lambda: Image.new("RGBA", (W, H), (10, 20, 30, 255)), "png", (10 / 255, 20 / 255, 30 / 255)),
    ("CMYK", lambda: Image.new("CMYK", (W, H), (255, 0, 0, 0)), "tif", (0.0, 1.0, 1.0)),
    ("CMYK", lambda: Image.new("CMYK", (W, H), (255, 0, 0, 0)), "jpg", None),
    ("I", lambda: Image.new("I", (W, H), 13107), "tif", (0.2, 0.2, 0.2)),
    ("I;16", lambda: Image.new("I;16", (W, H), 13107), "png", (0.2, 0.2, 0.2)),
    ("I;16", lambda: Image.new("I;16", (W, H), 13107), "tif", (0.2, 0.2, 0.2)),
    ("F", lambda: Image.new("F", (W, H), 0.25), "tif", (0.25, 0.25, 0.25)),
    ("YCbCr", lambda: Image.new("YCbCr", (W, H), (120, 90, 160)), "tif", None),
    ("LAB", lambda: Image.new("LAB", (W, H), (136, 208, 195)), "tif", None),
    ("HSV", lambda: Image.new("HSV", (W, H), (85, 255, 255)), None, (0.0, 1.0, 0.0)),
    ("La", lambda: Image.new("La", (W, H), (77, 255)), None, (77 / 255,) * 3),
    ("RGBa", lambda: Image.new("RGBa", (W, H), (10, 20, 30, 255)), None, (10 / 255, 20 / 255, 30 / 255)),
    ("RGBX", lambda: Image.new("RGBX", (W, H), (10, 20, 30, 0)), None, (10 / 255, 20 / 255, 30 / 255)),
]


@pytest.mark.parametrize(
    ("mode", "make", "fmt", "expected"), MODE_CASES, ids=[f"{m}-{f or 'memory'}" for m, _, f, _ in MODE_CASES]
)
def test_mode_decodes_to_float_rgb(
    tmp_path: Path, mode: str, make: Callable[[], Image.Image], fmt: str | None,
    expected: tuple[float, float, float] | None,
) -> None:
    source: Any = make()
    if fmt is not None:
        path = tmp_path / f"m.{fmt}"
        source.save(path)
        with Image.open(path) as back:
            assert back.mode == mode  # the file really carries this mode
            if expected is None:  # Pillow's own conversion is the reference
                expected = tuple(np.asarray(back.convert("RGB"), dtype=np.float32)[0, 0] / 255)
        source = path
    assert expected is not None
    out = load_image(source)
    assert out.shape == (1, 3, H, W) and out.dtype == torch.float32 and out.is_contiguous()
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    want = torch.tensor(expected, dtype=torch.float32).view(1, 3, 1, 1)
    torch.testing.assert_close(out, want.expand_as(out), atol=3 / 255, rtol=0)


@pytest.mark.parametrize("value", [255.0, -1.0, float("inf")])
def test_mode_f_out_of_range_is_refused(tmp_path: Path, value: float) -> None:
    arr = np.full((H, W), 0.5, dtype=np.float32)
    arr[1, 1] = value
    path = tmp_path / "float.tif"
    Image.fromarray(arr, mode="F").save(path)
    message = _refused(path)
    assert "[0, 1]" in message


# ------------------------------------------------------------------------------------------------
# EXIF orientation (PNG is covered in test_io_image.py)

_STORE = {  # the transpose that, undone by orientation N, gives the upright image
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}
_QUADRANTS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]  # TL, TR, BL, BR


def _quadrants() -> Image.Image:
    """16x8 landscape, one flat colour per quadrant (flat blocks survive JPEG)."""
    im = Image.new("RGB", (16, 8))
    for i, colour in enumerate(_QUADRANTS):
        x, y = (i % 2) * 8, (i // 2) * 4
        im.paste(colour, (x, y, x + 8, y + 4))
    return im


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["jpg", "webp", "tif"])
def test_exif_orientation_is_applied(tmp_path: Path, fmt: str, orientation: int) -> None:
    upright = _quadrants()
    stored = upright if orientation == 1 else upright.transpose(_STORE[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    options = {"jpg": {"quality": 100, "subsampling": 0}, "webp": {"lossless": True}, "tif": {}}[fmt]
    path = tmp_path / f"o{orientation}.{fmt}"
    stored.save(path, exif=exif.tobytes(), **options)
    out = load_image(path)
    assert out.shape == (1, 3, 8, 16)
    for i, colour in enumerate(_QUADRANTS):
        y, x = (i // 2) * 4 + 2, (i % 2) * 8 + 4  # the centre of each quadrant
        got = out[0, :, y - 1:y + 1, x - 2:x + 2].mean(dim=(1, 2))
        assert torch.allclose(got, torch.tensor(colour) / 255, atol=0.05), (i, got)


# ------------------------------------------------------------------------------------------------
# truncation: format x offset


TRUNCATE_FORMATS = {"png": {}, "jpg": {"quality": 90}, "gif": {}, "webp": {"lossless": True}, "tif": {}, "bmp": {}}
CUTS = ["0 bytes", "header only", "10%", "50%", "90%"]


def _header_length(data: bytes, fmt: str) -> int:
    """Bytes before the first pixel data."""
    if fmt == "jpg":
        return data.index(b"\xff\xda")  # start of scan
    if fmt == "webp":
        return 12 + 8 + 5  # RIFF header, VP8L chunk header, VP8L signature and size
    with Image.open(io.BytesIO(data)) as im:
        return im.tile[0][2]


@pytest.mark.parametrize("cut", CUTS)
@pytest.mark.parametrize("fmt", TRUNCATE_FORMATS)
def test_truncated_file_is_refused(tmp_path: Path, fmt: str, cut: str) -> None:
    data = _encode(_noise(), {"jpg": "JPEG", "tif": "TIFF"}.get(fmt, fmt.upper()), **TRUNCATE_FORMATS[fmt])
    if cut == "0 bytes":
        size = 0
    elif cut == "header only":
        size = _header_length(data, fmt)
        assert 0 < size < len(data) // 2
    else:
        size = len(data) * int(cut[:-1]) // 100
    path = tmp_path / f"cut_{cut.replace(' ', '_').replace('%', 'pc')}.{fmt}"
    path.write_bytes(data[:size])
    message = _refused(path)
    assert "empty" in message if size == 0 else "again" in message  # says what to do


# ------------------------------------------------------------------------------------------------
# header bombs: format x claimed size


BOMB_SIZES = {"over-cap": (9000, 9000), "over-pillow": (16000, 16000)}  # 81 M: over our 64 M; 256 M: over 2 x 89 M


@pytest.mark.parametrize("size", BOMB_SIZES)
@pytest.mark.parametrize("fmt", FORGERS)
def test_header_bomb_is_refused_before_decoding(tmp_path: Path, forbid_decode: None, fmt: str, size: str) -> None:
    w, h = BOMB_SIZES[size]
    path = tmp_path / f"bomb.{fmt}"
    path.write_bytes(FORGERS[fmt](w, h))
    assert path.stat().st_size < 1024
    message = _refused(path, ImageTooLargeError)
    assert f"{w * h:,}" in message and "64,000,000" in message
    assert f"{MAX_PIXELS_ENV}={w * h}" in message and f"max_pixels={w * h}" in message


@pytest.mark.parametrize("fmt", [f for f in FORGERS if f != "webp"])  # libwebp decodes inside open
def test_header_bomb_advice_is_true(
    tmp_path: Path, forbid_decode: None, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    """Setting the variable to the value the message suggests lets the header through, even above
    twice Pillow's own limit: what stops it then is the (forbidden) decode, not a size check."""
    path = tmp_path / f"bomb.{fmt}"
    path.write_bytes(FORGERS[fmt](*BOMB_SIZES["over-pillow"]))
    message = _refused(path, ImageTooLargeError)
    suggested = re.search(rf"{MAX_PIXELS_ENV}=(\d+)", message)
    assert suggested is not None
    monkeypatch.setenv(MAX_PIXELS_ENV, suggested.group(1))
    with pytest.raises(PixelsDecoded):
        load_image(path)


# ------------------------------------------------------------------------------------------------
# Pillow's own limit follows ours


def test_raising_the_variable_allows_what_pillow_would_refuse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reported bug in miniature: Pillow's guard (here 1000 pixels, so it raises above 2000)
    used to refuse a 3600-pixel image whatever IMPASTO_MAX_PIXELS said."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    path = tmp_path / "sixty.png"
    Image.new("RGB", (60, 60), (1, 2, 3)).save(path)
    monkeypatch.setenv(MAX_PIXELS_ENV, "2000")
    message = _refused(path, ImageTooLargeError)
    assert f"{MAX_PIXELS_ENV}=3600" in message
    assert Image.MAX_IMAGE_PIXELS == 1000  # restored after a refusal
    monkeypatch.setenv(MAX_PIXELS_ENV, "3600")
    assert load_image(path).shape == (1, 3, 60, 60)
    assert load_image(path, max_pixels=5000).shape == (1, 3, 60, 60)
    assert Image.MAX_IMAGE_PIXELS == 1000  # restored after a success


def test_concurrent_loads_with_different_caps(tmp_path: Path) -> None:
    """Pillow's limit is process-wide; loads in threads with different caps each get their own."""
    import threading

    path = tmp_path / "small.png"
    Image.new("RGB", (W, H), (1, 2, 3)).save(path)
    limit = Image.MAX_IMAGE_PIXELS
    outcomes: list[str] = []

    def worker(cap: int) -> None:
        for _ in range(20):
            try:
                load_image(path, max_pixels=cap)
                outcomes.append("ok" if cap >= W * H else "wrong")
            except ImageTooLargeError:
                outcomes.append("refused" if cap < W * H else "wrong")

    threads = [threading.Thread(target=worker, args=(cap,)) for cap in (10, 10**6, 10**10, W * H)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert len(outcomes) == 80 and "wrong" not in outcomes and outcomes.count("refused") == 20
    assert Image.MAX_IMAGE_PIXELS == limit


def test_cap_is_read_at_call_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "small.png"
    Image.new("RGB", (20, 20)).save(path)
    monkeypatch.setenv(MAX_PIXELS_ENV, "399")
    _refused(path, ImageTooLargeError)
    monkeypatch.setenv(MAX_PIXELS_ENV, "400")
    assert load_image(path).shape == (1, 3, 20, 20)


# ------------------------------------------------------------------------------------------------
# extreme aspect ratios (minimum sizes are the methods' business; io only decodes)


@pytest.mark.parametrize("size", [(1, 1), (1, 500), (500, 1), (400, 20), (20, 400)], ids=str)
@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_extreme_aspect_ratio_loads(tmp_path: Path, fmt: str, size: tuple[int, int]) -> None:
    w, h = size
    path = tmp_path / f"thin.{fmt}"
    Image.new("RGB", (w, h), (200, 100, 50)).save(path)
    out = load_image(path)
    assert out.shape == (1, 3, h, w)
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([200, 100, 50]) / 255, atol=4 / 255)


# ------------------------------------------------------------------------------------------------
# non-regular files: refused before open(), so nothing blocks


def _fifo(tmp_path: Path) -> Path:
    path = tmp_path / "pipe.png"
    os.mkfifo(path)
    return path


def _socket(tmp_path: Path) -> Path:
    path = tmp_path / "sock.png"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.close()  # the socket file stays
    return path


def _symlink_to_fifo(tmp_path: Path) -> Path:
    link = tmp_path / "link.png"
    link.symlink_to(_fifo(tmp_path))
    return link


def _dangling_symlink(tmp_path: Path) -> Path:
    link = tmp_path / "dangling.png"
    link.symlink_to(tmp_path / "gone.png")
    return link


def _directory(tmp_path: Path) -> Path:
    path = tmp_path / "folder.png"
    path.mkdir()
    return path


NON_REGULAR: dict[str, tuple[Callable[[Path], Path], str]] = {
    "fifo": (_fifo, "named pipe"),
    "symlink-to-fifo": (_symlink_to_fifo, "named pipe"),
    "socket": (_socket, "socket"),
    "directory": (_directory, "directory"),
    "dev-zero": (lambda _: Path("/dev/zero"), "character device"),
    "dangling-symlink": (_dangling_symlink, "no such file"),
}


@needs_fifo
@pytest.mark.parametrize("loader", [load_image, load_image_with_alpha, count_frames, read_recipe],
                         ids=lambda f: f.__name__)
@pytest.mark.parametrize("kind", NON_REGULAR)
def test_non_regular_file_is_refused_without_blocking(
    tmp_path: Path, kind: str, loader: Callable[[Path], Any]
) -> None:
    make, expected = NON_REGULAR[kind]
    if kind == "socket" and len(str(tmp_path)) > 90:
        pytest.skip("path too long for an AF_UNIX socket")
    path = make(tmp_path)
    if not os.path.lexists(path):
        pytest.skip(f"{path} does not exist here")
    with _deadline(10):
        message = _refused(path, load=loader)
    assert expected in message


@needs_fifo
def test_iter_frames_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    path = _fifo(tmp_path)
    with _deadline(10):
        _refused(path, load=lambda p: list(iter_frames(p)))


# ------------------------------------------------------------------------------------------------
# files that are not what their name says


def _mp4() -> bytes:
    """The start of an MP4: an ftyp box, then media data."""
    ftyp = struct.pack(">I", 32) + b"ftypisom" + struct.pack(">I", 512) + b"isomiso2avc1mp41"
    return ftyp + struct.pack(">I", 8) + b"free" + struct.pack(">I", 1032) + b"mdat" + bytes(range(256)) * 4


RENAMED: dict[str, tuple[bytes | Callable[[], bytes], str]] = {
    "mp4.gif": (_mp4, "ffmpeg"),
    "mp4.png": (_mp4, "video"),
    "webm.jpg": (b"\x1aE\xdf\xa3\x9fB\x86\x81\x01" + b"\0" * 200, "video"),
    "avi.png": (b"RIFF" + struct.pack("<I", 200) + b"AVI LIST" + b"\0" * 200, "video"),
    "pdf.png": (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", "PDF"),
    "zip.jpg": (b"PK\x03\x04" + b"\0" * 100, "ZIP"),
    "html.jpg": (b"<!DOCTYPE html><html><body>404 Not Found</body></html>\n", "not a recognised image"),
    "text.webp": (b"just some notes\n" * 10, "not a recognised image"),
    "random.tif": (bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8)), "not a recognised"),
}


@pytest.mark.parametrize("name", RENAMED)
def test_renamed_non_image_is_refused(tmp_path: Path, name: str) -> None:
    content, expected = RENAMED[name]
    path = tmp_path / name
    path.write_bytes(content() if callable(content) else content)
    message = _refused(path)
    assert expected in message
    assert "PNG, JPEG" in message  # says what would have worked


@pytest.mark.parametrize(("real", "named"), [("PNG", "jpg"), ("JPEG", "png"), ("GIF", "webp"), ("WEBP", "tif")])
def test_renamed_real_image_loads(tmp_path: Path, real: str, named: str) -> None:
    path = tmp_path / f"misnamed.{named}"
    path.write_bytes(_encode(Image.new("RGB", (W, H), (0, 0, 255)), real))
    out = load_image(path)
    assert out.shape == (1, 3, H, W)
    assert torch.allclose(out[0, :, 3, 3], torch.tensor([0.0, 0.0, 1.0]), atol=0.05)


# ------------------------------------------------------------------------------------------------
# multi-frame files (the GIF path of stylize-video)


def _animated_gif(path: Path) -> list[Image.Image]:
    frames = [Image.new("RGB", (W, H), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    frames[1].paste((255, 255, 255), (0, 0, 4, 3))
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=40, loop=0)
    return frames


def test_iter_frames_matches_per_frame_load(tmp_path: Path) -> None:
    path = tmp_path / "anim.gif"
    _animated_gif(path)
    assert count_frames(path) == 3
    frames = list(iter_frames(path))
    with Image.open(path) as im:  # what stylize-video did before: convert each frame, then load it
        reference = [load_image(f.convert("RGBA")) for f in ImageSequence.Iterator(im)]
    assert len(frames) == 3
    for got, want in zip(frames, reference):
        assert got.shape == (1, 3, H, W) and got.dtype == torch.float32
        assert torch.equal(got, want)
    assert torch.allclose(frames[2][0, :, 5, 5], torch.tensor([0.0, 0.0, 1.0]))


def test_iter_frames_of_still_image(tmp_path: Path) -> None:
    path = tmp_path / "still.png"
    Image.new("RGB", (W, H), (0, 255, 0)).save(path)
    assert count_frames(path) == 1
    [frame] = list(iter_frames(path))
    assert torch.equal(frame, load_image(path))


def _gif_growing_frame(w: int, h: int) -> bytes:
    """A 2x2 two-frame GIF whose second frame's descriptor claims ``w x h`` (Pillow grows the canvas
    to fit it when it reaches that frame; the first frame is fine)."""
    one = _encode(Image.new("L", (2, 2), 0), "GIF")
    with Image.open(io.BytesIO(one)) as im:
        start = im.tile[0][2] - 1  # the LZW minimum code size byte, then the data sub-blocks
    pixels = one[start:-1]  # up to the trailer
    screen = b"GIF89a" + struct.pack("<HHBBB", 2, 2, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
    return (screen + b"," + struct.pack("<HHHHB", 0, 0, 2, 2, 0) + pixels
            + b"," + struct.pack("<HHHHB", 0, 0, w, h, 0) + pixels + b";")


MULTI_FRAME_BAD: dict[str, tuple[Callable[[], bytes], type[InvalidImageError]]] = {
    "mp4.gif": (_mp4, InvalidImageError),
    "screen-bomb.gif": (lambda: _forge_gif(65535, 65535), ImageTooLargeError),
    "81-megapixel.gif": (lambda: _forge_gif(9000, 9000), ImageTooLargeError),
    "frame-bomb.gif": (lambda: _gif_growing_frame(9000, 9000), ImageTooLargeError),
    "truncated.gif": (lambda: _encode(_noise(), "GIF")[:600], InvalidImageError),
}


@pytest.mark.parametrize("name", MULTI_FRAME_BAD)
def test_iter_frames_refuses_bad_files(tmp_path: Path, name: str) -> None:
    make, error = MULTI_FRAME_BAD[name]
    path = tmp_path / name
    path.write_bytes(make())
    message = _refused(path, error, load=lambda p: list(iter_frames(p)))
    if name == "frame-bomb.gif":
        assert "frame 2" in message
    else:
        _refused(path, error, load=count_frames)


def test_iter_frames_checks_the_cap_before_decoding(tmp_path: Path, forbid_decode: None) -> None:
    path = tmp_path / "big.gif"
    path.write_bytes(_forge_gif(9000, 9000))
    _refused(path, ImageTooLargeError, load=lambda p: next(iter_frames(p)))


# ------------------------------------------------------------------------------------------------
# whatever a plugin raises leaves as InvalidImageError


@pytest.mark.parametrize(
    "raised", [RecursionError("maximum recursion depth exceeded"), KeyError("tile"), ZeroDivisionError(),
               MemoryError(), struct.error("unpack requires a buffer"), AssertionError()],
    ids=lambda e: type(e).__name__,
)
def test_any_decoder_exception_becomes_invalid_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, raised: BaseException
) -> None:
    path = tmp_path / "weird.png"
    Image.new("RGB", (W, H)).save(path)

    def broken(self: object) -> None:
        raise raised

    monkeypatch.setattr(ImageFile.ImageFile, "load", broken)
    before = _sha(path)
    with pytest.raises(InvalidImageError) as info:
        load_image(path)
    assert path.name in str(info.value)
    assert info.value.__cause__ is raised  # kept for --debug
    assert _sha(path) == before


# ------------------------------------------------------------------------------------------------
# the command line: one line naming the file, no traceback, nothing written

FAST = ["--encoder", "tiny", "--size", "40", "--scale-iterations", "3,3", "--precision", "fp32", "-q"]


def _cli_case(tmp_path: Path, kind: str) -> Path:
    if kind == "mp4.gif":
        path = tmp_path / "clip.gif"
        path.write_bytes(_mp4())
    elif kind == "header-bomb.gif":
        path = tmp_path / "bomb.gif"
        path.write_bytes(_forge_gif(65535, 65535))
    elif kind == "81-megapixel.gif":
        path = tmp_path / "huge.gif"
        path.write_bytes(_forge_gif(9000, 9000))
    elif kind == "truncated.png":
        path = tmp_path / "cut.png"
        path.write_bytes(_encode(_noise(), "PNG")[:700])
    elif kind == "empty.jpg":
        path = tmp_path / "empty.jpg"
        path.write_bytes(b"")
    elif kind == "fifo":
        path = _fifo(tmp_path)
    else:
        raise AssertionError(kind)
    return path


@pytest.mark.parametrize("role", ["content", "style"])
@pytest.mark.parametrize("kind", ["mp4.gif", "header-bomb.gif", "81-megapixel.gif", "truncated.png", "empty.jpg", "fifo"])
def test_cli_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, role: str) -> None:
    from impasto.cli import main

    if kind == "fifo" and not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    good = tmp_path / "good.png"
    Image.new("RGB", (32, 32), (90, 120, 150)).save(good)
    bad = _cli_case(tmp_path, kind)
    before = _sha(bad) if bad.is_file() else None
    content, style = (bad, good) if role == "content" else (good, bad)
    out = tmp_path / "out.png"
    with _deadline(10):
        code = main(["stylize", str(content), str(style), "-o", str(out), *FAST])
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code != 0
    assert len(lines) == 1, captured.err
    assert bad.name in lines[0]
    assert "Traceback" not in captured.err + captured.out
    assert "internal error" not in captured.err
    assert not out.exists()
    assert {p.name for p in tmp_path.iterdir()} == {bad.name, good.name}
    if before is not None:
        assert _sha(bad) == before


@pytest.mark.parametrize("kind", ["mp4.gif", "header-bomb.gif", "81-megapixel.gif"])
def test_cli_stylize_video_bad_gif_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str) -> None:
    """The GIF failures as reported: 'internal error' (mp4, header bomb) and an 81 MP GIF decoded in
    full before the cap, reported as 'PIL image' (io/video.py now reads GIFs through count_frames and
    iter_frames). The bad file fails before any model is loaded."""
    from impasto.cli import main

    bad = _cli_case(tmp_path, kind)
    before = _sha(bad)
    out = tmp_path / "frames"
    with _deadline(10):
        code = main(["stylize-video", str(bad), "-o", str(out), "-q"])
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code != 0
    assert len(lines) == 1, captured.err
    assert bad.name in lines[0] and "PIL image" not in lines[0]
    assert "Traceback" not in captured.err + captured.out and "internal error" not in captured.err
    assert not out.exists()
    assert _sha(bad) == before
