"""Colour transforms for colour control (Gatys et al. 2017, 'Controlling perceptual factors').

Images are RGB ``(N, 3, H, W)`` in [0, 1].
"""

from __future__ import annotations

import torch
from torch import Tensor

from impasto.ops.stats import mean_cov, sqrtm_psd

# BT.601 YUV (analogue form); the inverse is exact to float precision.
_RGB_TO_YUV = torch.tensor(
    [[0.299, 0.587, 0.114], [-0.14714119, -0.28886916, 0.43601035], [0.61497538, -0.51496512, -0.10001026]]
)
_YUV_TO_RGB = torch.linalg.inv(_RGB_TO_YUV.double()).float()


def _apply_3x3(matrix: Tensor, image: Tensor) -> Tensor:
    return torch.einsum("ij,njhw->nihw", matrix.to(image), image)


def rgb_to_yuv(image: Tensor) -> Tensor:
    """RGB -> YUV (Y in [0, 1], U/V roughly in [-0.44, 0.44] and [-0.62, 0.62])."""
    return _apply_3x3(_RGB_TO_YUV, image)


def yuv_to_rgb(image: Tensor) -> Tensor:
    """Inverse of :func:`rgb_to_yuv` (not clamped)."""
    return _apply_3x3(_YUV_TO_RGB, image)


def luminance(image: Tensor) -> Tensor:
    """Y channel replicated to 3 channels, so it can go through an RGB encoder."""
    y = rgb_to_yuv(image)[:, :1]
    return y.expand(-1, 3, -1, -1).contiguous()


def match_luminance(source: Tensor, reference: Tensor) -> Tensor:
    """Return ``source``'s luminance (3 channels) with mean/std matched to ``reference``'s.

    Gatys et al. 2017 match the style's luminance statistics to the content's before
    luminance-only transfer, so the result keeps the content's overall brightness.
    """
    ys = rgb_to_yuv(source)[:, :1]
    yr = rgb_to_yuv(reference)[:, :1]
    dims = (1, 2, 3)  # per image of the batch
    out = (ys - ys.mean(dims, keepdim=True)) / (ys.std(dims, keepdim=True) + 1e-6) * yr.std(dims, keepdim=True) + yr.mean(dims, keepdim=True)
    return out.clamp(0, 1).expand(-1, 3, -1, -1).contiguous()


def combine_luminance_chroma(luma_from: Tensor, chroma_from: Tensor) -> Tensor:
    """RGB image with the Y of ``luma_from`` and the UV of ``chroma_from`` (same size)."""
    y = rgb_to_yuv(luma_from)[:, :1]
    uv = rgb_to_yuv(chroma_from)[:, 1:]
    return yuv_to_rgb(torch.cat([y, uv], dim=1)).clamp(0, 1)


def match_color(source: Tensor, reference: Tensor, eps: float = 1e-5) -> Tensor:
    """Affine colour transfer: map ``source``'s RGB mean/covariance onto ``reference``'s.

    ``x' = A (x - mu_s) + mu_r`` with ``A = C_r^1/2 C_s^-1/2`` (the 'linear' histogram
    matching of Gatys et al. 2017). Computed in float64 for robustness on flat images.
    """
    dtype = source.dtype
    mu_s, cov_s = mean_cov(source.double())
    mu_r, cov_r = mean_cov(reference.double())
    eye = torch.eye(3, dtype=torch.float64)
    root_r = sqrtm_psd(cov_r + eps * eye)  # (N, 3, 3): each image of the batch on its own
    inv_root_s = torch.linalg.inv(sqrtm_psd(cov_s + eps * eye))
    a = root_r @ inv_root_s
    flat = source.double().reshape(source.shape[0], 3, -1) - mu_s.unsqueeze(2)
    out = a @ flat + mu_r.unsqueeze(2)
    return out.reshape(source.shape).clamp(0, 1).to(dtype)
