"""bench/loss_balance.py: neural-style-pt's objective rewritten as impasto weights is the same objective.

Random features stand in for VGG's (no weights load): for every layer, impasto's normalised style term times
the equivalent weight times the content scale must equal neural-style-pt's style loss as it computes it, and
the content terms must match the same way. A wrong channel power, a missing mean or a swapped target fails.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def balance():
    sys.path.insert(0, str(REPO / "bench"))
    try:
        spec = importlib.util.spec_from_file_location("loss_balance_bench", REPO / "bench" / "loss_balance.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(REPO / "bench"))


def _features(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shapes = {"relu1_1": (8, 24, 20), "relu2_1": (16, 12, 10), "relu3_1": (32, 6, 5), "relu4_1": (64, 3, 3),
              "relu4_2": (64, 3, 3), "relu5_1": (64, 2, 2)}
    return {k: torch.rand(1, *s, generator=gen, dtype=torch.float64) * (1 + i) for i, (k, s) in enumerate(shapes.items())}


def test_equivalent_weights_reproduce_nspt_objective(balance):
    content, style, x = _features(0), _features(1), _features(2)
    weights = balance.equivalent_weights(content, style)
    p = content["relu4_2"]
    scale = balance.NSPT_CONTENT_WEIGHT * p.pow(2).mean().item()
    impasto_content = (x["relu4_2"] - p).pow(2).mean() / p.pow(2).mean()
    assert scale * impasto_content.item() == pytest.approx(balance.nspt_content_loss(x["relu4_2"], p).item(), rel=1e-9)
    for layer in balance.STYLE_LAYERS:
        a = balance.gram(style[layer])
        impasto_style = (balance.gram(x[layer]) - a).pow(2).mean() / a.pow(2).mean()
        nspt = balance.nspt_style_loss(x[layer], style[layer]).item()
        assert scale * weights[layer] * impasto_style.item() == pytest.approx(nspt, rel=1e-9), layer


def test_wider_layers_weigh_less_for_the_same_gram(balance):
    """Same Gram magnitude, 4x the channels: neural-style-pt's 1/C^2 gives 1/16 of the weight."""
    content = {"relu4_2": torch.ones(1, 4, 2, 2)}
    style = {"relu1_1": torch.ones(1, 8, 3, 3), "relu2_1": torch.ones(1, 32, 3, 3)}
    w = balance.equivalent_weights(content, style, layers=("relu1_1", "relu2_1"))
    assert w["relu2_1"] == pytest.approx(w["relu1_1"] / 16)
    assert w["relu1_1"] == pytest.approx(100 / 64 / 5)
