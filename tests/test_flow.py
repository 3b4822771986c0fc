"""Optical flow: estimation on synthetic motion and Sintel ground truth, warping, Ruder's masks, long-term
weights, .flo files; the temporal loss."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import data_dir
from impasto.errors import InvalidOptionError
from impasto.features.flow import FLOW_METHODS, displacement_modes, estimate_flow, global_shift, _gray
from impasto.io.flow import read_flo, write_flo
from impasto.io.image import load_image
from impasto.losses.temporal import TemporalLoss, temporal_loss, warping_error
from impasto.ops.flow import (
    consistency_weights,
    disocclusion,
    end_point_error,
    inside,
    long_term_weights,
    motion_boundary,
    warp,
)


@pytest.fixture(scope="module")
def scene():
    """A real textured frame (Sintel alley), 200 x 320."""
    frame = load_image(data_dir() / "video" / "sintel_alley_1" / "frame_0016.png")
    return torch.nn.functional.interpolate(frame, size=(218, 512), mode="area")[..., 9:209, 96:416].contiguous()


def _constant(h: int, w: int, u: float, v: float) -> torch.Tensor:
    flow = torch.zeros(1, 2, h, w)
    flow[0, 0], flow[0, 1] = u, v
    return flow


def _moved(image: torch.Tensor, flow_b_to_a: torch.Tensor) -> torch.Tensor:
    """Frame b made from a by backward warping: b(x) = a(x + flow_b_to_a(x))."""
    return warp(image, flow_b_to_a)


def _grid(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")


# ------------------------------------------------------------------ warping and masks

def test_warp_by_zero_is_identity_and_by_an_integer_shift_moves_pixels(scene):
    torch.testing.assert_close(warp(scene, torch.zeros(1, 2, *scene.shape[-2:])), scene, atol=1e-4, rtol=0)
    shifted = warp(scene, _constant(*scene.shape[-2:], 5, -3))
    torch.testing.assert_close(shifted[..., 3:, :-5], scene[..., :-3, 5:], atol=1e-4, rtol=0)


def test_warp_gradient_in_float64():
    image = torch.rand(1, 2, 6, 7, dtype=torch.float64, requires_grad=True)
    flow = torch.rand(1, 2, 6, 7, dtype=torch.float64) * 0.8 + 0.1  # away from pixel-grid kinks
    assert torch.autograd.gradcheck(lambda x: warp(x, flow), (image,))


@pytest.mark.parametrize("motion", ["translate", "rotate", "zoom"])
def test_flow_end_point_error_on_synthetic_motion(scene, motion):
    h, w = scene.shape[-2:]
    ys, xs = _grid(h, w)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    if motion == "translate":
        back = _constant(h, w, -7.0, 4.0)  # frame b(x) = a(x + back): content moves by (7, -4)
    elif motion == "rotate":
        angle = math.radians(3)
        rx = cx + (xs - cx) * math.cos(angle) - (ys - cy) * math.sin(angle)
        ry = cy + (xs - cx) * math.sin(angle) + (ys - cy) * math.cos(angle)
        back = torch.stack([rx - xs, ry - ys])[None]
    else:
        back = torch.stack([(xs - cx) * (1 / 1.06 - 1), (ys - cy) * (1 / 1.06 - 1)])[None]
    b = _moved(scene, back)
    valid = (inside(back) > 0)
    valid[..., :12, :] = valid[..., -12:, :] = False
    valid[..., :, :12] = valid[..., :, -12:] = False
    estimate = estimate_flow(b, scene, "dis-robust")  # b -> a is the backward flow we built b with
    assert end_point_error(estimate, back, valid) < 0.5
    assert end_point_error(torch.zeros_like(back), back, valid) > 1.5  # the bound means something


def test_dis_robust_follows_a_large_object_motion_that_plain_dis_loses(scene):
    """A 100 x 100 patch moved 90 px over a still background: DIS's pyramid cannot reach it from zero."""
    texture = torch.rand(1, 3, 10, 10, generator=torch.Generator().manual_seed(0))
    patch = torch.nn.functional.interpolate(texture, size=(100, 100), mode="bicubic").clamp(0, 1)
    a, b = scene.clone(), scene.clone()
    a[..., 50:150, 20:120] = patch
    b[..., 50:150, 110:210] = patch
    truth = torch.zeros(1, 2, *scene.shape[-2:])
    truth[0, 0, 50:150, 20:120] = 90
    on_object = torch.zeros(1, 1, *scene.shape[-2:], dtype=torch.bool)
    on_object[..., 55:145, 25:115] = True
    assert end_point_error(estimate_flow(a, b, "dis-medium"), truth, on_object) > 15
    assert end_point_error(estimate_flow(a, b, "dis-robust"), truth, on_object) < 3
    assert any(abs(dx - 90) < 3 and abs(dy) < 3 for dx, dy in displacement_modes(_gray(a), _gray(b)))


def test_global_shift_finds_a_camera_pan(scene):
    a = scene[..., :, :260]
    b = scene[..., :, 40:300]  # the camera panned right by 40 px: content moves left
    dx, dy = global_shift(_gray(a), _gray(b))
    assert abs(dx + 40) < 0.5 and abs(dy) < 0.5


def test_sintel_ground_truth_end_point_error():
    root = data_dir() / "video" / "sintel_alley_1_gtflow"
    a, b = load_image(root / "frame_0002.png"), load_image(root / "frame_0003.png")
    truth = read_flo(root / "flow" / "frame_0002.flo")
    invalid = load_image(root / "invalid" / "frame_0002.png")[:, :1] > 0.5
    epe = end_point_error(estimate_flow(a, b, "dis-robust"), truth, ~invalid)
    assert epe < 0.45  # measured 0.32 (dis-medium 0.34, farneback 0.93)


def test_disocclusion_marks_the_uncovered_strip_and_nothing_else(scene):
    """An object moves 12 px right over a still background: the strip it uncovers is not in frame a."""
    h, w = scene.shape[-2:]
    texture = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    patch = torch.nn.functional.interpolate(texture, size=(80, 80), mode="bicubic").clamp(0, 1)
    a, b = scene.clone(), scene.clone()
    a[..., 60:140, 100:180] = patch
    b[..., 60:140, 112:192] = patch
    forward, backward = estimate_flow(a, b), estimate_flow(b, a)
    occluded = disocclusion(forward, backward)[0, 0]
    uncovered = occluded[65:135, 101:111].float().mean()  # in b this strip shows background hidden in a
    elsewhere = torch.ones(h, w, dtype=torch.bool)
    elsewhere[50:150, 90:202] = False
    elsewhere[:, :8] = elsewhere[:, -8:] = False
    assert float(uncovered) > 0.6
    assert float(occluded[elsewhere].float().mean()) < 0.02
    true_backward = torch.zeros(1, 2, h, w)
    true_backward[0, 0, 60:140, 112:192] = -12.0
    boundary = motion_boundary(true_backward)[0, 0]
    outline = torch.zeros(h, w, dtype=torch.bool)
    outline[59:141, 111:193] = True
    outline[61:139, 113:191] = False
    assert bool(boundary[70:130, 111].all()) and bool(boundary[70:130, 191].all())  # left and right edges
    assert not bool(boundary[~outline].any())


def test_warping_frame_t_onto_t_plus_1_reproduces_it_away_from_occlusions():
    root = data_dir() / "video" / "sintel_alley_1"
    a, b = load_image(root / "frame_0016.png"), load_image(root / "frame_0017.png")
    backward, forward = estimate_flow(b, a), estimate_flow(a, b)
    c = consistency_weights(forward, backward)
    warped = warp(a, backward)
    error = ((warped - b).abs().mean(1, keepdim=True) * c).sum() / c.sum()
    unwarped = ((a - b).abs().mean(1, keepdim=True) * c).sum() / c.sum()
    assert float(c.mean()) > 0.8
    assert float(error) < 0.02 and float(error) < 0.5 * float(unwarped)


def test_long_term_weights_tie_each_pixel_to_its_nearest_visible_frame():
    ones, zeros = torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)
    half = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    out = long_term_weights({1: half, 2: ones, 4: ones}, (1, 2, 4))
    torch.testing.assert_close(out[1], half)
    torch.testing.assert_close(out[2], 1 - half)  # only where frame i-1 did not see it
    torch.testing.assert_close(out[4], zeros)  # everything was seen nearer
    assert set(long_term_weights({1: half}, (1, 2, 4))) == {1}  # the clip's first frames


def test_flo_round_trip_and_damaged_files(tmp_path):
    flow = torch.randn(1, 2, 5, 7)
    torch.testing.assert_close(read_flo(write_flo(flow, tmp_path / "f.flo")), flow)
    data = (tmp_path / "f.flo").read_bytes()
    (tmp_path / "short.flo").write_bytes(data[:-8])
    with pytest.raises(InvalidOptionError, match="truncated"):
        read_flo(tmp_path / "short.flo")
    (tmp_path / "bad.flo").write_bytes(b"XXXX" + data[4:])
    with pytest.raises(InvalidOptionError, match="magic"):
        read_flo(tmp_path / "bad.flo")


def test_unknown_flow_method_suggests_the_nearest():
    frame = torch.rand(1, 3, 32, 32)
    with pytest.raises(InvalidOptionError, match="dis-fast"):
        estimate_flow(frame, frame, "dis-fats")
    assert "dis-robust" == FLOW_METHODS[0]


# ------------------------------------------------------------------ temporal loss

def test_temporal_loss_is_zero_for_a_consistent_sequence_and_grows_with_flicker(scene):
    back = _constant(*scene.shape[-2:], -3.0, 2.0)
    previous_result = scene
    result = _moved(previous_result, back)  # perfectly consistent with the flow
    c = inside(back)
    warped = warp(previous_result, back)
    assert float(temporal_loss(result, warped, c)) < 1e-10
    noise = torch.randn(scene.shape, generator=torch.Generator().manual_seed(2))
    losses = [float(temporal_loss((result + a * noise).clamp(0, 1), warped, c)) for a in (0.02, 0.05, 0.1)]
    assert 0 < losses[0] < losses[1] < losses[2]
    assert warping_error(result + 0.05 * noise, warped, c) > warping_error(result + 0.02 * noise, warped, c)


def test_temporal_loss_module_equals_the_function_and_respects_the_weights():
    g = torch.Generator().manual_seed(3)
    x, w1, w2 = (torch.rand(1, 3, 8, 9, generator=g) for _ in range(3))
    c1 = (torch.rand(1, 1, 8, 9, generator=g) > 0.5).float()
    c2 = torch.zeros(1, 1, 8, 9)
    module = TemporalLoss([(w1, c1), (w2, c2)])
    torch.testing.assert_close(module(x), temporal_loss(x, w1, c1))  # weight 0 ties nothing
    expected = (c1 * (x - w1) ** 2).sum() / (3 * 8 * 9)  # (1/D) sum c (x - w)^2, D = W H C
    torch.testing.assert_close(temporal_loss(x, w1, c1), expected)
    x64 = x.double().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: temporal_loss(t, w1.double(), c1.double()), (x64,))
    with pytest.raises(InvalidOptionError, match="differ in shape"):
        temporal_loss(x, w1[..., :4], c1)
