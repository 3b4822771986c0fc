"""Fast feed-forward transfer (Johnson, Alahi & Fei-Fei 2016) with instance norm (Ulyanov et al. 2016)
and conditional instance norm for many styles in one network (Dumoulin et al. 2017).

The image transformation network: 9x9 conv -> two stride-2 convs -> 5 residual blocks -> two
nearest-upsample convs -> 9x9 conv, reflection padding, (conditional) instance norm after every
conv but the last. Differs from the paper: upsample+conv instead of transposed convs (no
checkerboard artefacts, as in Odena et al. 2016) and instance norm instead of batch norm.

Inference works at any size: inputs are reflect-padded to a multiple of 4, and images larger than
``tile_size`` run in overlapping tiles blended with linear ramps. Instance-norm statistics come
from one pass over the whole image (downscaled to ``stats_size`` when larger), so all tiles are
normalised alike and no seams appear.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from impasto.errors import InvalidOptionError, WeightsError, suggest
from impasto.events import Callback, CancelToken, Done, Progress, Stage
from impasto.features.precision import use_bf16
from impasto.io.models import load_model, resolve_model, shipped_of_kind
from impasto.io.onnx import OnnxNetwork, export
from impasto.io.weights import sha256_file
from impasto.ops import color as color_ops
from impasto.ops.geometry import resize, size_for_long_side
from impasto.options import MAX_SIDE, Range, SEED, SIDE, UNIT, WEIGHT, option
from impasto.result import Result
from impasto.validation import check_fields, check_image_side, check_memory

COLOR_MODES = ("style", "luminance")
TAKES_STYLE = False  # the style is in the model; api.check_call refuses style images


# ----------------------------------------------------------------------------- network

class ConditionalInstanceNorm(nn.Module):
    """Instance norm whose scale/shift are a weighted mix of per-style parameters.

    With ``n_styles == 1`` and mix ``[[1]]`` it equals ``nn.InstanceNorm2d(affine=True)``. The
    statistics can be recorded from one pass and reused (``frozen``) for tiled inference.
    """

    def __init__(self, channels: int, n_styles: int = 1, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n_styles, channels))
        self.bias = nn.Parameter(torch.zeros(n_styles, channels))
        self.eps = eps
        self._record: list[tuple[Tensor, Tensor]] | None = None
        self._frozen: tuple[Tensor, Tensor] | None = None

    def forward(self, x: Tensor, mix: Tensor) -> Tensor:
        if self._frozen is None and self._record is None and torch.onnx.is_in_onnx_export():  # dynamic batch
            return F.instance_norm(x, weight=(mix @ self.weight).flatten(), bias=(mix @ self.bias).flatten(), eps=self.eps)
        if self._frozen is None and self._record is None and x.shape[0] == 1:
            # For one image, instance norm is batch norm with batch statistics: the same numbers
            # (identical in fp32), but batch norm keeps a channels-last input channels-last where
            # instance_norm returns NCHW and every following conv pays a layout copy (measured at
            # 1024 px in bf16: 1.75x faster for the width-32 network, 1.3x for the slim one).
            return F.batch_norm(x, None, None, (mix @ self.weight).flatten(), (mix @ self.bias).flatten(), True, 0.0, self.eps)
        if self._frozen is not None:
            mean, var = self._frozen
        else:
            var, mean = torch.var_mean(x, dim=(2, 3), keepdim=True, correction=0)
            if self._record is not None:
                self._record.append((mean.detach(), var.detach()))
        gamma = (mix @ self.weight).view(x.shape[0], -1, 1, 1)
        beta = (mix @ self.bias).view(x.shape[0], -1, 1, 1)
        scale = gamma * torch.rsqrt(var + self.eps)  # folded: one pass over x instead of three
        return torch.addcmul(beta - mean * scale, x, scale)


class _Conv(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, upsample: bool = False) -> None:
        super().__init__()
        self.upsample = upsample
        self.pad = nn.ReflectionPad2d(kernel // 2)
        self.conv = nn.Conv2d(cin, cout, kernel, stride)

    def forward(self, x: Tensor) -> Tensor:
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(self.pad(x))


class TransformerNet(nn.Module):
    """Johnson et al.'s image transformation network; ``n_styles > 1`` makes it conditional.

    ``forward(image, mix)``: image (N, 3, H, W) in [0, 1] (any H, W), mix (N, n_styles) style
    weights (rows sum to 1) -> (N, 3, H, W), not clamped.
    """

    def __init__(self, n_styles: int = 1, width: int = 32, n_residual: int = 5) -> None:
        super().__init__()
        w = width
        self.n_styles, self.width, self.n_residual = n_styles, width, n_residual
        self.down = nn.ModuleList([_Conv(3, w, 9), _Conv(w, 2 * w, 3, 2), _Conv(2 * w, 4 * w, 3, 2)])
        self.down_norms = nn.ModuleList([ConditionalInstanceNorm(c, n_styles) for c in (w, 2 * w, 4 * w)])
        self.res = nn.ModuleList([_Conv(4 * w, 4 * w, 3) for _ in range(2 * n_residual)])
        self.res_norms = nn.ModuleList([ConditionalInstanceNorm(4 * w, n_styles) for _ in range(2 * n_residual)])
        self.up = nn.ModuleList([_Conv(4 * w, 2 * w, 3, upsample=True), _Conv(2 * w, w, 3, upsample=True)])
        self.up_norms = nn.ModuleList([ConditionalInstanceNorm(c, n_styles) for c in (2 * w, w)])
        self.out = _Conv(w, 3, 9)

    def forward(self, image: Tensor, mix: Tensor | None = None) -> Tensor:
        if mix is None:
            mix = torch.full((image.shape[0], self.n_styles), 1.0 / self.n_styles, dtype=image.dtype, device=image.device)
        return _padded_call(self.core, image, mix.to(image.dtype))

    def core(self, x: Tensor, mix: Tensor) -> Tensor:
        """The network on an input whose sides are multiples of 4 (what ONNX export traces)."""
        for conv, norm in zip(self.down, self.down_norms, strict=True):
            x = F.relu(norm(conv(x), mix))
        for i in range(self.n_residual):
            y = F.relu(self.res_norms[2 * i](self.res[2 * i](x), mix))
            x = x + self.res_norms[2 * i + 1](self.res[2 * i + 1](y), mix)
        for conv, norm in zip(self.up, self.up_norms, strict=True):
            x = F.relu(norm(conv(x), mix))
        return self.out(x)

    def norms(self) -> list[ConditionalInstanceNorm]:
        return [m for m in self.modules() if isinstance(m, ConditionalInstanceNorm)]

    @contextlib.contextmanager
    def recording_stats(self) -> Iterator[list[list[tuple[Tensor, Tensor]]]]:
        """Inside: every norm records the statistics it computes (one entry per forward)."""
        records: list[list[tuple[Tensor, Tensor]]] = [[] for _ in self.norms()]
        for norm, rec in zip(self.norms(), records, strict=True):
            norm._record = rec
        try:
            yield records
        finally:
            for norm in self.norms():
                norm._record = None

    @contextlib.contextmanager
    def frozen_stats(self, stats: Sequence[tuple[Tensor, Tensor]]) -> Iterator[None]:
        """Inside: every norm uses the given (mean, var) instead of the input's own."""
        for norm, st in zip(self.norms(), stats, strict=True):
            norm._frozen = st
        try:
            yield
        finally:
            for norm in self.norms():
                norm._frozen = None


def _padded_call(fn: Any, image: Tensor, mix: Tensor) -> Tensor:
    """Reflect-pad to a multiple of 4 (two stride-2 convs), run ``fn``, crop back."""
    h, w = image.shape[-2:]
    ph, pw = max(8, h + (-h) % 4) - h, max(8, w + (-w) % 4) - w  # at least 8: 2 pixels at 1/4 scale
    mode = "reflect" if ph < h and pw < w else "replicate"  # reflect needs more pixels than it pads
    x = F.pad(image, (0, pw, 0, ph), mode=mode) if ph or pw else image
    return fn(x, mix)[..., :h, :w]


class _Core(nn.Module):
    def __init__(self, net: TransformerNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: Tensor, mix: Tensor) -> Tensor:
        return self.net.core(image, mix)


class OnnxTransformer:
    """A network exported by :func:`export_onnx`, run through onnxruntime (whole image, no tiling)."""

    def __init__(self, path: str) -> None:
        self.runner = OnnxNetwork(path)
        self.meta = self.runner.meta

    def __call__(self, image: Tensor, mix: Tensor) -> Tensor:
        return _padded_call(lambda x, m: self.runner(x, m), image.float(), mix.float())


def export_onnx(name_or_path: str, output: str) -> str:
    """Export a trained model (name or file) to ONNX; the file keeps the model's metadata."""
    net, meta = load_network(name_or_path)
    if not isinstance(net, TransformerNet):
        raise InvalidOptionError(f"'{name_or_path}' is already an ONNX model")
    example = (torch.rand(1, 3, 64, 64), torch.full((1, net.n_styles), 1.0 / net.n_styles))
    dynamic = {"image": {0: "batch", 2: "height", 3: "width"}, "mix": {0: "batch"},
               "output": {0: "batch", 2: "height", 3: "width"}}
    keep = {k: v for k, v in meta.items() if k not in ("path",)}
    return str(export(_Core(net.float()).eval(), example, output, keep, ["image", "mix"], dynamic))


def build_network(meta: dict[str, Any]) -> TransformerNet:
    arch = meta.get("architecture", {})
    if arch.get("name") != "johnson-in":
        raise WeightsError(f"unknown feed-forward architecture {arch.get('name')!r}")
    return TransformerNet(n_styles=int(arch["n_styles"]), width=int(arch["width"]), n_residual=int(arch["n_residual"]))


def architecture(net: TransformerNet) -> dict[str, Any]:
    return {"name": "johnson-in", "n_styles": net.n_styles, "width": net.width, "n_residual": net.n_residual}


def load_network(name_or_path: str) -> tuple[TransformerNet | OnnxTransformer, dict[str, Any]]:
    """A shipped model name, a model file or an exported .onnx -> (callable network, metadata)."""
    if name_or_path == "auto":
        name_or_path = next(iter(shipped_of_kind("johnson-in")))
    path = resolve_model(name_or_path)
    if path.suffix.lower() == ".onnx":
        runner = OnnxTransformer(str(path))
        return runner, {**runner.meta, "path": str(path), "sha256": sha256_file(path)}
    state, meta = load_model(path)
    net = build_network(meta)
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise WeightsError(f"{path} does not fit its declared architecture: {str(exc).splitlines()[0]}") from exc
    net.requires_grad_(False).eval()
    return net, {**meta, "path": str(path)}


# ----------------------------------------------------------------------------- inference

@dataclass(frozen=True)
class Options:
    """Every default of feed-forward inference."""

    model: str = option("auto", "Shipped model name (see 'impasto models list'), a .safetensors file from 'impasto train feedforward', or auto (the first shipped model).")
    style: str | None = option(None, "For multi-style models: the style's name or index (default: the first).")
    style_weights: tuple[float, ...] | None = option(None, "For multi-style models: interpolation weights, one per style (overrides style).", range=WEIGHT)
    strength: float = option(1.0, "Blend of stylised and original: 1 fully stylised, 0 the content unchanged.", range=UNIT)
    color: str = option("style", "style (the network's colours) or luminance (keep the content's colours).")
    size: int | None = option(None, "Long side of the output in pixels (None: the content's own size).", range=SIDE)
    tile_size: int = option(1024, "Images with a side above this run in overlapping tiles of this size (memory bound).", range=Range(64, MAX_SIDE))
    tile_overlap: int = option(64, "Overlap between tiles in pixels, blended with linear ramps.", range=Range(0, MAX_SIDE))
    stats_size: int = option(1024, "Long side at which instance-norm statistics are measured for tiled runs.", range=SIDE)
    precision: str = option("auto", "auto (bf16 where the CPU supports it, about 2x faster), fp32 or bf16.")
    seed: int = option(0, "Unused by this deterministic method; kept so every recipe has a seed.", range=SEED)


MIN_SIDE_FF = 16  # below this the network's reflection padding and two stride-2 convs break down
BYTES_PER_PIXEL = 1300  # measured peak growth per pixel inside one tile (fp32, width 32), with margin
FULL_IMAGE_BYTES = 100  # per pixel of the whole image: input, output, blend weights, in fp32


def validate(options: Options) -> None:
    check_fields(options)
    if options.model == "auto" and not shipped_of_kind("johnson-in"):
        raise InvalidOptionError("no model given and none ships with this impasto; train one with 'impasto train feedforward'")
    if options.color not in COLOR_MODES:
        raise InvalidOptionError(f"color must be one of {', '.join(COLOR_MODES)}, got '{options.color}'.{suggest(options.color, COLOR_MODES)}")
    use_bf16(options.precision)  # raises for an unknown precision, or bf16 on a CPU without it
    if options.tile_overlap >= options.tile_size // 2:
        raise InvalidOptionError(f"--tile-overlap must be less than half of --tile-size ({options.tile_size}), "
                                 f"got {options.tile_overlap}")


def check_sizes(content: Tensor, options: Options) -> None:
    """The sized content is large enough for the network and the run fits in memory (before any work)."""
    h, w = content.shape[-2:]
    if options.size is not None:
        h, w = size_for_long_side(h, w, options.size)
    check_image_side(h, w, "content image", "feedforward", MIN_SIDE_FF)
    tile = min(h * w, options.tile_size ** 2) + min(h * w, options.stats_size ** 2)
    check_memory("--method feedforward", "--size", options.size or max(h, w),
                 [h * w * FULL_IMAGE_BYTES / BYTES_PER_PIXEL, tile], BYTES_PER_PIXEL)


def style_mix(meta: dict[str, Any], style: str | None, weights: Sequence[float] | None) -> Tensor:
    """(1, n_styles) weights from a style name/index or explicit interpolation weights."""
    names = [s["name"] for s in meta.get("styles", [])] or ["style"]
    n = int(meta["architecture"]["n_styles"])
    if weights is not None:
        if len(weights) != n or min(weights) < 0 or sum(weights) <= 0:
            raise InvalidOptionError(f"style_weights needs {n} non-negative weights (styles: {', '.join(names)}), got {list(weights)}")
        w = torch.tensor(weights, dtype=torch.float32)
        return (w / w.sum()).view(1, n)
    index = 0
    if style is not None:
        if style.isdigit() and int(style) < n:
            index = int(style)
        elif style in names:
            index = names.index(style)
        else:
            raise InvalidOptionError(f"model has no style '{style}'; styles: {', '.join(names)} (or 0..{n - 1}).{suggest(style, names)}")
    mix = torch.zeros(1, n)
    mix[0, index] = 1.0
    return mix


def _ramp(length: int, overlap: int, at_start: bool, at_end: bool) -> Tensor:
    """1-D blending weights: linear ramps over the overlap on inner edges, 1 elsewhere."""
    w = torch.ones(length)
    if overlap > 0:
        ramp = (torch.arange(overlap, dtype=torch.float32) + 0.5) / overlap
        if not at_start:
            w[:overlap] = ramp
        if not at_end:
            w[-overlap:] = ramp.flip(0)
    return w


def _starts(total: int, tile: int, overlap: int) -> list[int]:
    """Tile starts along one axis, all multiples of 4: the network's two stride-2 convs sample on a
    4-pixel grid, so only such shifts give each tile the same computation as the whole image."""
    if total <= tile:
        return [0]
    step = max(4, (tile - overlap) // 4 * 4)
    last = (total - tile) // 4 * 4
    starts = list(range(0, last, step)) + [last]  # the last tile runs to the end (up to 3 px longer)
    return sorted(set(starts))


def stylize_tensor(net: TransformerNet | OnnxTransformer, image: Tensor, mix: Tensor, *, tile_size: int = 1024, tile_overlap: int = 64,
                   stats_size: int = 1024, callback: Callback | None = None, cancel: CancelToken | None = None) -> Tensor:
    """Run ``net`` on (1, 3, H, W) ``image`` whole, or in tiles when a side exceeds ``tile_size``."""
    h, w = image.shape[-2:]
    if not isinstance(net, TransformerNet):  # ONNX: whole image
        return net(image, mix).float()
    dtype = next(net.parameters()).dtype
    mix = mix.to(dtype)
    # oneDNN's convs are faster channels-last: bf16 1.5x at 1024 px; fp32 1.07-1.30x (2-core AMD EPYC,
    # composition_vii and starry_night at 512-1024 px; the full-resolution 9x9 conv to 3 channels most)
    net = net.to(memory_format=torch.channels_last)
    image = image.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        if max(h, w) <= tile_size:
            return net(image.to(dtype), mix).float().contiguous()
        probe = image if max(h, w) <= stats_size else resize(image, size_for_long_side(h, w, stats_size))
        with net.recording_stats() as records:
            net(probe.to(dtype), mix)
        stats = [rec[0] for rec in records]
        out = torch.zeros(1, 3, h, w)
        weight = torch.zeros(1, 1, h, w)
        ys, xs = _starts(h, tile_size, tile_overlap), _starts(w, tile_size, tile_overlap)
        total, done = len(ys) * len(xs), 0
        with net.frozen_stats(stats):
            for y in ys:
                for x in xs:
                    if cancel is not None:
                        cancel.raise_if_cancelled()
                    th = h - y if y == ys[-1] else min(tile_size, h - y)
                    tw = w - x if x == xs[-1] else min(tile_size, w - x)
                    tile = net(image[..., y:y + th, x:x + tw].to(dtype), mix).float().contiguous()
                    wy = _ramp(th, min(tile_overlap, th), y == 0, y + th == h)
                    wx = _ramp(tw, min(tile_overlap, tw), x == 0, x + tw == w)
                    wt = (wy.view(-1, 1) * wx.view(1, -1)).view(1, 1, th, tw)
                    out[..., y:y + th, x:x + tw] += tile * wt
                    weight[..., y:y + th, x:x + tw] += wt
                    done += 1
                    if callback:
                        callback(Progress(step=done, total=total))
        return out / weight




class Prepared:
    """A trained network loaded once (and its style mix resolved); call it per content image or frame."""

    def __init__(self, options: Options) -> None:
        self.options = options
        net, meta = load_network(options.model)
        if use_bf16(options.precision) and isinstance(net, TransformerNet):
            net = net.to(torch.bfloat16)
        self.net, self.mix = net, style_mix(meta, options.style, options.style_weights)
        self.weights, self.weights_sha256 = meta.get("name", meta["path"]), meta.get("sha256", "")

    def __call__(self, content: Tensor, *, callback: Callback | None = None, cancel: CancelToken | None = None) -> Result:
        options = self.options
        check_sizes(content, options)
        started = time.perf_counter()
        image = content
        if options.size is not None:
            image = resize(image, size_for_long_side(image.shape[-2], image.shape[-1], options.size))
        if callback:
            callback(Stage(name="stylize", size=tuple(image.shape[-2:])))
        styled = stylize_tensor(self.net, image, self.mix, tile_size=options.tile_size, tile_overlap=options.tile_overlap,
                                stats_size=options.stats_size, callback=callback, cancel=cancel).clamp(0, 1)
        if options.color == "luminance":
            styled = color_ops.combine_luminance_chroma(styled, image)
        out = (options.strength * styled + (1 - options.strength) * image).clamp(0, 1)
        seconds = time.perf_counter() - started
        if callback:
            callback(Done(seconds=seconds, steps=1))
        return Result(image=out.contiguous(), weights=self.weights, weights_sha256=self.weights_sha256, steps=1, seconds=seconds)


def prepare(style: Tensor | Sequence[Tensor] | None = None, options: Options | None = None) -> Prepared:
    """Load the network once (for many content images or frames). ``style`` images are not used."""
    options = options or Options()
    validate(options)
    return Prepared(options)


def run(content: Tensor, style: Tensor | Sequence[Tensor] | None = None, options: Options | None = None, *,
        callback: Callback | None = None, cancel: CancelToken | None = None) -> Result:
    """Stylise ``content`` (1, 3, H, W) in [0, 1] with a trained network (prepare + one call). ``style``
    images are not used (the style lives in the model); passing some is allowed so every method shares
    one call shape."""
    options = options or Options()
    validate(options)
    check_sizes(content, options)  # before the network loads
    return prepare(style, options)(content, callback=callback, cancel=cancel)
