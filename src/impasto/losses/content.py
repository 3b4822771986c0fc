"""Feature reconstruction (content) loss."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from impasto.errors import InvalidOptionError


def content_loss(features: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """Mean squared error ``||F - P||^2 / (N_l M_l)`` (per sample, averaged over the batch).

    Gatys et al. use ``1/2 ||F - P||^2``; dividing by the element count instead keeps the
    weight independent of layer width and image size. ``weight``, broadcast against the features
    (e.g. (1, 1, H, W)), multiplies each squared error before the mean.
    """
    if features.shape != target.shape:
        raise InvalidOptionError(f"content features {tuple(features.shape)} and target {tuple(target.shape)} differ in shape")
    acc = torch.promote_types(features.dtype, torch.float32)
    error = (features.to(acc) - target.to(acc)).pow(2)
    return (error if weight is None else error * weight.to(acc)).mean()


class ContentLoss(nn.Module):
    """``content_loss`` against a fixed target stored as a buffer."""

    def __init__(self, target: Tensor) -> None:
        super().__init__()
        self.register_buffer("target", target.detach().clone())

    def forward(self, features: Tensor) -> Tensor:
        return content_loss(features, self.target)


def laplacian(image: Tensor, pool: int = 4) -> Tensor:
    """The 3x3 Laplacian of the image average-pooled by ``pool`` (per channel, no padding)."""
    x = image.to(torch.promote_types(image.dtype, torch.float32))
    if pool > 1 and min(x.shape[-2:]) >= pool:
        x = torch.nn.functional.avg_pool2d(x, pool)
    kernel = torch.tensor([[0.0, -1.0, 0.0], [-1.0, 4.0, -1.0], [0.0, -1.0, 0.0]], dtype=x.dtype, device=x.device)
    kernel = kernel.expand(x.shape[1], 1, 3, 3)
    return torch.nn.functional.conv2d(x, kernel, groups=x.shape[1])


def laplacian_loss(image: Tensor, target: Tensor, pool: int = 4) -> Tensor:
    """Squared difference of the pooled Laplacians, divided by the target's mean square
    (Li, Yang, Liu, Fang & Yang 2017, "Laplacian-steered neural style transfer": keeps the photo's fine
    edges, which relu4_2 alone lets the style wash out). ``target`` is ``laplacian(content, pool)``."""
    return (laplacian(image, pool) - target).pow(2).mean() / (target.pow(2).mean() + 1e-8)


class LaplacianLoss(nn.Module):
    def __init__(self, content: Tensor, pool: int = 4) -> None:
        super().__init__()
        self.pool = pool
        self.register_buffer("target", laplacian(content.detach(), pool))

    def forward(self, image: Tensor) -> Tensor:
        return laplacian_loss(image, self.target, self.pool)
