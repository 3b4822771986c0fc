"""neural-style-pt's default loss rewritten in impasto's normalisation: which style layers really carry its style.

impasto divides each layer's loss by its target's mean square (``methods/optimization.py``), so a layer weight
means the same for every image and encoder. neural-style-pt (like Gatys et al.) divides the Gram by C*H*W and
weighs raw squared errors: content ``5 * mean((F - P)^2)`` at relu4_2, style ``100 * mean((G/(CHW) - A/(CHW))^2)``
per layer. Over one image pair both are the same kind of sum, so neural-style-pt's objective divided by its
content term's scale is impasto's objective with

    content weight 1,  style weight of layer l = (100 / C_l^2) * mean(A_l^2) / (5 * mean(P^2))

(A_l the style's Gram F F^T / (H W), P the content's relu4_2 activation, both with the same caffe VGG-16).
This prints those weights for the quality bench's pairs; the shares per layer are where
``STYLE_BLOCK_WEIGHTS`` comes from.

    IMPASTO_OFFLINE=1 PYTHONPATH=src python bench/loss_balance.py [--split dev] [--size 256]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import SPLITS, default_pairs  # noqa: E402  (the bench's own pair lists)

NSPT_CONTENT_WEIGHT = 5.0  # neural-style-pt's defaults
NSPT_STYLE_WEIGHT = 100.0
NSPT_TV_WEIGHT = 1e-3
CONTENT_LAYER = "relu4_2"
STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")


def gram(features: Tensor) -> Tensor:
    """``F F^T / (H W)`` of (1, C, H, W) features: impasto's Gram."""
    _, c, h, w = features.shape
    flat = features.reshape(c, h * w)
    return flat @ flat.t() / (h * w)


def nspt_style_loss(features: Tensor, style_features: Tensor) -> Tensor:
    """One layer of neural-style-pt's style loss, written as it computes it (Gram / nelement, MSE, strength)."""
    def g(f: Tensor) -> Tensor:
        flat = f.reshape(f.shape[1], -1)
        return flat @ flat.t() / f.numel()
    return NSPT_STYLE_WEIGHT * (g(features) - g(style_features)).pow(2).mean()


def nspt_content_loss(features: Tensor, content_features: Tensor) -> Tensor:
    return NSPT_CONTENT_WEIGHT * (features - content_features).pow(2).mean()


def equivalent_weights(content: dict[str, Tensor], style: dict[str, Tensor],
                       layers: Sequence[str] = STYLE_LAYERS) -> dict[str, float]:
    """impasto's per-layer style weights (content weight 1) that give neural-style-pt's objective on this pair.

    impasto's terms: content ``mean((F - P)^2) / mean(P^2)``, style ``mean((G - A)^2) / mean(A^2)``.
    """
    scale = NSPT_CONTENT_WEIGHT * content[CONTENT_LAYER].pow(2).mean().item()
    out = {}
    for layer in layers:
        a = gram(style[layer])
        channels = a.shape[-1]
        out[layer] = NSPT_STYLE_WEIGHT / channels ** 2 * a.pow(2).mean().item() / scale
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="dev", choices=SPLITS, help="the quality bench's pair list (default dev)")
    parser.add_argument("--size", type=int, default=256, help="long side of both images (default 256)")
    args = parser.parse_args(argv)

    from impasto.features.vgg import load_encoder
    from impasto.io.image import load_image
    from impasto.ops.geometry import resize, size_for_long_side

    torch.set_num_threads(1)
    encoder = load_encoder("vgg16", [CONTENT_LAYER, *STYLE_LAYERS])

    def features(path: Path) -> dict[str, Tensor]:
        image = load_image(path)
        with torch.no_grad():
            return encoder(resize(image, size_for_long_side(image.shape[-2], image.shape[-1], args.size)))

    print(f"neural-style-pt's defaults as impasto weights (content 1), {args.split} pairs at {args.size} px")
    print(f"{'pair':58} " + " ".join(f"{layer:>8}" for layer in STYLE_LAYERS) + f" {'total':>8}  shares %")
    for pair in default_pairs(args.split):
        weights = equivalent_weights(features(pair.content), features(pair.style))
        total = sum(weights.values())
        shares = " ".join(f"{100 * w / total:.2g}" for w in weights.values())
        print(f"{pair.id:58} " + " ".join(f"{w:8.3g}" for w in weights.values()) + f" {total:8.3g}  {shares}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
