"""Laplacian content loss (Li et al. 2017): the operator, the loss, and its effect in optimisation."""

from __future__ import annotations

import pytest
import torch

from impasto.errors import InvalidOptionError
from impasto.losses.content import LaplacianLoss, laplacian, laplacian_loss
from impasto.methods import optimization as opt


def test_laplacian_vanishes_on_linear_ramps_and_is_constant_on_a_parabola():
    y, x = torch.meshgrid(torch.arange(12.0), torch.arange(16.0), indexing="ij")
    ramp = (2 * x + 3 * y).expand(1, 3, 12, 16)
    assert torch.allclose(laplacian(ramp, pool=1), torch.zeros(1, 3, 10, 14))
    parabola = (x ** 2).expand(1, 3, 12, 16)
    assert torch.allclose(laplacian(parabola, pool=1), torch.full((1, 3, 10, 14), -2.0))
    assert laplacian(torch.rand(1, 3, 32, 40), pool=4).shape == (1, 3, 6, 8)


def test_loss_is_zero_on_the_content_gradchecks_and_module_matches():
    c = torch.rand(1, 3, 20, 24, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    target = laplacian(c, 2)
    assert laplacian_loss(c, target, 2).item() == 0.0
    x = torch.rand(1, 3, 20, 24, generator=torch.Generator().manual_seed(1), dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: laplacian_loss(t, target, 2), (x,))
    assert torch.equal(LaplacianLoss(c, 2)(x), laplacian_loss(x, target, 2))


def test_laplacian_weight_keeps_the_photos_edges():
    g = torch.Generator().manual_seed(3)
    content = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 10, generator=g), size=(40, 48), mode="nearest")
    style = torch.rand(1, 3, 40, 40, generator=g)
    base = dict(encoder="tiny", size=48, scale_iterations=(30,), precision="fp32", style_weight=1e3, laplacian_pool=2)
    plain = opt.run(content, style, opt.Options(**base)).image
    kept = opt.run(content, style, opt.Options(**base, laplacian_weight=100.0))
    target = laplacian(content, 2)
    assert laplacian_loss(kept.image, target, 2) < 0.7 * laplacian_loss(plain, target, 2)
    assert "laplacian" in kept.final_losses
    with pytest.raises(InvalidOptionError, match="laplacian_pool"):
        opt.run(content, style, opt.Options(**{**base, "laplacian_pool": 0}))
