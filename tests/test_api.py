"""impasto.stylize: input kinds, events, cancellation, recipes and their re-run, alpha."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import impasto
from impasto.errors import CancelledError, InvalidOptionError
from impasto.io.image import load_image, load_image_with_alpha, save_image

FAST = {"encoder": "tiny", "size": 40, "scale_iterations": [3, 3], "precision": "fp32"}


@pytest.fixture()
def files(tmp_path):
    g = torch.Generator().manual_seed(0)
    content = save_image(torch.rand(1, 3, 30, 44, generator=g), tmp_path / "content.png")
    style = save_image(torch.rand(1, 3, 32, 32, generator=g), tmp_path / "style.png")
    return content, style


def test_accepts_paths_pil_numpy_and_tensors(files):
    content, style = files
    by_path = impasto.stylize(content, style, options=FAST).image
    pil = Image.open(content)
    arr = np.asarray(Image.open(style))
    tensor = load_image(style)
    for c, s in ((pil, arr), (str(content), tensor), (load_image(content), [style])):
        assert torch.equal(impasto.stylize(c, s, options=FAST).image, by_path)
    assert by_path.shape == (1, 3, 27, 40) and by_path.dtype == torch.float32
    assert 0 <= float(by_path.min()) and float(by_path.max()) <= 1


def test_options_instance_or_dict_and_unknown_key(files):
    from impasto.methods.optimization import Options

    content, style = files
    a = impasto.stylize(content, style, options=Options(**{**FAST, "scale_iterations": (3, 3)})).image
    b = impasto.stylize(content, style, options=FAST).image
    assert torch.equal(a, b)
    with pytest.raises(InvalidOptionError, match="Did you mean 'style_weight'"):
        impasto.stylize(content, style, options={"styleweight": 3})
    with pytest.raises(InvalidOptionError, match="unknown method"):
        impasto.stylize(content, style, method="gatys")


def test_progress_events_and_cancellation(files):
    content, style = files
    events = []
    impasto.stylize(content, style, options=FAST, callback=events.append)
    progress = [e for e in events if isinstance(e, impasto.Progress)]
    assert [e.step for e in progress] == list(range(1, 7))
    assert all(e.total == 6 and {"content", "style", "tv", "total"} <= set(e.losses) for e in progress)
    assert sum(isinstance(e, impasto.Stage) for e in events) == 2
    assert isinstance(events[-1], impasto.Done)

    token = impasto.CancelToken()

    def cancel_at_2(event):
        if isinstance(event, impasto.Progress) and event.step == 2:
            token.cancel()

    with pytest.raises(CancelledError):
        impasto.stylize(content, style, options=FAST, callback=cancel_at_2, cancel=token)


def test_recipe_round_trip_and_rerun_reproduces(files, tmp_path):
    content, style = files
    result = impasto.stylize(content, style, options=FAST)
    out = result.save(tmp_path / "out.png")
    recipe = impasto.load_recipe(out)
    assert recipe["method"] == "optimization"
    assert recipe["options"]["style_weight"] == 50.0 and recipe["seed"] == 0
    assert recipe["weights"] == {"name": "tiny", "sha256": "random-seed-0"}
    assert recipe["versions"]["torch"] == torch.__version__
    assert recipe["inputs"]["content"]["path"] == str(content.resolve())
    again = impasto.rerun(recipe)
    out2 = again.save(tmp_path / "out2.png")
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(out2)))


@pytest.mark.parametrize("name, extra, value, before", [
    ("match_every", {"style_loss": "mrf", "style_layers": ["relu1_1"]}, 10, 1),  # MRF matched every step
    ("protect_faces", {}, 5.0, 0.0),  # faces were not protected
])
def test_rerun_of_a_recipe_older_than_an_option_runs_as_before_it(files, monkeypatch, name, extra, value, before):
    content, style = files
    recipe = impasto.stylize(content, style, options={**FAST, **extra, name: value}).recipe
    assert recipe["options"][name] == value
    seen = []
    real = impasto.api.stylize
    monkeypatch.setattr(impasto.api, "stylize", lambda *a, **kw: seen.append(kw["options"]) or real(*a, **kw))
    impasto.rerun(recipe)
    del recipe["options"][name]  # as written before the option existed
    impasto.rerun(recipe)
    assert [o[name] for o in seen] == [value, before]


def test_without_added_defaults_drops_only_options_at_the_value_older_versions_ran_with():
    drop = impasto.api.without_added_defaults
    assert drop("optimization", {"style_weight": 50.0, "match_every": 1, "protect_faces": 0.0}) == {"style_weight": 50.0}
    assert drop("optimization", {"style_loss": "gram+mrf", "match_every": 10, "protect_faces": 10.0}) == {
        "style_loss": "gram+mrf", "match_every": 10, "protect_faces": 10.0}
    # without a patch loss --match-every changes nothing: a Gram record made under its new default (10) is the
    # same picture as one made under the old (1)
    assert drop("optimization", {"style_loss": "gram", "match_every": 10}) == {"style_loss": "gram"}
    assert drop("optimization", {"match_every": 10}) == {}  # gram is the default loss
    assert drop("exemplars", {"match_every": 10}) == {"match_every": 10}  # always mrf
    assert drop("adain", {"alpha": 1.0}) == {"alpha": 1.0}


def test_rerun_keeps_each_style_loss_as_strong_as_when_the_recipe_was_made(files, tmp_path, monkeypatch):
    """A loss's gain that changed since (mrf: 0.01 until 2026-12-04, now 0.04) is made up for in its weight."""
    from impasto.losses.registry import STYLE_LOSSES

    content, style = files
    options = {**FAST, "style_loss": "gram+mrf", "style_loss_weights": [1.0, 0.5], "style_layers": ["relu1_1"]}
    recipe = impasto.stylize(content, style, options=options).recipe
    assert recipe["style_loss_gains"]["mrf"] == STYLE_LOSSES["mrf"].gain
    seen = []
    real = impasto.api.stylize
    monkeypatch.setattr(impasto.api, "stylize", lambda *a, **kw: seen.append(kw["options"]) or real(*a, **kw))
    impasto.rerun(recipe)  # the gains it records are today's: nothing to make up for
    del recipe["style_loss_gains"]  # as written before recipes recorded them, when mrf's gain was 0.01
    impasto.rerun(recipe)
    recipe["style_loss_gains"] = {**recipe.get("style_loss_gains", {}), "mrf": 2 * STYLE_LOSSES["mrf"].gain}
    impasto.rerun(recipe)
    mrf = STYLE_LOSSES["mrf"].gain
    assert [w for o in seen for w in o["style_loss_weights"]] == pytest.approx([1.0, 0.5, 1.0, 0.5 * 0.01 / mrf, 1.0, 1.0])
    assert all(o["style_weight"] == recipe["options"]["style_weight"] for o in seen)


def test_rerun_of_an_old_exemplars_recipe_scales_its_style_weight(monkeypatch):
    """The exemplars method has one weight, for its mrf term: an old recipe at 200 re-runs at 200 x 0.01 / gain."""
    from impasto.losses.registry import STYLE_LOSSES

    old = {"style_weight": 200.0, "size": 64}
    assert impasto.api._same_strength("exemplars", old, impasto.api.RECIPE_GAINS_BEFORE) == \
        {"style_weight": pytest.approx(200.0 * 0.01 / STYLE_LOSSES["mrf"].gain), "size": 64}
    today = {name: loss.gain for name, loss in STYLE_LOSSES.items()}
    assert impasto.api._same_strength("exemplars", old, today) == old
    assert impasto.api._same_strength("adain", {"alpha": 1.0}, {}) == {"alpha": 1.0}  # no style loss to scale


def test_rerun_refuses_changed_inputs(files, tmp_path):
    content, style = files
    recipe = impasto.stylize(content, style, options=FAST).recipe
    save_image(torch.zeros(1, 3, 30, 44), content)
    with pytest.raises(InvalidOptionError, match="changed since"):
        impasto.rerun(recipe)
    in_memory = impasto.stylize(torch.rand(1, 3, 20, 20), style, options=FAST).recipe
    with pytest.raises(InvalidOptionError, match="in-memory"):
        impasto.rerun(in_memory)


def test_keep_alpha_reattaches_transparency(tmp_path, files):
    _, style = files
    rgba = np.zeros((30, 40, 4), dtype=np.uint8)
    rgba[..., :3] = 200
    rgba[..., 3] = 255
    rgba[:, :20, 3] = 0  # left half transparent
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, "RGBA").save(path)
    out = impasto.stylize(path, style, options=FAST, keep_alpha=True).save(tmp_path / "styled.png")
    _, alpha = load_image_with_alpha(out)
    assert alpha is not None
    assert float(alpha[..., :, :10].max()) < 0.05 and float(alpha[..., :, -10:].min()) > 0.95
    plain = impasto.stylize(path, style, options=FAST).save(tmp_path / "plain.png")
    assert load_image_with_alpha(plain)[1] is None


def test_real_vgg16_integration_small(vgg16_cache):
    """End to end on the real offline VGG-16 at 96 px: the loss falls, the image changes, the recipe names the weights."""
    import json

    from conftest import data_dir

    data = data_dir()
    events = []
    result = impasto.stylize(data / "content" / "skimage_chelsea.jpg", data / "style" / "vangogh_starry_night.jpg",
                             options={"size": 96, "scale_iterations": [15, 15]}, callback=events.append)
    totals = [e.losses["total"] for e in events if isinstance(e, impasto.Progress)]
    # L-BFGS runs without a line search, as in neural-style, so the loss is not monotone: one step can jump up
    # (kept, not rejected). Judge the first scale by its best evaluation and the second by its last five, so a
    # single jump passes but a run that ends far above where it was does not.
    assert min(totals[1:15]) < 0.5 * totals[0] and min(totals[-5:]) < 0.5 * totals[15]
    content = torch.nn.functional.interpolate(load_image(data / "content" / "skimage_chelsea.jpg"),
                                              size=result.image.shape[-2:], mode="bilinear", antialias=True)
    assert float((result.image - content).abs().mean()) > 0.05  # visibly stylised
    sidecar = json.loads((vgg16_cache / "weights" / "vgg16.json").read_text())
    assert result.recipe["weights"] == {"name": "vgg16", "sha256": sidecar["sha256"]}
