"""Optical-flow math for video: backward warping, occlusion and motion-boundary masks (Ruder et al. 2016),
long-term weights, end-point error. Pure tensor functions; flow estimation lives in ``features.flow``.

Conventions: a flow is a (1, 2, H, W) float tensor in pixels, channel 0 the horizontal (u, +x right) and
channel 1 the vertical (v, +y down) displacement. The flow ``a -> b`` maps each pixel x of frame a to
x + flow(x) in frame b. To bring frame i-1 (or its stylised version) onto frame i, warp it with the
backward flow ``i -> i-1``: ``warp(x_{i-1}, flow_{i->i-1})(x) = x_{i-1}(x + flow(x))``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from impasto.errors import InvalidOptionError


def _check_flow(flow: Tensor, what: str = "flow") -> None:
    if flow.dim() != 4 or flow.shape[:2] != (1, 2):
        raise InvalidOptionError(f"{what} must be a (1, 2, H, W) tensor, got {tuple(flow.shape)}")


def sample_grid(flow: Tensor) -> Tensor:
    """The normalised ``grid_sample`` grid (1, H, W, 2) that reads each pixel x at x + flow(x)."""
    _check_flow(flow)
    _, _, h, w = flow.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=flow.dtype), torch.arange(w, dtype=flow.dtype), indexing="ij")
    x = xs + flow[0, 0]
    y = ys + flow[0, 1]
    # align_corners=True: -1 and 1 are the centres of the first and last pixels
    gx = 2 * x / max(w - 1, 1) - 1
    gy = 2 * y / max(h - 1, 1) - 1
    return torch.stack([gx, gy], dim=-1).unsqueeze(0)


def warp(image: Tensor, flow: Tensor) -> Tensor:
    """Backward warp: ``out(x) = image(x + flow(x))`` with bilinear sampling; positions outside the image
    take the nearest border pixel (see ``inside`` for where that happened). ``image`` (N, C, H, W) of the
    flow's size."""
    if tuple(image.shape[-2:]) != tuple(flow.shape[-2:]):
        raise InvalidOptionError(f"image {tuple(image.shape[-2:])} and flow {tuple(flow.shape[-2:])} differ in size")
    grid = sample_grid(flow.to(image.dtype)).expand(image.shape[0], -1, -1, -1)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)


def inside(flow: Tensor) -> Tensor:
    """(1, 1, H, W) float mask: 1 where x + flow(x) lies inside the image (a warp there reads real pixels)."""
    _check_flow(flow)
    _, _, h, w = flow.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=flow.dtype), torch.arange(w, dtype=flow.dtype), indexing="ij")
    x, y = xs + flow[0, 0], ys + flow[0, 1]
    ok = (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)
    return ok.to(flow.dtype)[None, None]


def _gradient_sq(field: Tensor) -> Tensor:
    """|grad f|^2 of a (H, W) field by forward differences (replicated at the last row/column)."""
    dx = torch.zeros_like(field)
    dy = torch.zeros_like(field)
    dx[:, :-1] = field[:, 1:] - field[:, :-1]
    dy[:-1, :] = field[1:, :] - field[:-1, :]
    return dx * dx + dy * dy


def disocclusion(forward: Tensor, backward: Tensor) -> Tensor:
    """(1, 1, H, W) bool in frame b's coordinates: pixels of b not visible in a (or whose flow is wrong).

    ``forward`` is the flow a -> b, ``backward`` the flow b -> a. With w~(x) = forward(x + backward(x)),
    a pixel is disoccluded where |w~ + backward|^2 > 0.01 (|w~|^2 + |backward|^2) + 0.5 (Ruder et al.
    2016, eq. 6): the forward-backward check that also marks where the estimate went wrong.
    """
    _check_flow(forward, "forward flow")
    _check_flow(backward, "backward flow")
    w_tilde = warp(forward, backward)
    lhs = ((w_tilde + backward) ** 2).sum(1, keepdim=True)
    rhs = 0.01 * ((w_tilde ** 2).sum(1, keepdim=True) + (backward ** 2).sum(1, keepdim=True)) + 0.5
    return (lhs > rhs) | (inside(backward) == 0)


def motion_boundary(backward: Tensor) -> Tensor:
    """(1, 1, H, W) bool: |grad u|^2 + |grad v|^2 > 0.01 |backward|^2 + 0.002 (Ruder et al. 2016, eq. 7)."""
    _check_flow(backward, "backward flow")
    grad = _gradient_sq(backward[0, 0]) + _gradient_sq(backward[0, 1])
    return (grad > 0.01 * (backward[0] ** 2).sum(0) + 0.002)[None, None]


def consistency_weights(forward: Tensor, backward: Tensor) -> Tensor:
    """c: (1, 1, H, W) float in frame b's coordinates, 0 where disoccluded or on a motion boundary, 1 elsewhere."""
    bad = disocclusion(forward, backward) | motion_boundary(backward)
    return (~bad).to(forward.dtype)


def long_term_weights(weights: Mapping[int, Tensor], offsets: Sequence[int]) -> dict[int, Tensor]:
    """c_long(i-j, i) = max(c(i-j, i) - sum_{k in J, k < j} c(i-k, i), 0) for j in ``offsets`` (Ruder et al.
    2016, eq. 9): each pixel is tied to the nearest earlier frame in which it was visible. ``weights``
    maps j to c(i-j, i); offsets missing from it (the clip's first frames) are left out."""
    out: dict[int, Tensor] = {}
    earlier: Tensor | None = None
    for j in sorted(offsets):
        if j not in weights:
            continue
        c = weights[j]
        out[j] = c if earlier is None else (c - earlier).clamp_min(0)
        earlier = c if earlier is None else earlier + c
    return out


def end_point_error(estimate: Tensor, truth: Tensor, valid: Tensor | None = None) -> float:
    """Mean Euclidean distance between two flows in pixels, over ``valid`` pixels (bool (1, 1, H, W)) if given."""
    _check_flow(estimate, "estimated flow")
    _check_flow(truth, "true flow")
    epe = ((estimate - truth) ** 2).sum(1, keepdim=True).sqrt()
    if valid is not None:
        epe = epe[valid]
    return float(epe.mean())
