"""Photorealistic smoothing (Li et al. 2018, 'A Closed-form Solution to Photorealistic Image Stylization').

Exact: ``R = (1 - a) (I - a D^-1/2 W D^-1/2)^-1 Y`` per channel, with ``W`` the content image's
8-neighbour affinity ``W_ij = exp(-||I_i - I_j||^2 / sigma^2)`` and ``D`` its degrees. Never
inverted densely: substituting ``R = D^1/2 Z`` gives the symmetric, diagonally dominant M-matrix
system ``(D - a W) Z = (1 - a) D^1/2 Y``, solved by conjugate gradients preconditioned with
algebraic multigrid (applied to all channels at once; see ``amg_hierarchy``). The Gaussian
affinity gives an M-matrix and about 13 CG iterations; the matting affinity about 47-53.
Plain Jacobi-preconditioned CG needs ~270 iterations at a = 0.999 for the Gaussian affinity; the
condition number grows like 2 / (1 - a). No answer is returned unchecked: it must be finite with a
small residual, else a second hierarchy, then (small images) a direct solve, then SolverError
(``solve``).

Differs from the paper: the result is divided by the smoothing of a constant image. The plain
closed form scales its output by sqrt(D_i) as ``a -> 1`` (darker borders, where pixels have fewer
neighbours, and darker isolated pixels); the division keeps a flat region's brightness.

Affinities: "gaussian" (above, the paper's choice in Eq. 6) or "matting" (Levin et al. 2008: the
matting Laplacian's affinity from 3x3 windows, which FastPhotoStyle's code uses); for the matting
affinity ``D - W`` is exactly the matting Laplacian.

Fast: a guided filter (He et al. 2010) of the stylised image guided by the content, O(N).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from impasto.errors import InvalidImageError, InvalidOptionError, SolverError


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
    Raises InvalidOptionError for a out of [0, 1), sigma <= 0, an unknown affinity or differing
    sizes, and InvalidImageError for an image holding NaN or infinite values.
    """
    import scipy.sparse as sp

    if not 0.0 <= a < 1.0:
        raise InvalidOptionError(f"smoothing strength a must be in [0, 1), got {a}")
    if stylized.shape != content.shape:
        raise InvalidOptionError(f"stylised {tuple(stylized.shape)} and content {tuple(content.shape)} sizes differ")
    if kind not in AFFINITIES:
        raise InvalidOptionError(f"affinity must be one of {', '.join(AFFINITIES)}, got '{kind}'")
    if kind == "gaussian" and not sigma > 0:
        raise InvalidOptionError(f"sigma must be > 0 for the gaussian affinity, got {sigma}")
    for name, image in (("content", content), ("stylised image", stylized)):
        if not bool(torch.isfinite(image).all()):
            raise InvalidImageError(f"the {name} to smooth contains NaN or infinite values; expected floats in [0, 1]")
    w = affinity(content, sigma) if kind == "gaussian" else matting_affinity(content)
    degree = np.asarray(w.sum(axis=1)).ravel() + 1e-12  # isolated pixels (1x1 images) stay finite
    system = (sp.diags(degree) - a * w).tocsr()
    y = np.concatenate([_to_hwc(stylized).reshape(-1, 3), np.ones((w.shape[0], 1))], axis=1)  # + a constant image
    d_sqrt = np.sqrt(degree)[:, None]
    return system, (1 - a) * d_sqrt * y, d_sqrt


@dataclass(frozen=True)
class SolveInfo:
    iterations: int  # CG iterations of the attempt that was accepted (0 for the direct solve)
    relative_residual: float  # max over channels of ||A z - b|| / ||b||, recomputed in float64
    solver: str = "amg"  # the attempt that was accepted: one of SOLVERS


SOLVERS = ("amg", "amg-fallback", "direct")


@dataclass(frozen=True)
class Hierarchy:
    """A multigrid hierarchy, finest level first: ``operators[i + 1] = P_i^T operators[i] P_i`` with
    ``P_i = prolongators[i]`` (scipy sparse). The last operator is solved directly."""

    operators: tuple
    prolongators: tuple


def _torch_csr(matrix, dtype: torch.dtype) -> Tensor:
    """A scipy sparse matrix as a torch CSR tensor with int32 indices.

    torch's CSR product with an (n, k) block runs on both cores and, with int32 indices, is
    measured 3x faster than scipy's single-threaded one on the 1024 px matting system.
    """
    m = matrix.tocsr()
    m.sort_indices()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(torch.from_numpy(m.indptr.astype(np.int32)), torch.from_numpy(m.indices.astype(np.int32)),
                                       torch.from_numpy(np.ascontiguousarray(m.data)).to(dtype), size=m.shape)


# A candidate is dropped from an aggregate's coarse space when its part orthogonal to the earlier
# candidates there has a norm below CANDIDATE_DROP times the aggregate's largest candidate norm. On the
# three photos at 1024 px, 1e-6 to 1e-4 were within one CG iteration of each other (1e-3 cost 8 more on meadow).
CANDIDATE_DROP = 1e-5


def _aggregates(graph) -> tuple[np.ndarray, int]:
    """pyamg's standard aggregation of a nodal graph (CSR pattern) -> (aggregate of each node, count).
    Nodes it leaves out (no neighbours) become aggregates of their own, so every node is covered."""
    from pyamg import amg_core

    n = graph.shape[0]
    aggregate = np.empty(n, dtype=graph.indptr.dtype)
    roots = np.empty(n, dtype=graph.indptr.dtype)
    count = int(amg_core.standard_aggregation(n, graph.indptr, graph.indices, aggregate, roots))
    alone = aggregate < 0
    aggregate[alone] = count + np.arange(int(alone.sum()), dtype=aggregate.dtype)
    return aggregate.astype(np.int64), count + int(alone.sum())


def _fit_candidates(aggregate: np.ndarray, candidates: np.ndarray, count: int, drop: float):
    """Tentative prolongator whose columns span the candidates on each aggregate, without null columns.

    aggregate (n,): each unknown's aggregate; candidates (n, k). Per aggregate, modified Gram-Schmidt
    (two passes) in candidate order, as pyamg's ``fit_candidates`` (so the constant stays a coarse
    unknown of its own): ``B_k = Q_k R_k``; the sums over an aggregate are ``np.bincount``s, so no
    per-aggregate loop and no padding. A candidate whose part orthogonal to the earlier ones has norm
    <= ``drop`` times the aggregate's largest candidate norm is dropped, leaving no column (pyamg
    keeps an all-zero one) and a zero row in R_k. Every column of P has unit norm.
    Returns (P (n, m) CSR, coarse candidates (m, k): the kept rows of R_k, aggregate of each coarse unknown (m,)).
    """
    import scipy.sparse as sp

    def per_aggregate(values: np.ndarray) -> np.ndarray:
        return np.bincount(aggregate, weights=values, minlength=count)

    n, k = candidates.shape
    scale = np.sqrt(np.max([per_aggregate(candidates[:, j] ** 2) for j in range(k)], axis=0))
    q = np.zeros((n, k))
    r = np.zeros((count, k, k))
    keep = np.zeros((count, k), dtype=bool)
    for j in range(k):
        v = candidates[:, j].copy()
        for _ in range(2):  # twice is enough (Kahan): orthogonal to working precision
            for i in range(j):
                c = per_aggregate(q[:, i] * v)
                v -= c[aggregate] * q[:, i]
                r[:, i, j] += c
        norm = np.sqrt(per_aggregate(v * v))
        keep[:, j] = np.isfinite(norm) & (norm > drop * scale) & (norm > 0)
        r[:, j, j] = np.where(keep[:, j], norm, 0.0)
        q[:, j] = np.where(keep[aggregate, j], v / np.where(keep[:, j], norm, 1.0)[aggregate], 0.0)
    column = (np.cumsum(keep.ravel()) - 1).reshape(count, k)  # coarse unknown of (aggregate, candidate)
    rows = [np.flatnonzero(keep[aggregate, j]) for j in range(k)]
    p = sp.csr_matrix((np.concatenate([q[rows[j], j] for j in range(k)]),
                       (np.concatenate(rows), np.concatenate([column[aggregate[rows[j]], j] for j in range(k)]))),
                      shape=(n, int(keep.sum())))
    return p, r[keep], np.repeat(np.arange(count), keep.sum(axis=1))


def aggregation_hierarchy(system, candidates: np.ndarray, max_coarse: int = 500, max_levels: int = 10,
                          drop: float = CANDIDATE_DROP, improve: int = 4) -> Hierarchy:
    """Unsmoothed aggregation AMG whose coarse space holds ``candidates`` (n, k) on every aggregate.

    Aggregates are pyamg's standard aggregation of the matrix graph (every stored entry strong, as
    pyamg's symmetric strength with theta 0), on coarse levels of the graph between aggregates. The
    tentative prolongator is :func:`_fit_candidates`: candidates that an aggregate cannot tell apart
    (a flat or clipped region, where a colour channel is constant or one channel an affine function of
    another) are dropped from that aggregate instead of kept as null columns, so for an SPD system every
    coarse operator is SPD and its diagonal positive.
    """
    import scipy.sparse as sp

    a = system.tocsr()
    operators, prolongators = [a], []
    graph = sp.csr_matrix((np.ones(a.nnz, dtype=np.int8), a.indices, a.indptr), shape=a.shape)  # one node per unknown
    node = np.arange(a.shape[0])
    b = np.array(candidates, dtype=np.float64)
    if improve:
        from pyamg.relaxation.relaxation import gauss_seidel

        zero = np.zeros(a.shape[0])
        for j in range(b.shape[1]):
            column = np.ascontiguousarray(b[:, j])
            gauss_seidel(a, column, zero, iterations=improve, sweep="symmetric")
            b[:, j] = column
    while graph.shape[0] > max_coarse and len(operators) < max_levels:  # nodes, as pyamg counts them
        aggregate, count = _aggregates(graph)
        if count >= graph.shape[0]:
            break  # nothing coarsens (isolated unknowns): the current level is the coarsest
        p, b, node = _fit_candidates(aggregate[node], b, count, drop)
        a = (p.T.tocsr() @ (a @ p)).tocsr()
        operators.append(a)
        prolongators.append(p)
        # The coarse graph: aggregates joined where the coarse operator couples any of their unknowns.
        member = sp.csr_matrix((np.ones(len(node), dtype=np.float32), (np.arange(len(node)), node)), shape=(len(node), count))
        pattern = sp.csr_matrix((np.ones(a.nnz, dtype=np.float32), a.indices, a.indptr), shape=a.shape)
        graph = (member.T.tocsr() @ pattern @ member).tocsr()
        graph.data = np.ones(graph.nnz, dtype=np.int8)
    return Hierarchy(tuple(operators), tuple(prolongators))


def _from_pyamg(solver) -> Hierarchy:
    return Hierarchy(tuple(level.A.tocsr() for level in solver.levels),
                     tuple(level.P.tocsr() for level in solver.levels[:-1]))


def amg_hierarchy(system, kind: str = "gaussian", colours: np.ndarray | None = None) -> Hierarchy:
    """The algebraic multigrid hierarchy of a smoothing system.

    Gaussian affinity (an M-matrix): classical Ruge-Stueben (pyamg) with direct interpolation, 13-14 CG
    iterations at 1024 px; the set-up is a quarter cheaper than classical interpolation for one
    more iteration. Every column of its interpolation holds a 1 (its coarse point), so every coarse
    diagonal is positive.

    Matting affinity: the matting Laplacian vanishes on every image that is locally an affine
    function of the content's colours, so plain aggregation (coarse space: constants per aggregate)
    cannot represent its smooth error and Ruge-Stueben took 73 iterations. Aggregation whose coarse
    space holds ``[1, r, g, b]`` on each aggregate (the colours given as ``colours``, (N, 3))
    takes 47, with a cheaper set-up and smaller coarse levels; smoothing the prolongator on top
    (full smoothed aggregation) cut iterations to 41 but made each twice as dear.

    Why not pyamg's own aggregation solver (used before; this is the same method, with the same
    aggregates and the same 4 Gauss-Seidel sweeps that improve the candidates first): where an
    aggregate's colours lie on a line in RGB (grey pixels with r = g = b, as in an overcast sky; a
    gradient where all channels step together; one flat or clipped colour), the g and b candidates are
    affine functions of [1, r] there. pyamg's fit_candidates zeroes such a column (orthogonalised norm
    below 1e-10) but keeps it, and a zero prolongator column is a coarse unknown whose row, column and
    diagonal are zero: the V-cycle's Jacobi weight ``omega / diag`` became inf, inf * 0 NaN, and CG
    returned NaN after one iteration (lake_content.jpg and hills_content.jpg at 1024 px: 44 and 26
    such columns; other sizes and downscales of them). :func:`aggregation_hierarchy` drops a dependent
    candidate from that aggregate instead (see CANDIDATE_DROP), so every coarse operator is SPD.
    """
    import pyamg

    if kind == "matting":
        n = system.shape[0]
        candidates = np.ones((n, 1)) if colours is None else np.column_stack([np.ones(n), colours])
        return aggregation_hierarchy(system, candidates)
    return _from_pyamg(pyamg.ruge_stuben_solver(system, interpolation="direct", max_coarse=500))


def fallback_hierarchy(system, kind: str = "gaussian") -> Hierarchy:
    """A hierarchy built another way, for when :func:`amg_hierarchy`'s solve is not accepted: pyamg's
    classical Ruge-Stueben, whose every coarse unknown is a fine one (its column of P holds a 1), so
    no coarse diagonal of an SPD system can vanish. Matting: direct interpolation, 73 CG iterations
    on lake at 1024 px (the colour-candidate aggregation: 50); Gaussian: classical interpolation, 15
    (its primary uses direct interpolation)."""
    import pyamg

    interpolation = "direct" if kind == "matting" else "classical"
    return _from_pyamg(pyamg.ruge_stuben_solver(system, interpolation=interpolation, max_coarse=500))


JACOBI_WEIGHT = {"gaussian": 0.8, "matting": 0.6}  # block V-cycle smoothing, measured best of 0.6/0.8/1.0
DIAGONAL_FLOOR = 1e-12  # relative to a level's largest diagonal: below it an unknown is taken as absent


def _usable(diagonal: np.ndarray) -> np.ndarray:
    """Unknowns whose diagonal is finite and above DIAGONAL_FLOOR times the largest finite one."""
    finite = np.isfinite(diagonal)
    top = float(np.max(diagonal[finite])) if finite.any() else 0.0
    return finite & (diagonal > DIAGONAL_FLOOR * top) & (top > 0)


class BlockVCycle:
    """One AMG V-cycle applied to all right-hand sides at once, as a preconditioner.

    pyamg's own cycle takes one vector at a time with Gauss-Seidel smoothing; here every level's
    matrix multiplies an (n, k) block (one sparse pass for k columns, torch CSR on all cores) with
    damped-Jacobi smoothing, in float32 (a preconditioner needs no more; the outer CG stays
    float64). Symmetric (one sweep before and after), so CG may use it. The coarsest level is
    solved by its Cholesky factor (its pseudo-inverse if it is singular).

    No division by a zero, tiny or non-finite diagonal: such an unknown (a null prolongator column
    gives one; :func:`amg_hierarchy` makes none) gets Jacobi weight 0 and an identity row on the
    coarsest level. Its residual is zero in exact arithmetic (its restriction row is zero), so this
    is what removing it would give.
    """

    def __init__(self, hierarchy: Hierarchy, omega: float = 0.8) -> None:
        self.levels = []
        for a, p in zip(hierarchy.operators[:-1], hierarchy.prolongators, strict=True):
            diagonal = a.diagonal()
            usable = _usable(diagonal)
            dinv = np.zeros_like(diagonal)
            dinv[usable] = omega / diagonal[usable]
            self.levels.append((_torch_csr(a, torch.float32), _torch_csr(p, torch.float32),
                                _torch_csr(p.T, torch.float32), torch.from_numpy(dinv[:, None]).float()))
        coarse = hierarchy.operators[-1].toarray()
        absent = ~_usable(np.diagonal(coarse).copy())
        coarse[absent, :] = 0.0
        coarse[:, absent] = 0.0
        coarse[absent, absent] = 1.0
        if not np.isfinite(coarse).all():
            raise SolverError("the coarsest multigrid level holds NaN or infinite values")
        coarse_t = torch.from_numpy(coarse)
        factor, info = torch.linalg.cholesky_ex(coarse_t)
        ok = int(info) == 0 and bool(torch.isfinite(factor).all())
        self.coarse_factor = factor.float() if ok else None
        self.coarse_pinv = None if ok else torch.linalg.pinv(coarse_t, hermitian=True).float()

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


def block_cg(system, rhs: np.ndarray, preconditioner, tol: float, max_iterations: int,
             x0: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Preconditioned CG on every column of ``rhs`` at once (independent CGs sharing each sparse
    product, float64), from ``x0`` (zero if None); a column stops changing once ``||r|| <= tol ||b||``.
    Stops at once, returning the non-finite iterate, if the preconditioner or a product yields a
    non-finite number (the caller's checks then reject it). Returns (solution, iterations)."""
    a = _torch_csr(system, torch.float64)
    b = torch.from_numpy(np.ascontiguousarray(rhs, dtype=np.float64))
    x = torch.zeros_like(b) if x0 is None else torch.from_numpy(np.array(x0, dtype=np.float64))
    r = b - a @ x if x0 is not None else b.clone()
    norms = b.norm(dim=0)
    norms[norms == 0] = 1.0
    z = preconditioner(r)
    p = z.clone()
    rz = (r * z).sum(0)
    active = r.norm(dim=0) > tol * norms
    iterations = 0
    while bool(active.any()) and iterations < max_iterations:
        if not bool(torch.isfinite(rz).all()):
            x.fill_(float("nan"))
            break
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


def relative_residual(system, z: np.ndarray, rhs: np.ndarray) -> float:
    """``max_c ||A z_c - b_c|| / ||b_c||`` in float64 (a zero ``b_c`` counts as 1); inf if z is not finite."""
    if not np.isfinite(z).all():
        return float("inf")
    norms = np.linalg.norm(rhs, axis=0)
    return float(np.max(np.linalg.norm(system @ z - rhs, axis=0) / np.where(norms == 0, 1.0, norms)))


ACCEPT_FACTOR = 10.0  # an answer is accepted when its residual is within this factor of tol
# Unknowns up to which scipy's direct sparse solve is the last resort: 15 s for the matting system at
# 320x213 on the 2-core machine, against 173 s and 5.7 GB at 1024x678 (README).
DIRECT_LIMIT = 65_536


def solve(system, rhs: np.ndarray, kind: str, colours: np.ndarray | None = None, tol: float = 2e-5,
          max_iterations: int = 500) -> tuple[np.ndarray, SolveInfo]:
    """impasto's solver for ``system @ z = rhs`` (N x k): block CG preconditioned by a block
    V-cycle over :func:`amg_hierarchy`. ``colours`` (N, 3): the content's colours (matting).

    Every answer is checked before it is returned: it must be finite with a relative residual
    (:func:`relative_residual`) at most ``ACCEPT_FACTOR * tol``. Otherwise CG runs again over
    :func:`fallback_hierarchy` (from the first answer when that one is finite), and then, for at
    most DIRECT_LIMIT unknowns, scipy's direct sparse solve. Returns (solution, SolveInfo).
    Raises SolverError, naming each attempt and how it failed, when none is accepted.
    """
    accept = ACCEPT_FACTOR * tol
    failures: list[str] = []
    start: np.ndarray | None = None
    builds = ((SOLVERS[0], lambda: amg_hierarchy(system, kind, colours)), (SOLVERS[1], lambda: fallback_hierarchy(system, kind)))
    for name, build in builds:
        try:
            preconditioner = BlockVCycle(build(), JACOBI_WEIGHT[kind])
            z, iterations = block_cg(system, rhs, preconditioner, tol, max_iterations, start)
        except (ArithmeticError, ValueError, RuntimeError) as exc:  # pyamg, numpy and torch failures in set-up
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        residual = relative_residual(system, z, rhs)
        if residual <= accept:
            return z, SolveInfo(iterations, residual, name)
        failures.append(f"{name}: {'not finite' if not np.isfinite(z).all() else f'relative residual {residual:.1e}'} "
                        f"after {iterations} CG iterations")
        if np.isfinite(z).all():
            start = z
    if system.shape[0] <= DIRECT_LIMIT:
        from scipy.sparse.linalg import spsolve

        try:
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "matrix is exactly singular": the residual check below judges it
                z = np.asarray(spsolve(system.tocsc(), rhs)).reshape(rhs.shape)
        except (ArithmeticError, ValueError, RuntimeError, MemoryError) as exc:
            failures.append(f"{SOLVERS[2]}: {type(exc).__name__}: {exc}")
        else:
            residual = relative_residual(system, z, rhs)
            if residual <= accept:
                return z, SolveInfo(0, residual, SOLVERS[2])
            failures.append(f"{SOLVERS[2]}: {'not finite' if not np.isfinite(z).all() else f'relative residual {residual:.1e}'}")
    raise SolverError(f"the exact smoothing solve ({kind} affinity, {system.shape[0]} pixels) found no answer with a "
                      f"relative residual <= {accept:.0e} ({'; '.join(failures)}). Use --smooth fast (the guided "
                      f"filter; smooth='fast' in the API) for this image, or a --smooth-strength further from 1")


def smooth_exact(stylized: Tensor, content: Tensor, a: float = 0.999, sigma: float = 0.1, tol: float = 2e-5,
                 max_iterations: int = 500, kind: str = "gaussian") -> tuple[Tensor, SolveInfo]:
    """Closed-form smoothing of ``stylized`` with the content's affinity (``kind``); returns (image, solver info).

    The image is finite and in [0, 1]. Raises InvalidOptionError / InvalidImageError for bad input
    (see :func:`smoothing_system`) and SolverError when no solve is accepted (see :func:`solve`).
    """
    h, w = content.shape[-2:]
    system, rhs, d_sqrt = smoothing_system(content, stylized, a, sigma, kind)
    if a == 0.0:
        return stylized.clone(), SolveInfo(0, 0.0)
    out, info = solve(system, rhs, kind, _to_hwc(content).reshape(-1, 3), tol, max_iterations)
    smoothed = d_sqrt * out
    smoothed = smoothed[:, :3] / np.maximum(smoothed[:, 3:], 1e-12)  # divide by the smoothed constant image
    if not np.isfinite(smoothed).all():  # cannot happen for a finite accepted solve; never return NaN silently
        raise SolverError("the exact smoothing gave NaN or infinite values; use --smooth fast (the guided filter)")
    image = torch.from_numpy(smoothed.reshape(h, w, 3)).permute(2, 0, 1).unsqueeze(0).float()
    return image.clamp(0, 1), info


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
