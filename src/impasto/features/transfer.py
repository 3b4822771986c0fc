"""Feature-space transfer shared by the one-pass methods (AdaIN, WCT, PhotoWCT).

Holds what these methods have in common: checking their shared options (strength, style blend,
colour mode, masks), sizing the inputs, and ``FeatureTransfer``: the callable that, at one
encoder level, gives the content features the statistics of the (blended, optionally masked)
styles and mixes the result with the content by ``alpha``.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from impasto.errors import InvalidOptionError, suggest
from impasto.events import Callback, CancelToken, Done, Stage
from impasto.features.decoder import cascade, check_encoder, load_decoders, ordered_levels
from impasto.features.precision import input_for, to_bf16, use_bf16
from impasto.features.vgg import VGGEncoder, load_encoder
from impasto.io.image import load_image
from impasto.ops import color as color_ops
from impasto.ops.geometry import resize, size_for_long_side
from impasto.ops.regions import (
    FeatureTransform,
    Region,
    StyleRegion,
    binary_codes,
    colour_codes,
    label_regions,
    per_style_regions,
    resize_codes,
    transfer_regions,
)
from impasto.ops.stats import adain, whiten_colour
from impasto.result import Result
from impasto.validation import check_fields, check_image_side, check_memory

COLOR_MODES = ("style", "luminance")
# Measured peak growth per processed pixel (content + styles) in fp32, with a margin; PhotoWCT
# includes the exact smoothing's sparse system.
BYTES_PER_PIXEL = {"adain": 2200, "wct": 2200, "photowct": 3000}


def adain_matrix(content: Tensor, style: Tensor) -> Tensor:
    """AdaIN of feature matrices (C, M) -> (C, M): each channel takes the style's mean and std."""
    return adain(content[None, :, :, None], style[None, :, :, None])[0, :, :, 0]


def wct_matrix(content: Tensor, style: Tensor) -> Tensor:
    """Whitening-colouring of feature matrices (C, M) -> (C, M) (float64 inside, eigenvalue floor)."""
    return whiten_colour(content, style)


TRANSFORMS: dict[str, FeatureTransform] = {"adain": adain_matrix, "wct": wct_matrix}


def validate_common(o: Any, n_styles: int) -> None:
    """Checks of the options every one-pass method shares: every field's type and range, color, style_blend, masks."""
    check_fields(o)
    if n_styles < 1:
        raise InvalidOptionError("at least one style image is needed")
    if o.color not in COLOR_MODES:
        raise InvalidOptionError(f"color must be one of {', '.join(COLOR_MODES)}, got '{o.color}'.{suggest(o.color, COLOR_MODES)}")
    if o.style_blend is not None and (len(o.style_blend) != n_styles or sum(o.style_blend) <= 0):
        raise InvalidOptionError(f"style_blend needs {n_styles} non-negative weights, got {list(o.style_blend)}")
    mask_mode(len(o.content_mask), len(o.style_mask), n_styles)
    use_bf16(o.precision)  # raises for an unknown precision, or bf16 on a CPU without it


def validate_levels(o: Any) -> None:
    """Checks of the multi-level options (WCT, PhotoWCT): levels, order, one decoder per level."""
    ordered_levels(o.levels, o.order)
    if o.decoders and len(o.decoders) != len(o.levels):
        raise InvalidOptionError(f"give one decoder per level ({len(o.levels)}: {', '.join(o.levels)}), got {len(o.decoders)}")


def mask_mode(n_content: int, n_style: int, n_styles: int) -> str:
    """"none", "labels" (one content label map, style label maps) or "per-style" (one binary mask per style)."""
    if n_content == 0:
        if n_style:
            raise InvalidOptionError("--style-mask needs a --content-mask label map to match its labels against")
        return "none"
    if n_style:
        if n_content != 1 or n_style not in (1, n_styles):
            raise InvalidOptionError(
                f"label maps: give one --content-mask and one --style-mask (for every style) or one per style "
                f"({n_styles}); got {n_content} content and {n_style} style masks")
        return "labels"
    if n_content != n_styles:
        raise InvalidOptionError(
            f"without --style-mask, give one --content-mask per style ({n_styles}), got {n_content}; "
            "or add --style-mask label maps to match regions by colour (repeat the option for each mask: "
            "--content-mask a.png --content-mask b.png; a path after a single one is read as a style)")
    return "per-style"


def style_list(style: Tensor | Sequence[Tensor] | None) -> list[Tensor]:
    """A method's ``style`` argument (None, one image or several) as a list."""
    return [] if style is None else [style] if isinstance(style, Tensor) else list(style)


def sized(image: Tensor, long_side: int | None) -> Tensor:
    return image if long_side is None else resize(image, size_for_long_side(*image.shape[-2:], long_side))


def _sized_hw(image: Tensor, long_side: int | None) -> tuple[int, int]:
    h, w = image.shape[-2:]
    return (h, w) if long_side is None else size_for_long_side(h, w, long_side)


def check_sizes(content: Tensor, styles: Sequence[Tensor], o: Any, method: str, bytes_per_pixel: float) -> None:
    """Before any weights load: every image, as sized by ``o.size`` / ``o.style_size``, is large enough
    for the encoder, and the run fits in memory (else a message with the largest size that fits)."""
    h, w = _sized_hw(content, o.size)
    check_image_side(h, w, "content image", method)
    pixels = [h * w]
    for i, s in enumerate(styles):
        sh, sw = _sized_hw(s, o.style_size)
        check_image_side(sh, sw, f"style image {i + 1}", method, hint="crop the style image less thin, or raise --style-size")
        pixels.append(sh * sw)
    check_memory(f"--method {method}", "--size", o.size or max(h, w), pixels, bytes_per_pixel)


def blend_weights(style_blend: Sequence[float] | None, n_styles: int) -> list[float]:
    blend = torch.tensor(style_blend or [1.0] * n_styles, dtype=torch.float64)
    return (blend / blend.sum()).tolist()


def _load_mask(path: str | os.PathLike[str] | Tensor, size: tuple[int, int], what: str) -> Tensor:
    mask = path if isinstance(path, Tensor) else load_image(path)
    h, w = mask.shape[-2:]
    if abs(h / w - size[0] / size[1]) > 0.02 * size[0] / size[1]:
        raise InvalidOptionError(f"{what} {path if not isinstance(path, Tensor) else ''} is {w}x{h}, "
                                 f"which does not have the aspect ratio of its image ({size[1]}x{size[0]})")
    return torch.nn.functional.interpolate(mask, size=size, mode="nearest")


def finish(out: Tensor, content: Tensor, color: str) -> Tensor:
    """Clamp and apply the colour mode (luminance: keep the content's colours)."""
    out = out.clamp(0, 1)
    if color == "luminance":
        out = color_ops.combine_luminance_chroma(out, content)
    return out.float().contiguous()


class RegionMaps:
    """Masks (paths or (1, 3, H, W) tensors) loaded once as label codes, following ``mask_mode``: a content
    label map with style label maps, or one binary content mask per style; style masks are matched to each
    style's size. ``regions`` gives, at any feature size, the content positions and their style targets."""

    def __init__(self, size: tuple[int, int], styles: Sequence[Tensor], content_mask: Sequence[Any] = (),
                 style_mask: Sequence[Any] = ()) -> None:
        self.size = size
        self.mode = mask_mode(len(content_mask), len(style_mask), len(styles))
        self.content_codes: Tensor | None = None
        self.style_codes: list[Tensor | None] = [None] * len(styles)
        if self.mode == "labels":
            self.content_codes = colour_codes(_load_mask(content_mask[0], size, "content mask"))
            masks = list(style_mask) * (len(styles) if len(style_mask) == 1 else 1)
            self.style_codes = [colour_codes(_load_mask(m, tuple(s.shape[-2:]), "style mask"))
                                for m, s in zip(masks, styles, strict=True)]
        elif self.mode == "per-style":
            self.content_codes = binary_codes([_load_mask(m, size, "content mask") for m in content_mask])

    def regions(self, style_feats: Sequence[Tensor], weights: Sequence[float], size: tuple[int, int]) -> list[Region]:
        """Regions for content features of ``size`` (h, w); ``style_feats`` one (1, C, h', w') map per style."""
        feats = [f[0] for f in style_feats]
        if self.content_codes is None:
            return [(torch.ones(size[0] * size[1], dtype=torch.bool), [StyleRegion(f, None, w, i) for i, (f, w) in enumerate(zip(feats, weights, strict=True))])]
        codes = resize_codes(self.content_codes, size).flatten()
        if self.mode == "per-style":
            return per_style_regions(codes, feats)
        style_codes = [None if c is None else resize_codes(c, tuple(f.shape[-2:])).flatten()
                       for c, f in zip(self.style_codes, style_feats, strict=True)]
        return label_regions(codes, list(zip(feats, style_codes, strict=True)), weights)


class FeatureTransfer:
    """``(level, content features (1, C, h, w)) -> features`` with the styles' statistics, for ``cascade``.

    Style features for every level are computed once here. ``kind``: "adain" or "wct". Masks
    (paths or (1, 3, H, W) tensors) follow ``mask_mode``; style masks are matched to each style's size.
    """

    def __init__(self, encoder: VGGEncoder, levels: Sequence[str], content: Tensor, styles: Sequence[Tensor],
                 weights: Sequence[float], alpha: float, kind: str = "wct",
                 content_mask: Sequence[Any] = (), style_mask: Sequence[Any] = ()) -> None:
        if kind not in TRANSFORMS:
            raise InvalidOptionError(f"transform must be one of {', '.join(TRANSFORMS)}, got '{kind}'")
        self.transform, self.alpha, self.weights = TRANSFORMS[kind], alpha, list(weights)
        enc = encoder.with_layers(levels)
        with torch.inference_mode():  # float32 statistics whatever precision the encoder runs in
            self.style_feats = [{k: v.float() for k, v in enc(input_for(encoder, s)).items()} for s in styles]
        self.styles = list(styles)
        self.maps = RegionMaps(tuple(content.shape[-2:]), styles, content_mask, style_mask)

    def for_size(self, size: tuple[int, int], content_mask: Sequence[Any] = (), style_mask: Sequence[Any] = ()) -> FeatureTransfer:
        """The same transfer (style features reused) for content images of another (h, w)."""
        other = copy.copy(self)
        other.maps = RegionMaps(size, self.styles, content_mask, style_mask)
        return other

    def regions(self, level: str, size: tuple[int, int]) -> list[Region]:
        """The regions at one level: content positions and their style targets (``ops.regions.StyleRegion``)."""
        return self.maps.regions([f[level] for f in self.style_feats], self.weights, size)

    def __call__(self, level: str, content: Tensor) -> Tensor:
        n, c, h, w = content.shape
        fc = content[0].flatten(1).float()
        target = transfer_regions(fc, self.regions(level, (h, w)), self.transform)
        mixed = target if self.alpha == 1 else self.alpha * target + (1 - self.alpha) * fc  # two passes saved at 1
        return mixed.reshape(n, c, h, w).to(content.dtype)


class LevelTransfer:
    """One-pass transfer prepared once: encoder and decoders loaded, style features computed; each call
    stylises one content image (a photo, or frame after frame of a video) without reloading anything.

    ``decoders`` run in the given order (each one level); ``kind``: "adain" or "wct". ``o`` holds the
    shared one-pass options (alpha, style_blend, masks, size, style_size). Masks are loaded for the
    first content size and again only when a later content image has another size.
    """

    def __init__(self, encoder: VGGEncoder, decoders: Sequence[Any], metas: list[dict[str, Any]],
                 styles: Sequence[Tensor], o: Any, stage: str, kind: str) -> None:
        self.encoder, self.decoders, self.metas, self.o, self.stage, self.kind = encoder, list(decoders), metas, o, stage, kind
        self.levels = [d.level for d in self.decoders]
        self.styles = [sized(s, o.style_size) for s in styles]
        self.weights = blend_weights(o.style_blend, len(styles))
        self._change: FeatureTransfer | None = None

    def change_for(self, image: Tensor) -> FeatureTransfer:
        """The feature transform for content of ``image``'s size (style features computed on first use)."""
        size = tuple(image.shape[-2:])
        if self._change is None:
            self._change = FeatureTransfer(self.encoder, self.levels, image, self.styles, self.weights, self.o.alpha,
                                           self.kind, self.o.content_mask, self.o.style_mask)
        elif tuple(self._change.maps.size) != size:
            self._change = self._change.for_size(size, self.o.content_mask, self.o.style_mask)
        return self._change

    def __call__(self, content: Tensor, callback: Callback | None = None,
                 cancel: CancelToken | None = None) -> tuple[Tensor, Tensor]:
        """(sized content, stylised image before the colour mode) for (1, 3, H, W) ``content`` in [0, 1]."""
        check_sizes(content, self.styles, replace_style_size(self.o), self.stage, BYTES_PER_PIXEL[self.stage])
        image = sized(content, self.o.size)
        change = self.change_for(image)

        def on_level(level: str) -> None:
            if cancel is not None:
                cancel.raise_if_cancelled()
            if callback:
                callback(Stage(name=f"{self.stage} {level}", size=tuple(image.shape[-2:])))

        return image, cascade(self.encoder, self.decoders, image, change, on_level)

    @property
    def weights_name(self) -> str:
        """The decoders' names joined by + (what a recipe records)."""
        return "+".join(m.get("name", m["path"]) for m in self.metas)

    def result(self, content: Tensor, callback: Callback | None = None, cancel: CancelToken | None = None,
               post: Callable[[Tensor, Tensor], tuple[Tensor, dict[str, float]]] | None = None, post_steps: int = 0) -> Result:
        """A method's Result for ``content``: the cascade, then ``post(stylised, sized content)`` (e.g. smoothing:
        -> (image, figures for the result's losses)), then the colour mode; ``Done`` is sent at the end.
        ``post_steps``: steps ``post`` takes (an optimisation pass), counted with the decoders' in the result."""
        started = time.perf_counter()
        image, out = self(content, callback, cancel)
        figures: dict[str, float] = {}
        if post is not None:
            out, figures = post(out, image)
        out = finish(out, image, self.o.color)
        seconds = time.perf_counter() - started
        if callback:
            callback(Done(seconds=seconds, steps=len(self.decoders) + post_steps))
        return Result(image=out, weights=self.weights_name, weights_sha256=self.metas[0]["sha256"], steps=len(self.decoders) + post_steps,
                      seconds=seconds, final_losses=figures)


def replace_style_size(o: Any) -> Any:
    """``o`` as seen by ``check_sizes`` once the styles are already sized (style_size None)."""
    return replace(o, style_size=None)


def prepare_levels(styles: Sequence[Tensor], o: Any, unpool_levels: Collection[str], stage: str) -> LevelTransfer:
    """Multi-level transfer for WCT and PhotoWCT from their options ``o`` (levels, order, decoders, alpha,
    style_blend, masks, size, style_size, precision): loads the decoders and encoder once."""
    by_level = dict(zip(o.levels, o.decoders, strict=True)) if o.decoders else {}
    levels = ordered_levels(o.levels, o.order)
    decoders, metas = load_decoders(levels, [by_level[lv] for lv in levels] if by_level else [], unpool_levels)
    encoder = load_encoder(metas[0].get("encoder", "auto"), levels)
    for meta in metas:
        check_encoder(encoder, meta)
    if use_bf16(o.precision):
        encoder = to_bf16(encoder)
        decoders = [to_bf16(d) for d in decoders]
    return LevelTransfer(encoder, decoders, metas, styles, o, stage, "wct")
