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

from impasto.errors import InvalidOptionError
from impasto.losses.style import gram_loss, positions_last
from impasto.ops.stats import derived, mean_cov, paired_differences, quantile_values

QUANTILES = 4096  # points of the style's quantile function kept as its target: the same for every image size,
# so the targets of several styles stack (conditional training); fewer values are interpolated up


def _flat(features: Tensor) -> Tensor:
    n, c = features.shape[:2]
    return features.to(torch.promote_types(features.dtype, torch.float32)).reshape(n, c, -1)


class _SortedDistanceFn(torch.autograd.Function):
    """``sorted_distance`` with its gradient made in the forward pass: the pairing of each value with the target at
    its rank is a constant of the step, so the gradient is ``2 (v - t_rank(v)) / n``, and the pairing, the squares
    and that difference come out of one pass of ``ops.stats.paired_differences`` (the values' own precision:
    bf16 features are ranked by 16-bit keys). The gradient keeps the values' memory layout."""

    @staticmethod
    def forward(ctx, values: Tensor, target_quantiles: Tensor) -> Tensor:  # type: ignore[override]
        n, p = values.shape[:2]
        rows = values.detach().reshape(n * p, -1)
        acc = torch.promote_types(values.dtype, torch.float32)
        targets = _resampled_cached(target_quantiles, rows.shape[1], acc)
        diff, sq = paired_differences(rows, targets.reshape(-1, rows.shape[1]))
        ctx.save_for_backward(diff.to(values.device), values)  # the values only for their layout
        return (sq.sum() / values.numel()).to(acc).to(values.device)

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        diff, values = ctx.saved_tensors
        grad = torch.empty_like(values)  # the values' strides: channels-last stays channels-last
        torch.mul(diff.view(values.shape), grad_out * 2.0 / diff.numel(), out=grad)  # one pass: scale, cast, lay out
        return grad, None


def sorted_distance(values: Tensor, target_quantiles: Tensor) -> Tensor:
    """Mean squared difference between sorted ``values`` (N, P, ...) (each (n, p) the values of one distribution,
    any layout) and the target quantile function (N or 1, P, K), resampled to as many points: the squared
    1-D Wasserstein-2 distance per row, averaged.

    Computed without differentiating through a sort: each value is paired with the target quantile at
    its rank (the pairing is a constant of the step), and the loss is the mean squared difference of the
    pairs, which has the same value and, away from ties, the same gradient 2 (v - t_rank(v)) / n.
    """
    if values.shape[1] != target_quantiles.shape[1] or target_quantiles.shape[0] not in (1, values.shape[0]):
        raise InvalidOptionError(f"values {tuple(values.shape)} do not match quantile target {tuple(target_quantiles.shape)}")
    return _SortedDistanceFn.apply(values, target_quantiles)


def _resampled_cached(quantiles: Tensor, m: int, dtype: torch.dtype) -> Tensor:
    """``_resampled(quantiles.to(dtype), m)``, contiguous, kept while the target is unchanged (a loss's target is a
    buffer used at every step, and resampling 4096 quantiles to 175k ranks per channel at every step cost a fifth
    of the histogram loss)."""
    return derived(quantiles, "resampled", lambda q: _resampled(q.to(dtype), m).contiguous(), m, dtype)


def _resampled(quantiles: Tensor, m: int) -> Tensor:
    """A sorted quantile function (..., K) sampled at m evenly spaced ranks, linearly interpolated
    (``ops.stats.quantile_values`` for input that is sorted already)."""
    k = quantiles.shape[-1]
    if k == m:
        return quantiles
    if k == 1:
        return quantiles.expand(*quantiles.shape[:-1], m)
    flat = quantiles.reshape(-1, 1, k)
    out = torch.nn.functional.interpolate(flat, size=m, mode="linear", align_corners=True)
    return out.reshape(*quantiles.shape[:-1], m)


def histogram_stats(features: Tensor, k: int = QUANTILES) -> tuple[Tensor]:
    """Per-channel quantiles (N, C, k) of the features."""
    return (quantile_values(_flat(features), k),)


def histogram_loss(features: Tensor, target_quantiles: Tensor) -> Tensor:
    return sorted_distance(features, target_quantiles)


@functools.lru_cache(maxsize=32)
def _directions_cached(channels: int, count: int, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    d = torch.randn(count, channels, generator=gen, dtype=torch.float64)
    return d / d.norm(dim=1, keepdim=True)


def projections(channels: int, count: int | None = None, seed: int = 0) -> Tensor:
    """(count, channels) unit directions, the same for the same arguments (default count: channels)."""
    return _directions_cached(channels, count or channels, seed)


def _project(features: Tensor) -> Tensor:
    """The features (N, C, H, W) on ``projections(C)`` -> (N, C, H W): bf16 and fp16 features in their precision
    (one product the size of Gram's, and values that rank by 16-bit keys), others in float32 at least."""
    n, c = features.shape[:2]
    f = features if features.dtype in (torch.bfloat16, torch.float16) else _flat(features).reshape(features.shape)
    d = projections(c).to(f)
    if positions_last(f):  # (N, H W, C)
        flat = f.permute(0, 2, 3, 1).reshape(n, -1, c)
        parts = [d @ x.t() for x in flat]  # one mm per sample: bmm copies a transposed bf16 operand first
    else:
        parts = [d @ x for x in f.reshape(n, c, -1)]
    return parts[0].unsqueeze(0) if n == 1 else torch.stack(parts)


def sliced_stats(features: Tensor, k: int = QUANTILES) -> tuple[Tensor]:
    """Quantiles (N, P, k) of the features projected on ``projections(C)`` (in the features' precision, as the loss
    projects them), float32 at least."""
    return (quantile_values(_flat(_project(features)), k),)


def sliced_wasserstein_loss(features: Tensor, target_quantiles: Tensor) -> Tensor:
    return sorted_distance(_project(features), target_quantiles)


def centered_gram_stats(features: Tensor) -> tuple[Tensor]:
    return (mean_cov(_flat(features).unsqueeze(-1))[1],)


def centered_gram_loss(features: Tensor, target_cov: Tensor) -> Tensor:
    """The Gram loss of the mean-subtracted features (their covariance over positions): gram_loss's hand-written
    backward and products in the features' precision (bf16 under mixed precision), like Gram's."""
    mean = features.mean(dim=(2, 3), keepdim=True, dtype=torch.promote_types(features.dtype, torch.float32))
    return gram_loss(features - mean.to(features.dtype), target_cov)


class _TargetLoss(nn.Module):
    """A loss against a target computed once and kept as buffers: one tensor (``target``) or a tuple
    (``target0``, ``target1``, ...), passed to ``fn`` as it was given."""

    fn = staticmethod(histogram_loss)

    def __init__(self, target: Tensor | tuple[Tensor, ...]) -> None:
        super().__init__()
        self.single = isinstance(target, Tensor)
        parts = (target,) if self.single else tuple(target)
        names = ["target"] if self.single else [f"target{i}" for i in range(len(parts))]
        for name, t in zip(names, parts, strict=True):
            self.register_buffer(name, t.detach().clone())
        self.names = names

    def forward(self, features: Tensor) -> Tensor:
        parts = tuple(getattr(self, name) for name in self.names)
        return self.fn(features, parts[0] if self.single else parts)


class HistogramLoss(_TargetLoss):
    fn = staticmethod(histogram_loss)


class SlicedWassersteinLoss(_TargetLoss):
    fn = staticmethod(sliced_wasserstein_loss)


class CenteredGramLoss(_TargetLoss):
    fn = staticmethod(centered_gram_loss)


# ------------------------------------------------------------------------------- more Gram variants and MMD

SHIFT = 4  # positions between a feature and its shifted copy (shifted Gram)
PYRAMID = 3  # levels of the feature pyramid (multi-scale Gram): full, 1/2, 1/4
MMD_SAMPLES = 1024  # positions sampled (fixed seed) for the Gaussian-kernel MMD


def shifted_gram_stats(features: Tensor, shift: int = SHIFT) -> tuple[Tensor, Tensor]:
    """Cross-correlations of the features with copies shifted ``shift`` positions right and down
    (Berger & Memisevic 2017, "Incorporating long-range consistency in CNN-based texture generation"):
    (N, C, C) each, normalised by the overlapping positions. Maps smaller than the shift use shift 1."""
    return _shifted_grams(features.to(torch.promote_types(features.dtype, torch.float32)), shift)


def _s(shift: int, extent: int) -> int:
    return shift if extent > shift else max(1, extent - 1) if extent > 1 else 0


def _shifted_grams(f: Tensor, shift: int = SHIFT) -> tuple[Tensor, Tensor]:
    """The two shifted cross-correlations of ``f`` in its own precision (the products are most of the cost)."""
    h, w = f.shape[-2:]
    out = []
    for a, b in ((f[..., :, : w - _s(shift, w)], f[..., :, _s(shift, w):]), (f[..., : h - _s(shift, h), :], f[..., _s(shift, h):, :])):
        n, c = a.shape[:2]
        fa, fb = a.reshape(n, c, -1), b.reshape(n, c, -1)
        out.append(fa @ fb.transpose(1, 2) / fa.shape[-1])
    return out[0], out[1]


class _ShiftedGramLossFn(torch.autograd.Function):
    """``shifted_gram_loss`` with a hand-written backward, in the features' precision and memory layout.

    With the positions flattened row by row (Z, M x C), the pairs (p, p + s w) of the vertical shift are two
    row blocks of Z, and the pairs of the horizontal shift are (p, p + s) less the s positions at the end of each
    row that wrap onto the next one: every product is on views of the features (autograd through the slices
    copied each of them and built four full-size zero gradients). Forward: 2 products; backward: 4, each
    accumulated into its block of the gradient.
    """

    @staticmethod
    def forward(ctx, features: Tensor, target_h: Tensor, target_v: Tensor, shift: int) -> Tensor:  # type: ignore[override]
        n, c, h, w = features.shape
        acc = torch.promote_types(features.dtype, torch.float32)
        sh, sv = _s(shift, w), _s(shift, h)
        diffs = []
        for k, (target, step, pairs) in enumerate(((target_h, sh, h * (w - sh)), (target_v, sv * w, (h - sv) * w))):
            grams = []
            for i, z in enumerate(_positions_major(features)):
                g = z[: h * w - step].t() @ z[step:]
                if k == 0 and sh and h > 1:  # the pairs that wrap from the end of one row to the start of the next
                    a = features[i, :, : h - 1, w - sh:].reshape(c, -1)
                    b = features[i, :, 1:, :sh].reshape(c, -1)
                    g = g - a @ b.t()
                grams.append(g.to(acc) / pairs)
            diffs.append(torch.stack(grams) - target.to(acc).expand(n, -1, -1))
        ctx.save_for_backward(features, *diffs)
        ctx.shift = shift
        return sum(d.pow(2).mean() for d in diffs) / 2

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        features, diff_h, diff_v = ctx.saved_tensors
        n, c, h, w = features.shape
        sh, sv = _s(ctx.shift, w), _s(ctx.shift, h)
        # in the layout _positions_major reads (its views of the gradient are written in place)
        grad = torch.zeros_like(features, memory_format=torch.channels_last if positions_last(features)
                                else torch.contiguous_format)
        scale = grad_out / (n * c * c)  # d/dG of mean((G - T)^2) / 2, per shift
        for k, (diff, step, pairs) in enumerate(((diff_h, sh, h * (w - sh)), (diff_v, sv * w, (h - sv) * w))):
            e = (diff * (scale / pairs)).to(features.dtype)
            for i, (z, gz) in enumerate(zip(_positions_major(features), _positions_major(grad))):
                m = h * w - step
                gz[:m].addmm_(z[step:], e[i].t())  # dG/dA = B E^T, dG/dB = A E
                gz[step:].addmm_(z[:m], e[i])
                if k == 0 and sh and h > 1:
                    a = features[i, :, : h - 1, w - sh:]
                    b = features[i, :, 1:, :sh]
                    grad[i, :, : h - 1, w - sh:] -= torch.einsum("cd,dhw->chw", e[i], b)
                    grad[i, :, 1:, :sh] -= torch.einsum("dc,dhw->chw", e[i], a)
        return grad, None, None, None


def _positions_major(features: Tensor) -> list[Tensor]:
    """Each sample's (H W, C) matrix of features as a view (channels-last: contiguous; else a transposed view)."""
    n, c, h, w = features.shape
    if positions_last(features):
        return list(features.permute(0, 2, 3, 1).reshape(n, h * w, c))
    return [f.t() for f in features.reshape(n, c, h * w)]



def shifted_gram_loss(features: Tensor, target: tuple[Tensor, ...], shift: int = SHIFT) -> Tensor:
    """Against ``shifted_gram_stats``' target; the products in the features' precision (bf16 under mixed
    precision, as Gram's), the differences in float32 at least."""
    return _ShiftedGramLossFn.apply(features, target[0], target[1], shift)


def pyramid_gram_stats(features: Tensor, levels: int = PYRAMID) -> tuple[Tensor, ...]:
    """Gram matrices of the features average-pooled by 1, 2, 4, ... (coarser levels see larger structures;
    a multi-scale Gram after Snelgrove 2017 / Zhang & Dana's multi-scale statistics). Levels that would be
    smaller than 1 x 1 repeat the last one."""
    f = features.to(torch.promote_types(features.dtype, torch.float32))
    out = []
    for _ in range(levels):
        n, c = f.shape[:2]
        flat = f.reshape(n, c, -1)
        out.append(flat @ flat.transpose(1, 2) / flat.shape[-1])
        if min(f.shape[-2:]) >= 2:
            f = torch.nn.functional.avg_pool2d(f, 2)
    return tuple(out)


def pyramid_gram_loss(features: Tensor, target: tuple[Tensor, ...]) -> Tensor:
    """The Gram loss at each level of ``pyramid_gram_stats``' pyramid, averaged (gram_loss's hand-written
    backward and products in the features' precision, like Gram's)."""
    f, total = features, features.new_zeros((), dtype=torch.promote_types(features.dtype, torch.float32))
    for t in target:
        total = total + gram_loss(f, t)
        if min(f.shape[-2:]) >= 2:
            f = torch.nn.functional.avg_pool2d(f, 2)
    return total / len(target)


@functools.lru_cache(maxsize=32)
def _sample_index(m: int, count: int) -> Tensor:
    return torch.randperm(m, generator=torch.Generator().manual_seed(m))[:count]


def _sample_positions(features: Tensor, count: int = MMD_SAMPLES) -> Tensor:
    """(N, C, H, W) -> (N, C, min(H W, count)) positions chosen with a fixed seed (the same for the same H W),
    float32 at least; only the chosen positions are converted (a channels-last map is not copied whole)."""
    n, c = features.shape[:2]
    flat = features.reshape(n, c, -1)  # a view for both memory layouts
    m = flat.shape[-1]
    if m > count:
        flat = flat.index_select(2, _sample_index(m, count).to(flat.device))
    return flat.to(torch.promote_types(flat.dtype, torch.float32))


def _gaussian_mean(x: Tensor, y: Tensor, gamma: Tensor) -> Tensor:
    """Mean of exp(-gamma ||x_i - y_j||^2) over positions of x (N, C, A) and y (N, C, B)."""
    d = (x.pow(2).sum(1).unsqueeze(2) + y.pow(2).sum(1).unsqueeze(1) - 2 * x.transpose(1, 2) @ y).clamp_min(0)
    return torch.exp(-gamma.view(-1, 1, 1) * d).mean(dim=(1, 2))


def mmd_stats(features: Tensor) -> tuple[Tensor, Tensor]:
    """Sampled positions (N, C, S) of the style and the kernel width 1 / median squared distance
    (a fixed bandwidth per style, so the loss is deterministic)."""
    s = _sample_positions(features)
    d = (s.pow(2).sum(1).unsqueeze(2) + s.pow(2).sum(1).unsqueeze(1) - 2 * s.transpose(1, 2) @ s).clamp_min(0)
    gamma = 1.0 / d.flatten(1).median(dim=1).values.clamp_min(1e-8)
    return s, gamma


def mmd_gaussian_loss(features: Tensor, target: tuple[Tensor, Tensor]) -> Tensor:
    """Squared MMD with a Gaussian kernel between the result's and the style's sampled positions
    (Li, Wang, Liu & Hou 2017: style transfer as distribution alignment). Zero for the same distribution."""
    style, gamma = target
    x = _sample_positions(features)
    style = style.to(x.dtype).expand(x.shape[0], -1, -1)
    gamma = gamma.to(x.dtype).expand(x.shape[0])
    mmd = _gaussian_mean(x, x, gamma) + _gaussian_mean(style, style, gamma) - 2 * _gaussian_mean(x, style, gamma)
    return mmd.mean()


class ShiftedGramLoss(_TargetLoss):
    fn = staticmethod(shifted_gram_loss)


class PyramidGramLoss(_TargetLoss):
    fn = staticmethod(pyramid_gram_loss)


class MMDGaussianLoss(_TargetLoss):
    fn = staticmethod(mmd_gaussian_loss)
