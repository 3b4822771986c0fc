"""Tests for impasto.ops: feature statistics, colour transforms and geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.autograd import gradcheck

from impasto.ops.color import (
    combine_luminance_chroma,
    luminance,
    match_color,
    match_luminance,
    rgb_to_yuv,
    yuv_to_rgb,
)
from impasto.ops.geometry import resize, resize_long_side, scale_schedule, size_for_long_side
from impasto.ops.stats import gram_matrix, mean_cov, mean_std, sqrtm_psd


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _image(h: int = 12, w: int = 16, seed: int = 0, n: int = 1, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, 3, h, w, generator=_gen(seed))


# ----------------------------------------------------------------- stats

def test_gram_matrix_matches_loop() -> None:
    f = torch.randn(2, 3, 2, 3, generator=_gen(0), dtype=torch.float64)
    g = gram_matrix(f)
    assert g.shape == (2, 3, 3)
    m = 2 * 3
    for n in range(2):
        for i in range(3):
            for j in range(3):
                s = sum(f[n, i, y, x] * f[n, j, y, x] for y in range(2) for x in range(3))
                assert g[n, i, j].item() == pytest.approx(s.item() / m, rel=1e-12)


def test_gram_matrix_channels_last_and_gradcheck() -> None:
    f = torch.randn(1, 4, 3, 5, generator=_gen(1), dtype=torch.float64)
    torch.testing.assert_close(gram_matrix(f.contiguous(memory_format=torch.channels_last)), gram_matrix(f))
    assert gradcheck(gram_matrix, (f.requires_grad_(),))


def test_mean_cov_matches_numpy() -> None:
    f = torch.randn(2, 4, 5, 6, generator=_gen(2), dtype=torch.float64)
    mean, cov = mean_cov(f)
    assert mean.shape == (2, 4) and cov.shape == (2, 4, 4)
    for n in range(2):
        flat = f[n].reshape(4, -1).numpy()
        np.testing.assert_allclose(mean[n].numpy(), flat.mean(1), rtol=1e-12)
        np.testing.assert_allclose(cov[n].numpy(), np.cov(flat, bias=True), rtol=1e-10, atol=1e-14)


def test_mean_std_matches_numpy() -> None:
    f = torch.randn(2, 3, 4, 5, generator=_gen(3), dtype=torch.float64)
    mean, std = mean_std(f, eps=0.0)
    flat = f.reshape(2, 3, -1).numpy()
    np.testing.assert_allclose(mean.numpy(), flat.mean(-1), rtol=1e-12)
    np.testing.assert_allclose(std.numpy(), flat.std(-1), rtol=1e-12)
    _, std_flat = mean_std(torch.ones(1, 2, 3, 3))
    torch.testing.assert_close(std_flat, torch.full((1, 2), 1e-5**0.5))  # eps keeps flat maps finite


def test_sqrtm_psd_squares_back() -> None:
    b = torch.randn(2, 5, 5, generator=_gen(4), dtype=torch.float64)
    a = b @ b.transpose(-1, -2) + 0.1 * torch.eye(5, dtype=torch.float64)
    r = sqrtm_psd(a)
    torch.testing.assert_close(r @ r, a, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(r, r.transpose(-1, -2))  # symmetric
    assert torch.linalg.eigvalsh(r).min() > 0  # the PSD root, not another one


def test_sqrtm_psd_singular_is_finite() -> None:
    v = torch.tensor([[1.0], [2.0], [2.0]], dtype=torch.float64)
    a = v @ v.T  # rank 1
    r = sqrtm_psd(a)
    assert torch.isfinite(r).all()
    torch.testing.assert_close(r @ r, a, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------- colour

def test_rgb_yuv_round_trip() -> None:
    x = _image(9, 11, n=2)
    torch.testing.assert_close(yuv_to_rgb(rgb_to_yuv(x)), x, rtol=1e-5, atol=1e-6)
    y = rgb_to_yuv(x)
    assert y.shape == x.shape and y.dtype == torch.float32


def test_rgb_to_yuv_known_values() -> None:
    colours = torch.tensor([[1.0, 1.0, 1.0], [0.5, 0.5, 0.5], [1.0, 0.0, 0.0]]).view(3, 3, 1, 1)
    yuv = rgb_to_yuv(colours).view(3, 3)
    torch.testing.assert_close(yuv[0], torch.tensor([1.0, 0.0, 0.0]), atol=1e-6, rtol=0)  # white: no chroma
    torch.testing.assert_close(yuv[1], torch.tensor([0.5, 0.0, 0.0]), atol=1e-6, rtol=0)
    assert yuv[2, 0].item() == pytest.approx(0.299)  # BT.601 luma of red
    assert yuv[2, 2].item() > 0.6  # red has strongly positive V


def test_yuv_float64_stays_float64() -> None:
    x = _image().double()
    assert rgb_to_yuv(x).dtype == torch.float64
    torch.testing.assert_close(yuv_to_rgb(rgb_to_yuv(x)), x, rtol=1e-6, atol=1e-7)


def test_luminance_is_y_in_three_channels() -> None:
    x = _image()
    lum = luminance(x)
    assert lum.shape == x.shape and lum.is_contiguous()
    torch.testing.assert_close(lum[:, 1], lum[:, 0])
    torch.testing.assert_close(lum[:, 2], lum[:, 0])
    torch.testing.assert_close(lum[:, 0], 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])


def _correlated(seed: int, mix: list[list[float]], offset: list[float], scale: float) -> torch.Tensor:
    noise = torch.randn(1, 3, 32, 32, generator=_gen(seed), dtype=torch.float64) * scale
    return torch.einsum("ij,njhw->nihw", torch.tensor(mix, dtype=torch.float64), noise) + torch.tensor(
        offset, dtype=torch.float64
    ).view(1, 3, 1, 1)


def test_match_color_gives_reference_mean_and_covariance() -> None:
    source = _correlated(0, [[1.0, 0.2, 0.0], [0.3, 1.0, 0.0], [0.0, 0.4, 0.8]], [0.3, 0.5, 0.6], 0.05).float()
    reference = _correlated(1, [[0.6, 0.0, 0.3], [0.0, 1.2, 0.0], [0.5, 0.0, 0.7]], [0.6, 0.4, 0.45], 0.06).float()
    assert 0 < source.min() and source.max() < 1 and 0 < reference.min() and reference.max() < 1
    out = match_color(source, reference)
    assert out.shape == source.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    mu_o, cov_o = mean_cov(out.double())
    mu_r, cov_r = mean_cov(reference.double())
    torch.testing.assert_close(mu_o, mu_r, atol=2e-3, rtol=0)
    torch.testing.assert_close(cov_o, cov_r, atol=5e-5, rtol=0.02)
    mu_s, cov_s = mean_cov(source.double())
    assert (cov_s - cov_r).abs().max() > 10 * (cov_o - cov_r).abs().max()  # it actually moved


def test_match_color_flat_source_no_nan() -> None:
    flat = torch.full((1, 3, 8, 8), 0.25)
    reference = _image(10, 10, seed=3, lo=0.2, hi=0.8)
    out = match_color(flat, reference)
    assert torch.isfinite(out).all()
    mu_r = reference.mean(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(out, mu_r.expand_as(out), atol=1e-5, rtol=0)  # flat -> reference mean
    # a flat reference: output becomes that colour
    out2 = match_color(_image(seed=4), torch.full((1, 3, 5, 5), 0.6))
    assert torch.isfinite(out2).all()
    torch.testing.assert_close(out2, torch.full_like(out2, 0.6), atol=1e-2, rtol=0)  # eps=1e-5 leaves std ~3e-3


def test_match_color_keeps_dtype_float64() -> None:
    out = match_color(_image(seed=1).double(), _image(seed=2).double())
    assert out.dtype == torch.float64


def test_match_luminance_matches_reference_stats() -> None:
    source = _image(16, 16, seed=5, lo=0.1, hi=0.5)
    reference = _image(20, 12, seed=6, lo=0.4, hi=0.8)
    out = match_luminance(source, reference)
    assert out.shape == source.shape
    torch.testing.assert_close(out[:, 1], out[:, 0])
    y_out = out[:, 0]
    y_ref = rgb_to_yuv(reference)[:, 0]
    assert 0 < y_out.min() and y_out.max() < 1  # no clamping in this test
    assert y_out.mean().item() == pytest.approx(y_ref.mean().item(), abs=1e-5)
    assert y_out.std().item() == pytest.approx(y_ref.std().item(), rel=1e-4)
    # it keeps the source's structure: correlation with the source luminance is 1
    y_src = rgb_to_yuv(source)[:, 0].flatten()
    corr = torch.corrcoef(torch.stack([y_src, y_out.flatten()]))[0, 1]
    assert corr.item() == pytest.approx(1.0, abs=1e-5)


def test_combine_luminance_chroma_takes_y_and_uv() -> None:
    luma = _image(10, 14, seed=7, lo=0.35, hi=0.65)
    chroma = _image(10, 14, seed=8, lo=0.4, hi=0.6)
    out = combine_luminance_chroma(luma, chroma)
    assert out.shape == luma.shape
    yuv_out = rgb_to_yuv(out)
    torch.testing.assert_close(yuv_out[:, :1], rgb_to_yuv(luma)[:, :1], atol=1e-5, rtol=0)
    torch.testing.assert_close(yuv_out[:, 1:], rgb_to_yuv(chroma)[:, 1:], atol=1e-5, rtol=0)
    # grey chroma source -> grey output with the first image's luminance
    grey = combine_luminance_chroma(luma, torch.full_like(luma, 0.5))
    torch.testing.assert_close(grey, luminance(luma), atol=1e-5, rtol=0)


def test_colour_ops_are_differentiable() -> None:
    x = _image(4, 5, seed=9).double().requires_grad_()
    assert gradcheck(rgb_to_yuv, (x,))
    assert gradcheck(yuv_to_rgb, (x,))


# ----------------------------------------------------------------- geometry

def test_scale_schedule() -> None:
    assert scale_schedule(512, 256) == [256, 362, 512]
    assert scale_schedule(512, 512) == [512]
    assert scale_schedule(200, 256) == [200]  # min >= size: a single scale
    assert scale_schedule(1024, 200, max_scales=2) == [724, 1024]
    assert scale_schedule(512, 128, factor=2.0) == [128, 256, 512]


def test_size_for_long_side_keeps_aspect() -> None:
    assert size_for_long_side(37, 50, 100) == (74, 100)
    assert size_for_long_side(600, 400, 300) == (300, 200)
    assert size_for_long_side(10, 1000, 50) == (1, 50)  # never zero
    h, w = size_for_long_side(333, 517, 256)
    assert w == 256 and abs(h / w - 333 / 517) < 1 / 256


def test_resize_shapes_and_range() -> None:
    x = _image(37, 50)
    assert resize(x, (37, 50)) is x
    small = resize_long_side(x, 25)
    assert small.shape == (1, 3, 18, 25) or small.shape == (1, 3, 19, 25)
    big = resize(x, (74, 100))
    assert big.shape == (1, 3, 74, 100)
    assert big.min() >= 0 and big.max() <= 1  # bicubic overshoot is clamped
    flat = torch.full((1, 3, 20, 20), 0.4)
    torch.testing.assert_close(resize(flat, (7, 9)), torch.full((1, 3, 7, 9), 0.4))


def test_match_color_batch_items_matched_independently() -> None:
    dark = _image(8, 8, seed=10, lo=0.0, hi=0.2)
    bright = _image(8, 8, seed=11, lo=0.6, hi=0.8)
    reference = _image(8, 8, seed=12, lo=0.25, hi=0.75)
    both = match_color(torch.cat([dark, bright]), reference)
    torch.testing.assert_close(both[1:], match_color(bright, reference), atol=1e-5, rtol=0)


# ---------------------------------------------------------------- AdaIN / WCT (arbitrary style transfer)

def test_adain_matches_style_channel_statistics():
    from impasto.ops.stats import adain, mean_std

    g = torch.Generator().manual_seed(0)
    content = torch.randn(2, 8, 9, 7, generator=g) * 3 + 1
    style = torch.randn(1, 8, 12, 5, generator=g) * 0.5 - 2
    out = adain(content, style)
    om, os_ = mean_std(out)
    sm, ss = mean_std(style)
    torch.testing.assert_close(om, sm.expand_as(om), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(os_, ss.expand_as(os_), atol=1e-3, rtol=1e-3)


def _cov(x: torch.Tensor) -> torch.Tensor:
    x0 = x - x.mean(1, keepdim=True)
    return x0 @ x0.T / (x.shape[1] - 1)


def test_wct_output_has_style_mean_and_covariance():
    from impasto.ops.stats import whiten_colour

    g = torch.Generator().manual_seed(1)
    mix = torch.randn(6, 6, generator=g)
    content = torch.randn(6, 500, generator=g)
    style = mix @ torch.randn(6, 400, generator=g) + torch.arange(6.0).view(6, 1)
    out = whiten_colour(content, style)
    torch.testing.assert_close(out.mean(1), style.mean(1), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(_cov(out), _cov(style), atol=1e-3, rtol=1e-3)


def test_wct_alpha_zero_returns_content():
    from impasto.ops.stats import whiten_colour

    content, style = torch.randn(4, 50), torch.randn(4, 60)
    torch.testing.assert_close(whiten_colour(content, style, alpha=0.0), content)


def test_wct_survives_rank_deficient_and_constant_inputs():
    from impasto.ops.stats import whiten_colour

    g = torch.Generator().manual_seed(2)
    low_rank = torch.randn(8, 2, generator=g) @ torch.randn(2, 100, generator=g)  # rank 2 of 8
    style = torch.randn(8, 100, generator=g)
    for content, sty in ((low_rank, style), (torch.full((8, 100), 0.3), style), (style, torch.full((8, 80), 2.0)),
                         (torch.zeros(8, 1), style)):
        out = whiten_colour(content, sty)
        assert torch.isfinite(out).all()
    constant = whiten_colour(torch.full((8, 100), 0.3), style)
    torch.testing.assert_close(constant, style.mean(1, keepdim=True).expand(8, 100), atol=1e-5, rtol=0)
    onto_flat_style = whiten_colour(style, torch.full((8, 80), 2.0))
    torch.testing.assert_close(onto_flat_style, torch.full((8, 100), 2.0), atol=1e-5, rtol=0)


def test_derived_values_are_kept_while_the_tensor_is_unchanged() -> None:
    from impasto.ops.stats import derived

    calls = []

    def square(t: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return t * t

    t = torch.tensor([1.0, 2.0])
    assert torch.equal(derived(t, "sq", square), torch.tensor([1.0, 4.0]))
    derived(t, "sq", square)
    assert len(calls) == 1  # kept
    derived(t.clone(), "sq", square)
    assert len(calls) == 2  # another tensor of the same values: its own
    derived(t, "sq", square, 7)
    derived(t, "sq", square, 7)
    assert len(calls) == 3  # another key: made once, replacing the first
    t.add_(1.0)
    assert torch.equal(derived(t, "sq", square, 7), torch.tensor([4.0, 9.0])) and len(calls) == 4  # changed in place


def test_derived_values_see_a_new_storage_and_skip_inference_tensors() -> None:
    from impasto.ops.stats import derived

    t = torch.tensor([1.0, 2.0])
    assert derived(t, "sum", torch.sum).item() == 3.0
    t.data = torch.tensor([5.0, 5.0, 5.0])  # no version bump, but another storage
    assert derived(t, "sum", torch.sum).item() == 15.0
    with torch.inference_mode():
        frozen = torch.tensor([2.0, 2.0])
    assert derived(frozen, "sum", torch.sum).item() == 4.0  # no version counter: made, not kept
