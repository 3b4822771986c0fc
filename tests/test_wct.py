"""WCT, PhotoWCT and masks: feature statistics, strength, robustness, regions, the methods end to end (tiny encoder)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from impasto import api
from impasto.errors import InvalidOptionError
from impasto.features.decoder import ordered_levels
from impasto.features.transfer import FeatureTransfer
from impasto.features.vgg import load_encoder
from impasto.io.image import save_image
from impasto.methods import optimization, photoreal, wct
from impasto.ops.color import combine_luminance_chroma
from impasto.ops.regions import UNCOVERED, binary_codes, colour_codes, resize_codes
from impasto.ops.smoothing import matting_affinity, smooth_exact
from impasto.ops.stats import mean_cov, mean_std

LEVEL = "relu1_1"


def _smooth_image(h: int, w: int, seed: int, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.interpolate(torch.rand(1, 3, 5, 5, generator=g), size=(h, w), mode="bicubic")
    return (base * scale + shift).clamp(0, 1)


def _transfer(content, styles, kind="wct", alpha=1.0, weights=None, **masks):
    enc = load_encoder("tiny", [LEVEL])
    change = FeatureTransfer(enc, [LEVEL], content, styles, weights or [1.0 / len(styles)] * len(styles), alpha, kind, **masks)
    with torch.inference_mode():
        fc = enc(content)[LEVEL]
        return enc, fc, change(LEVEL, fc)


def test_wct_gives_the_style_mean_and_covariance():
    content, style = _smooth_image(40, 40, 0), _smooth_image(36, 44, 1, 0.5, 0.3)
    enc, fc, out = _transfer(content, [style])
    m_out, c_out = mean_cov(out.double())
    m_s, c_s = mean_cov(enc(style)[LEVEL].double())
    torch.testing.assert_close(m_out, m_s, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(c_out * (1600 / 1599), c_s * (1584 / 1583), atol=1e-4, rtol=2e-3)  # unbiased in WCT


def test_adain_gives_the_style_mean_and_std():
    content, style = _smooth_image(32, 32, 2), _smooth_image(32, 32, 3, 0.3, 0.5)
    enc, fc, out = _transfer(content, [style], kind="adain")
    m_out, s_out = mean_std(out)
    m_s, s_s = mean_std(enc(style)[LEVEL])
    torch.testing.assert_close(m_out, m_s, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(s_out, s_s, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("kind", ["wct", "adain"])
def test_alpha_zero_returns_the_content_features(kind):
    content, style = _smooth_image(24, 24, 4), _smooth_image(24, 24, 5)
    _, fc, out = _transfer(content, [style], kind=kind, alpha=0.0)
    torch.testing.assert_close(out, fc)


def test_constant_and_rank_deficient_inputs_give_finite_features():
    flat = torch.full((1, 3, 20, 20), 0.4)
    style = _smooth_image(20, 20, 6)
    for content, sty in ((flat, style), (style, flat), (flat, flat)):
        _, _, out = _transfer(content, [sty])
        assert torch.isfinite(out).all()
    grey = _smooth_image(20, 20, 7).mean(1, keepdim=True).expand(1, 3, 20, 20)  # rank-deficient colours
    _, _, out = _transfer(grey, [style])
    assert torch.isfinite(out).all()


def _halves(h: int, w: int, left: tuple[float, ...], right: tuple[float, ...]) -> torch.Tensor:
    mask = torch.empty(1, 3, h, w)
    mask[..., : w // 2] = torch.tensor(left).view(1, 3, 1, 1)
    mask[..., w // 2:] = torch.tensor(right).view(1, 3, 1, 1)
    return mask


def test_label_masks_give_each_region_its_style_regions_statistics():
    h, w = 32, 32
    content = _smooth_image(h, w, 8)
    dark, bright = _smooth_image(h, w, 9, 0.2, 0.0), _smooth_image(h, w, 10, 0.2, 0.8)
    style = torch.cat([dark[..., : w // 2], bright[..., w // 2:]], dim=-1)
    red, blue = (1.0, 0.0, 0.0), (0.0, 0.0, 1.0)
    # content: red on the left, blue on the right; style: blue (bright) on the left, red (dark) on the right
    enc, fc, out = _transfer(content, [style], content_mask=[_halves(h, w, red, blue)],
                             style_mask=[_halves(h, w, blue, red)])
    feats_s = enc(style)[LEVEL]
    m_dark_region, _ = mean_std(feats_s[..., :, : w // 2])  # style left = blue = bright
    m_out_right, _ = mean_std(out[..., :, w // 2:])  # content right = blue
    torch.testing.assert_close(m_out_right, m_dark_region, atol=1e-4, rtol=1e-3)
    m_out_left, _ = mean_std(out[..., :, : w // 2])
    m_style_right, _ = mean_std(feats_s[..., :, w // 2:])
    torch.testing.assert_close(m_out_left, m_style_right, atol=1e-4, rtol=1e-3)


def test_empty_and_unmatched_segments_are_handled():
    h, w = 32, 32
    content, style = _smooth_image(h, w, 11), _smooth_image(h, w, 12)
    mask = torch.zeros(1, 3, h, w)
    mask[..., 5, 7] = 1.0  # a one-pixel segment: gone after shrinking to a deeper level's size
    mask[..., 20:, 20:] = torch.tensor([0.0, 1.0, 0.0]).view(1, 3, 1, 1)  # green: absent from the style map
    enc = load_encoder("tiny", ["relu3_1"])
    change = FeatureTransfer(enc, ["relu3_1"], content, [style], [1.0], 1.0, "wct",
                             content_mask=[mask], style_mask=[torch.zeros(1, 3, h, w)])
    with torch.inference_mode():
        out = change("relu3_1", enc(content)["relu3_1"])
    assert torch.isfinite(out).all()
    assert out.shape == enc(content)["relu3_1"].shape


def test_per_style_masks_style_their_region_and_leave_the_rest():
    h, w = 32, 32
    content = _smooth_image(h, w, 13)
    a, b = _smooth_image(h, w, 14, 0.2, 0.0), _smooth_image(h, w, 15, 0.2, 0.8)
    left = _halves(h, w, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    top = torch.zeros(1, 3, h, w)
    top[..., : h // 4, w // 2:] = 1.0
    enc, fc, out = _transfer(content, [a, b], content_mask=[left, top])
    m_left, _ = mean_std(out[..., :, : w // 2])
    m_a, _ = mean_std(enc(a)[LEVEL])
    torch.testing.assert_close(m_left, m_a, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(out[..., h // 4:, w // 2:], fc[..., h // 4:, w // 2:])  # in no mask: unchanged


def test_mask_codes_and_resizing():
    mask = _halves(4, 6, (1.0, 0.0, 0.0), (0.0, 1.0, 0.0))
    codes = colour_codes(mask)
    assert codes[0, 0] == 255 * 65536 and codes[0, -1] == 255 * 256
    assert set(resize_codes(codes, (2, 3)).unique().tolist()) == set(codes.unique().tolist())
    binary = binary_codes([mask[:, :1].expand(1, 3, 4, 6), torch.zeros(1, 3, 4, 6)])
    assert binary[0, 0] == 0 and binary[0, -1] == UNCOVERED


@pytest.mark.parametrize(("content_masks", "style_masks", "n_styles", "match"), [
    (0, 1, 1, "needs a --content-mask"),
    (2, 0, 1, "one --content-mask per style"),
    (1, 3, 2, "label maps"),
])
def test_mask_count_errors(content_masks, style_masks, n_styles, match):
    m = torch.zeros(1, 3, 8, 8)
    with pytest.raises(InvalidOptionError, match=match):
        _transfer(torch.rand(1, 3, 8, 8), [torch.rand(1, 3, 8, 8)] * n_styles,
                  content_mask=[m] * content_masks, style_mask=[m] * style_masks)


def test_mask_with_another_aspect_ratio_is_refused():
    with pytest.raises(InvalidOptionError, match="aspect ratio"):
        _transfer(torch.rand(1, 3, 8, 16), [torch.rand(1, 3, 8, 8)], content_mask=[torch.zeros(1, 3, 8, 8)])


def test_level_order_and_errors():
    assert ordered_levels(["relu1_1", "relu3_1", "relu2_1"], "coarse-to-fine") == ["relu3_1", "relu2_1", "relu1_1"]
    assert ordered_levels(["relu3_1", "relu1_1"], "fine-to-coarse") == ["relu1_1", "relu3_1"]
    with pytest.raises(InvalidOptionError, match="Did you mean 'relu4_1'"):
        ordered_levels(["relu4_2"], "coarse-to-fine")
    with pytest.raises(InvalidOptionError, match="order must be"):
        ordered_levels(["relu1_1"], "sideways")


# ------------------------------------------------------------------ methods end to end, tiny decoders

LEVELS3 = ("relu3_1", "relu2_1", "relu1_1")


def _opts(module, files, unpool, **kw):
    return module.Options(levels=LEVELS3, decoders=tuple(files[lv, unpool] for lv in LEVELS3), size=None,
                          style_size=None, **kw)


def test_wct_method_end_to_end(tiny_decoders):
    content, style, other = _smooth_image(30, 45, 16), _smooth_image(33, 33, 17), _smooth_image(33, 33, 18, 0.3)
    out = wct.run(content, style, _opts(wct, tiny_decoders, False)).image
    assert out.shape == content.shape and 0 <= float(out.min()) and float(out.max()) <= 1
    reverse = wct.run(content, style, _opts(wct, tiny_decoders, False, order="fine-to-coarse")).image
    assert not torch.allclose(reverse, out)
    blended = wct.run(content, [style, other], _opts(wct, tiny_decoders, False, style_blend=(1.0, 0.0))).image
    torch.testing.assert_close(blended, out)
    lum = wct.run(content, style, _opts(wct, tiny_decoders, False, color="luminance")).image
    assert not torch.allclose(lum, out)


def test_wct_decoder_errors(tiny_decoders):
    content = _smooth_image(16, 16, 19)
    swapped = (tiny_decoders["relu2_1", False], tiny_decoders["relu3_1", False], tiny_decoders["relu1_1", False])
    with pytest.raises(InvalidOptionError, match="inverts relu2_1, but it was given for relu3_1"):
        wct.run(content, content, wct.Options(levels=LEVELS3, decoders=swapped, size=None))
    with pytest.raises(InvalidOptionError, match="one decoder per level"):
        wct.run(content, content, wct.Options(levels=LEVELS3, decoders=swapped[:2], size=None))
    unpooling = tuple(tiny_decoders[lv, True] for lv in LEVELS3)
    with pytest.raises(InvalidOptionError, match="not a nearest-upsampling decoder"):
        wct.run(content, content, wct.Options(levels=LEVELS3, decoders=unpooling, size=None))
    with pytest.raises(InvalidOptionError, match="max-unpooling"):
        photoreal.run(content, content, _opts(photoreal, tiny_decoders, False))


def test_wct_mixes_a_max_unpooling_level_with_nearest_ones(tiny_decoders):
    """unpool_levels picks the decoder kind per level: the deepest level may unpool with the indices
    of the image it decodes (what the shipped relu5_1 decoder does) while the others upsample."""
    content, style = _smooth_image(30, 45, 25), _smooth_image(33, 33, 26)
    mixed_files = (tiny_decoders["relu3_1", True], tiny_decoders["relu2_1", False], tiny_decoders["relu1_1", False])
    mixed = wct.run(content, style, wct.Options(levels=LEVELS3, decoders=mixed_files, unpool_levels=("relu3_1",),
                                                size=None, style_size=None)).image
    plain = wct.run(content, style, _opts(wct, tiny_decoders, False)).image
    assert mixed.shape == content.shape and not torch.allclose(mixed, plain)
    with pytest.raises(InvalidOptionError, match="not a max-unpooling .* which relu3_1 takes here .*levels: relu3_1"):
        wct.run(content, style, _opts(wct, tiny_decoders, False, unpool_levels=("relu3_1",)))
    with pytest.raises(InvalidOptionError, match="unknown level 'relu3_2'.*relu3_1"):
        wct.run(content, style, _opts(wct, tiny_decoders, False, unpool_levels=("relu3_2",)))


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="this CPU has no bf16")
def test_bf16_cascade_stays_close_to_fp32(tiny_decoders):
    """precision bf16 runs encoder and decoders in bf16 channels-last at every level: the result
    moves a little from fp32 (statistics stay float32/64), and a bad choice is refused. (PhotoWCT
    is checked on real photos in test_shipped_decoders: random tiny weights tie in max-pooling.)"""
    content, style = _smooth_image(40, 56, 27), _smooth_image(36, 36, 28)
    full = wct.run(content, style, _opts(wct, tiny_decoders, False, precision="fp32")).image
    fast = wct.run(content, style, _opts(wct, tiny_decoders, False, precision="bf16")).image
    assert fast.dtype == torch.float32 and fast.shape == full.shape
    assert 0 < float((fast - full).abs().mean()) < 0.02  # measured 0.005
    with pytest.raises(InvalidOptionError, match="precision must be one of auto, fp32, bf16"):
        wct.run(content, style, _opts(wct, tiny_decoders, False, precision="fp16"))


def test_missing_shipped_decoder_says_how_to_train_one(monkeypatch):
    from impasto.features import decoder as decoder_mod

    monkeypatch.setattr(decoder_mod, "shipped_of_kind", lambda kind: {})
    with pytest.raises(InvalidOptionError, match="impasto train decoder --level relu4_1 --unpool"):
        decoder_mod.shipped_decoder("relu4_1", True)


@pytest.mark.parametrize("smooth", ["none", "fast", "exact"])
def test_photowct_end_to_end(tiny_decoders, smooth):
    content, style = _smooth_image(27, 38, 20), _smooth_image(30, 30, 21)
    result = photoreal.run(content, style, _opts(photoreal, tiny_decoders, True, smooth=smooth))
    assert result.image.shape == content.shape
    if smooth == "exact":
        assert result.final_losses["relative_residual"] <= 1e-4
        raw = photoreal.run(content, style, _opts(photoreal, tiny_decoders, True, smooth="none")).image

        def roughness(x):
            return float((x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., 1:] - x[..., :-1]).abs().mean())

        assert roughness(result.image) < roughness(raw)


def test_photowct_option_errors(tiny_decoders):
    content = _smooth_image(16, 16, 22)
    for bad, match in (({"smooth": "exakt"}, "Did you mean 'exact'"), ({"smooth_strength": 1.0}, "smooth_strength"),
                       ({"affinity": "laplace"}, "affinity must be")):
        with pytest.raises(InvalidOptionError, match=match):
            photoreal.run(content, content, _opts(photoreal, tiny_decoders, True, **bad))


def test_methods_through_the_api_and_cli(tiny_decoders, tmp_path, capsys):
    from impasto.cli import main

    content, style = tmp_path / "c.png", tmp_path / "s.png"
    save_image(_smooth_image(24, 32, 23), content)
    save_image(_smooth_image(24, 24, 24), style)
    mask = tmp_path / "m.png"
    save_image(_halves(24, 32, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)), mask)
    out = api.stylize(content, style, method="wct", options={"levels": ["relu2_1"], "decoders": [tiny_decoders["relu2_1", False]],
                                                             "content_mask": [str(mask)], "size": None})
    assert out.recipe["method"] == "wct" and out.image.shape == (1, 3, 24, 32)
    args = ["stylize", str(content), str(style), "--method", "photowct", "--levels", "relu2_1,relu1_1",
            "--decoders", f"{tiny_decoders['relu2_1', True]},{tiny_decoders['relu1_1', True]}",
            "--smooth", "fast", "--content-mask", str(mask), "--content-mask", str(mask), str(style),
            "-o", str(tmp_path / "o.png"), "-q"]
    assert main(args) == 0
    options = api.load_recipe(tmp_path / "o.png")["options"]
    assert options["smooth"] == "fast" and options["levels"] == ["relu2_1", "relu1_1"]
    assert options["content_mask"] == [str(mask), str(mask)]  # one mask per style, two styles
    assert main(["stylize", str(content), str(style), "--method", "wct", "--smooth", "fast", "-o", str(tmp_path / "x.png")]) != 0
    assert "--smooth does not apply to --method wct" in capsys.readouterr().err.replace("\n", " ")


# ------------------------------------------------------------------ matting affinity

def test_matting_affinity_matches_a_direct_sum_over_windows():
    img = _smooth_image(5, 6, 25) + 0.05 * torch.rand(1, 3, 5, 6, generator=torch.Generator().manual_seed(0))
    w = matting_affinity(img, eps=1e-5).toarray()
    pix = img[0].permute(1, 2, 0).double().numpy()
    ref = np.zeros((30, 30))
    for y in range(1, 4):
        for x in range(1, 5):
            idx = [(y + dy) * 6 + (x + dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
            cols = np.array([pix[i // 6, i % 6] for i in idx])
            mu = cols.mean(0)
            cov = (cols - mu).T @ (cols - mu) / 9 + 1e-5 / 9 * np.eye(3)
            inv = np.linalg.inv(cov)
            for p, i in enumerate(idx):
                for q, j in enumerate(idx):
                    ref[i, j] += (1 + (cols[p] - mu) @ inv @ (cols[q] - mu)) / 9
    np.testing.assert_allclose(w, ref, rtol=1e-8, atol=1e-8)
    counts = np.zeros((5, 6))
    for y in range(1, 4):
        for x in range(1, 5):
            counts[y - 1:y + 2, x - 1:x + 2] += 1
    np.testing.assert_allclose(w.sum(1), counts.ravel(), atol=1e-8)  # each window's row sums to 1


def test_exact_smoothing_with_the_matting_affinity_converges():
    content = _smooth_image(20, 24, 26)
    stylized = (content + 0.2 * torch.rand(1, 3, 20, 24, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    out, info = smooth_exact(stylized, content, a=0.99, kind="matting")
    assert info.relative_residual < 1e-5 and out.shape == content.shape
    assert float((out - content).abs().mean()) < float((stylized - content).abs().mean())


def test_unpool_levels_none_on_the_command_line_means_no_unpooling_level(tiny_decoders, tmp_path):
    """'none' is a tuple option's empty value (an Optional field's None): --unpool-levels none gives
    the same image as no max-unpooling level through the API."""
    from impasto.cli import main
    from impasto.io.image import load_image

    content, style = tmp_path / "c.png", tmp_path / "s.png"
    save_image(_smooth_image(24, 32, 29), content)
    save_image(_smooth_image(24, 24, 30), style)
    files = ",".join(tiny_decoders[lv, False] for lv in LEVELS3)
    out = tmp_path / "o.png"
    assert main(["stylize", str(content), str(style), "--method", "wct", "--levels", ",".join(LEVELS3), "--decoders", files,
                 "--unpool-levels", "none", "--size", "none", "--style-size", "none", "-o", str(out), "-q"]) == 0
    assert api.load_recipe(out)["options"]["unpool_levels"] == []
    plain = wct.run(load_image(content), load_image(style), _opts(wct, tiny_decoders, False, unpool_levels=())).image
    torch.testing.assert_close(load_image(out), (plain * 255).round() / 255, atol=1 / 255, rtol=0)


def test_wct_refine_continues_from_the_cascade_with_the_optimisation_method(tiny_decoders):
    content, style = _smooth_image(48, 64, 19), _smooth_image(40, 40, 20, 0.5, 0.4)
    plain = _opts(wct, tiny_decoders, False, precision="fp32")
    cascade = wct.run(content, style, plain)
    refined = wct.run(content, style, _opts(wct, tiny_decoders, False, precision="fp32", refine=4))
    assert refined.steps == cascade.steps + 4 == len(LEVELS3) + 4
    by_hand = optimization.prepare(style, optimization.Options(size=None, style_weight=optimization.REFINE_STYLE_WEIGHT, precision="fp32"), encoder=load_encoder("tiny", ["relu1_1"]),
                                   styles_sized=True)(content, init=cascade.image, iterations=4)
    torch.testing.assert_close(refined.image, by_hand.image)
    assert refined.final_losses["total"] == pytest.approx(by_hand.final_losses["total"])
    lum = wct.run(content, style, _opts(wct, tiny_decoders, False, precision="fp32", refine=4, color="luminance")).image
    torch.testing.assert_close(lum, combine_luminance_chroma(refined.image, content))  # the colour mode acts on the refined image


def test_photowct_defaults_are_the_judged_ones():
    """Defaults change only with a blind win: two levels beat three 20/27 on held-out photo pairs
    (bench/results/2026-12-03_photowct_levels_heldout_512); exact matting smoothing at 0.999."""
    o = photoreal.Options()
    assert o.levels == ("relu2_1", "relu1_1") and o.order == "coarse-to-fine"
    assert (o.smooth, o.affinity, o.smooth_strength) == ("exact", "matting", 0.999)
