"""VGG-16/19 encoders (conv layers only) that return named activations from one pass.

Layer names follow the usual convention: ``conv{b}_{i}``, ``relu{b}_{i}``, ``pool{b}``.
The encoder owns its input normalisation, so callers always pass RGB in [0, 1]
``(N, 3, H, W)``; it stops at the deepest requested layer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from impasto.errors import InvalidOptionError, suggest
from impasto.features.precision import to_bf16
from impasto.io import weights as weights_io

POOLING = ("max", "avg")
NORMALIZATIONS = ("caffe", "torch")
ENCODERS = ("auto", "vgg16", "vgg19", "tiny")

_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)


def layer_names(arch: str) -> list[str]:
    """All layer names of ``arch`` in forward order."""
    names: list[str] = []
    for b, n in enumerate(weights_io.VGG_BLOCKS[arch]):
        for i in range(n):
            names += [f"conv{b + 1}_{i + 1}", f"relu{b + 1}_{i + 1}"]
        names.append(f"pool{b + 1}")
    return names


class VGGEncoder(nn.Module):
    """Frozen VGG conv stack returning the requested layers.

    Args:
        arch: "vgg16" or "vgg19".
        state: conv weights named ``conv{b}_{i}.weight/.bias`` (see ``io.weights``); the channel
            widths are read from it, so narrow random-weight copies work the same.
        layers: the layers to return; the network is truncated after the deepest one.
        pooling: "max" (VGG's own) or "avg" (Gatys et al.'s choice for smoother results).
        normalization: "caffe" (BGR, 0-255, mean-subtracted) or "torch" (ImageNet mean/std).
        weights_sha256: hash of the weight file, recorded in output recipes.
        source_sha256: hash of the file the weights were imported from (the registry's pinned
            hash); unlike the cache file's, it is the same on every machine, so trained decoders
            record it to name the encoder they invert.
    """

    def __init__(
        self,
        arch: str,
        state: dict[str, Tensor],
        layers: Iterable[str],
        *,
        pooling: str = "max",
        normalization: str = "caffe",
        weights_name: str = "custom",
        weights_sha256: str = "",
        source_sha256: str = "",
        shared_convs: Mapping[str, nn.Conv2d] | None = None,
        block_channels: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if arch not in weights_io.VGG_BLOCKS:
            raise InvalidOptionError(f"unknown VGG architecture '{arch}'; choose {', '.join(weights_io.VGG_BLOCKS)}")
        if pooling not in POOLING:
            raise InvalidOptionError(f"pooling must be one of {', '.join(POOLING)}, got '{pooling}'")
        if normalization not in NORMALIZATIONS:
            raise InvalidOptionError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, got '{normalization}'")
        all_names = layer_names(arch)
        self.layers = tuple(dict.fromkeys(layers))
        if not self.layers:
            raise InvalidOptionError("at least one layer must be requested from the encoder")
        for name in self.layers:
            if name not in all_names:
                raise InvalidOptionError(
                    f"unknown layer '{name}' for {arch}; valid layers: {', '.join(all_names)}.{suggest(name, all_names)}"
                )
        deepest = max(all_names.index(n) for n in self.layers)
        self.arch = arch
        self.pooling = pooling
        self.normalization = normalization
        self.weights_name = weights_name
        self.weights_sha256 = weights_sha256
        self.source_sha256 = source_sha256 or weights_sha256
        self._plan = all_names[: deepest + 1]
        self._state = state  # shared, not copied: lets with_layers() reach deeper layers later
        self._block_channels = tuple(block_channels) if block_channels is not None else None
        self.convs = nn.ModuleDict()
        for name in self._plan:
            if name.startswith("conv"):
                if shared_convs is not None and name in shared_convs:
                    self.convs[name] = shared_convs[name]
                    continue
                if f"{name}.weight" not in state:  # a slice of the weights that stops earlier
                    raise InvalidOptionError(f"the {weights_name} weights in use stop before {name}; layer(s) "
                                             f"{', '.join(self.layers)} need deeper weights")
                w, b = state[f"{name}.weight"], state[f"{name}.bias"]
                conv = nn.utils.skip_init(nn.Conv2d, w.shape[1], w.shape[0], 3, padding=1)  # no random init to overwrite
                with torch.no_grad():
                    conv.weight.copy_(w)
                    conv.bias.copy_(b)
                self.convs[name] = conv
        self.requires_grad_(False)
        self.eval()
        if normalization == "caffe":
            mean = torch.tensor(_CAFFE_MEAN_BGR[::-1]).view(1, 3, 1, 1)  # to RGB order
            self.register_buffer("_scale", torch.full((1, 3, 1, 1), 255.0), persistent=False)
            self.register_buffer("_shift", mean, persistent=False)
        else:
            self.register_buffer("_scale", 1.0 / torch.tensor(_TORCH_STD).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("_shift", torch.tensor(_TORCH_MEAN).view(1, 3, 1, 1) / torch.tensor(_TORCH_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def channels(self) -> tuple[int, ...]:
        """Output channels of each block present (from the weights, so narrow test encoders work)."""
        if self._block_channels is not None:  # a slice: the full weights' widths, recorded with it
            return self._block_channels
        blocks = weights_io.VGG_BLOCKS[self.arch]
        return tuple(int(self._state[f"conv{b + 1}_{blocks[b]}.weight"].shape[0]) for b in range(len(blocks)))

    def normalize(self, image: Tensor) -> Tensor:
        """[0, 1] RGB -> the network's input space."""
        x = image * self._scale - self._shift
        if self.normalization == "caffe":
            x = x.flip(1)  # RGB -> BGR, as the Keras/caffe weights expect
        return x

    def forward(self, image: Tensor) -> dict[str, Tensor]:
        """``image``: (N, 3, H, W) RGB in [0, 1] -> {layer: activation} for the requested layers."""
        return self._run(image, None)

    def forward_with_indices(self, image: Tensor) -> tuple[dict[str, Tensor], dict[str, tuple[Tensor, tuple[int, int]]]]:
        """Like ``forward``, plus each max-pool's argmax indices and input size ({"pool1": (idx, (H, W))}),
        for decoders that upsample by max-unpooling (PhotoWCT). Needs pooling="max"."""
        if self.pooling != "max":
            raise InvalidOptionError("pooling indices need an encoder with max pooling")
        indices: dict[str, tuple[Tensor, tuple[int, int]]] = {}
        return self._run(image, indices), indices

    def _run(self, image: Tensor, indices: dict[str, tuple[Tensor, tuple[int, int]]] | None) -> dict[str, Tensor]:
        """The forward pass; fills ``indices`` with the max-pool argmaxes when it is given."""
        if image.dim() != 4 or image.shape[1] != 3:
            raise InvalidOptionError(f"encoder input must be (N, 3, H, W), got {tuple(image.shape)}")
        x = self.normalize(image)
        out: dict[str, Tensor] = {}
        for name in self._plan:
            if name.startswith("conv"):
                x = self.convs[name](x)
            elif name.startswith("relu"):
                x = F.relu(x)
            elif indices is not None:
                size = (x.shape[-2], x.shape[-1])
                x, idx = F.max_pool2d(x, 2, return_indices=True)
                indices[name] = (idx, size)
            else:
                x = F.max_pool2d(x, 2) if self.pooling == "max" else F.avg_pool2d(x, 2)
            if name in self.layers:
                out[name] = x
        return out

    def with_layers(self, layers: Iterable[str]) -> "VGGEncoder":
        """A new encoder over the same weights returning other layers, in this one's precision.

        It shares this encoder's conv modules where their plans overlap (no copy), so an encoder
        moved to bf16 (``features.precision.to_bf16``) stays in bf16 at every level.
        """
        encoder = VGGEncoder(
            self.arch, self._state, layers, pooling=self.pooling, normalization=self.normalization,
            weights_name=self.weights_name, weights_sha256=self.weights_sha256, source_sha256=self.source_sha256,
            shared_convs=self.convs, block_channels=self._block_channels,
        ).to(self._scale.device)  # its own buffers (input scaling) where this one's are: CPU or GPU
        return to_bf16(encoder) if self._scale.dtype == torch.bfloat16 else encoder


def tiny_state(arch: str = "vgg16", width: int = 4, seed: int = 0) -> dict[str, Tensor]:
    """Random (He-initialised) conv weights of a VGG with channels ``width * (1, 2, 4, 8, 8)``.

    For fast tests only: same layer names and depth as the real network.
    """
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, Tensor] = {}
    in_ch = 3
    for b, n in enumerate(weights_io.VGG_BLOCKS[arch]):
        out = width * (1, 2, 4, 8, 8)[b]
        for i in range(n):
            std = (2.0 / (in_ch * 9)) ** 0.5
            state[f"conv{b + 1}_{i + 1}.weight"] = torch.randn(out, in_ch, 3, 3, generator=gen) * std
            state[f"conv{b + 1}_{i + 1}.bias"] = torch.zeros(out)
            in_ch = out
    return state


def load_encoder(
    name: str,
    layers: Sequence[str],
    *,
    pooling: str = "max",
    progress: weights_io.ByteProgress | None = None,
) -> VGGEncoder:
    """Build the encoder ``name`` ("auto", "vgg16", "vgg19", "tiny", or the path of a ``.safetensors`` slice
    written by ``io.weights.write_slice``) for ``layers``.

    "auto" picks the best weights available (see ``io.weights.best_available``); "tiny" is a
    random-weight VGG-16 for tests (never for real results); a slice serves layers up to its depth.
    """
    if name.endswith(".safetensors"):  # a slice of real weights (impasto weights slice)
        state, meta = weights_io.load_slice(name)
        available = layer_names(meta["arch"])[: layer_names(meta["arch"]).index(meta["upto"].replace("conv", "relu")) + 1]
        deeper = [layer for layer in layers if layer not in available]
        if deeper:
            raise InvalidOptionError(f"encoder file {name} holds {meta['name']} up to {meta['upto']}; layer(s) "
                                     f"{', '.join(deeper)} need a deeper slice or the full weights")
        return VGGEncoder(meta["arch"], state, layers, pooling=pooling, normalization=meta["normalization"],
                          weights_name=meta["name"], weights_sha256=meta["weights_sha256"],
                          source_sha256=meta["source_sha256"], block_channels=meta["channels"])
    if name not in ENCODERS:
        raise InvalidOptionError(f"unknown encoder '{name}'; choose one of {', '.join(ENCODERS)} or an encoder slice file "
                                 f"(.safetensors).{suggest(name, ENCODERS)}")
    if name == "tiny":
        return VGGEncoder("vgg16", tiny_state("vgg16"), layers, pooling=pooling, normalization="torch",
                          weights_name="tiny", weights_sha256="random-seed-0")
    if name == "auto":
        name = weights_io.best_available()
    loaded = weights_io.load(name, progress)
    return VGGEncoder(
        loaded.source.arch, loaded.state, layers, pooling=pooling,
        normalization=loaded.source.normalization, weights_name=name, weights_sha256=loaded.sha256,
        source_sha256=loaded.source.sha256,
    )
