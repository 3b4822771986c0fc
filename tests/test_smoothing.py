"""Photorealistic smoothing: the sparse closed form against a dense solve, and the guided filter."""

from __future__ import annotations

import numpy as np
import torch

from impasto.ops.smoothing import affinity, box_mean, smooth_exact, smooth_fast


def _pair(h: int, w: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    content = torch.nn.functional.interpolate(torch.rand(1, 3, 4, 4, generator=g), size=(h, w), mode="bilinear")
    return content, (content + 0.2 * torch.rand(1, 3, h, w, generator=g)).clamp(0, 1)


def test_exact_matches_dense_closed_form():
    content, stylized = _pair(12, 10, 0)
    a = 0.99
    w = affinity(content, 0.1).toarray()
    d = w.sum(1)
    s = w / np.sqrt(d)[:, None] / np.sqrt(d)[None, :]
    y = stylized[0].permute(1, 2, 0).reshape(-1, 3).double().numpy()
    solve = np.linalg.inv(np.eye(len(d)) - a * s) * (1 - a)  # fine at 120 pixels
    dense = (solve @ y) / (solve @ np.ones((len(d), 1)))  # normalised by the smoothed constant image
    out, info = smooth_exact(stylized, content, a=a, tol=1e-9)  # float64 CG converges past the float32 preconditioner
    assert info.relative_residual < 1e-8
    np.testing.assert_allclose(out[0].permute(1, 2, 0).reshape(-1, 3).numpy(), np.clip(dense, 0, 1), atol=1e-5)


def test_a_zero_returns_the_stylised_image():
    content, stylized = _pair(9, 11, 1)
    out, _ = smooth_exact(stylized, content, a=0.0)
    torch.testing.assert_close(out, stylized)


def test_exact_smoothing_flattens_noise_inside_a_flat_region():
    content = torch.full((1, 3, 24, 24), 0.5)
    noisy = (0.5 + 0.2 * torch.randn(1, 3, 24, 24, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    out, info = smooth_exact(noisy, content, a=0.999)
    assert float(out.std()) < 0.2 * float(noisy.std())
    assert abs(float(out.mean()) - float(noisy.mean())) < 0.02  # brightness kept where affinities are uniform
    assert info.iterations < 100


def test_box_mean_matches_explicit_windows():
    x = torch.rand(1, 2, 7, 9, dtype=torch.float64)
    r = 2
    ref = torch.zeros_like(x)
    for i in range(7):
        for j in range(9):
            ref[..., i, j] = x[..., max(0, i - r): i + r + 1, max(0, j - r): j + r + 1].mean((-1, -2))
    torch.testing.assert_close(box_mean(x, r), ref)


def test_guided_filter_matches_a_float64_reference():
    content, stylized = _pair(40, 52, 4)
    guide = (0.299 * content[:, :1] + 0.587 * content[:, 1:2] + 0.114 * content[:, 2:3]).double()
    p, r, eps = stylized.double(), 5, 1e-3
    mean_i, mean_p = box_mean(guide, r), box_mean(p, r)
    a = (box_mean(guide * p, r) - mean_i * mean_p) / (box_mean(guide * guide, r) - mean_i**2 + eps)
    b = mean_p - a * mean_i
    ref = (box_mean(a, r) * guide + box_mean(b, r)).clamp(0, 1).float()
    torch.testing.assert_close(smooth_fast(stylized, content, radius=r, eps=eps), ref, atol=2e-5, rtol=0)


def test_guided_filter_keeps_edges_of_the_guide_and_smooths_elsewhere():
    content = torch.zeros(1, 3, 32, 32)
    content[..., 16:] = 1.0  # a sharp vertical edge in the guide
    noisy = (content + 0.15 * torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))).clamp(0, 1)
    out = smooth_fast(noisy, content, radius=4, eps=1e-3)
    assert float(out[..., :, 4:12].std()) < 0.5 * float(noisy[..., :, 4:12].std())
    assert float(out[..., :, 17].mean() - out[..., :, 14].mean()) > 0.8  # the edge stays sharp


def test_exact_solver_converges_on_a_1024_px_photo():
    from conftest import data_dir

    from impasto.io.image import load_image
    from impasto.ops.color import match_color
    from impasto.ops.geometry import resize, size_for_long_side

    content = load_image(data_dir() / "photo" / "meadow_content.jpg")
    content = resize(content, size_for_long_side(*content.shape[-2:], 1024))
    stylized = match_color(content, load_image(data_dir() / "photo" / "meadow_style.jpg")).clamp(0, 1)
    out, info = smooth_exact(stylized, content, a=0.999)
    assert out.shape == content.shape
    assert info.relative_residual <= 1e-4 and info.iterations <= 60  # AMG keeps CG short (plain CG: thousands)
