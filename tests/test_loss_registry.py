"""The style-loss registry and the shared weighted, normalised StyleTerm.

A loss registered by name is usable by the optimisation method, the feed-forward trainer and the CLI;
several styles combine as each loss says; per-sample targets (conditional training) pick each sample's style.
"""

from __future__ import annotations

import pytest
import torch

from impasto.cli import main
from impasto.errors import InvalidOptionError
from impasto.features.vgg import load_encoder
from impasto.io.image import save_image
from impasto.losses import registry
from impasto.losses.objective import StyleSum, StyleTerm, content_term, layer_weights, normalised_mse
from impasto.methods import optimization as opt
from impasto.training.feedforward import TrainOptions, train

LAYERS = ("relu1_1", "relu2_1", "relu3_1")


def _image(seed: int, h: int = 36, w: int = 44) -> torch.Tensor:
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def encoder():
    return load_encoder("tiny", LAYERS)


@pytest.fixture
def mean_only():
    """A loss registered by a user: per-channel means only, no exact blend claimed."""
    loss = registry.register_style_loss(registry.StyleLoss(
        "mean_only", "per-channel mean (a test loss)",
        statistics=lambda f: (f.float().mean(dim=(2, 3)),),
        distance=lambda f, t: (f.float().mean(dim=(2, 3)) - t[0]).pow(2).mean(),
        blend="none"))
    yield loss
    del registry.STYLE_LOSSES["mean_only"]


def test_the_shipped_losses_are_registered_and_unknown_names_get_a_suggestion():
    assert {"gram", "mean_std", "w2"} <= set(registry.style_loss_names())
    with pytest.raises(InvalidOptionError, match="Did you mean 'gram'"):
        registry.get_style_loss("gramm")
    with pytest.raises(InvalidOptionError, match="registered already"):
        registry.register_style_loss(registry.StyleLoss("gram", "again", lambda f: (f,), lambda f, t: f.sum()))
    with pytest.raises(InvalidOptionError, match="letters, digits and _"):
        registry.register_style_loss(registry.StyleLoss("a b", "bad name", lambda f: (f,), lambda f, t: f.sum()))
    with pytest.raises(InvalidOptionError, match="blend must be one of"):
        registry.register_style_loss(registry.StyleLoss("x", "bad blend", lambda f: (f,), lambda f, t: f.sum(), "max"))


SHIPPED = registry.style_loss_names()  # collected before any test registers its own


def test_the_shipped_set():
    assert set(SHIPPED) == {"gram", "mean_std", "w2", "gram_centered", "histogram", "sliced_wasserstein", "mrf",
                            "gram_shifted", "gram_pyramid", "mmd_gaussian"}


@pytest.mark.parametrize("name", SHIPPED)
def test_every_loss_is_zero_on_its_own_style_and_positive_elsewhere(encoder, name):
    style = encoder(_image(1))
    term = StyleTerm(name, layer_weights(LAYERS, None), [style])
    assert term(style).item() == pytest.approx(0.0, abs=1e-5)
    assert term(encoder(_image(2))).item() > 1e-3


@pytest.mark.parametrize("name", SHIPPED)
def test_blending_two_identical_styles_equals_one(encoder, name):
    style, x = encoder(_image(1)), encoder(_image(3))
    weights = layer_weights(LAYERS, None)
    one = StyleTerm(name, weights, [style])(x)
    if registry.get_style_loss(name).blend == "none":  # refuses to mix, says so
        with pytest.raises(InvalidOptionError, match="cannot blend several styles"):
            StyleTerm(name, weights, [style, style], mix=(0.3, 0.7))
        return
    two = StyleTerm(name, weights, [style, style], mix=(0.3, 0.7))(x)
    assert two.item() == pytest.approx(one.item(), rel=1e-5)


def test_layer_sources_take_one_style_per_layer(encoder):
    a, b, x = encoder(_image(1)), encoder(_image(2)), encoder(_image(3))
    weights = {"relu2_1": 1.0}
    from_b = StyleTerm("gram", weights, [a, b], layer_sources={"relu2_1": 1})(x)
    assert from_b.item() == pytest.approx(StyleTerm("gram", weights, [b])(x).item(), rel=1e-6)


def test_per_sample_targets_pick_each_samples_style(encoder):
    a, b = encoder(_image(1)), encoder(_image(2))
    x = encoder(torch.cat([_image(1), _image(2)]))  # sample 0 is style a, sample 1 is style b
    term = StyleTerm("gram", layer_weights(LAYERS, None), [a, b], per_sample=True)
    assert term(x, torch.tensor([0, 1])).item() == pytest.approx(0.0, abs=1e-6)
    assert term(x, torch.tensor([1, 0])).item() > 1e-3
    with pytest.raises(InvalidOptionError, match="which style each sample takes"):
        term(x)


def test_a_loss_without_a_blend_refuses_mixing_styles_at_one_layer(encoder, mean_only):
    a, b, x = encoder(_image(1)), encoder(_image(2)), encoder(_image(3))
    with pytest.raises(InvalidOptionError, match="cannot blend several styles at one layer"):
        StyleTerm("mean_only", {"relu1_1": 1.0}, [a, b])
    only_b = StyleTerm("mean_only", {"relu1_1": 1.0}, [a, b], mix=(0.0, 1.0))(x)
    assert only_b.item() == pytest.approx(StyleTerm("mean_only", {"relu1_1": 1.0}, [b])(x).item())


def test_normalisation_divides_each_layer_by_its_targets_mean_square(encoder):
    style, x = encoder(_image(1)), encoder(_image(4))
    term = StyleTerm("mean_std", {"relu2_1": 1.0}, [style])
    mean, std = (t.float() for t in (style["relu2_1"].mean(dim=(2, 3)), style["relu2_1"].std(dim=(2, 3), unbiased=False)))
    xm, xs = x["relu2_1"].mean(dim=(2, 3)), x["relu2_1"].std(dim=(2, 3), unbiased=False)
    raw = (xm - mean).pow(2).mean() + (xs - std).pow(2).mean()
    expected = raw / (mean.pow(2).mean() + std.pow(2).mean())
    assert term(x).item() == pytest.approx(expected.item(), rel=1e-3)
    c = content_term(x, style, {"relu1_1": 0.25, "relu3_1": 0.75})
    ref = 0.25 * normalised_mse(x["relu1_1"], style["relu1_1"]) + 0.75 * normalised_mse(x["relu3_1"], style["relu3_1"])
    assert c.item() == pytest.approx(ref.item())
    assert normalised_mse(3 * style["relu1_1"], style["relu1_1"]).item() == pytest.approx(4.0, rel=1e-5)


def test_a_registered_loss_runs_in_optimisation_and_training(tmp_path, mean_only):
    content, style = _image(5), _image(6, 40, 40)
    options = opt.Options(encoder="tiny", size=36, scale_iterations=(6,), precision="fp32", style_loss="mean_only")
    result = opt.run(content, style, options)
    assert torch.isfinite(result.image).all() and result.final_losses["style"] > 0
    with pytest.raises(InvalidOptionError, match="cannot blend several styles"):
        opt.run(content, [style, _image(7, 40, 40)], options)
    photos = tmp_path / "photos"
    for i in range(2):
        save_image(_image(10 + i, 40, 40), photos / f"p{i}.png")
    style_file = save_image(style, tmp_path / "s.png")
    trained = train(TrainOptions(styles=(str(style_file),), content_dirs=(str(photos),), steps=3, batch_size=2,
                                 crop=32, width=8, style_size=40, encoder="tiny", precision="fp32",
                                 style_loss="mean_only"), tmp_path / "m.safetensors")
    assert trained.model_path.is_file()


def test_cli_lists_and_checks_style_losses(tmp_path, capsys, mean_only):
    assert main(["stylize", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # click wraps the help text
    for name in SHIPPED:  # losses registered before the CLI is built are listed
        assert f"{name} (" in out
    content = save_image(_image(3, 36, 36), tmp_path / "c.png")
    painting = save_image(_image(4, 32, 32), tmp_path / "painting.png")
    out_file = tmp_path / "out.png"
    assert main(["stylize", str(content), str(painting),
                 "--encoder", "tiny", "--size", "32", "--iterations", "3", "--precision", "fp32",
                 "--style-loss", "mean_only", "-o", str(out_file), "-q"]) == 0, capsys.readouterr().err
    assert out_file.is_file()
    photos = tmp_path / "photos"
    save_image(_image(1, 40, 40), photos / "p.png")
    style = save_image(_image(2, 32, 32), tmp_path / "s.png")
    code = main(["train", "feedforward", "--style", str(style), "--content-dir", str(photos), "-o",
                 str(tmp_path / "m.safetensors"), "--steps", "2", "--encoder", "tiny", "--style-loss", "mean_sdt", "-q"])
    assert code != 0
    assert "Did you mean 'mean_std'" in capsys.readouterr().err


@pytest.mark.parametrize("name", SHIPPED)
def test_per_sample_targets_of_styles_of_different_sizes_stack(encoder, name):
    a, b = encoder(_image(1, 36, 44)), encoder(_image(2, 50, 30))
    term = StyleTerm(name, layer_weights(LAYERS, None), [a, b], per_sample=True)
    x = encoder(torch.cat([_image(3), _image(4)]))
    value = term(x, torch.tensor([0, 1]))
    assert torch.isfinite(value) and value.item() > 0


def test_combined_losses_sum_with_their_weights(encoder):
    style, x = encoder(_image(1)), encoder(_image(3))
    weights = layer_weights(LAYERS, None)
    gram = StyleTerm("gram", weights, [style])(x).item()
    hist = StyleTerm("histogram", weights, [style])(x).item()
    parts = [(loss, w, weights) for loss, w in registry.parse_style_losses("gram+histogram", (1.0, 0.5))]
    combined = StyleSum(parts, [style])(x).item()
    assert combined == pytest.approx(gram + 0.5 * hist, rel=1e-5)
    with pytest.raises(InvalidOptionError, match="1 --style-loss-weights given for the 2 losses"):
        registry.parse_style_losses("gram+mrf", (1.0,))
    with pytest.raises(InvalidOptionError, match="Did you mean 'mrf'"):
        registry.parse_style_losses("gram+mfr")
    with pytest.raises(InvalidOptionError, match="names a loss twice"):
        registry.parse_style_losses("gram+gram")


def test_combined_losses_from_the_cli(tmp_path, capsys):
    content = save_image(_image(3, 36, 36), tmp_path / "c.png")
    painting = save_image(_image(4, 32, 32), tmp_path / "painting.png")
    out_file = tmp_path / "out.png"
    base = ["stylize", str(content), str(painting), "--encoder", "tiny", "--size", "32", "--iterations", "3",
            "--precision", "fp32", "--style-layers", "relu2_1,relu3_1", "-q"]
    assert main([*base, "--style-loss", "gram+mrf", "--style-loss-weights", "1,0.5", "-o", str(out_file)]) == 0, \
        capsys.readouterr().err
    assert out_file.is_file()
    assert main([*base, "--style-loss", "gram+mrf", "--style-loss-weights", "1", "-o", str(tmp_path / "x.png")]) != 0
    assert "1 --style-loss-weights given for the 2 losses" in " ".join(capsys.readouterr().err.split())


def test_each_loss_takes_its_own_layers_unless_style_layers_are_given():
    default = opt.Options()
    assert default.all_style_layers() == ("relu1_1", "relu2_1", "relu3_1", "relu4_1")
    mrf = opt.Options(style_loss="mrf")
    assert mrf.all_style_layers() == ("relu3_1", "relu4_1")  # Li & Wand's layers: shallow maps are too many patches
    both = opt.Options(style_loss="gram+mrf").style_parts()
    assert [(loss.name, layers) for loss, _, layers in both] == [
        ("gram", ("relu1_1", "relu2_1", "relu3_1", "relu4_1")), ("mrf", ("relu3_1", "relu4_1"))]
    chosen = opt.Options(style_loss="gram+mrf", style_layers=("relu2_1",)).style_parts()
    assert [layers for _, _, layers in chosen] == [("relu2_1",), ("relu2_1",)]
    with pytest.raises(InvalidOptionError, match="--style-layer-weights needs --style-layers"):
        opt.validate(opt.Options(style_layer_weights=(1.0,)), 1)
    with pytest.raises(InvalidOptionError, match="at least one style layer"):
        opt.validate(opt.Options(style_layers=()), 1)


def test_a_loss_gain_scales_its_term(encoder):
    style, x = encoder(_image(1)), encoder(_image(3))
    plain = registry.StyleLoss("g1", "gram, gain 1", registry.STYLE_LOSSES["gram"].statistics,
                               registry.STYLE_LOSSES["gram"].distance)
    quiet = registry.StyleLoss("g2", "gram, gain 0.1", plain.statistics, plain.distance, gain=0.1)
    weights = {"relu2_1": 1.0}
    assert StyleTerm(quiet, weights, [style])(x).item() == pytest.approx(0.1 * StyleTerm(plain, weights, [style])(x).item())
    assert registry.get_style_loss("mrf").gain < registry.get_style_loss("gram").gain


@pytest.mark.parametrize("name", SHIPPED)
def test_normalised_losses_do_not_depend_on_the_activation_scale(encoder, name):
    """VGG in caffe units has activations in the hundreds, the tiny encoder about 1: a style weight must mean
    the same for both. w2 divided features^2 by features^4 and was 1/4000 of Gram's at caffe scale."""
    photo, style = encoder(_image(1)), encoder(_image(7))
    weights = layer_weights(LAYERS, None)
    small = StyleTerm(name, weights, [style])(photo).item()
    big = StyleTerm(name, weights, [{k: 100 * v for k, v in style.items()}])({k: 100 * v for k, v in photo.items()}).item()
    assert big == pytest.approx(small, rel=2e-3)
