"""Spatial control for feature-space transfer: label maps, regions, and per-region statistics transfer.

A label map is an image whose flat colours name regions (PNG; anti-aliased or JPEG edges make
extra labels). Content region ``L`` takes the statistics of style region ``L`` (same colour).
Per-style masks (one binary mask per style) are the other form: region ``i`` takes style ``i``.
Content features are matrices ``(C, M)`` with one label per position ``(M,)``. A region's style targets
keep the style's feature map ``(C, h', w')`` with the positions the region takes from it, so that losses
that compare neighbourhoods (patches) can still see which positions are next to each other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

FeatureTransform = Callable[[Tensor, Tensor], Tensor]  # (content (C, M), style (C, M')) -> (C, M)


class StyleRegion(NamedTuple):
    """What one style gives a region: its feature map, the positions taken from it, the blend weight."""

    feats: Tensor  # (C, h', w')
    where: Tensor | None  # (h' w',) bool, or None: every position
    weight: float
    style: int  # the style's index among the styles given


Region = tuple[Tensor, list[StyleRegion]]  # (content positions (M,) bool, the style targets of those positions)
UNCOVERED = -1  # per-style masks: pixels in no mask keep the content


def colour_codes(mask: Tensor) -> Tensor:
    """A (1, 3, H, W) label image in [0, 1] -> (H, W) int64 codes, one per 8-bit colour."""
    rgb = (mask[0].clamp(0, 1) * 255).round().long()
    return rgb[0] * 65536 + rgb[1] * 256 + rgb[2]


def binary_codes(masks: Sequence[Tensor]) -> Tensor:
    """Per-style masks (1, 3, H, W) each -> (H, W) codes: the index of the last mask covering a pixel
    (mean grey value > 0.5), ``UNCOVERED`` where none does."""
    codes = torch.full(masks[0].shape[-2:], UNCOVERED, dtype=torch.long)
    for i, mask in enumerate(masks):
        codes[mask[0].mean(0) > 0.5] = i
    return codes


def resize_codes(codes: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest-neighbour resize of (H, W) codes (labels never mix)."""
    if tuple(codes.shape) == tuple(size):
        return codes
    return F.interpolate(codes[None, None].double(), size=size, mode="nearest")[0, 0].long()


def selected(target: StyleRegion) -> Tensor:
    """A style target's features at its positions, (C, M')."""
    flat = target.feats.flatten(1)
    return flat if target.where is None else flat[:, target.where]


def label_regions(content_codes: Tensor, styles: Sequence[tuple[Tensor, Tensor | None]],
                  weights: Sequence[float]) -> list[Region]:
    """Regions for label maps: each content label takes, from every style, its positions with the same
    label, or the whole style where that style has no such label (or no label map).

    ``content_codes`` (M,); ``styles`` [(feature map (C, h', w'), codes (h' w',) or None)].
    """
    regions: list[Region] = []
    for label in torch.unique(content_codes).tolist():
        targets = []
        for i, ((feats, codes), weight) in enumerate(zip(styles, weights, strict=True)):
            sel = None if codes is None else codes == label
            targets.append(StyleRegion(feats, None if sel is None or not bool(sel.any()) else sel, weight, i))
        regions.append((content_codes == label, targets))
    return regions


def per_style_regions(content_codes: Tensor, styles: Sequence[Tensor]) -> list[Region]:
    """Regions for per-style masks (``styles``: feature maps (C, h', w')): positions with code ``i`` take
    the whole of style ``i``; uncovered ones none."""
    return [(content_codes == i, [StyleRegion(feats, None, 1.0, i)]) for i, feats in enumerate(styles)]


def transfer_regions(content: Tensor, regions: Sequence[Region], transform: FeatureTransform) -> Tensor:
    """Apply ``transform`` region by region; positions in no region (or with no targets) are unchanged.

    Each region's result is the weight-normalised blend of the transform towards each of its targets.
    Regions with no positions (a label lost when the map was shrunk to the feature size) are skipped.
    """
    def blend(part: Tensor, targets: list[StyleRegion]) -> Tensor:
        total = sum(t.weight for t in targets)
        return sum((t.weight / total) * transform(part, selected(t)) for t in targets)

    if len(regions) == 1 and bool(regions[0][0].all()) and sum(t.weight for t in regions[0][1]) > 0:
        return blend(content, regions[0][1])  # no masks: no gather/scatter copies of the features
    out = content.clone()
    for where, targets in regions:
        if not bool(where.any()) or sum(t.weight for t in targets) <= 0:
            continue
        out[:, where] = blend(content[:, where], targets)
    return out
