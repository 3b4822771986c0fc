"""Decoders that invert a VGG encoder at ``relu{1..5}_1``, and the encode -> transform -> decode cascade.

Decoders mirror the encoder: nearest upsampling (or max-unpooling with the encoder's pooling
indices, for PhotoWCT) and reflection-padded 3x3 convs; they decode to any input size, odd ones
included. They are trained only to invert the encoder (``impasto.training.decoder``), so one
decoder serves every style. AdaIN uses one level; WCT and PhotoWCT chain several (``cascade``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from impasto.errors import InvalidOptionError, WeightsError, suggest
from impasto.features.precision import input_for
from impasto.features.vgg import VGGEncoder
from impasto.io.models import load_model, read_meta, resolve_model, shipped_of_kind
from impasto.io.weights import VGG_BLOCKS, VGG_CHANNELS, sha256_file

LEVELS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
ORDERS = ("coarse-to-fine", "fine-to-coarse")
ARCHITECTURE = "vgg-decoder"
Indices = dict[str, tuple[Tensor, tuple[int, int]]]


class Decoder(nn.Module):
    """Inverts a VGG encoder from ``relu{level}_1`` back to RGB.

    ``forward(features, size, indices=None)``: features (N, C, h, w) at the level, ``size`` the
    image's (H, W); for unpooling decoders ``indices`` from ``VGGEncoder.forward_with_indices``.
    The last ``len(stages) - k`` stages and the head of a level-L decoder have the same shapes as
    the whole of a level-(L - k) decoder, which ``warm_start`` uses. ``top_convs`` trims the
    deepest stage to that many convs (default: mirror the encoder block): a VGG-16 relu5_1
    decoder with one conv there is 4.7 MB smaller in fp16 than the full mirror's 14 MB stage.
    """

    def __init__(self, level: str = "relu4_1", arch: str = "vgg16", unpool: bool = False,
                 channels: Sequence[int] = VGG_CHANNELS, top_convs: int | None = None) -> None:
        super().__init__()
        self.channels = tuple(int(c) for c in channels)
        if level not in LEVELS:
            raise InvalidOptionError(f"decoder level must be one of {', '.join(LEVELS)}, got '{level}'.{suggest(level, LEVELS)}")
        self.level, self.arch, self.unpool = level, arch, unpool
        k = LEVELS.index(level) + 1
        blocks = VGG_BLOCKS[arch]
        self.stages = nn.ModuleList()
        ch = self.channels[k - 1]
        if top_convs is not None and not 1 <= top_convs <= blocks[k - 2 if k > 1 else 0]:
            raise InvalidOptionError(f"top_convs must be between 1 and {blocks[k - 2 if k > 1 else 0]} for {arch} {level}, got {top_convs}")
        self.top_convs = top_convs if k > 1 else None
        for b in range(k - 1, 0, -1):  # block b+1 -> block b
            out = self.channels[b - 1]
            n = top_convs if top_convs is not None and b == k - 1 else blocks[b - 1]
            self.stages.append(nn.ModuleList([self._conv(ch, out)] + [self._conv(out, out) for _ in range(n - 1)]))
            ch = out
        self.head = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(ch, 3, 3))
        # Input features are standardised per channel with these (set by training from sample
        # batches): caffe-scale VGG activations are in the hundreds and their channels differ
        # widely in scale, which conditions the problem so badly that Adam crawls (measured: 5x
        # lower pixel loss after 300 steps with standardised inputs).
        self.register_buffer("feature_mean", torch.zeros(self.channels[k - 1]))
        self.register_buffer("feature_scale", torch.ones(self.channels[k - 1]))

    @staticmethod
    def _conv(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(cin, cout, 3), nn.ReLU(inplace=True))  # on the conv's fresh output

    def forward(self, x: Tensor, size: tuple[int, int], indices: Indices | None = None) -> Tensor:
        x = self.top(x, size, indices, stages=len(self.stages))
        return self.head(x)

    def top(self, x: Tensor, size: tuple[int, int], indices: Indices | None = None, stages: int = 1) -> Tensor:
        """Standardise the input and run the first ``stages`` stages (all of them: ``forward`` minus the head)."""
        sizes = [tuple(size)]
        for _ in range(len(self.stages)):
            sizes.append((sizes[-1][0] // 2, sizes[-1][1] // 2))
        block = len(self.stages)  # the pooling that produced this level: pool{block}
        x = (x - self.feature_mean[:, None, None]) * self.feature_scale[:, None, None]
        for stage in list(self.stages)[:stages]:
            x = stage[0](x)
            if self.unpool:
                if indices is None or f"pool{block}" not in indices:
                    raise InvalidOptionError("an unpooling decoder needs the encoder's pooling indices")
                idx, pre = indices[f"pool{block}"]
                x = F.max_unpool2d(x, idx, 2, output_size=pre)
            else:
                x = F.interpolate(x, size=sizes[block - 1], mode="nearest")
            for conv in stage[1:]:
                x = conv(x)
            block -= 1
        return x

    def warm_start(self, shallower: Decoder) -> Tensor:
        """Copy a shallower decoder (same arch, channels and upsampling) into this one's last stages and head.

        The shallower decoder standardised its input ``(f - mean) * scale``; here that input comes
        from this decoder's top stage (after a ReLU, so >= 0), so the mean is folded into the first
        copied conv's bias (exact: reflection padding keeps a constant map constant) and the top
        stage is expected to produce ``f * scale``. Returns that per-channel ``scale`` (the target
        for ``top`` when pre-training the new stage).
        """
        same_upsampling = shallower.unpool == self.unpool or not shallower.stages  # relu1_1 has none
        if (shallower.arch, shallower.channels) != (self.arch, self.channels) or not same_upsampling:
            raise InvalidOptionError(
                f"cannot warm-start a {self.arch} {'unpool' if self.unpool else 'nearest'} decoder from a "
                f"{shallower.arch} {'unpool' if shallower.unpool else 'nearest'} one (upsampling, network or channel widths differ)")
        skip = len(self.stages) - len(shallower.stages)
        if skip < 1:
            raise InvalidOptionError(f"warm start needs a shallower decoder than {self.level}, got {shallower.level}")
        for mine, theirs in zip(list(self.stages)[skip:], shallower.stages, strict=True):
            # A trimmed stage (top_convs) fills the first convs of a full one; the convs it lacks
            # start as identities, exact here: they follow a ReLU (inputs >= 0) and end in one.
            for k, conv in enumerate(mine):
                if k < len(theirs):
                    conv.load_state_dict(theirs[k].state_dict())
                else:
                    _identity_conv(conv[1])
        self.head.load_state_dict(shallower.head.state_dict())
        first = self.stages[skip][0][1] if skip < len(self.stages) else self.head[1]
        with torch.no_grad():
            shift = shallower.feature_mean * shallower.feature_scale
            first.bias -= first.weight.sum(dim=(2, 3)) @ shift
        return shallower.feature_scale.clone()


def _identity_conv(conv: nn.Conv2d) -> None:
    """Set a square 3x3 conv to the identity map (centre tap I, no bias)."""
    if conv.in_channels != conv.out_channels:
        raise InvalidOptionError(f"cannot start a {conv.in_channels}->{conv.out_channels} conv as an identity")
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[:, :, 1, 1] = torch.eye(conv.out_channels)
        conv.bias.zero_()


def decoder_architecture(decoder: Decoder) -> dict[str, Any]:
    arch = {"name": ARCHITECTURE, "level": decoder.level, "arch": decoder.arch, "unpool": decoder.unpool,
            "channels": list(decoder.channels)}
    if decoder.top_convs is not None:
        arch["top_convs"] = decoder.top_convs
    return arch


def load_decoder(name_or_path: str) -> tuple[Decoder, dict[str, Any]]:
    """A shipped decoder name or a decoder file -> (decoder in eval mode, metadata with path and sha256)."""
    path = resolve_model(name_or_path)
    state, meta = load_model(path)
    arch = meta.get("architecture", {})
    if arch.get("name") != ARCHITECTURE:
        raise WeightsError(f"{path} is not a decoder (architecture {arch.get('name')!r})")
    decoder = Decoder(arch["level"], arch["arch"], bool(arch["unpool"]), arch.get("channels", VGG_CHANNELS), arch.get("top_convs"))
    try:
        decoder.load_state_dict(state)
    except RuntimeError as exc:
        raise WeightsError(f"{path} does not fit its declared architecture: {str(exc).splitlines()[0]}") from exc
    return decoder.requires_grad_(False).eval(), {**meta, "path": str(path), "sha256": sha256_file(path)}


def shipped_decoder(level: str, unpool: bool) -> str:
    """Name of the shipped decoder for ``level`` (max-unpooling or nearest); a clear error if none ships.

    relu1_1 decoders have no upsampling, so either kind serves both.
    """
    found = {}
    for name, path in shipped_of_kind(ARCHITECTURE).items():
        arch = read_meta(path)["architecture"]
        if arch["level"] == level and (level == "relu1_1" or bool(arch["unpool"]) == unpool):
            found[bool(arch["unpool"]) == unpool] = name
    if not found:
        kind = "max-unpooling" if unpool else "nearest-upsampling"
        raise InvalidOptionError(
            f"no {kind} decoder for {level} ships with this impasto; train one with "
            f"'impasto train decoder --level {level}{' --unpool' if unpool else ''}' and pass it with --decoder(s)")
    return found.get(True, found.get(False))


def check_encoder(encoder: VGGEncoder, meta: dict[str, Any]) -> None:
    """Refuse a decoder trained on other encoder weights than ``encoder``'s (compared by the source
    file's pinned hash when the decoder records it, else by the weight file's)."""
    if "encoder_source_sha256" in meta:
        mine, theirs = encoder.source_sha256, meta["encoder_source_sha256"]
    else:
        mine, theirs = encoder.weights_sha256, meta.get("encoder_sha256", encoder.weights_sha256)
    if mine != theirs:
        raise WeightsError(f"decoder {meta['path']} was trained for other {meta.get('encoder')} weights ({theirs[:12]}) "
                           f"than the encoder in use ({encoder.weights_name}, {mine[:12]})")


def ordered_levels(levels: Sequence[str], order: str) -> list[str]:
    """Check the levels and sort them deepest first (coarse-to-fine) or shallowest first."""
    if not levels:
        raise InvalidOptionError(f"give at least one level of {', '.join(LEVELS)}")
    for level in levels:
        if level not in LEVELS:
            raise InvalidOptionError(f"unknown level '{level}'; choose from {', '.join(LEVELS)}.{suggest(level, LEVELS)}")
    if len(set(levels)) != len(levels):
        raise InvalidOptionError(f"levels repeat: {', '.join(levels)}")
    if order not in ORDERS:
        raise InvalidOptionError(f"order must be one of {', '.join(ORDERS)}, got '{order}'.{suggest(order, ORDERS)}")
    return sorted(levels, key=LEVELS.index, reverse=order == "coarse-to-fine")


def load_decoders(levels: Sequence[str], names: Sequence[str], unpool_levels: Collection[str]) -> tuple[list[Decoder], list[dict[str, Any]]]:
    """Decoders for ``levels`` (given names/files in the same order, or the shipped ones), checked for level
    and kind: max-unpooling at ``unpool_levels``, nearest upsampling elsewhere (relu1_1 serves both)."""
    decoders, metas = [], []
    for i, level in enumerate(levels):
        unpool = level in unpool_levels
        decoder, meta = load_decoder(names[i] if names else shipped_decoder(level, unpool))
        if decoder.level != level:
            raise InvalidOptionError(f"decoder {meta['path']} inverts {decoder.level}, but it was given for {level}")
        if decoder.unpool != unpool and level != "relu1_1":
            kind = "max-unpooling (train with --unpool)" if unpool else "nearest-upsampling"
            raise InvalidOptionError(f"decoder {meta['path']} is not a {kind} decoder, which {level} takes here "
                                     f"(max-unpooling levels: {', '.join(unpool_levels) or 'none'})")
        decoders.append(decoder)
        metas.append(meta)
    # The encoder's source file (pinned) identifies its weights; the imported file's own hash can
    # differ between machines that imported the same source, so it is only the fallback.
    encoders = {m.get("encoder_source_sha256", m.get("encoder_sha256")) for m in metas}
    if len(encoders) > 1:
        raise InvalidOptionError("the decoders were trained for different encoder weights; use one set")
    return decoders, metas


Transform = Callable[[str, Tensor], Tensor]  # (level, content features) -> transformed features


def cascade(encoder: VGGEncoder, decoders: Sequence[Decoder], image: Tensor, transform: Transform,
            on_level: Callable[[str], None] | None = None) -> Tensor:
    """Multi-level transfer (Li et al. 2017): for each decoder in order, encode the current image at
    its level, transform the features, decode; the next level starts from the decoded image.

    ``image`` (1, 3, H, W) in [0, 1]; returns (1, 3, H, W) float32 clamped to [0, 1]. Unpooling
    decoders get the pooling indices of the image they decode (PhotoWCT). Networks moved to bf16
    (``features.precision.to_bf16``) get bf16 channels-last inputs; ``transform`` sees the
    encoder's features as they come and returns features in the same dtype.
    """
    size = tuple(image.shape[-2:])
    with torch.inference_mode():
        for decoder in decoders:
            if on_level:
                on_level(decoder.level)
            enc = encoder.with_layers([decoder.level])
            x = input_for(encoder, image)
            if decoder.unpool:
                feats, indices = enc.forward_with_indices(x)
            else:
                feats, indices = enc(x), None
            changed = input_for(decoder, transform(decoder.level, feats[decoder.level]))
            image = decoder(changed, size, indices).float().clamp(0, 1)
    return image
