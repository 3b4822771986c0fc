"""Face parts from MediaPipe (features/faces.py, the optional extra that scripts/test.sh installs) and the
exemplar method's --face-parts, which turns them into label maps for both the photo and the exemplars."""

from __future__ import annotations

import sys

import pytest
import torch

from conftest import data_dir
from impasto.cli import main
from impasto.errors import InvalidOptionError
from impasto.features import faces
from impasto.features.transfer import RegionMaps
from impasto.io.image import load_image, save_image
from impasto.methods import exemplars as ex
from impasto.methods import optimization
from impasto.ops.geometry import resize

needs_mediapipe = pytest.mark.skipif(not faces.available(), reason="the face-parts extra is not installed (bash scripts/setup.sh --faces)")


def _small(path, long_side: int = 160) -> torch.Tensor:
    image = load_image(path)
    h, w = image.shape[-2:]
    return resize(image, (round(h * long_side / max(h, w)), round(w * long_side / max(h, w))))


def _box(labels: torch.Tensor, part: str) -> tuple[float, float]:
    """Centre (row, column) of a part, as shares of the height and width."""
    r, g, b = faces.PARTS[part]
    codes = (labels[0] * 255).round().long()
    ys, xs = torch.nonzero((codes[0] == r) & (codes[1] == g) & (codes[2] == b), as_tuple=True)
    return ys.float().mean().item() / labels.shape[-2], xs.float().mean().item() / labels.shape[-1]


@needs_mediapipe
def test_the_parts_of_a_portrait_are_where_a_face_has_them():
    photo = load_image(data_dir() / "faces" / "grace_hopper_us_navy_1984.jpg")
    labels = faces.face_parts(photo)
    assert labels.shape == photo.shape
    share = faces.part_share(labels)
    assert sum(share.values()) == pytest.approx(1.0)  # only the parts' colours
    assert 0.04 < share["face"] < 0.3 and share["eyes"] > 0 and share["lips"] > 0 and share["brows"] > 0
    assert share["person"] > 0.2 and share["background"] > 0.2
    eyes, lips, brows = _box(labels, "eyes"), _box(labels, "lips"), _box(labels, "brows")
    assert brows[0] < eyes[0] < lips[0]  # top to bottom
    assert abs(eyes[1] - lips[1]) < 0.05  # one above the other
    assert 0.25 < lips[1] < 0.75


@needs_mediapipe
def test_an_image_without_a_face_is_refused_or_gives_no_face_parts():
    g = torch.Generator().manual_seed(0)
    noise = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8, generator=g), size=(96, 128), mode="bilinear")
    with pytest.raises(faces.NoFaceError, match="no face found"):
        faces.face_parts(noise)
    share = faces.part_share(faces.face_parts(noise, require_face=False))
    assert share["face"] == share["eyes"] == share["lips"] == 0 and share["background"] + share["person"] == pytest.approx(1.0)
    with pytest.raises(faces.InvalidImageError, match="one RGB image"):
        faces.face_parts(noise[:, :1])


def test_without_mediapipe_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "mediapipe", None)  # import mediapipe... -> ImportError
    monkeypatch.setitem(sys.modules, "mediapipe.python", None)
    assert not faces.available()
    with pytest.raises(faces.FacePartsUnavailableError, match="setup.sh --faces"):
        faces.face_parts(torch.rand(1, 3, 32, 32))


def _texture(seed: int, h: int, w: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.interpolate(torch.rand(1, 3, h // 4, w // 4, generator=g), size=(h, w), mode="nearest")


def test_face_parts_and_mask_files_together_are_refused():
    with pytest.raises(InvalidOptionError, match="--face-parts draws the label maps itself"):
        ex.run(_texture(1, 48, 48), [_texture(2, 48, 48)], ex.Options(face_parts=True, content_mask=("a.png",), encoder="tiny"))


@needs_mediapipe
def test_face_parts_restrict_the_photos_parts_to_the_exemplars_parts(tmp_path, monkeypatch):
    data = data_dir()
    photo = _small(data / "faces" / "grace_hopper_us_navy_1984.jpg")
    exemplars = [_small(data / "exemplars" / "vangogh" / "vangogh_self_portrait_1889_orsay.jpg"),
                 _small(data / "style" / "vangogh_starry_night.jpg")]  # a portrait, and a painting with no face
    seen: list[RegionMaps | None] = []
    real_call = optimization.Prepared.__call__

    def spy(self, content, **kw):
        seen.append(kw.get("maps"))
        return real_call(self, content, **kw)

    monkeypatch.setattr(optimization.Prepared, "__call__", spy)
    options = ex.Options(size=96, iterations=4, min_size=96, encoder="tiny", precision="fp32", patch_layers=("relu2_1",),
                         face_parts=True)
    result = ex.run(photo, exemplars, options)
    assert torch.isfinite(result.image).all()
    assert result.final_losses["exemplars_with_face"] == 1.0
    (maps,) = seen
    assert maps is not None and maps.mode == "labels" and maps.size == tuple(photo.shape[-2:])
    eyes = faces.PARTS["eyes"]
    eye_code = (eyes[0] << 16) | (eyes[1] << 8) | eyes[2]
    assert (maps.content_codes == eye_code).any() and (maps.style_codes[0] == eye_code).any()
    assert not (maps.style_codes[1] == eye_code).any()
    plain = ex.run(photo, exemplars, ex.Options(**{**options.__dict__, "face_parts": False}))
    assert not torch.allclose(plain.image, result.image)
    no_face = _texture(5, 96, 96)
    with pytest.raises(faces.NoFaceError, match="drop --face-parts"):
        ex.run(no_face, exemplars, options)
    face = save_image(photo, tmp_path / "face.png")
    files = [str(save_image(e, tmp_path / f"ex{i}.png")) for i, e in enumerate(exemplars)]
    args = ["stylize", str(face), *files, "--method", "exemplars", "--face-parts", "--size", "64", "--iterations", "2",
            "--min-size", "64", "--encoder", "tiny", "--precision", "fp32", "--patch-layers", "relu2_1", "-o", str(tmp_path / "o.png"), "-q"]
    assert main(args) == 0 and (tmp_path / "o.png").is_file()


@needs_mediapipe
def test_cli_writes_the_label_map_and_refuses_lossy_output(tmp_path, capsys):
    photo = save_image(_small(data_dir() / "faces" / "grace_hopper_us_navy_1984.jpg", 200), tmp_path / "photo.png")
    assert main(["face-parts", str(photo), "-o", str(tmp_path / "parts.png"), "--overlay", str(tmp_path / "check.png")]) == 0
    printed = capsys.readouterr().out
    assert "wrote" in printed and "eyes" in printed
    labels = load_image(tmp_path / "parts.png")
    assert faces.part_share(labels)["eyes"] > 0 and sum(faces.part_share(labels).values()) == pytest.approx(1.0)
    assert (tmp_path / "check.png").is_file()
    assert main(["face-parts", str(photo), "-o", str(tmp_path / "parts.jpg")]) != 0
    assert "PNG" in capsys.readouterr().err
    for overlay in (str(photo), str(tmp_path / "same.png")):  # the input, or the label map itself
        assert main(["face-parts", str(photo), "-o", str(tmp_path / "same.png"), "--overlay", overlay]) != 0
    capsys.readouterr()
    noise = save_image(_texture(7, 64, 64), tmp_path / "noise.png")
    assert main(["face-parts", str(noise), "-o", str(tmp_path / "n.png")]) != 0
    assert "no face found" in capsys.readouterr().err and not (tmp_path / "n.png").exists()


@needs_mediapipe
def test_a_video_frame_without_a_face_keeps_the_last_frames_parts(monkeypatch):
    """Video calls the prepared method per frame: a frame where the head turned away must not stop the clip."""
    photo = _small(data_dir() / "faces" / "grace_hopper_us_navy_1984.jpg", 96)
    exemplar = _small(data_dir() / "exemplars" / "vangogh" / "vangogh_self_portrait_1889_orsay.jpg", 96)
    options = ex.Options(size=96, iterations=2, min_size=96, encoder="tiny", precision="fp32", patch_layers=("relu2_1",),
                         face_parts=True, cleanup="none")
    prepared = ex.prepare([exemplar], options)
    first = prepared._content_parts(photo)
    assert faces.part_share(first)["face"] > 0
    turned = _texture(9, *photo.shape[-2:])  # no face in this frame
    assert prepared._content_parts(turned) is first
    assert torch.isfinite(prepared(turned).image).all()
    other_size = _texture(9, 64, 64)  # a different size cannot reuse them: refused as for a photo
    with pytest.raises(faces.NoFaceError, match="drop --face-parts"):
        prepared._content_parts(other_size)
