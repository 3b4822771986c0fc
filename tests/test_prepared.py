"""Load once, run many: every method's ``prepare(styles, options)`` gives a callable that stylises frame after
frame exactly as ``run`` does, without reloading weights or recomputing style targets; the optimisation
method's prepared form takes a start image and extra loss terms (what video's temporal losses need)."""

from __future__ import annotations

import pytest
import torch

from impasto import api
from impasto.errors import InvalidOptionError
from impasto.features import transfer
from impasto.methods import arbitrary, exemplars, feedforward, optimization, photoreal, wct

LEVELS3 = ("relu3_1", "relu2_1", "relu1_1")


def _image(h: int, w: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.interpolate(torch.rand(1, 3, 6, 6, generator=g), size=(h, w), mode="bicubic").clamp(0, 1)


def _cases(files):
    tiny_opt = dict(encoder="tiny", size=40, scale_iterations=(3, 3), precision="fp32")
    return {
        "optimization": (optimization, optimization.Options(**tiny_opt)),
        "exemplars": (exemplars, exemplars.Options(encoder="tiny", size=40, iterations=4, min_size=40, precision="fp32",
                                                   patch_layers=("relu2_1",))),
        "adain": (arbitrary, arbitrary.Options(decoder=files["relu2_1", False], size=None, style_size=None, precision="fp32")),
        "wct": (wct, wct.Options(levels=LEVELS3, decoders=tuple(files[lv, False] for lv in LEVELS3), size=None,
                                 style_size=None, unpool_levels=(), precision="fp32")),
        "photowct": (photoreal, photoreal.Options(levels=LEVELS3, decoders=tuple(files[lv, True] for lv in LEVELS3),
                                                  size=None, style_size=None, smooth="fast", precision="fp32")),
        "feedforward": (feedforward, feedforward.Options(model="composition_vii", size=48, precision="fp32")),
    }


@pytest.mark.parametrize("method", ["optimization", "exemplars", "adain", "wct", "photowct", "feedforward"])
def test_prepared_calls_equal_run_frame_by_frame(tiny_decoders, method):
    module, options = _cases(tiny_decoders)[method]
    styles = [_image(36, 36, 1), _image(30, 40, 2)]
    frames = [_image(32, 40, 10 + i) for i in range(3)]
    prepared = module.prepare(styles, options)
    for frame in frames:
        once = module.run(frame, styles, options).image
        torch.testing.assert_close(prepared(frame).image, once, rtol=0, atol=1e-6)
    assert not torch.allclose(prepared(frames[0]).image, prepared(frames[2]).image)  # it does look at the frame


def test_one_pass_methods_load_weights_and_style_features_once(tiny_decoders, monkeypatch):
    loads, transfers = [], []
    real_load, real_init = transfer.load_decoders, transfer.FeatureTransfer.__init__
    monkeypatch.setattr(transfer, "load_decoders", lambda *a, **k: loads.append(1) or real_load(*a, **k))
    monkeypatch.setattr(transfer.FeatureTransfer, "__init__", lambda self, *a, **k: transfers.append(1) or real_init(self, *a, **k))
    _, options = _cases(tiny_decoders)["wct"]
    prepared = wct.prepare(_image(36, 36, 1), options)
    for i in range(4):
        prepared(_image(32, 40, 20 + i))
    assert (len(loads), len(transfers)) == (1, 1)
    prepared(_image(24, 28, 30))  # another frame size: masks again, the style features are reused
    assert len(transfers) == 1


def test_optimization_computes_style_targets_once_per_scale_size(monkeypatch):
    made = []
    real = optimization._style_term
    monkeypatch.setattr(optimization, "_style_term", lambda *a, **k: made.append(1) or real(*a, **k))
    options = optimization.Options(encoder="tiny", size=40, scale_iterations=(2, 2), precision="fp32")
    prepared = optimization.prepare(_image(36, 36, 1), options)
    for i in range(3):
        prepared(_image(32, 40, 40 + i))
    assert len(made) == 2  # two scales, three frames
    lum = optimization.prepare(_image(36, 36, 1), optimization.Options(**{**options.__dict__, "color": "luminance"}))
    made.clear()
    for i in range(2):
        lum(_image(32, 40, 40 + i))
    assert len(made) == 4  # luminance targets depend on each frame: never reused


def test_warm_start_runs_the_finest_scale_from_init():
    options = optimization.Options(encoder="tiny", size=40, scale_iterations=(3, 3), precision="fp32")
    prepared = optimization.prepare(_image(36, 36, 1), options)
    frame, init = _image(32, 40, 50), _image(32, 40, 51)
    untouched = prepared(frame, init=init, iterations=0)
    torch.testing.assert_close(untouched.image, init)
    assert untouched.steps == 0
    warm = prepared(frame, init=init, iterations=4)
    assert warm.steps == 4 and not torch.allclose(warm.image, init)
    with pytest.raises(InvalidOptionError, match="warm start"):
        prepared(frame, iterations=4)


def test_extra_loss_terms_pull_the_result_and_are_reported():
    options = optimization.Options(encoder="tiny", size=40, scale_iterations=(8,), precision="fp32")
    prepared = optimization.prepare(_image(36, 36, 1), options)
    frame, target = _image(32, 40, 60), _image(32, 40, 61)
    free = prepared(frame)
    pulled = prepared(frame, extra_loss=lambda x: {"temporal": 1e4 * ((x - target) ** 2).mean()})
    assert "temporal" in pulled.final_losses and "temporal" not in free.final_losses
    assert float(((pulled.image - target) ** 2).mean()) < 0.5 * float(((free.image - target) ** 2).mean())


def test_warm_start_and_extra_loss_refuse_a_checkpoint(tmp_path):
    prepared = optimization.prepare(_image(36, 36, 1), optimization.Options(encoder="tiny", size=40, scale_iterations=(2,)))
    with pytest.raises(InvalidOptionError, match="checkpoint"):
        prepared(_image(32, 40, 1), init=_image(32, 40, 2), checkpoint=tmp_path / "c.ckpt")


@pytest.mark.parametrize("method", ["adain", "wct", "photowct", "feedforward"])
def test_one_pass_runs_take_no_checkpoint_arguments(method):
    """No silent ``**_``: a checkpoint passed to a method that cannot use it is an error, not ignored."""
    module = api.METHODS[method]
    with pytest.raises(TypeError, match="checkpoint"):
        module.run(_image(32, 32, 1), _image(32, 32, 2), module.Options(), checkpoint="x.ckpt")
    with pytest.raises(InvalidOptionError, match="cannot checkpoint"):
        api.stylize(_image(32, 32, 1), None if method == "feedforward" else _image(32, 32, 2), method=method,
                    checkpoint="x.ckpt")
