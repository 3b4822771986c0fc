"""Feature statistics: Gram matrices, per-channel mean/std, mean/covariance and PSD square roots.

All functions take feature maps ``(N, C, H, W)`` and work in the input's dtype unless stated.
"""

from __future__ import annotations

import torch
from torch import Tensor


def gram_matrix(features: Tensor) -> Tensor:
    """Gram matrix ``F F^T / M`` with ``M = H * W`` -> ``(N, C, C)``.

    Normalised by the number of positions so that images of any size give comparable
    targets (Gatys et al. use the unnormalised ``F F^T``; see ``losses.style`` for how the
    loss scale relates to theirs).
    """
    n, c, h, w = features.shape
    flat = features.reshape(n, c, h * w)
    return torch.bmm(flat, flat.transpose(1, 2)) / (h * w)


def mean_std(features: Tensor, eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """Per-channel mean and standard deviation -> two ``(N, C)`` tensors."""
    n, c = features.shape[:2]
    flat = features.reshape(n, c, -1)
    mean = flat.mean(dim=2)
    std = (flat.var(dim=2, unbiased=False) + eps).sqrt()
    return mean, std


def mean_cov(features: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean ``(N, C)`` and covariance ``(N, C, C)`` (biased, over positions)."""
    n, c = features.shape[:2]
    flat = features.reshape(n, c, -1)
    mean = flat.mean(dim=2)
    centred = flat - mean.unsqueeze(2)
    cov = torch.bmm(centred, centred.transpose(1, 2)) / flat.shape[2]
    return mean, cov


def sqrtm_psd(matrix: Tensor, eps: float = 1e-8) -> Tensor:
    """Symmetric PSD square root via eigendecomposition (eigenvalues floored at ``eps``)."""
    vals, vecs = torch.linalg.eigh(matrix)
    vals = vals.clamp_min(eps).sqrt()
    return vecs @ torch.diag_embed(vals) @ vecs.transpose(-1, -2)


def adain(content: Tensor, style: Tensor, eps: float = 1e-5) -> Tensor:
    """Adaptive instance norm (Huang & Belongie 2017): content features (N, C, H, W) with the
    per-channel mean and std of ``style`` (N or 1, C, H', W')."""
    c_mean, c_std = mean_std(content, eps)
    s_mean, s_std = mean_std(style, eps)
    normalised = (content - c_mean[..., None, None]) / c_std[..., None, None]
    return normalised * s_std[..., None, None] + s_mean[..., None, None]


def _eig_floor(cov: Tensor, rel_floor: float, abs_floor: float) -> tuple[Tensor, Tensor, Tensor]:
    """eigh of a symmetric matrix with a mask of the eigenvalues above max(rel_floor * largest, abs_floor)."""
    vals, vecs = torch.linalg.eigh((cov + cov.transpose(-1, -2)) / 2)
    threshold = torch.clamp(vals.max(dim=-1, keepdim=True).values * rel_floor, min=abs_floor)
    return vals, vecs, vals > threshold


def whiten_colour(content: Tensor, style: Tensor, alpha: float = 1.0, rel_floor: float = 1e-5,
                  abs_floor: float = 1e-8) -> Tensor:
    """Whitening and colouring transform (Li et al. 2017) of (C, M) feature matrices, float64 inside.

    ``content`` (C, M) and ``style`` (C, M'): the result has the style's mean and covariance in the
    directions the content varies in, blended with the content by ``alpha``. Eigenvalues below
    ``max(rel_floor * largest, abs_floor)`` are dropped (not inverted), so flat, one-colour or
    rank-deficient inputs give finite results; a constant content becomes the style mean.
    """
    dtype = content.dtype
    fc, fs = content.double(), style.double()
    mc, ms = fc.mean(dim=1, keepdim=True), fs.mean(dim=1, keepdim=True)
    fc0, fs0 = fc - mc, fs - ms
    cov_c = fc0 @ fc0.T / max(1, fc.shape[1] - 1)
    cov_s = fs0 @ fs0.T / max(1, fs.shape[1] - 1)
    vals_c, vecs_c, keep_c = _eig_floor(cov_c, rel_floor, abs_floor)
    inv_sqrt = torch.where(keep_c, vals_c.clamp_min(abs_floor).rsqrt(), torch.zeros_like(vals_c))
    whitened = vecs_c @ (inv_sqrt[:, None] * (vecs_c.T @ fc0))
    vals_s, vecs_s, keep_s = _eig_floor(cov_s, rel_floor, abs_floor)
    root = torch.where(keep_s, vals_s.clamp_min(0).sqrt(), torch.zeros_like(vals_s))
    coloured = vecs_s @ (root[:, None] * (vecs_s.T @ whitened)) + ms
    return (alpha * coloured + (1 - alpha) * fc).to(dtype)
