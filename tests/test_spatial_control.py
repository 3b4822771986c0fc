"""Spatial control for the optimisation method (Gatys et al. 2017): masked style terms."""

from __future__ import annotations

import pytest
import torch

from impasto.errors import InvalidOptionError
from impasto.features.transfer import RegionMaps
from impasto.features.vgg import load_encoder
from impasto.io.image import save_image
from impasto.losses.objective import StyleTerm
from impasto.methods import optimization as opt
from impasto.ops.stats import gram_matrix

H, W = 32, 40


def _image(seed: int, h: int = H, w: int = W) -> torch.Tensor:
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _half_mask(left: bool, h: int = H, w: int = W) -> torch.Tensor:
    m = torch.zeros(1, 3, h, w)
    if left:
        m[..., : w // 2] = 1
    else:
        m[..., w // 2:] = 1
    return m


@pytest.fixture(scope="module")
def encoder():
    return load_encoder("tiny", ["relu1_1", "relu2_1", "relu4_2"])


def test_positions_outside_every_region_get_no_gradient_from_the_style(encoder):
    style = encoder(_image(1))
    maps = RegionMaps((H, W), [_image(1)], content_mask=[_half_mask(left=True)])
    regions = {"relu1_1": maps.regions([style["relu1_1"]], [1.0], tuple(style["relu1_1"].shape[-2:]))}
    term = StyleTerm("gram", {"relu1_1": 1.0}, [style], regions=regions)
    x = encoder(_image(2))["relu1_1"].detach().requires_grad_(True)
    term({"relu1_1": x}).backward()
    w = x.shape[-1]
    assert x.grad[..., : w // 2].abs().sum() > 0
    assert torch.equal(x.grad[..., w // 2:], torch.zeros_like(x.grad[..., w // 2:]))


def test_label_maps_give_each_region_the_statistics_of_its_style_region(encoder):
    style = _image(3)
    content_labels = _half_mask(left=True)  # white left, black right
    style_labels = _half_mask(left=False)  # the style's white half is its right half
    feats = encoder(style)["relu1_1"]
    maps = RegionMaps((H, W), [style], content_mask=[content_labels], style_mask=[style_labels])
    regions = {"relu1_1": maps.regions([feats], [1.0], tuple(feats.shape[-2:]))}
    term = StyleTerm("gram", {"relu1_1": 1.0}, [{"relu1_1": feats}], regions=regions)
    w = feats.shape[-1]
    right_half = feats[..., w // 2:]  # white in the style map
    targets = {bool(where[0]): target[0] for where, target, *_ in term.regions["relu1_1"]}  # keyed by "is left"
    assert torch.allclose(targets[True], gram_matrix(right_half.reshape(1, feats.shape[1], -1, 1)), rtol=1e-5)
    assert torch.allclose(targets[False], gram_matrix(feats[..., : w // 2].reshape(1, feats.shape[1], -1, 1)), rtol=1e-5)


def test_a_masked_run_stylises_only_inside_the_mask(tmp_path):
    content, style = _image(5), _image(6)
    options = opt.Options(encoder="tiny", size=W, scale_iterations=(40,), precision="fp32", tv_weight=0.0,
                          style_layers=("relu1_1", "relu2_1"), style_weight=1e4, content_mask=(str(tmp_path / "m.png"),))
    from impasto.io.image import save_image

    save_image(_half_mask(left=True), tmp_path / "m.png")
    out = opt.run(content, style, options).image
    change = (out - content).abs().mean(dim=(0, 1))
    w = change.shape[-1]
    assert change[:, : w // 2 - 4].mean() > 3 * change[:, w // 2 + 4:].mean()


def test_mask_errors_are_clear(tmp_path):
    content, style = _image(5), _image(6)
    from impasto.io.image import save_image

    mask = str(save_image(_half_mask(left=True), tmp_path / "m.png"))
    base = dict(encoder="tiny", size=W, scale_iterations=(2,), precision="fp32")
    with pytest.raises(InvalidOptionError, match="cannot be combined"):
        opt.run(content, style, opt.Options(**base, content_mask=(mask,), layer_sources=(("relu1_1", 0),)))
    with pytest.raises(InvalidOptionError, match="does not take masks; with --content-mask use one of gram.*mrf"):
        opt.run(content, style, opt.Options(**base, content_mask=(mask,), style_loss="gram_shifted",
                                            style_layers=("relu2_1",)))
    with pytest.raises(InvalidOptionError, match="one --content-mask per style"):
        opt.run(content, [style, style], opt.Options(**base, content_mask=(mask,)))
    with pytest.raises(InvalidOptionError, match="needs a --content-mask"):
        opt.run(content, style, opt.Options(**base, style_mask=(mask,)))


def test_masks_from_the_cli(tmp_path, capsys):
    from impasto.cli import main
    from impasto.io.image import load_image, save_image

    content = save_image(_image(5), tmp_path / "c.png")
    style = save_image(_image(6), tmp_path / "s.png")
    mask = save_image(_half_mask(left=True), tmp_path / "m.png")
    out = tmp_path / "out.png"
    assert main(["stylize", str(content), str(style), "--content-mask", str(mask), "--encoder", "tiny",
                 "--size", str(W), "--iterations", "3", "--precision", "fp32", "-o", str(out), "-q"]) == 0, \
        capsys.readouterr().err
    assert load_image(out).shape == (1, 3, H, W)
    wrong = save_image(torch.zeros(1, 3, 40, 10), tmp_path / "thin.png")
    assert main(["stylize", str(content), str(style), "--content-mask", str(wrong), "--encoder", "tiny",
                 "--size", str(W), "--iterations", "3", "-o", str(tmp_path / "x.png"), "-q"]) != 0
    assert "aspect ratio" in capsys.readouterr().err


def test_mrf_under_a_mask_gives_no_gradient_outside_it_and_only_style_region_patches(encoder):
    from impasto.losses import patch

    style = _image(3)
    feats = encoder(style)["relu1_1"]
    h, w = feats.shape[-2:]
    maps = RegionMaps((H, W), [style], content_mask=[_half_mask(left=True)], style_mask=[_half_mask(left=False)])
    regions = {"relu1_1": maps.regions([feats], [1.0], (h, w))}
    term = StyleTerm("mrf", {"relu1_1": 1.0}, [{"relu1_1": feats}], regions=regions)
    # the white (left) content region matches only patches centred in the style's white (right) half
    banks = {bool(where.reshape(h, w)[0, 0]): target[0] for where, target, *_ in term.regions["relu1_1"]}
    right = torch.zeros(h, w, dtype=torch.bool)
    right[:, w // 2:] = True
    expected = patch.patches(feats)[:, patch.centred_on(right.flatten(), h, w)]
    assert torch.equal(banks[True], expected) and banks[False].shape[1] == (h - 2) * (w // 2 - 1)
    # a content mask with one style: the uncovered right half receives no gradient at all
    maps = RegionMaps((H, W), [style], content_mask=[_half_mask(left=True)])
    term = StyleTerm("mrf", {"relu1_1": 1.0}, [{"relu1_1": feats}], regions={"relu1_1": maps.regions([feats], [1.0], (h, w))})
    x = encoder(_image(2))["relu1_1"].detach().requires_grad_(True)
    term({"relu1_1": x}).backward()
    assert x.grad[..., : w // 2].abs().sum() > 0
    assert torch.equal(x.grad[..., w // 2:], torch.zeros_like(x.grad[..., w // 2:]))


def test_a_masked_mrf_run_stylises_only_inside_the_mask(tmp_path):
    from impasto.io.image import save_image

    content, style = _image(5), _image(6)
    options = opt.Options(encoder="tiny", size=W, scale_iterations=(40,), precision="fp32", tv_weight=0.0,
                          style_loss="mrf", style_layers=("relu1_1", "relu2_1"), style_weight=1e5,
                          content_mask=(str(save_image(_half_mask(left=True), tmp_path / "m.png")),))
    out = opt.run(content, style, options).image
    change = (out - content).abs().mean(dim=(0, 1))
    w = change.shape[-1]
    assert change[:, : w // 2 - 4].mean() > 3 * change[:, w // 2 + 4:].mean()


def test_label_maps_given_to_the_call_equal_the_same_maps_given_as_files(tmp_path):
    """The optimisation's per-call ``maps`` (what --face-parts uses) is the --content-mask/--style-mask path."""
    content, styles = _image(1, 48, 64), [_image(2, 48, 64), _image(3, 40, 64)]
    halves = torch.zeros(1, 3, 48, 64)
    halves[..., :32] = 1
    files = [str(save_image(t, tmp_path / f"m{i}.png")) for i, t in enumerate((halves, 1 - halves, halves[..., :40, :]))]
    base = dict(size=64, iterations=6, min_size=64, encoder="tiny", precision="fp32", style_loss="mrf", style_layers=("relu2_1",))
    by_files = opt.run(content, styles, opt.Options(**base, content_mask=(files[0],), style_mask=tuple(files[1:])))
    prepared = opt.prepare(styles, opt.Options(**base))
    maps = RegionMaps((48, 64), styles, (halves,), (1 - halves, halves[..., :40, :]))
    by_call = prepared(content, maps=maps)
    assert torch.equal(by_call.image, by_files.image)
    free = prepared(content)
    assert not torch.allclose(free.image, by_call.image)  # the maps did something, and were not kept for later calls
    with pytest.raises(InvalidOptionError, match="made for a 64x48 image"):
        prepared(_image(4, 64, 64), maps=maps)
    ckpt = tmp_path / "run.ckpt"
    prepared(content, maps=maps, checkpoint=ckpt, checkpoint_every=2)
    with pytest.raises(Exception, match="different run"):  # other maps: another job
        prepared(content, maps=RegionMaps((48, 64), styles, (1 - halves,), (1 - halves, halves[..., :40, :])),
                 checkpoint=ckpt, resume=True)
