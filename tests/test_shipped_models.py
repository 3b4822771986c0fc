"""The trained styles that ship inside the package: present, loadable, small, credited, and stylising."""

from __future__ import annotations

import pytest
import torch

from impasto.io.models import load_model, model_tensor_dtype, shipped_of_kind
from impasto.methods import feedforward as ff

SHIPPED = shipped_of_kind("johnson-in")  # decoders ship too; these are the per-style networks


def test_at_least_two_styles_ship():
    assert len(SHIPPED) >= 2, sorted(SHIPPED)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_model_is_small_fp16_and_credited(name):
    path = SHIPPED[name]
    assert path.stat().st_size < 8e6
    assert model_tensor_dtype(path) == torch.float16
    _, meta = load_model(path)
    assert meta["styles"] and all(s.get("source") and s.get("licence") for s in meta["styles"])
    assert meta["training"]["options"]["steps"] >= 500 and meta["training"]["images"] > 10


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_model_stylises_an_unseen_photo(name):
    from conftest import data_dir

    from impasto.io.image import load_image

    # held out from training (see the model's metadata): kodim23, skimage_chelsea, lake_content
    content = load_image(data_dir() / "content" / "skimage_chelsea.jpg")
    out = ff.run(content, None, ff.Options(model=name, size=256)).image
    small = torch.nn.functional.interpolate(content, size=out.shape[-2:], mode="bilinear", antialias=True)
    assert out.shape == (1, 3, 170, 256)
    assert float((out - small).abs().mean()) > 0.05  # visibly stylised
    # still follows the photo: the stylised image correlates with the photo's luminance
    y_out, y_in = out.mean(1).flatten(), small.mean(1).flatten()
    corr = torch.corrcoef(torch.stack([y_out, y_in]))[0, 1]
    assert float(corr) > 0.3
