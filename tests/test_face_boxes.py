"""Face boxes (OpenCV's Haar cascades, no extra) and the optimisation's --protect-faces content weight."""

from __future__ import annotations

import pytest
import torch

from conftest import data_dir
from impasto.errors import InvalidOptionError
from impasto.features.face_boxes import face_boxes, face_map
from impasto.features.vgg import load_encoder
from impasto.io.image import load_image
from impasto.losses.content import content_loss
from impasto.losses.objective import content_term, position_weight_maps
from impasto.methods import optimization as opt
from impasto.ops.geometry import resize_long_side


def _photo(name: str, side: int = 512) -> torch.Tensor:
    return resize_long_side(load_image(data_dir() / "content" / name), side)


@pytest.mark.parametrize("name, centre", [("kodim04.jpg", (0.53, 0.5)), ("skimage_astronaut.jpg", (0.44, 0.22))])
def test_finds_the_one_frontal_face_of_a_portrait(name, centre):
    boxes = face_boxes(_photo(name))
    assert len(boxes) == 1
    x0, y0, x1, y1 = boxes[0]
    assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
    assert abs((x0 + x1) / 2 - centre[0]) < 0.08 and abs((y0 + y1) / 2 - centre[1]) < 0.08


@pytest.mark.parametrize("name", ["kodim21.jpg", "skimage_chelsea.jpg", "skimage_rocket.jpg", "kodim13.jpg"])
def test_no_face_in_a_landscape_a_cat_or_a_rocket(name):
    assert face_boxes(_photo(name)) == []


def test_the_photo_size_does_not_change_the_boxes_much():
    small, large = face_boxes(_photo("skimage_astronaut.jpg", 300)), face_boxes(_photo("skimage_astronaut.jpg", 1024))
    assert len(small) == len(large) == 1
    assert max(abs(a - b) for a, b in zip(small[0], large[0])) < 0.05


def test_face_boxes_refuses_a_batch_or_a_grey_tensor():
    with pytest.raises(InvalidOptionError, match="face detection"):
        face_boxes(torch.rand(2, 3, 64, 64))
    with pytest.raises(InvalidOptionError, match="face detection"):
        face_boxes(torch.rand(1, 1, 64, 64))


def test_face_map_is_one_inside_fades_and_is_zero_away():
    m = face_map([(0.25, 0.25, 0.5, 0.5)], (100, 200))
    assert m.shape == (1, 1, 100, 200) and m.min() >= 0 and m.max() <= 1
    cy, cx = round((0.375 + 0.025) * 100), round(0.375 * 200)
    assert m[0, 0, cy, cx] == 1.0
    assert m[0, 0, 95, 190] == 0.0 and m[0, 0, 2, 2] == 0.0
    # the ellipse's x radius is 0.55 box widths (0.1375 of the image): pixel 98 is at 0.855 of it, in the fade
    assert 0.3 < m[0, 0, cy, 98] < 0.7
    assert torch.equal(face_map([], (10, 12)), torch.zeros(1, 1, 10, 12))
    two = face_map([(0.0, 0.0, 0.2, 0.2), (0.7, 0.7, 0.9, 0.9)], (50, 50))
    assert two[0, 0, 5, 5] > 0.9 and two[0, 0, 41, 40] > 0.9 and two[0, 0, 25, 25] == 0


def test_weighted_content_loss_weighs_each_position():
    g = torch.Generator().manual_seed(0)
    f, t = torch.rand(1, 4, 6, 8, generator=g, dtype=torch.float64), torch.rand(1, 4, 6, 8, generator=g, dtype=torch.float64)
    assert torch.allclose(content_loss(f, t, torch.ones(1, 1, 6, 8)), content_loss(f, t))
    w = torch.zeros(1, 1, 6, 8, dtype=torch.float64)
    w[..., :3, :] = 2.0
    assert torch.allclose(content_loss(f, t, w), ((f - t)[..., :3, :] ** 2).sum() * 2 / f.numel())
    x = f.clone().requires_grad_(True)
    content_loss(x, t, w).backward()
    assert torch.all(x.grad[..., 3:, :] == 0) and torch.all(x.grad[..., :3, :] != 0)
    assert torch.autograd.gradcheck(lambda a: content_loss(a, t, w), (f.clone().requires_grad_(True),))


def test_content_term_gain_is_resized_to_each_layer_and_zero_gain_changes_nothing():
    g = torch.Generator().manual_seed(1)
    feats = {"a": torch.rand(1, 3, 8, 8, generator=g), "b": torch.rand(1, 5, 4, 4, generator=g)}
    targets = {k: torch.rand(v.shape, generator=g) for k, v in feats.items()}
    weights = {"a": 0.5, "b": 0.5}
    sizes = {k: tuple(v.shape[-2:]) for k, v in feats.items()}
    plain = content_term(feats, targets, weights)
    assert torch.allclose(content_term(feats, targets, weights, position_weight_maps(torch.zeros(1, 1, 32, 32), sizes)), plain)
    assert torch.allclose(content_term(feats, targets, weights, position_weight_maps(torch.ones(1, 1, 32, 32), sizes)), 2 * plain)
    left = torch.zeros(1, 1, 32, 32)
    left[..., :16] = 1.0
    maps = position_weight_maps(left, sizes)
    assert maps["a"].shape == (1, 1, 8, 8) and maps["b"].shape == (1, 1, 4, 4)
    assert plain < content_term(feats, targets, weights, maps) < 2 * plain


def test_protect_faces_keeps_the_face_closer_to_the_photo_and_leaves_the_rest():
    """Measured where the loss acts: the content layer's squared error, inside the face box and away from it."""
    content = _photo("skimage_astronaut.jpg", 128)
    style = resize_long_side(load_image(data_dir() / "style" / "vangogh_starry_night.jpg"), 128)
    base = dict(encoder="tiny", size=128, min_size=128, scale_iterations=(25,), precision="fp32", style_weight=1e2)
    plain = opt.run(content, style, opt.Options(**base, protect_faces=0.0)).image
    kept = opt.run(content, style, opt.Options(**base, protect_faces=20.0)).image
    encoder = load_encoder("tiny", ["relu4_2"])
    with torch.no_grad():
        target = encoder(content)["relu4_2"]
        errors = {k: (encoder(im)["relu4_2"] - target).pow(2).mean(1)[0] for k, im in (("plain", plain), ("kept", kept))}
    (x0, y0, x1, y1), = face_boxes(content)
    h, w = target.shape[-2:]
    face = torch.zeros(h, w, dtype=torch.bool)
    face[int(y0 * h):round(y1 * h) + 1, int(x0 * w):round(x1 * w) + 1] = True
    away = torch.zeros(h, w, dtype=torch.bool)
    away[round(0.7 * h):, :round(0.3 * w)] = True
    assert errors["kept"][face].mean() < 0.6 * errors["plain"][face].mean()  # measured: 0.47
    assert errors["kept"][away].mean() == pytest.approx(float(errors["plain"][away].mean()), rel=0.2)


def test_protect_faces_changes_nothing_where_no_face_is_found():
    content, style = _photo("kodim21.jpg", 96), _photo("kodim13.jpg", 96)
    base = dict(encoder="tiny", size=96, min_size=96, scale_iterations=(5,), precision="fp32")
    assert torch.equal(opt.run(content, style, opt.Options(**base, protect_faces=0.0)).image,
                       opt.run(content, style, opt.Options(**base, protect_faces=10.0)).image)


def test_protect_faces_is_10_by_default_and_refuses_a_negative_weight():
    """10 won the blind portrait test (bench/results/2026-12-04b_protect_faces_10_vs_default_portraits_512)."""
    assert opt.Options().protect_faces == 10.0
    with pytest.raises(InvalidOptionError, match="protect_faces"):
        opt.run(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32),
                opt.Options(encoder="tiny", size=32, scale_iterations=(1,), protect_faces=-1.0))


def test_video_leaves_faces_unprotected_unless_asked(tmp_path, monkeypatch):
    """Faces are found per frame and the cascade can miss one in the next frame: stylize-video holds the option at
    0 unless it is given (a dict of the fields given, as the CLI passes), and an explicit value applies to every frame."""
    from impasto import api
    from impasto.io.image import save_image

    assert api.video_options("optimization", None) == {"protect_faces": 0.0}
    assert api.video_options("optimization", {"size": 64}) == {"protect_faces": 0.0, "size": 64}
    assert api.video_options("optimization", {"protect_faces": 3.0}) == {"protect_faces": 3.0}
    assert api.video_options("adain", None) is None and api.video_options("adain", {"alpha": 0.5}) == {"alpha": 0.5}
    given = opt.Options(size=64)
    assert api.video_options("optimization", given) is given  # an instance has every field set
    frames = tmp_path / "frames"
    for i in range(2):
        save_image(_photo("kodim04.jpg", 128), frames / f"{i:03d}.png")
    searched = []
    monkeypatch.setattr(opt, "face_boxes", lambda image: searched.append(1) or face_boxes(image))
    common = {"encoder": "tiny", "size": 64, "scale_iterations": (2,), "precision": "fp32"}
    style = data_dir() / "style" / "vangogh_starry_night.jpg"
    plain = api.stylize_video(frames, tmp_path / "plain", style, method="optimization", options=common,
                              temporal={"warm_iterations": 2})
    assert searched == [] and api.read_recipe(plain.frames[0])["options"]["protect_faces"] == 0.0
    kept = api.stylize_video(frames, tmp_path / "kept", style, method="optimization",
                             options={**common, "protect_faces": 10.0}, temporal={"warm_iterations": 2})
    assert len(searched) == 2 and api.read_recipe(kept.frames[1])["options"]["protect_faces"] == 10.0
    assert len(api.read_recipe(kept.frames[1])["faces"]) == 1 and "faces" not in api.read_recipe(plain.frames[1])


def test_methods_built_on_the_optimiser_do_not_protect_faces(monkeypatch):
    """Exemplars, explain and the one-pass methods' refinement set protect_faces themselves: a change of the
    optimisation's default must not change them unjudged."""
    from impasto import explain
    from impasto.methods import exemplars

    original = opt.Options

    def faces_on_by_default(*args, **kwargs):  # as if the optimisation's default were on
        kwargs.setdefault("protect_faces", 10.0)
        return original(*args, **kwargs)

    monkeypatch.setattr(opt, "Options", faces_on_by_default)
    assert opt.Options().protect_faces == 10.0
    assert exemplars._optimization_options(exemplars.Options()).protect_faces == 0.0
    assert explain._base(explain.ExplainOptions(), "relu1_1").protect_faces == 0.0
    refine = opt.Refine([torch.rand(1, 3, 32, 32)], 1, load_encoder("tiny", ["relu1_1"]), "adain")
    assert refine.prepared.options.protect_faces == 0.0


def test_missing_cascade_files_are_a_clear_error(tmp_path, monkeypatch):
    import cv2

    from impasto.errors import WeightsUnavailableError
    from impasto.features import face_boxes as fb

    monkeypatch.setattr(cv2.data, "haarcascades", str(tmp_path) + "/")
    fb._cascades.cache_clear()
    try:
        with pytest.raises(WeightsUnavailableError, match="reinstall opencv-python-headless"):
            face_boxes(torch.rand(1, 3, 64, 64))
    finally:
        monkeypatch.undo()
        fb._cascades.cache_clear()
    assert face_boxes(torch.zeros(1, 3, 64, 64)) == []


def test_a_checkpoint_written_before_protect_faces_existed_still_resumes():
    """The fingerprint of a run without face protection is the one the code before the option computed."""
    import dataclasses
    import hashlib
    import json

    content, style = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    options = opt.Options(encoder="tiny", size=16, protect_faces=0.0)
    fields = dataclasses.asdict(options)
    del fields["protect_faces"]
    fields["match_every"] = 1  # the default then; a Gram run's fingerprint holds it whatever is given now
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode())
    for t in (content, style):
        digest.update(t.detach().contiguous().float().numpy().tobytes())
    assert opt.fingerprint(content, [style], options) == digest.hexdigest()
    assert opt.fingerprint(content, [style], dataclasses.replace(options, protect_faces=10.0)) != digest.hexdigest()


def test_a_photo_without_a_face_resumes_a_checkpoint_written_with_faces_off(tmp_path):
    """Where no face is found the option changes nothing, so it does not stand between a run and its checkpoint
    (one written with faces off, or before the option existed, resumes under the default); where a face is
    found it does."""
    from impasto.errors import CheckpointError

    style = _photo("kodim13.jpg", 64)
    base = dict(encoder="tiny", size=64, min_size=64, scale_iterations=(4,), precision="fp32")
    for name, resumes in (("kodim21.jpg", True), ("kodim04.jpg", False)):
        content = _photo(name, 64 if resumes else 256)
        checkpoint = tmp_path / f"{name}.ckpt"
        opt.run(content, style, opt.Options(**base, protect_faces=0.0), checkpoint=checkpoint, checkpoint_every=1)
        if resumes:
            opt.run(content, style, opt.Options(**base), checkpoint=checkpoint, resume=True)
        else:
            with pytest.raises(CheckpointError, match="add --protect-faces 0 to resume"):
                opt.run(content, style, opt.Options(**base), checkpoint=checkpoint, resume=True)
            opt.run(content, style, opt.Options(**base, protect_faces=5.0), checkpoint=checkpoint.with_suffix(".b"),
                    checkpoint_every=1)
            with pytest.raises(CheckpointError, match="different run"):  # not one written with faces off
                opt.run(content, style, opt.Options(**base), checkpoint=checkpoint.with_suffix(".b"), resume=True)
            opt.run(content, style, opt.Options(**base, protect_faces=0.0), checkpoint=checkpoint, resume=True)


def test_face_pan_bench_makes_a_moving_crop_and_marks_the_frames_with_a_face():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("face_pan", Path(__file__).resolve().parents[1] / "bench" / "face_pan.py")
    pan = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pan)
    photo = _photo("kodim04.jpg", 640)
    frames = pan.pan_frames(photo, 5)
    assert len(frames) == 5 and all(max(f.shape[-2:]) == 512 and f.min() >= 0 and f.max() <= 1 for f in frames)
    assert frames[0].shape != frames[-1].shape or not torch.allclose(frames[0], frames[-1], atol=0.1)
    assert pan.strip(photo, 5) == "FFFFF"
    assert pan.strip(_photo("kodim21.jpg", 640), 3) == "..."


def test_a_recipe_records_the_opencv_that_found_the_faces(tmp_path):
    import cv2

    from impasto import api

    result = api.stylize(_photo("kodim04.jpg", 128), _photo("kodim13.jpg", 64),
                         options={"encoder": "tiny", "size": 64, "scale_iterations": (1,), "precision": "fp32"})
    assert result.recipe["options"]["protect_faces"] == 10.0
    assert result.recipe["versions"]["opencv"] == cv2.__version__
    (x0, y0, x1, y1), = result.recipe["faces"]  # where the option acted
    assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
    plain = api.stylize(_photo("kodim21.jpg", 64), _photo("kodim13.jpg", 64),
                        options={"encoder": "tiny", "size": 64, "scale_iterations": (1,), "precision": "fp32"})
    assert "faces" not in plain.recipe  # no face found: it ran as with 0


def test_a_recipe_with_faces_loads_and_reruns_to_the_same_picture(tmp_path):
    from impasto import api

    content, style = data_dir() / "content" / "kodim04.jpg", data_dir() / "content" / "kodim13.jpg"
    result = api.stylize(content, style, options={"encoder": "tiny", "size": 96, "scale_iterations": (2,),
                                                  "precision": "fp32"})
    assert result.recipe["faces"]
    out = result.save(tmp_path / "out.png")
    recipe = api.load_recipe(out)
    assert recipe["faces"] == result.recipe["faces"]
    again = api.rerun(recipe)
    assert again.recipe["faces"] == recipe["faces"] and torch.equal(again.image, result.image)


@pytest.mark.parametrize("command, shown", [("stylize", "[default: 10]"), ("stylize-video", "[default: 0]")])
def test_the_help_shows_each_commands_face_default(command, shown, capsys):
    from impasto.cli import main

    assert main([command, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    after = text[text.index("--protect-faces FLOAT"):]
    assert after[:after.index("--laplacian-weight")].rstrip().endswith(shown)
