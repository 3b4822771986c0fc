"""Resizing and multi-scale schedules."""

from __future__ import annotations

import math

import torch

import torch.nn.functional as F
from torch import Tensor


def size_for_long_side(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(H, W) scaled so that max(H, W) == long_side, aspect kept, each side >= 1."""
    scale = long_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize(image: Tensor, size: tuple[int, int]) -> Tensor:
    """Bicubic resize to (H, W) with antialiasing when shrinking; clamped to [0, 1]."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    shrink = size[0] < image.shape[-2] or size[1] < image.shape[-1]
    out = F.interpolate(image, size=size, mode="bicubic", align_corners=False, antialias=shrink)
    return out.clamp(0, 1)


def resize_long_side(image: Tensor, long_side: int) -> Tensor:
    """Resize so the longer side equals ``long_side``."""
    return resize(image, size_for_long_side(image.shape[-2], image.shape[-1], long_side))


def scale_schedule(long_side: int, min_side: int, factor: float = math.sqrt(2), max_scales: int | None = None) -> list[int]:
    """Coarse-to-fine long-side sizes ending at ``long_side``, each ``factor`` apart, none below ``min_side``.

    Always ends: a factor too close to 1 to shrink the rounded size stops the schedule.

    >>> scale_schedule(512, 256)
    [256, 362, 512]
    """
    sizes = [long_side]
    while True:
        nxt = round(sizes[-1] / factor)
        if nxt < max(min_side, 1) or nxt >= sizes[-1] or (max_scales is not None and len(sizes) >= max_scales):
            break
        sizes.append(nxt)
    return sizes[::-1]


def contact_sheet(rows: list[list[Tensor]], height: int = 256, gap: int = 8) -> Tensor:
    """Grid of images (each row e.g. content | style | result), every image scaled to ``height``.

    Returns (1, 3, H, W) on a white background; rows are left-aligned.
    """
    scaled = [[resize(im, (height, max(1, round(im.shape[-1] * height / im.shape[-2])))) for im in row] for row in rows]
    width = max(sum(im.shape[-1] for im in row) + gap * (len(row) + 1) for row in scaled)
    sheet = torch.ones(1, 3, len(scaled) * (height + gap) + gap, width)
    for r, row in enumerate(scaled):
        x, y = gap, gap + r * (height + gap)
        for im in row:
            sheet[:, :, y : y + height, x : x + im.shape[-1]] = im
            x += im.shape[-1] + gap
    return sheet
