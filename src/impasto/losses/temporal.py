"""Temporal consistency loss for video (Ruder, Dosovitskiy & Brox 2016).

``L_temporal(x, w, c) = (1/D) sum_k c_k (x_k - w_k)^2`` with D = W*H*C: x the frame being optimised,
w an earlier frame's result warped onto it by the optical flow, c in [0, 1] per pixel (0 where the flow
is not to be trusted: disocclusions, motion boundaries). The long-term form sums this over earlier
frames j in J with the weights ``ops.flow.long_term_weights`` gives.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from impasto.errors import InvalidOptionError


def temporal_loss(image: Tensor, warped: Tensor, weights: Tensor) -> Tensor:
    """(1/D) sum c (x - w)^2 for (1, C, H, W) ``image`` and ``warped`` and (1, 1, H, W) ``weights`` c."""
    if image.shape != warped.shape:
        raise InvalidOptionError(f"image {tuple(image.shape)} and warped frame {tuple(warped.shape)} differ in shape")
    if weights.shape[-2:] != image.shape[-2:] or weights.shape[1] != 1:
        raise InvalidOptionError(f"weights must be (1, 1, H, W) of the image's size, got {tuple(weights.shape)}")
    return (weights * (image - warped) ** 2).mean()  # the mean over C*H*W is the 1/D sum


class TemporalLoss(nn.Module):
    """The (long-term) temporal loss with its targets fixed once: ``pairs`` of (warped earlier result, weights c);
    ``forward(x)`` is the sum of ``temporal_loss`` over them."""

    def __init__(self, pairs: Sequence[tuple[Tensor, Tensor]]) -> None:
        super().__init__()
        for k, (warped, weights) in enumerate(pairs):
            self.register_buffer(f"warped_{k}", warped.detach().clone())
            self.register_buffer(f"weights_{k}", weights.detach().clone())
        self.count = len(pairs)

    def forward(self, image: Tensor) -> Tensor:
        total = image.new_zeros(())
        for k in range(self.count):
            warped, weights = getattr(self, f"warped_{k}"), getattr(self, f"weights_{k}")
            total = total + temporal_loss(image, warped.to(image.dtype), weights.to(image.dtype))
        return total


def warping_error(frame: Tensor, warped_previous: Tensor, weights: Tensor) -> float:
    """Lai et al. (2018) warping error of one frame: the c-weighted mean squared difference between a
    stylised frame and its warped stylised predecessor, over the pixels where c > 0."""
    covered = float(weights.sum())
    if covered == 0:
        return 0.0
    diff = ((frame - warped_previous) ** 2).mean(1, keepdim=True)
    return float((weights * diff).sum() / covered)
