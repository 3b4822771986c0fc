"""Photorealistic smoothing (Li et al. 2018, 'A Closed-form Solution to Photorealistic Image Stylization').

Exact: ``R = (1 - a) (I - a D^-1/2 W D^-1/2)^-1 Y`` per channel, with ``W`` the content image's
8-neighbour affinity ``W_ij = exp(-||I_i - I_j||^2 / sigma^2)`` and ``D`` its degrees. Never
inverted densely: substituting ``R = D^1/2 Z`` gives the symmetric, diagonally dominant M-matrix
system ``(D - a W) Z = (1 - a) D^1/2 Y``, solved by conjugate gradients preconditioned with
algebraic multigrid (pyamg's classical Ruge-Stueben hierarchy, applied to all channels at once).
The Gaussian affinity gives an M-matrix and about 13 CG iterations; the matting affinity 70-100.
Plain Jacobi-preconditioned CG needs ~270 iterations at a = 0.999 for the Gaussian affinity; the
condition number grows like 2 / (1 - a).

Differs from the paper: the result is divided by the smoothing of a constant image. The plain
closed form scales its output by sqrt(D_i) as ``a -> 1`` (darker borders, where pixels have fewer
neighbours, and darker isolated pixels); the division keeps a flat region's brightness.

Affinities: "gaussian" (above, the paper's choice in Eq. 6) or "matting" (Levin et al. 2008: the
matting Laplacian's affinity from 3x3 windows, which FastPhotoStyle's code uses); for the matting
affinity ``D - W`` is exactly the matting Laplacian.

Fast: a guided filter (He et al. 2010) of the stylised image guided by the content, O(N).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from impasto.errors import InvalidOptionError


def _to_hwc(image: Tensor) -> np.ndarray:
    if image.dim() != 4 or image.shape[:2] != (1, 3):
        raise InvalidOptionError(f"expected an image (1, 3, H, W), got {tuple(image.shape)}")
    return image[0].permute(1, 2, 0).double().numpy()


def affinity(content: Tensor, sigma: float = 0.1, floor: float = 1e-3):
    """Sparse (N x N) 8-neighbour Gaussian affinity of a (1, 3, H, W) image (scipy CSR, float64).

    Weights are floored at ``floor``: a pixel unlike all its neighbours (noise, thin lines) would
    otherwise have a near-zero degree, and the closed form would darken it towards (1 - a) Y.
    """
    import scipy.sparse as sp

    img = _to_hwc(content)
    h, w, _ = img.shape
    index = np.arange(h * w).reshape(h, w)
    rows, cols, vals = [], [], []
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):  # each undirected edge once, mirrored below
        ys, ye = 0, h - dy
        xs, xe = max(0, -dx), w - max(0, dx)
        a = img[ys:ye, xs:xe]
        b = img[ys + dy:ye + dy, xs + dx:xe + dx]
        weight = np.maximum(np.exp(-((a - b) ** 2).sum(-1) / sigma**2), floor).ravel()
        i = index[ys:ye, xs:xe].ravel()
        j = index[ys + dy:ye + dy, xs + dx:xe + dx].ravel()
        rows += [i, j]
        cols += [j, i]
        vals += [weight, weight]
    n = h * w
    return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))


def matting_affinity(content: Tensor, eps: float = 1e-7):
    """Sparse (N x N) matting affinity (Levin et al. 2008) of a (1, 3, H, W) image, 3x3 windows.

    ``W_ij = sum over windows k holding i and j of (1 + (I_i - mu_k)^T (S_k + eps/9 I)^-1 (I_j - mu_k)) / 9``.
    Entries may be negative; each row sums to the number of windows holding the pixel.
    """
    import scipy.sparse as sp

    img = _to_hwc(content)
    h, w, _ = img.shape
    if h < 3 or w < 3:
        raise InvalidOptionError(f"the matting affinity needs an image of at least 3x3 pixels, got {w}x{h}")
    # Pixels i and j share windows only when j - i is within +-2 rows and columns, so W has 25
    # bands. Everything is computed on (h-2, w-2) planes (one value per window, indexed by its
    # top-left corner), and each window's (p, q) entry is summed straight into band q - p of pixel
    # p: no (K, 9, 9) array and no COO with 81 duplicates per entry. 7x faster at 1024 px.
    planes = np.ascontiguousarray(img.transpose(2, 0, 1))  # (3, h, w)
    offsets = [(dy, dx) for dy in range(3) for dx in range(3)]  # a window's pixels, from its corner
    window = [planes[:, dy:h - 2 + dy, dx:w - 2 + dx] for dy, dx in offsets]
    mean = sum(window) / 9
    centred = [c - mean for c in window]  # 9 x (3, h-2, w-2)
    cov = [[sum(c[i] * c[j] for c in centred) / 9 + (eps / 9 if i == j else 0.0) for j in range(3)] for i in range(3)]
    # The symmetric 3x3 inverse by cofactors, on every window at once.
    c00 = cov[1][1] * cov[2][2] - cov[1][2] ** 2
    c01 = cov[0][2] * cov[1][2] - cov[0][1] * cov[2][2]
    c02 = cov[0][1] * cov[1][2] - cov[0][2] * cov[1][1]
    c11 = cov[0][0] * cov[2][2] - cov[0][2] ** 2
    c12 = cov[0][1] * cov[0][2] - cov[0][0] * cov[1][2]
    c22 = cov[0][0] * cov[1][1] - cov[0][1] ** 2
    det = cov[0][0] * c00 + cov[0][1] * c01 + cov[0][2] * c02
    inv = [[c00, c01, c02], [c01, c11, c12], [c02, c12, c22]]
    projected = [[(c[0] * inv[i][0] + c[1] * inv[i][1] + c[2] * inv[i][2]) / det for i in range(3)] for c in centred]
    band = np.zeros((5, 5, h, w))
    for p, (py, px) in enumerate(offsets):
        for q in range(p, 9):
            qy, qx = offsets[q]
            v = (1 + projected[p][0] * centred[q][0] + projected[p][1] * centred[q][1] + projected[p][2] * centred[q][2]) / 9
            band[qy - py + 2, qx - px + 2, py:h - 2 + py, px:w - 2 + px] += v
            if q != p:  # symmetric: the same value at (q, p)
                band[py - qy + 2, px - qx + 2, qy:h - 2 + qy, qx:w - 2 + qx] += v
    n = h * w
    dy, dx = np.meshgrid(np.arange(-2, 3), np.arange(-2, 3), indexing="ij")
    ys, xs = np.arange(h)[:, None, None, None], np.arange(w)[None, :, None, None]
    valid = (ys + dy >= 0) & (ys + dy < h) & (xs + dx >= 0) & (xs + dx < w)  # (h, w, 5, 5)
    columns = (ys + dy) * w + (xs + dx)  # increasing along each row's 25 bands: CSR order
    counts = valid.reshape(n, 25).sum(axis=1)
    indptr = np.concatenate([[0], np.cumsum(counts)])
    return sp.csr_matrix((band.reshape(25, n).T[valid.reshape(n, 25)], columns[valid], indptr), shape=(n, n))


AFFINITIES = ("gaussian", "matting")


def smoothing_system(content: Tensor, stylized: Tensor, a: float, sigma: float, kind: str = "gaussian"):
    """(A, B, d_sqrt): the SPD system ``A Z = B`` whose solution gives ``R = d_sqrt * Z``.

    B is N x 4: the three channels and a constant image (for the brightness normalisation).
    """
    import scipy.sparse as sp

    if not 0.0 <= a < 1.0:
        raise InvalidOptionError(f"smoothing strength a must be in [0, 1), got {a}")
    if stylized.shape != content.shape:
        raise InvalidOptionError(f"stylised {tuple(stylized.shape)} and content {tuple(content.shape)} sizes differ")
    if kind not in AFFINITIES:
        raise InvalidOptionError(f"affinity must be one of {', '.join(AFFINITIES)}, got '{kind}'")
    w = affinity(content, sigma) if kind == "gaussian" else matting_affinity(content)
    degree = np.asarray(w.sum(axis=1)).ravel() + 1e-12  # isolated pixels (1x1 images) stay finite
    system = (sp.diags(degree) - a * w).tocsr()
    y = np.concatenate([_to_hwc(stylized).reshape(-1, 3), np.ones((w.shape[0], 1))], axis=1)  # + a constant image
    d_sqrt = np.sqrt(degree)[:, None]
    return system, (1 - a) * d_sqrt * y, d_sqrt


@dataclass(frozen=True)
class SolveInfo:
    iterations: int
    relative_residual: float  # max over channels of ||A z - b|| / ||b||


def _torch_csr(matrix, dtype: torch.dtype) -> Tensor:
    """A scipy sparse matrix as a torch CSR tensor with int32 indices.

    torch's CSR product with an (n, k) block runs on both cores and, with int32 indices, is
    measured 3x faster than scipy's single-threaded one on the 1024 px matting system.
    """
    import warnings

    m = matrix.tocsr()
    m.sort_indices()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(torch.from_numpy(m.indptr.astype(np.int32)), torch.from_numpy(m.indices.astype(np.int32)),
                                       torch.from_numpy(np.ascontiguousarray(m.data)).to(dtype), size=m.shape)


def amg_hierarchy(system, kind: str = "gaussian", colours: np.ndarray | None = None):
    """The algebraic multigrid hierarchy (pyamg) of a smoothing system.

    Gaussian affinity (an M-matrix): classical Ruge-Stueben with direct interpolation, 13-14 CG
    iterations at 1024 px; the set-up is a quarter cheaper than classical interpolation for one
    more iteration.

    Matting affinity: the matting Laplacian vanishes on every image that is locally an affine
    function of the content's colours, so plain aggregation (coarse space: constants per aggregate)
    cannot represent its smooth error and Ruge-Stueben took 73 iterations. Aggregation whose coarse
    space holds ``[1, r, g, b]`` on each aggregate (the colours given as ``colours``, (N, 3))
    takes 47, with a cheaper set-up and smaller coarse levels; smoothing the prolongator on top
    (full smoothed aggregation) cut iterations to 41 but made each twice as dear.
    """
    import pyamg

    if kind == "matting":
        candidates = np.ones((system.shape[0], 1)) if colours is None else np.column_stack([np.ones(system.shape[0]), colours])
        return pyamg.smoothed_aggregation_solver(system, B=candidates, max_coarse=500,
                                                 strength=("symmetric", {"theta": 0.0}), smooth=None)
    return pyamg.ruge_stuben_solver(system, interpolation="direct", max_coarse=500)


JACOBI_WEIGHT = {"gaussian": 0.8, "matting": 0.6}  # block V-cycle smoothing, measured best of 0.6/0.8/1.0


class BlockVCycle:
    """One AMG V-cycle applied to all right-hand sides at once, as a preconditioner.

    pyamg's own cycle takes one vector at a time with Gauss-Seidel smoothing; here every level's
    matrix multiplies an (n, k) block (one sparse pass for k columns, torch CSR on all cores) with
    damped-Jacobi smoothing, in float32 (a preconditioner needs no more; the outer CG stays
    float64). Symmetric (one sweep before and after), so CG may use it. The coarsest level is
    solved by its Cholesky factor (its pseudo-inverse if it is singular).
    """

    def __init__(self, hierarchy, omega: float = 0.8) -> None:
        self.levels = []
        for level in hierarchy.levels[:-1]:
            dinv = torch.from_numpy((omega / level.A.diagonal())[:, None]).float()
            self.levels.append((_torch_csr(level.A, torch.float32), _torch_csr(level.P, torch.float32),
                                _torch_csr(level.R, torch.float32), dinv))
        coarse = torch.from_numpy(hierarchy.levels[-1].A.toarray())
        factor, info = torch.linalg.cholesky_ex(coarse)
        self.coarse_factor = factor.float() if int(info) == 0 else None
        self.coarse_pinv = None if int(info) == 0 else torch.linalg.pinv(coarse).float()

    def _cycle(self, i: int, b: Tensor) -> Tensor:
        if i == len(self.levels):
            if self.coarse_factor is not None:
                return torch.cholesky_solve(b, self.coarse_factor)
            return self.coarse_pinv @ b
        a, p, r, dinv = self.levels[i]
        x = dinv * b  # one Jacobi sweep from zero
        x += p @ self._cycle(i + 1, r @ (b - a @ x))
        x += dinv * (b - a @ x)
        return x

    def __call__(self, b: Tensor) -> Tensor:
        return self._cycle(0, b.float()).double()


def block_cg(system, rhs: np.ndarray, preconditioner, tol: float, max_iterations: int) -> tuple[np.ndarray, int]:
    """Preconditioned CG on every column of ``rhs`` at once (independent CGs sharing each sparse
    product, float64); a column stops changing once ``||r|| <= tol ||b||``. Returns (solution, iterations)."""
    a = _torch_csr(system, torch.float64)
    b = torch.from_numpy(np.ascontiguousarray(rhs, dtype=np.float64))
    x = torch.zeros_like(b)
    r = b.clone()
    norms = b.norm(dim=0)
    norms[norms == 0] = 1.0
    z = preconditioner(r)
    p = z.clone()
    rz = (r * z).sum(0)
    active = r.norm(dim=0) > tol * norms
    iterations = 0
    while bool(active.any()) and iterations < max_iterations:
        iterations += 1
        ap = a @ p
        pap = (p * ap).sum(0)
        alpha = torch.where(active, rz / torch.where(pap == 0, 1.0, pap), 0.0)
        x += alpha * p
        r -= alpha * ap
        active &= r.norm(dim=0) > tol * norms
        z = preconditioner(r)
        rz_new = (r * z).sum(0)
        beta = torch.where(active, rz_new / torch.where(rz == 0, 1.0, rz), 0.0)
        p = z + beta * p
        rz = rz_new
    return x.numpy(), iterations


def solve(system, rhs: np.ndarray, kind: str, colours: np.ndarray | None = None, tol: float = 2e-5,
          max_iterations: int = 500) -> tuple[np.ndarray, int]:
    """impasto's solver for ``system @ z = rhs`` (N x k): block CG preconditioned by a block
    V-cycle over :func:`amg_hierarchy`. ``colours`` (N, 3): the content's colours (matting)."""
    hierarchy = amg_hierarchy(system, kind, colours)
    return block_cg(system, rhs, BlockVCycle(hierarchy, JACOBI_WEIGHT[kind]), tol, max_iterations)


def smooth_exact(stylized: Tensor, content: Tensor, a: float = 0.999, sigma: float = 0.1, tol: float = 2e-5,
                 max_iterations: int = 500, kind: str = "gaussian") -> tuple[Tensor, SolveInfo]:
    """Closed-form smoothing of ``stylized`` with the content's affinity (``kind``); returns (image, solver info)."""
    h, w = content.shape[-2:]
    system, rhs, d_sqrt = smoothing_system(content, stylized, a, sigma, kind)
    if a == 0.0:
        return stylized.clone(), SolveInfo(0, 0.0)
    out, iterations = solve(system, rhs, kind, _to_hwc(content).reshape(-1, 3), tol, max_iterations)
    norms = np.linalg.norm(rhs, axis=0)
    residual = float(np.max(np.linalg.norm(system @ out - rhs, axis=0) / np.where(norms == 0, 1.0, norms)))
    smoothed = d_sqrt * out
    smoothed = smoothed[:, :3] / np.maximum(smoothed[:, 3:], 1e-12)  # divide by the smoothed constant image
    image = torch.from_numpy(smoothed.reshape(h, w, 3)).permute(2, 0, 1).unsqueeze(0).float()
    return image.clamp(0, 1), SolveInfo(iterations, residual)


def box_mean(x: Tensor, r: int) -> Tensor:
    """Mean over the (2r+1)^2 window clipped to the image (only pixels inside count), per channel.

    Separable: a (1, 2r+1) then a (2r+1, 1) average pool, so O(N r) with a small constant; the
    clipped window is a rectangle, so the mean of row means is the window mean.
    """
    k = 2 * r + 1
    x = F.avg_pool2d(x, (1, k), stride=1, padding=(0, r), count_include_pad=False)
    return F.avg_pool2d(x, (k, 1), stride=1, padding=(r, 0), count_include_pad=False)


def smooth_fast(stylized: Tensor, content: Tensor, radius: int = 8, eps: float = 1e-3) -> Tensor:
    """Guided filter of each stylised channel with the content's luminance as guide (He et al. 2010).

    All window means are taken in two batched box filters (guide, image, products; then the
    linear coefficients), in float32: means of values in [0, 1] lose no digits that matter
    against ``eps``.
    """
    if stylized.shape != content.shape:
        raise InvalidOptionError(f"stylised {tuple(stylized.shape)} and content {tuple(content.shape)} sizes differ")
    guide = (0.299 * content[:, :1] + 0.587 * content[:, 1:2] + 0.114 * content[:, 2:3]).float()
    p = stylized.float()
    r = max(1, min(radius, min(content.shape[-2:]) // 2))
    means = box_mean(torch.cat([guide, guide * guide, p, guide * p], dim=1), r)
    mean_i, mean_ii, mean_p, mean_ip = means[:, :1], means[:, 1:2], means[:, 2:5], means[:, 5:8]
    a = (mean_ip - mean_i * mean_p) / (mean_ii - mean_i**2 + eps)
    b = mean_p - a * mean_i
    coeffs = box_mean(torch.cat([a, b], dim=1), r)
    return (coeffs[:, :3] * guide + coeffs[:, 3:]).clamp(0, 1)
