"""The Gatys optimisation method on the tiny random-weight encoder (fast) and small images."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from impasto.errors import CancelledError, CheckpointError, InvalidOptionError
from impasto.events import CancelToken, Done, Progress, Stage
from impasto.features.vgg import load_encoder
from impasto.losses.objective import layer_weights
from impasto.methods import optimization as opt
from impasto.ops.color import rgb_to_yuv
from impasto.ops.stats import gram_matrix


def _image(h: int, w: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, h // 4 + 1, w // 4 + 1, generator=g)
    return torch.nn.functional.interpolate(base, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1)


@pytest.fixture(scope="module")
def content() -> torch.Tensor:
    return _image(40, 56, 1)


@pytest.fixture(scope="module")
def styles() -> list[torch.Tensor]:
    return [_image(48, 48, 2), _image(36, 60, 3)]


def tiny(**kw) -> opt.Options:
    base = dict(encoder="tiny", size=48, scale_iterations=(8,), precision="fp32")
    base.update(kw)
    return opt.Options(**base)


def _totals(events: list) -> list[float]:
    return [e.losses["total"] for e in events if isinstance(e, Progress)]


def test_loss_decreases_lbfgs_and_adam(content, styles):
    for optimizer, steps in (("lbfgs", 15), ("adam", 30)):
        events: list = []
        opt.run(content, styles[0], tiny(optimizer=optimizer, scale_iterations=(steps,), init="noise"),
                callback=events.append)
        totals = _totals(events)
        assert len(totals) == steps
        assert totals[-1] < 0.5 * totals[0], (optimizer, totals[0], totals[-1])


def test_same_seed_same_image_and_other_seed_differs(content, styles):
    a = opt.run(content, styles[0], tiny(init="noise", seed=7)).image
    b = opt.run(content, styles[0], tiny(init="noise", seed=7)).image
    c = opt.run(content, styles[0], tiny(init="noise", seed=8)).image
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_same_seed_same_image_bf16(content, styles):
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("CPU has no bf16")
    a = opt.run(content, styles[0], tiny(precision="bf16")).image
    b = opt.run(content, styles[0], tiny(precision="bf16")).image
    assert torch.equal(a, b)


@pytest.mark.parametrize("optimizer,loss", [("lbfgs", {}), ("adam", {}),
                                            # MRF matches reused for 4 steps: the checkpoint keeps them
                                            ("lbfgs", {"style_loss": "gram+mrf", "style_layers": ("relu1_1", "relu2_1"),
                                                       "match_every": 4})])
def test_resume_matches_uninterrupted_run(tmp_path, content, styles, optimizer, loss):
    options = tiny(optimizer=optimizer, scale_iterations=(6, 6), size=40, **loss)
    full = opt.run(content, styles[0], options).image

    ckpt = tmp_path / "run.ckpt"
    token = CancelToken()

    def stop_after_8(event):
        if isinstance(event, Progress) and event.step == 8:
            token.cancel()

    with pytest.raises(CancelledError):
        opt.run(content, styles[0], options, callback=stop_after_8, cancel=token, checkpoint=ckpt, checkpoint_every=4)
    assert ckpt.is_file()
    events: list = []
    resumed = opt.run(content, styles[0], options, checkpoint=ckpt, resume=True, callback=events.append)
    steps = [e.step for e in events if isinstance(e, Progress)]
    assert steps == [9, 10, 11, 12]  # continued, not restarted
    assert torch.equal(resumed.image, full)


def test_resume_refuses_damaged_mrf_matches(tmp_path, content, styles):
    from impasto.io.checkpoint import load_checkpoint, save_checkpoint

    options = tiny(scale_iterations=(4,), size=40, style_loss="mrf", style_layers=("relu1_1",), match_every=3)
    ckpt = tmp_path / "run.ckpt"
    token = CancelToken()
    with pytest.raises(CancelledError):
        opt.run(content, styles[0], options, checkpoint=ckpt, cancel=token,
                callback=lambda e: token.cancel() if isinstance(e, Progress) and e.step == 2 else None)
    state = load_checkpoint(ckpt)
    assert state["style_state"][0]["relu1_1"]["calls"] == 2
    state["style_state"] = [{"relu1_1": {"calls": "two", "indices": []}}]
    save_checkpoint(ckpt, state)
    with pytest.raises(CheckpointError, match="damaged \\(style_state"):
        opt.run(content, styles[0], options, checkpoint=ckpt, resume=True)


def test_match_every_default_change_keeps_gram_checkpoints_and_names_the_flag_for_mrf_ones(tmp_path, content, styles):
    """--match-every's default went from 1 to 10 (2026-12-04). A Gram run's checkpoint written under the old
    default still resumes (the option changes nothing there); an MRF run's is refused with the flag to add."""
    assert opt.Options().match_every == 10 and opt.MATCH_EVERY_BEFORE == 1
    gram = tmp_path / "gram.ckpt"
    opt.run(content, styles[0], tiny(scale_iterations=(4,), size=40, match_every=1), checkpoint=gram, checkpoint_every=2)
    opt.run(content, styles[0], tiny(scale_iterations=(4,), size=40), checkpoint=gram, resume=True)
    mrf = dict(scale_iterations=(4,), size=40, style_loss="mrf", style_layers=("relu1_1",))
    ckpt = tmp_path / "mrf.ckpt"
    opt.run(content, styles[0], tiny(**mrf, match_every=1), checkpoint=ckpt, checkpoint_every=2)
    with pytest.raises(CheckpointError, match=r"defaults before 2026-12-04 \(--match-every 1\); add --match-every 1 to resume"):
        opt.run(content, styles[0], tiny(**mrf), checkpoint=ckpt, resume=True)
    with pytest.raises(CheckpointError, match="different run"):  # another value than the old default: no hint
        opt.run(content, styles[0], tiny(**mrf, match_every=5, style_weight=3.0), checkpoint=ckpt, resume=True)
    opt.run(content, styles[0], tiny(**mrf, match_every=1), checkpoint=ckpt, resume=True)
    # a Gram checkpoint fingerprinted before the option was pinned, with an explicit --match-every 5 (which did
    # nothing then either), still resumes
    old = tmp_path / "old.ckpt"
    options = tiny(scale_iterations=(4,), size=40, match_every=5)
    opt.run(content, styles[0], options, checkpoint=old, checkpoint_every=2)
    from impasto.io.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(old)
    import dataclasses

    no_face = dataclasses.replace(options, protect_faces=0.0)  # as the run fingerprints a photo without a face
    state["fingerprint"] = opt.fingerprint(content, [styles[0]], no_face, pin_inert=False)
    assert state["fingerprint"] != opt.fingerprint(content, [styles[0]], no_face)
    save_checkpoint(old, state)
    opt.run(content, styles[0], options, checkpoint=old, resume=True)


def test_resume_refuses_other_options(tmp_path, content, styles):
    ckpt = tmp_path / "run.ckpt"
    opt.run(content, styles[0], tiny(scale_iterations=(4, 4), size=40), checkpoint=ckpt, checkpoint_every=2)
    with pytest.raises(CheckpointError, match="different run"):
        opt.run(content, styles[0], tiny(scale_iterations=(4, 4), size=40, style_weight=1.0), checkpoint=ckpt, resume=True)
    with pytest.raises(CheckpointError, match="does not exist; run without --resume"):
        opt.run(content, styles[0], tiny(), checkpoint=tmp_path / "none.ckpt", resume=True)


def test_multiscale_schedule_and_output_size(content, styles):
    events: list = []
    out = opt.run(content, styles[0], tiny(size=64, scale_iterations=None, iterations=12, min_size=32),
                  callback=events.append)
    stages = [e for e in events if isinstance(e, Stage)]
    assert [max(s.size) for s in stages] == [32, 45, 64]
    assert tuple(out.image.shape) == (1, 3, 46, 64)  # 40x56 content, long side 64, aspect kept
    assert isinstance(events[-1], Done)
    assert out.steps == 12
    plan = opt.scale_plan(opt.Options(iterations=350), 512, 768)
    assert [n for _, n in plan] == [200, 100, 50]
    assert [n for _, n in opt.scale_plan(opt.Options(), 512, 512)] == [171, 86, 43]
    assert plan[-1][0] == (341, 512)


def test_native_size_when_size_is_none(content, styles):
    out = opt.run(content, styles[0], tiny(size=None, scale_iterations=(2,)))
    assert out.image.shape[-2:] == content.shape[-2:]


def test_blend_weights_and_layer_sources_select_styles(content, styles):
    only_first = opt.run(content, styles[0], tiny()).image
    blended = opt.run(content, styles, tiny(style_blend=(1.0, 0.0))).image
    assert torch.equal(only_first, blended)
    only_second = opt.run(content, styles[1], tiny()).image
    layers = opt.Options().all_style_layers()
    per_layer = opt.run(content, styles, tiny(layer_sources=tuple((layer, 1) for layer in layers))).image
    assert torch.equal(only_second, per_layer)
    mixed = opt.run(content, styles, tiny(layer_sources=(("relu2_1", 0), ("relu3_1", 1)))).image
    assert not torch.allclose(mixed, only_first) and not torch.allclose(mixed, only_second)


def test_style_scale_changes_result(content, styles):
    a = opt.run(content, styles[0], tiny()).image
    b = opt.run(content, styles[0], tiny(style_scale=0.5)).image
    assert not torch.allclose(a, b)


def test_colour_control(content, styles):
    lum = opt.run(content, styles[0], tiny(color="luminance", size=None)).image
    # luminance-only transfer keeps the content's chroma (U, V) everywhere (up to clamping)
    assert torch.allclose(rgb_to_yuv(lum)[:, 1:], rgb_to_yuv(content)[:, 1:], atol=0.03)
    only = opt.run(content, styles[0], tiny(color="color_only", size=None)).image
    assert torch.allclose(rgb_to_yuv(only)[:, :1], rgb_to_yuv(content)[:, :1], atol=0.03)
    plain = opt.run(content, styles[0], tiny(size=None)).image
    assert not torch.allclose(rgb_to_yuv(plain)[:, 1:], rgb_to_yuv(content)[:, 1:], atol=0.03)
    match = opt.run(content, styles[0], tiny(color="match", size=None)).image
    assert not torch.allclose(match, plain)


@pytest.mark.parametrize("init", ["content", "noise", "style"])
def test_inits(content, styles, init):
    out = opt.run(content, styles[0], tiny(init=init, scale_iterations=(0,)))
    if init == "content":
        assert torch.allclose(out.image, torch.nn.functional.interpolate(content, size=out.image.shape[-2:], mode="bicubic", antialias=True).clamp(0, 1), atol=1e-5)
    assert out.image.shape[-2:] == (34, 48)


def test_init_from_file(tmp_path, content, styles):
    from impasto.io.image import save_image

    path = save_image(torch.zeros(1, 3, 10, 10), tmp_path / "black.png")
    out = opt.run(content, styles[0], tiny(init=str(path), scale_iterations=(0,)))
    assert float(out.image.max()) == 0.0


@pytest.mark.parametrize("style_loss", ["gram", "mean_std", "w2"])
def test_each_style_loss_optimises(content, styles, style_loss):
    events: list = []
    opt.run(content, styles[0], tiny(style_loss=style_loss, init="noise", scale_iterations=(10,)), callback=events.append)
    style_terms = [e.losses["style"] for e in events if isinstance(e, Progress)]
    assert style_terms[-1] < style_terms[0]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"optimizer": "lbgfs"}, "Did you mean 'lbfgs'"),
        ({"color": "luma"}, "color must be one of"),
        ({"style_blend": (1.0,)}, "1 blend weights given for 2"),
        ({"layer_sources": (("relu4_2", 0),)}, "not a style layer"),
        ({"layer_sources": (("relu1_1", 5),)}, "style index must be in 0..1"),
        ({"style_layer_weights": (1.0,), "style_layers": ("relu1_1", "relu2_1")}, "1 style layer weights given for 2"),
        ({"init": "/no/such/file.png"}, "init must be one of"),
        ({"scale_factor": 1.0}, r"scale_factor\) must be in \[1.1, 8\]"),
        ({"tv_weight": -1.0}, r"--tv-weight \(tv_weight\) must be in \[0, "),
    ],
)
def test_invalid_options_are_typed_errors(content, styles, changes, message):
    with pytest.raises(InvalidOptionError, match=message):
        opt.run(content, styles, tiny(**changes))


def test_unknown_layer_suggests_nearest(content, styles):
    with pytest.raises(InvalidOptionError, match="Did you mean 'relu5_1'"):
        opt.run(content, styles[0], tiny(style_layers=("relu1_1", "relu5-1")))


def test_objective_matches_straightforward_reference(content, styles):
    """The normalised Gram/content objective equals a plain autograd implementation (value and gradient)."""
    options = tiny()
    layers = [*options.content_layers, *options.all_style_layers()]
    enc = load_encoder("tiny", layers)
    style = opt._style_term(enc, lambda x: x, [styles[0]], options, None, {})
    objective = opt._Objective(enc, lambda x: x, content, style, options)
    x = _image(40, 56, 9).requires_grad_(True)
    total, _ = objective(x)
    (grad,) = torch.autograd.grad(total, x)

    y = x.detach().clone().requires_grad_(True)
    fc, fs, fy = enc(content), enc(styles[0]), enc(y)
    c_term = sum(((fy[k] - fc[k]) ** 2).mean() / (fc[k] ** 2).mean() for k in options.content_layers)
    s_term = 0.0
    block = {"relu1_1": 0.01, "relu2_1": 1.0, "relu3_1": 1.0, "relu4_1": 0.05, "relu5_1": 0.01}  # the default profile
    total_weight = sum(block[k] for k in options.all_style_layers())
    for k in options.all_style_layers():
        target = gram_matrix(fs[k])
        n, ch, h, w = fy[k].shape
        flat = fy[k].reshape(n, ch, h * w)
        g = torch.bmm(flat, flat.transpose(1, 2)) / (h * w)
        s_term = s_term + ((g - target) ** 2).mean() / (target ** 2).mean() * block[k] / total_weight
    tv = ((y[..., :, 1:] - y[..., :, :-1]) ** 2).mean() + ((y[..., 1:, :] - y[..., :-1, :]) ** 2).mean()
    ref = options.content_weight * c_term + options.style_weight * s_term + options.tv_weight * tv
    (ref_grad,) = torch.autograd.grad(ref, y)
    assert torch.allclose(total, ref, rtol=1e-4)
    assert torch.allclose(grad, ref_grad, rtol=1e-3, atol=1e-6 * float(ref_grad.abs().max()))


def test_every_option_has_help_text():
    for f in dataclasses.fields(opt.Options):
        assert f.metadata.get("help"), f.name


def test_ratio_sets_style_weight():
    assert opt.Options(content_weight=2.0, ratio=1e-2).resolved_style_weight() == pytest.approx(200.0)
    assert opt.Options(style_weight=5.0).resolved_style_weight() == 5.0


def test_default_style_layer_weights_follow_the_block_profile():
    """None: relu2/relu3 carry the style, relu1/relu4/relu5 a little; the weights sum to 1 for any layer list."""
    default = layer_weights(opt.Options().all_style_layers(), None, opt.style_layer_prior)
    assert list(default) == ["relu1_1", "relu2_1", "relu3_1", "relu4_1"]
    assert default["relu2_1"] == default["relu3_1"] == pytest.approx(1 / 2.06)
    assert default["relu1_1"] == pytest.approx(0.01 / 2.06) and default["relu4_1"] == pytest.approx(0.05 / 2.06)
    assert layer_weights(("relu5_1",), None, opt.style_layer_prior) == {"relu5_1": 1.0}  # alone, a layer gets it all
    five = layer_weights(("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"), None, opt.style_layer_prior)
    assert sum(five.values()) == pytest.approx(1.0) and five["relu5_1"] == pytest.approx(0.01 / 2.07)
    assert layer_weights(("a", "relu2_2"), None, opt.style_layer_prior) == {"a": 0.5, "relu2_2": 0.5}  # unknown name: 1
    assert layer_weights(("relu1_1", "relu2_1"), (3.0, 1.0), opt.style_layer_prior) == {"relu1_1": 3.0, "relu2_1": 1.0}
    assert layer_weights(("relu4_2", "relu3_2"), None) == {"relu4_2": 0.5, "relu3_2": 0.5}  # content: equal


def test_older_defaults_name_each_changed_default_alone_then_all_together() -> None:
    """A checkpoint written under older defaults is named with the flags that resume it: one default or several
    (a run that was off on both --protect-faces and --match-every used to get only "a different run")."""
    now = opt.Options(protect_faces=10.0, match_every=10)

    def seen(o: opt.Options) -> str:  # stands for the fingerprint
        return f"{o.protect_faces:g}/{o.match_every}"

    assert opt.older_defaults("10/1", now, seen, opt.DEFAULTS_BEFORE) == "--match-every 1"
    assert opt.older_defaults("0/10", now, seen, opt.DEFAULTS_BEFORE) == "--protect-faces 0"
    assert opt.older_defaults("0/1", now, seen, opt.DEFAULTS_BEFORE) == "--protect-faces 0 --match-every 1"
    assert opt.older_defaults("0/7", now, seen, opt.DEFAULTS_BEFORE) is None  # another run altogether
    assert opt.older_defaults("0/1", opt.Options(protect_faces=0.0, match_every=1), seen, opt.DEFAULTS_BEFORE) is None


def test_older_defaults_try_pairs_and_print_values_as_typed() -> None:
    before = {"tv_weight": 0.1, "match_every": 1, "protect_faces": 0.0}
    now = opt.Options(tv_weight=1.0, match_every=10, protect_faces=10.0)

    def seen(o: opt.Options) -> str:
        return f"{o.tv_weight}/{o.match_every}/{o.protect_faces}"

    assert opt.older_defaults("0.1/1/10.0", now, seen, before) == "--tv-weight 0.1 --match-every 1"  # two of three
    assert opt.older_defaults("0.1/1/0.0", now, seen, before) == "--tv-weight 0.1 --match-every 1 --protect-faces 0"
    assert opt._flag_value(0.1) == "0.1" and opt._flag_value(0.0) == "0"
    assert float(opt._flag_value(1234567.0)) == 1234567.0 and float(opt._flag_value(0.1234567)) == 0.1234567
    assert opt._flag_value(3) == "3" and opt._flag_value("gram") == "gram"
