"""Style losses on feature statistics: Gram, mean/std (AdaIN/BN statistics) and mean+covariance (W2).

Normalisation (documented because weights depend on it): with ``G = F F^T / M`` (see
``ops.stats.gram_matrix``) the Gram loss is ``mean_ij (G - A)^2``, which equals
``4 E_l`` of Gatys et al. (``E_l = ||F F^T - S S^T||^2 / (4 N_l^2 M_l^2)``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from impasto.errors import InvalidOptionError
from impasto.ops.stats import derived, mean_std, sqrtm_psd


def positions_last(features: Tensor) -> bool:
    """Whether (N, C, H, W) features are stored channels-last (positions major), not in torch's default layout."""
    return features.is_contiguous(memory_format=torch.channels_last) and not features.is_contiguous()


def _flat_positions_last(features: Tensor) -> tuple[Tensor, bool]:
    """(N, M, C) view of the features when channels-last, else (N, C, M); flag says which."""
    n, c, h, w = features.shape
    if positions_last(features):
        return features.permute(0, 2, 3, 1).reshape(n, h * w, c), True
    return features.reshape(n, c, h * w), False


def _self_products(flat: Tensor, positions_last: bool) -> list[Tensor]:
    """``F F^T`` (C, C) of each sample of ``_flat_positions_last``'s view, in its dtype. One mm per sample: bmm on a
    transposed bf16 view copies it first (measured 10x slower at relu1_1)."""
    return [f.t() @ f if positions_last else f @ f.t() for f in flat]


def _times_features(flat: Tensor, positions_last: bool, d: Tensor, shape: torch.Size) -> Tensor:
    """``D F`` for each sample (D symmetric (N, C, C), in F's dtype), shaped ``shape`` in F's memory layout
    (channels-last stays channels-last)."""
    n, c, h, w = shape
    parts = [f @ di if positions_last else di @ f for f, di in zip(flat, d)]
    out = parts[0].unsqueeze(0) if n == 1 else torch.stack(parts)  # no copy for the usual batch of one
    return out.reshape(n, h, w, c).permute(0, 3, 1, 2) if positions_last else out.reshape(n, c, h, w)


def _at_least_fp32(x: Tensor) -> Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


class _GramLossFn(torch.autograd.Function):
    """``mean((F F^T / M - A)^2)`` with a hand-written backward.

    Autograd through ``bmm(F, F^T)`` costs two matmuls and an add in backward; the closed form
    ``dL/dF = 4 / (N C^2 M) (G - A) F`` costs one, and keeps the gradient in the input's memory
    layout (channels-last stays channels-last). The Gram is accumulated in the input dtype
    (bf16 under mixed precision: 0.2 % relative error, measured) and the loss in float32.
    """

    @staticmethod
    def forward(ctx, features: Tensor, target: Tensor) -> Tensor:  # type: ignore[override]
        n, c, h, w = features.shape
        flat, positions_last = _flat_positions_last(features)
        acc = torch.promote_types(features.dtype, torch.float32)  # fp32 at least, fp64 stays fp64
        gram = torch.stack(_self_products(flat, positions_last)).to(acc) / (h * w)
        diff = gram - target.to(acc)
        ctx.save_for_backward(features, diff)
        return diff.pow(2).mean()

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        features, diff = ctx.saved_tensors
        n, c, h, w = features.shape
        scale = grad_out * 4.0 / (n * c * c * h * w)
        flat, positions_last = _flat_positions_last(features)
        # (G - A) symmetrised: G is symmetric, a user-supplied target might not be exactly.
        d = ((diff + diff.transpose(-1, -2)) * (scale / 2)).to(features.dtype)
        return _times_features(flat, positions_last, d, features.shape), None


def gram_loss(features: Tensor, target_gram: Tensor) -> Tensor:
    """Gram-matrix style loss against a precomputed target ``(N or 1, C, C)``."""
    if features.dim() != 4 or target_gram.shape[-1] != features.shape[1]:
        raise InvalidOptionError(f"features {tuple(features.shape)} do not match Gram target {tuple(target_gram.shape)}")
    return _GramLossFn.apply(features, target_gram.expand(features.shape[0], -1, -1))


def mean_std_loss(features: Tensor, target_mean: Tensor, target_std: Tensor) -> Tensor:
    """Squared error of per-channel mean and std (the 'BN statistics' loss; AdaIN's style loss)."""
    mean, std = mean_std(_at_least_fp32(features))
    return (mean - target_mean).pow(2).mean() + (std - target_std).pow(2).mean()


class _W2LossFn(torch.autograd.Function):
    """``w2_loss`` with a hand-written backward; the covariance's product in the features' precision (bf16 under
    mixed precision, as Gram's), everything of size C x C in float64.

    With ``S = C_s^1/2`` (kept per target) and ``S C S = V diag(l) V^T``, the Bures term's gradient is
    ``dL/dC = (I - S V diag(l^-1/2) V^T S) / c`` (eigenvalues at the floor contribute nothing, as through the
    clamp before), so ``dL/dF = (2 dL/dC (F - mu) + dL/dmu) / M``: one eigendecomposition and one product of
    the features' size per call, where autograd through float64 features took two of each and an ``eigh`` more.
    """

    @staticmethod
    def forward(ctx, features: Tensor, target_mean: Tensor, target_cov: Tensor, eps: float) -> Tensor:  # type: ignore[override]
        n, c, h, w = features.shape
        m = h * w
        mean = features.mean(dim=(2, 3), dtype=torch.promote_types(features.dtype, torch.float32))
        rounded = mean.to(features.dtype)
        centred = features - rounded[..., None, None]  # the features' layout; bf16 keeps the centred values' precision
        delta = (mean - rounded.to(mean.dtype)).double()  # what centring by the rounded mean left: cov needs it out
        flat, positions_last = _flat_positions_last(centred)
        cov = torch.stack(_self_products(flat, positions_last)).double() / m - delta.unsqueeze(2) * delta.unsqueeze(1)
        root_s = derived(target_cov, "sqrtm_psd", lambda t: sqrtm_psd(t.double(), eps), eps).expand(n, -1, -1)
        middle = root_s @ cov @ root_s
        vals, vecs = torch.linalg.eigh((middle + middle.transpose(-1, -2)) / 2)
        roots = vals.clamp_min(eps).sqrt()
        mean_term = (mean.double() - target_mean.double()).pow(2).sum(-1)
        trace = cov.diagonal(dim1=-2, dim2=-1).sum(-1) + target_cov.double().diagonal(dim1=-2, dim2=-1).sum(-1)
        loss = ((mean_term + trace - 2 * roots.sum(-1)) / c).mean()
        if ctx.needs_input_grad[0]:
            inv = torch.where(vals > eps, 1 / roots, torch.zeros_like(roots))
            transport = root_s @ (vecs * inv.unsqueeze(-2)) @ vecs.transpose(-1, -2) @ root_s
            d_cov = (torch.eye(c, dtype=torch.float64, device=transport.device) - transport) / c
            d_cov = (d_cov + d_cov.transpose(-1, -2)) / 2
            d_mean = 2 * (mean.double() - target_mean.double()) / c
            ctx.save_for_backward(centred, d_cov, d_mean - 2 * (d_cov @ delta.unsqueeze(2)).squeeze(2))
        return loss.to(torch.promote_types(features.dtype, torch.float32))

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        centred, d_cov, d_shift = ctx.saved_tensors
        n, c, h, w = centred.shape
        scale = grad_out.double() / (n * h * w)
        flat, positions_last = _flat_positions_last(centred)
        grad = _times_features(flat, positions_last, (2 * scale * d_cov).to(centred.dtype), centred.shape)
        return grad + (scale * d_shift).to(centred.dtype)[..., None, None], None, None, None


def w2_loss(features: Tensor, target_mean: Tensor, target_cov: Tensor, eps: float = 1e-8) -> Tensor:
    """Squared 2-Wasserstein distance between Gaussians fitted to the features (mean + Bures term).

    ``||mu - mu_s||^2 + tr(C + C_s - 2 (C_s^1/2 C C_s^1/2)^1/2)``, divided by the channel count; float32 at least
    (float64 for float64 features).
    """
    c = features.shape[1]
    if features.dim() != 4 or target_mean.shape[-1] != c or target_cov.shape[-2:] != (c, c):
        raise InvalidOptionError(f"features {tuple(features.shape)} do not match the W2 target: mean "
                                 f"{tuple(target_mean.shape)}, covariance {tuple(target_cov.shape)}")
    return _W2LossFn.apply(features, target_mean, target_cov, eps)


class GramLoss(nn.Module):
    """``gram_loss`` against a target Gram computed once (buffer, never mutated)."""

    def __init__(self, target_gram: Tensor) -> None:
        super().__init__()
        self.register_buffer("target", target_gram.detach().float().clone())

    def forward(self, features: Tensor) -> Tensor:
        return gram_loss(features, self.target)


class MeanStdLoss(nn.Module):
    def __init__(self, target_mean: Tensor, target_std: Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", target_mean.detach().float().clone())
        self.register_buffer("std", target_std.detach().float().clone())

    def forward(self, features: Tensor) -> Tensor:
        return mean_std_loss(features, self.mean, self.std)


class W2Loss(nn.Module):
    def __init__(self, target_mean: Tensor, target_cov: Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", target_mean.detach().clone())
        self.register_buffer("cov", target_cov.detach().clone())

    def forward(self, features: Tensor) -> Tensor:
        return w2_loss(features, self.mean, self.cov)

