"""Tiny PNG line plots (loss curves) drawn with Pillow, so training needs no plotting library."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from PIL import Image, ImageDraw
from torch import Tensor

_COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189))


def save_loss_curve(series: Mapping[str, Sequence[float]], path: str | os.PathLike[str], *,
                    title: str = "training loss", size: tuple[int, int] = (720, 420)) -> Path:
    """Plot each series (log-scale y, x = step) into a PNG; returns the path. Non-positive values are skipped."""
    width, height = size
    left, right, top, bottom = 70, 20, 30, 40
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    values = [v for s in series.values() for v in s if v > 0 and math.isfinite(v)]
    n = max((len(s) for s in series.values()), default=0)
    draw.text((left, 8), title, fill="black")
    draw.rectangle((left, top, width - right, height - bottom), outline="black")
    if values and n > 1:
        lo, hi = math.log10(min(values)), math.log10(max(values))
        hi = hi if hi > lo else lo + 1

        def xy(i: int, v: float) -> tuple[float, float]:
            x = left + (width - left - right) * i / (n - 1)
            y = height - bottom - (height - top - bottom) * (math.log10(v) - lo) / (hi - lo)
            return x, y

        for k in range(5):  # y grid labels
            val = lo + (hi - lo) * k / 4
            _, y = xy(0, 10 ** val)
            draw.line((left, y, width - right, y), fill=(225, 225, 225))
            draw.text((4, y - 6), f"{10 ** val:.3g}", fill="black")
        draw.text((left, height - bottom + 6), "0", fill="black")
        draw.text((width - right - 40, height - bottom + 6), f"{n - 1}", fill="black")
        for c, (name, s) in enumerate(series.items()):
            pts = [xy(i, v) for i, v in enumerate(s) if v > 0 and math.isfinite(v)]
            colour = _COLOURS[c % len(_COLOURS)]
            if len(pts) > 1:
                draw.line(pts, fill=colour, width=2)
            draw.text((width - right - 150, top + 6 + 14 * c), name, fill=colour)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    img.save(tmp)
    os.replace(tmp, path)
    return path


def to_pil(image: Tensor) -> Image.Image:
    """A (1, 3, H, W) tensor in [0, 1] as an 8-bit RGB PIL image."""
    array = (image[0].detach().float().clamp(0, 1).permute(1, 2, 0) * 255).round().byte().numpy()
    return Image.fromarray(array, "RGB")


def labelled_grid(rows: Sequence[Sequence[tuple[Image.Image, str, str]]], height: int = 160) -> Image.Image:
    """Rows of (image, title, subtitle) cells on white, every image scaled to ``height``, text above each."""
    label_h, gap = 34, 8

    def fit(im: Image.Image) -> Image.Image:
        return im.resize((max(1, round(im.width * height / im.height)), height), Image.Resampling.LANCZOS)

    scaled = [[(fit(im), a, b) for im, a, b in row] for row in rows]
    width = max((sum(im.width for im, _, _ in row) + gap * (len(row) + 1) for row in scaled), default=gap)
    out = Image.new("RGB", (width, len(scaled) * (height + label_h + gap) + gap), "white")
    draw = ImageDraw.Draw(out)
    for r, row in enumerate(scaled):
        x, y = gap, gap + r * (height + label_h + gap)
        for im, a, b in row:
            draw.text((x, y), a, fill="black")
            draw.text((x, y + 15), b, fill=(90, 90, 90))
            out.paste(im, (x, y + label_h))
            x += im.width + gap
    return out
