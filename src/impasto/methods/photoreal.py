"""Photorealistic transfer: PhotoWCT plus closed-form smoothing (Li et al. 2018, FastPhotoStyle).

PhotoWCT is multi-level WCT whose decoders upsample by max-unpooling with the encoder's pooling
indices, so edges land where the content's were instead of being smeared by nearest upsampling.
The stylised image is then smoothed with the content's pixel affinities so that similar
neighbouring content pixels get similar colours (``ops.smoothing``):

- ``exact``: ``R = (1 - a)(I - a D^-1/2 W D^-1/2)^-1 Y`` solved by AMG-preconditioned CG (sparse,
  never a dense inverse), with the Gaussian 8-neighbour affinity or the matting affinity;
- ``fast``: a guided filter of the stylised image guided by the content (O(N));
- ``none``: PhotoWCT alone.

Differs from the paper: the default levels are relu2_1 -> relu1_1 (FastPhotoStyle starts at
relu4_1). Deeper levels carry the reference's structure into the result as blotches and smears that the
smoothing does not remove. Blind judges preferred two levels to the earlier default of three
(relu3_1 -> relu1_1) in 20 of 27 judgements on 9 held-out photo pairs
(bench/results/2026-12-03_photowct_levels_heldout_512). Max-unpooling decoders ship up to relu5_1;
pass ``levels=("relu4_1", "relu3_1", "relu2_1", "relu1_1")`` for the paper's choice (more of the
reference's look, more blotches).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from torch import Tensor

from impasto.errors import InvalidOptionError, suggest
from impasto.events import Callback, CancelToken, Stage
from impasto.features.transfer import BYTES_PER_PIXEL, LevelTransfer, check_sizes, prepare_levels, style_list, validate_common, validate_levels
from impasto.ops.smoothing import AFFINITIES, smooth_exact, smooth_fast
from impasto.options import Range, SEED, SIDE, UNIT, WEIGHT, option
from impasto.result import Result

SMOOTHING = ("exact", "fast", "none")


@dataclass(frozen=True)
class Options:
    """Every default of PhotoWCT with smoothing."""

    levels: tuple[str, ...] = option(("relu2_1", "relu1_1"), "Encoder levels to transfer at (any of relu1_1..relu5_1); run in --order.")
    order: str = option("coarse-to-fine", "coarse-to-fine (deepest level first, the paper's choice) or fine-to-coarse.")
    decoders: tuple[str, ...] = option((), "One decoder per level, in the order of --levels (shipped names or files); empty: the shipped ones.")
    alpha: float = option(1.0, "Strength: 1 full style statistics, 0 the content's own features.", range=UNIT)
    style_blend: tuple[float, ...] | None = option(None, "Interpolation weights, one per style image (default: equal).", range=WEIGHT)
    color: str = option("style", "style (the style's colours) or luminance (keep the content's colours).")
    content_mask: tuple[str, ...] = option((), "Content label map (with --style-mask), or one binary mask per style (region i takes style i).")
    style_mask: tuple[str, ...] = option((), "Style label map(s), one for all styles or one per style: a content region takes the style region of its colour.")
    smooth: str = option("exact", "exact (closed-form solve), fast (guided filter) or none.")
    smooth_strength: float = option(0.999, "exact: a in [0, 1); closer to 1 follows the content's edges more and the stylised colours less locally.", range=Range(0, 1, high_open=True))
    affinity: str = option("matting", "exact: matting (Levin et al. 3x3 windows: keeps the photo's texture) or gaussian (8-neighbour, sigma below; faster, flattens texture).")
    sigma: float = option(0.1, "exact, gaussian affinity: colour distance scale (RGB in [0, 1]).", range=Range(0, 10, low_open=True))
    fast_radius: int = option(8, "fast: guided-filter window radius in pixels.", range=Range(1, 256))
    fast_eps: float = option(1e-3, "fast: guided-filter regularisation (larger: smoother).", range=Range(0, 10, low_open=True))
    precision: str = option("auto", "auto (bf16 channels-last where the CPU supports it, several times faster), fp32 or bf16.")
    size: int | None = option(512, "Long side of the output (None: the content's size).", range=SIDE)
    style_size: int | None = option(512, "Long side the style images are scaled to before encoding (None: as given).", range=SIDE)
    seed: int = option(0, "Unused by this deterministic method; kept so every recipe has a seed.", range=SEED)


def validate(o: Options, n_styles: int) -> None:
    validate_common(o, n_styles)
    validate_levels(o)
    if o.smooth not in SMOOTHING:
        raise InvalidOptionError(f"smooth must be one of {', '.join(SMOOTHING)}, got '{o.smooth}'.{suggest(o.smooth, SMOOTHING)}")
    if o.affinity not in AFFINITIES:
        raise InvalidOptionError(f"affinity must be one of {', '.join(AFFINITIES)}, got '{o.affinity}'.{suggest(o.affinity, AFFINITIES)}")


def smooth(stylized: Tensor, content: Tensor, o: Options) -> tuple[Tensor, dict[str, float]]:
    """The chosen smoothing of a stylised image -> (image, solver figures for the result's losses)."""
    if o.smooth == "exact":
        image, info = smooth_exact(stylized, content, a=o.smooth_strength, sigma=o.sigma, kind=o.affinity)
        return image, {"cg_iterations": float(info.iterations), "relative_residual": info.relative_residual}
    if o.smooth == "fast":
        return smooth_fast(stylized, content, radius=o.fast_radius, eps=o.fast_eps), {}
    return stylized, {}


class Prepared:
    """PhotoWCT with its decoders loaded and the style features computed once; call it per content image."""

    def __init__(self, styles: Sequence[Tensor], options: Options) -> None:
        self.options = options
        self.transfer: LevelTransfer = prepare_levels(styles, options, options.levels, "photowct")

    def __call__(self, content: Tensor, *, callback: Callback | None = None, cancel: CancelToken | None = None) -> Result:
        options = self.options

        def smoothed(out: Tensor, image: Tensor) -> tuple[Tensor, dict[str, float]]:
            if callback and options.smooth != "none":
                callback(Stage(name=f"smooth {options.smooth}", size=tuple(image.shape[-2:])))
            if cancel is not None:
                cancel.raise_if_cancelled()
            return smooth(out, image, options)

        return self.transfer.result(content, callback, cancel, post=smoothed)


def prepare(style: Tensor | Sequence[Tensor] | None, options: Options | None = None) -> Prepared:
    """Load the decoders and compute the style features once (for many content images or frames)."""
    options = options or Options()
    styles = style_list(style)
    validate(options, len(styles))
    return Prepared(styles, options)


def run(content: Tensor, style: Tensor | Sequence[Tensor] | None = None, options: Options | None = None, *,
        callback: Callback | None = None, cancel: CancelToken | None = None) -> Result:
    """Photorealistic stylisation of ``content`` with one or several style photos (prepare + one call)."""
    options = options or Options()
    styles = style_list(style)
    validate(options, len(styles))
    check_sizes(content, styles, options, "photowct", BYTES_PER_PIXEL["photowct"])  # before any weights load
    return prepare(styles, options)(content, callback=callback, cancel=cancel)
