"""impasto explain: one cell per level and row, shallow content reconstructions closer to the photo."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from impasto import explain
from impasto.cli import main
from impasto.errors import InvalidOptionError
from impasto.io.image import save_image


def _smooth(seed: int, h: int = 40, w: int = 48) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.interpolate(torch.rand(1, 3, 6, 7, generator=g), size=(h, w), mode="bicubic",
                                           align_corners=False).clamp(0, 1)


OPTIONS = explain.ExplainOptions(size=48, iterations=150, encoder="tiny", precision="fp32")


@pytest.fixture(scope="module")
def cells():
    return explain.explain(_smooth(0), _smooth(1), OPTIONS)


def test_one_cell_per_level_and_row(cells):
    assert [(c.row, c.level) for c in cells] == [(r, lv) for r in ("content", "style") for lv in explain.LEVELS]
    assert all(c.image.shape == (1, 3, 40, 48) and torch.isfinite(c.image).all() for c in cells)


def test_shallow_content_reconstructions_are_closer_to_the_photo(cells):
    photo = _smooth(0)
    error = {c.level: float((c.image - photo).abs().mean()) for c in cells if c.row == "content"}
    ordered = [error[level] for level in explain.LEVELS]
    assert ordered == sorted(ordered)  # every pooling stage loses more of the photo
    assert error["relu1_1"] < 0.7 * error["relu5_1"]
    noise = torch.rand(photo.shape, generator=torch.Generator().manual_seed(0))
    assert error["relu1_1"] < 0.6 * float((noise - photo).abs().mean())  # it did reconstruct


def test_sheet_has_a_labelled_cell_for_each(cells):
    image = explain.sheet(_smooth(0), _smooth(1), cells, height=40)
    assert image.height == 2 * (40 + 34 + 8) + 8
    assert image.width >= 6 * 48 * 40 // 40


def test_bad_levels_are_refused():
    with pytest.raises(InvalidOptionError, match="Did you mean 'relu3_1'"):
        explain.explain(_smooth(0), _smooth(1), explain.ExplainOptions(levels=("relu3-1",), encoder="tiny"))


def test_cli_writes_the_sheet(tmp_path, capsys):
    content = save_image(_smooth(0), tmp_path / "c.png")
    style = save_image(_smooth(1), tmp_path / "s.png")
    out = tmp_path / "sheet.png"
    assert main(["explain", str(content), str(style), "-o", str(out), "--size", "32", "--iterations", "3",
                 "--levels", "relu1_1,relu2_1", "--encoder", "tiny", "--precision", "fp32"]) == 0, capsys.readouterr().err
    with Image.open(out) as im:
        assert im.height == 2 * (160 + 34 + 8) + 8
    assert main(["explain", str(content), str(style), "-o", str(content), "--encoder", "tiny"]) != 0
    assert "content image" in capsys.readouterr().err
