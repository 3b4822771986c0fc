"""Training images: every decodable image under some folders, kept in memory at a bounded size."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from impasto.errors import InvalidImageError, InvalidOptionError
from impasto.io.image import load_image
from impasto.ops.geometry import resize, size_for_long_side

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def list_images(folders: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Image files under ``folders`` (recursive, sorted for reproducibility)."""
    found: list[Path] = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise InvalidOptionError(f"content folder {folder} does not exist or is not a folder")
        found += [p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    return sorted(set(found))


def load_images(paths: Sequence[Path], max_side: int, min_side: int) -> tuple[list[Tensor], list[str]]:
    """Decode ``paths``, shrinking each so its long side is at most ``max_side``.

    Images whose short side would be below ``min_side`` are enlarged to it. Undecodable files are
    skipped and reported in the second list (``"path: reason"``).
    """
    images, skipped = [], []
    for path in paths:
        try:
            image = load_image(path)
        except InvalidImageError as exc:
            skipped.append(f"{path}: {exc}")
            continue
        h, w = image.shape[-2:]
        if max(h, w) > max_side:
            image = resize(image, size_for_long_side(h, w, max_side))
        h, w = image.shape[-2:]
        if min(h, w) < min_side:
            scale = min_side / min(h, w)
            image = resize(image, (max(min_side, round(h * scale)), max(min_side, round(w * scale))))
        images.append(image)
    return images, skipped


def random_crops(images: Sequence[Tensor], batch: int, crop: int, generator: torch.Generator,
                 scale_range: tuple[float, float] = (0.6, 1.0), flip: bool = True) -> Tensor:
    """A (batch, 3, crop, crop) tensor of random scaled crops (and horizontal flips) from ``images``."""
    out = []
    for _ in range(batch):
        image = images[int(torch.randint(len(images), (1,), generator=generator))]
        h, w = image.shape[-2:]
        lo, hi = scale_range
        frac = lo + (hi - lo) * float(torch.rand(1, generator=generator))
        side = max(8, min(h, w, round(min(h, w) * frac)))
        y = int(torch.randint(h - side + 1, (1,), generator=generator))
        x = int(torch.randint(w - side + 1, (1,), generator=generator))
        patch = resize(image[..., y:y + side, x:x + side], (crop, crop))
        if flip and float(torch.rand(1, generator=generator)) < 0.5:
            patch = patch.flip(-1)
        out.append(patch)
    return torch.cat(out)
