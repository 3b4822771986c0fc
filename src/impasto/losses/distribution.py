"""Style losses that compare whole feature distributions, not only their first two moments.

- ``histogram_loss`` (Risser, Wilmot & Barnes 2017, "Stable and controllable neural texture synthesis
  and style transfer using histogram losses"): each channel's values are matched to the style's
  histogram. Remapping a channel to the style's histogram is monotone, so the squared distance to the
  remapped values is the squared distance between the sorted values and the style's quantiles: the
  1-D Wasserstein-2 distance per channel, computed here by sorting.
- ``sliced_wasserstein_loss`` (Heitz, Vanhoey, Chambon & Belcour 2021, "A sliced Wasserstein loss for
  neural texture synthesis"): the same 1-D distance along projections of the C-dimensional features,
  which sees the joint distribution that per-channel histograms miss. The projections are fixed per
  channel count (seeded), so the objective is deterministic for L-BFGS and every style shares them.
- ``centered_gram_loss`` (Li, Wang, Liu & Hou 2017, "Demystifying neural style transfer"): the Gram of
  mean-subtracted features, i.e. the covariance; the means are left free.

Several styles: the weighted mean of quantile functions is the 1-D Wasserstein barycentre, and the
squared distance to it has the same minimiser as the weighted sum of squared distances, so these
losses blend linearly and exactly (as Gram and mean/std do).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from impasto.ops.stats import mean_cov, quantile_values

QUANTILES = 4096  # points of the style's quantile function kept as its target: the same for every image size,
# so the targets of several styles stack (conditional training); fewer values are interpolated up


def _flat(features: Tensor) -> Tensor:
    n, c = features.shape[:2]
    return features.to(torch.promote_types(features.dtype, torch.float32)).reshape(n, c, -1)


def sorted_distance(values: Tensor, target_quantiles: Tensor) -> Tensor:
    """Mean squared difference between sorted ``values`` (N, P, M) and the target quantile function
    (N or 1, P, K), resampled to M points: the squared 1-D Wasserstein-2 distance per row, averaged."""
    m = values.shape[-1]
    target = quantile_values(target_quantiles.to(values.dtype), m)  # sorted already: resampling keeps order
    ordered, _ = values.sort(dim=-1)
    return (ordered - target).pow(2).mean()


def histogram_stats(features: Tensor, k: int = QUANTILES) -> tuple[Tensor]:
    """Per-channel quantiles (N, C, k) of the features."""
    return (quantile_values(_flat(features), k),)


def histogram_loss(features: Tensor, target_quantiles: Tensor) -> Tensor:
    return sorted_distance(_flat(features), target_quantiles)


@functools.lru_cache(maxsize=32)
def _directions_cached(channels: int, count: int, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    d = torch.randn(count, channels, generator=gen, dtype=torch.float64)
    return d / d.norm(dim=1, keepdim=True)


def projections(channels: int, count: int | None = None, seed: int = 0) -> Tensor:
    """(count, channels) unit directions, the same for the same arguments (default count: channels)."""
    return _directions_cached(channels, count or channels, seed)


def _project(features: Tensor) -> Tensor:
    flat = _flat(features)
    return projections(flat.shape[1]).to(flat.dtype) @ flat  # (N, P, M)


def sliced_stats(features: Tensor, k: int = QUANTILES) -> tuple[Tensor]:
    """Quantiles (N, P, k) of the features projected on ``projections(C)``."""
    return (quantile_values(_project(features), k),)


def sliced_wasserstein_loss(features: Tensor, target_quantiles: Tensor) -> Tensor:
    return sorted_distance(_project(features), target_quantiles)


def centered_gram_stats(features: Tensor) -> tuple[Tensor]:
    return (mean_cov(_flat(features).unsqueeze(-1))[1],)


def centered_gram_loss(features: Tensor, target_cov: Tensor) -> Tensor:
    return (mean_cov(_flat(features).unsqueeze(-1))[1] - target_cov).pow(2).mean()


class _TargetLoss(nn.Module):
    """A loss against a target computed once and kept as a buffer."""

    fn = staticmethod(histogram_loss)

    def __init__(self, target: Tensor) -> None:
        super().__init__()
        self.register_buffer("target", target.detach().clone())

    def forward(self, features: Tensor) -> Tensor:
        return self.fn(features, self.target)


class HistogramLoss(_TargetLoss):
    fn = staticmethod(histogram_loss)


class SlicedWassersteinLoss(_TargetLoss):
    fn = staticmethod(sliced_wasserstein_loss)


class CenteredGramLoss(_TargetLoss):
    fn = staticmethod(centered_gram_loss)
