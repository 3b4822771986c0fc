"""Arbitrary style transfer in one pass: AdaIN (Huang & Belongie 2017) with a trained decoder.

Encode content and style with the VGG encoder up to the decoder's level, give the content features the
style's per-channel mean and std (AdaIN), blend with the content features by ``alpha``, and
decode to an image. The decoder only learns to invert the encoder (see
``impasto.training.decoder``), so any style works without training. Several styles blend by
weight; masks restrict each content region to its matching style region (``features.transfer``).

``refine`` N continues from the one-pass result with N steps of the optimisation method
(``methods.optimization.Refine``, same encoder): the decoder alone renders little of a painting's
strokes. Like ``methods.exemplars`` this imports another method, against DESIGN.md's one-way rule,
so that the pass is the optimisation method itself rather than a copy of its loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from impasto.events import Callback, CancelToken
from impasto.features.decoder import Decoder, cascade, check_encoder, load_decoder, shipped_decoder
from impasto.features.precision import to_bf16, use_bf16
from impasto.features.transfer import BYTES_PER_PIXEL, FeatureTransfer, LevelTransfer, check_sizes, style_list, validate_common
from impasto.features.vgg import VGGEncoder, load_encoder
from impasto.methods.optimization import REFINE_HELP, REFINE_STYLE_WEIGHT, REFINE_STYLE_WEIGHT_HELP, Refine, refine_bytes
from impasto.options import Range, SEED, SIDE, UNIT, WEIGHT, option
from impasto.result import Result


DEFAULT_LEVEL = "relu4_1"  # of the shipped decoder, as in the paper


@dataclass(frozen=True)
class Options:
    """Every default of AdaIN transfer."""

    decoder: str = option("auto", "Decoder (shipped name or file from 'impasto train decoder', any level); auto: the shipped relu4_1 decoder.")
    alpha: float = option(1.0, "Strength: 1 full style statistics, 0 the content's own features.", range=UNIT)
    style_blend: tuple[float, ...] | None = option(None, "Interpolation weights, one per style image (default: equal).", range=WEIGHT)
    color: str = option("style", "style (the style's colours) or luminance (keep the content's colours).")
    content_mask: tuple[str, ...] = option((), "Content label map (with --style-mask), or one binary mask per style (region i takes style i).")
    style_mask: tuple[str, ...] = option((), "Style label map(s), one for all styles or one per style: a content region takes the style region of its colour.")
    precision: str = option("auto", "auto (bf16 channels-last where the CPU supports it, several times faster), fp32 or bf16.")
    size: int | None = option(512, "Long side of the output (None: the content's size).", range=SIDE)
    style_size: int | None = option(512, "Long side the style images are scaled to before encoding (None: as given).", range=SIDE)
    refine: int = option(0, REFINE_HELP, range=Range(0, 100_000))
    refine_style_weight: float = option(REFINE_STYLE_WEIGHT, REFINE_STYLE_WEIGHT_HELP, range=WEIGHT)
    seed: int = option(0, "Unused by this deterministic method; kept so every recipe has a seed.", range=SEED)


def validate(o: Options, n_styles: int) -> None:
    validate_common(o, n_styles)


def transfer(encoder: VGGEncoder, decoder: Decoder, content: Tensor, styles: Sequence[Tensor],
             weights: Sequence[float], alpha: float, content_mask: Sequence[Any] = (),
             style_mask: Sequence[Any] = ()) -> Tensor:
    """AdaIN transfer of already-sized images: (1, 3, H, W) in [0, 1] -> (1, 3, H, W) in [0, 1]."""
    change = FeatureTransfer(encoder, [decoder.level], content, styles, weights, alpha, "adain", content_mask, style_mask)
    return cascade(encoder, [decoder], content, change)


class Prepared:
    """AdaIN with its decoder loaded and the style features computed once; call it per content image."""

    def __init__(self, styles: Sequence[Tensor], options: Options) -> None:
        decoder, meta = load_decoder(shipped_decoder(DEFAULT_LEVEL, False) if options.decoder == "auto" else options.decoder)
        encoder = load_encoder(meta.get("encoder", "auto"), [decoder.level])
        check_encoder(encoder, meta)
        if use_bf16(options.precision):
            encoder, decoder = to_bf16(encoder), to_bf16(decoder)
        self.transfer = LevelTransfer(encoder, [decoder], [meta], styles, options, "adain", "adain")
        self.refine = Refine.of(self.transfer.styles, options, encoder, "adain")

    def __call__(self, content: Tensor, *, callback: Callback | None = None, cancel: CancelToken | None = None) -> Result:
        return Refine.result(self.refine, self.transfer, content, callback, cancel)


def prepare(style: Tensor | Sequence[Tensor] | None, options: Options | None = None) -> Prepared:
    """Load the decoder and compute the style features once (for many content images or frames)."""
    options = options or Options()
    styles = style_list(style)
    validate(options, len(styles))
    return Prepared(styles, options)


def run(content: Tensor, style: Tensor | Sequence[Tensor] | None = None, options: Options | None = None, *,
        callback: Callback | None = None, cancel: CancelToken | None = None) -> Result:
    """Stylise ``content`` with one or several style images in one pass (prepare + one call)."""
    options = options or Options()
    styles = style_list(style)
    validate(options, len(styles))
    check_sizes(content, styles, options, "adain", refine_bytes(BYTES_PER_PIXEL["adain"], options))  # before any weights load
    return prepare(styles, options)(content, callback=callback, cancel=cancel)
