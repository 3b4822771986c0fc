"""Feature statistics: Gram matrices, per-channel mean/std, mean/covariance and PSD square roots.

All functions take feature maps ``(N, C, H, W)`` and work in the input's dtype unless stated.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor
from torch.utils.weak import WeakIdKeyDictionary

from impasto.errors import InvalidOptionError


def gram_matrix(features: Tensor) -> Tensor:
    """Gram matrix ``F F^T / M`` with ``M = H * W`` -> ``(N, C, C)``.

    Normalised by the number of positions so that images of any size give comparable
    targets (Gatys et al. use the unnormalised ``F F^T``; see ``losses.style`` for how the
    loss scale relates to theirs).
    """
    n, c, h, w = features.shape
    flat = features.reshape(n, c, h * w)
    return torch.bmm(flat, flat.transpose(1, 2)) / (h * w)


def mean_std(features: Tensor, eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """Per-channel mean and standard deviation -> two ``(N, C)`` tensors."""
    n, c = features.shape[:2]
    flat = features.reshape(n, c, -1)
    mean = flat.mean(dim=2)
    std = (flat.var(dim=2, unbiased=False) + eps).sqrt()
    return mean, std


def mean_cov(features: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean ``(N, C)`` and covariance ``(N, C, C)`` (biased, over positions)."""
    n, c = features.shape[:2]
    flat = features.reshape(n, c, -1)
    mean = flat.mean(dim=2)
    centred = flat - mean.unsqueeze(2)
    cov = torch.bmm(centred, centred.transpose(1, 2)) / flat.shape[2]
    return mean, cov


def sqrtm_psd(matrix: Tensor, eps: float = 1e-8) -> Tensor:
    """Symmetric PSD square root via eigendecomposition (eigenvalues floored at ``eps``)."""
    vals, vecs = torch.linalg.eigh(matrix)
    vals = vals.clamp_min(eps).sqrt()
    return vecs @ torch.diag_embed(vals) @ vecs.transpose(-1, -2)


_DERIVED = WeakIdKeyDictionary()  # tensor -> {name: (what the value was made from, the derived value)}


def derived(tensor: Tensor, name: str, compute: Callable[[Tensor], Tensor], *key: object) -> Tensor:
    """``compute(tensor)``, kept for the next call with the same tensor object, ``name`` and ``key`` while the tensor
    is unchanged (its version counter), e.g. a loss target's square root or resampling, made once per run instead of
    at every step. One value per name: a new ``key`` (another size) replaces the last. A change is seen when torch
    counts it (in-place ops on the tensor) or moves the storage; writes that bypass both (through ``.data`` or a
    numpy view) are not: callers keep such tensors as buffers they never write."""
    if tensor.is_inference():  # no version counter to tell a change by: made each time
        with torch.no_grad():
            return compute(tensor.detach())
    stamp = (tensor._version, tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tensor.device, key)
    kept = _DERIVED.setdefault(tensor, {})
    hit = kept.get(name)
    if hit is None or hit[0] != stamp:
        with torch.no_grad():
            hit = kept[name] = (stamp, compute(tensor.detach()))
    return hit[1]


def adain(content: Tensor, style: Tensor, eps: float = 1e-5) -> Tensor:
    """Adaptive instance norm (Huang & Belongie 2017): content features (N, C, H, W) with the
    per-channel mean and std of ``style`` (N or 1, C, H', W')."""
    c_mean, c_std = mean_std(content, eps)
    s_mean, s_std = mean_std(style, eps)
    normalised = (content - c_mean[..., None, None]) / c_std[..., None, None]
    return normalised * s_std[..., None, None] + s_mean[..., None, None]


def _eig_floor(cov: Tensor, rel_floor: float, abs_floor: float) -> tuple[Tensor, Tensor, Tensor]:
    """eigh of a symmetric matrix with a mask of the eigenvalues above max(rel_floor * largest, abs_floor)."""
    vals, vecs = torch.linalg.eigh((cov + cov.transpose(-1, -2)) / 2)
    threshold = torch.clamp(vals.max(dim=-1, keepdim=True).values * rel_floor, min=abs_floor)
    return vals, vecs, vals > threshold


def whiten_colour(content: Tensor, style: Tensor, alpha: float = 1.0, rel_floor: float = 1e-5,
                  abs_floor: float = 1e-8) -> Tensor:
    """Whitening and colouring transform (Li et al. 2017) of (C, M) feature matrices.

    ``content`` (C, M) and ``style`` (C, M'): the result has the style's mean and covariance in the
    directions the content varies in, blended with the content by ``alpha``. Eigenvalues below
    ``max(rel_floor * largest, abs_floor)`` are dropped (not inverted), so flat, one-colour or
    rank-deficient inputs give finite results; a constant content becomes the style mean.

    Means and both eigendecompositions are float64; the whitening and colouring are composed into
    one C x C matrix (float64) and applied with a single matmul in the input's dtype, which at
    1024 px is 4x fewer passes over the features than applying them one after the other.
    """
    dtype = content.dtype
    mc = content.mean(dim=1, keepdim=True, dtype=torch.float64)
    ms = style.mean(dim=1, keepdim=True, dtype=torch.float64)
    fc0 = content - mc.to(dtype)
    fs0 = style - ms.to(dtype)
    cov_c = (fc0 @ fc0.T).double() / max(1, content.shape[1] - 1)  # centred first: float32 sums suffice
    cov_s = (fs0 @ fs0.T).double() / max(1, style.shape[1] - 1)
    vals_c, vecs_c, keep_c = _eig_floor(cov_c, rel_floor, abs_floor)
    inv_sqrt = torch.where(keep_c, vals_c.clamp_min(abs_floor).rsqrt(), torch.zeros_like(vals_c))
    vals_s, vecs_s, keep_s = _eig_floor(cov_s, rel_floor, abs_floor)
    root = torch.where(keep_s, vals_s.clamp_min(0).sqrt(), torch.zeros_like(vals_s))
    whiten = vecs_c @ (inv_sqrt[:, None] * vecs_c.T)
    colour = vecs_s @ (root[:, None] * vecs_s.T)
    transform = alpha * (colour @ whiten) + (1 - alpha) * torch.eye(content.shape[0], dtype=torch.float64, device=content.device)
    # alpha * (T fc0 + ms) + (1 - alpha) * (fc0 + mc) = (alpha T + (1 - alpha) I) fc0 + shift
    shift = alpha * ms + (1 - alpha) * mc
    return (transform.to(dtype) @ fc0 + shift.to(dtype)).to(dtype)


def quantile_values(values: Tensor, k: int) -> Tensor:
    """``values`` (..., M) -> (..., k): the sorted values at k evenly spaced ranks, linearly interpolated.

    The empirical quantile function sampled at k points; k = M gives the sorted values themselves.
    """
    if k < 1 or values.shape[-1] < 1:
        raise InvalidOptionError(f"need k >= 1 and at least one value, got k={k}, {values.shape[-1]} values")
    ordered, _ = values.sort(dim=-1)
    m = ordered.shape[-1]
    if k == m:
        return ordered
    pos = torch.linspace(0, m - 1, k, dtype=torch.float64, device=values.device)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=m - 1)
    frac = (pos - lo).to(ordered.dtype)
    return ordered[..., lo] * (1 - frac) + ordered[..., hi] * frac


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _reset_pool_in_child() -> None:
    """A forked child has none of the parent's threads, and a lock the parent held stays held: start over."""
    global _POOL, _POOL_LOCK
    _POOL, _POOL_LOCK = None, threading.Lock()


os.register_at_fork(after_in_child=_reset_pool_in_child)


def _pool() -> ThreadPoolExecutor:
    """One shared pool for the process, never shut down while in use; it starts threads only as work
    arrives, so its generous size costs nothing (callers submit as many chunks as torch has threads)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max(32, os.cpu_count() or 1), thread_name_prefix="impasto-ranks")
        return _POOL


PIPELINE_MIN = 32768  # values per row from which 16-bit rows are ranked and paired on two threads (measured at
# 512 px on the 2-core x86 CPU: relu1_1 (175k) 106 -> 83 ms, relu2_1 (44k) 55 -> 49 ms; relu4_1 (2.7k) 17 -> 36 ms)


def _row_order(bits: np.ndarray, dtype: torch.dtype, index: np.ndarray) -> np.ndarray:
    """The stable sorting order of one row of values given as their bits (int16 for bf16/fp16, int32 for float32,
    the values themselves for float64)."""
    if dtype in (torch.bfloat16, torch.float16):
        # 16-bit keys in the values' order (negatives: every bit flipped; the rest: the sign bit set), sorted by
        # numpy's radix sort for 16-bit integers
        key = (bits ^ ((bits >> 15) & np.int16(0x7FFF)) ^ np.int16(-0x8000)).view(np.uint16)
        return np.argsort(key, kind="stable")
    if dtype == torch.float32:
        # float32 bits -> int32 in the floats' order (negatives: flip the magnitude bits), widened, shifted up and
        # or-ed with the position: one int64 key per value, ties broken by position, for numpy's SIMD sort
        key = np.where(bits < 0, bits ^ np.int32(0x7FFFFFFF), bits).astype(np.int64)
        np.left_shift(key, 32, out=key)
        np.bitwise_or(key, index, out=key)
        key.sort()
        return key & 0xFFFFFFFF
    return np.argsort(bits, kind="stable")


def _order_rows(bits: np.ndarray, dtype: torch.dtype, first: int, last: int) -> np.ndarray:
    index = np.arange(bits.shape[1], dtype=np.int64)
    orders = np.empty((last - first, bits.shape[1]), dtype=np.int64)
    for r in range(first, last):
        orders[r - first] = _row_order(bits[r], dtype, index)
    return orders


def _pair_rows(bits: np.ndarray, dtype: torch.dtype, targets: np.ndarray, orders: np.ndarray | None,
               diff: np.ndarray, sq: np.ndarray, first: int, last: int) -> None:
    """Rows ``first:last`` of ``paired_differences``, ranked here unless their ``orders`` are given."""
    if orders is None:
        orders = _order_rows(bits, dtype, first, last)
    block = bits[first:last]
    if dtype == torch.bfloat16:
        v = (block.astype(np.int32) << 16).view(np.float32)  # bf16 -> float32, exact
    elif dtype == torch.float16:
        v = block.view(np.float16).astype(np.float32)
    else:
        v = block.view(np.float32) if dtype == torch.float32 else block
    for r in range(first, last):
        order = orders[r - first]
        d = v[r - first][order] - targets[r % targets.shape[0]]  # in rank order
        sq[r] = np.dot(d, d)  # BLAS, accumulated in d's precision: float32 rows 1e-7 to 1e-5 relative, measured
        diff[r][order] = d


def paired_differences(values: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Each value minus the target at its rank: the pairing of the 1-D Wasserstein-2 distance.

    ``values`` (R, M): rows of values, any float dtype; ``targets`` (T, M): sorted target values per row, T
    dividing R (row r is paired with target row r % T). Returns ``diff`` (R, M), ``values[r, i] -
    targets[r % T, rank of values[r, i] in its row]`` (ranks stable: equal values in order of position, except
    that the 16-bit and float32 keys rank -0 before +0 and NaN by its bits; the loss is the same), in float32
    (float64 for float64 values), and the row sums of its squares (R,), stored as float64. No gradient.

    On the CPU numpy ranks the rows. bf16 and fp16 values: by its radix sort of 16-bit keys, 0.7 ms for a row of
    175k values on the 2-core x86 CPU (float32 values as packed 64-bit keys: 5.6 ms); two threads sorting are
    slower than one here, so long rows are ranked a block at a time on the calling thread while the pool pairs
    the blocks ranked before.
    float32 values: the rows split over torch's thread count. float64: numpy's stable sort.
    """
    if (values.dim() != 2 or targets.dim() != 2 or targets.shape[1] != values.shape[1] or not len(targets)
            or values.shape[0] % targets.shape[0]):
        raise InvalidOptionError(f"values {tuple(values.shape)} and targets {tuple(targets.shape)} do not pair up")
    acc = torch.promote_types(values.dtype, torch.float32)
    values, targets = values.detach(), targets.detach().to(acc)
    if values.device.type != "cpu" or values.numel() == 0:
        order = torch.argsort(values, dim=-1, stable=True)
        t = targets.repeat(values.shape[0] // targets.shape[0], 1)
        d = values.to(acc).gather(-1, order) - t
        return torch.empty_like(d).scatter_(-1, order, d), d.double().pow(2).sum(-1)
    values, targets = values.contiguous(), targets.contiguous()
    diff = np.empty(values.shape, dtype=np.float64 if acc == torch.float64 else np.float32)
    sq = np.empty(values.shape[0], dtype=np.float64)
    t = targets.numpy()
    view = {2: torch.int16, 4: torch.int32}.get(values.element_size()) if values.dtype != torch.float64 else None
    bits = (values.view(view) if view else values).numpy()
    rows, workers = values.shape[0], max(1, min(torch.get_num_threads(), values.shape[0]))
    if values.element_size() == 2 and values.shape[1] < PIPELINE_MIN:
        workers = 1  # short rows: handing blocks between threads costs more than it saves
    if workers == 1:
        _pair_rows(bits, values.dtype, t, None, diff, sq, 0, rows)
    elif values.element_size() == 2:
        # two threads running numpy's radix argsort are slower than one here (64 rows of 175k: 45 ms on one thread,
        # 77 ms on two): rank here, a block at a time, while the pool pairs the blocks ranked before
        bounds = np.linspace(0, rows, min(rows, 8 * workers) + 1).astype(int)
        jobs = [_pool().submit(_pair_rows, bits, values.dtype, t, _order_rows(bits, values.dtype, a, b), diff, sq, a, b)
                for a, b in zip(bounds[:-1], bounds[1:])]
    else:
        bounds = np.linspace(0, rows, workers + 1).astype(int)
        jobs = [_pool().submit(_pair_rows, bits, values.dtype, t, None, diff, sq, a, b)
                for a, b in zip(bounds[:-1], bounds[1:])]
    if workers > 1:
        for job in jobs:
            job.result()
    return torch.from_numpy(diff), torch.from_numpy(sq)
