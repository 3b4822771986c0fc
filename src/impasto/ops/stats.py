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
