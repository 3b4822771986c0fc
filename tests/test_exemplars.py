"""The multi-exemplar method (Song et al. 2017): pooled patch bank, source map, seam cleanup, CLI."""

from __future__ import annotations

import pytest
import torch

from impasto.cli import main
from impasto.errors import InvalidOptionError
from impasto.features.vgg import load_encoder
from impasto.io.image import load_image, save_image
from impasto.methods import exemplars as ex


def _texture(seed: int, h: int = 48, w: int = 48) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.interpolate(torch.rand(1, 3, h // 4, w // 4, generator=g), size=(h, w),
                                           mode="nearest")


def test_the_source_map_takes_each_half_from_the_exemplar_that_fits_it():
    a, b = _texture(1, 48, 96), _texture(2, 48, 96)  # the size of the result: the bank is built at its size
    result = torch.cat([a[..., :48], b[..., 48:]], dim=3)  # left half from exemplar a, right half from b
    encoder = load_encoder("tiny", ["relu3_1"])
    sources = ex.source_map(result, [a, b], encoder, "relu3_1")
    assert sources.shape == (48, 96)
    left, right = sources[:, :40], sources[:, 56:]
    assert (left == 0).float().mean() > 0.9 and (right == 1).float().mean() > 0.9


def test_the_source_map_follows_the_masks_the_loss_followed():
    from impasto.features.transfer import RegionMaps

    a, b = _texture(1, 48, 96), _texture(2, 48, 96)
    encoder = load_encoder("tiny", ["relu3_1"])
    free = ex.source_map(a, [a, b], encoder, "relu3_1")
    assert (free == 0).float().mean() > 0.9  # a result made of a: a everywhere
    left, right = torch.zeros(1, 3, 48, 96), torch.zeros(1, 3, 48, 96)
    left[..., :48], right[..., 48:] = 1, 1
    maps = RegionMaps((48, 96), [a, b], content_mask=[left, right])  # the left half may take only a, the right only b
    sources = ex.source_map(a, [a, b], encoder, "relu3_1", maps)
    assert (sources[:, :40] == 0).all() and (sources[:, 56:] == 1).all()


def test_seams_are_a_band_around_source_changes():
    sources = torch.zeros(10, 20, dtype=torch.long)
    sources[:, 10:] = 1
    band = ex.seams(sources, radius=2)
    assert band[:, 7:13].all() and not band[:, :7].any() and not band[:, 13:].any()
    assert not ex.seams(torch.zeros(10, 20, dtype=torch.long), 2).any()


def test_run_uses_several_exemplars_cleans_seams_and_writes_the_map(tmp_path):
    a, b = _texture(1, 48, 96), _texture(2, 48, 96)
    content = torch.cat([a[..., :48], b[..., 48:]], dim=3)
    options = ex.Options(size=96, iterations=8, min_size=96, encoder="tiny", precision="fp32",
                         patch_layers=("relu2_1",), show_sources=str(tmp_path / "sources.png"))
    result = ex.run(content, [a, b], options)
    assert result.image.shape == (1, 3, 48, 96) and torch.isfinite(result.image).all()
    assert result.final_losses["exemplars_used"] == 2.0
    assert 0 < result.final_losses["seam_share"] < 0.6
    sources = load_image(tmp_path / "sources.png")
    assert sources.shape == (1, 3, 48, 96) and len(torch.unique(sources.reshape(3, -1), dim=1).T) == 2
    plain = ex.run(content, [a, b], ex.Options(**{**options.__dict__, "cleanup": "none",
                                                                        "show_sources": None}))
    assert "seam_share" not in plain.final_losses and not torch.equal(plain.image, result.image)


def test_tv_weight_reaches_the_optimisation():
    a = _texture(1, 48, 48)
    base = dict(size=48, iterations=4, min_size=48, encoder="tiny", precision="fp32", cleanup="none", patch_layers=("relu2_1",))
    plain = ex.run(_texture(3), [a], ex.Options(**base))
    smooth = ex.run(_texture(3), [a], ex.Options(**base, tv_weight=50.0))
    assert ex._optimization_options(ex.Options(tv_weight=2.0)).tv_weight == 2.0
    tv = lambda im: (im[..., 1:, :] - im[..., :-1, :]).abs().mean()  # noqa: E731
    assert tv(smooth.image) < tv(plain.image)


def test_a_checkpoint_written_under_the_old_defaults_is_named_with_the_flags_to_resume_it(tmp_path):
    """tv_weight 0.1 -> 1 and match_every 1 -> 10 (2026-12-04): a run resumed under the new defaults from a
    checkpoint of the old ones is told which flags to add, and resumes with them."""
    from impasto.errors import CheckpointError

    assert (ex.Options().tv_weight, ex.Options().match_every) == (1.0, 10)
    base = dict(size=48, iterations=4, min_size=48, encoder="tiny", precision="fp32", cleanup="none",
                patch_layers=("relu2_1",))
    content, exemplars = _texture(3), [_texture(1), _texture(2)]
    ckpt = tmp_path / "run.ckpt"
    ex.run(content, exemplars, ex.Options(**base, **ex.DEFAULTS_BEFORE), checkpoint=ckpt, checkpoint_every=2)
    with pytest.raises(CheckpointError, match=r"defaults before 2026-12-04 \(--tv-weight 0.1 --match-every 1\); add --tv-weight 0.1 --match-every 1 to resume"):
        ex.run(content, exemplars, ex.Options(**base), checkpoint=ckpt, resume=True)
    with pytest.raises(CheckpointError, match="different run"):  # another run altogether: no hint
        ex.run(content, exemplars, ex.Options(**base, seed=5), checkpoint=ckpt, resume=True)
    ex.run(content, exemplars, ex.Options(**base, **ex.DEFAULTS_BEFORE), checkpoint=ckpt, resume=True)


def test_bad_options_are_refused():
    with pytest.raises(InvalidOptionError, match="cleanup must be"):
        ex.run(_texture(1), [_texture(2)], ex.Options(cleanup="blur", encoder="tiny"))
    with pytest.raises(InvalidOptionError, match="writes a PNG"):
        ex.run(_texture(1), [_texture(2)], ex.Options(show_sources="map.jpg", encoder="tiny"))


def test_cli(tmp_path, capsys):
    face = save_image(_texture(3), tmp_path / "face.png")
    exemplar_files = [str(save_image(_texture(10 + i), tmp_path / f"ex{i}.png")) for i in range(3)]
    out = tmp_path / "out.png"
    args = ["stylize", str(face), *exemplar_files, "--method", "exemplars", "--size", "48", "--iterations", "3",
            "--min-size", "48", "--encoder", "tiny", "--precision", "fp32", "--patch-layers", "relu2_1",
            "--show-sources", str(tmp_path / "map.png"), "--checkpoint", str(tmp_path / "run.ckpt"),
            "-o", str(out), "-q"]
    assert main(args) == 0, capsys.readouterr().err
    assert out.is_file() and (tmp_path / "map.png").is_file()  # --checkpoint accepted: the optimisation inside resumes


def test_label_maps_restrict_each_part_of_the_photo_to_the_same_part_of_the_exemplars(tmp_path):
    red, blue = torch.zeros(1, 3, 48, 48), torch.zeros(1, 3, 48, 48)
    red[:, 0], blue[:, 2] = 0.8, 0.8
    red, blue = red + 0.2 * _texture(1), blue + 0.2 * _texture(2)
    exemplars = [torch.cat([red, blue], dim=3), torch.cat([blue, red], dim=3)]  # red left in one, right in the other
    content = 0.5 * _texture(3, 48, 96) + 0.25
    halves = torch.zeros(1, 3, 48, 96)
    halves[..., :48] = 1  # white left, black right
    paths = {name: str(save_image(t, tmp_path / f"{name}.png"))
             for name, t in (("halves", halves), ("flipped", 1 - halves), ("all", torch.ones_like(halves)))}
    base = dict(size=96, iterations=30, min_size=96, encoder="tiny", precision="fp32", cleanup="none",
                patch_layers=("relu1_1", "relu2_1"), style_weight=2e4)

    def run(*style_masks: str, content_mask: str = paths["halves"]) -> torch.Tensor:
        masks = dict(content_mask=(content_mask,), style_mask=style_masks) if style_masks else {}
        return ex.run(content, exemplars, ex.Options(**base, **masks)).image

    free = run()
    one_part = run(paths["all"], paths["all"], content_mask=paths["all"])
    assert torch.allclose(one_part, free, atol=1e-5)  # one part everywhere: no restriction
    left_red = run(paths["halves"], paths["flipped"])  # white = the red half of both exemplars
    left_blue = run(paths["flipped"], paths["halves"])  # white = the blue half
    redness = lambda im: (im[0, 0] - im[0, 2])[:, :40].mean()  # noqa: E731
    assert redness(left_red) > redness(left_blue) + 0.02
    assert redness(left_red) > redness(free) > redness(left_blue)
    with pytest.raises(InvalidOptionError, match="label maps"):
        run(paths["halves"], paths["halves"], paths["halves"])
