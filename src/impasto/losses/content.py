"""Feature reconstruction (content) loss."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from impasto.errors import InvalidOptionError


def content_loss(features: Tensor, target: Tensor) -> Tensor:
    """Mean squared error ``||F - P||^2 / (N_l M_l)`` (per sample, averaged over the batch).

    Gatys et al. use ``1/2 ||F - P||^2``; dividing by the element count instead keeps the
    weight independent of layer width and image size.
    """
    if features.shape != target.shape:
        raise InvalidOptionError(f"content features {tuple(features.shape)} and target {tuple(target.shape)} differ in shape")
    acc = torch.promote_types(features.dtype, torch.float32)
    return (features.to(acc) - target.to(acc)).pow(2).mean()


class ContentLoss(nn.Module):
    """``content_loss`` against a fixed target stored as a buffer."""

    def __init__(self, target: Tensor) -> None:
        super().__init__()
        self.register_buffer("target", target.detach().clone())

    def forward(self, features: Tensor) -> Tensor:
        return content_loss(features, self.target)
