"""Arbitrary style transfer in one pass: AdaIN (Huang & Belongie 2017) with a trained decoder.

Encode content and style with the VGG encoder up to ``relu4_1``, give the content features the
style's per-channel mean and std (AdaIN), blend with the content features by ``alpha``, and
decode to an image. The decoder only learns to invert the encoder (see
``impasto.training.decoder``), so any style works without training.

Decoders mirror the encoder: nearest upsampling (or max-unpooling with the encoder's indices, for
PhotoWCT) and reflection-padded 3x3 convs; they decode to any input size, odd ones included.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from impasto.errors import InvalidOptionError, WeightsError, suggest
from impasto.events import Callback, CancelToken, Done, Stage
from impasto.features.vgg import VGGEncoder, load_encoder
from impasto.io.models import load_model, read_meta, resolve_model, shipped_of_kind
from impasto.io.weights import VGG_BLOCKS, VGG_CHANNELS, sha256_file
from impasto.ops import color as color_ops
from impasto.ops.geometry import resize, size_for_long_side
from impasto.ops.stats import adain
from impasto.options import option
from impasto.result import Result

LEVELS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
COLOR_MODES = ("style", "luminance")


class Decoder(nn.Module):
    """Inverts a VGG encoder from ``relu{level}_1`` back to RGB.

    ``forward(features, size, indices=None)``: features (N, C, h, w) at the level, ``size`` the
    image's (H, W); for unpooling decoders ``indices`` from ``VGGEncoder.forward_with_indices``.
    """

    def __init__(self, level: str = "relu4_1", arch: str = "vgg16", unpool: bool = False,
                 channels: Sequence[int] = VGG_CHANNELS) -> None:
        super().__init__()
        self.channels = tuple(int(c) for c in channels)
        if level not in LEVELS:
            raise InvalidOptionError(f"decoder level must be one of {', '.join(LEVELS)}, got '{level}'.{suggest(level, LEVELS)}")
        self.level, self.arch, self.unpool = level, arch, unpool
        k = LEVELS.index(level) + 1
        blocks = VGG_BLOCKS[arch]
        self.stages = nn.ModuleList()
        ch = self.channels[k - 1]
        for b in range(k - 1, 0, -1):  # block b+1 -> block b
            out = self.channels[b - 1]
            self.stages.append(nn.ModuleList([self._conv(ch, out)] + [self._conv(out, out) for _ in range(blocks[b - 1] - 1)]))
            ch = out
        self.head = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(ch, 3, 3))

    @staticmethod
    def _conv(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(cin, cout, 3), nn.ReLU())

    def forward(self, x: Tensor, size: tuple[int, int],
                indices: dict[str, tuple[Tensor, tuple[int, int]]] | None = None) -> Tensor:
        sizes = [tuple(size)]
        for _ in range(len(self.stages)):
            sizes.append((sizes[-1][0] // 2, sizes[-1][1] // 2))
        block = len(self.stages)  # the pooling that produced this level: pool{block}
        for stage in self.stages:
            x = stage[0](x)
            target = sizes[block - 1]
            if self.unpool:
                if indices is None or f"pool{block}" not in indices:
                    raise InvalidOptionError("an unpooling decoder needs the encoder's pooling indices")
                idx, pre = indices[f"pool{block}"]
                x = F.max_unpool2d(x, idx, 2, output_size=pre)
            else:
                x = F.interpolate(x, size=target, mode="nearest")
            for conv in stage[1:]:
                x = conv(x)
            block -= 1
        return self.head(x)


def decoder_architecture(decoder: Decoder) -> dict[str, Any]:
    return {"name": "vgg-decoder", "level": decoder.level, "arch": decoder.arch, "unpool": decoder.unpool,
            "channels": list(decoder.channels)}


def load_decoder(name_or_path: str) -> tuple[Decoder, dict[str, Any]]:
    """A shipped decoder name or a decoder file -> (decoder in eval mode, metadata)."""
    path = resolve_model(name_or_path)
    state, meta = load_model(path)
    arch = meta.get("architecture", {})
    if arch.get("name") != "vgg-decoder":
        raise WeightsError(f"{path} is not a decoder (architecture {arch.get('name')!r})")
    decoder = Decoder(arch["level"], arch["arch"], bool(arch["unpool"]), arch.get("channels", VGG_CHANNELS))
    try:
        decoder.load_state_dict(state)
    except RuntimeError as exc:
        raise WeightsError(f"{path} does not fit its declared architecture: {str(exc).splitlines()[0]}") from exc
    return decoder.requires_grad_(False).eval(), {**meta, "path": str(path), "sha256": sha256_file(path)}


def _default_decoder() -> str:
    names = [n for n, p in shipped_of_kind("vgg-decoder").items() if read_meta(p)["architecture"]["level"] == "relu4_1"]
    if not names:
        raise InvalidOptionError("no AdaIN decoder ships with this impasto; train one with 'impasto train decoder'")
    return names[0]


@dataclass(frozen=True)
class Options:
    """Every default of AdaIN transfer."""

    decoder: str = option("auto", "Decoder (shipped name or file from 'impasto train decoder'); auto: the shipped relu4_1 decoder.")
    alpha: float = option(1.0, "Strength: 1 full style statistics, 0 the content's own features.")
    style_blend: tuple[float, ...] | None = option(None, "Interpolation weights, one per style image (default: equal).")
    color: str = option("style", "style (the style's colours) or luminance (keep the content's colours).")
    size: int | None = option(512, "Long side of the output (None: the content's size).")
    style_size: int | None = option(512, "Long side the style images are scaled to before encoding (None: as given).")
    seed: int = option(0, "Unused by this deterministic method; kept so every recipe has a seed.")




def validate(o: Options, n_styles: int) -> None:
    if n_styles < 1:
        raise InvalidOptionError("at least one style image is needed")
    if not 0.0 <= o.alpha <= 1.0:
        raise InvalidOptionError(f"alpha must be in [0, 1], got {o.alpha}")
    if o.color not in COLOR_MODES:
        raise InvalidOptionError(f"color must be one of {', '.join(COLOR_MODES)}, got '{o.color}'.{suggest(o.color, COLOR_MODES)}")
    if o.style_blend is not None and (len(o.style_blend) != n_styles or min(o.style_blend) < 0 or sum(o.style_blend) <= 0):
        raise InvalidOptionError(f"style_blend needs {n_styles} non-negative weights, got {list(o.style_blend)}")


def transfer(encoder: VGGEncoder, decoder: Decoder, content: Tensor, styles: Sequence[Tensor],
             weights: Sequence[float], alpha: float) -> Tensor:
    """AdaIN transfer of already-sized images: (1, 3, H, W) in [0, 1] -> (1, 3, H, W), not clamped."""
    level = decoder.level
    with torch.inference_mode():
        fc = encoder(content)[level]
        target = sum(w * adain(fc, encoder(s)[level]) for w, s in zip(weights, styles, strict=True))
        mixed = alpha * target + (1 - alpha) * fc
        return decoder(mixed, tuple(content.shape[-2:]))


def run(content: Tensor, style: Tensor | Sequence[Tensor] | None = None, options: Options | None = None, *,
        callback: Callback | None = None, cancel: CancelToken | None = None, **_: Any) -> Result:
    """Stylise ``content`` with one or several style images in one pass."""
    options = options or Options()
    styles = [] if style is None else [style] if isinstance(style, Tensor) else list(style)
    validate(options, len(styles))
    started = time.perf_counter()
    decoder, meta = load_decoder(_default_decoder() if options.decoder == "auto" else options.decoder)
    encoder = load_encoder(meta.get("encoder", "auto"), [decoder.level])
    if encoder.weights_sha256 != meta.get("encoder_sha256", encoder.weights_sha256):
        raise WeightsError(f"decoder {meta['path']} was trained for other {meta.get('encoder')} weights than the cached ones")
    image = content if options.size is None else resize(content, size_for_long_side(*content.shape[-2:], options.size))
    styles = [s if options.style_size is None else resize(s, size_for_long_side(*s.shape[-2:], options.style_size))
              for s in styles]
    blend = torch.tensor(options.style_blend or [1.0] * len(styles), dtype=torch.float64)
    if callback:
        callback(Stage(name="adain", size=tuple(image.shape[-2:])))
    if cancel is not None:
        cancel.raise_if_cancelled()
    out = transfer(encoder, decoder, image, styles, (blend / blend.sum()).tolist(), options.alpha).clamp(0, 1)
    if options.color == "luminance":
        out = color_ops.combine_luminance_chroma(out, image)
    seconds = time.perf_counter() - started
    if callback:
        callback(Done(seconds=seconds, steps=1))
    return Result(image=out.float().contiguous(), weights=meta.get("name", meta["path"]),
                  weights_sha256=meta["sha256"], steps=1, seconds=seconds)
