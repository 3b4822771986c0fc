"""Tests for impasto.losses: content, style (Gram, mean-std, W2) and TV losses.

Checklist per loss: zero at the target, module == function, float64 gradcheck, a reference
implementation, bad input.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.autograd import gradcheck

from impasto.losses.content import ContentLoss, content_loss
from impasto.losses.regularizers import TVLoss, tv_loss
from impasto.losses.style import GramLoss, MeanStdLoss, W2Loss, gram_loss, mean_std_loss, w2_loss
from impasto.ops.stats import gram_matrix, mean_cov, mean_std, sqrtm_psd


def _rand(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _feat(seed: int = 0, n: int = 1, c: int = 4, h: int = 5, w: int = 6, dtype=torch.float32) -> torch.Tensor:
    return _rand(n, c, h, w, seed=seed, dtype=dtype)


# ----------------------------------------------------------------- zero at the target

def test_losses_zero_for_identical_inputs() -> None:
    f = _feat(n=2)
    assert content_loss(f, f.clone()).item() == 0.0
    assert gram_loss(f, gram_matrix(f)).item() == pytest.approx(0.0, abs=1e-10)
    m, s = mean_std(f)
    assert mean_std_loss(f, m, s).item() == pytest.approx(0.0, abs=1e-10)
    mu, cov = mean_cov(f)
    assert abs(w2_loss(f, mu, cov).item()) < 1e-4
    assert tv_loss(torch.full((1, 3, 7, 9), 0.3)).item() == 0.0


def test_losses_positive_for_different_inputs() -> None:
    f, g = _feat(0), _feat(1)
    assert content_loss(f, g) > 0
    assert gram_loss(f, gram_matrix(g)) > 0
    assert mean_std_loss(f, *mean_std(g)) > 0
    assert w2_loss(f, *mean_cov(g)) > 1e-3
    assert tv_loss(f) > 0


# ----------------------------------------------------------------- reference values

def test_content_loss_value() -> None:
    f, p = _feat(0), _feat(1)
    assert content_loss(f, p).item() == pytest.approx(((f - p) ** 2).sum().item() / f.numel(), rel=1e-6)


def test_content_loss_bf16_accumulates_in_fp32() -> None:
    f, p = _feat(0), _feat(1)
    out = content_loss(f.bfloat16(), p.bfloat16())
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(content_loss(f, p).item(), rel=0.02)


def test_tv_loss_value() -> None:
    x = torch.tensor([[[[0.0, 1.0, 3.0], [2.0, 2.0, 2.0]]]])
    dx = ((1 - 0) ** 2 + (3 - 1) ** 2 + 0 + 0) / 4
    dy = ((2 - 0) ** 2 + (2 - 1) ** 2 + (2 - 3) ** 2) / 3
    assert tv_loss(x).item() == pytest.approx(dx + dy)


def test_mean_std_loss_value() -> None:
    f = _feat(0, n=2, c=3)
    tm, ts = torch.tensor([[0.1, -0.2, 0.3]]), torch.tensor([[1.0, 0.5, 2.0]])
    flat = f.reshape(2, 3, -1).numpy().astype(np.float64)
    mean, std = flat.mean(-1), np.sqrt(flat.var(-1) + 1e-5)
    want = ((mean - tm.numpy()) ** 2).mean() + ((std - ts.numpy()) ** 2).mean()
    assert mean_std_loss(f, tm, ts).item() == pytest.approx(want, rel=1e-5)


def test_w2_loss_one_channel_closed_form() -> None:
    """For 1-D Gaussians W2^2 = (mu1 - mu2)^2 + (sigma1 - sigma2)^2."""
    f = _feat(0, c=1, dtype=torch.float64)
    g = 2.0 + 3.0 * _feat(1, c=1, dtype=torch.float64)
    mu_g, cov_g = mean_cov(g)
    want = (f.mean() - g.mean()) ** 2 + (f.std(unbiased=False) - g.std(unbiased=False)) ** 2
    assert w2_loss(f, mu_g, cov_g).item() == pytest.approx(want.item(), rel=1e-8)


def _w2_numpy(f: np.ndarray, g: np.ndarray) -> float:
    def stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        flat = x.reshape(x.shape[1], -1)
        return flat.mean(1), np.cov(flat, bias=True)

    def sqrtm(a: np.ndarray) -> np.ndarray:
        vals, vecs = np.linalg.eigh(a)
        return vecs @ np.diag(np.sqrt(np.clip(vals, 0, None))) @ vecs.T

    (m1, c1), (m2, c2) = stats(f), stats(g)
    r2 = sqrtm(c2)
    bures = np.trace(c1 + c2 - 2 * sqrtm(r2 @ c1 @ r2))
    return float((((m1 - m2) ** 2).sum() + bures) / f.shape[1])


def test_w2_loss_matches_numpy_and_is_symmetric() -> None:
    f = _feat(0, c=3, h=6, w=7, dtype=torch.float64)
    mix = torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, -0.7], [0.3, 0.0, 2.0]], dtype=torch.float64)
    g = torch.einsum("ij,njhw->nihw", mix, _feat(1, c=3, h=6, w=7, dtype=torch.float64)) + 0.5
    ab = w2_loss(f, *mean_cov(g)).item()
    ba = w2_loss(g, *mean_cov(f)).item()
    assert ab == pytest.approx(_w2_numpy(f.numpy(), g.numpy()), rel=1e-6)
    assert ab == pytest.approx(ba, rel=1e-6)  # a distance: symmetric


# ----------------------------------------------------------------- module == function

def test_modules_equal_functions() -> None:
    f, t = _feat(0, n=2), _feat(1, n=2)
    assert torch.equal(ContentLoss(t)(f), content_loss(f, t))
    g = gram_matrix(t[:1])
    assert torch.equal(GramLoss(g)(f), gram_loss(f, g))
    m, s = mean_std(t)
    assert torch.equal(MeanStdLoss(m, s)(f), mean_std_loss(f, m, s))
    mu, cov = mean_cov(t)
    torch.testing.assert_close(W2Loss(mu, cov)(f), w2_loss(f, mu, cov), rtol=0, atol=0)
    assert torch.equal(TVLoss()(f), tv_loss(f))


def test_module_targets_are_buffers_and_never_mutated() -> None:
    f, t = _feat(0), _feat(1)
    g = gram_matrix(t)
    modules = [ContentLoss(t), GramLoss(g)]
    before = [m(f).item() for m in modules]
    t.add_(5.0)  # the caller mutates its own tensors afterwards
    g.add_(5.0)
    assert [m(f).item() for m in modules] == before
    assert "target" in dict(modules[0].named_buffers()) and "target" in modules[1].state_dict()
    # the loss never writes into its target
    snapshot = modules[1].target.clone()
    f.requires_grad_()
    modules[1](f).backward()
    assert torch.equal(modules[1].target, snapshot)


def test_module_target_does_not_require_grad() -> None:
    t = _feat(1).requires_grad_()
    loss = ContentLoss(t)
    assert not loss.target.requires_grad


# ----------------------------------------------------------------- gradcheck (float64)

def _x(seed: int = 0, n: int = 2, c: int = 3, h: int = 4, w: int = 5, channels_last: bool = False) -> torch.Tensor:
    x = _feat(seed, n, c, h, w, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x.requires_grad_()


def test_gradcheck_content_loss() -> None:
    target = _feat(1, 2, 3, 4, 5, dtype=torch.float64)
    assert gradcheck(lambda x: content_loss(x, target), (_x(),))


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("target_batch", [1, 2])
def test_gradcheck_gram_loss(channels_last: bool, target_batch: int) -> None:
    target = gram_matrix(_feat(1, target_batch, 3, 4, 5, dtype=torch.float64))
    x = _x(channels_last=channels_last)
    assert x.is_contiguous(memory_format=torch.channels_last) is channels_last
    assert gradcheck(lambda f: gram_loss(f, target), (x,))


def test_gradcheck_mean_std_loss() -> None:
    m, s = mean_std(_feat(1, 2, 3, 4, 5, dtype=torch.float64))
    assert gradcheck(lambda x: mean_std_loss(x, m, s), (_x(),))


def test_gradcheck_w2_loss() -> None:
    mu, cov = mean_cov(_feat(1, 2, 3, 4, 5, dtype=torch.float64) * 2 + 1)
    assert gradcheck(lambda x: w2_loss(x, mu, cov), (_x(),))


def test_gradcheck_tv_loss() -> None:
    assert gradcheck(tv_loss, (_x(),))


# ----------------------------------------------------------------- Gram loss vs a plain reference

@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_gram_loss_matches_reference_value_and_gradient(channels_last: bool) -> None:
    base = _feat(0, n=2, c=6, h=7, w=5)
    target = gram_matrix(_feat(1, n=1, c=6, h=4, w=4) * 1.5)
    f_ref = base.clone().requires_grad_()
    ref = ((gram_matrix(f_ref) - target) ** 2).mean()
    ref.backward()

    f = base.clone()
    if channels_last:
        f = f.contiguous(memory_format=torch.channels_last)
    f.requires_grad_()
    out = gram_loss(f, target)
    out.backward()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(f.grad, f_ref.grad, rtol=1e-4, atol=1e-7)
    assert out.dtype == torch.float32 and out.dim() == 0
    # the hand-written backward keeps the input's memory layout
    assert f.grad.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def test_gram_loss_bf16_channels_last_close_to_fp32() -> None:
    base = torch.rand(1, 32, 24, 24, generator=torch.Generator().manual_seed(0))
    target = gram_matrix(2.0 * torch.rand(1, 32, 16, 16, generator=torch.Generator().manual_seed(1)))
    f32 = base.clone().contiguous(memory_format=torch.channels_last).requires_grad_()
    ref = gram_loss(f32, target)
    ref.backward()
    f16 = base.bfloat16().contiguous(memory_format=torch.channels_last).requires_grad_()
    out = gram_loss(f16, target)
    out.backward()
    assert out.dtype == torch.float32
    assert abs(out.item() - ref.item()) / ref.item() < 0.01
    assert f16.grad.dtype == torch.bfloat16
    assert f16.grad.is_contiguous(memory_format=torch.channels_last)
    rel = (f16.grad.float() - f32.grad).norm() / f32.grad.norm()
    assert rel < 0.02


# ----------------------------------------------------------------- bad input

def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match=r"\(1, 4, 5, 6\).*\(1, 4, 5, 5\)"):
        content_loss(_feat(0), _feat(1, w=5))
    with pytest.raises(ValueError, match="Gram target"):
        gram_loss(_feat(0, c=4), torch.zeros(1, 3, 3))
    with pytest.raises(ValueError, match="Gram target"):
        gram_loss(torch.zeros(4, 5, 6), torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="Gram target"):
        GramLoss(torch.zeros(1, 8, 8))(_feat(0, c=4))
    with pytest.raises(RuntimeError):
        mean_std_loss(_feat(0, c=4), torch.zeros(1, 3), torch.ones(1, 3))
    with pytest.raises(ValueError, match="do not match the W2 target"):
        w2_loss(_feat(0, c=4), torch.zeros(1, 3), torch.eye(3)[None])


def _w2_textbook(f: torch.Tensor, mu: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """W2 through autograd, float64 (the form before the hand-written backward)."""
    m, c = mean_cov(f.double())
    root = sqrtm_psd(cov.double())
    middle = root @ c @ root
    cross = torch.linalg.eigvalsh((middle + middle.transpose(-1, -2)) / 2).clamp_min(1e-8).sqrt().sum(-1)
    trace = c.diagonal(dim1=-2, dim2=-1).sum(-1) + cov.double().diagonal(dim1=-2, dim2=-1).sum(-1)
    return (((m - mu.double()).pow(2).sum(-1) + trace - 2 * cross) / f.shape[1]).mean()


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_w2_loss_has_the_value_and_gradient_of_the_textbook_form(layout) -> None:
    f = (_feat(0, n=2, c=5, h=6, w=7, dtype=torch.float64) + 0.3).contiguous(memory_format=layout).requires_grad_(True)
    mu, cov = mean_cov(2 * _feat(1, c=5, h=6, w=7, dtype=torch.float64) - 1)
    loss, ref = w2_loss(f, mu, cov), _w2_textbook(f, mu, cov)
    (grad,), (ref_grad,) = torch.autograd.grad(loss, f), torch.autograd.grad(ref, f)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-10)
    assert torch.allclose(grad, ref_grad, rtol=1e-8, atol=1e-12) and grad.is_contiguous(memory_format=layout)


def test_w2_loss_of_bf16_features_far_from_zero_mean_keeps_the_covariance() -> None:
    """bf16 features with a mean 80x their spread (bf16's steps there are half the spread): the covariance comes from
    the centred values and what centring by the rounded mean left, so the loss and gradient stay those of the same
    values in float64."""
    x = (_feat(2, c=6, h=16, w=16, dtype=torch.float64) * 0.25 + 20.06).to(torch.bfloat16)  # between steps of 0.125
    mu, cov = mean_cov(_feat(3, c=6, h=16, w=16, dtype=torch.float64) * 0.35 + 20.06)
    a, b = x.double().requires_grad_(True), x.clone().requires_grad_(True)
    la, lb = _w2_textbook(a, mu, cov), w2_loss(b, mu, cov)
    (ga,), (gb,) = torch.autograd.grad(la, a), torch.autograd.grad(lb, b)
    assert lb.dtype == torch.float32 and lb.item() == pytest.approx(la.item(), rel=0.01)
    assert torch.nn.functional.cosine_similarity(ga.flatten(), gb.double().flatten(), dim=0) > 0.99


def test_w2_loss_keeps_the_style_root_per_eps() -> None:
    f = _feat(0, c=3, h=6, w=7, dtype=torch.float64)
    mu, cov = mean_cov(_feat(1, c=3, h=6, w=7, dtype=torch.float64))
    w2_loss(f, mu, cov)  # kept at eps 1e-8
    assert w2_loss(f, mu, cov, eps=1e-1).item() == pytest.approx(w2_loss(f, mu, cov.clone(), eps=1e-1).item(), rel=1e-12)
