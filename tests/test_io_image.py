"""Tests for impasto.io.image: decoding every colour mode, orientation, ICC, caps, errors, saving."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms, ImageFile, ImageOps

from impasto.errors import ImageTooLargeError, InvalidImageError, InvalidOptionError
from impasto.io import image as io_image
from impasto.io.image import (
    DEFAULT_MAX_PIXELS,
    SAVE_SUFFIXES,
    load_image,
    load_image_with_alpha,
    read_recipe,
    save_image,
    to_pil,
)

W, H = 8, 6


def _check_rgb(t: torch.Tensor, h: int = H, w: int = W) -> None:
    assert isinstance(t, torch.Tensor)
    assert t.shape == (1, 3, h, w)
    assert t.dtype == torch.float32
    assert t.is_contiguous()
    assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0


def _expected(rgb: tuple[float, float, float]) -> torch.Tensor:
    return torch.tensor(rgb, dtype=torch.float32).view(1, 3, 1, 1).expand(1, 3, H, W)


@pytest.fixture(autouse=True)
def _no_env_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IMPASTO_MAX_PIXELS", raising=False)


def test_error_hierarchy() -> None:
    assert issubclass(InvalidImageError, ValueError)
    assert issubclass(ImageTooLargeError, InvalidImageError)
    assert issubclass(InvalidOptionError, ValueError)
    assert DEFAULT_MAX_PIXELS == 64_000_000


# ------------------------------------------------------------------------------------------------
# colour modes


def test_mode_rgb(tmp_path: Path) -> None:
    Image.new("RGB", (W, H), (10, 20, 30)).save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    _check_rgb(out)
    torch.testing.assert_close(out, _expected((10 / 255, 20 / 255, 30 / 255)))


def test_mode_l(tmp_path: Path) -> None:
    Image.new("L", (W, H), 77).save(tmp_path / "a.png")
    out = load_image(str(tmp_path / "a.png"))
    _check_rgb(out)
    torch.testing.assert_close(out, _expected((77 / 255,) * 3))


def test_mode_la_composites_on_white(tmp_path: Path) -> None:
    Image.new("LA", (W, H), (100, 128)).save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    _check_rgb(out)
    a = 128 / 255
    v = 100 / 255 * a + (1 - a)
    torch.testing.assert_close(out, _expected((v, v, v)))


def test_mode_rgba_composites_on_white_exactly(tmp_path: Path) -> None:
    Image.new("RGBA", (W, H), (200, 100, 0, 128)).save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    _check_rgb(out)
    a = 128 / 255
    expected = tuple(c / 255 * a + (1 - a) for c in (200, 100, 0))
    torch.testing.assert_close(out, _expected(expected), atol=1e-6, rtol=0)
    # fully transparent pixels become white, opaque ones keep their colour
    im = Image.new("RGBA", (W, H), (0, 0, 0, 0))
    im.putpixel((0, 0), (10, 20, 30, 255))
    im.save(tmp_path / "b.png")
    out = load_image(tmp_path / "b.png")
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([10 / 255, 20 / 255, 30 / 255]))
    assert torch.all(out[0, :, 5, 5] == 1.0)


def _palette_image() -> Image.Image:
    im = Image.new("P", (W, H), 0)
    palette = [255, 0, 0, 0, 128, 255] + [0] * (256 * 3 - 6)
    im.putpalette(palette)
    for x in range(W // 2):
        for y in range(H):
            im.putpixel((x, y), 1)
    return im


def test_mode_p(tmp_path: Path) -> None:
    _palette_image().save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    _check_rgb(out)
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([0.0, 128 / 255, 1.0]))
    assert torch.allclose(out[0, :, 0, W - 1], torch.tensor([1.0, 0.0, 0.0]))
    _, alpha = load_image_with_alpha(tmp_path / "a.png")
    assert alpha is None


def test_mode_p_with_transparency(tmp_path: Path) -> None:
    _palette_image().save(tmp_path / "a.png", transparency=0)  # index 0 (red) is transparent
    out = load_image(tmp_path / "a.png")
    _check_rgb(out)
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([0.0, 128 / 255, 1.0]))
    assert torch.all(out[0, :, 0, W - 1] == 1.0)  # transparent -> white
    rgb, alpha = load_image_with_alpha(tmp_path / "a.png")
    assert alpha is not None and alpha.shape == (1, 1, H, W)
    assert float(alpha[0, 0, 0, 0]) == 1.0 and float(alpha[0, 0, 0, W - 1]) == 0.0
    # straight colour keeps the palette colour under the transparent pixel
    assert torch.allclose(rgb[0, :, 0, W - 1], torch.tensor([1.0, 0.0, 0.0]))


def test_mode_cmyk(tmp_path: Path) -> None:
    im = Image.new("CMYK", (W, H), (0, 0, 0, 0))
    im.putpixel((0, 0), (255, 0, 0, 0))  # pure cyan
    im.putpixel((1, 0), (0, 0, 0, 255))  # black
    im.save(tmp_path / "a.tif")
    out = load_image(tmp_path / "a.tif")
    _check_rgb(out)
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([0.0, 1.0, 1.0]))
    assert torch.allclose(out[0, :, 0, 1], torch.tensor([0.0, 0.0, 0.0]))
    assert torch.all(out[0, :, 3, 3] == 1.0)


def test_mode_i16_png_keeps_16_bit_precision(tmp_path: Path) -> None:
    values = np.array([0, 1, 257, 258, 257 * 100, 257 * 100 + 1, 65534, 65535], dtype=np.uint16)
    arr = np.tile(values, (H, 1))
    im = Image.fromarray(arr)
    assert im.mode.startswith("I;16")
    im.save(tmp_path / "a.png")
    assert Image.open(tmp_path / "a.png").mode.startswith("I;16")
    out = load_image(tmp_path / "a.png")
    _check_rgb(out)
    expected = torch.from_numpy(values.astype(np.float64) / 65535)
    for c in range(3):
        assert torch.allclose(out[0, c, 0].double(), expected, atol=1e-7, rtol=0)
    # neighbouring 16-bit codes stay distinguishable (an 8-bit decode would merge them)
    assert out[0, 0, 0, 3] > out[0, 0, 0, 2]
    assert out[0, 0, 0, 5] > out[0, 0, 0, 4]


def test_mode_1bit(tmp_path: Path) -> None:
    im = Image.new("1", (W, H), 0)
    im.putpixel((2, 1), 1)
    im.save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    _check_rgb(out)
    assert torch.all(out[0, :, 1, 2] == 1.0)
    assert float(out.sum()) == 3.0


def test_mode_i(tmp_path: Path) -> None:
    arr = np.zeros((H, W), dtype=np.int32)
    arr[0, 0], arr[0, 1], arr[0, 2] = 65535, 1000, 70000
    Image.fromarray(arr, mode="I").save(tmp_path / "a.tif")
    assert Image.open(tmp_path / "a.tif").mode == "I"
    out = load_image(tmp_path / "a.tif")
    _check_rgb(out)
    assert float(out[0, 0, 0, 0]) == 1.0
    assert abs(float(out[0, 1, 0, 1]) - 1000 / 65535) < 1e-7
    assert float(out[0, 2, 0, 2]) == 1.0  # clipped
    assert float(out[0, 0, 3, 3]) == 0.0


def test_mode_f(tmp_path: Path) -> None:
    arr = np.full((H, W), 0.25, dtype=np.float32)
    arr[0, 0] = 0.75
    Image.fromarray(arr, mode="F").save(tmp_path / "a.tif")
    assert Image.open(tmp_path / "a.tif").mode == "F"
    out = load_image(tmp_path / "a.tif")
    _check_rgb(out)
    assert torch.all(out[0, :, 0, 0] == 0.75)
    assert torch.all(out[0, :, 1, 1] == 0.25)


def test_mode_f_nan_rejected(tmp_path: Path) -> None:
    arr = np.zeros((H, W), dtype=np.float32)
    arr[1, 1] = np.nan
    Image.fromarray(arr, mode="F").save(tmp_path / "nan.tif")
    with pytest.raises(InvalidImageError, match="nan.tif.*NaN"):
        load_image(tmp_path / "nan.tif")


# ------------------------------------------------------------------------------------------------
# EXIF orientation

# What ImageOps.exif_transpose applies for each orientation, and its inverse (used to store).
_INVERSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def _upright() -> Image.Image:
    """Landscape, asymmetric: red 2x2 top-left, green pixel top-right, rest blue."""
    im = Image.new("RGB", (W, H), (0, 0, 255))
    for x in range(2):
        for y in range(2):
            im.putpixel((x, y), (255, 0, 0))
    im.putpixel((W - 1, 0), (0, 255, 0))
    return im


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation(tmp_path: Path, orientation: int) -> None:
    upright = _upright()
    stored = upright if orientation == 1 else upright.transpose(_INVERSE[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(tmp_path / "o.png", exif=exif.tobytes())
    out = load_image(tmp_path / "o.png")
    _check_rgb(out)  # landscape again, whatever was stored
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([1.0, 0.0, 0.0]))  # marker top-left
    assert torch.allclose(out[0, :, 0, W - 1], torch.tensor([0.0, 1.0, 0.0]))
    expected = torch.from_numpy(np.asarray(upright, dtype=np.float32) / 255).permute(2, 0, 1)
    assert torch.equal(out[0], expected)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_16bit_tiff(tmp_path: Path, orientation: int) -> None:
    """The 16-bit TIFF path orients with numpy; it must agree with Pillow's exif_transpose."""
    upright = np.asarray(_upright()).astype(np.uint16) * 257
    stored = upright
    if orientation != 1:
        pil = Image.fromarray(np.asarray(_upright())).transpose(_INVERSE[orientation])
        stored = np.asarray(pil).astype(np.uint16) * 257
    (tmp_path / "o.tif").write_bytes(
        io_image._encode_tiff16(stored, None, orientation=orientation)
    )
    assert Image.open(tmp_path / "o.tif").getexif().get(0x0112, 1) == orientation
    out = load_image(tmp_path / "o.tif")
    _check_rgb(out)
    expected = torch.from_numpy(upright.astype(np.float32) / 65535).permute(2, 0, 1)
    assert torch.equal(out[0], expected)


def test_orient_array_matches_pillow() -> None:
    base = _upright()
    arr = np.asarray(base)
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        ref = np.asarray(ImageOps.exif_transpose(Image.open(_png_bytes(base, exif.tobytes()))))
        assert np.array_equal(io_image._orient_array(arr, orientation), ref), orientation


def _png_bytes(im: Image.Image, exif: bytes):
    import io

    buf = io.BytesIO()
    im.save(buf, format="PNG", exif=exif)
    buf.seek(0)
    return buf


# ------------------------------------------------------------------------------------------------
# ICC profiles


def _srgb_bytes() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_icc_srgb_profile_loads(tmp_path: Path, suffix: str) -> None:
    im = Image.new("RGB", (W, H), (200, 120, 40))
    im.save(tmp_path / f"icc{suffix}", icc_profile=_srgb_bytes(), quality=100)
    assert Image.open(tmp_path / f"icc{suffix}").info.get("icc_profile")
    out = load_image(tmp_path / f"icc{suffix}")
    _check_rgb(out)
    assert torch.allclose(out, _expected((200 / 255, 120 / 255, 40 / 255)), atol=3 / 255)


def test_icc_conversion_is_applied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = ImageCms.profileToProfile

    def spy(im, *args, **kwargs):
        calls.append(im.mode)
        return real(im, *args, **kwargs)

    monkeypatch.setattr(ImageCms, "profileToProfile", spy)
    Image.new("RGB", (W, H), (1, 2, 3)).save(tmp_path / "a.png", icc_profile=_srgb_bytes())
    load_image(tmp_path / "a.png")
    assert calls == ["RGB"]


def test_icc_broken_profile_falls_back_to_raw_values(tmp_path: Path) -> None:
    Image.new("RGB", (W, H), (10, 20, 30)).save(tmp_path / "a.png", icc_profile=b"not a profile")
    out = load_image(tmp_path / "a.png")
    torch.testing.assert_close(out, _expected((10 / 255, 20 / 255, 30 / 255)))


# ------------------------------------------------------------------------------------------------
# in-memory sources


def test_pil_source() -> None:
    out = load_image(Image.new("RGBA", (W, H), (255, 0, 0, 0)))
    _check_rgb(out)
    assert torch.all(out == 1.0)
    out = load_image(Image.new("L", (W, H), 51))
    torch.testing.assert_close(out, _expected((0.2, 0.2, 0.2)))


@pytest.mark.parametrize(
    ("arr", "value"),
    [
        (np.full((H, W), 51, np.uint8), 0.2),
        (np.full((H, W, 1), 51, np.uint8), 0.2),
        (np.full((H, W, 3), 51, np.uint8), 0.2),
        (np.full((H, W, 3), 13107, np.uint16), 0.2),
        (np.full((H, W, 3), 0.2, np.float32), 0.2),
        (np.full((H, W, 3), 0.2, np.float64), 0.2),
        (np.ones((H, W), bool), 1.0),
        (np.zeros((H, W, 3), bool), 0.0),
    ],
)
def test_numpy_sources(arr: np.ndarray, value: float) -> None:
    out = load_image(arr)
    _check_rgb(out)
    torch.testing.assert_close(out, _expected((value,) * 3))


def test_numpy_rgba_composites_and_keeps_alpha() -> None:
    arr = np.zeros((H, W, 4), np.uint8)
    arr[..., 0] = 255
    arr[..., 3] = 0
    arr[0, 0, 3] = 255
    out = load_image(arr)
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.all(out[0, :, 1, 1] == 1.0)
    rgb, alpha = load_image_with_alpha(arr)
    assert alpha is not None and alpha.shape == (1, 1, H, W)
    assert torch.all(rgb[0, 0] == 1.0) and torch.all(rgb[0, 1:] == 0.0)


@pytest.mark.parametrize(
    "t",
    [
        torch.full((3, H, W), 0.2),
        torch.full((1, 3, H, W), 0.2),
        torch.full((1, H, W), 0.2),
        torch.full((H, W), 0.2),
        torch.full((H, W), 0.2, dtype=torch.float64),
        torch.full((3, H, W), 51, dtype=torch.uint8),
    ],
)
def test_tensor_sources(t: torch.Tensor) -> None:
    out = load_image(t)
    _check_rgb(out)
    torch.testing.assert_close(out, _expected((0.2, 0.2, 0.2)))


def test_tensor_source_is_not_aliased() -> None:
    t = torch.rand(1, 3, H, W, requires_grad=True)
    out = load_image(t)
    assert not out.requires_grad
    out.zero_()
    assert float(t.detach().sum()) > 0


@pytest.mark.parametrize(
    ("source", "pattern"),
    [
        (np.zeros((H, W, 2), np.uint8), r"expected|must have shape.*\(6, 8, 2\)"),
        (np.zeros((2, H, W, 3), np.uint8), r"must have shape.*\(2, 6, 8, 3\)"),
        (np.zeros((H,), np.uint8), r"must have shape"),
        (np.zeros((H, W, 3), np.int32), r"uint8, uint16, bool or float.*int32"),
        (np.full((H, W, 3), 255.0), r"\[0, 1\]"),
        (np.full((H, W, 3), np.nan, np.float32), r"NaN"),
        (torch.zeros(2, 3, H, W), r"must have shape.*\(2, 3, 6, 8\)"),
        (torch.zeros(5, H, W), r"must have shape.*\(5, 6, 8\)"),
        (torch.zeros(3, H, W, dtype=torch.int64), r"int64"),
        (torch.full((3, H, W), float("nan")), r"NaN"),
        ([[0.0, 1.0]], r"path.*PIL.*numpy.*tensor.*list"),
    ],
)
def test_bad_in_memory_sources(source: object, pattern: str) -> None:
    with pytest.raises(InvalidImageError, match=pattern):
        load_image(source)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------
# pixel cap / decompression bombs


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims ``width x height`` grayscale but whose data is a few bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


class PixelsDecoded(BaseException):
    """Raised by _forbid_decode; a BaseException so that load_image's error translation (which
    turns any Exception from Pillow into InvalidImageError) cannot hide it."""


def _forbid_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any pixel decode of a file fail loudly, so a cap test proves nothing was decoded."""

    def boom(self: object) -> None:
        raise PixelsDecoded("pixel data was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", boom)


def test_max_pixels_checked_before_decode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Image.new("RGB", (20, 20)).save(tmp_path / "small.png")
    _forbid_decode(monkeypatch)
    with pytest.raises(ImageTooLargeError) as info:
        load_image(tmp_path / "small.png", max_pixels=100)
    message = str(info.value)
    # Pillow's own guard now enforces the cap inside Image.open, and it reports the pixel count
    # (400), not the width and height.
    assert "small.png" in message and "400" in message and "100" in message
    assert "max_pixels" in message and "IMPASTO_MAX_PIXELS" in message


def test_max_pixels_allows_at_cap(tmp_path: Path) -> None:
    Image.new("RGB", (20, 20)).save(tmp_path / "small.png")
    assert load_image(tmp_path / "small.png", max_pixels=400).shape == (1, 3, 20, 20)
    with pytest.raises(ImageTooLargeError):
        load_image(np.zeros((20, 20, 3), np.uint8), max_pixels=399)


def test_env_var_overrides_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Image.new("RGB", (20, 20)).save(tmp_path / "small.png")
    monkeypatch.setenv("IMPASTO_MAX_PIXELS", "100")
    with pytest.raises(ImageTooLargeError, match="IMPASTO_MAX_PIXELS"):
        load_image(tmp_path / "small.png")
    assert load_image(tmp_path / "small.png", max_pixels=1000).shape == (1, 3, 20, 20)
    monkeypatch.setenv("IMPASTO_MAX_PIXELS", "lots")
    with pytest.raises(InvalidOptionError, match="IMPASTO_MAX_PIXELS"):
        load_image(tmp_path / "small.png")


@pytest.mark.parametrize("bad", [0, -5, 1.5, True])
def test_bad_max_pixels(tmp_path: Path, bad: object) -> None:
    with pytest.raises(InvalidOptionError, match="max_pixels"):
        load_image(np.zeros((2, 2), np.uint8), max_pixels=bad)  # type: ignore[arg-type]


def test_big_header_over_default_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _forbid_decode(monkeypatch)
    path = tmp_path / "bomb.png"
    _png_header_only(path, 9000, 9000)  # 81 M pixels: over our 64 M default, under Pillow's
    assert path.stat().st_size < 200
    with pytest.raises(ImageTooLargeError, match=r"bomb\.png.*81,000,000.*64,000,000"):
        load_image(path)


def test_pillow_decompression_bomb_maps_to_too_large(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _forbid_decode(monkeypatch)
    path = tmp_path / "huge.png"
    _png_header_only(path, 30000, 30000)  # beyond 2x Pillow's default limit
    with pytest.raises(ImageTooLargeError, match=r"huge\.png.*900,000,000.*IMPASTO_MAX_PIXELS=900000000"):
        load_image(path)
    # A cap raised past Pillow's own limit is honoured: the header passes and decoding starts
    # (this used to be refused by Pillow's guard whatever the cap said).
    with pytest.raises(PixelsDecoded):
        load_image(path, max_pixels=10**12)


# ------------------------------------------------------------------------------------------------
# broken files


def _noise(seed: int = 0, size: tuple[int, int] = (64, 48)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_truncated_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"cut{suffix}"
    _noise().save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidImageError, match=rf"cannot decode .*cut\{suffix}"):
        load_image(path)


def test_text_file_named_png(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    with pytest.raises(InvalidImageError, match=r"notes\.png.*not a recognised image"):
        load_image(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidImageError, match=r"no such file: .*ghost\.png"):
        load_image(tmp_path / "ghost.png")


def test_directory_is_not_an_image(tmp_path: Path) -> None:
    with pytest.raises(InvalidImageError, match="directory"):
        load_image(tmp_path)


# ------------------------------------------------------------------------------------------------
# saving


def test_png_round_trip_exact(tmp_path: Path) -> None:
    codes = torch.arange(3 * H * W, dtype=torch.float64).remainder(256).view(1, 3, H, W)
    image = (codes / 255).float()
    result = save_image(image, tmp_path / "out.png")
    assert result == tmp_path / "out.png" and isinstance(result, Path)
    assert Image.open(result).mode == "RGB"
    assert torch.equal(load_image(result), image)


def test_save_clamps_and_accepts_3d(tmp_path: Path) -> None:
    image = torch.full((3, H, W), 2.0)
    image[0] = -1.0
    save_image(image, tmp_path / "c.png")
    out = load_image(tmp_path / "c.png")
    assert torch.all(out[0, 0] == 0.0) and torch.all(out[0, 1:] == 1.0)


def test_jpeg_round_trip_close(tmp_path: Path) -> None:
    y = torch.linspace(0, 1, H).view(1, 1, H, 1)
    x = torch.linspace(0, 1, W).view(1, 1, 1, W)
    image = torch.cat([y.expand(1, 1, H, W), x.expand(1, 1, H, W), (x * y)], dim=1)
    for suffix in (".jpg", ".jpeg"):
        path = save_image(image, tmp_path / f"out{suffix}", alpha=torch.ones(1, 1, H, W))
        assert Image.open(path).format == "JPEG" and Image.open(path).mode == "RGB"
        out = load_image(path)
        assert (out - image).abs().mean() < 0.03
        assert (out - image).abs().max() < 0.15


@pytest.mark.parametrize("suffix", [".tif", ".tiff", ".TIF"])
def test_tiff_16bit_round_trip(tmp_path: Path, suffix: str) -> None:
    image = torch.rand(1, 3, H, W, generator=torch.Generator().manual_seed(0))
    path = save_image(image, tmp_path / f"out{suffix}")
    assert Image.open(path).format == "TIFF"
    out = load_image(path)
    _check_rgb(out)
    assert float((out - image).abs().max()) < 1 / 30000
    # codes one 16-bit step apart survive (8-bit storage would merge them)
    fine = torch.full((1, 3, H, W), 1000 / 65535)
    fine[..., 0, 0] = 1001 / 65535
    out = load_image(save_image(fine, tmp_path / f"fine{suffix}"))
    assert out[0, 0, 0, 0] > out[0, 0, 1, 1]


def test_tiff_is_readable_by_pillow(tmp_path: Path) -> None:
    image = torch.zeros(1, 3, H, W)
    image[:, 0] = 1.0
    path = save_image(image, tmp_path / "red.tif")
    pil = Image.open(path)
    assert pil.size == (W, H)
    assert np.asarray(pil.convert("RGB"))[0, 0].tolist() == [255, 0, 0]


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_alpha_round_trip(tmp_path: Path, suffix: str) -> None:
    g = torch.Generator().manual_seed(1)
    image = torch.randint(0, 256, (1, 3, H, W), generator=g).float() / 255
    alpha = torch.randint(0, 256, (1, 1, H, W), generator=g).float() / 255
    path = save_image(image, tmp_path / f"a{suffix}", alpha=alpha)
    assert Image.open(path).mode == "RGBA"
    rgb, got = load_image_with_alpha(path)
    _check_rgb(rgb)
    assert got is not None and got.shape == (1, 1, H, W) and got.dtype == torch.float32
    tol = 1e-6 if suffix == ".png" else 1 / 30000
    assert float((rgb - image).abs().max()) < tol  # straight colour, not composited
    assert float((got - alpha).abs().max()) < tol
    composited = load_image(path)
    assert torch.allclose(composited, image * alpha + (1 - alpha), atol=1e-4)


def test_load_with_alpha_without_transparency(tmp_path: Path) -> None:
    save_image(torch.rand(1, 3, H, W), tmp_path / "o.png")
    rgb, alpha = load_image_with_alpha(tmp_path / "o.png")
    _check_rgb(rgb)
    assert alpha is None


def test_bad_alpha_shape(tmp_path: Path) -> None:
    with pytest.raises(InvalidImageError, match="alpha must have shape"):
        save_image(torch.rand(1, 3, H, W), tmp_path / "a.png", alpha=torch.ones(1, 1, H + 1, W))


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".jpeg", ".tif"])
def test_recipe_round_trip(tmp_path: Path, suffix: str) -> None:
    recipe = {"method": "gatys", "steps": 300, "weights": [1.0, 1e-3], "note": "café ☕", "ok": True}
    path = save_image(torch.rand(1, 3, H, W), tmp_path / f"r{suffix}", recipe=recipe)
    assert read_recipe(path) == recipe
    _check_rgb(load_image(path))


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif"])
def test_read_recipe_absent(tmp_path: Path, suffix: str) -> None:
    path = save_image(torch.rand(1, 3, H, W), tmp_path / f"plain{suffix}")
    with pytest.raises(InvalidImageError, match=rf"plain\{suffix}' holds no impasto recipe"):
        read_recipe(path)


def test_read_recipe_missing_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(InvalidImageError, match="no such file"):
        read_recipe(tmp_path / "nope.png")
    Image.new("RGB", (W, H)).save(tmp_path / "foreign.png")
    with pytest.raises(InvalidImageError, match="holds no impasto recipe"):
        read_recipe(tmp_path / "foreign.png")


def test_recipe_must_be_json(tmp_path: Path) -> None:
    with pytest.raises(InvalidOptionError, match="JSON"):
        save_image(torch.rand(1, 3, H, W), tmp_path / "r.png", recipe={"f": object()})
    with pytest.raises(InvalidOptionError, match="dict"):
        save_image(torch.rand(1, 3, H, W), tmp_path / "r.png", recipe=[1, 2])  # type: ignore[arg-type]
    assert not (tmp_path / "r.png").exists()


def test_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(InvalidOptionError) as info:
        save_image(torch.rand(1, 3, H, W), tmp_path / "out.bmp")
    message = str(info.value)
    assert "'.bmp'" in message
    for suffix in SAVE_SUFFIXES:
        assert suffix in message
    with pytest.raises(InvalidOptionError, match="none"):
        save_image(torch.rand(1, 3, H, W), tmp_path / "noext")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("quality", [0, 101, 9.5])
def test_bad_quality(tmp_path: Path, quality: object) -> None:
    with pytest.raises(InvalidOptionError, match="quality"):
        save_image(torch.rand(1, 3, H, W), tmp_path / "q.jpg", quality=quality)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "image",
    [torch.rand(2, 3, H, W), torch.rand(1, 4, H, W), torch.zeros(3, H, W, dtype=torch.uint8),
     torch.full((3, H, W), float("nan"))],
)
def test_save_bad_image(tmp_path: Path, image: torch.Tensor) -> None:
    with pytest.raises(InvalidImageError):
        save_image(image, tmp_path / "bad.png")
    assert os.listdir(tmp_path) == []


def test_save_creates_parent_dirs(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "out.png"
    assert save_image(torch.rand(1, 3, H, W), str(target)) == target
    assert target.is_file()
    assert os.listdir(target.parent) == ["out.png"]
    assert target.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_atomic_save_failure_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    target = tmp_path / f"keep{suffix}"
    target.write_bytes(b"original")

    def broken_save(self: Image.Image, fp, *args, **kwargs) -> None:
        fp.write(b"partial data")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_image(torch.rand(1, 3, H, W), target)
    assert target.read_bytes() == b"original"
    assert os.listdir(tmp_path) == [target.name]
    with pytest.raises(OSError, match="disk full"):
        save_image(torch.rand(1, 3, H, W), tmp_path / f"new{suffix}")
    assert os.listdir(tmp_path) == [target.name]


def test_atomic_save_failure_tiff(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "keep.tif"
    target.write_bytes(b"original")

    def broken(*args: object, **kwargs: object) -> bytes:
        raise RuntimeError("encoder crashed")

    monkeypatch.setattr(io_image, "_encode_tiff16", broken)
    with pytest.raises(RuntimeError, match="encoder crashed"):
        save_image(torch.rand(1, 3, H, W), target)
    assert target.read_bytes() == b"original"
    assert os.listdir(tmp_path) == ["keep.tif"]


def test_save_replaces_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "x.png"
    target.write_bytes(b"old")
    save_image(torch.zeros(1, 3, H, W), target)
    assert torch.all(load_image(target) == 0.0)
    assert os.listdir(tmp_path) == ["x.png"]


def test_to_pil() -> None:
    image = torch.zeros(1, 3, H, W)
    image[:, 1] = 1.0
    pil = to_pil(image)
    assert pil.mode == "RGB" and pil.size == (W, H)
    assert np.asarray(pil)[2, 3].tolist() == [0, 255, 0]
    assert to_pil(image[0]).size == (W, H)
    with pytest.raises(InvalidImageError, match=r"\(1, 3, H, W\)"):
        to_pil(torch.zeros(1, 1, H, W))
