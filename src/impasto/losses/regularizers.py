"""Image priors."""

from __future__ import annotations

from torch import Tensor, nn


def tv_loss(image: Tensor) -> Tensor:
    """Squared total variation: mean of squared horizontal plus mean of squared vertical differences."""
    dx = image[..., :, 1:] - image[..., :, :-1]
    dy = image[..., 1:, :] - image[..., :-1, :]
    return dx.pow(2).mean() + dy.pow(2).mean()


class TVLoss(nn.Module):
    def forward(self, image: Tensor) -> Tensor:
        return tv_loss(image)
