"""Universal style transfer by whitening and colouring (WCT, Li et al. 2017), multi-level.

At each level (coarse to fine by default: relu5_1 -> relu1_1, the paper's order) the current
image is encoded, its features are whitened with their own covariance and coloured with the
style's covariance and mean (``ops.stats.whiten_colour``: float64, eigenvalue floor), mixed with
the content features by ``alpha``, and decoded; the next level starts from that image. Decoders
only invert the encoder, so any style works. Several styles blend by weight; masks match regions
(``features.transfer``).

Differs from the paper: the relu5_1 decoder upsamples by max-unpooling with the pooling indices of
the image it decodes (``unpool_levels``), as PhotoWCT's decoders do (Li et al. 2018); the other
levels upsample by nearest, as in the paper. Inverting relu5_1 is the hard step (Li et al.'s own
code suggests starting at relu4_1 to keep more content). Our CPU-trained nearest relu5_1 decoder
reconstructed held-out photos at 14-18 dB, and a cascade started from it lost the subject: the
parrots of kodim23 and the face of chelsea were gone at alpha 1. The unpooling one reconstructs
them at 20-23 dB and keeps both subjects at alpha 1. Pass ``unpool_levels=()`` with a nearest
relu5_1 decoder of your own for the paper's decoder, or ``levels`` from relu4_1 to skip relu5_1.

``refine`` N continues from the cascade's result with N steps of the optimisation method, as AdaIN's
``refine`` does (``methods.optimization.Refine``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from torch import Tensor

from impasto.errors import InvalidOptionError, suggest
from impasto.events import Callback, CancelToken
from impasto.features.decoder import LEVELS
from impasto.features.transfer import BYTES_PER_PIXEL, LevelTransfer, check_sizes, prepare_levels, style_list, validate_common, validate_levels
from impasto.methods.optimization import REFINE_HELP, REFINE_STYLE_WEIGHT, REFINE_STYLE_WEIGHT_HELP, Refine, refine_bytes
from impasto.options import Range, SEED, SIDE, UNIT, WEIGHT, option
from impasto.result import Result


@dataclass(frozen=True)
class Options:
    """Every default of multi-level WCT."""

    levels: tuple[str, ...] = option(("relu5_1", "relu4_1", "relu3_1", "relu2_1", "relu1_1"), "Encoder levels to transfer at (any of relu1_1..relu5_1); run in --order.")
    order: str = option("coarse-to-fine", "coarse-to-fine (deepest level first, the paper's choice) or fine-to-coarse.")
    decoders: tuple[str, ...] = option((), "One decoder per level, in the order of --levels (shipped names or files); empty: the shipped ones.")
    unpool_levels: tuple[str, ...] = option(("relu5_1",), "Levels whose decoder upsamples by max-unpooling with the pooling indices of the image it decodes (keeps its layout); the others upsample by nearest.")
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
    validate_levels(o)
    for level in o.unpool_levels:
        if level not in LEVELS:
            raise InvalidOptionError(f"unpool_levels: unknown level '{level}'; choose from {', '.join(LEVELS)}.{suggest(level, LEVELS)}")


class Prepared:
    """WCT with its decoders loaded and the style features computed once; call it per content image."""

    def __init__(self, styles: Sequence[Tensor], options: Options) -> None:
        self.transfer: LevelTransfer = prepare_levels(styles, options, options.unpool_levels, "wct")
        self.refine = Refine.of(self.transfer.styles, options, self.transfer.encoder, "wct")

    def __call__(self, content: Tensor, *, callback: Callback | None = None, cancel: CancelToken | None = None) -> Result:
        return Refine.result(self.refine, self.transfer, content, callback, cancel)


def prepare(style: Tensor | Sequence[Tensor] | None, options: Options | None = None) -> Prepared:
    """Load the decoders and compute the style features once (for many content images or frames)."""
    options = options or Options()
    styles = style_list(style)
    validate(options, len(styles))
    return Prepared(styles, options)


def run(content: Tensor, style: Tensor | Sequence[Tensor] | None = None, options: Options | None = None, *,
        callback: Callback | None = None, cancel: CancelToken | None = None) -> Result:
    """Stylise ``content`` with one or several style images by multi-level WCT (prepare + one call)."""
    options = options or Options()
    styles = style_list(style)
    validate(options, len(styles))
    check_sizes(content, styles, options, "wct", refine_bytes(BYTES_PER_PIXEL["wct"], options))  # before any weights load
    return prepare(styles, options)(content, callback=callback, cancel=cancel)
